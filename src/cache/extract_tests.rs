//! Materialising hostile models end to end (issue 14's review): each test reproduces an attack
//! found against the extractor and asserts the safe behaviour (each failed before its fix).

use std::collections::BTreeMap;
use std::io::Write;

use sha2::{Digest, Sha256};

use super::materialise::{Limits, materialise};
use super::store::Store;
use super::tree::MAX_LOOKUPS;
use crate::modelpack::{Descriptor, Manifest};

pub(super) fn put_blob(store: &Store, data: &[u8]) -> String {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
    if let Some(mut ingest) = store.ingest(&digest, data.len() as u64, "r.example/tests").unwrap() {
        ingest.write(data).unwrap();
        ingest.commit().unwrap();
    }
    digest
}

pub(super) fn descriptor(media_type: &str, digest: &str, size: usize, path: &str) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_owned(),
        size: size as i64,
        artifact_type: None,
        annotations: BTreeMap::from([("org.cncf.model.filepath".to_owned(), path.to_owned())]),
    }
}

pub(super) fn manifest(layers: Vec<Descriptor>) -> Manifest {
    Manifest {
        schema_version: 2,
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".to_owned()),
        config: descriptor("application/vnd.cncf.model.config.v1+json", &format!("sha256:{}", "0".repeat(64)), 2, "c"),
        layers,
        ..Manifest::default()
    }
}

pub(super) const RAW: &str = "application/vnd.cncf.model.weight.v1.raw";
pub(super) const TAR: &str = "application/vnd.cncf.model.weight.v1.tar";

/// A tar with one link entry (`kind` = Symlink or Link) named `name` pointing at `target`.
fn tar_with_link(name: &str, kind: tar::EntryType, target: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(0);
    builder.append_link(&mut h, name, target).unwrap();
    builder.into_inner().unwrap()
}

/// Finding 1: the `.complete` marker is written with `fs::write` (follows symlinks, truncates an
/// existing file) into a staging tree whose entries the archive chose. A layer (or tar entry) named
/// `.complete` that is the shared store blob (single-file layer), a hard link to it, or a symlink to
/// it makes the pull overwrite a verified blob of the node cache with the manifest digest: every
/// model on the node holding that blob (another tenant's too) now serves 71 bytes of text.
#[test]
fn the_complete_marker_never_overwrites_a_store_blob() {
    let shapes: [(&str, Option<(tar::EntryType, &str)>); 3] = [
        ("single-file layer named .complete", None),
        ("hard link .complete -> weights.bin", Some((tar::EntryType::Link, "weights.bin"))),
        ("symlink .complete -> weights.bin", Some((tar::EntryType::Symlink, "weights.bin"))),
    ];
    let mut overwritten = Vec::new();
    for (shape, link) in shapes {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().without_sync();
        let weights = b"another tenant's verified weights".to_vec();
        let blob = put_blob(&store, &weights);
        let layers = match link {
            None => vec![descriptor(RAW, &blob, weights.len(), ".complete")],
            Some((kind, target)) => {
                let tar = tar_with_link(".complete", kind, target);
                let tar_digest = put_blob(&store, &tar);
                vec![descriptor(RAW, &blob, weights.len(), "weights.bin"), descriptor(TAR, &tar_digest, tar.len(), "x")]
            }
        };
        let manifest_digest = format!("sha256:{}", "a".repeat(64));
        let result = materialise(&store, &manifest_digest, &manifest(layers), &[], Limits::default());
        let now = std::fs::read(store.blob_path(&blob).unwrap()).unwrap();
        if now != weights {
            overwritten
                .push(format!("{shape}: blob now {:?} (materialise: {result:?})", String::from_utf8_lossy(&now)));
        }
        // Refused up front, in one line naming the entry: a layer named `.complete` for the
        // marker's name, an archive entry already because its layer does not announce it.
        let reason = if link.is_some() { "not announced" } else { "completion marker" };
        match &result {
            Err(e) => {
                assert!(e.to_string().contains("\".complete\"") && e.to_string().contains(reason), "{shape}: {e}")
            }
            Ok(_) => panic!("{shape}: published"),
        }
    }
    assert!(overwritten.is_empty(), "{overwritten:#?}");
}

