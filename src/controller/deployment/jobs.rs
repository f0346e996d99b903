//! The Jobs a ModelDeployment runs on its nodes: one pull Job per (deployment, node, digest) and, on
//! deletion, one cleanup Job per node. Jobs live in the operator's namespace (hostPath volumes need
//! a privileged namespace; cross-namespace owner references are not allowed), so they are tied to
//! their deployment by labels and annotations instead.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use super::nodes::short_hash;
use super::plan::JobState;
use crate::api::ModelDeployment;
use crate::cache::PullOutcome;
use crate::registry::{Credential, Options, Repository};

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "modelpack-operator");
/// Label: the deployment's hash (label values cannot hold `namespace/name`).
pub const DEPLOYMENT_LABEL: &str = "modelpack.dev/deployment";
/// Label: `pull` or `cleanup`.
pub const ROLE_LABEL: &str = "modelpack.dev/role";
/// Annotations with the full values.
pub const DEPLOYMENT_ANNOTATION: &str = "modelpack.dev/deployment";
pub const NODE_ANNOTATION: &str = "modelpack.dev/node";
pub const DIGEST_ANNOTATION: &str = "modelpack.dev/digest";
/// Fingerprint of the registry access a pull Job was given: a failed pull is retried at once when
/// the credentials or transport change.
pub const ACCESS_ANNOTATION: &str = "modelpack.dev/access";

const REGISTRY_MOUNT: &str = "/etc/modelpack/registry";
const CONTAINER: &str = "pull";
/// Finished Jobs stay this long for `kubectl logs`; status keeps their results after that.
const TTL_AFTER_FINISHED: i32 = 3600;
const CLEANUP_DEADLINE: i64 = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Pull,
    Cleanup,
    /// A node cache's integrity scrub (no deployment's).
    Scrub,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pull => "pull",
            Role::Cleanup => "cleanup",
            Role::Scrub => "scrub",
        }
    }

    pub fn parse(label: &str) -> Option<Role> {
        [Role::Pull, Role::Cleanup, Role::Scrub].into_iter().find(|r| r.as_str() == label)
    }
}

/// How the operator runs Jobs: its namespace, the node cache path and its own image.
#[derive(Clone, Debug)]
pub struct JobSettings {
    pub namespace: String,
    pub cache_dir: String,
    pub image: String,
    /// Where pull Jobs may go.
    pub bound: super::bound::NodeBound,
    /// `pull --max-entries`: entries one model may create on a node.
    pub max_entries: u64,
    /// `pull --cache-limit`: each node cache's budget.
    pub cache_limit: crate::cache::CacheLimit,
    /// How often nodes holding models are scrubbed (zero: never).
    pub scrub_interval: Duration,
    /// `scrub --rate`: bytes a second a scrub reads.
    pub scrub_rate: u64,
    /// `--mirror` of every pull Job.
    pub mirrors: Vec<crate::registry::Mirror>,
    /// The uid (and gid) Jobs run as; `None`: uid 0 of the image. Either way without any
    /// capability: a non-root uid needs a cache directory it owns on every node.
    pub run_as_user: Option<u32>,
}

/// The value of [`DEPLOYMENT_LABEL`] for `namespace/name`.
pub fn deployment_key(namespace: &str, name: &str) -> String {
    short_hash(&[namespace, name], 40)
}

/// Deterministic, ≤ 63 characters, a valid DNS label: `<role>-<name prefix>-<hash>`.
pub fn job_name(role: Role, namespace: &str, name: &str, node: &str, digest: &str) -> String {
    let prefix: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(24).collect();
    let prefix = prefix.trim_end_matches('-');
    format!("{}-{prefix}-{}", role.as_str(), short_hash(&[namespace, name, node, digest], 16))
}

