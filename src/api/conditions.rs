//! kstatus-compatible conditions: what `kubectl wait`, Argo CD and Flux read. `Ready` is always
//! present; `Reconciling` and `Stalled` are present only while True (kstatus "abnormal-true"
//! polarity); every condition carries the generation it describes. The verdict itself is the real
//! library's: the end-to-end tests judge every status with sigs.k8s.io/cli-utils' kstatus
//! (e2e/tools/kstatus), never with a re-implementation.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const VERIFIED: &str = "Verified";
pub const DRIFTED: &str = "Drifted";
/// Whether the resolved digest passes every ModelPolicy that selects the Model (absent when none
/// does).
pub const COMPLIANT: &str = "Compliant";
/// Whether the workloads of `spec.workloads` carry the deployed version and rolled it out.
pub const WORKLOADS_UPDATED: &str = "WorkloadsUpdated";

/// Declares [`Reason`]: each variant's name is the reason written to conditions, drifts and
/// events, so a reason is never spelled twice.
macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Every reason a condition, a drift or an event of this operator carries.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason { $($(#[$doc])* $name,)* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            pub const fn as_str(self) -> &'static str {
                match self { $(Reason::$name => stringify!($name),)* }
            }

            /// The reason named `name`, as read back from a stored status.
            pub fn parse(name: &str) -> Option<Reason> {
                Self::ALL.iter().copied().find(|r| r.as_str() == name)
            }
        }
    };
}

reasons! {
    // Model (Ready; Verified).
    /// Resolved, inspected and, when asked, verified and compliant.
    Succeeded,
    AuthenticationFailed,
    RegistryUnavailable,
    RegistryTimeout,
    RegistryError,
    DigestMismatch,
    ArtifactNotFound,
    NoMatchingTag,
    NotAModelPack,
    InvalidModelPack,
    ArtifactTooLarge,
    InvalidSecret,
    #[allow(clippy::upper_case_acronyms)]
    InvalidCA,
    InvalidTokenRealm,
    /// The registry, a redirect or a name's DNS answer pointed at a link-local or cloud metadata
    /// address; nothing was sent there.
    ForbiddenAddress,
    InvalidReference,
    SecretNotFound,
    ServiceAccountNotFound,
    /// An API call of the reconcile failed; retried.
    ReconcileError,
    SignatureRejected,
    InvalidTrust,
    /// The digest a verifying Model accepted no longer verifies under the trust in force (Model,
    /// ModelDeployment).
    TrustRevoked,
    /// Verified: the signature verified under an enforcing level (also the event).
    Verified,
    /// Verified: usable under the audit level, not verified.
    AuditOnly,
    /// Event: the reference resolves to a new digest.
    NewDigest,
    // ModelDeployment (Ready, Drifted, events).
    Deployed,
    InSync,
    NodeJoined,
    NewVersionPending,
    NodesNotReady,
    NoNodesSelected,
    PullFailed,
    Suspended,
    /// A verifying Model has no verified digest, or a pin is not the verified one.
    VerificationFailed,
    /// A deployment tolerates a taint the operator's node bound does not allow.
    TolerationNotAllowed,
    ModelNotFound,
    ModelNotReady,
    ModelStalled,
    /// The Model's registry access (Secret, ServiceAccount) cannot be read.
    RegistryAccess,
    /// Event: the desired version changed.
    NewVersion,
    /// Event: a cleanup Job failed.
    CleanupFailed,
    /// Event (Warning): a pull Job found a pickle importing a denied callable in an archive layer.
    UnsafeArchivePickle,
    /// WorkloadsUpdated: every workload runs the deployed version (True).
    RolledOut,
    /// WorkloadsUpdated: a workload was handed the version and its pods are not all updated and
    /// ready yet (Argo CD: Progressing).
    RollingOut,
    /// WorkloadsUpdated: nothing is handed over now (nodes pulling, version not accepted, suspended).
    HandOverWaiting,
    /// WorkloadsUpdated and event: a listed workload does not exist.
    WorkloadNotFound,
    /// WorkloadsUpdated and event: `imageVolume` names no volume with an `image` source.
    ImageVolumeNotFound,
    /// WorkloadsUpdated and event: pods of the handed-over version run on a node whose runtime
    /// mounts a ModelPack artifact as an empty directory (containerd mounts only images).
    ImageVolumeNotMounted,
    /// WorkloadsUpdated and event: pods of the handed-over version cannot start (image pull,
    /// mount, container creation or crash loop; the runtime's reason and message).
    PodsFailing,
    // ModelPolicy (Model Compliant; Ready/Stalled of a Model and its ModelDeployments; ModelPolicy Ready).
    /// Compliant False, and Ready/Stalled of a Model (Enforce) and of its ModelDeployments: the
    /// resolved digest fails a ModelPolicy rule; the message names the policy and the rule.
    PolicyViolation,
    /// Compliant True: every selecting policy passed.
    PoliciesPassed,
    /// ModelPolicy Ready True: every rule compiled.
    RulesCompiled,
    /// ModelPolicy Ready False and Stalled: a rule or a selector is invalid (the compiler's message).
    InvalidPolicy,
    /// Event: a workload was handed a version.
    WorkloadUpdated,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_owned()
    }
}

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One aspect of an object's current state (the shape of metav1.Condition).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type: Ready, Reconciling, Stalled, Verified or Drifted.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// The .metadata.generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed.
    pub last_transition_time: Time,
}

