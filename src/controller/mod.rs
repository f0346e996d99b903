//! The reconcilers. `run` wires the Model and ModelDeployment controllers to the cluster; each
//! reconcile is a plain function over its controller's context ([`ModelContext`] for Models and
//! ModelPolicies, [`DeploymentContext`] for ModelDeployments and the node inventories).

mod acceptance;
mod access;
mod compliance;
mod deployment;
mod inventories;
mod metrics;
mod model;
mod policy;
mod registry_memo;
pub mod runtime;
mod status;
mod trust;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, ServiceAccount};
use kube::runtime::Predicate;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, ResourceExt};

use crate::api::{Model, ModelCache, ModelDeployment, ModelPolicy};

pub use deployment::{AllowedToleration, FINALIZER, JobSettings, NodeBound, parse_label};
pub use metrics::Metrics;
pub use registry_memo::RegistryMemo;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error(transparent)]
    Verify(#[from] crate::verify::Error),
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
    #[error("serialising: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// What the Model and ModelPolicy controllers share.
pub struct ModelContext {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// The registry answers Models share (resolutions, inspections, referrers, verifications).
    pub registry: RegistryMemo,
    /// Every ModelPolicy, each generation compiled once, and the verdicts already reached.
    pub policy_store: reflector::Store<ModelPolicy>,
    pub policies: policy::Policies,
    pub outcomes: compliance::Outcomes,
    /// Every Namespace, for the policies' namespaceSelector.
    pub namespaces: reflector::Store<Namespace>,
}

/// What the ModelDeployment controller and the node inventory loop share.
pub struct DeploymentContext {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Every node, for selection and labels.
    pub nodes: reflector::Store<Node>,
    /// The Jobs this operator created (any deployment's), in the Jobs namespace.
    pub jobs: reflector::Store<Job>,
    /// Every node's inventory (its ModelCache).
    pub inventories: reflector::Store<ModelCache>,
    /// The Models, as the watch that starts deployments' reconciles on a Model change last saw
    /// them: a reconcile it starts reads the Model it was started for.
    pub models: reflector::Store<Model>,
    pub settings: JobSettings,
}

/// Whether each watch has delivered its first full list (what `/readyz` reports, and what the
/// ModelDeployment reconciler waits for before deciding anything from the node and Job stores).
/// Set from the watch streams' InitDone events rather than `Store::wait_until_ready`: that wakes
/// only the last of several waiters (kube-runtime 5's DelayedInit keeps one waker), and the
/// controllers themselves wait on it.
#[derive(Default)]
pub struct Readiness {
    models: AtomicBool,
    deployments: AtomicBool,
    nodes: AtomicBool,
    jobs: AtomicBool,
    deployment_models: AtomicBool,
    policies: AtomicBool,
    namespaces: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        [
            &self.models,
            &self.deployments,
            &self.nodes,
            &self.jobs,
            &self.deployment_models,
            &self.policies,
            &self.namespaces,
        ]
        .iter()
        .all(|f| f.load(Ordering::Acquire))
    }

    /// Whether the ModelPolicy and Namespace lists arrived: before that, no digest is judged
    /// compliant (a policy not yet seen would be skipped).
    pub(crate) fn policies_synced(&self) -> bool {
        self.policies.load(Ordering::Acquire) && self.namespaces.load(Ordering::Acquire)
    }

    pub(crate) fn stores_synced(&self) -> bool {
        [&self.nodes, &self.jobs, &self.deployment_models].iter().all(|f| f.load(Ordering::Acquire))
    }
}

/// Marks `flag` when a watch stream reports the end of its initial list.
fn on_init_done<K>(flag: impl Fn() + Send + 'static) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
    move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            flag();
        }
    }
}

