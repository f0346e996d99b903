//! cosign keyless verification, bed-free, side by side with `cosign verify --offline`: the outside
//! producer `sigstoretest` (sigstore-go's test CA playing Fulcio, Rekor and a TSA, cosign's own
//! writers) signs one image per case in a registry served by olareg on 127.0.0.1, in both storage
//! forms, and our verdict on each case must be cosign's.
//!
//! Tools come from `MODELPACK_E2E_TOOLS` or the default cache (`e2e/tools/build`); this file needs
//! `olareg`, `cosign` and `sigstoretest`, not the bed.

use crate::support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{operator, run_tool};

fn tools() -> PathBuf {
    std::env::var_os("MODELPACK_E2E_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").expect("HOME");
        Path::new(&home).join(".cache/modelpack-operator/tools/current")
    })
}

fn tool(name: &str) -> PathBuf {
    let path = tools().join(name);
    assert!(path.exists(), "{} is missing: run e2e/tools/build", path.display());
    path
}

/// olareg on a free loopback port, killed when dropped.
struct Olareg(Child, String);

impl Olareg {
    fn start() -> Olareg {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(tool("olareg"))
            .args(["serve", "--addr", "127.0.0.1", "--port", &port.to_string(), "--store-type", "mem"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting olareg");
        let host = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "olareg did not listen on {host}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Olareg(child, host)
    }
}

impl Drop for Olareg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The producer's cases in `format` (`sig` or `bundle`), each a JSON line.
fn produce(registry: &str, format: &str, out: &Path) -> Vec<Value> {
    let stdout = run_tool(
        &tool("sigstoretest"),
        &["-registry", registry, "-repo", "keyless", "-format", format, "-out", out.to_str().unwrap()],
        &[],
        None,
    );
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn text(case: &Value, field: &str) -> String {
    case[field].as_str().unwrap().to_owned()
}

fn cosign_verifies(case: &Value) -> bool {
    let mut args = vec!["verify", "--offline", "--allow-http-registry"];
    let (root, id, iss, reference) =
        (text(case, "root"), text(case, "identity"), text(case, "issuer"), text(case, "reference"));
    args.extend(["--trusted-root", &root, "--certificate-identity", &id, "--certificate-oidc-issuer", &iss]);
    let flags: Vec<String> =
        case["cosignFlags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
    args.extend(flags.iter().map(String::as_str));
    if case["format"] == "bundle" {
        args.push("--new-bundle-format");
    }
    args.push(&reference);
    let out = Command::new(tool("cosign")).args(&args).output().expect("running cosign");
    out.status.success()
}

fn ours(case: &Value, identity_flag: &str, identity: &str) -> (i32, Value, String) {
    let (root, iss, reference) = (text(case, "root"), text(case, "issuer"), text(case, "reference"));
    let args = ["verify", "--insecure", "-o", "json", "--trusted-root", &root, identity_flag, identity];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--certificate-oidc-issuer", &iss, &reference]);
    let (code, stdout, stderr) = operator(&args);
    (code, serde_json::from_str(&stdout).unwrap_or(Value::Null), stderr)
}

/// The cases a correct verifier accepts; every other case is refused (by cosign as by us).
const ACCEPTED: &[&str] = &["valid", "valid-log-only", "valid-tsa-only", "expired-with-log", "expired-with-timestamp"];

#[test]
fn verdicts_match_cosign_verify_on_every_case_in_both_storage_forms() {
    let registry = Olareg::start();
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for format in ["sig", "bundle"] {
        let out = dir.path().join(format);
        std::fs::create_dir_all(&out).unwrap();
        for case in produce(&registry.1, format, &out) {
            let name = text(&case, "case");
            let expect = ACCEPTED.contains(&name.as_str());
            let (code, verdict, stderr) = ours(&case, "--certificate-identity", &text(&case, "identity"));
            assert_eq!(cosign_verifies(&case), expect, "cosign's verdict on {format} {name}");
            assert_eq!(code == 0, expect, "our verdict on {format} {name}: {verdict} {stderr}");
            assert_eq!(verdict["verified"], expect, "{format} {name}: {verdict}");
            if expect {
                let who = verdict["identity"].as_str().unwrap();
                assert!(who.starts_with(&text(&case, "identity")) && who.contains(&text(&case, "issuer")), "{who}");
                let root = std::path::PathBuf::from(text(&case, "root"));
                assert_eq!(verdict["anchor"], crate::support::fulcio_root_fingerprint(&root).as_str(), "{name}");
                assert!(verdict["signatureDigest"].as_str().unwrap().starts_with("sha256:"));
            }
            compared += 1;
        }
    }
    assert!(compared >= 30, "{compared} cases compared");
}

#[test]
fn identities_match_by_expression_and_bad_trust_is_one_line() {
    let registry = Olareg::start();
    let dir = tempfile::tempdir().unwrap();
    let cases = produce(&registry.1, "sig", dir.path());
    let valid = cases.iter().find(|c| c["case"] == "valid").unwrap();
    let (code, verdict, _) = ours(valid, "--certificate-identity-regexp", "^https://github\\.com/acme/models/");
    assert_eq!(code, 0, "{verdict}");
    let (code, verdict, _) = ours(valid, "--certificate-identity-regexp", "^https://github\\.com/other/");
    assert_eq!((code, verdict["reason"].as_str()), (1, Some("identity mismatch")));

    // A regexp that does not compile, a root that does not parse: one line, exit 2, no verdict.
    let (code, stdout, stderr) = {
        let (code, v, e) = ours(valid, "--certificate-identity-regexp", "(unclosed");
        (code, v, e)
    };
    assert_eq!((code, stdout), (2, Value::Null));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--certificate-identity-regexp") && stderr.contains("(unclosed"), "{stderr}");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, b"{\"mediaType\": 1}").unwrap();
    let reference = text(valid, "reference");
    let (code, _, stderr) = operator(&[
        "verify",
        "--insecure",
        "--trusted-root",
        broken.to_str().unwrap(),
        "--certificate-identity",
        "x",
        "--certificate-oidc-issuer",
        "y",
        &reference,
    ]);
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("broken.json") && stderr.contains("trusted root"), "{stderr}");
}
