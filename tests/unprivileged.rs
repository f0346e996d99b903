//! The node-side commands as a pull Job's container really runs them on a kubelet: uid 0 with every
//! capability dropped and no_new_privs (what `capabilities: drop: [ALL]` and
//! `allowPrivilegeEscalation: false` give), and as a non-root uid that owns the cache directory.
//! Without the bed: the artifacts come from a registry of the test's own on 127.0.0.1.
//!
//! Root without CAP_DAC_OVERRIDE is held to permission bits like any user, so a cache that makes
//! its published trees read-only must still be able to move, link and remove them as their owner.

mod support;

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use modelpack_operator::cache::{PullOutcome, ScrubOutcome};
use support::craft::{Artifact, Blob};
use support::static_registry::StaticRegistry;

const BIN: &str = env!("CARGO_BIN_EXE_modelpack-operator");
const REPO: &str = "unprivileged/model";
const LINK: &str = "deployments/ml/llm";

/// Who runs the command.
#[derive(Clone, Copy, Debug)]
enum As {
    /// uid 0, no capabilities in any set, no_new_privs.
    RootWithoutCapabilities,
    /// uid/gid 65532 (the distroless "nonroot"), no capabilities, no_new_privs.
    NonRoot,
}

fn setpriv(who: As) -> Command {
    let mut c = Command::new("setpriv");
    if let As::NonRoot = who {
        c.args(["--reuid=65532", "--regid=65532", "--clear-groups"]);
    }
    c.args(["--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]);
    c
}

/// Runs the operator binary as `who`: exit code, stdout, stderr.
fn run(who: As, args: &[&str]) -> (i32, String, String) {
    let out = setpriv(who).arg(BIN).args(args).output().expect("running setpriv (util-linux)");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The effective capabilities a command run as `who` has (so the test cannot pass with privileges).
fn effective_caps(who: As) -> String {
    let out = setpriv(who).args(["grep", "^CapEff:", "/proc/self/status"]).output().expect("setpriv grep");
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap_or_default().to_owned()
}

fn raw(data: Vec<u8>, path: &str) -> Blob {
    Blob::new("application/vnd.cncf.model.weight.v1.raw", data).annotate("org.cncf.model.filepath", path)
}

/// A tar layer holding a directory tree (so the published model has sealed subdirectories).
fn tree(seed: u64) -> Blob {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, size) in [("tokenizer/vocab.json", 3000), ("tokenizer/merges/a.txt", 500)] {
        let data = support::fixtures::pseudo_random(seed, size);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, data.as_slice()).expect("tar entry");
    }
    let archive = builder.into_inner().expect("tar");
    Blob::new("application/vnd.cncf.model.weight.v1.tar", archive).annotate("org.cncf.model.filepath", "tokenizer/")
}

fn version(registry: &StaticRegistry, i: u64, size: usize) -> String {
    let config =
        serde_json::json!({"descriptor": {"name": "unprivileged"}, "modelfs": {"type": "layers", "diffIds": []}});
    let artifact = Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![raw(support::fixtures::pseudo_random(100 + i, size), "model.safetensors"), tree(i)],
        annotations: BTreeMap::new(),
    };
    registry.push(REPO, &format!("v{i}"), &artifact)
}

fn pull(who: As, registry: &StaticRegistry, cache: &Path, digest: &str, extra: &[&str]) -> (i32, PullOutcome, String) {
    let log = cache.parent().unwrap().join("termination-log");
    let _ = std::fs::remove_file(&log);
    let reference = format!("{}/{REPO}@{digest}", registry.host);
    let mut args = vec!["pull", "--insecure", &reference, "--cache-dir", cache.to_str().unwrap(), "--link", LINK];
    let log_arg = log.display().to_string();
    args.extend(["--termination-log", &log_arg]);
    args.extend(extra);
    let (code, _, stderr) = run(who, &args);
    let outcome = std::fs::read(&log)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("pull as {who:?} exited {code} without an outcome: {stderr}"));
    (code, outcome, stderr)
}

fn model_dir(cache: &Path, digest: &str) -> std::path::PathBuf {
    cache.join("models/sha256").join(digest.trim_start_matches("sha256:"))
}