fn metadata(
    role: Role,
    deployment: &ModelDeployment,
    settings: &JobSettings,
    name: &str,
    node: &str,
    digest: Option<&str>,
) -> serde_json::Value {
    let (ns, dep) = (
        deployment.metadata.namespace.as_deref().unwrap_or_default(),
        deployment.metadata.name.as_deref().unwrap_or_default(),
    );
    let mut annotations = BTreeMap::from([
        (DEPLOYMENT_ANNOTATION.to_owned(), format!("{ns}/{dep}")),
        (NODE_ANNOTATION.to_owned(), node.to_owned()),
    ]);
    if let Some(d) = digest {
        annotations.insert(DIGEST_ANNOTATION.to_owned(), d.to_owned());
    }
    json!({
        "name": name,
        "namespace": settings.namespace,
        "labels": labels(role, ns, dep),
        "annotations": annotations,
    })
}

fn labels(role: Role, namespace: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (DEPLOYMENT_LABEL.to_owned(), deployment_key(namespace, name)),
        (ROLE_LABEL.to_owned(), role.as_str().to_owned()),
    ])
}

/// A label selector for the Jobs (and Secrets) of one deployment.
pub fn selector(namespace: &str, name: &str) -> String {
    format!("{}={},{DEPLOYMENT_LABEL}={}", MANAGED_BY.0, MANAGED_BY.1, deployment_key(namespace, name))
}

/// What a pull Job needs to know.
pub struct PullJob<'a> {
    pub node: &'a str,
    pub repository: &'a Repository,
    pub digest: &'a str,
    pub keep: &'a [String],
    pub options: &'a Options,
    pub credential: Option<&'a Credential>,
    pub access: &'a str,
    /// The OpenSSF model-signing referrer the digest was verified under (`pull --model-signature`).
    pub model_signature: Option<&'a str>,
}

/// The pull Job and, when the registry needs credentials or a CA, the Secret it mounts (named like
/// the Job; the caller makes the Job its owner once both exist).
/// What a pull Job runs, but for the flags of its Secret's files.
fn pull_args(settings: &JobSettings, pull: &PullJob, link: &str) -> Vec<String> {
    let mut args = vec![
        "pull".to_owned(),
        format!("{}@{}", pull.repository, pull.digest),
        "--cache-dir".to_owned(),
        settings.cache_dir.clone(),
        "--link".to_owned(),
        link.to_owned(),
        "--termination-log".to_owned(),
        "/dev/termination-log".to_owned(),
    ];
    for keep in pull.keep {
        args.extend(["--keep".to_owned(), keep.clone()]);
    }
    if let Some(signature) = pull.model_signature {
        args.extend(["--model-signature".to_owned(), signature.to_owned()]);
    }
    if pull.options.insecure {
        args.push("--insecure".to_owned());
    }
    if settings.max_entries != crate::cache::DEFAULT_MAX_ENTRIES {
        args.extend(["--max-entries".to_owned(), settings.max_entries.to_string()]);
    }
    args.extend(["--cache-limit".to_owned(), settings.cache_limit.to_string()]);
    for mirror in crate::registry::Mirror::of(&settings.mirrors, &pull.repository.registry) {
        args.extend(["--mirror".to_owned(), mirror.to_string()]);
    }
    args
}

/// The registry credential and CA a pull Job reads from its Secret, and the flags that point
/// `pull` at them.
fn registry_files(pull: &PullJob, args: &mut Vec<String>) -> BTreeMap<String, ByteString> {
    let mut files = BTreeMap::new();
    if let Some(c) = pull.credential {
        let auth = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", c.username, c.password),
        );
        let config = json!({"auths": {pull.repository.registry.clone(): {"auth": auth}}});
        files.insert("config.json".to_owned(), ByteString(config.to_string().into_bytes()));
        args.extend(["--docker-config".to_owned(), format!("{REGISTRY_MOUNT}/config.json")]);
    }
    if let Some(ca) = &pull.options.ca_pem {
        files.insert("ca.crt".to_owned(), ByteString(ca.clone()));
        args.extend(["--ca-file".to_owned(), format!("{REGISTRY_MOUNT}/ca.crt")]);
    }
    files
}

