//! `modelpack-operator pull` against the bed's registries: byte-exact round trips of every layer
//! format in both families, delta pulls, concurrent pulls, and every malicious form refused with
//! nothing published and nothing written outside the cache.

use crate::support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::Value;
use support::fixtures::{ModelFiles, modctl_push_with};
use support::{Bed, Registry, craft, operator, unique_suffix};

fn pull(registry: &Registry, repo: &str, digest: &str, cache: &Path, extra: &[&str]) -> Result<Value, String> {
    let reference = format!("{}/{repo}@{digest}", registry.host);
    let mut args = vec!["pull", "--insecure", reference.as_str(), "--cache-dir", cache.to_str().unwrap()];
    args.extend(extra);
    let (code, stdout, stderr) = operator(&args);
    match code {
        0 => Ok(serde_json::from_str(&stdout).unwrap()),
        1 => {
            assert_eq!(stderr.trim_end().lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
            Err(stderr)
        }
        other => panic!("pull exited {other}: {stderr}"),
    }
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn cncf_layer(kind_format: &str, data: Vec<u8>, path: &str) -> craft::Blob {
    craft::Blob::new(&format!("application/vnd.cncf.model.{kind_format}"), data)
        .annotate("org.cncf.model.filepath", path)
}

fn artifact(layers: Vec<craft::Blob>, diff_ids: Vec<String>) -> craft::Artifact {
    let config =
        serde_json::json!({"descriptor": {"name": "crafted"}, "modelfs": {"type": "layers", "diffIds": diff_ids}});
    craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers,
        annotations: BTreeMap::new(),
    }
}

fn model_file(cache: &Path, digest: &str, path: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(cache.join("models/sha256").join(hex).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Nothing of a refused artifact is visible: no model directory, no partial files.
fn assert_nothing_published(cache: &Path, digest: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(!cache.join("models/sha256").join(hex).exists(), "a model directory was published");
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "tmp/ not cleaned: {leftovers:?}");
}

#[tokio::test]
async fn every_layer_format_round_trips_byte_exact() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let weights = support::fixtures::pseudo_random(1, 300_000);
    let tokenizer = support::fixtures::pseudo_random(2, 5_000);
    let code = b"print('hello')\n".to_vec();
    let readme = b"# model\n".to_vec();
    let dataset = support::fixtures::pseudo_random(3, 20_000);
    let plain_tar = tar_of(&[("tok/tokenizer.json", &tokenizer), ("tok/vocab.txt", b"a b c")]);
    let code_tar = tar_of(&[("src/run.py", &code)]);
    let docs_tar = tar_of(&[("docs/README.md", &readme)]);
    let zstd_tar = zstd::encode_all(&tar_of(&[("data/train.bin", &dataset)])[..], 3).unwrap();
    let diff_ids = vec![
        craft::sha256(&weights),
        craft::sha256(&plain_tar),
        craft::sha256(&code_tar),
        craft::sha256(&docs_tar),
        craft::sha256(&tar_of(&[("data/train.bin", &dataset)])),
        craft::sha256(b"gguf-bytes"),
    ];
    let a = artifact(
        vec![
            cncf_layer("weight.v1.raw", weights.clone(), "weights/model.safetensors"),
            // Archives of directories, announced as such (a trailing '/').
            cncf_layer("weight.config.v1.tar", plain_tar.clone(), "tok/"),
            cncf_layer("code.v1.tar+gzip", gzip(&code_tar), "src/"),
            cncf_layer("doc.v1.tar", docs_tar, "docs/"),
            cncf_layer("dataset.v1.tar+zstd", zstd_tar, "data/"),
            cncf_layer("weight.v1.gguf", b"gguf-bytes".to_vec(), "model.gguf"),
        ],
        diff_ids,
    );
    let repo = format!("pull/formats-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
    let report = pull(&bed.plain, &repo, &digest, cache.path(), &["--link", "deployments/ml/formats"]).unwrap();
    assert_eq!(report["files"], 7);
    assert_eq!(model_file(cache.path(), &digest, "weights/model.safetensors"), weights);
    assert_eq!(model_file(cache.path(), &digest, "tok/tokenizer.json"), tokenizer);
    assert_eq!(model_file(cache.path(), &digest, "tok/vocab.txt"), b"a b c");
    assert_eq!(model_file(cache.path(), &digest, "src/run.py"), code);
    assert_eq!(model_file(cache.path(), &digest, "docs/README.md"), readme);
    assert_eq!(model_file(cache.path(), &digest, "data/train.bin"), dataset);
    assert_eq!(model_file(cache.path(), &digest, "model.gguf"), b"gguf-bytes");
    let current = cache.path().join("deployments/ml/formats/current");
    assert_eq!(std::fs::read(current.join("weights/model.safetensors")).unwrap(), weights, "the link resolves");
    let meta = std::fs::metadata(current.join("src/run.py")).unwrap();
    assert!(meta.permissions().readonly(), "model files are read-only");
}

#[tokio::test]
async fn modctl_artifacts_raw_and_tar_round_trip() {
    let bed = Bed::get();
    let model = ModelFiles::new(11, &[("model.safetensors", 120_000), ("config.json", 400), ("nested/README.md", 60)]);
    for (flags, media_type) in [
        (&[][..], "application/vnd.cnai.model.weight.v1.raw"),
        (&["--raw=false"][..], "application/vnd.cnai.model.weight.v1.tar"),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let repo = format!("pull/modctl-{}", unique_suffix());
        let digest = modctl_push_with(bed, &bed.plain, &repo, "v1", &model, flags);
        let manifest: Value = serde_json::from_slice(&craft::manifest_bytes(&bed.plain, &repo, &digest).await).unwrap();
        let types: Vec<&str> =
            manifest["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
        assert!(types.contains(&media_type), "{flags:?}: {types:?}");
        let report = pull(&bed.plain, &repo, &digest, cache.path(), &[]).unwrap();
        assert_eq!(report["files"], 3, "{flags:?}: {report}");
        for (path, data) in &model.files {
            assert_eq!(&model_file(cache.path(), &digest, path), data, "{flags:?} {path}");
        }
    }
}

#[tokio::test]
async fn a_new_version_fetches_only_the_changed_layer_and_a_repull_fetches_nothing() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let shared = support::fixtures::pseudo_random(20, 400_000);
    let old = support::fixtures::pseudo_random(21, 100_000);
    let new = support::fixtures::pseudo_random(22, 150_000);
    let v1 = artifact(
        vec![cncf_layer("weight.v1.raw", shared.clone(), "base.bin"), cncf_layer("weight.v1.raw", old, "head.bin")],
        vec![],
    );
    let v2 = artifact(
        vec![cncf_layer("weight.v1.raw", shared, "base.bin"), cncf_layer("weight.v1.raw", new.clone(), "head.bin")],
        vec![],
    );
    let repo = format!("pull/delta-{}", unique_suffix());
    let d1 = craft::push(&bed.plain, &repo, "v1", &v1).await;
    let d2 = craft::push(&bed.plain, &repo, "v2", &v2).await;
    let first = pull(&bed.plain, &repo, &d1, cache.path(), &[]).unwrap();
    assert_eq!(first["bytesFetched"], 500_000);
    let second = pull(&bed.plain, &repo, &d2, cache.path(), &[]).unwrap();
    assert_eq!(second["bytesFetched"], 150_000, "only the changed layer: {second}");
    assert_eq!(second["bytesReused"], 400_000);
    assert_eq!(model_file(cache.path(), &d2, "head.bin"), new);
    let again = pull(&bed.plain, &repo, &d2, cache.path(), &[]).unwrap();
    assert_eq!(again["bytesFetched"], 0);
}

#[tokio::test]
async fn concurrent_pulls_of_one_digest_do_not_corrupt_the_cache() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let data = support::fixtures::pseudo_random(30, 2_000_000);
    let a = artifact(vec![cncf_layer("weight.v1.raw", data.clone(), "w.bin")], vec![]);
    let repo = format!("pull/concurrent-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (repo, digest, cache) = (repo.clone(), digest.clone(), cache.path().to_owned());
            let registry = bed.plain.clone();
            std::thread::spawn(move || pull(&registry, &repo, &digest, &cache, &[]).unwrap())
        })
        .collect();
    let fetched: u64 = handles.into_iter().map(|h| h.join().unwrap()["bytesFetched"].as_u64().unwrap()).sum();
    assert_eq!(fetched, 2_000_000, "the blob was fetched once; the others waited and reused it");
    assert_eq!(model_file(cache.path(), &digest, "w.bin"), data);
}