/// Where the controllers look and how they run Jobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch one namespace only (all when None).
    pub namespace: Option<String>,
    pub jobs: JobSettings,
    /// Most reconciles of one kind running at once (each controller has its own bound).
    pub concurrent: u16,
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
pub async fn run(client: Client, config: Config, metrics: Arc<Metrics>, readiness: Arc<Readiness>) {
    let reporter = Reporter { controller: "modelpack-operator".into(), instance: std::env::var("POD_NAME").ok() };
    let shared = (client.clone(), Recorder::new(client.clone(), reporter), metrics, readiness.clone());
    let (policy_store, policy_writer) = reflector::store();
    let (namespaces, namespaces_writer) = reflector::store();
    let model_ctx = Arc::new(ModelContext::new(shared.clone(), policy_store, namespaces));
    let (deployment_ctx, deployment_writers) = DeploymentContext::new(shared, config.jobs.clone());
    let deployment_ctx = Arc::new(deployment_ctx);
    let ns = config.namespace.as_deref();
    let writers = (policy_writer, namespaces_writer);
    let controllers = async {
        tokio::join!(
            run_models(&client, ns, model_ctx.clone(), readiness.clone(), writers, config.concurrent),
            policy::run(&client, model_ctx.clone()),
            run_deployments(&client, ns, deployment_ctx.clone(), deployment_writers, readiness, config.concurrent)
        )
    };
    // The node inventories' loop has no end of its own: it stops with the controllers.
    tokio::select! {
        _ = controllers => {}
        _ = inventories::run(deployment_ctx.clone()) => {}
    }
}

/// What every controller's context holds: the API client, the event recorder, metrics, readiness.
type Shared = (Client, Recorder, Arc<Metrics>, Arc<Readiness>);

impl ModelContext {
    fn new(
        (client, recorder, metrics, readiness): Shared,
        policy_store: reflector::Store<ModelPolicy>,
        namespaces: reflector::Store<Namespace>,
    ) -> ModelContext {
        ModelContext {
            client,
            recorder,
            metrics,
            readiness,
            registry: RegistryMemo::default(),
            policy_store,
            policies: policy::Policies::default(),
            outcomes: compliance::Outcomes::default(),
            namespaces,
        }
    }
}

impl DeploymentContext {
    /// With empty stores, and the writers the deployment controller's watches fill them with.
    fn new((client, recorder, metrics, readiness): Shared, settings: JobSettings) -> (DeploymentContext, Writers) {
        let (nodes, nodes_writer) = reflector::store();
        let (jobs, jobs_writer) = reflector::store();
        let (inventories, inventories_writer) = reflector::store();
        let (models, models_writer) = reflector::store();
        let ctx =
            DeploymentContext { client, recorder, metrics, readiness, nodes, jobs, inventories, models, settings };
        (ctx, (nodes_writer, jobs_writer, inventories_writer, models_writer))
    }
}

async fn run_models(
    client: &Client,
    ns: Option<&str>,
    ctx: Arc<ModelContext>,
    readiness: Arc<Readiness>,
    (policy_writer, namespaces_writer): (reflector::store::Writer<ModelPolicy>, reflector::store::Writer<Namespace>),
    concurrent: u16,
) {
    let (models_reader, models_writer) = reflector::store();
    let policy_changes = policy::changes(client, policy_writer, readiness.clone(), ctx.clone());
    let namespace_changes = policy::namespace_changes(client, namespaces_writer, readiness.clone());
    let (policy_models, namespace_models, policy_ctx) = (models_reader.clone(), models_reader.clone(), ctx.clone());
    // Status writes bump resourceVersion but not generation: only spec and label changes (labels
    // decide which ModelPolicies select a Model), requeues, and Secret, ServiceAccount, policy and
    // namespace changes start a reconcile.
    let models = watcher(api::<Model>(client, ns), watcher::Config::default())
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(models_writer)
        .inspect(on_init_done(move || readiness.models.store(true, Ordering::Release)))
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::labels), Default::default());

    let secret_models = models_reader.clone();
    let sa_models = models_reader.clone();
    Controller::for_stream(models, models_reader)
        .watches(api::<Secret>(client, ns), watcher::Config::default(), move |secret: Secret| {
            models_using(&secret_models, secret.namespace(), |m| model::uses_secret(m, &secret.name_any()))
        })
        .watches(api::<ServiceAccount>(client, ns), watcher::Config::default(), move |sa: ServiceAccount| {
            models_using(&sa_models, sa.namespace(), |m| m.spec.service_account_name.as_deref() == Some(&sa.name_any()))
        })
        .watches_stream(policy_changes, move |p: ModelPolicy| policy::models_of(&policy_models, &policy_ctx, &p))
        .watches_stream(namespace_changes, move |n: Namespace| {
            models_using(&namespace_models, Some(n.name_any()), |_| true)
        })
        .with_config(bounded(concurrent))
        .shutdown_on_signal()
        .run(
            |model, ctx: Arc<ModelContext>| timed("model", ctx.metrics.clone(), model::reconcile(model, ctx)),
            model::error_policy,
            ctx,
        )
        .for_each(|result| logged("model", result))
        .await;
}

