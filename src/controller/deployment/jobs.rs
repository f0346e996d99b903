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
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pull => "pull",
            Role::Cleanup => "cleanup",
        }
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
    /// `--mirror` of every pull Job.
    pub mirrors: Vec<crate::registry::Mirror>,
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
}

/// The pull Job and, when the registry needs credentials or a CA, the Secret it mounts (named like
/// the Job; the caller makes the Job its owner once both exist).
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
    let mut args = vec![
        "pull".to_owned(),
        format!("{}@{}", pull.repository, pull.digest),
        "--cache-dir".to_owned(),
        settings.cache_dir.clone(),
        "--link".to_owned(),
        format!("deployments/{ns}/{dep}"),
        "--termination-log".to_owned(),
        "/dev/termination-log".to_owned(),
    ];
    for keep in pull.keep {
        args.extend(["--keep".to_owned(), keep.clone()]);
    }
    if pull.options.insecure {
        args.push("--insecure".to_owned());
    }
    if settings.max_entries != crate::cache::DEFAULT_MAX_ENTRIES {
        args.extend(["--max-entries".to_owned(), settings.max_entries.to_string()]);
    }
    for mirror in crate::registry::Mirror::of(&settings.mirrors, &pull.repository.registry) {
        args.extend(["--mirror".to_owned(), mirror.to_string()]);
    }
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
            // Exit 2 is a usage error: retrying cannot help.
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [2]}}
            ]},
            "template": pod_template(deployment, settings, Role::Pull, pull.node, args, mounts, volumes, spec.resources.as_ref()),
        }
    });
    Ok((serde_json::from_value(job)?, secret))
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
    ];
    let mounts = vec![json!({"name": "cache", "mountPath": settings.cache_dir})];
    let job = json!({
        "metadata": metadata(Role::Cleanup, deployment, settings, &name, node, None),
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": CLEANUP_DEADLINE,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
            "template": pod_template(deployment, settings, Role::Cleanup, node, args, mounts, vec![cache_volume(settings)], None),
        }
    });
    serde_json::from_value(job)
}

fn cache_volume(settings: &JobSettings) -> serde_json::Value {
    json!({"name": "cache", "hostPath": {"path": settings.cache_dir, "type": "DirectoryOrCreate"}})
}

#[allow(clippy::too_many_arguments)]
fn pod_template(
    deployment: &ModelDeployment,
    settings: &JobSettings,
    role: Role,
    node: &str,
    args: Vec<String>,
    mounts: Vec<serde_json::Value>,
    volumes: Vec<serde_json::Value>,
    resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
) -> serde_json::Value {
    let ns = deployment.metadata.namespace.as_deref().unwrap_or_default();
    let dep = deployment.metadata.name.as_deref().unwrap_or_default();
    json!({
        "metadata": {"labels": labels(role, ns, dep)},
        "spec": {
            "restartPolicy": "Never",
            // The node's name, not its hostname label: they differ on several clouds. This is how
            // the DaemonSet controller pins pods.
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
            ]}}},
            "tolerations": deployment.spec.tolerations,
            // The operator's bound again, so that a pull Job cannot land outside it even if the node
            // changed since it was selected. Cleanup Jobs go where pulls went, bound or not.
            "nodeSelector": (role == Role::Pull && !settings.bound.selector.is_empty()).then_some(&settings.bound.selector),
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": CONTAINER,
                "image": settings.image,
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

/// Fills in a finished Job's result from the termination message of its last pod: bytes fetched on
/// success, the pull's own error on failure (clearer than the Job's BackoffLimitExceeded).
pub fn with_result(state: JobState, pods: &[Pod]) -> JobState {
    let last = pods.iter().filter_map(terminated).max_by_key(|(at, _)| at.clone()).map(|(_, message)| message);
    let Some(message) = last else { return state };
    let parsed: Option<serde_json::Value> = serde_json::from_str(&message).ok();
    match state {
        JobState::Succeeded { started, completed, .. } => {
            let bytes = parsed.as_ref().and_then(|v| v["bytesFetched"].as_i64());
            JobState::Succeeded { started, completed, bytes }
        }
        JobState::Failed { started, completed, message: job_message } => {
            let error = match parsed.as_ref().and_then(|v| v["error"].as_str()) {
                Some(e) => e.to_owned(),
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
        };
        let selector_of = |job: &Job| job.spec.as_ref()?.template.spec.as_ref()?.node_selector.clone();
        let mut settings = JobSettings {
            namespace: "sys".into(),
            cache_dir: "/c".into(),
            image: "i".into(),
            bound: Default::default(),
            max_entries: crate::cache::DEFAULT_MAX_ENTRIES,
            mirrors: Vec::new(),
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
        settings.max_entries = 250_000;
        let raised = args_of(&pull_job(&deployment, &settings, &pull).unwrap().0).unwrap();
        assert!(raised.windows(2).any(|w| w == ["--max-entries", "250000"]), "{raised:?}");
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
        let ok = with_result(
            JobState::Succeeded { started: None, completed: None, bytes: None },
            &[pod(r#"{"digest":"sha256:x","bytesFetched":1234}"#, 5)],
        );
        assert_eq!(ok, JobState::Succeeded { started: None, completed: None, bytes: Some(1234) });
        let failed = with_result(
            JobState::Failed { started: None, completed: None, message: "BackoffLimitExceeded: x".into() },
            &[
                pod(r#"{"digest":"sha256:x","error":"first"}"#, 1),
                pod(r#"{"digest":"sha256:x","error":"401 unauthorized"}"#, 9),
            ],
        );
        assert_eq!(failed, JobState::Failed { started: None, completed: None, message: "401 unauthorized".into() });
        let logs = with_result(
            JobState::Failed { started: None, completed: None, message: "m".into() },
            &[pod("starting\nerror: cannot open cache\n", 1)],
        );
        assert_eq!(
            logs,
            JobState::Failed { started: None, completed: None, message: "error: cannot open cache".into() }
        );
    }
}
