//! Issue 25, class 2: the budget counts what building a model writes — extracted bytes, entries,
//! the file index — while it is written, whatever the artifact declared. Each shape is refused
//! under a budget without room for it (nothing published, nothing left in `tmp/`), and published
//! under one with room, after which the cache measures at least what was charged.

use std::io::Write;
use std::time::{Duration, Instant};

use super::budget::CacheLimit;
use super::budget::ENTRY_COST;
use super::extract_tests::{RAW, TAR, descriptor, gzip, manifest, peak_rss_kib, put_blob, tar_of};
use super::layout::{INDEX, MODELS, TMP};
use super::materialise::{Limits, materialise};
use super::store::Store;
use super::usage::measure;
use super::{Error, set_current};
use crate::modelpack::Descriptor;

const GZIP: &str = "application/vnd.cncf.model.weight.v1.tar+gzip";
const ZSTD: &str = "application/vnd.cncf.model.weight.v1.tar+zstd";
const MIB: u64 = 1 << 20;

/// A store holding `blobs`, whose budget leaves `room` bytes beyond them.
fn store_with(dir: &std::path::Path, blobs: &[&[u8]], room: u64) -> (Store, Vec<String>) {
    let store = Store::open(dir).unwrap().without_sync();
    let digests = blobs.iter().map(|b| put_blob(&store, b)).collect();
    let used = measure(&store).unwrap().used();
    (store.with_budget(Some(CacheLimit::Bytes(used + room))), digests)
}

fn entries(store: &Store, dir: &str) -> usize {
    std::fs::read_dir(store.dir(dir)).unwrap().count()
}

/// Refused with `InsufficientStorage`, nothing published, staging and index gone.
fn refused(store: &Store, result: Result<(std::path::PathBuf, usize), Error>, shape: &str) {
    match result {
        Err(Error::InsufficientStorage { needs, free, .. }) => assert!(needs > free, "{shape}: {needs} <= {free}"),
        other => panic!("{shape}: {other:?}"),
    }
    assert_eq!((entries(store, MODELS), entries(store, INDEX), entries(store, TMP)), (0, 0, 0), "{shape}");
}

/// Published, and the cache now measures no more than its budget, the model at least `at_least`.
fn published(store: &Store, result: Result<(std::path::PathBuf, usize), Error>, at_least: u64, shape: &str) {
    let (path, _) = result.unwrap_or_else(|e| panic!("{shape}: {e}"));
    let hex = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(store.is_complete(&hex), "{shape}");
    let inv = measure(store).unwrap();
    assert!(inv.model_bytes(&hex) >= at_least, "{shape}: {} < {at_least}", inv.model_bytes(&hex));
    let Some(CacheLimit::Bytes(budget)) = store.budget() else { unreachable!() };
    assert!(inv.used() <= budget, "{shape}: used {} over the budget {budget}", inv.used());
}

fn model_digest(n: u8) -> String {
    format!("sha256:{}", hex::encode([n; 32]))
}

fn build(store: &Store, layers: Vec<Descriptor>) -> Result<(std::path::PathBuf, usize), Error> {
    materialise(store, &model_digest(1), &manifest(layers), &[], Limits::default())
}

/// A tar of one regular file of `size` zero bytes, written to `out` a MiB at a time.
fn tar_of_zeros(out: &mut dyn Write, size: u64) {
    let mut header = tar::Header::new_gnu();
    header.set_path("weights.bin").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    out.write_all(header.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    let padding = (512 - size % 512) % 512;
    out.write_all(&vec![0u8; padding as usize + 1024]).unwrap();
}

fn gzip_zeros(size: u64) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    tar_of_zeros(&mut e, size);
    e.finish().unwrap()
}

fn zstd_zeros(size: u64) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    tar_of_zeros(&mut e, size);
    e.finish().unwrap()
}

/// The issue's case and its relatives: a compressed layer whose `file.metadata+json` says 1 byte
/// (gzip and zstd), a plain tar bigger than the room. Each is stopped at the budget, in bounded
/// time and memory: a 1 GiB bomb under 16 MiB of room is refused in well under the time writing
/// 1 GiB takes, at the memory of a few buffers.
#[test]
fn a_layer_that_lies_about_what_it_extracts_stops_at_the_budget() {
    let lie = r#"{"name":"weights.bin","mode":420,"size":1,"typeflag":48}"#;
    let meta = "org.cncf.model.file.metadata+json";
    let plain = tar_of(&[("weights.bin", vec![7u8; 3 << 20])]);
    // (shape, media type, blob, room, whether to build it again without a budget)
    let cases: [(&str, &str, Vec<u8>, u64, bool); 4] = [
        ("gzip, 40 MiB declared as 1 byte", GZIP, gzip_zeros(40 * MIB), 16 * MIB, true),
        ("zstd, 40 MiB declared as 1 byte", ZSTD, zstd_zeros(40 * MIB), 16 * MIB, false),
        ("gzip bomb, 1 GiB declared as 1 byte", GZIP, gzip_zeros(1 << 30), 16 * MIB, false),
        ("plain tar of 3 MiB, 2 MiB of room", TAR, plain, 2 * MIB, true),
    ];
    for (shape, media_type, blob, room, again) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (store, digests) = store_with(dir.path(), &[blob.as_slice()], room);
        let mut layer = descriptor(media_type, &digests[0], blob.len(), "weights.bin");
        layer.annotations.insert(meta.to_owned(), lie.to_owned());
        let (started, rss) = (Instant::now(), peak_rss_kib());
        let result = build(&store, vec![layer.clone()]);
        let (elapsed, grown_mib) = (started.elapsed(), (peak_rss_kib() - rss) / 1024);
        refused(&store, result, shape);
        assert!(elapsed < Duration::from_secs(3), "{shape}: {elapsed:?}");
        assert!(grown_mib < 64, "{shape}: {grown_mib} MiB");
        // With room for it, the same layer builds: the refusal was the budget's.
        let store = store.with_budget(None);
        if again {
            let (path, _) = build(&store, vec![layer]).unwrap_or_else(|e| panic!("{shape}: {e}"));
            assert!(path.join("weights.bin").exists(), "{shape}");
        }
    }
}

