//! `Model`: a ModelPack repository and the version of it the cluster should use.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Condition;
use super::duration;
use crate::modelpack::{Family, ModelDescriptor, ModelProperties};

/// A ModelPack model stored in an OCI registry, resolved to a digest, inspected and (optionally)
/// signature-verified by the operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "modelpack.dev",
    version = "v1alpha1",
    kind = "Model",
    doc = "A ModelPack model in an OCI registry, resolved to a digest, inspected and signature-verified.",
    namespaced,
    status = "ModelStatus",
    shortname = "mdl",
    category = "modelpack",
    printcolumn = r#"{"name":"Repository","type":"string","jsonPath":".spec.repository"}"#,
    printcolumn = r#"{"name":"Ref","type":"string","jsonPath":".status.ref"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.resolved.shortDigest"}"#,
    printcolumn = r#"{"name":"Verified","type":"string","jsonPath":".status.conditions[?(@.type==\"Verified\")].status"}"#,
    printcolumn = r#"{"name":"Compliant","type":"string","jsonPath":".status.conditions[?(@.type==\"Compliant\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// OCI repository holding the ModelPack, without tag or digest, e.g.
    /// `registry.example.com/team/llama3`. Docker Hub names may be short (`team/model`).
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(
        validation = Rule::new("!self.contains('@')").message("repository must not contain a digest; set ref.digest instead"),
        validation = Rule::new("!self.matches('^(.*/)?[^/]*:[^/]*$')").message("repository must not contain a tag; set ref.tag instead"),
        validation = Rule::new(REPOSITORY_RULE).message("repository must be a valid OCI repository name such as registry.example.com/team/model (lowercase path components)")
    )]
    pub repository: String,

    /// Which version to use: exactly one of `tag`, `semver` or `digest` (default: tag `latest`).
    #[serde(default, rename = "ref")]
    #[schemars(default = "default_ref")]
    pub reference: ModelReference,

    /// How often to check the registry for a new version (Go duration, at least 10s; default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(duration::cel_rule(">= duration('10s')")).message("interval must be a duration of at least 10s, such as 30s, 5m or 1h"))]
    pub interval: Option<String>,

    /// Timeout for each registry operation (Go duration; default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(duration::cel_rule("> duration('0s')")).message("timeout must be a positive duration such as 30s or 2m"))]
    pub timeout: Option<String>,

    /// Secret of type kubernetes.io/dockerconfigjson with credentials for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,

    /// Use the imagePullSecrets of this ServiceAccount (in the Model's namespace) as credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Talk plain HTTP to the registry (test and air-gapped registries only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,

    /// Secret whose `ca.crt` holds the PEM CA bundle that verifies the registry's TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<LocalObjectReference>,

    /// Verify signatures before a resolved digest is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,

    /// Stop resolving new versions; the last accepted version stays in status.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

// An OCI reference name: optional registry host[:port], then lowercase path components.
const REPOSITORY_RULE: &str = "self.matches('^((([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(\\\\.([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\\\\[[0-9a-fA-F:]+\\\\])(:[0-9]+)?/)?[a-z0-9]+((\\\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\\\.|_|__|-+)[a-z0-9]+)*)*$')";
const DIGEST_RULE: &str = "self.matches('^sha256:[a-f0-9]{64}$')";

fn default_ref() -> ModelReference {
    ModelReference { tag: Some("latest".into()), ..Default::default() }
}

/// Which version of the repository to use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.tag), has(self.semver), has(self.digest)].filter(x, x).size() == 1").message("exactly one of ref.tag, ref.semver or ref.digest must be set"),
    validation = Rule::new("!has(self.semverFilter) || has(self.semver)").message("ref.semverFilter is only allowed together with ref.semver")
)]
pub struct ModelReference {
    /// A tag, e.g. `v1.2` or `prod`; moving the tag in the registry moves the Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$')").message("ref.tag must be a valid OCI tag"))]
    pub tag: Option<String>,

    /// A semver range (e.g. `>=1.2.0 <2.0.0`, `^1.4`); the highest matching tag is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub semver: Option<String>,

    /// Regular expression a tag must match to be considered by `semver` (e.g. `^v?[0-9.]+-gguf$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub semver_filter: Option<String>,

    /// A manifest digest `sha256:<64 hex>`: pins the exact version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 71))]
    #[x_kube(validation = Rule::new(DIGEST_RULE).message("ref.digest must match sha256:[a-f0-9]{64}"))]
    pub digest: Option<String>,
}

/// Reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Signature verification settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// Signature scheme: `notation` (Notary Project), `cosign` (key-based) or `modelSigning`
    /// (OpenSSF model signing, every file of the model signed).
    pub provider: VerifyProvider,
    /// notation: a Secret with `trustpolicy.json` and trust-store certificates under keys
    /// `<ca|signingAuthority|tsa>.<store>.pem` (or `.crt`). cosign: a Secret whose `*.pub` keys may
    /// each verify, and/or whose `trusted_root.json` (a Sigstore trusted root: Fulcio CAs, Rekor
    /// logs, timestamp authorities) verifies keyless signatures of the `matchOIDCIdentity`
    /// identities, offline.
    /// modelSigning: `*.pub` public keys (`model_signing sign key`), root certificates under
    /// `*.pem`/`*.crt` keys (`model_signing sign certificate`), or a `trusted_root.json` with
    /// `matchOIDCIdentity` (`model_signing sign sigstore`, keyless): one of the three.
    pub secret_ref: LocalObjectReference,
    /// Keyless (cosign or modelSigning): the identities accepted, as Flux writes them; a signing
    /// certificate must match one entry's issuer and subject. Required with a `trusted_root.json`.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "matchOIDCIdentity")]
    #[schemars(length(max = 16))]
    pub match_oidc_identity: Vec<OidcIdentity>,
}

