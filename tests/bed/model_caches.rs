//! Node caches through the operator on the bed: a ModelCache per node that agrees with a walk of the
//! node's cache directory, scrub Jobs that find a flipped byte, the CacheCorrupted event, the node
//! pulled again byte-exact by the normal plan, and the ModelCache of a deleted node deleted.

use crate::support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use modelpack_operator::api::{Model, ModelCache, ModelDeployment, ModelDeploymentStatus};
use serde_json::json;
use support::fixtures::{ModelFiles, modctl_push};
use support::{Bed, Operator, TestNodes, apply, ensure_namespace, eventually, install_crds, namespace, unique_suffix};

const JOBS_NAMESPACE: &str = "modelpack-system";
const CACHE: &str = "/var/lib/modelpack";
/// What the cache counts for an entry besides its bytes (docs/node-cache.md "The budget").
const ENTRY_COST: u64 = 4096;

/// What a node's cache directory holds, walked independently of the operator's code.
#[derive(Debug, PartialEq)]
struct Walk {
    /// Model digest → deployments (`ns/name`) linking it as current or keeping it.
    models: BTreeMap<String, BTreeSet<String>>,
    /// Bytes of every regular file under blobs/, models/ and tmp/, each inode once, and a block
    /// for every entry of models/ and tmp/ and every model's index.
    used: u64,
}

fn walk(node: &str) -> Walk {
    let root = Bed::get().node_path(node, CACHE);
    let mut models: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(root.join("models/sha256")).into_iter().flatten().flatten() {
        models.insert(format!("sha256:{}", entry.file_name().to_string_lossy()), BTreeSet::new());
    }
    for ns in std::fs::read_dir(root.join("deployments")).into_iter().flatten().flatten() {
        for d in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let key = format!("{}/{}", ns.file_name().to_string_lossy(), d.file_name().to_string_lossy());
            let versions = std::fs::read_dir(d.path().join("versions")).into_iter().flatten().flatten();
            let links = versions.map(|v| v.path()).chain([d.path().join("current")]);
            for link in links {
                let Ok(target) = std::fs::read_link(&link) else { continue };
                let digest = format!("sha256:{}", target.file_name().unwrap().to_string_lossy());
                if let Some(holders) = models.get_mut(&digest) {
                    holders.insert(key.clone());
                }
            }
        }
    }
    let mut inodes = HashMap::new();
    sizes(&root.join("blobs"), &mut inodes);
    // Every entry of a model or of tmp/ (a model's own directory included) is a block; every
    // model's index its bytes and a block.
    let mut entries = sizes(&root.join("models"), &mut inodes).saturating_sub(1);
    entries += sizes(&root.join("tmp"), &mut inodes);
    let indexes: u64 = std::fs::read_dir(root.join("index/sha256"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.metadata().map_or(0, |m| m.len() + ENTRY_COST))
        .sum();
    Walk { models, used: inodes.values().sum::<u64>() + entries * ENTRY_COST + indexes }
}

/// Records the regular files under `dir`; returns how many entries are under it.
fn sizes(dir: &Path, inodes: &mut HashMap<u64, u64>) -> u64 {
    let mut entries = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        entries += 1;
        if meta.is_dir() {
            entries += sizes(&entry.path(), inodes);
        } else if meta.is_file() {
            inodes.insert(meta.ino(), meta.len());
        }
    }
    entries
}

fn as_walk(cache: &ModelCache) -> Option<Walk> {
    let status = cache.status.as_ref()?;
    let models = status.models.iter().map(|m| (m.digest.clone(), m.deployments.iter().cloned().collect())).collect();
    Some(Walk { models, used: u64::try_from(status.used).ok()? })
}

/// Waits until `node`'s ModelCache agrees with a walk of its cache directory.
async fn agrees(caches: &Api<ModelCache>, node: &str, what: &str) -> ModelCache {
    eventually(
        &format!("{what}: ModelCache {node} agrees with its cache directory"),
        Duration::from_secs(60),
        || async {
            let cache = caches.get(node).await.ok()?;
            (as_walk(&cache)? == walk(node)).then_some(cache)
        },
    )
    .await
}

