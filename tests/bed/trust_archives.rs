//! The node cache's trust boundary, tried as an attacker would (issue classes: links through links,
//! entry bombs, other tenants' blobs). Every case runs the real `pull` against the bed's registries
//! (or a forging registry of the attacker's own) and asserts the exit code, the one-line error
//! naming the entry or layer, that nothing was published, and that nothing outside changed.

use crate::support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::{Bed, craft, unique_suffix};

/// Runs `pull` under `/usr/bin/time`: (exit code, stdout, stderr without time's line, peak RSS KiB).
fn pull_measured(host: &str, repo: &str, digest: &str, cache: &Path, extra: &[&str]) -> (i32, String, String, u64) {
    let reference = format!("{host}/{repo}@{digest}");
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "maxrss=%M", env!("CARGO_BIN_EXE_modelpack-operator"), "pull", "--insecure", &reference])
        .args(["--cache-dir", cache.to_str().unwrap()])
        .args(extra)
        .output()
        .expect("running pull under /usr/bin/time");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rss = stderr.lines().rev().find_map(|l| l.strip_prefix("maxrss=")).and_then(|v| v.parse().ok());
    let rest: String = stderr.lines().filter(|l| !l.starts_with("maxrss=")).map(|l| format!("{l}\n")).collect();
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stdout).into_owned(), rest, rss.expect("time printed maxrss"))
}

