//! The node cache looking after itself, through the `pull` and `scrub` commands against the bed's
//! registry: a budget with eviction (least recently used kept version first, never a current one),
//! a preflight that fails fast having fetched nothing, and scrubs and pulls that find changed bytes
//! and heal them.

use crate::support;

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use modelpack_operator::cache::{FailureReason, PullOutcome, ScrubOutcome};
use support::proxy::{Misbehaviour, Proxy};
use support::{Bed, craft, operator, unique_suffix};

/// Runs `pull` (through `host`): exit code and the outcome (from the termination log).
fn pull(host: &str, repo: &str, digest: &str, cache: &Path, extra: &[&str]) -> (i32, PullOutcome, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let reference = format!("{host}/{repo}@{digest}");
    let mut args = vec!["pull", "--insecure", &reference, "--cache-dir", cache.to_str().unwrap()];
    args.extend(["--termination-log", log.path().to_str().unwrap()]);
    args.extend(extra);
    let (code, _, stderr) = operator(&args);
    let outcome = serde_json::from_slice(&std::fs::read(log.path()).unwrap())
        .unwrap_or_else(|e| panic!("pull exited {code} without an outcome ({e}): {stderr}"));
    (code, outcome, stderr)
}

fn scrub(cache: &Path) -> (i32, ScrubOutcome) {
    let (code, stdout, stderr) = operator(&["scrub", "--cache-dir", cache.to_str().unwrap()]);
    let outcome = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("scrub exited {code} ({e}): {stderr}"));
    (code, outcome)
}

fn raw(data: Vec<u8>, path: &str) -> craft::Blob {
    craft::Blob::new("application/vnd.cncf.model.weight.v1.raw", data).annotate("org.cncf.model.filepath", path)
}

fn artifact(layers: Vec<craft::Blob>) -> craft::Artifact {
    let config = serde_json::json!({"descriptor": {"name": "cache"}, "modelfs": {"type": "layers", "diffIds": []}});
    craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers,
        annotations: BTreeMap::new(),
    }
}

/// Pushes `count` versions of one repository, each a single raw layer of `size` distinct bytes.
async fn versions(name: &str, count: u64, size: usize) -> (String, Vec<(String, Vec<u8>)>) {
    let bed = Bed::get();
    let repo = format!("cache/{name}-{}", unique_suffix());
    let mut out = Vec::new();
    for i in 0..count {
        let data = support::fixtures::pseudo_random(900 + i, size);
        let digest =
            craft::push(&bed.plain, &repo, &format!("v{i}"), &artifact(vec![raw(data.clone(), "w.bin")])).await;
        out.push((digest, data));
    }
    (repo, out)
}

fn model_dir(cache: &Path, digest: &str) -> std::path::PathBuf {
    cache.join("models/sha256").join(digest.trim_start_matches("sha256:"))
}

fn kept(cache: &Path, deployment: &str) -> Vec<String> {
    let dir = cache.join("deployments").join(deployment).join("versions");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
        .collect();
    names.sort();
    names
}

/// Changes one byte of `path` in place (same inode), as a root process or a writable mount could.
fn flip_byte(path: &Path, at: u64) {
    let meta = std::fs::metadata(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.permissions().mode() | 0o200)).unwrap();
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut file, &mut byte).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&[byte[0] ^ 0x5a]).unwrap();
    drop(file);
    std::fs::set_permissions(path, meta.permissions()).unwrap();
}