pub(super) fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Finding: the extraction limit is per layer and defaults to at least 1 GiB per layer, so a model
/// of N small archive layers writes N times the limit to the node's disk (the entry limit does not
/// help: each layer is one entry). Shown with a 1 MiB limit and four layers of 900 KiB each; the
/// attacker's cost per GiB is printed (a tar+zstd of one 1 GiB file of zeros).
#[test]
fn the_extraction_limit_bounds_the_model_not_each_layer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    let limit = 1u64 << 20;
    let mut layers = Vec::new();
    for i in 0..4 {
        let tar = tar_of(&[(&format!("part{i}.bin"), vec![0u8; 900 << 10])]);
        let layer = gzip(&tar);
        let digest = put_blob(&store, &layer);
        layers.push(descriptor(
            "application/vnd.cncf.model.weight.v1.tar+gzip",
            &digest,
            layer.len(),
            &format!("part{i}.bin"),
        ));
    }
    let manifest_digest = format!("sha256:{}", "b".repeat(64));
    let limits = Limits { extract_bytes: Some(limit), ..Limits::default() };
    let result = materialise(&store, &manifest_digest, &manifest(layers), &[], limits);
    let written: u64 = match &result {
        Ok((dir, _)) => std::fs::read_dir(dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum(),
        Err(_) => 0,
    };
    assert!(written <= limit, "{written} bytes written to the node under a {limit}-byte extraction limit");
}

/// Finding: a gzip layer of several members (RFC 1952 allows it; `bgzip`, `pigz -i`-style
/// producers and `cat a.gz b.gz` make them; `tar xzf`, containerd and Go's gzip read them all) is
/// read only up to the end of its first member: the rest of the archive is silently dropped (or,
/// with diffIds, a correct layer is refused as a diffId mismatch).
#[test]
fn a_multi_member_gzip_layer_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    let tar = tar_of(&[("x/a.txt", b"first".to_vec()), ("x/b.txt", b"second".to_vec())]);
    // Split after the first entry (header + one padded block), one gzip member per part.
    let mut layer = gzip(&tar[..1024]);
    layer.extend(gzip(&tar[1024..]));
    let digest = put_blob(&store, &layer);
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let layers = vec![descriptor("application/vnd.cncf.model.weight.v1.tar+gzip", &digest, layer.len(), "x/")];
    for diff_ids in [vec![], vec![diff_id]] {
        let manifest_digest = format!("sha256:{}", if diff_ids.is_empty() { "c" } else { "d" }.repeat(64));
        let result = materialise(&store, &manifest_digest, &manifest(layers.clone()), &diff_ids, Limits::default());
        match result {
            Ok((dir, files)) => {
                assert_eq!(files, 2, "diffIds {diff_ids:?}");
                assert_eq!(std::fs::read(dir.join("x/b.txt")).unwrap(), b"second");
            }
            Err(e) => panic!("diffIds {diff_ids:?}: {e}"),
        }
    }
}

/// A symlink entry `name -> target` with GNU long-name/long-link records (paths up to 4 KiB).
fn append_symlink(builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    builder.append_link(&mut h, name, target).unwrap();
}

