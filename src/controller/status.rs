//! Status writes: server-side apply on the status subresource under our field manager, and only
//! when the computed status differs from the stored one.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;

pub const FIELD_MANAGER: &str = "modelpack-operator";

/// Applies `new` as the status of `obj` unless it equals `current`; returns whether it wrote.
pub async fn apply<K, S>(api: &Api<K>, obj: &K, current: Option<&S>, new: &S) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(new) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(true)
}
