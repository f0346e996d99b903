//! What a node publishes is what was verified and what policies saw (issue 25, classes 4 and 8),
//! on the bed: an archive layer delivers only the file or directory its annotations announce, so
//! an Enforce rule on `layers[].path` cannot be passed by an archive holding something else; and a
//! node's scrub finds any change to a published tree (an added file, a re-pointed symlink, a
//! deleted index), after which the deployment's normal plan pulls the model again.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use modelpack_operator::api::conditions::{COMPLIANT, ConditionStatus, find};
use modelpack_operator::api::{Model, ModelDeployment, ModelDeploymentStatus, ModelPolicy, NodePhase};
use serde_json::{Value, json};
use support::fixtures::{ModelFiles, modctl_push_with};
use support::{
    Bed, Operator, TestNodes, apply, craft, ensure_namespace, eventually, install_crds, namespace, operator,
    unique_suffix,
};

const JOBS_NAMESPACE: &str = "modelpack-system";
const CACHE: &str = "/var/lib/modelpack";

fn artifact(layers: Vec<craft::Blob>) -> craft::Artifact {
    let config = json!({"descriptor": {"name": "announced"}, "config": {"format": "safetensors"},
        "modelfs": {"type": "layers", "diffIds": layers.iter().map(|l| craft::sha256(&l.data)).collect::<Vec<_>>()}});
    craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers,
        annotations: BTreeMap::new(),
    }
}

fn tar_layer(data: Vec<u8>, path: &str) -> craft::Blob {
    craft::Blob::new("application/vnd.cncf.model.weight.v1.tar", data).annotate("org.cncf.model.filepath", path)
}