/// A refused pull: exit 1 and exactly one `error:` line, which it returns.
fn refused(host: &str, repo: &str, digest: &str, cache: &Path, extra: &[&str]) -> (String, u64) {
    let (code, stdout, stderr, rss) = pull_measured(host, repo, digest, cache, extra);
    assert_eq!(code, 1, "pull of {repo} should fail: {stdout}{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    (errors[0].to_owned(), rss)
}

fn pulled(host: &str, repo: &str, digest: &str, cache: &Path, extra: &[&str]) -> Value {
    let (code, stdout, stderr, _) = pull_measured(host, repo, digest, cache, extra);
    assert_eq!(code, 0, "pull of {repo} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// A tar header written byte for byte, bypassing the tar crate's own path checks as a hostile
/// producer would.
fn header(path: &str, kind: tar::EntryType, link: Option<&str>, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
    h.set_size(size);
    // Longer names go in a GNU long-name record before the header (see `long_record`).
    if let Some(l) = link {
        let l = &l.as_bytes()[..l.len().min(100)];
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    }
    let path = &path.as_bytes()[..path.len().min(100)];
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.set_cksum();
    h
}

#[derive(Clone, Copy)]
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

/// A GNU long-name (`L`) or long-link (`K`) record for names over tar's 100 bytes.
fn long_record(kind: tar::EntryType, name: &str, out: &mut Vec<u8>) {
    if name.len() <= 100 {
        return;
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(name.len() as u64 + 1);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn archive(entries: &[E<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        match *e {
            E::Sym(p, t) | E::Hard(p, t) => {
                long_record(tar::EntryType::GNULongName, p, &mut out);
                long_record(tar::EntryType::GNULongLink, t, &mut out);
            }
            E::Dir(p) | E::File(p, _) => long_record(tar::EntryType::GNULongName, p, &mut out),
        }
        let (h, data): (tar::Header, &[u8]) = match *e {
            E::Dir(p) => (header(p, tar::EntryType::Directory, None, 0), b""),
            E::File(p, d) => (header(p, tar::EntryType::Regular, None, d.len() as u64), d),
            E::Sym(p, t) => (header(p, tar::EntryType::Symlink, Some(t), 0), b""),
            E::Hard(p, t) => (header(p, tar::EntryType::Link, Some(t), 0), b""),
        };
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn layer(media: &str, data: Vec<u8>, path: &str) -> craft::Blob {
    craft::Blob::new(&format!("application/vnd.cncf.model.{media}"), data).annotate("org.cncf.model.filepath", path)
}

fn artifact(layers: Vec<craft::Blob>) -> craft::Artifact {
    let config = serde_json::json!({"descriptor": {"name": "crafted"}, "modelfs": {"type": "layers", "diffIds": []}});
    craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers,
        annotations: BTreeMap::new(),
    }
}

/// Every path under `dir` with what identifies its content: (kind, size, inode links, bytes hash).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, u64, u64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if meta.is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else {
                "file".to_owned()
            };
            let hash = if meta.is_file() { craft::sha256(&std::fs::read(&path).unwrap()) } else { String::new() };
            out.insert(path, (kind, meta.len(), meta.nlink(), hash));
        }
    }
    out
}

fn assert_nothing_published(cache: &Path, digest: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(!cache.join("models/sha256").join(hex).exists(), "a model directory was published");
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(
        leftovers.iter().all(|n| n.to_string_lossy().starts_with("ingest-")),
        "staging left in tmp/: {leftovers:?}"
    );
}

/// A victim tenant's model in a cache nested a few levels deep (so that `..` chains have somewhere
/// to go): returns (cache dir, the victim's layer digest, the snapshot of everything outside the
/// attacker's reach that must not change).
struct Victim {
    _scratch: tempfile::TempDir,
    scratch_root: PathBuf,
    cache: PathBuf,
    layer_hex: String,
    /// `registry/repository` the victim pulled from.
    source: String,
}

async fn victim(bed: &Bed) -> Victim {
    let scratch = tempfile::tempdir().unwrap();
    let cache = scratch.path().join("var/lib/modelpack");
    std::fs::write(scratch.path().join("sentinel"), b"outside the cache").unwrap();
    let secret = format!("private weights {}", unique_suffix()).into_bytes();
    let a = artifact(vec![layer("weight.v1.raw", secret.clone(), "secret.bin")]);
    let repo = format!("trust/victim-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
    pulled(&bed.plain.host, &repo, &digest, &cache, &[]);
    let layer_hex = craft::sha256(&secret).trim_start_matches("sha256:").to_owned();
    let source = format!("{}/{repo}", bed.plain.host);
    Victim { scratch_root: scratch.path().to_path_buf(), _scratch: scratch, cache, layer_hex, source }
}

/// Everything the victim has (its layer blob and who served it included), and everything outside
/// the cache: must be unchanged by an attack.
fn protected(v: &Victim) -> BTreeMap<PathBuf, (String, u64, u64, String)> {
    let mut all = snapshot(&v.scratch_root);
    all.retain(|p, _| {
        !(p.starts_with(v.cache.join("tmp"))
            || p.starts_with(v.cache.join("locks"))
            || (p.starts_with(v.cache.join("blobs"))
                || p.starts_with(v.cache.join("sources"))
                || p.starts_with(v.cache.join("stamps")))
                && !p.ends_with(&v.layer_hex))
    });
    all
}

#[tokio::test]
async fn links_through_links_never_reach_outside_the_model() {
    let bed = Bed::get();
    let v = victim(bed).await;
    // Each inside the directory its layer announces (`p/`), so that what is refused is the entry
    // itself, not that it was not announced; one `..` more where a chain means to leave.
    let stolen = format!("p/t/blobs/sha256/{}", v.layer_hex);
    let stolen_deep = format!("p/x/y/l/var/lib/modelpack/blobs/sha256/{}", v.layer_hex);
    // (name, entries, what the one error line must say)
    let cases: Vec<(&str, Vec<E>, &str)> = vec![
        (
            "issue-example",
            vec![
                E::Dir("p/a/b/c"),
                E::Sym("p/a/b/c/u", "../.."),
                E::Sym("p/t", "a/b/c/u/../../../.."),
                E::Hard("p/stolen", &stolen),
            ],
            "not a regular file of this model",
        ),
        (
            "deeper-chain-to-the-scratch-root",
            vec![E::Dir("p/x/y"), E::Sym("p/x/y/l", "../../../../../../../.."), E::Hard("p/stolen", &stolen_deep)],
            "not a regular file of this model",
        ),
        (
            "write-through-a-chain",
            vec![
                E::Dir("p/a"),
                E::Sym("p/a/u", ".."),
                E::Sym("p/up", "a/u/../../../../.."),
                E::File("p/up/pwned", b"x"),
            ],
            "\"p/up\", a symlink",
        ),
        ("directory-through-a-symlink", vec![E::Sym("p/d", "../../../../.."), E::Dir("p/d/sub")], "\"p/d\", a symlink"),
        (
            "file-through-an-inside-symlink",
            vec![E::Dir("p/a"), E::Sym("p/d", "a"), E::File("p/d/f", b"x")],
            "\"p/d\", a symlink",
        ),
        (
            "symlink-escaping-through-another",
            vec![E::Dir("p/x/y/z"), E::Sym("p/x/y/z/l1", "../../../.."), E::Sym("p/l2", "x/y/z/l1/..")],
            "leaves the model directory",
        ),
        (
            "symlink-escaping-from-a-subdirectory",
            vec![E::Dir("p/a/b"), E::Sym("p/a/b/up", "../../.."), E::Sym("p/a/out", "b/up/../sentinel")],
            "leaves the model directory",
        ),
        ("absolute-symlink", vec![E::Sym("p/etc", "/etc")], "leaves the model directory"),
        ("symlink-through-a-file", vec![E::File("p/f", b"x"), E::Sym("p/s", "f/../..")], "is not a directory"),
        ("symlink-loop", vec![E::Sym("p/l1", "l2"), E::Sym("p/l2", "l1")], "symlinks deep"),
        ("dangling-symlink", vec![E::Sym("p/s", "missing/file")], "dangles"),
        (
            "hard-link-to-a-symlink",
            vec![E::File("p/a/f", b"x"), E::Sym("p/s", "a/f"), E::Hard("p/h", "p/s")],
            "not a regular file of this model",
        ),
        (
            "hard-link-through-a-symlinked-parent",
            vec![E::File("p/a/f", b"x"), E::Sym("p/d", "a"), E::Hard("p/h", "p/d/f")],
            "not a regular file of this model",
        ),
        ("hard-link-to-a-directory", vec![E::Dir("p/a"), E::Hard("p/h", "p/a")], "not a regular file of this model"),
        (
            "hard-link-to-itself-later",
            vec![E::Hard("p/h", "p/f"), E::File("p/f", b"x")],
            "not a regular file of this model",
        ),
        ("symlink-over-a-file", vec![E::File("p/f", b"x"), E::Sym("p/f", "g")], "second"),
    ];
    let before = protected(&v);
    for (name, entries, expected) in cases {
        let a = artifact(vec![layer("weight.v1.tar", archive(&entries), "p/")]);
        let repo = format!("trust/links-{name}-{}", unique_suffix());
        let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
        let (err, _) = refused(&bed.plain.host, &repo, &digest, &v.cache, &[]);
        assert!(err.contains(expected), "{name}: expected {expected:?} in {err}");
        assert_nothing_published(&v.cache, &digest);
        assert_eq!(protected(&v), before, "{name} changed something it must not");
    }

    // What producers really write (Hugging Face snapshots: symlinks into a blob directory, through
    // chains, with hard links between files) still extracts, and reads through its links.
    let entries = [
        E::File("hf/blobs/abc", b"weights"),
        E::Sym("hf/snapshots/main/model.bin", "../../blobs/abc"),
        E::Sym("hf/snapshots/latest", "main"),
        E::Sym("hf/model.bin", "snapshots/latest/model.bin"),
        E::Hard("hf/copy.bin", "hf/blobs/abc"),
        E::Hard("hf/copy2.bin", "hf/copy.bin"),
    ];
    let a = artifact(vec![layer("weight.v1.tar", archive(&entries), "hf/")]);
    let repo = format!("trust/links-ok-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
    let report = pulled(&bed.plain.host, &repo, &digest, &v.cache, &[]);
    let model = PathBuf::from(report["path"].as_str().unwrap()).join("hf");
    for path in ["model.bin", "copy.bin", "copy2.bin", "snapshots/main/model.bin"] {
        assert_eq!(std::fs::read(model.join(path)).unwrap(), b"weights", "{path}");
    }
    assert_eq!(std::fs::metadata(model.join("copy2.bin")).unwrap().nlink(), 3);
}

/// A gzip layer of `n` entries made by `entry(i)`.
fn many(n: usize, entry: impl Fn(usize) -> tar::Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 512 + 1024);
    for i in 0..n {
        out.extend_from_slice(entry(i).as_bytes());
    }
    out.extend_from_slice(&[0u8; 1024]);
    gzip(&out)
}

#[tokio::test]
async fn entry_bombs_stop_at_the_entry_limit_in_constant_memory() {
    let bed = Bed::get();
    // The default limit against the issue's bomb: 150,000 empty directories in a small gzip layer.
    let n = 150_000;
    let dirs = many(n, |i| header(&format!("d/d{i}"), tar::EntryType::Directory, None, 0));
    assert!(dirs.len() < 2 << 20, "a small layer: {} bytes", dirs.len());
    let cache = tempfile::tempdir().unwrap();
    let repo = format!("trust/bomb-default-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &artifact(vec![layer("weight.v1.tar+gzip", dirs, "d/")])).await;
    // (Its time is the filesystem's: 100,000 mkdirs and as many rmdirs, about a minute on this
    // machine's disk under load.)
    let (err, rss) = refused(&bed.plain.host, &repo, &digest, cache.path(), &[]);
    assert!(err.contains("more than 100000 entries"), "{err}");
    assert!(rss < 64 << 10, "peak RSS {rss} KiB");
    assert_nothing_published(cache.path(), &digest);
    // Each header counts against the extraction limit (150,000 headers are 73 MiB of tar).
    let (err, _) = refused(
        &bed.plain.host,
        &repo,
        &digest,
        cache.path(),
        &["--max-entries", "200000", "--extract-limit", "10485760"],
    );
    assert!(err.contains("10485760-byte limit"), "{err}");
    assert_nothing_published(cache.path(), &digest);

    // Every kind of entry counts, and the count is per model, over all its layers (a lower limit
    // keeps these quick; the counting is the same).
    let n = 1_500;
    let limit = ["--max-entries", "1000"];
    // Each layer an announced directory (which counts as one more entry).
    let dirs = many(n, |i| header(&format!("d/d{i}"), tar::EntryType::Directory, None, 0));
    let files = many(n, |i| header(&format!("f/f{i}"), tar::EntryType::Regular, None, 0));
    let symlinks = many(n, |i| header(&format!("s/s{i}"), tar::EntryType::Symlink, Some("s0"), 0));
    let hard_links = many(n, |i| match i {
        0 => header("h/f", tar::EntryType::Regular, None, 0),
        _ => header(&format!("h/h{i}"), tar::EntryType::Link, Some("h/f"), 0),
    });
    let half_dirs = many(600, |i| header(&format!("a/a{i}"), tar::EntryType::Directory, None, 0));
    let half_links = many(600, |i| header(&format!("b/b{i}"), tar::EntryType::Symlink, Some("../a/a0"), 0));
    let single = |i: usize| layer("weight.v1.raw", format!("{i}").into_bytes(), &format!("raw{i}"));
    let cases: Vec<(&str, Vec<craft::Blob>)> = vec![
        ("directories", vec![layer("weight.v1.tar+gzip", dirs.clone(), "d/")]),
        ("files", vec![layer("weight.v1.tar+gzip", files, "f/")]),
        ("symlinks", vec![layer("weight.v1.tar+gzip", symlinks, "s/")]),
        ("hard-links", vec![layer("weight.v1.tar+gzip", hard_links, "h/")]),
        (
            "two-layers-together",
            vec![layer("weight.v1.tar+gzip", half_dirs.clone(), "a/"), layer("weight.v1.tar+gzip", half_links, "b/")],
        ),
        ("an-archive-and-single-files", {
            let mut layers = vec![layer("weight.v1.tar+gzip", half_dirs, "a/")];
            layers.extend((0..401).map(single));
            layers
        }),
    ];
    for (name, layers) in cases {
        let cache = tempfile::tempdir().unwrap();
        let repo = format!("trust/bomb-{name}-{}", unique_suffix());
        let digest = craft::push(&bed.plain, &repo, "v1", &artifact(layers)).await;
        let (err, _) = refused(&bed.plain.host, &repo, &digest, cache.path(), &limit);
        assert!(err.contains("more than 1000 entries"), "{name}: {err}");
        assert_nothing_published(cache.path(), &digest);
    }
    // Raising the limit lets the same layer through (its 1,500 entries and the directory `d`).
    let repo = format!("trust/bomb-raised-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &artifact(vec![layer("weight.v1.tar+gzip", dirs, "d/")])).await;
    let cache = tempfile::tempdir().unwrap();
    let report = pulled(&bed.plain.host, &repo, &digest, cache.path(), &["--max-entries", "1501"]);
    let model = PathBuf::from(report["path"].as_str().unwrap());
    assert!(model.join("d/d1499").is_dir());

    // One entry's headers are buffered by tar (a GNU long name, a PAX record): bounded on their own.
    let mut long = tar::Header::new_gnu();
    long.set_entry_type(tar::EntryType::GNULongName);
    long.set_size(64 << 20);
    long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    long.set_cksum();
    let mut raw = long.as_bytes().to_vec();
    raw.resize(raw.len() + (64 << 20), b'a');
    raw.extend_from_slice(header("x", tar::EntryType::Regular, None, 0).as_bytes());
    raw.extend_from_slice(&[0u8; 1024]);
    let repo = format!("trust/bomb-longname-{}", unique_suffix());
    let digest =
        craft::push(&bed.plain, &repo, "v1", &artifact(vec![layer("weight.v1.tar+gzip", gzip(&raw), "x")])).await;
    let cache = tempfile::tempdir().unwrap();
    let (err, rss) = refused(&bed.plain.host, &repo, &digest, cache.path(), &[]);
    assert!(err.contains("bytes of headers"), "{err}");
    assert!(rss < 64 << 10, "peak RSS {rss} KiB");
    assert_nothing_published(cache.path(), &digest);
}

/// The attacker's own registry: serves one manifest (by tag and digest) and its config, answers
/// HEAD on any other blob with `head_status`, and records every request line.
struct Forger {
    host: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Forger {
    fn start(repo: &str, manifest: Vec<u8>, config: Vec<u8>, head_status: u16) -> Forger {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let (manifest_digest, config_digest) = (craft::sha256(&manifest), craft::sha256(&config));
        let prefix = format!("/v2/{repo}/");
        std::thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                let head = support::read_request_head(&mut client);
                let text = head;
                let line = text.lines().next().unwrap_or_default().to_owned();
                log.lock().unwrap().push(line.clone());
                let mut parts = line.split(' ');
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let rest = path.strip_prefix(&prefix).unwrap_or("");
                let (status, kind, body): (u16, &str, &[u8]) = if path == "/v2/" {
                    (200, "application/json", b"{}")
                } else if rest == "manifests/v1" || rest == format!("manifests/{manifest_digest}") {
                    (200, "application/vnd.oci.image.manifest.v1+json", &manifest)
                } else if rest == format!("blobs/{config_digest}") {
                    (200, "application/octet-stream", &config)
                } else if rest.starts_with("blobs/") && method == "HEAD" {
                    (head_status, "application/json", b"")
                } else {
                    (404, "application/json", br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}"#)
                };
                let mut response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\nConnection: close\r\n\r\n",
                    body.len(),
                    if rest.starts_with("manifests/") { manifest_digest.as_str() } else { "" },
                )
                .into_bytes();
                if method != "HEAD" {
                    response.extend_from_slice(body);
                }
                let _ = client.write_all(&response);
            }
        });
        Forger { host, requests }
    }

    fn blob_requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().filter(|l| l.contains("/blobs/")).cloned().collect()
    }
}

#[tokio::test]
async fn a_digest_in_the_cache_is_no_proof_of_access() {
    let bed = Bed::get();
    let v = victim(bed).await;
    let victim_layer = format!("sha256:{}", v.layer_hex);
    // The attacker knows the victim's layer digest (digests leak: logs, status, manifests) and
    // names it in a manifest of its own registry, which does not have the blob.
    let config = serde_json::to_vec(
        &serde_json::json!({"descriptor": {"name": "stolen"}, "modelfs": {"type": "layers", "diffIds": []}}),
    )
    .unwrap();
    let stolen = craft::Blob {
        media_type: "application/vnd.cncf.model.weight.v1.raw".into(),
        data: Vec::new(),
        annotations: BTreeMap::from([("org.cncf.model.filepath".to_owned(), "stolen.bin".to_owned())]),
    };
    let mut descriptor = stolen.descriptor();
    descriptor["digest"] = serde_json::json!(victim_layer);
    descriptor["size"] =
        serde_json::json!(std::fs::metadata(v.cache.join("blobs/sha256").join(&v.layer_hex)).unwrap().len());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "digest": craft::sha256(&config), "size": config.len()},
        "layers": [descriptor],
    }))
    .unwrap();
    let before = protected(&v);
    for status in [404u16, 401, 403] {
        let repo = format!("attacker/stolen-{status}");
        let forger = Forger::start(&repo, manifest.clone(), config.clone(), status);
        let digest = craft::sha256(&manifest);
        let (err, _) = refused(&forger.host, &repo, &digest, &v.cache, &[]);
        assert!(err.contains(&victim_layer) && err.contains("does not serve it"), "{status}: {err}");
        assert_nothing_published(&v.cache, &digest);
        assert_eq!(protected(&v), before);
        // Asked once for the layer, never downloaded anything.
        let blobs = forger.blob_requests();
        assert_eq!(blobs, vec![format!("HEAD /v2/{repo}/blobs/{victim_layer} HTTP/1.1")], "{status}");
    }

    // The same with the victim's own manifest bytes (so the finished model is already on the
    // node under that digest) and with another pull's partial download of the layer in tmp/.
    let hex_dirs: Vec<_> = std::fs::read_dir(v.cache.join("models/sha256")).unwrap().flatten().collect();
    assert_eq!(hex_dirs.len(), 1);
    let victim_manifest = std::fs::read(v.cache.join("blobs/sha256").join(hex_dirs[0].file_name())).unwrap();
    let victim_config_digest: Value = serde_json::from_slice(&victim_manifest).unwrap();
    let victim_config_digest = victim_config_digest["config"]["digest"].as_str().unwrap().to_owned();
    let victim_config =
        std::fs::read(v.cache.join("blobs/sha256").join(victim_config_digest.trim_start_matches("sha256:")));
    let repo = "attacker/same-manifest";
    let forger = Forger::start(repo, victim_manifest.clone(), victim_config.unwrap_or_default(), 404);
    let (err, _) = refused(&forger.host, repo, &craft::sha256(&victim_manifest), &v.cache, &[]);
    assert!(err.contains(&victim_layer), "{err}");
    assert_eq!(protected(&v), before);

    // The victim's own partial download is named after its source (see `Store::ingest`).
    let key = &craft::sha256(v.source.as_bytes())[7..23];
    let partial = v.cache.join("tmp").join(format!("ingest-{}-{key}", v.layer_hex));
    let bytes = std::fs::read(v.cache.join("blobs/sha256").join(&v.layer_hex)).unwrap();
    std::fs::remove_file(v.cache.join("blobs/sha256").join(&v.layer_hex)).unwrap();
    std::fs::write(&partial, &bytes[..bytes.len() / 2]).unwrap();
    let repo = "attacker/partial";
    let forger = Forger::start(repo, manifest.clone(), config.clone(), 404);
    let (err, _) = refused(&forger.host, repo, &craft::sha256(&manifest), &v.cache, &[]);
    assert!(err.contains(&victim_layer), "{err}");
    assert_eq!(std::fs::read(&partial).unwrap(), &bytes[..bytes.len() / 2], "the partial download was touched");
    assert_eq!(forger.blob_requests().len(), 1, "{:?}", forger.blob_requests());
}

