//! Test support for the end-to-end tests: the test bed's environment (e2e/cluster env), clients for
//! its control plane and registries, per-test namespaces, and fixture ModelPacks pushed with the
//! real peer tools (modctl writes `vnd.cnai`, oras writes `vnd.cncf`) or crafted by [`craft`].
#![allow(dead_code)]

pub mod argo;
pub mod craft;
pub mod fixtures;
pub mod hostile;
pub mod kstatus;
pub mod measure;
pub mod notary;
pub mod proxy;
pub mod reason_table;
pub mod served;
pub mod signed;
pub mod static_registry;
pub mod timestamping;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::{Client, Config};

/// One of the bed's registries.
#[derive(Clone, Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub host: String,
    pub tls_ca: Option<PathBuf>,
    pub basic_auth: Option<(String, String)>,
    pub referrers_api: bool,
}

impl Registry {
    pub fn is_tls(&self) -> bool {
        self.tls_ca.is_some()
    }
}

/// The running test bed, as `e2e/cluster env` describes it.
#[derive(Debug)]
pub struct Bed {
    pub kubeconfig: PathBuf,
    pub state: PathBuf,
    pub tools: PathBuf,
    pub nodes: Vec<String>,
    pub plain: Registry,
    pub referrers: Registry,
    pub auth: Registry,
    pub tls: Registry,
    /// Bearer-token auth (the Docker token flow) with the same user and password as `auth`.
    pub token: Registry,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests need the test bed (e2e/cluster up; eval \"$(e2e/cluster env)\")")
    })
}

impl Bed {
    pub fn get() -> &'static Bed {
        static BED: OnceLock<Bed> = OnceLock::new();
        BED.get_or_init(|| {
            let plain = |host: String| Registry { host, tls_ca: None, basic_auth: None, referrers_api: false };
            Bed {
                kubeconfig: var("KUBECONFIG").into(),
                state: var("MODELPACK_E2E_STATE").into(),
                tools: var("MODELPACK_E2E_TOOLS").into(),
                nodes: var("MODELPACK_E2E_NODES").split(',').map(str::to_owned).collect(),
                plain: plain(var("MODELPACK_E2E_REGISTRY")),
                referrers: Registry { referrers_api: true, ..plain(var("MODELPACK_E2E_REFERRERS_REGISTRY")) },
                auth: Registry {
                    basic_auth: Some((var("MODELPACK_E2E_AUTH_USER"), var("MODELPACK_E2E_AUTH_PASSWORD"))),
                    ..plain(var("MODELPACK_E2E_AUTH_REGISTRY"))
                },
                tls: Registry {
                    tls_ca: Some(var("MODELPACK_E2E_TLS_CA").into()),
                    ..plain(var("MODELPACK_E2E_TLS_REGISTRY"))
                },
                token: Registry {
                    basic_auth: Some((var("MODELPACK_E2E_AUTH_USER"), var("MODELPACK_E2E_AUTH_PASSWORD"))),
                    ..plain(var("MODELPACK_E2E_TOKEN_REGISTRY"))
                },
            }
        })
    }

    pub fn registries(&self) -> [&Registry; 5] {
        [&self.plain, &self.referrers, &self.auth, &self.tls, &self.token]
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.tools.join(name)
    }

    /// Where hostPath `path` of simulated node `node` lives on this machine.
    pub fn node_path(&self, node: &str, path: &str) -> PathBuf {
        self.state.join("nodes").join(node).join(path.trim_start_matches('/'))
    }

    pub async fn client(&self) -> Client {
        let config = Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
            .await
            .expect("reading the bed's kubeconfig");
        Client::try_from(config).expect("building a kube client")
    }
}