fn in_sync_on(digest: &str, nodes: usize) -> impl Fn(&ModelDeploymentStatus) -> bool + '_ {
    move |s| {
        s.deployed.as_ref().is_some_and(|d| d.digest == digest)
            && s.nodes.as_ref().is_some_and(|n| n.selected == nodes as i32 && n.ready == nodes as i32)
    }
}

async fn corrupted_events(client: &Client, ns: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items.into_iter().filter(|e| e.reason.as_deref() == Some("CacheCorrupted")).filter_map(|e| e.note).collect()
}

#[tokio::test]
async fn model_caches_follow_the_nodes_and_a_scrub_heals_a_flipped_byte() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "caches").await;
    let _operator =
        Operator::start_with(&ns, &format!("e2e-{ns}"), &["--scrub-interval", "3s", "--cache-limit", "90%"]);
    let mut nodes = TestNodes::create("caches", 2);
    let files = ModelFiles::new(31, &[("model.safetensors", 300_000), ("config.json", 200)]);
    let repo = format!("caches/scrub-{}", unique_suffix());
    let digest = modctl_push(bed, &bed.plain, &repo, "v1", &files);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let repository = format!("{}/{repo}", bed.plain.host);
    apply(&models, "Model", "m", json!({"repository": repository, "ref": {"tag": "v1"}, "insecure": true})).await;
    let spec = json!({"modelRef": {"name": "m"}, "nodeSelector": nodes.selector()});
    apply(&deployments, "ModelDeployment", "d", spec).await;
    support::wait_for_deployment(&deployments, "d", "v1 on 2 nodes", in_sync_on(&digest, 2)).await;

    let caches: Api<ModelCache> = Api::all(client.clone());
    let holder = format!("{ns}/d");
    for node in &nodes.names {
        let cache = agrees(&caches, node, "after the rollout").await;
        let status = cache.status.unwrap();
        assert_eq!(status.model_count, 1);
        assert_eq!(status.models[0].digest, digest);
        assert_eq!(status.models[0].current, std::slice::from_ref(&holder));
        assert!(status.capacity > status.used && status.free > 0, "{status:?}");
        assert_eq!(cache.spec.node, *node);
    }
    // The scrubs run (every 3 s here) and find nothing.
    let first = nodes.names[0].clone();
    eventually("a clean scrub", Duration::from_secs(60), || async {
        let status = caches.get(&first).await.ok()?.status?;
        status.last_scrub.filter(|s| s.removed == 0 && s.blobs_checked >= 3).map(|_| ())
    })
    .await;

    // One byte of the weights' blob changes on the first node, through the model's hard link.
    let weights = Bed::get().node_path(&first, CACHE).join("deployments").join(&ns).join("d/current/model.safetensors");
    let blob = support::craft::sha256(&std::fs::read(&weights).unwrap());
    let meta = std::fs::metadata(&weights).unwrap();
    std::fs::set_permissions(&weights, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[100] ^= 0xff;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
    std::fs::set_permissions(&weights, meta.permissions()).unwrap();

    let note = eventually("a CacheCorrupted event", Duration::from_secs(60), || async {
        corrupted_events(&client, &ns).await.into_iter().find(|n| n.contains(&first) && n.contains(&blob))
    })
    .await;
    assert!(note.contains(&digest), "{note}");
    // The normal plan pulls it again: byte-exact, and the ModelCache says so.
    eventually("the first node serves the model byte-exact again", Duration::from_secs(90), || async {
        let current = Bed::get().node_path(&first, CACHE).join("deployments").join(&ns).join("d/current");
        files.files.iter().all(|(p, data)| std::fs::read(current.join(p)).is_ok_and(|got| &got == data)).then_some(())
    })
    .await;
    support::wait_for_deployment(&deployments, "d", "v1 on 2 nodes again", in_sync_on(&digest, 2)).await;
    agrees(&caches, &first, "after the heal").await;

    // A node that goes away takes its ModelCache with it.
    let second = nodes.names[1].clone();
    nodes.remove(&second);
    eventually("the deleted node's ModelCache is gone", Duration::from_secs(60), || async {
        caches.get(&second).await.is_err().then_some(())
    })
    .await;
    assert!(caches.list(&ListParams::default()).await.unwrap().items.iter().any(|c| c.name_any() == first));
}

