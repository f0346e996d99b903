//! The scrub compares a published model's whole tree with its index (issue 25, class 8): an
//! added, removed, re-typed or re-pointed entry is found, and a model it cannot check (its index
//! gone, cut or garbled) is treated as corrupt.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::extract_tests::{descriptor, manifest, put_blob};
use super::materialise::{Limits, materialise};
use super::scrub::{ScrubReport, scrub};
use super::store::Store;

const RAW: &str = "application/vnd.cncf.model.weight.v1.raw";
const TAR: &str = "application/vnd.cncf.model.weight.config.v1.tar";

fn tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        match link {
            Some(target) => b.append_link(&mut h, path, target).unwrap(),
            None => b.append_data(&mut h, path, *data).unwrap(),
        }
    }
    b.into_inner().unwrap()
}

/// A store holding one model with every kind of entry: a raw file in a subdirectory, and an
/// announced directory with files, an empty directory, a symlink and a hard link.
fn model() -> (tempfile::TempDir, Store, String, PathBuf) {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    let weights = b"weights".to_vec();
    let archive = tar(&[
        ("tok", Directory, b"", None),
        ("tok/tokenizer.json", Regular, b"{\"v\":1}", None),
        ("tok/empty", Directory, b"", None),
        ("tok/sub/link.json", Symlink, b"", Some("../tokenizer.json")),
        ("tok/copy.json", Link, b"", Some("tok/tokenizer.json")),
    ]);
    let layers = vec![
        descriptor(RAW, &put_blob(&store, &weights), weights.len(), "w/model.bin"),
        descriptor(TAR, &put_blob(&store, &archive), archive.len(), "tok/"),
    ];
    let digest = format!("sha256:{}", "c".repeat(64));
    let (path, _) = materialise(&store, &digest, &manifest(layers), &[], Limits::default()).unwrap();
    (dir, store, digest, path)
}

fn removed_for(report: &ScrubReport, digest: &str) -> String {
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert_eq!(report.removed[0].digest, digest);
    assert!(report.corrupt_blobs.is_empty(), "{report:?}");
    report.removed[0].cause.clone()
}

#[test]
fn a_published_model_as_it_was_built_is_clean() {
    let (_dir, store, _, _) = model();
    let report = scrub(&store, None).unwrap();
    assert!(report.clean(), "{report:?}");
    assert_eq!(report.files_checked, 3, "w/model.bin, tok/tokenizer.json, tok/copy.json: {report:?}");
}

#[test]
fn every_change_to_the_tree_is_found() {
    type Change = fn(&Path, &Path);
    // (shape, what it does to the model directory or the index, what the cause must say)
    let cases: [(&str, Change, &str); 14] = [
        (
            "a file added in a subdirectory",
            |m, _| std::fs::write(m.join("tok/sub/extra.pt"), b"x").unwrap(),
            "entry \"tok/sub/extra.pt\": a regular file not in the index",
        ),
        (
            "a file added at the top",
            |m, _| std::fs::write(m.join("model.pt"), b"x").unwrap(),
            "entry \"model.pt\": a regular file not in the index",
        ),
        (
            "an empty directory added",
            |m, _| std::fs::create_dir(m.join("tok/empty/new")).unwrap(),
            "entry \"tok/empty/new\": a directory not in the index",
        ),
        (
            "a symlink added",
            |m, _| symlink("/etc", m.join("w/etc")).unwrap(),
            "entry \"w/etc\": a symlink not in the index",
        ),
        (
            "a file replaced by a symlink to the same bytes",
            |m, _| {
                std::fs::remove_file(m.join("tok/copy.json")).unwrap();
                symlink("tokenizer.json", m.join("tok/copy.json")).unwrap();
            },
            "entry \"tok/copy.json\": a symlink, published as a regular file",
        ),
        (
            "a symlink re-pointed outside the model",
            |m, _| {
                std::fs::remove_file(m.join("tok/sub/link.json")).unwrap();
                symlink("../../../../../../etc/passwd", m.join("tok/sub/link.json")).unwrap();
            },
            "entry \"tok/sub/link.json\": symlink re-pointed to \"../../../../../../etc/passwd\"",
        ),
        (
            "a symlink re-pointed inside the model",
            |m, _| {
                std::fs::remove_file(m.join("tok/sub/link.json")).unwrap();
                symlink("../copy.json", m.join("tok/sub/link.json")).unwrap();
            },
            "symlink re-pointed to \"../copy.json\"",
        ),
        (
            "a symlink replaced by a copy of its target",
            |m, _| {
                std::fs::remove_file(m.join("tok/sub/link.json")).unwrap();
                std::fs::write(m.join("tok/sub/link.json"), b"{\"v\":1}").unwrap();
            },
            "entry \"tok/sub/link.json\": a regular file, published as a symlink",
        ),
        (
            "a directory replaced by a symlink",
            |m, _| {
                std::fs::remove_dir(m.join("tok/empty")).unwrap();
                symlink("/", m.join("tok/empty")).unwrap();
            },
            "entry \"tok/empty\": a symlink, published as a directory",
        ),
        (
            "an empty directory removed",
            |m, _| std::fs::remove_dir(m.join("tok/empty")).unwrap(),
            "entry \"tok/empty\": missing",
        ),
        (
            "a file removed",
            |m, _| std::fs::remove_file(m.join("tok/copy.json")).unwrap(),
            "entry \"tok/copy.json\": missing",
        ),
        ("the index deleted", |_, i| std::fs::remove_file(i).unwrap(), "index: "),
        (
            "the index cut mid-line",
            |_, i| {
                let bytes = std::fs::read(i).unwrap();
                std::fs::write(i, &bytes[..bytes.len() - 5]).unwrap();
            },
            "cut short",
        ),
        (
            "the index garbled",
            |_, i| {
                let mut bytes = std::fs::read(i).unwrap();
                bytes.splice(0..0, b"{not json\n".iter().copied());
                std::fs::write(i, bytes).unwrap();
            },
            "index: index line 1",
        ),
    ];
    for (shape, change, expected) in cases {
        let (_dir, store, digest, path) = model();
        let index = store.index_path(digest.trim_start_matches("sha256:"));
        change(&path, &index);
        let report = scrub(&store, None).unwrap();
        let cause = removed_for(&report, &digest);
        assert!(cause.starts_with(&format!("{digest} ")) && cause.contains(expected), "{shape}: {cause}");
        assert!(!path.exists(), "{shape}: the model is still there");
        assert!(!index.exists(), "{shape}: its index is still there");
        assert!(scrub(&store, None).unwrap().clean(), "{shape}: a second scrub");
    }
}