#[tokio::test]
async fn the_owner_still_reuses_its_cache_at_one_head_per_layer() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let a = artifact(vec![
        layer("weight.v1.raw", b"one".to_vec(), "one.bin"),
        layer("weight.v1.raw", b"two".to_vec(), "two.bin"),
    ]);
    let repo = format!("trust/owner-{}", unique_suffix());
    let digest = craft::push(&bed.auth, &repo, "v1", &a).await;
    let config = tempfile::NamedTempFile::new().unwrap();
    let (user, password) = bed.auth.basic_auth.clone().unwrap();
    let auth = base64_encode(&format!("{user}:{password}"));
    std::fs::write(config.path(), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, bed.auth.host)).unwrap();
    let creds = ["--docker-config", config.path().to_str().unwrap()];
    let first = pulled(&bed.auth.host, &repo, &digest, cache.path(), &creds);
    assert_eq!(first["bytesFetched"], 6);
    let again = pulled(&bed.auth.host, &repo, &digest, cache.path(), &creds);
    assert_eq!(again["bytesFetched"], 0);
    // Without the credentials the private layers are not the caller's, although the node has them.
    // The registry refuses a caller without them: nothing to decide on (exit 4), nothing served.
    let (code, _, stderr, _) = pull_measured(&bed.auth.host, &repo, &digest, cache.path(), &[]);
    assert_eq!(code, i32::from(modelpack_operator::exit::Exit::Undecided.code()), "{stderr}");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
