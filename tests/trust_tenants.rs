//! Other tenants' blobs, against registries of the attacker's own (no bed needed: the registries
//! are threads on local ports): a registry that says yes to every HEAD gets nothing it did not
//! send, and a registry that drips a shared layer holds up no other repository's pull of it.

mod support;

use std::io::Write;
use std::net::TcpListener;

use modelpack_operator::cache::Store;
use support::craft::sha256;

/// A registry that serves one manifest and its config, and answers 200 to every HEAD of a blob
/// (it has none of them). Returns its host:port and a log of request lines.
fn lying_registry(
    repo: &str,
    manifest: Vec<u8>,
    config: Vec<u8>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests = log.clone();
    let (manifest_digest, config_digest) = (sha256(&manifest), sha256(&config));
    let prefix = format!("/v2/{repo}/");
    std::thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            let head = support::read_request_head(&mut client);
            let line = head.lines().next().unwrap_or_default().to_owned();
            requests.lock().unwrap().push(line.clone());
            let mut parts = line.split(' ');
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let rest = path.strip_prefix(&prefix).unwrap_or("");
            let (status, body): (u16, &[u8]) = if rest == format!("manifests/{manifest_digest}") {
                (200, &manifest)
            } else if rest == format!("blobs/{config_digest}") {
                (200, &config)
            } else if rest.starts_with("blobs/") && method == "HEAD" {
                (200, b"") // "yes, I have it"
            } else {
                (404, b"")
            };
            let mut response =
                format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                    .into_bytes();
            if method != "HEAD" {
                response.extend_from_slice(body);
            }
            let _ = client.write_all(&response);
        }
    });
    (host, log)
}

/// A registry of the attacker's own answers the per-layer HEAD with 200 for a digest it does not
/// hold: the HEAD proves nothing then, so the cached blob is used only by repositories that have
/// served its bytes to this cache, and the attacker's must send them (it cannot).
#[test]
fn a_registry_that_says_yes_to_every_head_gets_no_other_tenants_blob() {
    let cache = tempfile::tempdir().unwrap();
    let secret = b"another tenant's private weights".to_vec();
    let store = Store::open(cache.path()).unwrap();
    let victim_layer = sha256(&secret);
    let mut ingest = store.ingest(&victim_layer, secret.len() as u64, "victim.example/private/model").unwrap().unwrap();
    ingest.write(&secret).unwrap();
    ingest.commit().unwrap();

    let (manifest, config) = model_of(&victim_layer, secret.len(), "stolen.bin", "stolen");
    let repo = "attacker/stolen";
    let (host, log) = lying_registry(repo, manifest.clone(), config);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelpack-operator"))
        .args(["pull", "--insecure", &format!("{host}/{repo}@{}", sha256(&manifest))])
        .args(["--cache-dir", cache.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stolen = cache.path().join("models/sha256").join(&sha256(&manifest)[7..]).join("stolen.bin");
    assert!(
        !stolen.exists(),
        "exit {:?}, stdout {}, stderr {}; the attacker's model holds {:?}; requests: {:#?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&std::fs::read(&stolen).unwrap_or_default()),
        log.lock().unwrap()
    );
    // The attacker's registry cannot send the blob it claimed: the pull could not decide (exit 4),
    // it did not judge the victim's bytes.
    assert_eq!(out.status.code(), Some(i32::from(modelpack_operator::exit::Exit::Undecided.code())));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(errors.len() == 1 && errors[0].contains(&victim_layer), "{stderr}");
    // It had to send the bytes itself (and could not); the victim's blob is untouched.
    let log = log.lock().unwrap();
    assert!(log.iter().any(|l| l.starts_with("GET ") && l.contains(&victim_layer)), "{log:#?}");
    assert_eq!(std::fs::read(store.blob_path(&victim_layer).unwrap()).unwrap(), secret);
}

/// A registry serving one model (manifest, config, one layer), the layer at `bytes_per_second`
/// (0: all at once). HEAD of the layer answers 200.
fn serving_registry(repo: &str, manifest: Vec<u8>, config: Vec<u8>, layer: Vec<u8>, drip: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let prefix = format!("/v2/{repo}/");
    std::thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            let (manifest, config, layer, prefix) = (manifest.clone(), config.clone(), layer.clone(), prefix.clone());
            std::thread::spawn(move || {
                let head = support::read_request_head(&mut client);
                if head.is_empty() {
                    return;
                }
                let line = head.lines().next().unwrap_or_default().to_owned();
                let mut parts = line.split(' ');
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let rest = path.strip_prefix(&prefix).unwrap_or("");
                let body: Option<&[u8]> = if rest == format!("manifests/{}", sha256(&manifest)) {
                    Some(&manifest)
                } else if rest == format!("blobs/{}", sha256(&config)) {
                    Some(&config)
                } else if rest == format!("blobs/{}", sha256(&layer)) {
                    Some(&layer)
                } else {
                    None
                };
                let Some(body) = body else {
                    let _ = client.write_all(b"HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                };
                let head = format!("HTTP/1.1 200 X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = client.write_all(head.as_bytes());
                if method == "HEAD" {
                    return;
                }
                if drip && body == layer.as_slice() {
                    for b in body {
                        std::thread::sleep(std::time::Duration::from_secs(2));
                        if client.write_all(&[*b]).is_err() {
                            return;
                        }
                    }
                } else {
                    let _ = client.write_all(body);
                }
            });
        }
    });
    host
}

fn model(layer: &[u8], name: &str) -> (Vec<u8>, Vec<u8>) {
    model_of(&sha256(layer), layer.len(), "weights.bin", name)
}

/// A one-layer ModelPack manifest and its config; the layer named by digest and size only.
fn model_of(layer_digest: &str, size: usize, path: &str, name: &str) -> (Vec<u8>, Vec<u8>) {
    let config = serde_json::to_vec(
        &serde_json::json!({"descriptor": {"name": name}, "modelfs": {"type": "layers", "diffIds": []}}),
    )
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": layer_digest, "size": size,
                    "annotations": {"org.cncf.model.filepath": path}}],
    }))
    .unwrap();
    (manifest, config)
}

