//! What the puller reads inside archive layers, through the whole operator on the bed: a ModelPack
//! whose tar+gzip layer holds a safetensors file and a pickle that calls `os.system` (files a range
//! read cannot reach before the pull: `status.artifact` says the layer was not read). The node's
//! pull Job reads them while it publishes the model, its result carries them, the
//! ModelDeployment's `status.contents` shows them for the version, and an UnsafeArchivePickle
//! Warning names the deployment. Report only: the version is still deployed.

use crate::support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use modelpack_operator::api::conditions::Reason;
use modelpack_operator::api::{Model, ModelDeployment, ModelDeploymentStatus};
use modelpack_operator::modelpack::contents::{Format, Verdict};
use serde_json::json;
use support::{
    Bed, Operator, TestNodes, apply, craft, ensure_namespace, eventually, install_crds, namespace, unique_suffix,
};

const JOBS_NAMESPACE: &str = "modelpack-system";

/// The tar of `entries` and its gzip.
fn tar_gz(entries: &[(&str, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let tar = craft::tar_of(entries);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (tar, gz.finish().unwrap())
}

/// A safetensors file of one 2×3 F32 tensor.
fn safetensors() -> Vec<u8> {
    let header = br#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&[0; 24]);
    out
}

#[tokio::test]
async fn a_pull_reports_what_archive_layers_hold() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "archive-contents").await;
    let _operator = Operator::start(&ns);
    let nodes = TestNodes::create("archive", 1);
    let repo = format!("archive/model-{}", unique_suffix());

    // Protocol 0: GLOBAL os system, then REDUCE on ('id',): what `pickle.loads` would run.
    let pickle = b"cos\nsystem\n(S'id'\ntR.".to_vec();
    let (tar, layer) = tar_gz(&[("weights/model.safetensors", &safetensors()), ("weights/extra/evil.pkl", &pickle)]);
    let layers = vec![
        craft::Blob::new("application/vnd.cncf.model.weight.v1.tar+gzip", layer)
            .annotate("org.cncf.model.filepath", "weights/"),
    ];
    // A compressed layer's diffId is its uncompressed digest.
    let config = json!({"descriptor": {"name": "archived"}, "modelfs": {"type": "layers",
        "diffIds": [craft::sha256(&tar)]}});
    let artifact = craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers,
        annotations: BTreeMap::new(),
    };
    let v1 = craft::push(&bed.plain, &repo, "prod", &artifact).await;

    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "prod"}, "insecure": true,
        "interval": "10s"});
    apply(&models, "Model", "llm", spec).await;
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"modelRef": {"name": "llm"}, "nodeSelector": nodes.selector(), "pull": {"backoffLimit": 0}});
    apply(&deployments, "ModelDeployment", "serve", spec).await;
    let v1_c = v1.clone();
    let d = support::wait_for_deployment(
        &deployments,
        "serve",
        "v1 in sync with its contents",
        move |s: &ModelDeploymentStatus| {
            s.deployed.as_ref().is_some_and(|d| d.digest == v1_c)
                && s.contents.as_ref().is_some_and(|c| c.digest == v1_c)
        },
    )
    .await;

    // Before the pull, range reads could not look inside the archive.
    let model = models.get("llm").await.unwrap();
    let weights = model.status.and_then(|s| s.artifact).and_then(|a| a.weights).expect("status.artifact.weights");
    assert!(weights.unread > 0 && !weights.is_unsafe, "{weights:?}");

    let contents = d.status.unwrap().contents.unwrap().contents;
    assert!(contents.weights.is_unsafe, "{:?}", contents.weights);
    assert_eq!(contents.weights.parameters, 6, "{:?}", contents.weights);
    let file = |path: &str| {
        contents.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("{path} in {:?}", contents.files))
    };
    let evil = &file("weights/extra/evil.pkl").contents;
    assert_eq!(evil.format, Format::Pickle);
    let scan = evil.pickle.as_ref().expect("a pickle scan");
    assert_eq!(scan.verdict, Verdict::Unsafe, "{scan:?}");
    assert!(scan.imports.iter().any(|i| i == "os.system"), "{scan:?}");
    let st = &file("weights/model.safetensors").contents;
    assert_eq!((st.format, st.parameters), (Format::Safetensors, Some(6)));

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warning = eventually("an UnsafeArchivePickle Warning", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some(Reason::UnsafeArchivePickle.as_str()))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(warning.regarding.and_then(|r| r.name).as_deref(), Some("serve"));
    let note = warning.note.unwrap_or_default();
    assert!(note.contains("evil.pkl") || note.contains("os.system"), "{note}");
}
