//! ModelPolicies: compiled once per generation (shared by every Model reconcile), their own status
//! written by one small reconciler, and which Models each one selects.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use futures::{Stream, StreamExt};
use kube::Client;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use std::sync::atomic::Ordering;

use super::{Error, ModelContext, Readiness, on_init_done, status};
use crate::api::conditions::{self, Observation, Reason};
use crate::api::{Model, ModelPolicy};
use crate::policy::{self, CompiledPolicy};

/// A policy ready to evaluate: its rules and its two selectors.
#[derive(Debug)]
pub struct Ready {
    pub policy: CompiledPolicy,
    /// Namespace labels, Model labels.
    selectors: (Selector, Selector),
}

/// What a policy's generation compiled to (the error is the compiler's one-line message).
pub type Compiled = Arc<Result<Ready, String>>;

/// Compiled policies by (uid, generation): each generation is compiled once, whoever asks first.
#[derive(Default)]
pub struct Policies {
    compiled: Mutex<HashMap<String, (Option<i64>, Compiled)>>,
}

impl Policies {
    pub fn get(&self, p: &ModelPolicy) -> Compiled {
        let uid = p.uid().unwrap_or_else(|| p.name_any());
        let generation = p.metadata.generation;
        let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, compiled)) = map.get(&uid).filter(|(g, _)| *g == generation) {
            return compiled.clone();
        }
        let compiled = Arc::new(compile(p));
        map.insert(uid, (generation, compiled.clone()));
        compiled
    }

    /// Forgets a deleted policy.
    pub fn forget(&self, p: &ModelPolicy) {
        let uid = p.uid().unwrap_or_else(|| p.name_any());
        self.compiled.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
    }
}

fn compile(p: &ModelPolicy) -> Result<Ready, String> {
    let selectors = selectors(p)?;
    let policy = policy::compile(&p.name_any(), &p.spec).map_err(|e| e.to_string())?;
    Ok(Ready { policy, selectors })
}

/// The policy's namespace and Model selectors.
fn selectors(p: &ModelPolicy) -> Result<(Selector, Selector), String> {
    let selector = |s: &Option<LabelSelector>, what: &str| {
        Selector::try_from(s.clone().unwrap_or_default()).map_err(|e| format!("{what}: {e}"))
    };
    Ok((selector(&p.spec.namespace_selector, "namespaceSelector")?, selector(&p.spec.model_selector, "modelSelector")?))
}

/// Whether `ready` applies to `model`, whose namespace carries `namespace_labels`.
pub fn selects(ready: &Ready, model: &Model, namespace_labels: &BTreeMap<String, String>) -> bool {
    matches(&ready.selectors, model, namespace_labels)
}

fn matches(selectors: &(Selector, Selector), model: &Model, namespace_labels: &BTreeMap<String, String>) -> bool {
    selectors.0.matches(namespace_labels) && selectors.1.matches(model.labels())
}

/// The labels of `namespace` (none while the Namespace store has not seen it).
pub fn namespace_labels(namespaces: &Store<Namespace>, namespace: &str) -> BTreeMap<String, String> {
    namespaces.get(&ObjectRef::new(namespace)).map(|ns| ns.labels().clone()).unwrap_or_default()
}

/// Runs the ModelPolicy reconciler (its own watch) until the process is asked to stop.
pub async fn run(client: &Client, ctx: Arc<ModelContext>) {
    Controller::new(Api::<ModelPolicy>::all(client.clone()), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "policy reconcile failed");
            }
        })
        .await;
}

/// Policy creations, generation changes and deletions (not their status writes), after the
/// policy store has taken them in: what re-evaluates the Models.
pub fn changes(
    client: &Client,
    writer: Writer<ModelPolicy>,
    readiness: Arc<Readiness>,
    ctx: Arc<ModelContext>,
) -> impl Stream<Item = Result<ModelPolicy, watcher::Error>> + Send + 'static {
    let watch = watcher(Api::<ModelPolicy>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(on_init_done(move || readiness.policies.store(true, Ordering::Release)));
    super::changes(
        watch,
        |p: &ModelPolicy| p.metadata.generation,
        true,
        move |p| {
            ctx.policies.forget(p);
            true
        },
    )
}

/// Namespace label changes (what a namespaceSelector reads), after the store has taken them in.
pub fn namespace_changes(
    client: &Client,
    writer: Writer<Namespace>,
    readiness: Arc<Readiness>,
) -> impl Stream<Item = Result<Namespace, watcher::Error>> + Send + 'static {
    let watch = watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(on_init_done(move || readiness.namespaces.store(true, Ordering::Release)));
    // Models are reconciled at start anyway; a deleted namespace takes its Models with it.
    super::changes(watch, |n: &Namespace| n.labels().clone(), false, |_| false)
}

