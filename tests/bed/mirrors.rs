//! `pull --mirror REGISTRY=URL`: a second distribution instance in proxy mode (a pull-through
//! cache) in front of the bed's registry serves the bytes to every node while the registry sees one
//! download; a mirror that is down or lies is passed over; credentials go only to the hosts the
//! docker config names. The registry's side is read from the request log of a proxy in front of it.

use crate::support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::proxy::{Misbehaviour, Proxy};
use support::{Bed, craft, operator, unique_suffix};

/// A distribution registry in proxy mode for `upstream`, stopped when dropped.
struct PullThroughCache {
    host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PullThroughCache {
    fn start(upstream: &str) -> PullThroughCache {
        Self::start_with(upstream, "")
    }

    /// `upstream_auth`: extra keys of the `proxy` section (the cache's own upstream credentials).
    fn start_with(upstream: &str, upstream_auth: &str) -> PullThroughCache {
        let dir = tempfile::tempdir().unwrap();
        // The port is picked by binding, then given to the registry: retried if another process
        // took it in between.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let config = dir.path().join("config.yml");
            let storage = dir.path().join("data");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\n\
                     storage: {{filesystem: {{rootdirectory: {}}}}}\n\
                     http: {{addr: 127.0.0.1:{port}, secret: mirror}}\n\
                     proxy: {{remoteurl: http://{upstream}{upstream_auth}}}\n",
                    storage.display()
                ),
            )
            .unwrap();
            let mut child = Command::new(Bed::get().tool("registry"))
                .args(["serve", config.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return PullThroughCache { host: format!("127.0.0.1:{port}"), child, _dir: dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the pull-through cache did not start");
    }
}

impl Drop for PullThroughCache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Model {
    data: Vec<u8>,
    repo: String,
    digest: String,
    hex: String,
}

async fn model(registry: &support::Registry, name: &str, seed: u64) -> Model {
    let data = support::fixtures::pseudo_random(seed, 3_000_000);
    let artifact = craft::raw_model(name, "w.bin", data.clone());
    let repo = format!("mirrors/{name}-{}", unique_suffix());
    let digest = craft::push(registry, &repo, "v1", &artifact).await;
    let hex = craft::sha256(&data).strip_prefix("sha256:").unwrap().to_owned();
    Model { data, repo, digest, hex }
}

fn pull(reference: &str, cache: &Path, extra: &[&str]) -> Result<serde_json::Value, String> {
    let mut args = vec!["pull", "--insecure", reference, "--cache-dir", cache.to_str().unwrap()];
    args.extend(extra);
    match operator(&args) {
        (0, stdout, _) => Ok(serde_json::from_str(&stdout).unwrap()),
        (_, _, stderr) => Err(stderr),
    }
}

fn model_file(cache: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(cache.join("models/sha256").join(hex).join("w.bin")).unwrap()
}

#[tokio::test]
async fn nodes_pulling_through_a_mirror_cost_the_registry_one_download() {
    let bed = Bed::get();
    let m = model(&bed.plain, "fleet", 90).await;
    // The registry as nodes name it, with its request log.
    let registry = Proxy::start(&bed.plain.host, &m.hex, Misbehaviour::Pass);
    let cache = PullThroughCache::start(&registry.host);
    let reference = format!("{}/{}@{}", registry.host, m.repo, m.digest);
    let mirror = format!("{}=http://{}", registry.host, cache.host);
    for node in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        pull(&reference, dir.path(), &["--mirror", &mirror]).unwrap();
        assert_eq!(model_file(dir.path(), &m.digest), m.data, "node {node}: byte-exact");
    }
    assert_eq!(registry.blob_gets.load(std::sync::atomic::Ordering::SeqCst), 1, "three nodes, one download");

    // Without the mirror every node downloads.
    let dir = tempfile::tempdir().unwrap();
    pull(&reference, dir.path(), &[]).unwrap();
    assert_eq!(registry.blob_gets.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_mirror_that_is_down_or_lies_is_passed_over() {
    let bed = Bed::get();
    let m = model(&bed.plain, "fallback", 91).await;
    let registry = Proxy::start(&bed.plain.host, &m.hex, Misbehaviour::Pass);
    let cache = PullThroughCache::start(&registry.host);
    let lying = Proxy::start(&cache.host, &m.hex, Misbehaviour::Corrupt);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let reference = format!("{}/{}@{}", registry.host, m.repo, m.digest);
    let dir = tempfile::tempdir().unwrap();
    let (down, lies) =
        (format!("{}=http://{closed}", registry.host), format!("{}=http://{}", registry.host, lying.host));
    pull(&reference, dir.path(), &["--mirror", &down, "--mirror", &lies]).unwrap();
    assert_eq!(model_file(dir.path(), &m.digest), m.data, "the registry's bytes, verified");
    assert!(lying.blob_gets.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the lying mirror was asked first");
    let gets = registry.blob_gets.load(std::sync::atomic::Ordering::SeqCst);
    assert!(gets >= 1, "the wrong bytes were refused and the blob fetched again ({gets} registry downloads)");
}

#[tokio::test]
async fn wrong_bytes_a_mirror_sent_before_it_failed_are_not_resumed_from_the_registry() {
    let bed = Bed::get();
    let m = model(&bed.plain, "cut", 93).await;
    let registry = Proxy::start(&bed.plain.host, &m.hex, Misbehaviour::Pass);
    let cache = PullThroughCache::start(&registry.host);
    let broken = Proxy::start(&cache.host, &m.hex, Misbehaviour::CorruptThenCut);
    let reference = format!("{}/{}@{}", registry.host, m.repo, m.digest);
    let dir = tempfile::tempdir().unwrap();
    let mirror = format!("{}=http://{}", registry.host, broken.host);
    pull(&reference, dir.path(), &["--mirror", &mirror]).unwrap();
    assert_eq!(model_file(dir.path(), &m.digest), m.data, "the registry's bytes, from byte 0");
    assert!(broken.blob_gets.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the mirror was asked first");
}

#[tokio::test]
async fn a_mirror_with_its_own_credentials_does_not_let_a_pull_without_them_read_the_model() {
    let bed = Bed::get();
    let (user, password) = bed.auth.basic_auth.clone().unwrap();
    let m = model(&bed.auth, "borrowed", 94).await;
    let cache = PullThroughCache::start_with(&bed.auth.host, &format!(", username: {user}, password: {password}"));
    let reference = format!("{}/{}@{}", bed.auth.host, m.repo, m.digest);
    let dir = tempfile::tempdir().unwrap();
    let mirror = format!("{}=http://{}", bed.auth.host, cache.host);
    let err = pull(&reference, dir.path(), &["--mirror", &mirror]).unwrap_err();
    assert!(err.contains("401") || err.to_lowercase().contains("unauthorized"), "{err}");
    let manifest = dir.path().join("blobs/sha256").join(m.digest.strip_prefix("sha256:").unwrap());
    assert!(!manifest.exists(), "the mirror's manifest was kept as served by the registry");
}

#[tokio::test]
async fn credentials_go_only_to_the_hosts_the_docker_config_names() {
    let bed = Bed::get();
    let (user, password) = bed.auth.basic_auth.clone().unwrap();
    let m = model(&bed.auth, "creds", 92).await;
    // A "mirror" that asks for credentials it was not given: it must get none.
    let asking = Proxy::start(&bed.auth.host, &m.hex, Misbehaviour::Pass);
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{password}"));
    let config = dir.path().join("config.json");
    let auths = serde_json::json!({"auths": {bed.auth.host.clone(): {"auth": auth}}});
    std::fs::write(&config, auths.to_string()).unwrap();
    let reference = format!("{}/{}@{}", bed.auth.host, m.repo, m.digest);
    let mirror = format!("{}=http://{}", bed.auth.host, asking.host);
    let cache = dir.path().join("cache");
    pull(&reference, &cache, &["--mirror", &mirror, "--docker-config", config.to_str().unwrap()]).unwrap();
    assert_eq!(model_file(&cache, &m.digest), m.data);
    assert_eq!(asking.authorized.load(std::sync::atomic::Ordering::SeqCst), 0, "no credentials sent to the mirror");
}