/// The paths `inspect -o json` lists for `reference`.
fn inspected_paths(reference: &str) -> Vec<String> {
    let (code, stdout, stderr) = operator(&["inspect", "--insecure", reference, "-o", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    report["layers"].as_array().unwrap().iter().map(|l| l["path"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn an_enforce_rule_on_layer_paths_holds_on_the_node() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "announced").await;
    let _operator = Operator::start(&ns);
    let nodes = TestNodes::create("announced", 1);
    let node = nodes.names[0].clone();
    let label = unique_suffix();
    let repo = format!("announced/gate-{label}");
    let repository = format!("{}/{repo}", bed.plain.host);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let policies: Api<ModelPolicy> = Api::all(client.clone());
    let rule = json!([{"name": "safetensors-only", "expression": r#"layers.all(l, l.path.endsWith(".safetensors"))"#}]);
    let policy = format!("safetensors-{label}");
    apply(
        &policies,
        "ModelPolicy",
        &policy,
        json!({"action": "Enforce", "modelSelector": {"matchLabels": {"e2e.modelpack.dev/policy": label}}, "rules": rule}),
    )
    .await;
    eventually("the policy is Ready", Duration::from_secs(30), || async {
        (policies.get(&policy).await.ok()?.status?.compiled_rules == Some(1)).then_some(())
    })
    .await;

    // v1: an honest tar layer of one safetensors file, deployed.
    let v1 = craft::push(
        &bed.plain,
        &repo,
        "prod",
        &artifact(vec![tar_layer(craft::tar_of(&[("model.safetensors", b"st")]), "model.safetensors")]),
    )
    .await;
    let model = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model",
        "metadata": {"name": "llm", "labels": {"e2e.modelpack.dev/policy": label}},
        "spec": {"repository": repository, "ref": {"tag": "prod"}, "insecure": true, "interval": "10s"}});
    models.patch("llm", &kube::api::PatchParams::apply("e2e").force(), &kube::api::Patch::Apply(&model)).await.unwrap();
    let spec = json!({"modelRef": {"name": "llm"}, "nodeSelector": nodes.selector(), "pull": {"backoffLimit": 0}});
    apply(&deployments, "ModelDeployment", "serve", spec).await;
    let deployed = |digest: String| {
        move |s: &ModelDeploymentStatus| {
            s.deployed.as_ref().is_some_and(|d| d.digest == digest)
                && s.drift.as_ref().is_some_and(|d| d.reason == "InSync")
        }
    };
    support::wait_for_deployment(&deployments, "serve", "v1 in sync", deployed(v1.clone())).await;
    let current = bed.node_path(&node, CACHE).join("deployments").join(&ns).join("serve/current");
    assert_eq!(std::fs::read(current.join("model.safetensors")).unwrap(), b"st");

    // v2: the same announcement, the archive holds a pickle. The rule (and `inspect`) see
    // `model.safetensors`, so it passes; the node refuses the entry, keeps v1, and says why.
    let v2 = craft::push(
        &bed.plain,
        &repo,
        "prod",
        &artifact(vec![tar_layer(craft::tar_of(&[("model.pt", b"pickle")]), "model.safetensors")]),
    )
    .await;
    assert_eq!(inspected_paths(&format!("{repository}@{v2}")), ["model.safetensors"]);
    let d = support::wait_for_deployment(&deployments, "serve", "v2 refused by the node", |s| {
        s.drift.as_ref().is_some_and(|d| d.reason == "PullFailed")
    })
    .await;
    let m = models.get("llm").await.unwrap();
    let compliant = find(&m.status.as_ref().unwrap().conditions, COMPLIANT).map(|c| c.status);
    assert_eq!(compliant, Some(ConditionStatus::True), "the rule saw model.safetensors");
    let status = d.status.unwrap();
    assert_eq!(status.deployed.map(|v| v.digest), Some(v1.clone()));
    let failed = status.nodes.unwrap().entries.into_iter().find(|e| e.phase == NodePhase::Failed).unwrap();
    let message = failed.message.unwrap_or_default();
    assert!(message.contains("\"model.pt\"") && message.contains("not announced"), "{message}");
    let v2_dir = bed.node_path(&node, CACHE).join("models/sha256").join(&v2[7..]);
    assert!(!v2_dir.exists(), "v2 was published on the node");
    assert_eq!(std::fs::read(current.join("model.safetensors")).unwrap(), b"st", "v1 still served");

    // v3: the pickle in an archive announced as a directory: shown as `weights/`, the rule refuses
    // it before any pull.
    let v3 = craft::push(
        &bed.plain,
        &repo,
        "prod",
        &artifact(vec![tar_layer(craft::tar_of(&[("weights/model.pt", b"pickle")]), "weights/")]),
    )
    .await;
    assert_eq!(inspected_paths(&format!("{repository}@{v3}")), ["weights/"]);
    let d = support::wait_for_deployment(&deployments, "serve", "v3 refused by the policy", |s| {
        s.drift.as_ref().is_some_and(|d| d.reason == "PolicyViolation" && d.message.contains(&v3[7..19]))
    })
    .await;
    assert_eq!(d.status.unwrap().deployed.map(|v| v.digest), Some(v1));
}

/// The pull and `inspect` agree on a real producer's archives: modctl `--raw=false` writes one file
/// per tar layer at its announced path, and it extracts as announced.
#[tokio::test]
async fn modctl_tar_layers_extract_as_inspect_lists_them() {
    let bed = Bed::get();
    let model = ModelFiles::new(25, &[("model.safetensors", 40_000), ("nested/deeper/README.md", 60)]);
    let repo = format!("announced/modctl-{}", unique_suffix());
    let digest = modctl_push_with(bed, &bed.plain, &repo, "v1", &model, &["--raw=false"]);
    let reference = format!("{}/{repo}@{digest}", bed.plain.host);
    let mut listed = inspected_paths(&reference);
    listed.sort();
    let mut expected: Vec<String> = model.files.iter().map(|(p, _)| p.clone()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let cache = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) =
        operator(&["pull", "--insecure", &reference, "--cache-dir", cache.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let dir = Path::new(report["path"].as_str().unwrap());
    for (path, data) in &model.files {
        assert_eq!(&std::fs::read(dir.join(path)).unwrap(), data, "{path}");
    }
}

async fn corrupted_notes(client: &kube::Client, ns: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items.into_iter().filter(|e| e.reason.as_deref() == Some("CacheCorrupted")).filter_map(|e| e.note).collect()
}

#[tokio::test]
async fn a_node_scrub_finds_any_change_to_a_published_tree_and_the_plan_heals_it() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "tree-scrub").await;
    let _operator = Operator::start_with(&ns, &format!("e2e-{ns}"), &["--scrub-interval", "3s"]);
    let nodes = TestNodes::create("tree-scrub", 1);
    let node = nodes.names[0].clone();
    // A directory layer with a symlink in it, and a modctl-like raw file.
    let tok = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, "tok/tokenizer.json", &b"{}"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, "tok/link.json", "tokenizer.json").unwrap();
        b.into_inner().unwrap()
    };
    let weights = craft::Blob::new("application/vnd.cncf.model.weight.v1.raw", b"weights".to_vec())
        .annotate("org.cncf.model.filepath", "model.safetensors");
    let layers = vec![weights, tar_layer(tok, "tok/")];
    let repo = format!("announced/scrub-{}", unique_suffix());
    let digest = craft::push(&bed.plain, &repo, "v1", &artifact(layers)).await;
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let repository = format!("{}/{repo}", bed.plain.host);
    apply(&models, "Model", "m", json!({"repository": repository, "ref": {"tag": "v1"}, "insecure": true})).await;
    apply(&deployments, "ModelDeployment", "d", json!({"modelRef": {"name": "m"}, "nodeSelector": nodes.selector()}))
        .await;
    let in_sync = |s: &ModelDeploymentStatus| {
        s.deployed.as_ref().is_some_and(|d| d.digest == digest) && s.nodes.as_ref().is_some_and(|n| n.ready == 1)
    };
    support::wait_for_deployment(&deployments, "d", "in sync", in_sync).await;
    let root = bed.node_path(&node, CACHE);
    let model = root.join("models/sha256").join(&digest[7..]);
    let index = root.join("index/sha256").join(&digest[7..]);
    let healthy = || {
        std::fs::read(model.join("tok/link.json")).is_ok_and(|b| b == b"{}")
            && std::fs::read_link(model.join("tok/link.json")).is_ok_and(|t| t == Path::new("tokenizer.json"))
            && !model.join("tok/extra.pt").exists()
            && index.exists()
    };

    // Each change in turn: the scrub removes the model with a cause naming it, and the plan pulls
    // it again. The deployment hears of the first (the recorder folds later
    // events of the same reason into its series).
    type Change = Box<dyn Fn()>;
    let (m1, m2, i3) = (model.clone(), model.clone(), index.clone());
    let changes: Vec<(&str, Change, &str)> = vec![
        (
            "a file added",
            Box::new(move || std::fs::write(m1.join("tok/extra.pt"), b"x").unwrap()),
            "\"tok/extra.pt\": a regular file not in the index",
        ),
        (
            "a symlink re-pointed outside",
            Box::new(move || {
                std::fs::remove_file(m2.join("tok/link.json")).unwrap();
                std::os::unix::fs::symlink("/etc/hostname", m2.join("tok/link.json")).unwrap();
            }),
            "symlink re-pointed to \"/etc/hostname\"",
        ),
        ("the index deleted", Box::new(move || std::fs::remove_file(&i3).unwrap()), "index: "),
    ];
    for (i, (shape, change, cause)) in changes.into_iter().enumerate() {
        change();
        assert!(!healthy(), "{shape}: the change shows");
        let started = Instant::now();
        if i == 0 {
            let note = eventually(&format!("{shape}: a CacheCorrupted event"), Duration::from_secs(60), || async {
                corrupted_notes(&client, &ns).await.into_iter().find(|n| n.contains(cause))
            })
            .await;
            assert!(note.contains(&node) && note.contains(&digest), "{shape}: {note}");
        }
        eventually(&format!("{shape} ({cause}): removed and pulled again"), Duration::from_secs(90), || async {
            // Only a removal and a new pull undo the change.
            healthy().then_some(())
        })
        .await;
        support::wait_for_deployment(&deployments, "d", "in sync again", in_sync).await;
        assert!(started.elapsed() < Duration::from_secs(150), "{shape}: {:?}", started.elapsed());
    }
}