#[tokio::test]
async fn a_node_too_small_for_the_model_is_reported_and_not_retried_in_a_loop() {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;
    use modelpack_operator::api::NodePhase;
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "cachefull").await;
    let _operator = Operator::start_with(&ns, &format!("e2e-{ns}"), &["--cache-limit", "100000"]);
    let nodes = TestNodes::create("cachefull", 1);
    let files = ModelFiles::new(32, &[("model.safetensors", 300_000)]);
    let repo = format!("caches/full-{}", unique_suffix());
    modctl_push(bed, &bed.plain, &repo, "v1", &files);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let repository = format!("{}/{repo}", bed.plain.host);
    apply(&models, "Model", "m", json!({"repository": repository, "ref": {"tag": "v1"}, "insecure": true})).await;
    apply(&deployments, "ModelDeployment", "d", json!({"modelRef": {"name": "m"}, "nodeSelector": nodes.selector()}))
        .await;
    let failed = |s: &ModelDeploymentStatus| {
        s.nodes.as_ref().and_then(|n| n.entries.first()).is_some_and(|e| {
            e.phase == NodePhase::Failed
                && e.message.as_deref().is_some_and(|m| m.starts_with("InsufficientStorage: needs 293.0 KiB"))
        })
    };
    support::wait_for_deployment(&deployments, "d", "the node reported InsufficientStorage", failed).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), JOBS_NAMESPACE);
    let ours = || async {
        let all =
            jobs.list(&ListParams::default().labels("app.kubernetes.io/managed-by=modelpack-operator")).await.unwrap();
        let owner = format!("{ns}/d");
        let mine: Vec<Job> =
            all.items.into_iter().filter(|j| j.annotations().get("modelpack.dev/deployment") == Some(&owner)).collect();
        mine
    };
    let first = ours().await;
    assert_eq!(first.len(), 1, "one pull Job");
    let pods: Api<Pod> = Api::namespaced(client.clone(), JOBS_NAMESPACE);
    let selector = format!("batch.kubernetes.io/job-name={}", first[0].name_any());
    assert_eq!(
        pods.list(&ListParams::default().labels(&selector)).await.unwrap().items.len(),
        1,
        "exit 3 fails the Job at once"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later = ours().await;
    assert_eq!(later.iter().map(|j| j.uid()).collect::<Vec<_>>(), first.iter().map(|j| j.uid()).collect::<Vec<_>>());
    let d = deployments.get("d").await.unwrap();
    assert!(failed(d.status.as_ref().unwrap()), "still reported, not retried: {:?}", d.status);
    let cache: Api<ModelCache> = Api::all(client.clone());
    let status = cache.get(&nodes.names[0]).await.unwrap().status.unwrap();
    assert!(status.free < 300_000 && status.capacity == 100_000, "{status:?}");
}

