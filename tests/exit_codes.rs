//! The one exit-code table (src/exit.rs), per subcommand, without the bed: the binary run against a
//! registry of the test's own on 127.0.0.1, a port nobody listens on (a registry that is down), and
//! cache directories of its own. The table in docs/cli.md is read back and must be the code's.

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use modelpack_operator::exit::Exit;
use support::craft::{self, Artifact};
use support::static_registry::StaticRegistry;

const BIN: &str = env!("CARGO_BIN_EXE_modelpack-operator");
const REPO: &str = "exit/model";

fn run(args: &[&str]) -> (Option<Exit>, String) {
    run_with(args, &[])
}

fn run_with(args: &[&str], env: &[(&str, &str)]) -> (Option<Exit>, String) {
    let out = std::process::Command::new(BIN).args(args).envs(env.iter().copied()).output().expect("running it");
    let code = out.status.code().unwrap_or(-1);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (Exit::ALL.into_iter().find(|e| i32::from(e.code()) == code), format!("exit {code}: {text}"))
}

fn assert_exit(expected: Exit, args: &[&str]) -> String {
    let (exit, text) = run(args);
    assert_eq!(exit, Some(expected), "{args:?}: {text}");
    text
}

/// `127.0.0.1:PORT` with nothing listening: a registry that is down.
fn down() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    drop(listener);
    host
}

fn model() -> Artifact {
    craft::raw_model("exit", "model.safetensors", b"weights of the exit-code test".to_vec())
}

struct Served {
    registry: StaticRegistry,
    digest: String,
}

fn served() -> Served {
    let registry = StaticRegistry::start();
    let digest = registry.push(REPO, "v1", &model());
    registry.push("exit/image", "v1", &craft::container_image());
    Served { registry, digest }
}

#[test]
fn the_docs_table_is_the_codes_table() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    let section = docs.split("\n## ").find(|s| s.starts_with("Exit codes")).expect("docs/cli.md: ## Exit codes");
    let rows: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect())
        .collect();
    let expected: Vec<Vec<String>> =
        Exit::ALL.iter().map(|e| vec![e.code().to_string(), e.name().to_owned(), e.meaning().to_owned()]).collect();
    assert_eq!(rows, expected, "docs/cli.md's exit-code table differs from src/exit.rs");
}

#[test]
fn every_subcommand_prints_the_table_in_its_help() {
    for command in ["pull", "inspect", "verify", "check", "gc", "scrub"] {
        let text = assert_exit(Exit::Ok, &[command, "--help"]);
        assert!(text.contains(&Exit::table()), "{command} --help: {text}");
    }
    let text = assert_exit(Exit::Usage, &["no-such-command"]);
    assert!(text.contains("no-such-command"), "{text}");
}

#[test]
fn inspect() {
    let s = served();
    let host = &s.registry.host;
    assert_exit(Exit::Ok, &["inspect", "--insecure", &format!("{host}/{REPO}:v1")]);
    assert_exit(Exit::Refused, &["inspect", "--insecure", &format!("{host}/exit/image:v1")]);
    assert_exit(Exit::Undecided, &["inspect", "--insecure", "--timeout", "5", &format!("{}/{REPO}:v1", down())]);
    assert_exit(Exit::Usage, &["inspect", "--insecure", "UPPER/case:v1"]);
    assert_exit(Exit::Usage, &["inspect", "--ca-file", "/nonexistent/ca.pem", &format!("{host}/{REPO}:v1")]);
}

#[test]
fn verify() {
    let s = served();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&key, pair.public_key_pem()).unwrap();
    let key = key.to_str().unwrap();
    let reference = format!("{}/{REPO}:v1", s.registry.host);
    // Nothing signed it: a negative verdict.
    let text = assert_exit(Exit::Refused, &["verify", "--insecure", "--cosign-key", key, &reference]);
    assert!(text.contains("rejected"), "{text}");
    assert_exit(Exit::Undecided, &["verify", "--insecure", "--cosign-key", key, &format!("{}/{REPO}:v1", down())]);
    assert_exit(Exit::Usage, &["verify", "--insecure", &reference]);
    assert_exit(Exit::Usage, &["verify", "--insecure", "--cosign-key", "/nonexistent/key.pub", &reference]);
    assert_exit(Exit::Usage, &["verify", "--insecure", "--cosign-key", env!("CARGO_MANIFEST_DIR"), &reference]);
}