#[tokio::test]
async fn a_full_budget_evicts_the_least_recently_used_kept_version() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let (repo, v) = versions("lru", 4, 200_000).await;
    // Holds three models (a layer and a manifest each) but not four.
    let budget = ["--cache-limit", "700000", "--link", "deployments/ml/lru"];
    let keep = |digests: &[usize]| -> Vec<String> {
        digests.iter().flat_map(|i| ["--keep".to_owned(), v[*i].0.clone()]).collect()
    };
    let with = |extra: Vec<String>| -> Vec<String> { budget.iter().map(|s| (*s).to_owned()).chain(extra).collect() };
    for (i, keeps) in [(0, vec![]), (1, vec![0]), (2, vec![1, 0])] {
        let args = with(keep(&keeps));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, outcome, stderr) = pull(&bed.plain.host, &repo, &v[i].0, cache.path(), &args);
        assert_eq!(code, 0, "{stderr}");
        assert!(outcome.evicted.is_empty(), "v{i} fits: {outcome:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // v0 was kept when v1 was pulled, v1 when v2 was: v0 is the least recently used.
    let mut expected = vec![v[0].0.clone(), v[1].0.clone(), v[2].0.clone()];
    expected.sort();
    assert_eq!(kept(cache.path(), "ml/lru"), expected, "versions/ records the current one too");
    let args = with(keep(&[2, 1, 0]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, outcome, stderr) = pull(&bed.plain.host, &repo, &v[3].0, cache.path(), &args);
    assert_eq!(code, 0, "{stderr}");
    let evicted: Vec<&str> = outcome.evicted.iter().map(|e| e.digest.as_str()).collect();
    assert_eq!(evicted, [v[0].0.as_str()], "{outcome:?}");
    assert!(outcome.evicted[0].bytes >= 200_000, "{outcome:?}");
    assert_eq!(outcome.evicted[0].deployments, ["ml/lru"]);
    assert!(!model_dir(cache.path(), &v[0].0).exists());
    assert!(!kept(cache.path(), "ml/lru").contains(&v[0].0), "no link to the evicted version is left");
    for (digest, data) in &v[1..] {
        assert_eq!(&std::fs::read(model_dir(cache.path(), digest).join("w.bin")).unwrap(), data);
    }
    assert_eq!(std::fs::read(cache.path().join("deployments/ml/lru/current/w.bin")).unwrap(), v[3].1);
    let report = outcome.cache.expect("the inventory");
    assert!(report.used <= 700_000, "{report:?}");
    assert_eq!(report.models.len(), 3, "{report:?}");
}

#[tokio::test]
async fn a_model_that_cannot_fit_fails_fast_having_fetched_nothing_and_the_current_one_stays() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let (repo, v) = versions("nofit", 3, 300_000).await;
    let proxy = Proxy::start(&bed.plain.host, "", Misbehaviour::Pass);
    // v0 current for a deployment; v1 left by nothing (an orphan).
    let (code, _, stderr) = pull(&proxy.host, &repo, &v[0].0, cache.path(), &["--link", "deployments/ml/cur"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = pull(&proxy.host, &repo, &v[1].0, cache.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    let before = proxy.requests.lock().unwrap().len();
    let started = Instant::now();
    let (code, outcome, stderr) =
        pull(&proxy.host, &repo, &v[2].0, cache.path(), &["--cache-limit", "400000", "--link", "deployments/ml/new"]);
    let elapsed = started.elapsed();
    assert_eq!(code, 3, "{stderr}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: InsufficientStorage: needs 293.0 KiB, "), "{stderr}");
    // The orphan went: its layer and manifest, and its entries and index (a block each, docs/node-cache.md "The budget").
    let evicted: u64 = outcome.evicted.iter().map(|e| e.bytes).sum();
    assert!(evicted > 300_000, "{outcome:?}");
    assert!(
        lines[0].ends_with(&format!(" free after evicting {}", modelpack_operator::cache::human(evicted))),
        "{stderr}"
    );
    assert_eq!(outcome.reason, Some(FailureReason::InsufficientStorage));
    assert_eq!(outcome.needs, Some(300_000));
    assert_eq!(outcome.bytes_fetched, 0);
    // The orphan went, in vain; the current version did not.
    assert_eq!(outcome.evicted.iter().map(|e| e.digest.as_str()).collect::<Vec<_>>(), [v[1].0.as_str()]);
    let after: Vec<String> = proxy.requests.lock().unwrap()[before..].to_vec();
    assert!(after.iter().all(|r| !r.contains("/blobs/")), "no blob requested, not even a HEAD: {after:?}");
    assert_eq!(std::fs::read(cache.path().join("deployments/ml/cur/current/w.bin")).unwrap(), v[0].1);
    // However tight: a one-byte budget never touches a current version either.
    let (code, outcome, _) =
        pull(&proxy.host, &repo, &v[2].0, cache.path(), &["--cache-limit", "1", "--link", "deployments/ml/new"]);
    assert_eq!((code, outcome.evicted.len()), (3, 0), "{outcome:?}");
    assert_eq!(std::fs::read(cache.path().join("deployments/ml/cur/current/w.bin")).unwrap(), v[0].1);
    assert!(proxy.blob_requests().len() <= 4, "only the first two pulls fetched: {:?}", proxy.blob_requests());
}

#[tokio::test]
async fn a_flipped_blob_byte_is_found_by_scrub_and_healed_by_the_next_pull() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let (repo, v) = versions("scrub", 1, 250_000).await;
    let (digest, data) = &v[0];
    let link = ["--link", "deployments/ml/s"];
    assert_eq!(pull(&bed.plain.host, &repo, digest, cache.path(), &link).0, 0);
    let (code, clean) = scrub(cache.path());
    assert_eq!(code, 0, "{clean:?}");
    assert!(clean.scrub.blobs_checked >= 2 && clean.scrub.files_checked == 1, "{clean:?}");
    let layer = craft::sha256(data);
    flip_byte(&cache.path().join("blobs/sha256").join(layer.trim_start_matches("sha256:")), 1000);
    let (code, found) = scrub(cache.path());
    assert_eq!(code, 1, "{found:?}");
    assert_eq!(found.scrub.corrupt_blobs, std::slice::from_ref(&layer));
    assert_eq!(found.scrub.removed.len(), 1, "{found:?}");
    assert_eq!(found.scrub.removed[0].digest, *digest);
    assert_eq!(found.scrub.removed[0].cause, layer);
    assert_eq!(found.scrub.removed[0].current, ["ml/s"]);
    assert!(!cache.path().join("deployments/ml/s/current/w.bin").exists(), "the current link dangles");
    let (code, healed, stderr) = pull(&bed.plain.host, &repo, digest, cache.path(), &link);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(healed.bytes_fetched, 250_000);
    assert_eq!(&std::fs::read(cache.path().join("deployments/ml/s/current/w.bin")).unwrap(), data);
    assert_eq!(scrub(cache.path()).0, 0);
}

#[tokio::test]
async fn a_model_file_changed_through_its_hard_link_is_caught() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let weights = support::fixtures::pseudo_random(950, 120_000);
    let tokenizer = support::fixtures::pseudo_random(951, 40_000);
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(tokenizer.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "tok/tokenizer.json", &tokenizer[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let layers = vec![
        raw(weights.clone(), "w.bin"),
        craft::Blob::new("application/vnd.cncf.model.weight.config.v1.tar", tar)
            .annotate("org.cncf.model.filepath", "tok/"),
    ];
    let repo = format!("cache/hardlink-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &artifact(layers)).await;
    let link = ["--link", "deployments/ml/h"];
    assert_eq!(pull(&bed.plain.host, &repo, &digest, cache.path(), &link).0, 0);
    let current = cache.path().join("deployments/ml/h/current");

    // A raw layer's file is its blob's inode: the next pull sees the blob's stamp changed,
    // re-hashes it, and fetches it again.
    flip_byte(&current.join("w.bin"), 7);
    let (code, healed, stderr) = pull(&bed.plain.host, &repo, &digest, cache.path(), &link);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(healed.bytes_fetched, 120_000, "{healed:?}");
    assert_eq!(healed.removed.len(), 1, "{healed:?}");
    assert_eq!(std::fs::read(current.join("w.bin")).unwrap(), weights);

    // An extracted file is no blob: the scrub checks it against the model's index.
    flip_byte(&current.join("tok/tokenizer.json"), 5);
    let (code, found) = scrub(cache.path());
    assert_eq!(code, 1, "{found:?}");
    assert!(found.scrub.corrupt_blobs.is_empty(), "the archive blob is intact: {found:?}");
    assert_eq!(found.scrub.removed.len(), 1, "{found:?}");
    assert_eq!(found.scrub.removed[0].cause, format!("{digest} file tok/tokenizer.json"));
    let (code, rebuilt, stderr) = pull(&bed.plain.host, &repo, &digest, cache.path(), &link);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rebuilt.bytes_fetched, 0, "rebuilt from the cached archive: {rebuilt:?}");
    assert_eq!(std::fs::read(current.join("tok/tokenizer.json")).unwrap(), tokenizer);
    assert_eq!(std::fs::read(current.join("w.bin")).unwrap(), weights);
    assert_eq!(scrub(cache.path()).0, 0);
}

#[tokio::test]
async fn scrub_reads_at_the_rate_it_is_given() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let (repo, v) = versions("rate", 1, 1_000_000).await;
    assert_eq!(pull(&bed.plain.host, &repo, &v[0].0, cache.path(), &[]).0, 0);
    let started = Instant::now();
    let (code, stdout, stderr) = operator(&["scrub", "--cache-dir", cache.path().to_str().unwrap(), "--rate", "2Mi"]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    // 1 MB of layer (read once: the model's file is the same inode) at 2 MiB/s.
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
    let (code, _, stderr) = operator(&["scrub", "--cache-dir", cache.path().to_str().unwrap(), "--rate", "50%"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.lines().next().unwrap().contains("not a percentage"), "{stderr}");
}