/// The stores the deployment controller's watches fill: nodes, Jobs, ModelCaches, Models.
type Writers = (
    reflector::store::Writer<Node>,
    reflector::store::Writer<Job>,
    reflector::store::Writer<crate::api::ModelCache>,
    reflector::store::Writer<Model>,
);

const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=modelpack-operator";

async fn run_deployments(
    client: &Client,
    ns: Option<&str>,
    ctx: Arc<DeploymentContext>,
    (nodes_writer, jobs_writer, inventories_writer, models_writer): Writers,
    readiness: Arc<Readiness>,
    concurrent: u16,
) {
    let (deployments_reader, deployments_writer) = reflector::store();
    let flags = readiness.clone();
    let deployments = watcher(api::<ModelDeployment>(client, ns), watcher::Config::default())
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(deployments_writer)
        .inspect(on_init_done(move || flags.deployments.store(true, Ordering::Release)))
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, Default::default());

    let node_changes = selection_changes(client.clone(), nodes_writer, readiness.clone());
    let job_changes = job_changes(client.clone(), &ctx.settings.namespace, jobs_writer, readiness.clone());
    let model_changes = model_changes(client, ns, models_writer, readiness);
    let secret_changes =
        watcher(api::<Secret>(client, ns), watcher::Config::default()).default_backoff().touched_objects();
    let cache_changes = watcher(Api::<ModelCache>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(inventories_writer)
        .touched_objects();
    let readers = || deployments_reader.clone();
    let (for_nodes, for_models, for_secrets, for_caches) = (readers(), readers(), readers(), readers());
    Controller::for_stream(deployments, deployments_reader)
        .watches_stream(node_changes, move |_: Node| deployments_where(&for_nodes, |_| true))
        .watches_stream(job_changes, |job: Job| {
            let owner = job.annotations().get(deployment::DEPLOYMENT_ANNOTATION).and_then(|a| a.split_once('/'));
            owner.map(|(ns, name)| ObjectRef::new(name).within(ns))
        })
        // A node's cache lost a version (a scrub) or made room: the deployments it concerns.
        .watches_stream(cache_changes, move |cache: ModelCache| deployments_concerned(&for_caches, &cache))
        .watches_stream(model_changes, move |model: Model| {
            deployments_where(&for_models, |d| {
                d.namespace() == model.namespace() && d.spec.model_ref.name == model.name_any()
            })
        })
        .watches_stream(secret_changes, move |secret: Secret| deployments_for_secret(&for_secrets, &secret))
        .with_config(bounded(concurrent))
        .shutdown_on_signal()
        .run(
            |deployment, ctx: Arc<DeploymentContext>| {
                timed("modeldeployment", ctx.metrics.clone(), deployment::reconcile(deployment, ctx))
            },
            deployment::error_policy,
            ctx,
        )
        .for_each(|result| logged("deployment", result))
        .await;
}

/// Model changes for the deployment controller, reflected first into the store its reconciles read,
/// so that the reconcile a change starts reads the changed Model (one GET per reconcile was the
/// deployments' most frequent request).
fn model_changes(
    client: &Client,
    ns: Option<&str>,
    models_writer: reflector::store::Writer<Model>,
    readiness: Arc<Readiness>,
) -> impl futures::Stream<Item = Result<Model, watcher::Error>> + use<> {
    watcher(api::<Model>(client, ns), watcher::Config::default())
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(models_writer)
        .inspect(on_init_done(move || readiness.deployment_models.store(true, Ordering::Release)))
        .touched_objects()
}

/// A controller running at most `concurrent` reconciles at once. Unbounded, 10,000 Models started
/// 10,000 reconciles together, each holding its own connection and request to the apiserver.
fn bounded(concurrent: u16) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(concurrent.max(1))
}

/// Drops what server-side apply records of every field's manager: nothing here reads it, and it
/// is most of a stored object's size.
fn forget_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Changes of the Jobs this operator created, reflected into the Job store.
fn job_changes(
    client: Client,
    namespace: &str,
    jobs_writer: reflector::store::Writer<Job>,
    readiness: Arc<Readiness>,
) -> impl futures::Stream<Item = Result<Job, watcher::Error>> + use<> {
    watcher(Api::<Job>::namespaced(client, namespace), watcher::Config::default().labels(MANAGED_BY_SELECTOR))
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(jobs_writer)
        .inspect(on_init_done(move || readiness.jobs.store(true, Ordering::Release)))
        .touched_objects()
}

