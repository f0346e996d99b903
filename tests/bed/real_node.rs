//! The bed's real node (a kubelet with containerd and runc, e2e/realnode.sh): what a simulated node
//! grants and a kubelet does not. The chart runs the operator there from the image e2e/image builds;
//! its pull, scrub and cleanup Jobs run as real containers with the security context the operator
//! ships (every capability dropped); a serving pod reads the model through the node cache; a pull
//! under a memory limit several times smaller than the model finishes on a real memory cgroup.
//!
//! One operator release serves every test of this file (installing it is the slow part); it
//! watches one namespace, where each test's objects have names of their own.

use crate::support;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use modelpack_operator::api::conditions::ConditionStatus;
use modelpack_operator::api::{Model, ModelDeployment};
use serde_json::{Value, json};
use support::{Bed, craft, eventually, install_crds, run_tool, unique_suffix};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/modelpack-operator");

fn real_node() -> String {
    std::env::var("MODELPACK_E2E_REAL_NODE").expect("MODELPACK_E2E_REAL_NODE: the bed's real node (e2e/cluster env)")
}

fn operator_image() -> String {
    std::env::var("MODELPACK_E2E_OPERATOR_IMAGE").expect("MODELPACK_E2E_OPERATOR_IMAGE: the image e2e/image pushed")
}

fn busybox_image() -> String {
    std::env::var("MODELPACK_E2E_BUSYBOX_IMAGE").expect("MODELPACK_E2E_BUSYBOX_IMAGE (e2e/cluster env)")
}

fn kubectl(args: &[&str]) -> String {
    let kubeconfig = Bed::get().kubeconfig.display().to_string();
    let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
    all.extend(args);
    run_tool(&Bed::get().tool("kubectl"), &all, &[], None)
}

/// The operator release: its namespace (where its Jobs run), the namespace it watches, and the
/// node cache directory on the real node (a real path: a hostPath is not mapped there).
struct Release {
    /// The release's name (cluster-scoped objects are named after it, so it must not be the
    /// chart test's).
    name: String,
    namespace: String,
    watched: String,
    cache: PathBuf,
}

static RELEASE: OnceLock<Release> = OnceLock::new();

fn release() -> &'static Release {
    RELEASE.get_or_init(|| {
        let bed = Bed::get();
        let suffix = unique_suffix();
        let name = format!("real-{suffix}");
        let namespace = format!("real-op-{suffix}");
        let watched = format!("real-{suffix}");
        let cache = bed.state.join("realnode/cache").join(&suffix);
        let image = operator_image();
        let (repository, tag) = image.rsplit_once(':').expect("image with a tag");
        kubectl(&["create", "namespace", &watched]);
        let kubeconfig = bed.kubeconfig.display().to_string();
        let sets = [
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            "replicaCount=1".to_owned(),
            format!("cacheDir={}", cache.display()),
            format!("watchNamespace={watched}"),
            "scrubInterval=15s".to_owned(),
            format!("nodeSelector.kubernetes\\.io/hostname={}", real_node()),
            "logFormat=json".to_owned(),
        ];
        // Helm stores the release in its namespace before creating anything, so the namespace comes
        // first, labelled as the chart would (the Jobs' hostPath needs a privileged namespace).
        kubectl(&["create", "namespace", &namespace]);
        kubectl(&["label", "namespace", &namespace, "pod-security.kubernetes.io/enforce=privileged"]);
        let mut args = vec!["--kubeconfig", &kubeconfig, "install", &name, CHART, "--namespace", &namespace];
        args.extend(["--set", "namespace.create=false", "--wait", "--timeout", "180s"]);
        for s in &sets {
            args.extend(["--set", s.as_str()]);
        }
        // The release must not outlive this test binary: its operator's node-cache loop is
        // cluster-wide, so later test binaries' nodes would get its scrub Jobs (of its cache
        // directory, empty there) and their ModelCaches its reports.
        // SAFETY: `uninstall` is an `extern "C" fn()` that reads a static and runs processes; it
        // does nothing unless the release below was installed.
        unsafe { libc::atexit(uninstall) };
        run_tool(&bed.tool("helm"), &args, &[], None);
        Release { name, namespace, watched, cache }
    })
}

