//! OpenSSF model signing side by side with `model_signing verify` (PyPI model-signing 1.1.1, the
//! venv `e2e/tools/build python` makes), without the bed: each case's signature is made by
//! `model_signing sign` over a directory, its ModelPack is pushed by `oras push` from a (possibly
//! different) directory into an `olareg` of the test's own on 127.0.0.1 (it has the referrers
//! API), and the bundle attached by `oras attach` as the README shows. The operator's verdict is
//! `verify` then, if that passes, `pull --model-signature` (the node's check of archive files);
//! `model_signing verify` judges the directory the ModelPack was pushed from, and, when the
//! operator accepts, the directory the cache published too. Keyless signatures are
//! `model_signing`'s statement signed by `sigstoretest` (Fulcio, Rekor and TSA played by
//! sigstore-go's test CA), judged by `model_signing verify sigstore --trust_config`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_modelpack-operator");
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

fn cache_root() -> PathBuf {
    std::env::var_os("MODELPACK_TOOLS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").expect("HOME");
        PathBuf::from(home).join(".cache/modelpack-operator/tools")
    })
}

fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("MODELPACK_E2E_TOOLS").map_or_else(|| cache_root().join("current"), PathBuf::from);
    let path = dir.join(name);
    assert!(path.exists(), "{} missing: run e2e/tools/build", path.display());
    path
}

fn model_signing() -> PathBuf {
    let path = cache_root().join("python/bin/model_signing");
    assert!(path.exists(), "{} missing: run e2e/tools/build python", path.display());
    path
}

/// Runs a command; its exit status and combined output.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn must(cmd: &mut Command) -> String {
    let (ok, out) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{out}");
    out
}

/// An olareg of the test's own, in memory, stopped when dropped.
struct Olareg {
    child: Child,
    host: String,
}