/// Finding (CPU bomb): resolving a symlink cost (components of its target) × (depth of each
/// lookup), as `resolve` made the kernel walk the whole path from the root for every component. A
/// path may be 4 KiB (2,048 components), an archive 100,000 entries: a layer of a few hundred KiB
/// of gzip kept a pull busy for hours. Now a resolution costs one lookup per component, and the
/// model pays every lookup from a budget ([`MAX_LOOKUPS`]), so N symlinks to one 2,000-deep
/// directory cost at most what the budget allows: measured here on 100 of them (the one-time cost
/// of creating the 2,000 directories, which the entry limit bounds, is measured apart).
#[test]
fn deep_symlinks_cost_linear_time() {
    let depth = 2000;
    let deep = vec!["a"; depth].join("/");
    let n = 100;
    let archive = |links: usize| {
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        builder.append_data(&mut h, &deep, std::io::empty()).unwrap();
        for i in 0..links {
            append_symlink(&mut builder, &format!("s{i}"), &deep);
        }
        builder.into_inner().unwrap()
    };
    let time = |tar: Vec<u8>| {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let result = super::materialise::extract_tar(&mut tar.as_slice(), dir.path(), Limits::default());
        (started.elapsed(), result)
    };
    // The fastest of three runs each: other tests share the two cores, and a slow run is their time.
    let fastest = |links: usize| (0..3).map(|_| time(archive(links))).min_by_key(|(t, _)| *t).unwrap();
    let (baseline, _) = fastest(0);
    let (elapsed, result) = fastest(n);
    let per_entry = elapsed.saturating_sub(baseline) / n as u32;
    // The budget lets through at most this many resolutions of such a symlink.
    let affordable = (MAX_LOOKUPS / depth as u64).min(100_000) as u32;
    let projected = per_entry * affordable;
    assert!(
        projected < std::time::Duration::from_secs(60),
        "{n} symlinks {depth} deep: {per_entry:?} each ({result:?}), so the {affordable} the budget allows take {projected:?}",
    );
}

/// Finding (crash, partial files left): `seal` and `remove_tree` recurse once per directory level,
/// and a model path may be 2,048 levels deep. The pull materialises on a tokio blocking thread
/// (2 MiB of stack, tokio's default): one tar entry `a/a/…/a` (4 KiB) aborts the whole process with
/// a stack overflow instead of a one-line error, and its staging tree stays in `tmp/` (each retry
/// runs under a new pid, so leaves another). Run here on a 2 MiB thread, as the pull does.
#[test]
fn a_deep_directory_is_an_error_not_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cache::extract_tests::deep_directory_child", "--nocapture", "--test-threads=1"])
        .env("EXTRACT_DEEP_ROOT", &root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(!stderr.contains("overflow"), "exit {:?}: {}", child.status, stderr.lines().last().unwrap_or_default());
    assert!(String::from_utf8_lossy(&child.stdout).contains("1 passed"), "{stderr}");
}

