//! Issue 25, class 3: after one large model, collection and eviction opened every lock file ever
//! created at once and failed with "Too many open files". Run in a child process (this test binary
//! again) whose descriptor limit is 64, on a cache holding the 2,051 lock files a 1,024-layer pull
//! of the previous version left and 300 models: eviction and collection succeed and leave no lock
//! file behind.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::budget::CacheLimit;
use super::evict::make_room;
use super::gc::collect;
use super::layout::{BLOBS, LOCKS, Lock, MODELS, source_key};
use super::store::Store;
use super::usage::measure;

const CHILD: &str = "MODELPACK_TEST_LOW_NOFILE_CACHE";
const LIMIT: usize = 64;
const NAME: &str = "cache::locks_tests::collection_and_eviction_hold_one_lock_file_at_a_time";

fn hex_of(text: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
}

/// A model no deployment holds: one layer blob hard-linked into its directory, its manifest blob.
fn orphan(store: &Store, i: usize) {
    let (model, layer) = (hex_of(&format!("model {i}")), hex_of(&format!("layer {i}")));
    std::fs::write(store.dir(BLOBS).join(&layer), vec![1u8; 1000]).unwrap();
    let manifest = serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:00", "size": 1},
        "layers": [{"mediaType": "x", "digest": format!("sha256:{layer}"), "size": 1000}]});
    std::fs::write(store.dir(BLOBS).join(&model), manifest.to_string()).unwrap();
    let dir = store.dir(MODELS).join(&model);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::hard_link(store.dir(BLOBS).join(&layer), dir.join("w.bin")).unwrap();
}

/// The lock files a 1,024-layer pull left when lock files were never removed: the model's, and
/// per layer its download's (per source) and its commit's; and the collector's.
fn left_behind(store: &Store) {
    let locks = store.dir(LOCKS);
    std::fs::write(locks.join(format!("{}.lock", hex_of("big model"))), b"").unwrap();
    std::fs::write(locks.join("gc.lock"), b"").unwrap();
    for layer in 0..1024 {
        let hex = hex_of(&format!("big layer {layer}"));
        std::fs::write(locks.join(format!("blob-{hex}-{}.lock", source_key("r.example/big"))), b"").unwrap();
        std::fs::write(locks.join(format!("blob-{hex}.lock")), b"").unwrap();
    }
}

#[test]
fn collection_and_eviction_hold_one_lock_file_at_a_time() {
    if let Some(dir) = std::env::var_os(CHILD) {
        return in_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    left_behind(&store);
    (0..300).for_each(|i| orphan(&store, i));
    assert_eq!(std::fs::read_dir(store.dir(LOCKS)).unwrap().count(), 2050);
    let started = Instant::now();
    let out = Command::new("sh")
        .args(["-c", &format!("ulimit -n {LIMIT} && exec \"$0\" \"$@\"")])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child ran the test: {stdout}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let locks: Vec<_> = std::fs::read_dir(store.dir(LOCKS)).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(locks.is_empty(), "{locks:?}");
    assert_eq!(std::fs::read_dir(store.dir(MODELS)).unwrap().count(), 0);
}

/// Under the low limit: eviction takes about half, collection the rest.
fn in_child(dir: &Path) {
    let opened: Result<Vec<std::fs::File>, _> = (0..LIMIT).map(|_| std::fs::File::open(dir)).collect();
    assert!(opened.is_err(), "the descriptor limit is in force");
    let store = Store::open(dir).unwrap().without_sync();
    let used = measure(&store).unwrap().used();
    let own = Lock::model(&hex_of("a pull"));
    let room = make_room(&store, Some(CacheLimit::Bytes(used)), used / 2, &own, &[]).unwrap();
    assert!(room.evicted.len() >= 100 && room.evicted.len() < 300, "{}", room.evicted.len());
    let collected = collect(&store, None).unwrap();
    assert!(!collected.deferred && collected.models > 0, "{collected:?}");
}