#[test]
fn an_index_cut_at_a_line_leaves_entries_unaccounted_for() {
    let (_dir, store, digest, _) = model();
    let index = store.index_path(digest.trim_start_matches("sha256:"));
    let text = std::fs::read_to_string(&index).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 8, "directories, files and symlinks are all recorded: {text}");
    std::fs::write(&index, format!("{}\n", lines[..lines.len() / 2].join("\n"))).unwrap();
    let cause = removed_for(&scrub(&store, None).unwrap(), &digest);
    assert!(cause.contains("not in the index"), "{cause}");
}

#[test]
fn a_changed_file_is_named_and_an_index_of_files_only_still_checks_a_flat_model() {
    let (_dir, store, digest, path) = model();
    std::fs::write(path.join("tok/tokenizer.json"), b"{\"v\":2}").unwrap();
    // Either name of the two hard links is found first.
    let cause = removed_for(&scrub(&store, None).unwrap(), &digest);
    assert!(
        [format!("{digest} file tok/copy.json"), format!("{digest} file tok/tokenizer.json")].contains(&cause),
        "{cause}"
    );

    // An index written before directories and symlinks were recorded: a model of top-level raw
    // files is still checked by it; one with a directory cannot be, and goes.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    let blob = put_blob(&store, b"flat");
    let flat = format!("sha256:{}", "d".repeat(64));
    materialise(&store, &flat, &manifest(vec![descriptor(RAW, &blob, 4, "flat.bin")]), &[], Limits::default()).unwrap();
    let index = store.index_path(&"d".repeat(64));
    let old = format!("{{\"path\":\"flat.bin\",\"sha256\":\"{}\",\"size\":4}}\n", blob.trim_start_matches("sha256:"));
    assert_eq!(std::fs::read_to_string(&index).unwrap(), old, "a file's record is as before");
    assert!(scrub(&store, None).unwrap().clean());
}

/// A model of 20,000 entries under ~4 KiB paths: the scrub holds keys, not paths, and reads
/// each entry once. Run in a child process for its peak RSS.
#[test]
fn scrub_of_a_large_tree_is_bounded() {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cache::scrub_tests::large_tree_child", "--nocapture", "--test-threads=1"])
        .env("SCRUB_LARGE_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(stdout.contains("1 passed"), "{stdout}{}", String::from_utf8_lossy(&child.stderr));
}

#[test]
fn large_tree_child() {
    if std::env::var_os("SCRUB_LARGE_CHILD").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    let deep = (0..14).map(|d| format!("{d}{}", "b".repeat(249))).collect::<Vec<_>>().join("/");
    let n = 20_000;
    let hex = "8".repeat(64);
    let model = store.model_dir(&format!("sha256:{hex}")).unwrap();
    // Written straight into place with a matching index (building it is another test's
    // business), the index streamed so that the test's own memory stays out of the measure.
    let mut index = std::io::BufWriter::new(std::fs::File::create(store.index_path(&hex)).unwrap());
    let mut path = String::new();
    for part in deep.split('/') {
        path = if path.is_empty() { part.to_owned() } else { format!("{path}/{part}") };
        writeln!(index, "{{\"path\":\"{path}\",\"type\":\"dir\"}}").unwrap();
    }
    std::fs::create_dir_all(model.join(&deep)).unwrap();
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for i in 0..n {
        let name = format!("{deep}/{i:0>200}");
        std::fs::write(model.join(&name), b"").unwrap();
        writeln!(index, "{{\"path\":\"{name}\",\"sha256\":\"{empty}\",\"size\":0}}").unwrap();
    }
    index.flush().unwrap();
    drop(index);
    let before = super::extract_tests::peak_rss_kib();
    let started = Instant::now();
    let report = scrub(&store, None).unwrap();
    let elapsed = started.elapsed();
    assert!(report.clean(), "{report:?}");
    assert_eq!(report.files_checked, n);
    let grown_mib = (super::extract_tests::peak_rss_kib() - before) / 1024;
    assert!(grown_mib < 32, "peak RSS grew by {grown_mib} MiB");
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
    // One extra entry among them is found.
    std::fs::write(model.join(&deep).join("extra"), b"").unwrap();
    let report = scrub(&store, None).unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
}
