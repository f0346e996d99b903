//! `ModelPolicy`: cluster-scoped CEL rules over a ModelPack's metadata and referrers, evaluated on
//! every resolved digest of the Models it selects before that digest is accepted.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Condition;

/// Compliance rules for ModelPack versions: each rule is a CEL expression that must evaluate to
/// `true` for a digest of a selected Model to be accepted (`Enforce`) or reported (`Audit`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "modelpack.dev",
    version = "v1alpha1",
    kind = "ModelPolicy",
    doc = "CEL rules over ModelPack metadata and referrers, checked before a Model's version is accepted.",
    status = "ModelPolicyStatus",
    shortname = "mpol",
    category = "modelpack",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Rules","type":"integer","jsonPath":".status.compiledRules"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelPolicySpec {
    /// `Enforce` (default): a digest that fails a rule is not accepted. `Audit`: it is accepted and
    /// the violation is reported.
    #[serde(default)]
    pub action: PolicyAction,

    /// Namespaces whose Models this policy applies to (default: every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Label selector on Models (default: every Model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_selector: Option<LabelSelector>,

    /// The rules; every one must evaluate to `true`.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(s, s.name == r.name))").message("rule names must be unique"))]
    pub rules: Vec<PolicyRule>,
}

/// What a failing rule does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum PolicyAction {
    /// The digest is not accepted; deployments keep the previously accepted version.
    #[default]
    Enforce,
    /// The digest is accepted and the violation reported.
    Audit,
}

impl PolicyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyAction::Enforce => "Enforce",
            PolicyAction::Audit => "Audit",
        }
    }
}

/// One CEL rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Name of the rule, unique in the policy (shown in violations).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("rule name must be a lowercase DNS label such as permissive-license"))]
    pub name: String,
    /// CEL expression over repository, digest, tag, descriptor, config, modelfs, annotations,
    /// layers and referrers; the rule passes only when it evaluates to `true`.
    #[schemars(length(min = 1, max = 4096))]
    pub expression: String,
    /// Message shown when the rule fails (default: the expression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// What the operator made of the policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPolicyStatus {
    /// `Ready` (rules compiled), `Stalled` (a rule does not compile: the compiler's message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many rules compiled (all of them when Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled_rules: Option<i64>,
}

/// One failed rule of a policy, as a Model's status lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// The ModelPolicy.
    pub policy: String,
    /// The rule's name.
    pub rule: String,
    /// The rule's message, and the evaluation error when there was one.
    pub message: String,
    /// The policy's action (Audit violations do not block acceptance).
    pub action: PolicyAction,
}