/// The body of the test above, run in a child process (a stack overflow aborts the process).
#[test]
fn deep_directory_child() {
    let Some(root) = std::env::var_os("EXTRACT_DEEP_ROOT") else { return };
    let root = std::path::PathBuf::from(root);
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let store = Store::open(&root).unwrap().without_sync();
            let deep = vec!["a"; 2000].join("/");
            let mut builder = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            builder.append_data(&mut h, &deep, std::io::empty()).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(4);
            builder.append_data(&mut h, format!("{deep}/f"), &b"deep"[..]).unwrap();
            let tar = builder.into_inner().unwrap();
            let digest = put_blob(&store, &tar);
            let layers = vec![descriptor(TAR, &digest, tar.len(), "a/")];
            let manifest_digest = format!("sha256:{}", "f".repeat(64));
            let (dir, files) =
                materialise(&store, &manifest_digest, &manifest(layers), &[], Limits::default()).unwrap();
            // What a second pull of the same model does, and what the garbage collector does.
            assert_eq!(super::materialise::count_files(&dir).unwrap(), files);
            super::walk::remove_tree(&dir).unwrap();
            assert!(!dir.exists());
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Finding (inode bomb past the entry limit): the limit counts tar entries, not what they create.
/// A file entry `a/a/…/a/f` creates every missing parent directory (up to 2,047 for a 4 KiB path)
/// and counts as one: with `--max-entries 10`, ten entries make 10 × 1,000 directories here (the
/// default 100,000 entries allow ~200 million inodes, far more than a node's root filesystem has).
#[test]
fn implicit_parent_directories_count_as_entries() {
    let limit = 10u64;
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..limit {
        let path = format!("d{i}/{}/f", vec!["a"; 999].join("/"));
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        builder.append_data(&mut h, &path, std::io::empty()).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let result = super::materialise::extract_tar(
        &mut tar.as_slice(),
        dir.path(),
        Limits { entries: limit, ..Limits::default() },
    );
    let inodes = walkdir_count(dir.path());
    assert!(inodes <= limit, "{inodes} inodes created under an entry limit of {limit} (extract: {:?})", result);
}

fn walkdir_count(dir: &std::path::Path) -> u64 {
    // Iterative: the tree is deep.
    let mut stack = vec![dir.to_owned()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            n += 1;
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

/// Finding (panic / misleading status): `Manifest::total_size` adds the registry's layer sizes as
/// i64 without a check. Three layers of size i64::MAX panic with "attempt to add with overflow" in
/// a debug build (the bed's binary; the controller computes it for every Model it inspects, and
/// `inspect` prints it) and wrap to a negative size in a release build (`status.artifact.size`).
/// The pull's own `u64` sum of the same sizes does the same.
#[test]
fn layer_sizes_from_a_registry_do_not_overflow() {
    let layer = descriptor(RAW, &format!("sha256:{}", "1".repeat(64)), 0, "x");
    let mut m = manifest(vec![layer.clone(), layer.clone(), layer]);
    for l in &mut m.layers {
        l.size = i64::MAX;
    }
    let total = std::panic::catch_unwind(|| m.total_size());
    assert!(matches!(total, Ok(t) if t >= 0), "total_size: {:?}", total.map_err(|_| "panicked"));
}

/// A tar stream made on the fly: `n` empty files, each with a ~4,000-byte path (15 shared
/// directories of 250 characters, then a distinct name), each path in a GNU long-name record.
struct LongNames {
    n: usize,
    /// Symlinks (to `.`) rather than empty files.
    symlinks: bool,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for LongNames {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.next == self.n {
                return Ok(0);
            }
            let dirs = (0..15).map(|d| format!("{d}{}", "a".repeat(249))).collect::<Vec<_>>().join("/");
            let path = format!("{dirs}/{:0>200}", self.next);
            let mut builder = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(0);
            if self.symlinks {
                h.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut h, &path, ".").unwrap();
            } else {
                builder.append_data(&mut h, &path, std::io::empty()).unwrap();
            }
            let mut bytes = builder.into_inner().unwrap();
            bytes.truncate(bytes.len() - 1024); // no end-of-archive blocks between entries
            self.buf = bytes;
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub(super) fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Finding (memory): the extractor keeps every path it created, two or three times over (`claimed`,
/// the tree's `files`, the list returned), and a path may be 4 KiB: 100,000 entries (the default
/// limit) cost over a gigabyte of the pull's memory from a layer of well under a megabyte of gzip.
/// Measured on 20,000 entries streamed (the archive is never in memory), run alone:
/// `cargo test --lib cache::extract_tests::paths_held -- --exact`.
#[test]
fn paths_held_in_memory_stay_bounded() {
    // In a process of its own: peak RSS is the process's, and other tests run alongside.
    for kind in ["files", "symlinks"] {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "cache::extract_tests::paths_held_child", "--nocapture", "--test-threads=1"])
            .env("EXTRACT_PATHS_HELD", kind)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(stdout.contains("1 passed"), "{kind}: {stdout}{}", String::from_utf8_lossy(&child.stderr));
    }
}

/// The body of the test above, run in a child process.
#[test]
fn paths_held_child() {
    let Some(kind) = std::env::var_os("EXTRACT_PATHS_HELD") else { return };
    let before = peak_rss_kib();
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    let mut stream = LongNames { n, symlinks: kind == "symlinks", next: 0, buf: Vec::new(), pos: 0 };
    let files = super::materialise::extract_tar(&mut stream, dir.path(), Limits::default()).unwrap();
    assert_eq!(files, n);
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(
        grown_mib < 64,
        "{n} {kind:?} of ~4 KiB paths: peak RSS grew by {grown_mib} MiB (x5 for the default limit)"
    );
}