/// Runs at the test binary's exit, once the release was installed: first the watched namespace
/// (while the operator still runs, so that its deployments' finalizers are served), then the
/// release and its namespace (its Jobs).
extern "C" fn uninstall() {
    let Some(release) = RELEASE.get() else { return };
    let bed = Bed::get();
    let kubeconfig = bed.kubeconfig.display().to_string();
    let delete_namespace = |ns: &str| {
        let args = ["--kubeconfig", kubeconfig.as_str(), "delete", "namespace", ns, "--wait=true", "--timeout=90s"];
        let _ = std::process::Command::new(bed.tool("kubectl")).args(args).output();
    };
    delete_namespace(&release.watched);
    let helm = ["--kubeconfig", kubeconfig.as_str(), "uninstall", &release.name, "--namespace", &release.namespace];
    let _ = std::process::Command::new(bed.tool("helm")).args(helm).output();
    delete_namespace(&release.namespace);
}

fn watched() -> String {
    release().watched.clone()
}

async fn apply(client: &kube::Client, ns: &str, kind: &str, name: &str, spec: Value) {
    let obj = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec});
    let params = PatchParams::apply("e2e").force();
    match kind {
        "Model" => {
            Api::<Model>::namespaced(client.clone(), ns).patch(name, &params, &Patch::Apply(&obj)).await.map(drop)
        }
        _ => Api::<ModelDeployment>::namespaced(client.clone(), ns)
            .patch(name, &params, &Patch::Apply(&obj))
            .await
            .map(drop),
    }
    .unwrap_or_else(|e| panic!("applying {kind} {ns}/{name}: {e}"));
}

/// Pushes version `tag` of `repo`: two raw files of distinct bytes and a tar layer with a directory.
async fn push_version(repo: &str, tag: &str, seed: u64, size: usize) -> (String, Vec<(String, Vec<u8>)>) {
    let bed = Bed::get();
    let files = vec![
        ("model.safetensors".to_owned(), support::fixtures::pseudo_random(seed, size)),
        ("config.json".to_owned(), format!("{{\"version\": \"{tag}\"}}").into_bytes()),
    ];
    let mut layers: Vec<craft::Blob> = files
        .iter()
        .map(|(path, data)| {
            craft::Blob::new("application/vnd.cncf.model.weight.v1.raw", data.clone())
                .annotate("org.cncf.model.filepath", path)
        })
        .collect();
    let vocab = support::fixtures::pseudo_random(seed + 1, 4096);
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(vocab.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "tokenizer/vocab.json", vocab.as_slice()).unwrap();
    layers.push(
        craft::Blob::new("application/vnd.cncf.model.weight.v1.tar", tar.into_inner().unwrap())
            .annotate("org.cncf.model.filepath", "tokenizer/"),
    );
    let mut all = files;
    all.push(("tokenizer/vocab.json".to_owned(), vocab));
    let config = json!({"descriptor": {"name": "real"}, "modelfs": {"type": "layers", "diffIds": []}});
    let artifact = craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers,
        annotations: Default::default(),
    };
    (craft::push(&bed.plain, repo, tag, &artifact).await, all)
}

fn sha256_hex(data: &[u8]) -> String {
    craft::sha256(data).trim_start_matches("sha256:").to_owned()
}

/// `sha256sum` lines (`<hex>  ./path`) as a serving pod prints them, for `files`.
fn expected_sums(files: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut lines: Vec<String> = files.iter().map(|(p, d)| format!("{}  ./{p}", sha256_hex(d))).collect();
    lines.sort();
    lines
}