#[tokio::test]
async fn concurrent_pulls_of_two_versions_sharing_a_layer_fetch_it_once() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let shared = support::fixtures::pseudo_random(31, 2_000_000);
    let version = |seed: u64, len: usize| {
        let head = support::fixtures::pseudo_random(seed, len);
        let layers = vec![
            cncf_layer("weight.v1.raw", shared.clone(), "base.bin"),
            cncf_layer("weight.v1.raw", head, "head.bin"),
        ];
        artifact(layers, vec![])
    };
    let (a, b) = (version(32, 1_000), version(33, 2_000));
    let repo = format!("pull/shared-{}", unique_suffix());
    let da = craft::push(&bed.plain, &repo, "a", &a).await;
    let db = craft::push(&bed.plain, &repo, "b", &b).await;
    // The shared blob takes a second to arrive, so both pulls meet on it.
    let hex = craft::sha256(&shared).strip_prefix("sha256:").unwrap().to_owned();
    let proxy = support::proxy::Proxy::start(&bed.plain.host, &hex, support::proxy::Misbehaviour::Slow);
    let slow = Registry { host: proxy.host.clone(), ..bed.plain.clone() };
    let handles: Vec<_> = [da.clone(), db.clone()]
        .into_iter()
        .map(|digest| {
            let (registry, repo, cache) = (slow.clone(), repo.clone(), cache.path().to_owned());
            std::thread::spawn(move || pull(&registry, &repo, &digest, &cache, &[]))
        })
        .collect();
    let fetched: u64 = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("{e}"))["bytesFetched"].as_u64().unwrap())
        .sum();
    assert_eq!(fetched, 2_000_000 + 1_000 + 2_000, "the shared layer was fetched once");
    assert_eq!(proxy.blob_gets.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(model_file(cache.path(), &da, "base.bin"), shared);
    assert_eq!(model_file(cache.path(), &db, "head.bin"), b.layers[1].data);
}