/// Pull, a second version keeping the first, a budget that evicts, a scrub that finds a changed
/// file, and `gc --unlink`, all as `who` in a cache directory `who` owns.
fn lifecycle(who: As) {
    let registry = StaticRegistry::start();
    let size = 1 << 20;
    let digests: Vec<String> = (0..3).map(|i| version(&registry, i, size)).collect();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    if let As::NonRoot = who {
        // What the node path needs for a non-root pull: the directory belongs to that uid.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65532), Some(65532)).unwrap();
        std::os::unix::fs::chown(&cache, Some(65532), Some(65532)).unwrap();
    }
    assert_eq!(effective_caps(who), "0000000000000000", "the commands must run without capabilities");

    let (code, outcome, stderr) = pull(who, &registry, &cache, &digests[0], &[]);
    assert_eq!(code, 0, "first pull as {who:?}: {stderr}");
    assert!(outcome.error.is_none() && outcome.files == 3, "{outcome:?}");
    let current = std::fs::read_link(cache.join(LINK).join("current")).expect("current link");
    assert!(current.to_string_lossy().contains(digests[0].trim_start_matches("sha256:")), "{current:?}");
    let published = model_dir(&cache, &digests[0]);
    assert_eq!(std::fs::read(published.join("model.safetensors")).unwrap().len(), size);
    assert!(published.join("tokenizer/merges/a.txt").is_file());
    for dir in [published.clone(), published.join("tokenizer")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o555, "published directories are read-only: {}", dir.display());
    }

    // A second version, keeping the first warm.
    let (code, _, stderr) = pull(who, &registry, &cache, &digests[1], &["--keep", &digests[0]]);
    assert_eq!(code, 0, "second pull with --keep as {who:?}: {stderr}");
    assert!(model_dir(&cache, &digests[0]).is_dir() && model_dir(&cache, &digests[1]).is_dir());

    // A budget that holds two versions but not three: the kept one is evicted for the third.
    let budget = format!("{}", 2 * size + size / 2 + (64 << 10));
    let (code, outcome, stderr) =
        pull(who, &registry, &cache, &digests[2], &["--keep", &digests[1], "--cache-limit", &budget]);
    assert_eq!(code, 0, "pull that evicts as {who:?}: {stderr} {outcome:?}");
    assert!(!outcome.evicted.is_empty(), "nothing evicted: {outcome:?}");
    assert!(!model_dir(&cache, &digests[0]).exists(), "the oldest version was not evicted");
    assert!(model_dir(&cache, &digests[2]).join("model.safetensors").is_file());

    // A changed byte in a published file: scrub finds it and removes the model.
    let file = model_dir(&cache, &digests[2]).join("tokenizer/vocab.json");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.seek(SeekFrom::Start(7)).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let (code, stdout, stderr) = run(who, &["scrub", "--cache-dir", cache.to_str().unwrap()]);
    let scrubbed: ScrubOutcome =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("scrub as {who:?} exited {code} ({e}): {stderr}"));
    assert_eq!(code, 1, "scrub as {who:?} should report the changed file: {stdout} {stderr}");
    assert!(!model_dir(&cache, &digests[2]).exists(), "scrub left the corrupt model: {scrubbed:?}");

    // gc --unlink forgets the deployment and collects what only it held.
    let (code, stdout, stderr) = run(who, &["gc", "--cache-dir", cache.to_str().unwrap(), "--unlink", LINK]);
    assert_eq!(code, 0, "gc --unlink as {who:?}: {stdout} {stderr}");
    assert!(!cache.join(LINK).exists(), "the deployment's link directory is still there");
    let left: Vec<_> = std::fs::read_dir(cache.join("models/sha256")).unwrap().flatten().collect();
    assert!(left.is_empty(), "models left after gc --unlink: {left:?}");
}

#[test]
fn every_node_command_works_as_root_without_capabilities() {
    lifecycle(As::RootWithoutCapabilities);
}

#[test]
fn every_node_command_works_as_a_non_root_uid_owning_the_cache() {
    lifecycle(As::NonRoot);
}