/// The model's files as the node's cache holds them, compared byte for byte.
fn assert_cache_holds(ns: &str, name: &str, digest: &str, files: &[(String, Vec<u8>)]) {
    let cache = &release().cache;
    let current = cache.join("deployments").join(ns).join(name).join("current");
    let target = std::fs::canonicalize(&current).unwrap_or_else(|e| panic!("{}: {e}", current.display()));
    assert!(target.ends_with(digest.trim_start_matches("sha256:")), "current -> {}", target.display());
    for (path, data) in files {
        let on_node = std::fs::read(target.join(path)).unwrap_or_else(|e| panic!("{path} on the node: {e}"));
        assert!(on_node == *data, "{path} differs on the real node's cache");
    }
}

async fn wait_ready_on_node(deployments: &Api<ModelDeployment>, name: &str, digest: &str) {
    let node = real_node();
    eventually(&format!("{name} deployed {digest} on {node}"), Duration::from_secs(240), || async {
        let d = deployments.get(name).await.ok()?;
        let s = d.status?;
        let here = s.nodes.as_ref()?.entries.iter().find(|n| n.node == node)?;
        let ready = here.digest == digest && here.phase == modelpack_operator::api::NodePhase::Ready;
        (s.deployed.as_ref()?.digest == digest && ready).then_some(())
    })
    .await;
}

/// The pods of the Jobs of `role` on the real node, in the release namespace; for pull and cleanup
/// Jobs those of `deployment` only (Jobs are named `<role>-<deployment>-<hash>`; the tests of this
/// file share the release and run at once).
async fn job_pods(client: &kube::Client, role: &str, deployment: Option<&str>) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release().namespace);
    let selector = format!("modelpack.dev/role={role}");
    let list = pods.list(&ListParams::default().labels(&selector)).await.unwrap();
    let prefix = deployment.map(|d| format!("{role}-{d}-"));
    list.items
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&real_node()))
        .filter(|p| prefix.as_ref().is_none_or(|x| p.metadata.name.as_deref().unwrap_or_default().starts_with(x)))
        .collect()
}

fn terminated(pod: &Pod) -> Option<(i32, String)> {
    let state = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.clone()?;
    Some((state.exit_code, state.reason.unwrap_or_default()))
}

#[tokio::test]
async fn the_chart_runs_the_operator_on_the_real_node() {
    let client = Bed::get().client().await;
    install_crds(&client).await;
    let release = release();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    let selector = format!("app.kubernetes.io/name=modelpack-operator,app.kubernetes.io/instance={}", release.name);
    let list = pods.list(&ListParams::default().labels(&selector)).await.unwrap();
    let pod = list.items.first().expect("the operator pod");
    let name = pod.metadata.name.clone().unwrap();
    let status = pod.status.as_ref().unwrap();
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(real_node().as_str()));
    let ready = status.conditions.as_ref().unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "operator pod not Ready (its probes): {status:?}");
    // A real container: the runtime's id, not the simulated executor's.
    let container = &status.container_statuses.as_ref().unwrap()[0];
    assert!(container.container_id.as_deref().unwrap_or_default().starts_with("containerd://"), "{container:?}");
    // The Lease of the namespaces it watches is held by that pod.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release.namespace);
    eventually("the operator pod holds its Lease", Duration::from_secs(60), || async {
        let all = leases.list(&ListParams::default()).await.ok()?;
        all.items
            .iter()
            .any(|l| l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(&name))
            .then_some(())
    })
    .await;
    // /metrics at the pod's address on the pod network, from this machine.
    let ip = status.pod_ip.clone().expect("pod IP");
    let (code, body) = support::http_get(&format!("{ip}:8080"), "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("modelpack_"), "no operator metrics: {}", &body[..body.len().min(400)]);
}