#[test]
fn check() {
    let s = served();
    let dir = tempfile::tempdir().unwrap();
    let policy = |name: &str, expression: &str| {
        let path = dir.path().join(format!("{name}.yaml"));
        let yaml = format!(
            "apiVersion: modelpack.dev/v1alpha1\nkind: ModelPolicy\nmetadata: {{name: {name}}}\nspec:\n  rules:\n  - name: r\n    expression: '{expression}'\n"
        );
        std::fs::write(&path, yaml).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (passes, fails, broken) =
        (policy("passes", "size(layers) == 1"), policy("fails", "size(layers) == 2"), policy("broken", "size(("));
    let reference = format!("{}/{REPO}:v1", s.registry.host);
    assert_exit(Exit::Ok, &["check", "--insecure", &reference, "--policy", &passes]);
    assert_exit(Exit::Refused, &["check", "--insecure", &reference, "--policy", &fails]);
    assert_exit(Exit::Usage, &["check", "--insecure", &reference, "--policy", &broken]);
    assert_exit(Exit::Usage, &["check", "--insecure", &reference, "--policy", "/nonexistent.yaml"]);
    assert_exit(Exit::Undecided, &["check", "--insecure", &format!("{}/{REPO}:v1", down()), "--policy", &passes]);
}

#[test]
fn pull() {
    let s = served();
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let host = &s.registry.host;
    let by_digest = format!("{host}/{REPO}@{}", s.digest);
    assert_exit(Exit::NoRoom, &["pull", "--insecure", "--cache-dir", dir, "--cache-limit", "1", &by_digest]);
    assert_exit(Exit::Ok, &["pull", "--insecure", "--cache-dir", dir, &by_digest]);
    assert_exit(Exit::Usage, &["pull", "--insecure", "--cache-dir", dir, &format!("{host}/{REPO}:v1")]);
    assert_exit(
        Exit::Undecided,
        &["pull", "--insecure", "--cache-dir", dir, &format!("{}/{REPO}@{}", down(), s.digest)],
    );
    // A container image is not a ModelPack: refused, not retried as an outage.
    let image = s.registry.push("exit/image", "v1", &craft::container_image());
    assert_exit(Exit::Refused, &["pull", "--insecure", "--cache-dir", dir, &format!("{host}/exit/image@{image}")]);
}

#[test]
fn gc_and_scrub() {
    let s = served();
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let by_digest = format!("{}/{REPO}@{}", s.registry.host, s.digest);
    assert_exit(Exit::Ok, &["pull", "--insecure", "--cache-dir", dir, "--link", "deployments/ml/m", &by_digest]);
    assert_exit(Exit::Ok, &["scrub", "--cache-dir", dir]);
    assert_exit(Exit::Ok, &["gc", "--cache-dir", dir]);
    assert_exit(Exit::Usage, &["gc", "--cache-dir", dir, "--unlink", "not-a-link"]);
    assert_exit(Exit::Usage, &["scrub", "--cache-dir", dir, "--rate", "50%"]);
    // A changed byte: the scrub removes the model, a negative verdict on the cache.
    let file = Path::new(dir).join("models/sha256").join(&s.digest["sha256:".len()..]).join("model.safetensors");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.seek(SeekFrom::Start(3)).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);
    assert_exit(Exit::Refused, &["scrub", "--cache-dir", dir]);
    // A cache directory that is a file: nothing can be decided about it.
    let not_a_dir = Path::new(dir).join("plain-file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    assert_exit(Exit::Undecided, &["scrub", "--cache-dir", not_a_dir.to_str().unwrap()]);
    assert_exit(Exit::Undecided, &["gc", "--cache-dir", not_a_dir.to_str().unwrap()]);
}

#[test]
fn crd_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("crds.yaml");
    assert_exit(Exit::Ok, &["crd", "-o", out.to_str().unwrap()]);
    let blocked = dir.path().join("plain-file");
    std::fs::write(&blocked, b"x").unwrap();
    assert_exit(Exit::Undecided, &["crd", "-o", blocked.join("crds.yaml").to_str().unwrap()]);
    assert_exit(Exit::Usage, &["run", "--concurrent", "0"]);
    // No cluster to talk to: the controllers cannot start.
    let (exit, text) = run_with(
        &["run", "--metrics-bind-address", "127.0.0.1:0", "--health-probe-bind-address", "127.0.0.1:0"],
        &[("KUBECONFIG", "/nonexistent/kubeconfig"), ("HOME", "/nonexistent"), ("KUBERNETES_SERVICE_HOST", "")],
    );
    assert_eq!(exit, Some(Exit::Undecided), "{text}");
}
