#!/usr/bin/env python3
"""Crafts model files for the contents oracles (tests/contents_oracles.rs) and judges each with the
outside tools: picklescan and fickling (pickle verdicts), safetensors (parameter counts) and gguf
(metadata, tensors, parameters). Writes the files into OUT and OUT/cases.json. Nothing crafted here
is ever loaded: pickles are built with pickle's own writer over stand-in modules, or byte by byte.

    python cases.py OUT
"""
import io, json, os, pickle, struct, sys, types, zipfile
from collections import OrderedDict

import numpy as np
# The judges are imported before the stand-in modules below exist.
import gguf
from fickling.analysis import Severity
from fickling.loader import scan_file, scan_zip_archive
from picklescan.scanner import SafetyLevel, scan_file_path
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
cases = []


def stand_in(module, *names):
    """A module of that name whose functions pickle by reference (never run)."""
    mod = sys.modules.get(module) or types.ModuleType(module)
    for name in names:
        def f(*a):
            raise RuntimeError("never called")
        f.__module__, f.__qualname__, f.__name__ = module, name, name
        setattr(mod, name, f)
    sys.modules[module] = mod
    return mod


tutils = stand_in("torch._utils", "_rebuild_tensor_v2")
torch = stand_in("torch")


class FloatStorage:
    pass


FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
torch.FloatStorage = FloatStorage


class Tensor:
    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (tutils._rebuild_tensor_v2, (Storage(), 0, self.shape, stride, False, OrderedDict()))


class Storage:
    pass


class TorchPickler(pickle.Pickler):
    """Storages as persistent ids, as torch.save writes them."""

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, "0", "cpu", 12)
        return None


def torch_pickle(state, protocol=2):
    buf = io.BytesIO()
    TorchPickler(buf, protocol=protocol).dump(state)
    return buf.getvalue()