#[tokio::test]
async fn pulls_promotions_scrubs_and_cleanups_run_as_real_containers() {
    let client = Bed::get().client().await;
    install_crds(&client).await;
    let ns = watched();
    let repo = format!("real/lifecycle-{}", unique_suffix());
    let (v1, files1) = push_version(&repo, "v1", 10, 3 << 20).await;
    let (v2, files2) = push_version(&repo, "v2", 20, 3 << 20).await;
    let registry = &Bed::get().plain.host;
    let model =
        json!({"repository": format!("{registry}/{repo}"), "ref": {"tag": "v1"}, "insecure": true, "interval": "10s"});
    apply(&client, &ns, "Model", "m", model.clone()).await;
    // The serving workload: reads every file of `current` through the node cache, read-only.
    let cache = release().cache.display().to_string();
    let current = format!("{cache}/deployments/{ns}/serve/current");
    let serve = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "server"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "server"}}, "template": {
            "metadata": {"labels": {"app": "server"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": real_node()},
                "containers": [{"name": "serve", "image": busybox_image(),
                    "command": ["sh", "-c", "cd /model && find . -type f | sort | xargs sha256sum && exec sleep 2147483647"],
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true},
                    "volumeMounts": [{"name": "model", "mountPath": "/model", "readOnly": true}]}],
                "volumes": [{"name": "model", "hostPath": {"path": current, "type": "Directory"}}],
            }}}
    });
    let deployments_api = kube::api::Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("apps", "v1", "Deployment")),
    );
    let md = json!({"modelRef": {"name": "m"}, "nodeSelector": {"kubernetes.io/hostname": real_node()},
        "keepPrevious": 1, "workloads": [{"kind": "Deployment", "name": "server"}]});
    apply(&client, &ns, "ModelDeployment", "serve", md).await;
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    wait_ready_on_node(&mds, "serve", &v1).await;
    assert_cache_holds(&ns, "serve", &v1, &files1);
    // Only now does the serving workload exist (hostPath type Directory needs `current`).
    deployments_api.patch("server", &PatchParams::apply("e2e").force(), &Patch::Apply(&serve)).await.unwrap();
    let pull = job_pods(&client, "pull", Some("serve")).await;
    assert!(!pull.is_empty(), "no pull Job pod on the real node");
    for p in &pull {
        assert_eq!(terminated(p), Some((0, "Completed".to_owned())), "pull pod {:?}", p.metadata.name);
        let c = &p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
        assert!(c.container_id.as_deref().unwrap_or_default().starts_with("containerd://"), "{c:?}");
    }
    let sums = served_sums(&client, &ns, &v1).await;
    assert_eq!(sums, expected_sums(&files1), "what the serving pod read of v1");

    // Promotion: the tag moves, the cache swaps `current`, the workload rolls, the new pod reads v2.
    let mut promoted = model.clone();
    promoted["ref"] = json!({"tag": "v2"});
    apply(&client, &ns, "Model", "m", promoted).await;
    wait_ready_on_node(&mds, "serve", &v2).await;
    assert_cache_holds(&ns, "serve", &v2, &files2);
    let sums = served_sums(&client, &ns, &v2).await;
    assert_eq!(sums, expected_sums(&files2), "what the rolled pod read of v2");

    // A scrub Job runs there (interval 15s) after the promotion and finds the cache intact.
    let promoted = jiff::Timestamp::now();
    eventually("a scrub Job succeeded on the real node", Duration::from_secs(120), || async {
        let pods = job_pods(&client, "scrub", None).await;
        let after = |p: &Pod| p.metadata.creation_timestamp.as_ref().is_some_and(|t| t.0 > promoted);
        pods.iter().any(|p| after(p) && terminated(p) == Some((0, "Completed".to_owned()))).then_some(())
    })
    .await;

    // Deletion: a cleanup Job on the node unlinks the deployment's directory (the operator's own
    // pod does not mount the cache: only a Job on the node can remove it). The Job is deleted once
    // done, so its pod is looked for while waiting.
    mds.delete("serve", &DeleteParams::default()).await.unwrap();
    let link_dir = release().cache.join("deployments").join(&ns).join("serve");
    let seen = std::sync::atomic::AtomicBool::new(false);
    eventually("the cleanup Job removed the link directory", Duration::from_secs(120), || async {
        if !job_pods(&client, "cleanup", Some("serve")).await.is_empty() {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        (!link_dir.exists()).then_some(())
    })
    .await;
    assert!(seen.load(std::sync::atomic::Ordering::Relaxed), "no cleanup pod was seen on the real node");
}

