#!/usr/bin/env python3
"""A counting reverse proxy for registry benchmarks: forwards every request to UPSTREAM and counts
them by (method, kind), where kind is manifests, blobs, tags or other. Writes the counts as JSON to
COUNTS_FILE after each request; a SIGUSR1 resets them."""
import http.client, http.server, json, os, signal, sys, threading

upstream, port, counts_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
counts, lock = {}, threading.Lock()

def reset(*_):
    with lock:
        counts.clear()
        dump()

def dump():
    tmp = counts_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(counts, f)
    os.replace(tmp, counts_file)

class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        kind = next((k for k in ("manifests", "blobs", "tags") if f"/{k}/" in self.path), "other")
        with lock:
            key = f"{self.command} {kind}"
            counts[key] = counts.get(key, 0) + 1
            dump()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = forward

signal.signal(signal.SIGUSR1, reset)
reset()
http.server.ThreadingHTTPServer(("127.0.0.1", port), Proxy).serve_forever()