/// The Models a policy change concerns: those it selects now, and those whose status names it (it
/// selected them before, or it was deleted).
pub fn models_of(models: &Store<Model>, ctx: &ModelContext, p: &ModelPolicy) -> Vec<ObjectRef<Model>> {
    let name = p.name_any();
    // Selectors only: the rules of a deleted policy are not compiled again.
    let selectors = selectors(p).ok();
    models
        .state()
        .iter()
        .filter(|m| {
            let named = m.status.as_ref().is_some_and(|s| {
                s.violations.iter().any(|v| v.policy == name)
                    || conditions::find(&s.conditions, conditions::COMPLIANT).is_some()
            });
            let labels = namespace_labels(&ctx.namespaces, &m.namespace().unwrap_or_default());
            named || selectors.as_ref().is_some_and(|s| matches(s, m, &labels))
        })
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// The ModelPolicy reconciler: Ready when every rule and selector compiles, else Ready=False and
/// Stalled with the compiler's message. Evaluation happens in the Model reconciles.
pub async fn reconcile(p: Arc<ModelPolicy>, ctx: Arc<ModelContext>) -> Result<Action, Error> {
    let compiled = ctx.policies.get(&p);
    let generation = p.metadata.generation;
    let current = p.status.clone();
    let mut next = current.clone().unwrap_or_default();
    let (observation, compiled_rules) = observe(&compiled);
    next.observed_generation = generation;
    next.compiled_rules = compiled_rules;
    conditions::apply(&mut next.conditions, &observation, generation, &Time(jiff::Timestamp::now()));
    let api: Api<ModelPolicy> = Api::all(ctx.client.clone());
    let wrote = status::apply(&api, p.as_ref(), current.as_ref(), &next).await?;
    tracing::info!(policy = %p.name_any(), reason = %observation.reason, wrote_status = wrote, "reconciled policy");
    Ok(Action::await_change())
}

/// What a compiled generation says about the policy (a pure function of it).
fn observe(compiled: &Result<Ready, String>) -> (Observation, Option<i64>) {
    match compiled {
        Ok(ready) => {
            let n = ready.policy.rules.len();
            (Observation::ready(Reason::RulesCompiled, format!("{n} rules compiled")), Some(n as i64))
        }
        Err(message) => (Observation::stalled(Reason::InvalidPolicy, message.clone()), None),
    }
}

pub fn error_policy(_: Arc<ModelPolicy>, error: &Error, _: Arc<ModelContext>) -> Action {
    tracing::warn!(%error, "policy reconcile failed");
    Action::requeue(std::time::Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ModelPolicySpec, PolicyAction, PolicyRule};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn policy(rules: &[&str], namespaces: Option<LabelSelector>, models: Option<LabelSelector>) -> ModelPolicy {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, e)| PolicyRule { name: format!("r{i}"), expression: (*e).into(), message: None })
            .collect();
        let spec = ModelPolicySpec {
            action: PolicyAction::Enforce,
            namespace_selector: namespaces,
            model_selector: models,
            rules,
        };
        let mut p = ModelPolicy::new("p", spec);
        p.metadata.uid = Some("u".into());
        p.metadata.generation = Some(1);
        p
    }

    fn model(labels: &[(&str, &str)]) -> Model {
        let spec = serde_json::from_value(serde_json::json!({"repository": "r.example/m"})).unwrap();
        let mut m = Model::new("m", spec);
        m.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
        m
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn selection_by_namespace_and_model_labels() {
        let env = LabelSelector { match_labels: Some(labels(&[("env", "prod")])), ..Default::default() };
        let tier = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["gold".into()]),
            }]),
            ..Default::default()
        };
        let everything = compile(&policy(&["true"], None, None)).unwrap();
        assert!(selects(&everything, &model(&[]), &labels(&[])));
        let scoped = compile(&policy(&["true"], Some(env), Some(tier))).unwrap();
        assert!(selects(&scoped, &model(&[("tier", "gold")]), &labels(&[("env", "prod")])));
        assert!(!selects(&scoped, &model(&[("tier", "gold")]), &labels(&[("env", "dev")])));
        assert!(!selects(&scoped, &model(&[("tier", "gold")]), &labels(&[])));
        assert!(!selects(&scoped, &model(&[("tier", "silver")]), &labels(&[("env", "prod")])));
    }

    #[test]
    fn invalid_rules_and_selectors_stall_the_policy_with_the_message() {
        let (ok, n) = observe(&compile(&policy(&["true", "tag == 'v1'"], None, None)));
        assert_eq!((ok.reason, ok.stalled, n), (Reason::RulesCompiled, false, Some(2)));
        let (bad, n) = observe(&compile(&policy(&["true", "layers.all(l, "], None, None)));
        assert_eq!((bad.reason, bad.stalled, n), (Reason::InvalidPolicy, true, None));
        assert!(bad.message.starts_with("rule \"r1\" does not compile: ERROR: <input>:1:"), "{}", bad.message);
        let broken = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        let (bad, _) = observe(&compile(&policy(&["true"], None, Some(broken))));
        assert!(bad.stalled && bad.message.starts_with("modelSelector: "), "{}", bad.message);
    }

    #[test]
    fn each_generation_compiles_once() {
        let policies = Policies::default();
        let mut p = policy(&["true"], None, None);
        let first = policies.get(&p);
        assert!(Arc::ptr_eq(&first, &policies.get(&p)));
        p.metadata.generation = Some(2);
        assert!(!Arc::ptr_eq(&first, &policies.get(&p)));
    }
}