#[tokio::test]
async fn malicious_archives_are_refused_with_the_entry_named() {
    let bed = Bed::get();
    let outside = tempfile::tempdir().unwrap();
    let escape_target = outside.path().join("pwned");
    let header = |path: &str, kind: tar::EntryType, mode: u32, link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(if kind == tar::EntryType::Regular { 3 } else { 0 });
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        // Bypass the tar crate's own path checks: a hostile producer would.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        h
    };
    let archive = |headers: Vec<tar::Header>| {
        let mut out = Vec::new();
        for h in headers {
            out.extend_from_slice(h.as_bytes());
            if h.entry_type() == tar::EntryType::Regular {
                let mut block = [0u8; 512];
                block[..3].copy_from_slice(b"bad");
                out.extend_from_slice(&block);
            }
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    };
    let abs = escape_target.to_str().unwrap().to_owned();
    // Each inside the directory its layer announces (`payload/`), so that what is refused is the
    // entry itself, not that it was not announced.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("absolute", archive(vec![header(&abs, tar::EntryType::Regular, 0o644, None)]), "absolute"),
        ("dotdot", archive(vec![header("payload/a/../../x", tar::EntryType::Regular, 0o644, None)]), "'..'"),
        (
            "symlink-out",
            archive(vec![header("payload/link", tar::EntryType::Symlink, 0o777, Some("../../../etc"))]),
            "leaves the model directory",
        ),
        (
            "symlink-abs",
            archive(vec![header("payload/link", tar::EntryType::Symlink, 0o777, Some(&abs))]),
            "leaves the model directory",
        ),
        (
            "write-through-symlink",
            archive(vec![
                header("payload/d", tar::EntryType::Symlink, 0o777, Some("e")),
                header("payload/d/f", tar::EntryType::Regular, 0o644, None),
            ]),
            "\"payload/d\", a symlink",
        ),
        (
            "hardlink-out",
            archive(vec![header("payload/h", tar::EntryType::Link, 0o644, Some("../../etc/passwd"))]),
            "hard link",
        ),
        ("device", archive(vec![header("payload/dev", tar::EntryType::Char, 0o644, None)]), "unsupported entry type"),
        ("fifo", archive(vec![header("payload/fifo", tar::EntryType::Fifo, 0o644, None)]), "unsupported entry type"),
        ("setuid", archive(vec![header("payload/suid", tar::EntryType::Regular, 0o4755, None)]), "setuid"),
    ];
    for (name, tar_bytes, expected) in cases {
        let cache = tempfile::tempdir().unwrap();
        let a = artifact(vec![cncf_layer("weight.v1.tar", tar_bytes, "payload/")], vec![]);
        let repo = format!("pull/evil-{name}-{}", unique_suffix());
        let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
        let err = pull(&bed.plain, &repo, &digest, cache.path(), &[]).expect_err(name);
        assert!(err.contains(expected), "{name}: expected {expected:?} in {err}");
        assert_nothing_published(cache.path(), &digest);
        assert!(!escape_target.exists(), "{name} wrote outside the cache");
    }

    // Two layers claiming one path.
    let cache = tempfile::tempdir().unwrap();
    let a = artifact(
        vec![
            cncf_layer("weight.v1.raw", b"one".to_vec(), "same.bin"),
            cncf_layer("weight.v1.raw", b"two".to_vec(), "same.bin"),
        ],
        vec![],
    );
    let repo = format!("pull/dup-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
    let err = pull(&bed.plain, &repo, &digest, cache.path(), &[]).unwrap_err();
    assert!(err.contains("same.bin"), "{err}");
    assert_nothing_published(cache.path(), &digest);

    // A decompression bomb stops at the extraction limit.
    let cache = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 30 << 20];
    let bomb = gzip(&tar_of(&[("big.bin", &zeros)]));
    assert!(bomb.len() < 1 << 20, "compresses well");
    let a = artifact(vec![cncf_layer("weight.v1.tar+gzip", bomb, "big.bin")], vec![]);
    let repo = format!("pull/bomb-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
    let err = pull(&bed.plain, &repo, &digest, cache.path(), &["--extract-limit", "10485760"]).unwrap_err();
    assert!(err.contains("limit"), "{err}");
    assert_nothing_published(cache.path(), &digest);

    // A wrong diffId.
    let cache = tempfile::tempdir().unwrap();
    let tar_bytes = tar_of(&[("x.bin", b"data")]);
    let a = artifact(vec![cncf_layer("weight.v1.tar+gzip", gzip(&tar_bytes), "x.bin")], vec![craft::sha256(b"other")]);
    let repo = format!("pull/diffid-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
    let err = pull(&bed.plain, &repo, &digest, cache.path(), &[]).unwrap_err();
    assert!(err.contains("diffId"), "{err}");
    assert_nothing_published(cache.path(), &digest);
}

#[test]
fn a_tag_reference_is_a_usage_error() {
    let (code, _, stderr) = operator(&["pull", "r.example/m:v1", "--cache-dir", "/tmp/unused"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("digest"), "{stderr}");
}

#[tokio::test]
async fn the_termination_log_carries_the_result_or_the_error() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("termination-log");
    let a = artifact(vec![cncf_layer("weight.v1.raw", b"tiny".to_vec(), "t.bin")], vec![]);
    let repo = format!("pull/term-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
    pull(&bed.plain, &repo, &digest, &cache.path().join("c"), &["--termination-log", log.to_str().unwrap()]).unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(&log).unwrap()).unwrap();
    assert_eq!(written["digest"], digest.as_str());
    assert_eq!(written["bytesFetched"], 4);

    let missing = format!("sha256:{}", "0".repeat(64));
    pull(&bed.plain, &repo, &missing, &cache.path().join("c"), &["--termination-log", log.to_str().unwrap()])
        .unwrap_err();
    let written: Value = serde_json::from_slice(&std::fs::read(&log).unwrap()).unwrap();
    assert!(written["error"].as_str().unwrap().contains("not found"), "{written}");
}

#[tokio::test]
async fn garbage_collection_keeps_exactly_what_deployments_keep() {
    let bed = Bed::get();
    let cache = tempfile::tempdir().unwrap();
    let shared = support::fixtures::pseudo_random(40, 10_000);
    let version = |seed: u64| {
        artifact(
            vec![
                cncf_layer("weight.v1.raw", shared.clone(), "base.bin"),
                cncf_layer("weight.v1.raw", support::fixtures::pseudo_random(seed, 5_000), "head.bin"),
            ],
            vec![],
        )
    };
    let repo = format!("pull/gc-{}", unique_suffix());
    let (a1, a2, a3) = (version(41), version(42), version(43));
    let d1 = craft::push(&bed.plain, &repo, "v1", &a1).await;
    let d2 = craft::push(&bed.plain, &repo, "v2", &a2).await;
    let d3 = craft::push(&bed.plain, &repo, "v3", &a3).await;
    let head = |a: &craft::Artifact| craft::sha256(&a.layers[1].data);
    let models = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(cache.path().join("models/sha256"))
            .unwrap()
            .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let blob = |d: &str| cache.path().join("blobs/sha256").join(d.strip_prefix("sha256:").unwrap()).exists();
    let pull_keep = |d: &str, link: &str, keep: &[&str]| {
        let mut extra = vec!["--link", link];
        for k in keep {
            extra.extend(["--keep", k]);
        }
        pull(&bed.plain, &repo, d, cache.path(), &extra).unwrap()
    };

    pull_keep(&d1, "deployments/ml/a", &[&d1]);
    pull_keep(&d2, "deployments/ml/a", &[&d1]);
    assert_eq!(models(), sorted(vec![d1.clone(), d2.clone()]), "keepPrevious 1: both warm");
    let report = pull_keep(&d3, "deployments/ml/a", &[&d2]);
    assert_eq!(models(), sorted(vec![d2.clone(), d3.clone()]), "d1 is no longer kept");
    assert_eq!(report["collected"]["models"], 1);
    assert!(!blob(&head(&a1)) && !blob(&d1), "d1's own layer and manifest are gone");
    assert!(blob(&head(&a2)) && blob(&head(&a3)) && blob(&craft::sha256(&shared)), "kept versions' blobs stay");

    // Another deployment keeps d1; the first one moves on to keep only d3.
    pull_keep(&d1, "deployments/ml/b", &[&d1]);
    pull_keep(&d3, "deployments/ml/a", &[&d3]);
    assert_eq!(models(), sorted(vec![d1.clone(), d3.clone()]));
    assert_eq!(model_file(cache.path(), &d1, "base.bin"), shared, "a kept model is intact");
    assert_eq!(model_file(cache.path(), &d3, "head.bin"), a3.layers[1].data);
    let (code, _, stderr) =
        operator(&["pull", &format!("{}/{repo}@{d1}", bed.plain.host), "--cache-dir", "/tmp/x", "--keep", &d1]);
    assert_eq!(code, 2, "--keep without --link is a usage error: {stderr}");
}

/// A one-file model (`w.bin`, one raw layer of pseudo-random bytes) pushed to the plain registry and
/// reachable through a proxy that misbehaves for that layer's blob.
struct Proxied {
    cache: tempfile::TempDir,
    data: Vec<u8>,
    repo: String,
    digest: String,
    blob_hex: String,
    registry: Registry,
    proxy: support::proxy::Proxy,
}

async fn proxied(name: &str, seed: u64, len: usize, how: support::proxy::Misbehaviour) -> Proxied {
    let bed = Bed::get();
    let data = support::fixtures::pseudo_random(seed, len);
    let a = artifact(vec![cncf_layer("weight.v1.raw", data.clone(), "w.bin")], vec![]);
    let repo = format!("pull/{name}-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &a).await;
    let blob_hex = craft::sha256(&data).strip_prefix("sha256:").unwrap().to_owned();
    let proxy = support::proxy::Proxy::start(&bed.plain.host, &blob_hex, how);
    let registry = Registry { host: proxy.host.clone(), ..bed.plain.clone() };
    Proxied { cache: tempfile::tempdir().unwrap(), data, repo, digest, blob_hex, registry, proxy }
}

#[tokio::test]
async fn a_registry_serving_wrong_bytes_publishes_nothing() {
    let p = proxied("lying", 50, 300_000, support::proxy::Misbehaviour::Corrupt).await;
    let err = pull(&p.registry, &p.repo, &p.digest, p.cache.path(), &[]).unwrap_err();
    assert!(err.contains("digest mismatch") && err.contains(&p.blob_hex), "{err}");
    assert!(p.proxy.blob_gets.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the blob went through the proxy");
    assert_nothing_published(p.cache.path(), &p.digest);
    assert!(!p.cache.path().join("blobs/sha256").join(&p.blob_hex).exists());
}

#[tokio::test]
async fn an_interrupted_download_resumes_where_it_stopped() {
    let report = interrupt_then_resume(51, support::proxy::Misbehaviour::TruncateOnce).await;
    assert_eq!(report.fetched, 4_000_000 - report.partial, "only the missing bytes were fetched (HTTP Range)");
}

#[tokio::test]
async fn a_registry_without_ranges_makes_a_resumed_download_start_over() {
    let report = interrupt_then_resume(52, support::proxy::Misbehaviour::TruncateOnceWithoutRanges).await;
    assert_eq!(report.fetched, 4_000_000, "the whole blob was fetched again, the partial one discarded");
}

#[tokio::test]
async fn a_pull_killed_mid_blob_resumes_from_what_it_wrote() {
    let p = proxied("killed", 53, 4_000_000, support::proxy::Misbehaviour::StallOnce).await;
    let reference = format!("{}/{}@{}", p.registry.host, p.repo, p.digest);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_modelpack-operator"))
        .args(["pull", "--insecure", &reference, "--cache-dir", p.cache.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The proxy sends half the blob, then nothing: wait until the ingest holds that half.
    // Partial downloads are named after the blob and their source (see `Store::ingest`).
    let key = &craft::sha256(format!("{}/{}", p.registry.host, p.repo).as_bytes())[7..23];
    let ingest = p.cache.path().join("tmp").join(format!("ingest-{}-{key}", p.blob_hex));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&ingest).map(|m| m.len()).unwrap_or(0) < 2_000_000 {
        assert!(std::time::Instant::now() < deadline, "the ingest never reached the half that was sent");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = std::fs::metadata(&ingest).unwrap().len();
    assert_eq!(partial, 2_000_000);
    assert!(!p.cache.path().join("blobs/sha256").join(&p.blob_hex).exists(), "nothing published by the killed pull");

    let report = pull(&p.registry, &p.repo, &p.digest, p.cache.path(), &[]).unwrap();
    assert_eq!(report["bytesFetched"].as_u64().unwrap(), 2_000_000, "only the missing half was fetched");
    assert_eq!(model_file(p.cache.path(), &p.digest, "w.bin"), p.data, "verified from byte 0");
}

struct Resumed {
    partial: u64,
    fetched: u64,
}

/// Pulls a 4 MB blob through a proxy that cuts its first answer short, checks what stays behind,
/// pulls again and checks the model byte for byte.
async fn interrupt_then_resume(seed: u64, how: support::proxy::Misbehaviour) -> Resumed {
    let p = proxied("resume", seed, 4_000_000, how).await;
    pull(&p.registry, &p.repo, &p.digest, p.cache.path(), &[]).unwrap_err();
    let partial = std::fs::read_dir(p.cache.path().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum::<u64>();
    assert!(partial > 0 && partial < 4_000_000, "a partial ingest stays in tmp/ ({partial} bytes)");
    assert!(!p.cache.path().join("models/sha256").join(p.digest.strip_prefix("sha256:").unwrap()).exists());

    let report = pull(&p.registry, &p.repo, &p.digest, p.cache.path(), &[]).unwrap();
    assert_eq!(model_file(p.cache.path(), &p.digest, "w.bin"), p.data, "verified from byte 0");
    assert_eq!(p.proxy.blob_gets.load(std::sync::atomic::Ordering::SeqCst), 2);
    Resumed { partial, fetched: report["bytesFetched"].as_u64().unwrap() }
}