#[tokio::test]
async fn a_full_node_evicts_the_least_recently_used_kept_version_and_tells_the_deployment() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "cachelru").await;
    // Two versions (250 KB of weights each, and a manifest) fit; three do not.
    let _operator = Operator::start_with(&ns, &format!("e2e-{ns}"), &["--cache-limit", "700000"]);
    let nodes = TestNodes::create("cachelru", 1);
    let node = nodes.names[0].clone();
    let repo = format!("caches/lru-{}", unique_suffix());
    let versions: Vec<ModelFiles> =
        (0..3).map(|i| ModelFiles::new(40 + i, &[("model.safetensors", 250_000)])).collect();
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let caches: Api<ModelCache> = Api::all(client.clone());
    let repository = format!("{}/{repo}", bed.plain.host);
    let mut digests = Vec::new();
    for (i, files) in versions.iter().enumerate() {
        digests.push(modctl_push(bed, &bed.plain, &repo, "stable", files));
        if i == 0 {
            let model =
                json!({"repository": repository, "ref": {"tag": "stable"}, "insecure": true, "interval": "10s"});
            apply(&models, "Model", "m", model).await;
            let spec = json!({"modelRef": {"name": "m"}, "nodeSelector": nodes.selector(), "keepPrevious": 2});
            apply(&deployments, "ModelDeployment", "d", spec).await;
        }
        support::wait_for_deployment(&deployments, "d", &format!("v{i} in sync"), in_sync_on(&digests[i], 1)).await;
        agrees(&caches, &node, &format!("after v{i}")).await;
    }
    // v0, kept since v1 was pulled, went to make room for v2; v1, kept since, stays.
    let held = walk(&node).models;
    assert!(!held.contains_key(&digests[0]), "{held:?}");
    assert_eq!(held.keys().cloned().collect::<BTreeSet<_>>(), digests[1..].iter().cloned().collect());
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let note = eventually("a KeptVersionEvicted event", Duration::from_secs(30), || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("KeptVersionEvicted")).and_then(|e| e.note)
    })
    .await;
    assert!(note.contains(&node) && note.contains(&digests[0]), "{note}");
    let current = Bed::get().node_path(&node, CACHE).join("deployments").join(&ns).join("d/current/model.safetensors");
    assert_eq!(std::fs::read(current).unwrap(), versions[2].files[0].1);
}

/// Issue 25: a layer whose `file.metadata+json` declares 1 byte and that extracts 1 MiB passes the
/// pull's preflight under a 500,000-byte budget; the build stops it (exit 3): the node is reported
/// `Failed` with `InsufficientStorage`, its Job is not retried in a loop, and the node's cache holds
/// no model and never more than its budget.
#[tokio::test]
async fn a_layer_that_extracts_more_than_it_declares_fails_the_node_and_stays_in_the_budget() {
    use modelpack_operator::api::NodePhase;
    use std::io::Read as _;
    use support::craft;
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "cachelie").await;
    let _operator = Operator::start_with(&ns, &format!("e2e-{ns}"), &["--cache-limit", "500000"]);
    let nodes = TestNodes::create("cachelie", 1);
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(1 << 20);
    tar.append_data(&mut header, "w.bin", std::io::repeat(0).take(1 << 20)).unwrap();
    let layer = tar.into_inner().unwrap().finish().unwrap();
    let config = json!({"descriptor": {"name": "lie"}, "modelfs": {"type": "layers", "diffIds": []}});
    let artifact = craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![
            craft::Blob::new("application/vnd.cncf.model.weight.v1.tar+gzip", layer)
                .annotate("org.cncf.model.filepath", "w.bin")
                .annotate("org.cncf.model.file.metadata+json", r#"{"name":"w.bin","mode":420,"size":1,"typeflag":48}"#),
        ],
        annotations: BTreeMap::new(),
    };
    let repo = format!("caches/lie-{}", unique_suffix());
    craft::push(&bed.plain, &repo, "v1", &artifact).await;
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let repository = format!("{}/{repo}", bed.plain.host);
    apply(&models, "Model", "m", json!({"repository": repository, "ref": {"tag": "v1"}, "insecure": true})).await;
    apply(&deployments, "ModelDeployment", "d", json!({"modelRef": {"name": "m"}, "nodeSelector": nodes.selector()}))
        .await;
    let failed = |s: &ModelDeploymentStatus| {
        s.nodes.as_ref().and_then(|n| n.entries.first()).is_some_and(|e| {
            e.phase == NodePhase::Failed && e.message.as_deref().is_some_and(|m| m.starts_with("InsufficientStorage: "))
        })
    };
    support::wait_for_deployment(&deployments, "d", "the node reported InsufficientStorage", failed).await;
    let first = deployments.get("d").await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let d = deployments.get("d").await.unwrap();
    assert!(failed(d.status.as_ref().unwrap()), "still reported, not retried: {:?}", d.status);
    assert_eq!(
        d.status.as_ref().and_then(|s| s.nodes.as_ref()).map(|n| n.entries.len()),
        first.status.as_ref().and_then(|s| s.nodes.as_ref()).map(|n| n.entries.len())
    );
    let node = walk(&nodes.names[0]);
    assert!(node.models.is_empty() && node.used <= 500_000, "{node:?}");
}
