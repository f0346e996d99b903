//! Issue 25 through the CLI, against a registry of the test's own (a thread on a local port; no
//! bed): the budget counts what a pull writes whatever its layers declare (exit 3, nothing
//! published), and collection on a cache left with thousands of lock files runs under a low
//! descriptor limit.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use support::craft::sha256;

/// Serves `manifest` and `blobs` (by digest) for `repo`, to GET and HEAD.
fn registry(repo: &str, manifest: Vec<u8>, blobs: Vec<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let prefix = format!("/v2/{repo}/");
    let mut content: Vec<(String, Vec<u8>)> = blobs.into_iter().map(|b| (format!("blobs/{}", sha256(&b)), b)).collect();
    content.push((format!("manifests/{}", sha256(&manifest)), manifest));
    let content = std::sync::Arc::new(content);
    std::thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            let (content, prefix) = (content.clone(), prefix.clone());
            std::thread::spawn(move || {
                let head = support::read_request_head(&mut client);
                let line = head.lines().next().unwrap_or_default().to_owned();
                let mut parts = line.split(' ');
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let rest = path.strip_prefix(&prefix).unwrap_or("");
                let Some((_, body)) = content.iter().find(|(name, _)| name == rest) else {
                    let _ = client.write_all(b"HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                };
                let head = format!("HTTP/1.1 200 X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = client.write_all(head.as_bytes());
                if method != "HEAD" {
                    let _ = client.write_all(body);
                }
            });
        }
    });
    host
}

/// A ModelPack of one `tar+gzip` layer announcing `path` (`annotations` added to its filepath),
/// and its config.
fn model(layer: &[u8], path: &str, annotations: serde_json::Value) -> (Vec<u8>, Vec<u8>) {
    let config = serde_json::to_vec(
        &serde_json::json!({"descriptor": {"name": "bounds"}, "modelfs": {"type": "layers", "diffIds": []}}),
    )
    .unwrap();
    let mut annotations = annotations;
    annotations["org.cncf.model.filepath"] = path.into();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.tar+gzip", "digest": sha256(layer),
                    "size": layer.len(), "annotations": annotations}],
    }))
    .unwrap();
    (manifest, config)
}

fn gzip_tar(entries: impl Iterator<Item = (String, Vec<u8>)>) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Bytes of every regular file under `dir`, each inode once.
fn bytes_under(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut inodes = std::collections::HashMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                inodes.insert(meta.ino(), meta.len());
            }
        }
    }
    inodes.values().sum()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The issue's two cases: a layer declaring 1 byte that writes 40 MiB, and one (declaring the same)
/// whose file index alone is 25 MiB (6,000 one-byte files at 4,000-byte paths), under a 16 MiB budget:
/// exit 3 with one `InsufficientStorage` error line, nothing published, nothing left in `tmp/`, and the
/// cache never held more than its budget. The same models under a budget with room are pulled.
#[test]
fn a_pull_stops_at_the_budget_whatever_its_layers_declare() {
    let deep: String = (0..15).map(|i| format!("{}/", char::from(b'a' + i).to_string().repeat(250))).collect();
    let lying = gzip_tar(std::iter::once(("w.bin".to_owned(), vec![0u8; 40 << 20])));
    let index = gzip_tar((0..6000).map(|i| (format!("{deep}{i:0>180}"), vec![1u8])));
    let meta = r#"{"name":"w.bin","mode":420,"size":1,"typeflag":48}"#;
    // Both declare one file of 1 byte, so the preflight lets them through: the build must stop them.
    let declared = serde_json::json!({"org.cncf.model.file.metadata+json": meta});
    // (The second announces the directory its files are in, as an archive of a directory must.)
    let top = format!("{}/", "a".repeat(250));
    let cases = [
        ("40 MiB in one file declared as 1 byte", lying, "w.bin", declared.clone(), "128Mi"),
        ("6,000 files with a 25 MiB index declared as 1 byte", index, top.as_str(), declared, "256Mi"),
    ];
    for (shape, layer, path, annotations, roomy) in cases {
        let (manifest, config) = model(&layer, path, annotations);
        let host = registry("b/m", manifest.clone(), vec![config, layer]);
        let reference = format!("{host}/b/m@{}", sha256(&manifest));
        for (limit, fits) in [("16Mi", false), (roomy, true)] {
            let cache = tempfile::tempdir().unwrap();
            let started = Instant::now();
            let (code, _, stderr) = support::operator(&[
                "pull",
                "--insecure",
                &reference,
                "--cache-dir",
                cache.path().to_str().unwrap(),
                "--cache-limit",
                limit,
                "--no-sync",
            ]);
            let models = count(&cache.path().join("models/sha256"));
            if fits {
                assert_eq!((code, models), (0, 1), "{shape} under {limit}: {stderr}");
                continue;
            }
            assert_eq!(code, 3, "{shape}: {stderr}");
            let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
            assert!(errors.len() == 1 && errors[0].starts_with("error: InsufficientStorage: "), "{shape}: {stderr}");
            assert!(started.elapsed() < Duration::from_secs(30), "{shape}: {:?}", started.elapsed());
            assert_eq!(models, 0, "{shape}");
            assert_eq!(count(&cache.path().join("index/sha256")), 0, "{shape}");
            assert_eq!(count(&cache.path().join("tmp")), 0, "{shape}: staging removed");
            assert!(bytes_under(cache.path()) <= 16 << 20, "{shape}: {} bytes left", bytes_under(cache.path()));
        }
    }
}

/// `gc` (what a deleted deployment's cleanup Job runs) on a cache holding the lock files a
/// 1,024-layer pull left when they were never removed, with 48 descriptors: it succeeds and
/// leaves no lock file.
#[test]
fn gc_runs_with_thousands_of_left_behind_lock_files_under_a_low_descriptor_limit() {
    let cache = tempfile::tempdir().unwrap();
    let locks = cache.path().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    for layer in 0..1024 {
        let hex = sha256(format!("layer {layer}").as_bytes()).trim_start_matches("sha256:").to_owned();
        std::fs::write(locks.join(format!("blob-{hex}-0123456789abcdef.lock")), b"").unwrap();
        std::fs::write(locks.join(format!("blob-{hex}.lock")), b"").unwrap();
    }
    std::fs::write(locks.join(format!("{}.lock", "e".repeat(64))), b"").unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 48 && exec \"$0\" gc --cache-dir \"$1\""])
        .arg(env!("CARGO_BIN_EXE_modelpack-operator"))
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&locks), 0);
}