/// Applies the CRDs (server-side) and waits until the apiserver serves them.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    use kube::api::{Patch, PatchParams};
    use modelpack_operator::api::{Model, ModelCache, ModelDeployment, ModelPolicy};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [Model::crd(), ModelDeployment::crd(), ModelCache::crd(), ModelPolicy::crd()] {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("modelpack-e2e").force(), &Patch::Apply(&crd)).await.unwrap();
        eventually(&format!("CRD {name} established"), Duration::from_secs(30), || async {
            let c = crds.get(&name).await.ok()?;
            let established = c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        })
        .await;
    }
}

/// A `kubernetes.io/dockerconfigjson` Secret for `registry`'s user with `password`.
pub fn docker_config_secret(name: &str, registry: &Registry, password: &str) -> k8s_openapi::api::core::v1::Secret {
    use base64::Engine;
    let (user, _) = registry.basic_auth.clone().expect("a registry with basic auth");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({"auths": {&registry.host: {"auth": auth}}}).to_string();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config}
    }))
    .expect("secret object")
}

/// Creates namespace `name` unless it exists (e.g. the operator's default Jobs namespace).
pub async fn ensure_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// Simulated nodes of one test (the bed's executor runs pods on every node `bedctl nodes` made),
/// deleted on drop so that no other test ever selects them.
pub struct TestNodes {
    pub names: Vec<String>,
    pub label: (String, String),
}

impl TestNodes {
    /// `count` nodes named `<prefix>-<suffix>-<i>`, all labelled `e2e.modelpack.dev/pool=<pool>`.
    pub fn create(prefix: &str, count: usize) -> TestNodes {
        let pool = format!("{prefix}-{}", unique_suffix());
        let mut nodes = TestNodes { names: Vec::new(), label: ("e2e.modelpack.dev/pool".into(), pool) };
        for _ in 0..count {
            nodes.add();
        }
        nodes
    }

    /// One more node in the pool; returns its name.
    pub fn add(&mut self) -> String {
        let bed = Bed::get();
        let name = format!("{}-{}", self.label.1, self.names.len() + 1);
        let kubeconfig = bed.kubeconfig.display().to_string();
        let labels = format!("{}={}", self.label.0, self.label.1);
        run_tool(
            &bed.tool("bedctl"),
            &["nodes", "--kubeconfig", &kubeconfig, "--names", &name, "--labels", &labels],
            &[],
            None,
        );
        self.names.push(name.clone());
        name
    }

    pub fn selector(&self) -> serde_json::Value {
        serde_json::json!({&self.label.0: &self.label.1})
    }

    /// Deletes a node as a cluster does when a machine goes away.
    pub fn remove(&mut self, name: &str) {
        delete_node(name);
        self.names.retain(|n| n != name);
    }
}

fn delete_node(name: &str) {
    let bed = Bed::get();
    let kubeconfig = bed.kubeconfig.display().to_string();
    let _ = try_tool(
        &bed.tool("kubectl"),
        &["--kubeconfig", &kubeconfig, "delete", "node", name, "--wait=false"],
        &[],
        None,
    );
}

impl Drop for TestNodes {
    fn drop(&mut self) {
        for name in &self.names {
            delete_node(name);
        }
    }
}

/// A fresh namespace for one test; names are unique per process and test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", unique_suffix());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"modelpack.dev/e2e": "true"}}
    }))
    .expect("namespace object");
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("creating namespace");
    name
}

pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:x}{n}", std::process::id() % 0xfff, nanos % 0xffff)
}

/// The bed's tools, also without the bed: `MODELPACK_E2E_TOOLS`, or where `e2e/tools/build` links
/// them (`MODELPACK_TOOLS_CACHE`, default `~/.cache/modelpack-operator/tools`, then `current`).
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MODELPACK_E2E_TOOLS") {
        return dir.into();
    }
    let cache = std::env::var_os("MODELPACK_TOOLS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let home = || PathBuf::from(std::env::var_os("HOME").expect("HOME or MODELPACK_E2E_TOOLS")).join(".cache");
        std::env::var_os("XDG_CACHE_HOME").map_or_else(home, PathBuf::from).join("modelpack-operator/tools")
    });
    cache.join("current")
}