/// An attacker whose registry serves a public layer (the same bytes, so every check passes) at one
/// byte every two seconds holds only its own partial download's lock: another tenant's pull of a
/// model sharing the layer, from its own fast registry, does not wait behind it.
#[test]
fn a_slow_registry_does_not_block_another_tenants_pull_of_a_shared_layer() {
    let cache = tempfile::tempdir().unwrap();
    let layer = vec![7u8; 4096]; // a "public" layer both tenants' models use
    let (attacker_manifest, attacker_config) = model(&layer, "attacker");
    let (victim_manifest, victim_config) = model(&layer, "victim");
    let attacker = serving_registry("a/m", attacker_manifest.clone(), attacker_config, layer.clone(), true);
    let victim = serving_registry("v/m", victim_manifest.clone(), victim_config, layer, false);
    let pull = |host: &str, repo: &str, manifest: &[u8]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_modelpack-operator"))
            .args(["pull", "--insecure", &format!("{host}/{repo}@{}", sha256(manifest))])
            .args(["--cache-dir", cache.path().to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Control: alone, on another cache, the victim's pull finishes at once.
    let control = tempfile::tempdir().unwrap();
    let alone = std::process::Command::new(env!("CARGO_BIN_EXE_modelpack-operator"))
        .args(["pull", "--insecure", &format!("{victim}/v/m@{}", sha256(&victim_manifest))])
        .args(["--cache-dir", control.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(alone.status.success(), "control: {}", String::from_utf8_lossy(&alone.stderr));
    let mut first = pull(&attacker, "a/m", &attacker_manifest);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let started = std::time::Instant::now();
    let mut second = pull(&victim, "v/m", &victim_manifest);
    let mut victim_done = None;
    while started.elapsed() < std::time::Duration::from_secs(20) {
        if let Some(status) = second.try_wait().unwrap() {
            victim_done = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = second.kill();
    let _ = first.kill();
    let _ = (second.wait(), first.wait());
    assert!(
        victim_done.is_some_and(|s| s.success()),
        "the victim's pull (a fast registry, 4 KiB) did not finish in 20 s: {victim_done:?}"
    );
}