/// The sums printed by the serving Deployment's pod whose template carries `digest`, once Ready.
async fn served_sums(client: &kube::Client, ns: &str, digest: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = eventually(&format!("a Ready serving pod for {digest}"), Duration::from_secs(180), || async {
        let list = pods.list(&ListParams::default().labels("app=server")).await.ok()?;
        list.items.into_iter().find(|p| {
            let annotated = p.metadata.annotations.as_ref().and_then(|a| a.get("modelpack.dev/digest"));
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            annotated.map(String::as_str) == Some(digest) && ready && p.metadata.deletion_timestamp.is_none()
        })
    })
    .await;
    let name = pod.metadata.name.unwrap();
    let logs = kubectl(&["logs", "-n", ns, &name]);
    // The cache's own completion marker still sits in the published directory (issue 28 moves it
    // out, so that a consumer's `model_signing verify` sees only the model's files).
    let mut lines: Vec<String> = logs.lines().filter(|l| !l.ends_with("  ./.complete")).map(str::to_owned).collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn a_pull_under_a_memory_limit_four_times_smaller_than_the_model_completes() {
    let client = Bed::get().client().await;
    install_crds(&client).await;
    let ns = watched();
    let repo = format!("real/memory-{}", unique_suffix());
    let (digest, files) = push_version(&repo, "v1", 30, 512 << 20).await;
    let registry = &Bed::get().plain.host;
    let model = json!({"repository": format!("{registry}/{repo}"), "ref": {"tag": "v1"}, "insecure": true});
    apply(&client, &ns, "Model", "big", model).await;
    let md = json!({"modelRef": {"name": "big"}, "nodeSelector": {"kubernetes.io/hostname": real_node()},
        "pull": {"resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}}}});
    apply(&client, &ns, "ModelDeployment", "big", md).await;
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    wait_ready_on_node(&mds, "big", &digest).await;
    assert_cache_holds(&ns, "big", &digest, &files);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &release().namespace);
    let selector = "modelpack.dev/role=pull";
    let ours: Vec<Job> = jobs
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| j.metadata.annotations.as_ref().and_then(|a| a.get("modelpack.dev/digest")) == Some(&digest))
        .collect();
    assert!(!ours.is_empty(), "no pull Job for {digest}");
    for job in ours {
        let template = job.spec.unwrap().template.spec.unwrap();
        let limits = template.containers[0].resources.clone().unwrap().limits.unwrap();
        assert_eq!(limits["memory"].0, "128Mi", "the limit the pull ran under");
        let status = job.status.unwrap();
        assert_eq!(status.failed.unwrap_or(0), 0, "a pull attempt failed (OOM-killed?)");
        assert_eq!(status.succeeded, Some(1));
    }
}

/// KEP-4639 on this runtime: containerd pulls a ModelPack artifact given as an image volume and
/// starts the pod with an empty directory there (it unpacks only image layers). The pod is Ready;
/// the operator must not call the hand-over done: it reports the runtime in status, a condition and
/// an event, and Argo CD says Degraded.
#[tokio::test]
async fn an_image_volume_the_runtime_mounts_empty_is_reported_not_ready() {
    let client = Bed::get().client().await;
    install_crds(&client).await;
    let ns = watched();
    let repo = format!("real/volume-{}", unique_suffix());
    let (digest, _) = push_version(&repo, "v1", 40, 1 << 20).await;
    let registry = &Bed::get().plain.host;
    let reference = format!("{registry}/{repo}");
    apply(&client, &ns, "Model", "vol", json!({"repository": reference, "ref": {"tag": "v1"}, "insecure": true})).await;
    let viewer = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "viewer"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "viewer"}}, "template": {
            "metadata": {"labels": {"app": "viewer"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": real_node()},
                "containers": [{"name": "serve", "image": busybox_image(),
                    "command": ["sh", "-c", "ls -A /model; exec sleep 2147483647"],
                    "volumeMounts": [{"name": "model", "mountPath": "/model"}]}],
                "volumes": [{"name": "model", "image": {"reference": format!("{reference}:v1"), "pullPolicy": "IfNotPresent"}}],
            }}}
    });
    let api = kube::api::Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("apps", "v1", "Deployment")),
    );
    api.patch("viewer", &PatchParams::apply("e2e").force(), &Patch::Apply(&viewer)).await.unwrap();
    let md = json!({"modelRef": {"name": "vol"}, "nodeSelector": {"kubernetes.io/hostname": real_node()},
        "workloads": [{"kind": "Deployment", "name": "viewer", "imageVolume": "model"}]});
    apply(&client, &ns, "ModelDeployment", "vol", md).await;
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    wait_ready_on_node(&mds, "vol", &digest).await;
    // The pod of the handed version runs, Ready, with nothing under /model.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = eventually("the viewer pod of the handed version is Ready", Duration::from_secs(180), || async {
        let list = pods.list(&ListParams::default().labels("app=viewer")).await.ok()?;
        list.items.into_iter().find(|p| {
            let handed = p.metadata.annotations.as_ref().and_then(|a| a.get("modelpack.dev/digest")) == Some(&digest);
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            handed && ready
        })
    })
    .await;
    let listing = kubectl(&["logs", "-n", &ns, pod.metadata.name.as_deref().unwrap()]);
    assert_eq!(listing.trim(), "", "the runtime mounted files after all: update artifact_mount");
    // The operator says so.
    let d = eventually("the hand-over reports the empty mount", Duration::from_secs(120), || async {
        let d = mds.get("vol").await.ok()?;
        let c = d.status.as_ref()?.conditions.iter().find(|c| c.type_ == "WorkloadsUpdated")?.clone();
        (c.status == ConditionStatus::False && c.reason == "ImageVolumeNotMounted").then_some(d)
    })
    .await;
    let status = d.status.as_ref().unwrap();
    let viewer = status.workloads.iter().find(|w| w.name == "viewer").unwrap();
    let message = viewer.message.as_deref().unwrap_or_default();
    assert!(message.contains("containerd://"), "the runtime is named: {message}");
    assert_eq!(support::argo::status_of(&d), "Degraded");
    let events = kubectl(&["get", "events", "-n", &ns, "-o", "json"]);
    assert!(events.contains("ImageVolumeNotMounted"), "no event for the empty mount");
}

