#!/usr/bin/env python3
"""Prints one phase of a benchmark: its time, the operator's CPU seconds, and the apiserver's
requests (all clients) between two scrapes of apiserver_request_total, per unit (a node rollout, a
Model) and by verb and resource.
  requests-delta.py PHASE BEFORE AFTER UNITS UNIT SECONDS CPU_SECONDS"""
import re, sys

phase, before, after, rollouts, unit, seconds, cpu = sys.argv[1:]
rollouts = int(rollouts)
line = re.compile(r'^apiserver_request_total\{(.*)\} (\S+)$')
label = re.compile(r'(\w+)="([^"]*)"')


def read(path):
    counts = {}
    for text in open(path):
        m = line.match(text.strip())
        if not m:
            continue
        labels = dict(label.findall(m.group(1)))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        key = (labels.get("verb", ""), resource)
        counts[key] = counts.get(key, 0) + float(m.group(2))
    return counts


a, b = read(before), read(after)
delta = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0}
total = sum(delta.values())
print(f"{phase}: {rollouts} × {unit} in {seconds}s; operator CPU {cpu}s "
      f"({float(cpu) / rollouts * 1000:.1f} ms per {unit})")
print(f"  apiserver requests (all clients): {total:.0f}, {total / rollouts:.1f} per {unit}")
top = sorted(delta.items(), key=lambda kv: -kv[1])[:12]
print("  " + ", ".join(f"{verb} {res} {n / rollouts:.2f}" for (verb, res), n in top))
