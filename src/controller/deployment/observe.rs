//! The index's reads of the listed workloads: each one as its template and status are, with what
//! keeps the pods of its digest from serving it (their containers, their nodes' runtimes).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::core::Selector;
use kube::{Api, Client};

use super::workloads::{self, Live, Observed, PodView};
use crate::api::{WorkloadKind, WorkloadRef};
use crate::controller::Error;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector;

/// Reads every workload of `refs` in `namespace`, in order.
pub async fn workloads(
    client: &Client,
    nodes: &reflector::Store<Node>,
    namespace: &str,
    refs: &[WorkloadRef],
) -> Result<Vec<Observed>, Error> {
    let mut observed = Vec::with_capacity(refs.len());
    for r in refs {
        observed.push(read(client, nodes, namespace, r).await?);
    }
    Ok(observed)
}

/// The apps/v1 API of one workload kind.
pub fn api_for(client: &Client, namespace: &str, kind: WorkloadKind) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind.as_str()));
    Api::namespaced_with(client.clone(), namespace, &resource)
}

async fn read(
    client: &Client,
    nodes: &reflector::Store<Node>,
    namespace: &str,
    r: &WorkloadRef,
) -> Result<Observed, Error> {
    let Some(obj) = api_for(client, namespace, r.kind).get_opt(&r.name).await? else { return Ok(Observed::Missing) };
    let obj = serde_json::to_value(&obj)?;
    let mut live = Live::read(r.kind, &obj, r.image_volume.as_deref());
    if let Some(digest) = live.digest.clone() {
        let pods = pods_of(client, nodes, namespace, &obj).await?;
        live.pods = workloads::pod_problems(&pods, &digest, r.image_volume.as_deref());
    }
    Ok(Observed::Found(live))
}

/// The pods the workload's `spec.selector` selects (labels and expressions), with their nodes'
/// runtimes from the node store: a hand-over is done only when they can start and see the model.
async fn pods_of(
    client: &Client,
    nodes: &reflector::Store<Node>,
    namespace: &str,
    workload: &serde_json::Value,
) -> Result<Vec<PodView>, Error> {
    let selector: Option<LabelSelector> = serde_json::from_value(workload["spec"]["selector"].clone()).ok();
    // A workload without a usable selector is refused by the apiserver; nothing to read then.
    let Some(selector) = selector.and_then(|s| Selector::try_from(s).ok()).filter(|s| !s.selects_all()) else {
        return Ok(Vec::new());
    };
    let params = ListParams::default().labels_from(&selector).match_any();
    let pods = Api::<Pod>::namespaced(client.clone(), namespace).list(&params).await?;
    let nodes = nodes.state();
    let runtime_of = |node: &str| {
        let node = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(node))?;
        Some(node.status.as_ref()?.node_info.as_ref()?.container_runtime_version.clone())
    };
    let mut out = Vec::with_capacity(pods.items.len());
    for pod in &pods.items {
        let runtime = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).and_then(runtime_of);
        out.push(PodView::read(&serde_json::to_value(pod)?, runtime));
    }
    Ok(out)
}
