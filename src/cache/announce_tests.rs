//! Archive layers publish only what their annotations announce (issue 25, class 4): what
//! policies and `inspect` call a layer's file is what the node publishes from it.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use super::extract_tests::{descriptor, gzip, manifest, peak_rss_kib, put_blob};
use super::materialise::{Limits, materialise};
use super::store::Store;
use crate::modelpack::Descriptor;

const TAR: &str = "application/vnd.cncf.model.weight.v1.tar";

#[derive(Clone, Copy)]
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

/// A tar written header by header, names as given (`./` prefixes kept, as a producer writes them).
fn archive(entries: &[E<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (path, data, kind, link): (&str, &[u8], tar::EntryType, Option<&str>) = match *e {
            E::Dir(p) => (p, b"", tar::EntryType::Directory, None),
            E::File(p, d) => (p, d, tar::EntryType::Regular, None),
            E::Sym(p, t) => (p, b"", tar::EntryType::Symlink, Some(t)),
            E::Hard(p, t) => (p, b"", tar::EntryType::Link, Some(t)),
        };
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Materialises one archive layer (`media_type`, annotations `annotations`) into a fresh store:
/// the error line, or the sorted paths published (marker aside).
fn pull(media_type: &str, layer: Vec<u8>, annotations: &[(&str, &str)]) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    let digest = put_blob(&store, &layer);
    let mut d: Descriptor = descriptor(media_type, &digest, layer.len(), "unused");
    d.annotations = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    let manifest_digest = format!("sha256:{}", "e".repeat(64));
    let result = materialise(&store, &manifest_digest, &manifest(vec![d]), &[], Limits::default());
    let staging: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().flatten().collect();
    assert!(staging.is_empty(), "staging left: {staging:?}");
    match result {
        Ok((model, _)) => {
            let mut paths = Vec::new();
            let mut stack = vec![model.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap().flatten() {
                    let rel = e.path().strip_prefix(&model).unwrap().to_string_lossy().into_owned();
                    if e.file_type().unwrap().is_dir() {
                        stack.push(e.path());
                    }
                    paths.push(rel);
                }
            }
            paths.sort();
            Ok(paths)
        }
        Err(e) => {
            assert!(!dir.path().join("models/sha256").join("e".repeat(64)).exists(), "published: {e}");
            Err(e.to_string())
        }
    }
}

const FILEPATH: &str = "org.cncf.model.filepath";

#[test]
fn an_archive_holding_anything_but_its_announced_file_is_refused() {
    let pt = b"pickle";
    // (shape, announced path, entries, the entry the error must name, what it must say)
    let cases: Vec<(&str, &str, Vec<E>, &str, &str)> = vec![
        (
            "issue example: another name",
            "model.safetensors",
            vec![E::File("model.pt", pt)],
            "model.pt",
            "not announced",
        ),
        (
            "an extra file beside the announced one",
            "model.safetensors",
            vec![E::File("model.safetensors", b"st"), E::File("model.pt", pt)],
            "model.pt",
            "not announced",
        ),
        (
            "the extra file first",
            "model.safetensors",
            vec![E::File("extra/model.pt", pt), E::File("model.safetensors", b"st")],
            "extra/model.pt",
            "not announced",
        ),
        (
            "a directory under the announced file's name",
            "model.safetensors",
            vec![E::Dir("model.safetensors"), E::File("model.safetensors/model.pt", pt)],
            "model.safetensors",
            "holds a directory there",
        ),
        (
            "a file beneath the announced file's name",
            "model.safetensors",
            vec![E::File("model.safetensors/model.pt", pt)],
            "model.safetensors/model.pt",
            "which is no directory",
        ),
        (
            "a symlink as the announced file",
            "model.safetensors",
            vec![E::File("model.bin", pt), E::Sym("model.safetensors", "model.bin")],
            "model.bin",
            "not announced",
        ),
        (
            "only a symlink as the announced file",
            "w/model.safetensors",
            vec![E::Dir("w"), E::Sym("w/model.safetensors", "../x.pt")],
            "w/model.safetensors",
            "holds a symlink there",
        ),
        (
            "a hard link as the announced file",
            "model.safetensors",
            vec![E::Hard("model.safetensors", "model.safetensors")],
            "model.safetensors",
            "holds a hard link there",
        ),
        (
            "a name that only starts like the announced one",
            "model.safetensors",
            vec![E::File("model.safetensors.pt", pt)],
            "model.safetensors.pt",
            "not announced",
        ),
        (
            "a sibling of the announced file's directory",
            "w/model.safetensors",
            vec![E::Dir("w"), E::File("w/model.pt", pt)],
            "w/model.pt",
            "not announced",
        ),
        (
            "an ancestor that is a symlink",
            "w/model.safetensors",
            vec![E::Sym("w", "."), E::File("model.safetensors", b"st")],
            "w",
            "not announced",
        ),
        (
            "a directory announced, a file outside it",
            "weights/",
            vec![E::File("weights/a.safetensors", b"st"), E::File("evil.pt", pt)],
            "evil.pt",
            "not announced",
        ),
        (
            "a directory announced, a sibling sharing its prefix",
            "weights/",
            vec![E::File("weights2/evil.pt", pt)],
            "weights2/evil.pt",
            "not announced",
        ),
        (
            "a directory announced, a file in its place",
            "weights/",
            vec![E::File("weights", pt)],
            "weights",
            "holds a regular file there",
        ),
    ];
    for (shape, announced, entries, entry, reason) in cases {
        let tar = archive(&entries);
        for (media_type, layer) in
            [(TAR.to_owned(), tar.clone()), (format!("{TAR}+gzip"), gzip(&tar)), (format!("{TAR}+zstd"), zstd(&tar))]
        {
            let err = pull(&media_type, layer, &[(FILEPATH, announced)]).expect_err(shape);
            assert!(err.starts_with("layer sha256:"), "{shape} ({media_type}): {err}");
            assert!(err.contains(&format!("entry {entry:?} refused")), "{shape} ({media_type}): {err}");
            assert!(err.contains(reason), "{shape} ({media_type}): {err}");
            assert_eq!(err.lines().count(), 1, "{shape}: {err}");
        }
    }
}

#[test]
fn an_archive_without_its_announced_path_is_refused() {
    for (announced, entries) in [
        ("model.safetensors", vec![]),
        ("model.safetensors", vec![E::Dir("./")]),
        ("a/model.safetensors", vec![E::Dir("a")]),
        ("weights/", vec![]),
        ("weights/", vec![E::Dir("./")]),
    ] {
        let err = pull(TAR, archive(&entries), &[(FILEPATH, announced)]).expect_err(announced);
        assert!(err.contains("annotations announce is not in it"), "{announced}: {err}");
        assert!(err.contains(announced), "{announced}: {err}");
    }
}

#[test]
fn what_producers_write_still_extracts() {
    let st = b"safetensors bytes";
    // modctl v0.2.2 `--raw=false`: one entry, the relative path, no directory entries.
    let modctl = archive(&[E::File("nested/README.md", b"# readme")]);
    assert_eq!(
        pull(TAR, modctl, &[(FILEPATH, "nested/README.md")]),
        Ok(vec!["nested".into(), "nested/README.md".into()])
    );
    // `tar -C dir -cf - ./model.safetensors`: a `./` prefix, the root entry, parents.
    let dotted = archive(&[E::Dir("./"), E::Dir("./w/"), E::File("./w/model.safetensors", st)]);
    assert_eq!(
        pull(TAR, dotted, &[(FILEPATH, "./w/model.safetensors")]),
        Ok(vec!["w".into(), "w/model.safetensors".into()])
    );
    // A directory, announced each way a producer does: trailing '/', the spec's file metadata
    // (typeflag 5 as modctl's number, as the tar byte, as a string), oras's unpack annotation.
    let tree = archive(&[
        E::Dir("tok/"),
        E::File("tok/tokenizer.json", b"{}"),
        E::Dir("tok/sub"),
        E::Sym("tok/sub/link.json", "../tokenizer.json"),
        E::Hard("tok/copy.json", "tok/tokenizer.json"),
    ]);
    let expected: Vec<String> =
        ["tok", "tok/copy.json", "tok/sub", "tok/sub/link.json", "tok/tokenizer.json"].map(String::from).to_vec();
    let meta = "org.cncf.model.file.metadata+json";
    let legacy_meta = "org.cnai.model.file.metadata+json";
    for announcement in [
        vec![(FILEPATH, "tok/")],
        vec![(FILEPATH, "tok"), (meta, r#"{"name":"tok","typeflag":5}"#)],
        vec![(FILEPATH, "tok"), (meta, r#"{"name":"tok","typeflag":53}"#)],
        vec![("org.cnai.model.filepath", "tok"), (legacy_meta, r#"{"typeflag":"5"}"#)],
        vec![("org.opencontainers.image.title", "tok"), ("io.deis.oras.content.unpack", "true")],
    ] {
        assert_eq!(pull(TAR, tree.clone(), &announcement), Ok(expected.clone()), "{announcement:?}");
    }
    // Without any of those, the same archive is a file's and refused.
    for announcement in [
        vec![(FILEPATH, "tok")],
        vec![(FILEPATH, "tok"), (meta, r#"{"typeflag":0}"#)],
        vec![("org.opencontainers.image.title", "tok"), ("io.deis.oras.content.unpack", "false")],
    ] {
        let err = pull(TAR, tree.clone(), &announcement).expect_err("unannounced directory");
        assert!(err.contains("holds a directory there"), "{announcement:?}: {err}");
    }
    // An empty directory is a directory.
    assert_eq!(pull(TAR, archive(&[E::Dir("./empty/")]), &[(FILEPATH, "empty/")]), Ok(vec!["empty".into()]));
}

/// The rule costs a comparison per entry: 20,000 entries of ~4 KiB paths under an announced
/// directory extract in bounded time and memory (index included), and a refusal comes at the
/// first unannounced entry, not after the archive. Run in a child process for its peak RSS.
#[test]
fn announced_directories_cost_constant_memory_per_entry() {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cache::announce_tests::announced_child", "--nocapture", "--test-threads=1"])
        .env("ANNOUNCED_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(stdout.contains("1 passed"), "{stdout}{}", String::from_utf8_lossy(&child.stderr));
}

#[test]
fn announced_child() {
    if std::env::var_os("ANNOUNCED_CHILD").is_none() {
        return;
    }
    let top = format!("d{}", "a".repeat(249));
    let dirs = (0..14).map(|d| format!("{d}{}", "b".repeat(249))).collect::<Vec<_>>().join("/");
    let n = 20_000;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for i in 0..n {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, format!("{top}/{dirs}/{i:0>180}"), &b"x"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        gz.write_all(&bytes[..bytes.len() - 1024]).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    let layer = gz.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    let digest = put_blob(&store, &layer);
    let d = descriptor(&format!("{TAR}+gzip"), &digest, layer.len(), &format!("{top}/"));
    drop(layer);
    let before = peak_rss_kib();
    let started = Instant::now();
    let (_, files) =
        materialise(&store, &format!("sha256:{}", "9".repeat(64)), &manifest(vec![d]), &[], Limits::default()).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(files, n);
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB");
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
}
