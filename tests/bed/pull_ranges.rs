//! One big blob over several connections (`pull --chunk-size`): byte-exact around the chunk
//! boundaries, a wrong range fails the blob, a killed pull resumes with the missing ranges only, and
//! a registry that ignores `Range` still serves the blob. Each reads the registry's request log (the
//! `Range` header of every blob GET a proxy in front of the bed's registry saw).

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::proxy::{Misbehaviour, Proxy};
use support::{Bed, Registry, craft, operator, unique_suffix};

const CHUNK: u64 = 1 << 20;

struct Blob {
    cache: tempfile::TempDir,
    data: Vec<u8>,
    reference: String,
    digest: String,
    hex: String,
    proxy: Proxy,
}

async fn blob_behind_proxy(name: &str, seed: u64, len: u64, how: Misbehaviour) -> Blob {
    let bed = Bed::get();
    let data = support::fixtures::pseudo_random(seed, len as usize);
    let artifact = craft::raw_model(name, "w.bin", data.clone());
    let repo = format!("ranges/{name}-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &artifact).await;
    let hex = craft::sha256(&data).strip_prefix("sha256:").unwrap().to_owned();
    let proxy = Proxy::start(&bed.plain.host, &hex, how);
    let registry = Registry { host: proxy.host.clone(), ..bed.plain.clone() };
    let reference = format!("{}/{repo}@{digest}", registry.host);
    Blob { cache: tempfile::tempdir().unwrap(), data, reference, digest, hex, proxy }
}

impl Blob {
    fn pull(&self) -> Result<Value, String> {
        let chunk = CHUNK.to_string();
        let cache = self.cache.path().to_str().unwrap();
        let args = ["pull", "--insecure", &self.reference, "--cache-dir", cache, "--chunk-size", &chunk];
        let (code, stdout, stderr) = operator(&args);
        match code {
            0 => Ok(serde_json::from_str(&stdout).unwrap()),
            1 => Err(stderr),
            other => panic!("pull exited {other}: {stderr}"),
        }
    }

    fn model_file(&self) -> Vec<u8> {
        let hex = self.digest.strip_prefix("sha256:").unwrap();
        std::fs::read(self.cache.path().join("models/sha256").join(hex).join("w.bin")).unwrap()
    }

    fn published(&self) -> bool {
        self.cache.path().join("blobs/sha256").join(&self.hex).exists()
    }
}

/// The `Range` headers a ranged fetch of `len` bytes sends, in order of the ranges.
fn ranges_of(len: u64) -> Vec<String> {
    (0..len.div_ceil(CHUNK)).map(|i| format!("bytes={}-{}", i * CHUNK, ((i + 1) * CHUNK).min(len) - 1)).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn blobs_around_the_chunk_size_round_trip_byte_exact_in_ranges() {
    for (i, len) in [CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7].into_iter().enumerate() {
        let b = blob_behind_proxy("sizes", 70 + i as u64, len, Misbehaviour::Pass).await;
        let report = b.pull().unwrap();
        assert_eq!(b.model_file(), b.data, "{len} bytes: byte-exact");
        assert_eq!(report["bytesFetched"].as_u64(), Some(len), "{len} bytes");
        let seen = b.proxy.take_ranges();
        if len > CHUNK {
            assert_eq!(sorted(seen), sorted(ranges_of(len)), "{len} bytes: one request per range, each once");
        } else {
            assert_eq!(seen, ["bytes=0-"], "{len} bytes: at most one chunk goes in one request");
        }
    }
}

#[tokio::test]
async fn a_range_answered_with_wrong_bytes_fails_the_blob_and_publishes_nothing() {
    let b = blob_behind_proxy("lying", 80, 3 * CHUNK + 5, Misbehaviour::Corrupt).await;
    let err = b.pull().unwrap_err();
    assert!(err.contains("digest mismatch") && err.contains(&b.hex), "{err}");
    assert_eq!(err.trim_end().lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    assert!(!b.published(), "nothing published");
    let tmp: Vec<_> = std::fs::read_dir(b.cache.path().join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(
        tmp.iter().all(|n| !n.to_string_lossy().starts_with("ingest-")),
        "the wrong bytes are not kept for a resume: {tmp:?}"
    );
}

#[tokio::test]
async fn a_registry_that_ignores_ranges_still_serves_the_blob_in_one_request() {
    let b = blob_behind_proxy("no-ranges", 81, 3 * CHUNK + 1, Misbehaviour::IgnoreRanges).await;
    let report = b.pull().unwrap();
    assert_eq!(b.model_file(), b.data);
    assert_eq!(report["bytesFetched"].as_u64(), Some(3 * CHUNK + 1));
    let seen = b.proxy.take_ranges();
    assert_eq!(seen.last().map(String::as_str), Some("bytes=0-"), "fell back to one request: {seen:?}");
}

#[tokio::test]
async fn a_pull_killed_mid_blob_resumes_with_the_missing_ranges_only() {
    let len = 4 * CHUNK + 3;
    // The first range request gets half its bytes, then nothing; the other ranges complete.
    let b = blob_behind_proxy("killed", 82, len, Misbehaviour::StallOnce).await;
    let cache = b.cache.path().to_str().unwrap().to_owned();
    let chunk = CHUNK.to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_modelpack-operator"))
        .args(["pull", "--insecure", &b.reference, "--cache-dir", &cache, "--chunk-size", &chunk, "--concurrency", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let recorded = || written_ranges(b.cache.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded().len() < ranges_of(len).len() - 1 {
        assert!(Instant::now() < deadline, "the other ranges never completed: {:?}", recorded());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!b.published(), "nothing published by the killed pull");
    let written: Vec<String> = recorded().iter().map(|r| format!("bytes={r}")).collect();
    let missing: Vec<String> = ranges_of(len).into_iter().filter(|r| !written.contains(r)).collect();
    assert_eq!(missing.len(), 1, "one range was cut: {missing:?}");
    b.proxy.take_ranges();

    let report = b.pull().unwrap();
    assert_eq!(b.proxy.take_ranges(), missing, "only the range that was cut is fetched again");
    let (first, last) = missing[0].trim_start_matches("bytes=").split_once('-').unwrap();
    let missing_bytes = last.parse::<u64>().unwrap() - first.parse::<u64>().unwrap() + 1;
    assert_eq!(report["bytesFetched"].as_u64(), Some(missing_bytes), "the missing range's bytes, no more");
    assert_eq!(b.model_file(), b.data, "verified from byte 0");
}

/// The ranges a ranged ingest recorded as written (see `Ingest::record_range`).
fn written_ranges(cache: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(cache.join("tmp")) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ranges"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path()).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
}