/// The runtime pulls from the bed's TLS registry (its own CA, through containerd's hosts.toml) as
/// it does from the plain ones: a pod of an image only that registry holds runs on the real node.
#[tokio::test]
async fn the_runtime_pulls_images_from_the_tls_registry() {
    let bed = Bed::get();
    let client = bed.client().await;
    let ns = watched();
    let image = format!("{}/bed/busybox-tls-{}:1", bed.tls.host, unique_suffix());
    let ca = bed.tls.tls_ca.as_ref().expect("the TLS registry's CA").display().to_string();
    run_tool(&bed.tool("crane"), &["copy", "--insecure", &busybox_image(), &image], &[("SSL_CERT_FILE", &ca)], None);
    let name = format!("tls-{}", unique_suffix());
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": real_node()}, "restartPolicy": "Never",
            "containers": [{"name": "c", "image": image, "command": ["sh", "-c", "echo pulled-over-tls"]}]},
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(&pod)).await.unwrap();
    let done = eventually("the TLS-pulled pod ran", Duration::from_secs(120), || async {
        let p = pods.get(&name).await.ok()?;
        let phase = p.status.as_ref()?.phase.clone()?;
        (phase == "Succeeded" || phase == "Failed").then_some(p)
    })
    .await;
    assert_eq!(terminated(&done), Some((0, "Completed".to_owned())), "{:?}", done.status);
    assert_eq!(kubectl(&["logs", "-n", &ns, &name]).trim(), "pulled-over-tls");
}