/// An accepted keyless signer: regular expressions (RE2 syntax, unanchored: write `^…$` for an
/// exact match) for the certificate's OIDC issuer and subject (its email, URI or username SAN).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct OidcIdentity {
    /// The OIDC issuer, e.g. `^https://token\.actions\.githubusercontent\.com$`.
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: String,
    /// The subject, e.g. `^https://github\.com/acme/models/\.github/workflows/release\.yml@refs/heads/main$`.
    #[schemars(length(min = 1, max = 1024))]
    pub subject: String,
}

/// Signature scheme.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyProvider {
    Notation,
    Cosign,
    /// OpenSSF model signing (`model_signing sign`), attached as a Sigstore-bundle referrer.
    #[serde(rename = "modelSigning")]
    ModelSigning,
}

impl VerifyProvider {
    /// The name used in metrics and messages (the serialised value).
    pub const fn as_str(self) -> &'static str {
        match self {
            VerifyProvider::Notation => "notation",
            VerifyProvider::Cosign => "cosign",
            VerifyProvider::ModelSigning => "modelSigning",
        }
    }
}

/// Observed state of a Model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (always), Reconciling and Stalled (only while True), Verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec's ref in one line (`tag latest`, `semver ^1.2`, `digest sha256:…`), for display.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
    pub reference: Option<String>,
    /// The digest the ref currently resolves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Resolved>,
    /// The digest deployments use: the resolved one once it passed every gate (verification), or
    /// the one accepted before while a newer digest does not pass; absent when none is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<Accepted>,
    /// The newest digest whose signature passed verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// The digest that was verified and no longer verifies under the trust in force (a key removed,
    /// a policy tightened, the provider changed): nothing is accepted until a digest verifies again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revoked>,
    /// What the resolved artifact is, from its manifest and ModelPack config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Previously resolved digests, newest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// The rules of ModelPolicies the resolved digest fails (Enforce and Audit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<super::Violation>,
}

/// A resolution of the ref to a digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// Manifest digest, `sha256:…`.
    pub digest: String,
    /// First 12 hex characters of the digest, for display.
    pub short_digest: String,
    /// The tag the digest was found under (absent for digest refs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `<tag>@sha256:…` (or the digest alone).
    pub revision: String,
    /// When this digest was first resolved.
    pub resolved_at: Time,
}

/// The digest deployments use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Manifest digest, `sha256:…`.
    pub digest: String,
    /// First 12 hex characters of the digest, for display.
    pub short_digest: String,
    /// The tag it was resolved under (absent for digest refs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// modelSigning: the model-signing referrer this digest was verified under, which every pull
    /// Job holds the extracted files to (kept with the digest: `verified` may move on to a newer
    /// digest that a policy then refuses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When it was first accepted.
    pub accepted_at: Time,
}

/// A digest that passed signature verification.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    /// Manifest digest, `sha256:…`.
    pub digest: String,
    /// First 12 hex characters of the digest, for display.
    pub short_digest: String,
    /// The provider that verified it.
    pub provider: VerifyProvider,
    /// Who signed it: the signing certificate's subject (notation, modelSigning with certificates)
    /// or the key's name (cosign, modelSigning with keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The RFC 3161 timestamp countersignature that proved when it was signed (notation with a
    /// `tsa` trust store), when one was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<VerifiedTimestamp>,
    /// modelSigning: how many files the signature lists, each bound to the ModelPack (single-file
    /// layers by digest before the pull; files inside archive layers checked on each node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<i64>,
    /// The digest of the signature manifest (referrer) that verified; for modelSigning, what pull
    /// Jobs hold the extracted files to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// `sha256:<hex>` of what the trust rests on: the public key that verified (its
    /// SubjectPublicKeyInfo DER) or the trusted certificate the chain reached (keyless: the Fulcio
    /// root). The identity is only as good as this: a policy that requires a signer pins it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// When verification passed.
    pub verified_at: Time,
}

/// A verified RFC 3161 timestamp countersignature.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedTimestamp {
    /// The time the Time Stamping Authority vouches for (its genTime, RFC 3339).
    pub time: String,
    /// The TSA certificate's subject.
    pub authority: String,
}

/// A verified digest whose trust was revoked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    /// Manifest digest, `sha256:…`.
    pub digest: String,
    /// First 12 hex characters of the digest, for display.
    pub short_digest: String,
    /// Why it no longer verifies.
    pub message: String,
    /// When the revocation was first seen.
    pub revoked_at: Time,
}

/// The resolved artifact, as its manifest and ModelPack config describe it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Media-type family: `cncf` (current) or `cnai` (legacy).
    pub family: Family,
    /// The manifest's artifactType, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Digest of the ModelPack config blob.
    pub config_digest: String,
    /// Total size in bytes of config and layers.
    pub size: i64,
    /// Number of layers (files or archives).
    pub layers: i64,
    /// Who made the model and where it comes from.
    #[serde(default)]
    pub descriptor: ModelDescriptor,
    /// Architecture, format, size, precision, capabilities.
    #[serde(default)]
    pub config: ModelProperties,
    /// Selected manifest annotations (e.g. OCI created/source/revision).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The Modelfile modctl recorded when it built the artifact (provenance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modelfile: Option<String>,
    /// What the weights hold, summed from each file's headers read by range requests: formats,
    /// parameters, whether a pickle imports a denied callable, the worst pickle verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<crate::modelpack::contents::Weights>,
}

/// A digest the Model resolved to before.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// Manifest digest.
    pub digest: String,
    /// The tag it was resolved from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// When the operator first saw this digest.
    pub first_seen: Time,
}
