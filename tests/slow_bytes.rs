//! A registry that sends a layer one byte at a time (from the start, or after a fast first part;
//! whole or as ranges of a big blob) is cut off at the end of the first window that falls short of
//! the minimum rate, with one clear line and nothing published; a slow registry that keeps the
//! rate is not. No bed needed: the registry is tests/support/served.rs on 127.0.0.1.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use modelpack_operator::cache::{self, Progress, PullOptions, Store};
use modelpack_operator::registry::{Options, Registry, Repository};
use serde_json::json;
use support::craft::{Artifact, Blob, sha256};
use support::served::{REPO, Served, Setup};
use tempfile::TempDir;

const LAYER: usize = 1 << 20;

fn model() -> Artifact {
    let weights: Vec<u8> = (0..LAYER).map(|i| (i * 31 % 251) as u8).collect();
    let config = json!({"descriptor": {"name": "slow"}, "modelfs": {"type": "layers", "diffIds": [sha256(&weights)]}});
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![
            Blob::new("application/vnd.cncf.model.weight.v1.raw", weights).annotate("org.cncf.model.filepath", "w.bin"),
        ],
        annotations: Default::default(),
    }
}

/// Pulls the served model with a 2 s window; the result and how long it took.
async fn pull(served: &Served, min_rate: u64, chunk_size: u64) -> (Result<(), cache::Error>, Duration, Store, TempDir) {
    let options = Options { insecure: true, timeout: Some(Duration::from_secs(2)), ..Default::default() };
    let registry = Registry::new(&options, None).unwrap();
    let repo = Repository::parse(&format!("{}/{REPO}", served.host)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    let options = PullOptions { concurrency: 2, chunk_size, min_rate: Some(min_rate), ..Default::default() };
    let started = Instant::now();
    let pulling = cache::pull(&registry, &repo, &served.digest, &store, &options, Arc::new(Progress::default()));
    // A read that is never cut off fails here rather than holding the test.
    let result = tokio::time::timeout(Duration::from_secs(30), pulling).await.expect("the pull ended within 30 s");
    (result.map(drop), started.elapsed(), store, dir)
}

#[tokio::test]
async fn a_dripping_layer_is_cut_off_within_one_window() {
    // (what, bytes sent at once, milliseconds between bytes after them, ranges of)
    let cases: [(&str, usize, u64, u64); 4] = [
        ("a drip from the first byte", 0, 50, 0),
        ("a fast half, then a drip", LAYER / 2, 50, 0),
        ("all but one byte fast, then a drip that would last 100 s", LAYER - 1000, 100, 0),
        ("ranges of 256 KiB, each dripping after 100 KiB", 100 << 10, 50, 256 << 10),
    ];
    for (what, fast, millis, chunk) in cases {
        let drip = Some((1, Duration::from_millis(millis)));
        let served = Served::start(Setup { artifact: Some(model()), drip, fast, ..Setup::default() });
        let (result, took, store, _dir) = pull(&served, 64 << 10, chunk).await;
        let error = result.expect_err(what).to_string();
        assert!(error.contains("under the minimum of 65536 bytes/s (pull --min-rate); cut off"), "{what}: {error}");
        assert!(took < Duration::from_secs(6), "{what}: took {took:?}");
        assert!(cache::report(&store, None).unwrap().models.is_empty(), "{what}: nothing published");
    }
}

/// A registry slower than most but above the minimum (here at most 100 KiB/s against 64 KiB/s:
/// each read spans more than one 2 s window), whole or in ranges of 256 KiB, is read to the end.
#[tokio::test]
async fn a_slow_registry_that_keeps_the_rate_is_read_to_the_end() {
    for chunk in [0, 256 << 10] {
        let drip = Some((5 << 10, Duration::from_millis(50)));
        let served = Served::start(Setup { artifact: Some(model()), drip, ..Setup::default() });
        let (result, took, store, _dir) = pull(&served, 64 << 10, chunk).await;
        result.unwrap_or_else(|e| panic!("ranges of {chunk}: {e} after {took:?}"));
        assert!(took > Duration::from_secs(2), "ranges of {chunk}: more than one window: {took:?}");
        assert_eq!(cache::report(&store, None).unwrap().models.len(), 1);
    }
}

/// The CLI: one clear line, exit 4 (could not decide), within the window (`--timeout 2`) and the rate given.
#[test]
fn pull_says_which_blob_was_too_slow() {
    let setup = Setup { artifact: Some(model()), drip: Some((1, Duration::from_millis(20))), ..Setup::default() };
    let served = Served::start(setup);
    let cache_dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/{REPO}@{}", served.host, served.digest);
    let started = Instant::now();
    let args = [
        "pull",
        "--insecure",
        &reference,
        "--cache-dir",
        cache_dir.path().to_str().unwrap(),
        "--timeout",
        "2",
        "--min-rate",
        "10000",
    ];
    let (code, _, stderr) = support::operator(&args);
    // A registry too slow to finish says nothing about the artifact: could not decide.
    assert_eq!(code, i32::from(modelpack_operator::exit::Exit::Undecided.code()), "{stderr}");
    let layer = sha256(&model().layers[0].data);
    let expected = format!("blob {layer}: ");
    assert!(stderr.contains(&expected) && stderr.contains("under the minimum of 10000 bytes/s"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
}