/// What a reconcile concluded, from which the kstatus conditions are derived in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub ready: ConditionStatus,
    pub reason: Reason,
    pub message: String,
    /// Work still in progress (InProgress for kstatus).
    pub reconciling: bool,
    /// Failure that retrying cannot fix (Failed for kstatus).
    pub stalled: bool,
}

impl Observation {
    pub fn ready(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(ConditionStatus::True, reason, message)
    }

    pub fn not_ready(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(ConditionStatus::False, reason, message)
    }

    pub fn progressing(reason: Reason, message: impl Into<String>) -> Self {
        Self { reconciling: true, ..Self::new(ConditionStatus::Unknown, reason, message) }
    }

    pub fn stalled(reason: Reason, message: impl Into<String>) -> Self {
        Self { stalled: true, ..Self::new(ConditionStatus::False, reason, message) }
    }

    fn new(ready: ConditionStatus, reason: Reason, message: impl Into<String>) -> Self {
        Self { ready, reason, message: one_line(message.into()), reconciling: false, stalled: false }
    }
}

/// Messages carry text from outside (registries, manifests): one line of at most
/// [`MAX_MESSAGE_CHARS`], so that no answer can bloat a status or break its write.
pub const MAX_MESSAGE_CHARS: usize = 1024;

fn one_line(message: String) -> String {
    if message.len() <= MAX_MESSAGE_CHARS && !message.chars().any(char::is_control) {
        return message;
    }
    let mut out: String =
        message.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_MESSAGE_CHARS).collect();
    if message.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Sets (or replaces) a condition. The transition time moves only when the status changes, so an
/// unchanged observation produces an identical list and no status write.
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

/// Builds a condition for `generation` at `now`.
pub fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.as_str().to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Writes `Ready`, `Reconciling` and `Stalled` from one observation, keeping any other condition
/// (Verified, Drifted) untouched.
pub fn apply(conditions: &mut Vec<Condition>, obs: &Observation, generation: Option<i64>, now: &Time) {
    set(conditions, condition(READY, obs.ready, obs.reason, &obs.message, generation, now));
    for (type_, present) in [(RECONCILING, obs.reconciling), (STALLED, obs.stalled)] {
        if present {
            set(conditions, condition(type_, ConditionStatus::True, obs.reason, &obs.message, generation, now));
        } else {
            remove(conditions, type_);
        }
    }
    // A stable order keeps the serialised status identical across reconciles.
    conditions.sort_by_key(|c| order(&c.type_));
}

fn order(type_: &str) -> (usize, String) {
    let rank = [READY, RECONCILING, STALLED, VERIFIED, DRIFTED].iter().position(|t| *t == type_);
    (rank.unwrap_or(usize::MAX), type_.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_bounded_line() {
        let o = Observation::stalled(Reason::Succeeded, format!("a\nb\x1b[0m{}", "x".repeat(100_000)));
        assert_eq!(o.message.chars().count(), MAX_MESSAGE_CHARS + 1, "cut, with an ellipsis");
        assert!(o.message.starts_with("a b [0m"), "{}", &o.message[..20]);
        assert_eq!(Observation::ready(Reason::Succeeded, "resolved tag v1").message, "resolved tag v1");
    }

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn reconciling_and_stalled_exist_only_while_true() {
        let mut c = vec![];
        apply(&mut c, &Observation::progressing(Reason::NodesNotReady, "resolving tag"), Some(1), &t(1));
        assert_eq!(c.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), [READY, RECONCILING]);
        apply(&mut c, &Observation::stalled(Reason::NotAModelPack, "found an image"), Some(1), &t(2));
        assert_eq!(c.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), [READY, STALLED]);
        apply(&mut c, &Observation::ready(Reason::Succeeded, "resolved"), Some(2), &t(3));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, ConditionStatus::True);
        assert_eq!(c[0].observed_generation, Some(2));
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = vec![];
        apply(&mut c, &Observation::ready(Reason::Succeeded, "a"), Some(1), &t(10));
        let before = c.clone();
        apply(&mut c, &Observation::ready(Reason::Succeeded, "a"), Some(1), &t(20));
        assert_eq!(c, before, "an identical observation must not change the list");
        apply(&mut c, &Observation::ready(Reason::Succeeded, "b"), Some(1), &t(30));
        assert_eq!(c[0].last_transition_time, t(10));
        apply(&mut c, &Observation::not_ready(Reason::PullFailed, "b"), Some(1), &t(40));
        assert_eq!(c[0].last_transition_time, t(40));
    }

    #[test]
    fn other_conditions_are_kept_and_ordered() {
        let mut c = vec![condition(DRIFTED, ConditionStatus::True, Reason::NodeJoined, "", Some(1), &t(1))];
        set(&mut c, condition(VERIFIED, ConditionStatus::True, Reason::Verified, "", Some(1), &t(1)));
        apply(&mut c, &Observation::stalled(Reason::PullFailed, "y"), Some(1), &t(1));
        let types: Vec<_> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, STALLED, VERIFIED, DRIFTED]);
    }
}
