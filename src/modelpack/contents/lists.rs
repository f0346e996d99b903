//! Which imports a pickle may make. The deny-list starts from picklescan's (1.0.5, `_unsafe_globals`:
//! every entry of it is here) with the loaders of other pickles and the reflection builtins added;
//! the allow-list is what `torch.save`, `numpy` and `pickle` itself write for ordinary checkpoints
//! (picklescan's `_safe_globals` and the rest of the `torch._utils._rebuild_*` family, torch dtypes
//! and containers). Anything on neither list is "suspicious".

/// How an import is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    Allowed,
    Denied,
    Unlisted,
}

/// `(module, names)`: `*` for every name of the module and of its submodules.
const DENIED: &[(&str, &[&str])] = &[
    ("__builtin__", BUILTINS_DENIED),
    ("builtins", BUILTINS_DENIED),
    ("_io", &["FileIO", "open", "open_code"]),
    ("io", &["FileIO", "open", "open_code"]),
    ("_operator", &["attrgetter", "itemgetter", "methodcaller"]),
    ("operator", &["attrgetter", "itemgetter", "methodcaller"]),
    ("_aix_support", &["*"]),
    ("_osx_support", &["*"]),
    ("_pickle", &["*"]),
    ("_posixsubprocess", &["*"]),
    ("_pyrepl", &["*"]),
    ("aiohttp", &["*"]),
    ("asyncio", &["*"]),
    ("bdb", &["*"]),
    ("cPickle", &["*"]),
    ("cProfile", &["*"]),
    ("cloudpickle", &["*"]),
    ("code", &["*"]),
    ("codeop", &["*"]),
    ("commands", &["*"]),
    ("ctypes", &["*"]),
    ("dill", &["*"]),
    ("distutils", &["*"]),
    ("doctest", &["debug_script"]),
    ("ensurepip", &["*"]),
    ("functools", &["partial"]),
    ("http", &["*"]),
    ("httplib", &["*"]),
    ("idlelib", &["*"]),
    ("imaplib", &["IMAP4_stream"]),
    ("imp", &["*"]),
    ("importlib", &["*"]),
    ("joblib", &["load"]),
    ("lib2to3", &["*"]),
    ("logging", &["FileHandler"]),
    ("marshal", &["*"]),
    ("multiprocessing", &["*"]),
    ("nt", &["*"]),
    ("numpy", &["load", "loadtxt", "fromfile"]),
    ("numpy.f2py", &["*"]),
    ("numpy.testing._private.utils", &["*"]),
    ("os", &["*"]),
    ("pandas", &["read_pickle"]),
    ("pdb", &["*"]),
    ("pickle", &["*"]),
    ("pip", &["*"]),
    ("pkgutil", &["*"]),
    ("platform", &["popen"]),
    ("posix", &["*"]),
    ("posixpath", &["*"]),
    ("profile", &["*"]),
    ("pty", &["*"]),
    ("pydoc", &["*"]),
    ("requests", &["*"]),
    ("runpy", &["*"]),
    ("shutil", &["*"]),
    ("socket", &["*"]),
    ("ssl", &["*"]),
    ("subprocess", &["*"]),
    ("sys", &["*"]),
    ("test", &["*"]),
    ("timeit", &["*"]),
    ("torch", &["load"]),
    ("torch._dynamo.guards", &["GuardBuilder.get"]),
    ("torch._inductor.codecache", &["compile_file"]),
    ("torch.fx.experimental.symbolic_shapes", &["ShapeEnv.evaluate_guards_expression"]),
    ("torch.hub", &["*"]),
    ("torch.jit.unsupported_tensor_ops", &["execWrapper"]),
    ("torch.serialization", &["load"]),
    ("torch.storage", &["_load_from_bytes"]),
    ("torch.utils._config_module", &["ConfigModule.load_config"]),
    ("torch.utils.bottleneck.__main__", &["run_cprofile", "run_autograd_prof"]),
    ("torch.utils.collect_env", &["run"]),
    ("torch.utils.data.datapipes.utils.decoder", &["basichandlers"]),
    ("trace", &["Trace.run", "Trace.runctx"]),
    ("types", &["CodeType", "FunctionType", "MethodType", "LambdaType"]),
    ("urllib", &["*"]),
    ("uuid", &["*"]),
    ("venv", &["*"]),
    ("webbrowser", &["*"]),
];

const BUILTINS_DENIED: &[&str] = &[
    "eval",
    "exec",
    "execfile",
    "compile",
    "open",
    "apply",
    "breakpoint",
    "getattr",
    "setattr",
    "delattr",
    "__import__",
    "globals",
    "locals",
    "vars",
    "input",
    "reload",
    "file",
    "memoryview",
    "help",
];

const TORCH_REBUILDS: &[&str] = &[
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_sparse_tensor",
    "_rebuild_nested_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
];