pub fn pull_job(
    deployment: &ModelDeployment,
    settings: &JobSettings,
    pull: &PullJob,
) -> Result<(Job, Option<Secret>), serde_json::Error> {
    let ns = deployment.metadata.namespace.as_deref().unwrap_or_default();
    let dep = deployment.metadata.name.as_deref().unwrap_or_default();
    let name = job_name(Role::Pull, ns, dep, pull.node, pull.digest);
    let mut args = pull_args(settings, pull, &format!("deployments/{ns}/{dep}"));
    let secret_data = registry_files(pull, &mut args);
    let mut mounts = vec![json!({"name": "cache", "mountPath": settings.cache_dir})];
    let mut volumes = vec![cache_volume(settings)];
    let mut secret = None;
    if !secret_data.is_empty() {
        mounts.push(json!({"name": "registry", "mountPath": REGISTRY_MOUNT, "readOnly": true}));
        volumes.push(json!({"name": "registry", "secret": {"secretName": name, "defaultMode": 0o400}}));
        let meta = metadata(Role::Pull, deployment, settings, &name, pull.node, Some(pull.digest));
        let mut s: Secret = serde_json::from_value(json!({"metadata": meta}))?;
        s.data = Some(secret_data);
        secret = Some(s);
    }
    let spec = &deployment.spec.pull;
    let deadline =
        spec.timeout.as_deref().and_then(|t| crate::api::duration::parse(t).ok()).unwrap_or(Duration::from_secs(3600));
    let mut meta = metadata(Role::Pull, deployment, settings, &name, pull.node, Some(pull.digest));
    meta["annotations"][ACCESS_ANNOTATION] = json!(pull.access);
    let job = json!({
        "metadata": meta,
        "spec": {
            "backoffLimit": spec.backoff_limit.unwrap_or(3),
            "activeDeadlineSeconds": deadline.as_secs().max(1),
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
            // A usage error, or a model the node cannot fit even after eviction: retrying the pod
            // cannot help (the plan retries when the node has room, or after its backoff).
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": final_exit_codes()}}
            ]},
            "template": pod_template(&PodParts::of(deployment, settings, Role::Pull, pull.node), args, mounts, volumes, spec.resources.as_ref()),
        }
    });
    Ok((serde_json::from_value(job)?, secret))
}

/// The exit codes after which a Job fails at once ([`Exit::FINAL`]: the CLI's one table).
fn final_exit_codes() -> Vec<u8> {
    crate::exit::Exit::FINAL.iter().map(|e| e.code()).collect()
}

/// The Job that removes a deleted deployment's link from one node and collects what nothing keeps.
pub fn cleanup_job(deployment: &ModelDeployment, settings: &JobSettings, node: &str) -> Result<Job, serde_json::Error> {
    let ns = deployment.metadata.namespace.as_deref().unwrap_or_default();
    let dep = deployment.metadata.name.as_deref().unwrap_or_default();
    let name = job_name(Role::Cleanup, ns, dep, node, "");
    let args = vec![
        "gc".to_owned(),
        "--cache-dir".to_owned(),
        settings.cache_dir.clone(),
        "--unlink".to_owned(),
        format!("deployments/{ns}/{dep}"),
        "--cache-limit".to_owned(),
        settings.cache_limit.to_string(),
        "--termination-log".to_owned(),
        "/dev/termination-log".to_owned(),
    ];
    let mounts = vec![json!({"name": "cache", "mountPath": settings.cache_dir})];
    let job = json!({
        "metadata": metadata(Role::Cleanup, deployment, settings, &name, node, None),
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": CLEANUP_DEADLINE,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
            "template": pod_template(&PodParts::of(deployment, settings, Role::Cleanup, node), args, mounts, vec![cache_volume(settings)], None),
        }
    });
    serde_json::from_value(job)
}

fn cache_volume(settings: &JobSettings) -> serde_json::Value {
    json!({"name": "cache", "hostPath": {"path": settings.cache_dir, "type": "DirectoryOrCreate"}})
}