/// Runs the operator binary built with the tests: (exit code, stdout, stderr).
pub fn operator(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modelpack-operator")).args(args).output().expect("running the operator");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a bed tool and returns its stdout; panics with both streams when it fails.
pub fn run_tool(tool: &Path, args: &[&str], envs: &[(&str, &str)], cwd: Option<&Path>) -> String {
    try_tool(tool, args, envs, cwd).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a bed tool: its stdout, or a description of the failure with both streams.
pub fn try_tool(tool: &Path, args: &[&str], envs: &[(&str, &str)], cwd: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new(tool);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|e| format!("running {}: {e}", tool.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{} {:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            tool.display(),
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// Polls `check` until it returns Some, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator binary running `run` against the bed for one namespace; killed on drop. Its log is
/// kept in a file and printed when the test fails.
pub struct Operator {
    child: std::process::Child,
    pub log: PathBuf,
}

impl Operator {
    /// Its log goes to `<bed state>/operator-logs/<namespace>-<n>.log` (kept for post-mortems; the
    /// bed's state directory is wiped by the next `e2e/cluster up`).
    pub fn start(namespace: &str) -> Operator {
        Operator::start_with(namespace, &format!("e2e-{namespace}"), &[])
    }

    /// `run` for `namespace` with a leader-election identity and extra flags; metrics and probes on
    /// ports of the system's choosing (their addresses are in the log), the Lease in the namespace.
    pub fn start_with(namespace: &str, identity: &str, extra: &[&str]) -> Operator {
        Operator::start_full(namespace, identity, extra, &[])
    }

    /// [`Operator::start_with`] with extra environment (e.g. another `KUBECONFIG`).
    pub fn start_full(namespace: &str, identity: &str, extra: &[&str], env: &[(&str, &str)]) -> Operator {
        let dir = Bed::get().state.join("operator-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{namespace}-{}.log", unique_suffix()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_modelpack-operator"))
            .args(["run", "--watch-namespace", namespace, "--log-format", "json"])
            .args(["--metrics-bind-address", "127.0.0.1:0", "--health-probe-bind-address", "127.0.0.1:0"])
            .args(["--leader-election-namespace", namespace])
            .args(extra)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,modelpack_operator=debug")
            .envs(env.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting the operator");
        Operator { child, log }
    }
}

impl Operator {
    /// The operator's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("VmHWM in kB") * 1024
    }

    /// Kills the operator now (as a crash would).
    pub fn kill(self) {
        drop(self);
    }

    /// SIGTERM, as a Deployment rollout would; waits for the process to exit and returns whether
    /// it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The address of endpoint `what` ("metrics" or "health probes"): the `address` field of the
    /// JSON log event whose `endpoint` field is `what`.
    pub fn address(&self, what: &str) -> String {
        for _ in 0..100 {
            let found = self.log_events().into_iter().find_map(|e| {
                let fields = &e["fields"];
                (fields["endpoint"] == what).then(|| fields["address"].as_str().map(str::to_owned)).flatten()
            });
            if let Some(a) = found {
                return a;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the operator never logged its {what} address");
    }

    /// The operator's JSON log events so far (lines that are not JSON, e.g. a panic, are skipped).
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        self.log_text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The value of one sample (`name{labels}` exactly as exposed) on the operator's `/metrics`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, text) = http_get(&self.address("metrics"), "/metrics");
        assert_eq!(status, 200, "/metrics: {text}");
        sample(&text, series)
    }

    /// `/readyz`: (status, body); "ok" on the leader once its controllers run, "standby" otherwise.
    pub fn readiness(&self) -> (u16, String) {
        http_get(&self.address("health probes"), "/readyz")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The value of the sample `name{labels}` in an OpenMetrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// A plain HTTP/1.0 GET: (status code, body).
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- operator log (last 40 lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Server-side applies a `modelpack.dev/v1alpha1` object of `kind` with `spec` (field manager `e2e`).
pub async fn apply<K>(api: &Api<K>, kind: &str, name: &str, spec: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let obj = serde_json::json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec});
    let params = kube::api::PatchParams::apply("e2e").force();
    api.patch(name, &params, &kube::api::Patch::Apply(&obj)).await.unwrap();
}

/// Waits until the deployment's status for its current generation satisfies `check`.
pub async fn wait_for_deployment(
    api: &Api<modelpack_operator::api::ModelDeployment>,
    name: &str,
    what: &str,
    check: impl Fn(&modelpack_operator::api::ModelDeploymentStatus) -> bool,
) -> modelpack_operator::api::ModelDeployment {
    eventually(&format!("deployment {name}: {what}"), Duration::from_secs(90), || async {
        let d = api.get(name).await.ok()?;
        let s = d.status.as_ref()?;
        (s.observed_generation == d.metadata.generation && check(s)).then_some(d)
    })
    .await
}

/// The request line and headers of one HTTP/1.1 request (for the tests' small servers); empty
/// when the client closed first.
pub fn read_request_head(client: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// What watches delivered, mapped, in order. A watch that fails or ends is remembered and fails
/// every later read, so that no assertion passes on a recording that stopped early.
pub struct Recording<T> {
    items: std::sync::Mutex<Vec<T>>,
    failure: std::sync::Mutex<Option<String>>,
}

impl<T: Send + 'static> Recording<T> {
    pub fn new() -> std::sync::Arc<Recording<T>> {
        std::sync::Arc::new(Recording { items: Default::default(), failure: Default::default() })
    }

    /// The items so far; panics when a watch feeding this recording failed or ended.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        if let Some(failure) = self.failure.lock().unwrap().as_ref() {
            panic!("a recorded watch stopped ({failure}): the recording is incomplete");
        }
        self.items.lock().unwrap()
    }

    /// Records `map` of every version of object `name` that a watch on `api` delivers.
    pub fn watch<K>(
        self: &std::sync::Arc<Self>,
        api: &Api<K>,
        name: &str,
        map: impl Fn(K) -> Option<T> + Send + 'static,
    ) where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let config = kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
        self.watch_with(api, config, map);
    }

    /// Records `map` of every object version a watch on `api` with `config` delivers.
    pub fn watch_with<K>(
        self: &std::sync::Arc<Self>,
        api: &Api<K>,
        config: kube::runtime::watcher::Config,
        map: impl Fn(K) -> Option<T> + Send + 'static,
    ) where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let stream = watcher(api.clone(), config).applied_objects();
        let sink = self.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let failure = loop {
                match stream.next().await {
                    Some(Ok(obj)) => {
                        if let Some(item) = map(obj) {
                            sink.items.lock().unwrap().push(item);
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the stream ended".to_owned(),
                }
            };
            *sink.failure.lock().unwrap() = Some(failure);
        });
    }
}

/// Trust anchors as openssl computes them (the oracle for `verified.anchor`).
/// `sha256:<hex>` of the DER openssl writes for `file` (`openssl pkey -pubin -in F -outform der`).
pub fn openssl_fingerprint(args: &[&str], file: &std::path::Path) -> String {
    let out = std::process::Command::new("openssl").args(args).arg(file).args(["-outform", "der"]).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout)))
}

/// The Fulcio root of a trusted root, written out as PEM and fingerprinted by openssl.
pub fn fulcio_root_fingerprint(root: &std::path::Path) -> String {
    let root: serde_json::Value = serde_json::from_slice(&std::fs::read(root).unwrap()).unwrap();
    let chain = root["certificateAuthorities"][0]["certChain"]["certificates"].as_array().unwrap();
    let b64 = chain.last().unwrap()["rawBytes"].as_str().unwrap();
    let pem = tempfile::NamedTempFile::new().unwrap();
    let body: Vec<String> = b64.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    std::fs::write(
        pem.path(),
        format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", body.join("\n")),
    )
    .unwrap();
    openssl_fingerprint(&["x509", "-in"], pem.path())
}