impl Olareg {
    fn start() -> Olareg {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(tool("olareg"))
            .args(["serve", "--addr", "127.0.0.1", "--port", &port.to_string(), "--store-type", "mem"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting olareg");
        let host = format!("127.0.0.1:{port}");
        // Owned from here: dropped (killed and waited for) whether it listens or not.
        let registry = Olareg { child, host };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&registry.host).is_ok() {
                return registry;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("olareg did not listen on {}", registry.host);
    }
}

impl Drop for Olareg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys and a certificate chain made with openssl.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ossl = |args: &[&str]| must(Command::new("openssl").args(args).current_dir(d));
        std::fs::write(
            d.join("ext.cnf"),
            "[ca]\nbasicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign\n\
             [leaf]\nbasicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n",
        )
        .unwrap();
        for name in ["signer", "other", "root", "other-root"] {
            ossl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{name}.key")]);
            ossl(&["ec", "-in", &format!("{name}.key"), "-pubout", "-out", &format!("{name}.pub")]);
        }
        for root in ["root", "other-root"] {
            ossl(&["req", "-new", "-key", &format!("{root}.key"), "-subj", "/CN=model root", "-out", "r.csr"]);
            ossl(&[
                "x509",
                "-req",
                "-in",
                "r.csr",
                "-signkey",
                &format!("{root}.key"),
                "-days",
                "30",
                "-extfile",
                "ext.cnf",
                "-extensions",
                "ca",
                "-out",
                &format!("{root}.pem"),
            ]);
        }
        ossl(&["req", "-new", "-key", "signer.key", "-subj", "/CN=model signer/O=acme", "-out", "s.csr"]);
        ossl(&[
            "x509",
            "-req",
            "-in",
            "s.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "leaf",
            "-out",
            "signer.pem",
        ]);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Key,
    Certificate,
    /// `model_signing`'s own statement signed keyless by `sigstoretest` with this recipe (a
    /// Fulcio/Rekor stack does not run here; see tests/bed/verify_keyless.rs).
    Keyless(&'static str),
}

/// A keyless signature: its bundle, trusted root and the identity it is verified against, as
/// `sigstoretest -statement` printed them.
struct KeylessSig {
    root: PathBuf,
    identity: String,
    issuer: String,
}

/// Re-signs the statement of the key-signed bundle at `sig` keyless with `recipe`, in place.
fn keyless_sign(sig: &Path, recipe: &str, work: &Path) -> KeylessSig {
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(sig).unwrap()).unwrap();
    let payload = bundle["dsseEnvelope"]["payload"].as_str().expect("a DSSE bundle");
    use base64::Engine;
    let statement = base64::engine::general_purpose::STANDARD.decode(payload).unwrap();
    let (statement_file, out) = (work.join("statement.json"), work.join("keyless"));
    std::fs::write(&statement_file, statement).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let printed = must(
        Command::new(tool("sigstoretest"))
            .arg("-statement")
            .arg(&statement_file)
            .arg("-out")
            .arg(&out)
            .args(["-case", recipe]),
    );
    let line: serde_json::Value = serde_json::from_str(printed.trim()).unwrap_or_else(|e| panic!("{e}: {printed}"));
    let field = |f: &str| line[f].as_str().unwrap_or_else(|| panic!("no {f} in {printed}")).to_owned();
    std::fs::copy(field("reference"), sig).unwrap();
    KeylessSig { root: PathBuf::from(field("root")), identity: field("identity"), issuer: field("issuer") }
}

/// A sigstore-python client trust config holding `root` (signing services left empty: verify only).
fn trust_config(root: &Path, work: &Path) -> PathBuf {
    let root: serde_json::Value = serde_json::from_slice(&std::fs::read(root).unwrap()).unwrap();
    let config = serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": root,
        "signingConfig": {"mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
            "caUrls": [], "oidcUrls": [], "rekorTlogUrls": [], "tsaUrls": [],
            "rekorTlogConfig": {"selector": "ANY"}, "tsaConfig": {"selector": "ANY"}},
    });
    let path = work.join("trust_config.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}

/// Files of a model directory: (path, bytes).
type Files = Vec<(&'static str, Vec<u8>)>;

fn write_dir(dir: &Path, files: &Files) {
    for (path, data) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

fn base() -> Files {
    vec![
        ("config.json", b"{\"hidden\": 64}".to_vec()),
        ("model.safetensors", (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect()),
        ("tokenizer/vocab.txt", b"a\nb\nc\n".to_vec()),
        ("tokenizer/merges.txt", b"a b\n".to_vec()),
    ]
}

struct Case {
    name: &'static str,
    mode: Mode,
    /// What `model_signing sign` signs.
    signed: Files,
    /// What the ModelPack holds.
    packed: Files,
    /// `--ignore-paths` given to `model_signing sign` (relative to the model directory).
    ignore: Option<&'static str>,
    /// Trust the verification with another key / root than the signer's.
    wrong_trust: bool,
    /// `vnd.cnai` (legacy) instead of `vnd.cncf`.
    cnai: bool,
    /// In the ModelPack, this file is replaced by a symlink to that one (inside an archive layer).
    symlink: Option<(&'static str, &'static str)>,
}

impl Case {
    fn new(name: &'static str, mode: Mode) -> Case {
        Case {
            name,
            mode,
            signed: base(),
            packed: base(),
            ignore: None,
            wrong_trust: false,
            cnai: false,
            symlink: None,
        }
    }
}

struct Verdicts {
    ours: Result<(), String>,
    /// `check` with a rule requiring a model signature of every file: (with the trust flags,
    /// without them) passed, on the cases [`POLICY_CASES`] names.
    policy: Option<(bool, bool)>,
    theirs: bool,
    /// `model_signing verify` on the directory the cache published, when ours accepted.
    published: Option<(bool, String)>,
}

fn judge(case: &Case, pki: &Pki, registry: &Olareg) -> Verdicts {
    let work = tempfile::tempdir().unwrap();
    let (signed, packed) = (work.path().join("signed/model"), work.path().join("packed/model"));
    write_dir(&signed, &case.signed);
    write_dir(&packed, &case.packed);
    if let Some((path, target)) = case.symlink {
        std::fs::remove_file(packed.join(path)).unwrap();
        std::os::unix::fs::symlink(target, packed.join(path)).unwrap();
    }
    let sig = work.path().join("model.sig");

    let mut sign = Command::new(model_signing());
    match case.mode {
        Mode::Key | Mode::Keyless(_) => sign.args(["sign", "key", "--private_key"]).arg(pki.path("signer.key")),
        Mode::Certificate => sign
            .args(["sign", "certificate", "--private_key"])
            .arg(pki.path("signer.key"))
            .arg("--signing_certificate")
            .arg(pki.path("signer.pem"))
            .arg("--certificate_chain")
            .arg(pki.path("root.pem")),
    };
    if let Some(ignore) = case.ignore {
        sign.arg("--ignore-paths").arg(signed.join(ignore));
    }
    must(sign.arg("--signature").arg(&sig).arg(&signed));
    let keyless = match case.mode {
        Mode::Keyless(recipe) => Some(keyless_sign(&sig, recipe, work.path())),
        _ => None,
    };

    // The ModelPack: top-level files as raw layers, top-level directories as tar+gzip layers.
    let vendor = if case.cnai { "cnai" } else { "cncf" };
    let mut tops: Vec<&str> = case.packed.iter().map(|(p, _)| p.split('/').next().unwrap()).collect();
    tops.dedup();
    let mut annotations = serde_json::Map::new();
    let mut layers = Vec::new();
    for top in &tops {
        let is_dir = packed.join(top).is_dir();
        let path = if is_dir { format!("{top}/") } else { (*top).to_owned() };
        annotations.insert((*top).to_owned(), serde_json::json!({format!("org.{vendor}.model.filepath"): path}));
        let format = if is_dir { "tar+gzip" } else { "raw" };
        layers.push(format!("{top}:application/vnd.{vendor}.model.weight.v1.{format}"));
    }
    let config = work.path().join("config.json");
    std::fs::write(&config, br#"{"descriptor": {"name": "m"}, "modelfs": {"type": "layers", "diffIds": []}}"#).unwrap();
    let annotation_file = work.path().join("annotations.json");
    std::fs::write(&annotation_file, serde_json::to_vec(&annotations).unwrap()).unwrap();
    let reference = format!("{}/{}:v1", registry.host, case.name);
    let pushed = must(
        Command::new(tool("oras"))
            .current_dir(&packed)
            .args(["push", "--plain-http", "--format", "json", "--artifact-type"])
            .arg(format!("application/vnd.{vendor}.model.manifest.v1+json"))
            .arg("--config")
            .arg(format!("{}:application/vnd.{vendor}.model.config.v1+json", config.display()))
            .arg("--annotation-file")
            .arg(&annotation_file)
            .arg(&reference)
            .args(&layers),
    );
    let digest = json_field(&pushed, "digest");
    let attached = must(
        Command::new(tool("oras"))
            .current_dir(work.path())
            .args(["attach", "--plain-http", "--format", "json", "--artifact-type", BUNDLE, "--annotation"])
            .arg("dev.sigstore.bundle.predicateType=https://model_signing/signature/v1.0")
            .arg(&reference)
            .arg(format!("model.sig:{BUNDLE}")),
    );
    let signature = json_field(&attached, "digest");

    let (key, root) = if case.wrong_trust { ("other.pub", "other-root.pem") } else { ("signer.pub", "root.pem") };
    let mut verify = Command::new(BIN);
    verify.args(["verify", "--insecure", &reference]);
    match (case.mode, &keyless) {
        (Mode::Key, _) => verify.arg("--model-signing-key").arg(pki.path(key)),
        (Mode::Certificate, _) => verify.arg("--model-signing-certs").arg(pki.path(root)),
        (Mode::Keyless(_), Some(k)) => verify.args(["--model-signing", "--trusted-root"]).arg(&k.root).args([
            "--certificate-identity",
            &k.identity,
            "--certificate-oidc-issuer",
            &k.issuer,
        ]),
        (Mode::Keyless(_), None) => unreachable!("signed keyless above"),
    };
    let cache = work.path().join("cache");
    let ours = match run(&mut verify) {
        (false, out) => Err(format!("verify: {out}")),
        (true, _) => {
            let model = format!("{}/{}@{digest}", registry.host, case.name);
            let mut pull = Command::new(BIN);
            pull.args(["pull", "--insecure", &model, "--model-signature", &signature, "--cache-dir"]).arg(&cache);
            match run(&mut pull) {
                (true, _) => Ok(()),
                (false, out) => Err(format!("pull: {out}")),
            }
        }
    };

    let policy = POLICY_CASES.contains(&case.name).then(|| {
        // The anchor as openssl computes it: the SubjectPublicKeyInfo of the key, or the Fulcio
        // root certificate of the trusted root.
        let anchor = match &keyless {
            Some(k) => crate::support::fulcio_root_fingerprint(&k.root),
            None => crate::support::openssl_fingerprint(&["pkey", "-pubin", "-in"], &pki.path(key)),
        };
        let rule = format!(
            "verified.provider == 'modelSigning' && verified.files == {} && verified.anchor == '{anchor}'",
            case.signed.len()
        );
        let doc = serde_json::json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "ModelPolicy",
            "metadata": {"name": "signed-files"}, "spec": {"action": "Enforce", "rules": [{"name": "model-signing",
            "expression": rule}]}});
        let file = work.path().join("policy.json");
        std::fs::write(&file, doc.to_string()).unwrap();
        let mut with_trust = Command::new(BIN);
        with_trust.args(["check", "--insecure", &reference, "--policy"]).arg(&file);
        with_trust.args(verify.get_args().skip(3));
        let without = run(Command::new(BIN).args(["check", "--insecure", &reference, "--policy"]).arg(&file)).0;
        (run(&mut with_trust).0, without)
    });

    let oracle = |dir: &Path| {
        let mut cmd = Command::new(model_signing());
        match (case.mode, &keyless) {
            (Mode::Key, _) => cmd.args(["verify", "key", "--public_key"]).arg(pki.path(key)),
            (Mode::Certificate, _) => cmd.args(["verify", "certificate", "--certificate_chain"]).arg(pki.path(root)),
            (Mode::Keyless(_), Some(k)) => cmd
                .args(["verify", "sigstore", "--trust_config"])
                .arg(trust_config(&k.root, work.path()))
                .args(["--identity", &k.identity, "--identity_provider", &k.issuer]),
            (Mode::Keyless(_), None) => unreachable!("signed keyless above"),
        };
        run(cmd.arg("--signature").arg(&sig).arg(dir))
    };
    let theirs = oracle(&packed).0;
    let published = ours.is_ok().then(|| {
        let hex = digest.trim_start_matches("sha256:");
        oracle(&cache.join("models/sha256").join(hex))
    });
    Verdicts { ours, policy, theirs, published }
}

/// Cases on which `check` also runs (its verdict must be the verification's).
const POLICY_CASES: [&str; 4] = ["valid-key", "keyless-valid", "wrong-key", "keyless-wrong-identity"];

fn json_field(out: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    v[field].as_str().unwrap_or_else(|| panic!("no {field} in:\n{out}")).to_owned()
}

fn changed(mut files: Files, path: &str) -> Files {
    let entry = files.iter_mut().find(|(p, _)| *p == path).expect("a file of the case");
    entry.1.push(b'!');
    files
}

fn cases() -> Vec<(Case, bool)> {
    let mut out = Vec::new();
    out.push((Case::new("valid-key", Mode::Key), true));
    out.push((Case::new("valid-certificate", Mode::Certificate), true));
    let mut legacy = Case::new("valid-cnai", Mode::Key);
    legacy.cnai = true;
    out.push((legacy, true));
    let mut c = Case::new("raw-file-changed", Mode::Key);
    c.packed = changed(base(), "model.safetensors");
    out.push((c, false));
    let mut c = Case::new("archived-file-changed", Mode::Certificate);
    c.packed = changed(base(), "tokenizer/vocab.txt");
    out.push((c, false));
    let mut c = Case::new("raw-file-added", Mode::Key);
    c.packed.push(("README.md", b"# model\n".to_vec()));
    out.push((c, false));
    let mut c = Case::new("archived-file-added", Mode::Key);
    c.packed.push(("tokenizer/extra.txt", b"x".to_vec()));
    out.push((c, false));
    let mut c = Case::new("raw-file-removed", Mode::Key);
    c.packed.retain(|(p, _)| *p != "config.json");
    out.push((c, false));
    let mut c = Case::new("archived-file-removed", Mode::Key);
    c.packed.retain(|(p, _)| *p != "tokenizer/merges.txt");
    out.push((c, false));
    let mut c = Case::new("symlink-where-a-file-was-signed", Mode::Key);
    c.symlink = Some(("tokenizer/merges.txt", "vocab.txt"));
    out.push((c, false));
    let mut c = Case::new("another-model", Mode::Key);
    c.signed = vec![("model.safetensors", b"another model".to_vec())];
    out.push((c, false));
    let mut c = Case::new("wrong-key", Mode::Key);
    c.wrong_trust = true;
    out.push((c, false));
    let mut c = Case::new("wrong-root", Mode::Certificate);
    c.wrong_trust = true;
    out.push((c, false));
    let mut c = Case::new("ignored-paths", Mode::Key);
    c.ignore = Some("docs");
    c.signed.push(("docs/notes.md", b"signed as ignored".to_vec()));
    c.packed.push(("docs/notes.md", b"changed, still ignored".to_vec()));
    out.push((c, true));
    // Keyless: each of sigstoretest's recipes (the cosign cases of tests/bed/verify_keyless.rs but
    // the one about another image's digest), over model_signing's own statement.
    let keyless = [
        ("valid", true),
        ("valid-log-only", true),
        ("valid-tsa-only", false),
        ("wrong-identity", false),
        ("wrong-issuer", false),
        ("outside-validity-no-proof", false),
        ("log-time-outside-validity", false),
        ("expired-with-log", true),
        ("expired-with-timestamp", false),
        ("tampered-log-entry", false),
        ("log-entry-of-another-signature", false),
        ("log-key-absent", false),
        ("tsa-key-absent", false),
        ("tsa-cert-expired", false),
        ("other-ca", false),
        ("sct-of-unknown-log", false),
        ("not-a-code-signing-certificate", false),
    ];
    for (recipe, accepted) in keyless {
        let name: &'static str = Box::leak(format!("keyless-{recipe}").into_boxed_str());
        out.push((Case::new(name, Mode::Keyless(recipe)), accepted));
    }
    let mut c = Case::new("keyless-archived-file-changed", Mode::Keyless("valid"));
    c.packed = changed(base(), "tokenizer/vocab.txt");
    out.push((c, false));
    let mut c = Case::new("keyless-raw-file-added", Mode::Keyless("valid"));
    c.packed.push(("README.md", b"# model\n".to_vec()));
    out.push((c, false));
    out
}

#[test]
fn verdicts_agree_with_model_signing_verify() {
    let pki = Pki::new();
    let registry = Olareg::start();
    let mut disagreements = Vec::new();
    for (case, accepted) in cases() {
        let v = judge(&case, &pki, &registry);
        eprintln!("{}: ours {:?}, model_signing {}", case.name, v.ours, v.theirs);
        if v.ours.is_ok() != v.theirs || v.theirs != accepted {
            disagreements.push(format!("{}: ours {:?}, model_signing verify {}", case.name, v.ours, v.theirs));
        }
        if let Some((with_trust, without)) = v.policy
            && (with_trust != accepted || without)
        {
            disagreements.push(format!(
                "{}: check requiring a model signature passed {with_trust} with the trust flags, {without} without",
                case.name
            ));
        }
        if let Some((false, out)) = v.published {
            disagreements.push(format!("{}: model_signing verify refuses the published directory: {out}", case.name));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