/// Where and as what a Job's pod runs.
struct PodParts<'a> {
    labels: BTreeMap<String, String>,
    node: &'a str,
    tolerations: serde_json::Value,
    image: &'a str,
    /// The operator's node bound, for pull Jobs (cleanup and scrub Jobs go where pulls went).
    node_selector: Option<&'a BTreeMap<String, String>>,
    run_as_user: Option<u32>,
}

impl<'a> PodParts<'a> {
    fn of(deployment: &ModelDeployment, settings: &'a JobSettings, role: Role, node: &'a str) -> PodParts<'a> {
        let ns = deployment.metadata.namespace.as_deref().unwrap_or_default();
        let dep = deployment.metadata.name.as_deref().unwrap_or_default();
        PodParts {
            labels: labels(role, ns, dep),
            node,
            tolerations: json!(deployment.spec.tolerations),
            image: &settings.image,
            node_selector: (role == Role::Pull && !settings.bound.selector.is_empty())
                .then_some(&settings.bound.selector),
            run_as_user: settings.run_as_user,
        }
    }
}

fn pod_template(
    pod: &PodParts,
    args: Vec<String>,
    mounts: Vec<serde_json::Value>,
    volumes: Vec<serde_json::Value>,
    resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
) -> serde_json::Value {
    let node = pod.node;
    json!({
        "metadata": {"labels": pod.labels},
        "spec": {
            "restartPolicy": "Never",
            // The node's name, not its hostname label: they differ on several clouds. This is how
            // the DaemonSet controller pins pods.
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
            ]}}},
            "tolerations": pod.tolerations,
            // The operator's bound again, so that a pull Job cannot land outside it even if the node
            // changed since it was selected. Cleanup Jobs go where pulls went, bound or not.
            "nodeSelector": pod.node_selector,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "securityContext": pod_security(pod.run_as_user),
            "containers": [{
                "name": CONTAINER,
                "image": pod.image,
                "args": args,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": resources,
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        }
    })
}

/// Every Job's pod security: the runtime's seccomp profile, and a non-root uid when one is set (its
/// gid as fsGroup, so that the registry Secret's files, 0400, are readable through the group).
fn pod_security(run_as_user: Option<u32>) -> serde_json::Value {
    let mut security = json!({"seccompProfile": {"type": "RuntimeDefault"}});
    if let Some(uid) = run_as_user {
        security["runAsUser"] = json!(uid);
        security["runAsGroup"] = json!(uid);
        security["fsGroup"] = json!(uid);
        security["runAsNonRoot"] = json!(true);
    }
    security
}

/// The scrub Job of `node`: one per node at a time (its name is the node's), the same pod security
/// as pull Jobs, tolerating every taint (it goes where pulls went; it is the cache's maintenance).
pub fn scrub_job(settings: &JobSettings, node: &str) -> Result<Job, serde_json::Error> {
    let name = format!("scrub-{}", short_hash(&[node], 24));
    let args = vec![
        "scrub".to_owned(),
        "--cache-dir".to_owned(),
        settings.cache_dir.clone(),
        "--rate".to_owned(),
        settings.scrub_rate.to_string(),
        "--cache-limit".to_owned(),
        settings.cache_limit.to_string(),
        "--termination-log".to_owned(),
        "/dev/termination-log".to_owned(),
    ];
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (ROLE_LABEL.to_owned(), Role::Scrub.as_str().to_owned()),
    ]);
    let pod = PodParts {
        labels: labels.clone(),
        node,
        tolerations: json!([{"operator": "Exists"}]),
        image: &settings.image,
        node_selector: None,
        run_as_user: settings.run_as_user,
    };
    let mounts = vec![json!({"name": "cache", "mountPath": settings.cache_dir})];
    let job = json!({
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {NODE_ANNOTATION: node},
        },
        "spec": {
            // Exit 1 is a finding (something was removed), not a failure to retry.
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
            "template": pod_template(&pod, args, mounts, vec![cache_volume(settings)], None),
        }
    });
    serde_json::from_value(job)
}

