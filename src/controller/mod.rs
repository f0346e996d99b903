//! The reconcilers. `run` wires the Model controller (and, with its issue, the ModelDeployment
//! controller) to the cluster; each reconcile is a plain function over one shared [`Context`].

mod access;
mod model;
mod status;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, ResourceExt};

use crate::api::Model;

pub use access::Caches;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error("secret {name} not found")]
    SecretNotFound { name: String },
    #[error("secret {name} {reason}")]
    InvalidSecret { name: String, reason: String },
    #[error("serviceaccount {name} not found")]
    ServiceAccountNotFound { name: String },
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialising status: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub recorder: Recorder,
}

/// Where the controllers look.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Watch one namespace only (all when None).
    pub namespace: Option<String>,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controllers until the process is asked to stop.
pub async fn run(client: Client, config: Config) {
    let reporter = Reporter { controller: "modelpack-operator".into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        caches: Caches::default(),
        recorder: Recorder::new(client.clone(), reporter),
    });
    let ns = config.namespace.as_deref();

    let (models_reader, models_writer) = reflector::store();
    // Status writes bump resourceVersion but not generation: only spec changes (and requeues,
    // Secret and ServiceAccount changes) start a reconcile.
    let models = watcher(api::<Model>(&client, ns), watcher::Config::default())
        .default_backoff()
        .reflect(models_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());

    let secret_models = models_reader.clone();
    let sa_models = models_reader.clone();
    Controller::for_stream(models, models_reader)
        .watches(api::<Secret>(&client, ns), watcher::Config::default(), move |secret: Secret| {
            models_using(&secret_models, secret.namespace(), |m| model::uses_secret(m, &secret.name_any()))
        })
        .watches(api::<ServiceAccount>(&client, ns), watcher::Config::default(), move |sa: ServiceAccount| {
            models_using(&sa_models, sa.namespace(), |m| m.spec.service_account_name.as_deref() == Some(&sa.name_any()))
        })
        .shutdown_on_signal()
        .run(model::reconcile, model::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "model reconcile failed");
            }
        })
        .await;
}

fn models_using(
    store: &reflector::Store<Model>,
    namespace: Option<String>,
    uses: impl Fn(&Model) -> bool,
) -> Vec<ObjectRef<Model>> {
    store
        .state()
        .iter()
        .filter(|m| m.namespace() == namespace && uses(m))
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}