class Call:
    """`callable(*args)` when unpickled."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def torch_zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


# ---- judges -------------------------------------------------------------------------------------

def picklescan_verdict(path):
    try:
        r = scan_file_path(path)
    except Exception as e:  # noqa: BLE001 - the oracle's own failure is its answer
        return "unknown", [f"error: {e}"]
    imports = sorted(f"{g.module}.{g.name}" for g in r.globals)
    if r.issues_count > 0:
        return "unsafe", imports
    if r.scan_err:
        return "unknown", imports
    if any(g.safety == SafetyLevel.Suspicious for g in r.globals):
        return "suspicious", imports
    return "safe", imports


def fickling_verdict(path):
    try:
        if zipfile.is_zipfile(path):
            results = list(scan_zip_archive(path, graceful=True).values())
        else:
            results = [scan_file(path, graceful=True)]
    except Exception as e:  # noqa: BLE001
        return f"unknown (error: {e})"
    severity = max((r.severity for r in results), default=Severity.LIKELY_SAFE)
    if any(r.errors for r in results) and severity <= Severity.SUSPICIOUS:
        return "unknown"
    if severity >= Severity.LIKELY_UNSAFE:
        return "unsafe"
    if severity > Severity.LIKELY_SAFE:
        return "suspicious"
    return "safe"


def add_pickle(name, path, data, malicious):
    file = os.path.join(out, name)
    with open(file, "wb") as f:
        f.write(data)
    ps, imports = picklescan_verdict(file)
    cases.append({"name": name, "path": path, "kind": "pickle", "malicious": malicious,
                  "picklescan": ps, "picklescan_imports": imports, "fickling": fickling_verdict(file)})


# ---- pickles ------------------------------------------------------------------------------------

state = OrderedDict([("weight", Tensor((3, 4))), ("bias", Tensor((4,)))])
add_pickle("benign_state_dict", "model.pkl", torch_pickle(state), False)
add_pickle("benign_protocol4", "model.pkl", torch_pickle(state, protocol=4), False)
add_pickle("os_system_reduce", "model.pkl", pickle.dumps(Call(os.system, "id"), protocol=2), True)
add_pickle("eval_protocol4", "model.pkl", pickle.dumps(Call(eval, "1+1"), protocol=4), True)
add_pickle("subprocess_in_a_state_dict", "pytorch_model.bin",
           torch_pickle(OrderedDict([("w", Tensor((2,))), ("x", Call(__import__("subprocess").check_output, ["id"]))])), True)
# STACK_GLOBAL whose strings were memoised long before and are fetched back by BINGET, with a POP in
# between (published bypass of scanners that read the two opcodes before STACK_GLOBAL).
memo = (b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94N0" + b"\x68\x00\x68\x01\x93"
        + b"\x8c\x02id\x85R.")
add_pickle("stack_global_from_memo", "model.pkl", memo, True)
# The same shape importing something harmless: split across opcodes, still one import.
split_benign = (b"\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94N0" + b"\x68\x00\x68\x01\x93)R.")
add_pickle("split_benign", "model.pkl", split_benign, False)
add_pickle("inst_protocol0", "model.pkl", b"(S'id'\nios\nsystem\n.", True)
add_pickle("obj_protocol1", "model.pkl", b"(cbuiltins\nexec\nS'print(1)'\no.", True)
inner = pickle.dumps(Call(os.system, "id"), protocol=2)
add_pickle("nested_pickle_loads", "model.pkl", pickle.dumps(Call(pickle.loads, inner), protocol=2), True)
add_pickle("dotted_name_walk", "model.pkl",
           b"\x80\x04\x8c\x0bcollections\x8c\x09os.system\x93\x8c\x02id\x85R.", True)
add_pickle("unlisted_class", "model.joblib",
           b"\x80\x02csklearn.linear_model\nLogisticRegression\n)\x81}b.", False)
benign = torch_pickle(state)
add_pickle("truncated", "model.pkl", benign[: len(benign) // 2], False)
# An endless pickle: 1 MiB of MARKs and no STOP (the bound on bytes read is tested in Rust).
add_pickle("endless", "model.pkl", b"\x80\x02" + b"(" * (1 << 20), False)

# ---- zip checkpoints ----------------------------------------------------------------------------

zb = [("archive/data.pkl", torch_pickle(state)), ("archive/byteorder", b"little"),
      ("archive/data/0", b"\0" * 64), ("archive/version", b"3\n")]
add_pickle("torch_zip_benign", "model.pt", torch_zip(zb), False)
bad = pickle.dumps(Call(os.system, "id"), protocol=2)
add_pickle("torch_zip_malicious", "model.pt", torch_zip([("archive/data.pkl", bad)] + zb[1:]), True)
# A second pickle under a name that is not `.pkl`: scanners that select members by name skip it.
add_pickle("zip_odd_member_name", "model.pt", torch_zip(zb + [("archive/extra/payload", bad)]), True)
add_pickle("zip_upper_case_name", "model.pt", torch_zip([("archive/DATA.PKL", bad)] + zb[1:]), True)
good_zip = torch_zip(zb)
end = good_zip.rfind(b"PK\x05\x06")
outside = bytearray(good_zip)
outside[end + 16:end + 20] = struct.pack("<I", 0x7FFF0000)
add_pickle("zip_directory_outside", "model.pt", bytes(outside), False)

# ---- safetensors --------------------------------------------------------------------------------

from safetensors import safe_open
from safetensors.numpy import save_file

tensors = {"embed": np.zeros((16, 8), np.float32), "norm": np.ones((8,), np.float16),
           "ids": np.arange(5, dtype=np.int64), "scalar": np.array(1.0, np.float64)}
st = os.path.join(out, "model_safetensors")
save_file(tensors, st, metadata={"format": "np", "note": "oracle"})


def safetensors_facts(path):
    try:
        with safe_open(path, framework="numpy") as f:
            names = list(f.keys())
            params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in names)
            return {"tensors": len(names), "parameters": params, "metadata": f.metadata() or {}}
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


cases.append({"name": "model_safetensors", "path": "model.safetensors", "kind": "safetensors",
              "malicious": False, "oracle": safetensors_facts(st)})
with open(st, "rb") as f:
    good = f.read()
lying = struct.pack("<Q", len(good) * 4) + good[8:]
with open(os.path.join(out, "lying_safetensors"), "wb") as f:
    f.write(lying)
cases.append({"name": "lying_safetensors", "path": "model.safetensors", "kind": "safetensors",
              "malicious": False, "oracle": safetensors_facts(os.path.join(out, "lying_safetensors"))})

# ---- GGUF ---------------------------------------------------------------------------------------

gg = os.path.join(out, "model_gguf")
w = gguf.GGUFWriter(gg, "llama")
w.add_block_count(2)
w.add_context_length(128)
w.add_token_list(["a", "b", "c"])
w.add_tensor("tok_embd", np.zeros((6, 4), np.float32))
w.add_tensor("out", np.zeros((4,), np.float16))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
r = gguf.GGUFReader(gg)
cases.append({"name": "model_gguf", "path": "model.gguf", "kind": "gguf", "malicious": False, "oracle": {
    "tensors": len(r.tensors),
    "parameters": int(sum(int(t.n_elements) for t in r.tensors)),
    "keys": sorted(k for k in r.fields if not k.startswith("GGUF.")),
    "architecture": str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8"),
}})

with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(cases, f, indent=1)
for c in cases:
    print(c["name"], c.get("picklescan", ""), c.get("fickling", ""), file=sys.stderr)
