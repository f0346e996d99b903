//! Runs the Argo CD health scripts (deploy/argocd/*.lua) the way Argo CD does: `obj` is the object as a
//! Lua table (JSON nulls and absent fields are nil), the script returns `{status, message}`.

use mlua::{LuaSerdeExt, SerializeOptions};

const MODEL: &str = include_str!("../../deploy/argocd/model.lua");
const MODEL_DEPLOYMENT: &str = include_str!("../../deploy/argocd/modeldeployment.lua");
const MODEL_POLICY: &str = include_str!("../../deploy/argocd/modelpolicy.lua");

/// (status, message) for a Model or ModelDeployment (by its `kind`).
pub fn health(obj: &serde_json::Value) -> (String, String) {
    let script = match obj["kind"].as_str() {
        Some("Model") => MODEL,
        Some("ModelDeployment") => MODEL_DEPLOYMENT,
        Some("ModelPolicy") => MODEL_POLICY,
        other => panic!("no health script for kind {other:?}"),
    };
    let lua = mlua::Lua::new();
    let options = SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).expect("object as a Lua table");
    lua.globals().set("obj", value).expect("setting obj");
    let hs: mlua::Table = lua.load(script).eval().unwrap_or_else(|e| panic!("health script failed: {e}"));
    (hs.get("status").expect("hs.status"), hs.get("message").unwrap_or_default())
}

/// The health status of a typed object.
pub fn status_of<K: serde::Serialize + kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    let mut value = serde_json::to_value(obj).expect("object JSON");
    value["kind"] = K::kind(&()).into();
    health(&value).0
}