/// Every file is at least a block of the disk: 2,000 one-byte files (a 2 MiB tar) cost 8 MiB.
#[test]
fn many_tiny_files_cost_a_block_each() {
    let names: Vec<String> = (0..2000).map(|i| format!("f/{i:05}")).collect();
    let files: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (n.as_str(), vec![1u8])).collect();
    let blob = gzip(&tar_of(&files));
    for (room, fits) in [(4 * MIB, false), (12 * MIB, true)] {
        let dir = tempfile::tempdir().unwrap();
        let (store, digests) = store_with(dir.path(), &[blob.as_slice()], room);
        let result = build(&store, vec![descriptor(GZIP, &digests[0], blob.len(), "f/")]);
        if fits {
            published(&store, result, 2000 * ENTRY_COST, "2,000 files, 12 MiB of room");
        } else {
            refused(&store, result, "2,000 files, 4 MiB of room");
        }
    }
}

/// Directories cost a block each too: 3,000 of them (empty, nested and side by side).
#[test]
fn many_directories_cost_a_block_each() {
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..3000 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        builder.append_data(&mut h, format!("d/d{}/e{i}/", i % 10), std::io::empty()).unwrap();
    }
    let blob = gzip(&builder.into_inner().unwrap());
    for (room, fits) in [(8 * MIB, false), (16 * MIB, true)] {
        let dir = tempfile::tempdir().unwrap();
        let (store, digests) = store_with(dir.path(), &[blob.as_slice()], room);
        let result = build(&store, vec![descriptor(GZIP, &digests[0], blob.len(), "d/")]);
        if fits {
            published(&store, result, 3000 * ENTRY_COST, "3,000 directories, 16 MiB of room");
        } else {
            refused(&store, result, "3,000 directories, 8 MiB of room");
        }
    }
}

/// The index is what the cache writes too: 400 raw layers (one shared 1-byte blob) at 3,900-byte
/// paths write 1.6 MB of index beside 1.7 MB of entries; 2.5 MiB of room holds the entries alone.
#[test]
fn a_huge_index_is_counted_while_it_is_written() {
    let deep: String = (0..15).map(|i| format!("{}/", char::from(b'a' + i).to_string().repeat(250))).collect();
    for (room, fits) in [(5 * MIB / 2, false), (5 * MIB, true)] {
        let dir = tempfile::tempdir().unwrap();
        let (store, digests) = store_with(dir.path(), &[b"x".as_slice()], room);
        let layers = (0..400).map(|i| descriptor(RAW, &digests[0], 1, &format!("{deep}{i:0>100}"))).collect();
        let result = build(&store, layers);
        if fits {
            published(&store, result, 400 * (ENTRY_COST + 3900), "index of 1.6 MB, 5 MiB of room");
            let index = std::fs::metadata(store.index_path(&model_digest(1)[7..])).unwrap().len();
            assert!(index > 400 * 3900, "{index}");
        } else {
            refused(&store, result, "index of 1.6 MB, 2.5 MiB of room");
        }
    }
}

/// A model whose files need more than the pull's preflight made room for (it believed the
/// artifact) gets it by evicting, during the build, a model no deployment holds; never a current
/// one: with only a current model to evict, it is refused.
#[test]
fn a_build_evicts_for_what_it_really_writes_but_never_a_current_model() {
    for current in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let old = gzip(&tar_of(&[("old.bin", vec![5u8; 3 << 20])]));
        let new = gzip(&tar_of(&[("new.bin", vec![6u8; 2 << 20])]));
        let (store, digests) = store_with(dir.path(), &[old.as_slice(), new.as_slice()], 0);
        let store = store.with_budget(None);
        let old_layer = descriptor(GZIP, &digests[0], old.len(), "old.bin");
        materialise(&store, &model_digest(2), &manifest(vec![old_layer]), &[], Limits::default()).unwrap();
        if current {
            set_current(&store, "ml", "old", &model_digest(2)).unwrap();
        }
        let used = measure(&store).unwrap().used();
        let store = store.with_budget(Some(CacheLimit::Bytes(used + MIB)));
        let result = build(&store, vec![descriptor(GZIP, &digests[1], new.len(), "new.bin")]);
        let old_dir = store.model_dir(&model_digest(2)).unwrap();
        if current {
            match result {
                Err(Error::InsufficientStorage { evicted, .. }) => {
                    assert!(evicted.iter().all(|e| e.digest != model_digest(2)), "{evicted:?}");
                }
                other => panic!("{other:?}"),
            }
            assert!(old_dir.join("old.bin").exists());
        } else {
            published(&store, result, 2 << 20, "2 MiB after evicting an orphan of 3 MiB");
            assert!(!old_dir.exists(), "the orphan was evicted");
        }
    }
}