/// The termination message of a Job's last finished pod: its JSON result.
pub fn termination_message(pods: &[Pod]) -> Option<String> {
    pods.iter().filter_map(terminated).max_by_key(|(at, _)| at.clone()).map(|(_, message)| message)
}

/// A Job's progress, without its result (which is in its pod's termination message).
pub fn job_state(job: &Job) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    let condition = |type_: &str| {
        status
            .conditions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
            .cloned()
    };
    let started = status.start_time.clone();
    if condition("Complete").is_some() {
        return JobState::Succeeded { started, completed: status.completion_time.clone(), bytes: None };
    }
    if let Some(failed) = condition("Failed") {
        let message =
            format!("{}: {}", failed.reason.unwrap_or_else(|| "Failed".into()), failed.message.unwrap_or_default());
        return JobState::Failed { started, completed: failed.last_transition_time, message };
    }
    if status.active.unwrap_or(0) > 0 {
        return JobState::Running { started };
    }
    JobState::Pending
}

/// A pull Job's result: the termination message of its last pod, when it is one.
pub fn outcome(pods: &[Pod]) -> Option<PullOutcome> {
    serde_json::from_str(&termination_message(pods)?).ok()
}

/// Fills in a finished Job's result from the termination message of its last pod (`outcome`, when
/// it parsed): bytes fetched on success, the pull's own error on failure (clearer than the Job's
/// BackoffLimitExceeded), or the message's last line when it is no result (logs).
pub fn with_result(state: JobState, outcome: Option<PullOutcome>, pods: &[Pod]) -> JobState {
    let Some(message) = termination_message(pods) else { return state };
    match state {
        JobState::Succeeded { started, completed, .. } => {
            let bytes = outcome.as_ref().and_then(|o| i64::try_from(o.bytes_fetched).ok());
            JobState::Succeeded { started, completed, bytes }
        }
        JobState::Failed { started, completed, message: job_message } => {
            let error = match outcome.and_then(|o| o.error) {
                Some(e) => e,
                None if !message.trim().is_empty() => last_line(&message),
                None => job_message,
            };
            JobState::Failed { started, completed, message: error }
        }
        other => other,
    }
}

fn terminated(pod: &Pod) -> Option<(Option<Time>, String)> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let t = statuses.iter().find(|s| s.name == CONTAINER)?.state.as_ref()?.terminated.as_ref()?;
    Some((t.finished_at.clone(), t.message.clone().unwrap_or_default()))
}