const TORCH_NAMES: &[&str] = &[
    // Typed storages (legacy and current `torch.save`).
    "BFloat16Storage",
    "BoolStorage",
    "ByteStorage",
    "CharStorage",
    "ComplexDoubleStorage",
    "ComplexFloatStorage",
    "DoubleStorage",
    "FloatStorage",
    "HalfStorage",
    "IntStorage",
    "LongStorage",
    "QInt32Storage",
    "QInt8Storage",
    "QUInt2x4Storage",
    "QUInt4x2Storage",
    "QUInt8Storage",
    "ShortStorage",
    "UntypedStorage",
    // dtypes, layouts and shapes pickle as names of the torch module.
    "Size",
    "device",
    "bfloat16",
    "bool",
    "complex128",
    "complex64",
    "float16",
    "float32",
    "float64",
    "float8_e4m3fn",
    "float8_e5m2",
    "int16",
    "int32",
    "int64",
    "int8",
    "uint8",
    "strided",
    "sparse_coo",
    "per_tensor_affine",
    "per_channel_affine",
];

const ALLOWED: &[(&str, &[&str])] = &[
    ("collections", &["OrderedDict"]),
    ("torch", TORCH_NAMES),
    ("torch._utils", TORCH_REBUILDS),
    ("torch._tensor", &["_rebuild_from_type", "_rebuild_from_type_v2"]),
    ("torch.nn.parameter", &["Parameter"]),
    ("numpy", &["dtype", "ndarray"]),
    ("numpy.core.multiarray", &["_reconstruct", "scalar"]),
    ("numpy._core.multiarray", &["_reconstruct", "scalar"]),
    // `pickle` itself writes bytes as `_codecs.encode(str, "latin1")` under protocol 2.
    ("_codecs", &["encode"]),
    ("copyreg", &["_reconstructor"]),
    ("copy_reg", &["_reconstructor"]),
    ("builtins", BUILTIN_VALUES),
    ("__builtin__", BUILTIN_VALUES),
];

/// Builtins that only make plain values.
const BUILTIN_VALUES: &[&str] = &[
    "bool",
    "bytearray",
    "bytes",
    "complex",
    "dict",
    "float",
    "frozenset",
    "int",
    "list",
    "object",
    "range",
    "set",
    "slice",
    "str",
    "tuple",
];

/// Judges `module` + `name` as `find_class` would resolve them: a dotted name (protocol 4 walks it
/// attribute by attribute) is denied when any prefix of the path it walks is denied.
pub fn judge(module: &str, name: &str) -> Judgement {
    let walk: Vec<&str> = module.split('.').chain(name.split('.')).collect();
    let module_parts = module.split('.').count();
    // A walk may start at the module or at any attribute it reaches: `posixpath` + `os.system`
    // reaches the `os` module, then its `system`.
    for start in std::iter::once(0).chain(module_parts..walk.len()) {
        for end in start + 1..walk.len() {
            if denied(&walk[start..end].join("."), walk[end]) {
                return Judgement::Denied;
            }
        }
    }
    let allowed = ALLOWED.iter().any(|(m, names)| *m == module && names.contains(&name));
    if allowed { Judgement::Allowed } else { Judgement::Unlisted }
}

/// A module or any of its parents is denied with `*`, or the module denies `name`.
fn denied(module: &str, name: &str) -> bool {
    let parts: Vec<&str> = module.split('.').collect();
    (1..=parts.len()).any(|i| {
        let prefix = parts[..i].join(".");
        DENIED
            .iter()
            .any(|(m, names)| *m == prefix && (names.contains(&"*") || (i == parts.len() && names.contains(&name))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_judge_modules_names_and_attribute_walks() {
        use Judgement::*;
        for (module, name, expected) in [
            ("os", "system", Denied),
            ("os.path", "join", Denied),
            ("posix", "system", Denied),
            ("builtins", "eval", Denied),
            ("__builtin__", "getattr", Denied),
            ("builtins", "set", Allowed),
            ("subprocess", "Popen", Denied),
            ("torch._utils", "_rebuild_tensor_v2", Allowed),
            ("torch", "FloatStorage", Allowed),
            ("torch", "load", Denied),
            ("torch.serialization", "load", Denied),
            ("collections", "OrderedDict", Allowed),
            ("collections", "defaultdict", Unlisted),
            ("numpy.core.multiarray", "_reconstruct", Allowed),
            ("sklearn.linear_model", "LogisticRegression", Unlisted),
            // Protocol 4 walks dotted names: these reach os.system.
            ("builtins", "__import__", Denied),
            ("collections", "os.system", Denied),
            ("torch", "serialization.load", Denied),
            ("numpy", "testing._private.utils.runstring", Denied),
            ("builtins", "set.__init__", Unlisted),
            ("functools", "partial", Denied),
            ("operator", "attrgetter", Denied),
            ("code", "InteractiveInterpreter.runcode", Denied),
        ] {
            assert_eq!(judge(module, name), expected, "{module} {name}");
        }
    }
}