/// Node events that can change a selection (and removals), reflected into the node store; not
/// heartbeats.
fn selection_changes(
    client: Client,
    nodes_writer: reflector::store::Writer<Node>,
    readiness: Arc<Readiness>,
) -> impl futures::Stream<Item = Result<Node, watcher::Error>> {
    let watch = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(|node: &mut Node| {
            forget_managed_fields(node);
            // A node's image list (hundreds of entries on a busy node) is not read here.
            if let Some(status) = node.status.as_mut() {
                status.images = None;
            }
        })
        .reflect(nodes_writer)
        .inspect(on_init_done(move || readiness.nodes.store(true, Ordering::Release)));
    changes(watch, deployment::selection_fingerprint, true, |_| true)
}

/// The controller's own report of a failed reconcile (the error policy already logged why).
async fn logged<T, E: std::fmt::Display>(controller: &'static str, result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(controller, error = %e, "reconcile failed");
    }
}

/// The objects of a watch whose `fingerprint` changed, and the deleted ones for which `on_delete`
/// says so; an object of the initial list counts as a change when `initial`, else it is only
/// remembered.
fn changes<K, F>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    fingerprint: impl Fn(&K) -> F + Send + 'static,
    initial: bool,
    mut on_delete: impl FnMut(&K) -> bool + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Send + 'static,
    F: PartialEq + Send + 'static,
{
    let mut seen: HashMap<String, F> = HashMap::new();
    events.filter_map(move |event| {
        let changed = match event {
            Ok(watcher::Event::Apply(k)) => remember(&mut seen, &fingerprint, k),
            Ok(watcher::Event::InitApply(k)) if initial => remember(&mut seen, &fingerprint, k),
            Ok(watcher::Event::InitApply(k)) => {
                seen.insert(k.name_any(), fingerprint(&k));
                None
            }
            Ok(watcher::Event::Delete(k)) => {
                seen.remove(&k.name_any());
                on_delete(&k).then_some(Ok(k))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(changed)
    })
}

/// `k` when its fingerprint differs from the one remembered (which it replaces).
fn remember<K: kube::Resource, F: PartialEq>(
    seen: &mut HashMap<String, F>,
    fingerprint: impl Fn(&K) -> F,
    k: K,
) -> Option<Result<K, watcher::Error>> {
    let f = fingerprint(&k);
    let changed = seen.get(&k.name_any()) != Some(&f);
    seen.insert(k.name_any(), f);
    changed.then_some(Ok(k))
}

/// Runs one reconcile and records its outcome and duration.
async fn timed<T>(
    controller: &'static str,
    metrics: Arc<Metrics>,
    reconcile: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let started = Instant::now();
    let result = reconcile.await;
    metrics.reconciled(controller, result.is_ok(), started.elapsed());
    result
}

/// Spec changes, deletion and finalizer changes; not our own status writes.
fn spec_or_lifecycle(d: &ModelDeployment) -> Option<u64> {
    let mut h = std::hash::DefaultHasher::new();
    d.metadata.generation.hash(&mut h);
    d.metadata.deletion_timestamp.is_some().hash(&mut h);
    d.finalizers().hash(&mut h);
    Some(h.finish())
}

/// Registry credentials of any Model in the namespace; not the Secrets of our own Jobs.
fn deployments_for_secret(
    store: &reflector::Store<ModelDeployment>,
    secret: &Secret,
) -> Vec<ObjectRef<ModelDeployment>> {
    if secret.labels().contains_key(deployment::DEPLOYMENT_LABEL) {
        return Vec::new();
    }
    deployments_where(store, |d| d.namespace() == secret.namespace())
}

/// The deployments whose plan a node cache's new status can change.
fn deployments_concerned(
    store: &reflector::Store<ModelDeployment>,
    cache: &ModelCache,
) -> Vec<ObjectRef<ModelDeployment>> {
    let (node, Some(status)) = (cache.name_any(), cache.status.as_ref()) else { return Vec::new() };
    deployments_where(store, |d| {
        let key = format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any());
        d.status.as_ref().is_some_and(|s| deployment::cache_concerns(s, &key, &node, status))
    })
}

fn deployments_where(
    store: &reflector::Store<ModelDeployment>,
    matches: impl Fn(&ModelDeployment) -> bool,
) -> Vec<ObjectRef<ModelDeployment>> {
    store.state().iter().filter(|d| matches(d)).map(|d| ObjectRef::from_obj(d.as_ref())).collect()
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