/// Logs used as a termination message end with the error line.
fn last_line(text: &str) -> String {
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    line.chars().take(1024).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_jobs_carry_the_bound_and_cleanup_jobs_do_not() {
        let deployment: ModelDeployment = serde_json::from_value(
            json!({"metadata": {"name": "d", "namespace": "ns"}, "spec": {"modelRef": {"name": "m"}}}),
        )
        .unwrap();
        let repository = Repository { registry: "r.example".into(), repository: "m".into() };
        let options = Options::default();
        let digest = format!("sha256:{}", "a".repeat(64));
        let pull = PullJob {
            node: "n1",
            repository: &repository,
            digest: &digest,
            keep: &[],
            options: &options,
            credential: None,
            access: "a",
            model_signature: None,
        };
        let selector_of = |job: &Job| job.spec.as_ref()?.template.spec.as_ref()?.node_selector.clone();
        let mut settings = JobSettings {
            namespace: "sys".into(),
            cache_dir: "/c".into(),
            image: "i".into(),
            bound: Default::default(),
            max_entries: crate::cache::DEFAULT_MAX_ENTRIES,
            cache_limit: crate::cache::CacheLimit::Bytes(5 << 30),
            scrub_interval: Duration::from_secs(3600),
            scrub_rate: 1 << 26,
            mirrors: Vec::new(),
            run_as_user: None,
        };
        assert_eq!(selector_of(&pull_job(&deployment, &settings, &pull).unwrap().0), None, "no bound, no selector");
        let args_of = |job: &Job| {
            job.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .map(|p| p.containers[0].args.clone().unwrap_or_default())
        };
        let default_args = args_of(&pull_job(&deployment, &settings, &pull).unwrap().0).unwrap();
        assert!(!default_args.contains(&"--max-entries".to_owned()), "{default_args:?}");
        assert!(default_args.windows(2).any(|w| w == ["--cache-limit", "5368709120"]), "{default_args:?}");
        settings.max_entries = 250_000;
        let raised = args_of(&pull_job(&deployment, &settings, &pull).unwrap().0).unwrap();
        assert!(raised.windows(2).any(|w| w == ["--max-entries", "250000"]), "{raised:?}");
        assert!(!raised.contains(&"--model-signature".to_owned()), "{raised:?}");
        let signature = format!("sha256:{}", "5".repeat(64));
        let signed = PullJob { model_signature: Some(&signature), ..pull };
        let signed = args_of(&pull_job(&deployment, &settings, &signed).unwrap().0).unwrap();
        assert!(signed.windows(2).any(|w| w == ["--model-signature", signature.as_str()]), "{signed:?}");
        let mirror = |spec: &str| crate::registry::Mirror::parse(spec).unwrap();
        settings.mirrors =
            vec![mirror("other.example=http://m0"), mirror("r.example=http://m1:5000"), mirror("r.example=https://m2")];
        let mirrored = args_of(&pull_job(&deployment, &settings, &pull).unwrap().0).unwrap();
        let given: Vec<&str> = mirrored.windows(2).filter(|w| w[0] == "--mirror").map(|w| w[1].as_str()).collect();
        assert_eq!(given, ["r.example=http://m1:5000", "r.example=https://m2"], "this registry's mirrors, in order");
        settings.bound.selector = [("pool".to_owned(), "models".to_owned())].into();
        let (job, _) = pull_job(&deployment, &settings, &pull).unwrap();
        assert_eq!(selector_of(&job), Some(settings.bound.selector.clone()));
        assert_eq!(selector_of(&cleanup_job(&deployment, &settings, "n1").unwrap()), None);
    }

    #[test]
    fn scrub_jobs_run_like_pull_jobs_on_their_node_once() {
        let settings = JobSettings {
            namespace: "sys".into(),
            cache_dir: "/c".into(),
            image: "i".into(),
            bound: crate::controller::NodeBound {
                selector: [("pool".to_owned(), "m".to_owned())].into(),
                tolerations: None,
            },
            max_entries: crate::cache::DEFAULT_MAX_ENTRIES,
            cache_limit: crate::cache::CacheLimit::Percent(8000),
            scrub_interval: Duration::from_secs(3600),
            scrub_rate: 1 << 20,
            mirrors: Vec::new(),
            run_as_user: None,
        };
        let job = serde_json::to_value(scrub_job(&settings, "n1").unwrap()).unwrap();
        let deployment: ModelDeployment = serde_json::from_value(
            json!({"metadata": {"name": "d", "namespace": "ns"}, "spec": {"modelRef": {"name": "m"}}}),
        )
        .unwrap();
        let cleanup = serde_json::to_value(cleanup_job(&deployment, &settings, "n1").unwrap()).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            container["securityContext"],
            cleanup["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        );
        assert_eq!(pod["securityContext"], json!({"seccompProfile": {"type": "RuntimeDefault"}}), "uid 0 by default");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
        assert_eq!(pod["nodeSelector"], serde_json::Value::Null, "it goes where pulls went");
        let pinned = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
        assert_eq!(pinned["nodeSelectorTerms"][0]["matchFields"][0]["values"], json!(["n1"]));
        let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
        assert_eq!(args[0], "scrub");
        assert!(
            args.windows(2).any(|w| w == ["--rate", "1048576"])
                && args.windows(2).any(|w| w == ["--cache-limit", "80%"])
        );
        assert_eq!(job["spec"]["backoffLimit"], 0, "a finding is not retried");
        assert_eq!(job["metadata"]["labels"][ROLE_LABEL], "scrub");
        assert_eq!(job["metadata"]["annotations"][NODE_ANNOTATION], "n1");
        assert_eq!(
            job["metadata"]["name"],
            serde_json::to_value(scrub_job(&settings, "n1").unwrap()).unwrap()["metadata"]["name"]
        );
        assert_ne!(
            job["metadata"]["name"],
            serde_json::to_value(scrub_job(&settings, "n2").unwrap()).unwrap()["metadata"]["name"]
        );
        assert_eq!(Role::parse("scrub"), Some(Role::Scrub));
        assert_eq!(Role::parse("other"), None);
        // A non-root uid: every Job's pod runs as it, with its gid for the Secret's files.
        let settings = JobSettings { run_as_user: Some(65532), ..settings };
        let non_root = json!({"seccompProfile": {"type": "RuntimeDefault"}, "runAsUser": 65532, "runAsGroup": 65532,
            "fsGroup": 65532, "runAsNonRoot": true});
        let scrub = serde_json::to_value(scrub_job(&settings, "n1").unwrap()).unwrap();
        let cleanup = serde_json::to_value(cleanup_job(&deployment, &settings, "n1").unwrap()).unwrap();
        for job in [scrub, cleanup] {
            assert_eq!(job["spec"]["template"]["spec"]["securityContext"], non_root);
        }
    }

    #[test]
    fn job_names_are_short_stable_dns_labels() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let long = "a.very.long.deployment.name.that-goes-on-and-on-and-on-for-a-long-time";
        let name = job_name(Role::Pull, "ns", long, "node-1", &digest);
        assert!(name.len() <= 63, "{name}");
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{name}");
        assert_eq!(name, job_name(Role::Pull, "ns", long, "node-1", &digest));
        assert_ne!(name, job_name(Role::Pull, "ns", long, "node-2", &digest));
        assert_ne!(name, job_name(Role::Cleanup, "ns", long, "node-1", &digest));
    }

    #[test]
    fn results_come_from_the_termination_message() {
        let pod = |message: &str, at: i64| -> Pod {
            serde_json::from_value(json!({"status": {"containerStatuses": [{
                "name": "pull", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "message": message,
                    "finishedAt": jiff::Timestamp::from_second(at).unwrap().to_string()}}
            }]}}))
            .unwrap()
        };
        let result = |state: JobState, pods: &[Pod]| with_result(state, outcome(pods), pods);
        let ok = result(
            JobState::Succeeded { started: None, completed: None, bytes: None },
            &[pod(r#"{"digest":"sha256:x","bytesFetched":1234}"#, 5)],
        );
        assert_eq!(ok, JobState::Succeeded { started: None, completed: None, bytes: Some(1234) });
        let failed = result(
            JobState::Failed { started: None, completed: None, message: "BackoffLimitExceeded: x".into() },
            &[
                pod(r#"{"digest":"sha256:x","error":"first"}"#, 1),
                pod(r#"{"digest":"sha256:x","error":"401 unauthorized"}"#, 9),
            ],
        );
        assert_eq!(failed, JobState::Failed { started: None, completed: None, message: "401 unauthorized".into() });
        let full = [pod(
            r#"{"digest":"sha256:x","error":"InsufficientStorage: needs 1.0 KiB, 0 B free after evicting 0 B","reason":"InsufficientStorage","needs":1024}"#,
            3,
        )];
        assert_eq!(outcome(&full).and_then(|o| o.needs), Some(1024));
        let logs = result(
            JobState::Failed { started: None, completed: None, message: "m".into() },
            &[pod("starting\nerror: cannot open cache\n", 1)],
        );
        assert_eq!(
            logs,
            JobState::Failed { started: None, completed: None, message: "error: cannot open cache".into() }
        );
    }
}
