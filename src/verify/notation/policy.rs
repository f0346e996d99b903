//! The Notary Project trust policy document (version 1.0): parsing, the validation rules notation
//! applies, policy selection by repository scope, and what each verification level enforces.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::x509::DistinguishedName;
use crate::verify::Error;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    version: String,
    trust_policies: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicy {
    name: String,
    registry_scopes: Vec<String>,
    signature_verification: RawVerification,
    #[serde(default)]
    trust_stores: Vec<String>,
    #[serde(default)]
    trusted_identities: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawVerification {
    level: String,
    #[serde(default, rename = "override")]
    overrides: BTreeMap<String, String>,
    #[serde(default)]
    verify_timestamp: Option<String>,
}

/// The validation checks a level decides about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    Integrity,
    Authenticity,
    AuthenticTimestamp,
    Expiry,
    Revocation,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Integrity => "integrity",
            Check::Authenticity => "authenticity",
            Check::AuthenticTimestamp => "authenticTimestamp",
            Check::Expiry => "expiry",
            Check::Revocation => "revocation",
        }
    }
}

/// What a failed check does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Enforce,
    Log,
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Strict,
    Permissive,
    Audit,
    Skip,
}

/// When the timestamp countersignature is verified (given a `tsa` trust store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyTimestamp {
    /// Always (the default).
    Always,
    /// Only when a certificate of the signing chain has expired at verification time.
    AfterCertExpiry,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Any,
    Subject(DistinguishedName),
}

/// One validated trust policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub level: Level,
    actions: BTreeMap<Check, Action>,
    /// `(type, name)`, e.g. `("ca", "acme")`.
    pub trust_stores: Vec<(String, String)>,
    pub identities: Vec<Identity>,
    pub verify_timestamp: VerifyTimestamp,
    scopes: Vec<String>,
}

impl Policy {
    pub fn action(&self, check: Check) -> Action {
        self.actions.get(&check).copied().unwrap_or(Action::Skip)
    }
}

/// A validated trust policy document.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    policies: Vec<Policy>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidTrust(format!("trust policy: {}", message.into()))
}

impl TrustPolicy {
    pub fn parse(json: &[u8]) -> Result<TrustPolicy, Error> {
        let doc: Document = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
        if doc.version != "1.0" {
            return Err(invalid(format!("version {:?} is not supported (1.0 is)", doc.version)));
        }
        if doc.trust_policies.is_empty() {
            return Err(invalid("trustPolicies is empty"));
        }
        let mut names = BTreeSet::new();
        let mut scopes_seen = BTreeSet::new();
        let mut wildcard = false;
        let mut policies = Vec::new();
        for raw in doc.trust_policies {
            if raw.name.trim().is_empty() || !names.insert(raw.name.clone()) {
                return Err(invalid(format!("policy names must be non-empty and unique ({:?})", raw.name)));
            }
            let name = &raw.name;
            if raw.registry_scopes.is_empty() {
                return Err(invalid(format!("policy {name}: registryScopes is empty")));
            }
            for scope in &raw.registry_scopes {
                if scope == "*" {
                    if raw.registry_scopes.len() > 1 {
                        return Err(invalid(format!("policy {name}: the wildcard scope * must be the only scope")));
                    }
                    if std::mem::replace(&mut wildcard, true) {
                        return Err(invalid("only one policy may have the wildcard scope *"));
                    }
                } else {
                    validate_scope(name, scope)?;
                    if !scopes_seen.insert(scope.clone()) {
                        return Err(invalid(format!("registry scope {scope} appears in more than one policy")));
                    }
                }
            }
            let level = match raw.signature_verification.level.as_str() {
                "strict" => Level::Strict,
                "permissive" => Level::Permissive,
                "audit" => Level::Audit,
                "skip" => Level::Skip,
                other => return Err(invalid(format!("policy {name}: unknown level {other:?}"))),
            };
            let verify_timestamp = match raw.signature_verification.verify_timestamp.as_deref() {
                None | Some("always") => VerifyTimestamp::Always,
                Some("afterCertExpiry") => VerifyTimestamp::AfterCertExpiry,
                Some(other) => {
                    return Err(invalid(format!(
                        "policy {name}: verifyTimestamp {other:?} is not always or afterCertExpiry"
                    )));
                }
            };
            let mut actions = defaults(level);
            for (check, action) in &raw.signature_verification.overrides {
                if level == Level::Skip {
                    return Err(invalid(format!("policy {name}: level skip takes no override")));
                }
                let check = match check.as_str() {
                    "authenticity" => Check::Authenticity,
                    "authenticTimestamp" => Check::AuthenticTimestamp,
                    "expiry" => Check::Expiry,
                    "revocation" => Check::Revocation,
                    "integrity" => return Err(invalid(format!("policy {name}: integrity cannot be overridden"))),
                    other => return Err(invalid(format!("policy {name}: unknown check {other:?} in override"))),
                };
                let action = match action.as_str() {
                    "enforce" => Action::Enforce,
                    "log" => Action::Log,
                    "skip" => Action::Skip,
                    other => return Err(invalid(format!("policy {name}: unknown action {other:?}"))),
                };
                if check == Check::Authenticity && action == Action::Skip {
                    return Err(invalid(format!("policy {name}: authenticity cannot be skipped")));
                }
                actions.insert(check, action);
            }
            let (trust_stores, identities) = if level == Level::Skip {
                if !raw.trust_stores.is_empty() || !raw.trusted_identities.is_empty() {
                    return Err(invalid(format!(
                        "policy {name}: level skip takes no trustStores or trustedIdentities"
                    )));
                }
                (Vec::new(), Vec::new())
            } else {
                (parse_stores(name, &raw.trust_stores)?, parse_identities(name, &raw.trusted_identities)?)
            };
            policies.push(Policy {
                name: raw.name,
                level,
                actions,
                trust_stores,
                identities,
                verify_timestamp,
                scopes: raw.registry_scopes,
            });
        }
        Ok(TrustPolicy { policies })
    }

    /// The policy for `registry/repository`: an exact scope wins over `*`.
    pub fn select(&self, scope: &str) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.scopes.iter().any(|s| s == scope))
            .or_else(|| self.policies.iter().find(|p| p.scopes.iter().any(|s| s == "*")))
    }
}

fn validate_scope(policy: &str, scope: &str) -> Result<(), Error> {
    let valid = scope.contains('/')
        && !scope.contains(['@', ' ', '*'])
        && !scope.rsplit('/').next().unwrap_or_default().contains(':')
        && !scope.starts_with('/')
        && !scope.ends_with('/');
    if valid {
        Ok(())
    } else {
        Err(invalid(format!("policy {policy}: invalid registry scope {scope:?} (registry/repository or *)")))
    }
}

fn defaults(level: Level) -> BTreeMap<Check, Action> {
    use Action::*;
    let row = match level {
        Level::Strict => [Enforce, Enforce, Enforce, Enforce, Enforce],
        Level::Permissive => [Enforce, Enforce, Log, Log, Log],
        Level::Audit => [Enforce, Log, Log, Log, Log],
        Level::Skip => [Skip, Skip, Skip, Skip, Skip],
    };
    [Check::Integrity, Check::Authenticity, Check::AuthenticTimestamp, Check::Expiry, Check::Revocation]
        .into_iter()
        .zip(row)
        .collect()
}

fn parse_stores(policy: &str, stores: &[String]) -> Result<Vec<(String, String)>, Error> {
    if stores.is_empty() {
        return Err(invalid(format!("policy {policy}: trustStores is empty")));
    }
    let mut out = Vec::new();
    for store in stores {
        let (kind, name) = store
            .split_once(':')
            .ok_or_else(|| invalid(format!("policy {policy}: trust store {store:?} must be <type>:<name>")))?;
        if !matches!(kind, "ca" | "signingAuthority" | "tsa") {
            return Err(invalid(format!(
                "policy {policy}: trust store type {kind:?} is not ca, signingAuthority or tsa"
            )));
        }
        let valid_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_name {
            return Err(invalid(format!("policy {policy}: invalid trust store name {name:?}")));
        }
        out.push((kind.to_owned(), name.to_owned()));
    }
    Ok(out)
}

fn parse_identities(policy: &str, identities: &[String]) -> Result<Vec<Identity>, Error> {
    if identities.is_empty() {
        return Err(invalid(format!("policy {policy}: trustedIdentities is empty")));
    }
    if identities.iter().any(|i| i == "*") {
        if identities.len() > 1 {
            return Err(invalid(format!("policy {policy}: the wildcard identity * must be the only identity")));
        }
        return Ok(vec![Identity::Any]);
    }
    let mut out = Vec::new();
    for identity in identities {
        let (prefix, value) = identity
            .split_once(':')
            .ok_or_else(|| invalid(format!("policy {policy}: identity {identity:?} must be x509.subject: <DN>")))?;
        if prefix.trim() != "x509.subject" {
            return Err(invalid(format!("policy {policy}: identity type {prefix:?} is not supported (x509.subject)")));
        }
        let dn = DistinguishedName::parse(value.trim())
            .map_err(|e| invalid(format!("policy {policy}: identity {identity:?}: {e}")))?;
        for required in ["C", "ST", "O"] {
            if !dn.has(required) {
                return Err(invalid(format!(
                    "policy {policy}: identity {identity:?} lacks {required} (C, ST and O are required)"
                )));
            }
        }
        out.push(Identity::Subject(dn));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(doc: serde_json::Value) -> Result<TrustPolicy, Error> {
        TrustPolicy::parse(&serde_json::to_vec(&doc).unwrap())
    }

    fn policy(name: &str, scopes: serde_json::Value, level: &str) -> serde_json::Value {
        json!({"name": name, "registryScopes": scopes, "signatureVerification": {"level": level},
            "trustStores": ["ca:acme"], "trustedIdentities": ["*"]})
    }

    #[test]
    fn selection_prefers_the_exact_scope() {
        let doc = parse(json!({"version": "1.0", "trustPolicies": [
            policy("all", json!(["*"]), "audit"), policy("prod", json!(["r.example/ml/llama"]), "strict")]}))
        .unwrap();
        assert_eq!(doc.select("r.example/ml/llama").unwrap().name, "prod");
        assert_eq!(doc.select("r.example/ml/other").unwrap().name, "all");
        let strict = doc.select("r.example/ml/llama").unwrap();
        assert_eq!(strict.action(Check::Expiry), Action::Enforce);
        let audit = doc.select("x/y").unwrap();
        assert_eq!((audit.action(Check::Integrity), audit.action(Check::Authenticity)), (Action::Enforce, Action::Log));
    }

    #[test]
    fn invalid_documents_are_refused_with_the_rule() {
        let refused = |doc: serde_json::Value, needle: &str| {
            let err = parse(doc).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} lacks {needle:?}");
        };
        refused(json!({"version": "2.0", "trustPolicies": [policy("a", json!(["*"]), "strict")]}), "version");
        refused(
            json!({"version": "1.0", "trustPolicies": [policy("a", json!(["*"]), "strict"), policy("b", json!(["*"]), "strict")]}),
            "only one policy",
        );
        refused(json!({"version": "1.0", "trustPolicies": [policy("a", json!(["*", "r/x"]), "strict")]}), "only scope");
        refused(
            json!({"version": "1.0", "trustPolicies": [policy("a", json!(["r/x"]), "strict"), policy("b", json!(["r/x"]), "strict")]}),
            "more than one",
        );
        refused(json!({"version": "1.0", "trustPolicies": [policy("a", json!(["*"]), "paranoid")]}), "unknown level");
        let mut p = policy("a", json!(["*"]), "strict");
        p["trustedIdentities"] = json!(["x509.subject: CN=acme, O=acme"]);
        refused(json!({"version": "1.0", "trustPolicies": [p]}), "lacks C");
        let mut p = policy("a", json!(["*"]), "strict");
        p["trustedIdentities"] = json!(["x509.subject: C=US, ST=WA, O=acme+OU=builds"]);
        refused(json!({"version": "1.0", "trustPolicies": [p]}), "multi-valued RDNs");
        let mut p = policy("a", json!(["*"]), "strict");
        p["trustedIdentities"] = json!(["x509.subject: C=US, ST=WA, O=acme, O=evil"]);
        refused(json!({"version": "1.0", "trustPolicies": [p]}), "attribute O appears twice");
        let mut p = policy("a", json!(["*"]), "strict");
        p["signatureVerification"]["override"] = json!({"integrity": "log"});
        refused(json!({"version": "1.0", "trustPolicies": [p]}), "integrity cannot");
        let mut p = policy("a", json!(["*"]), "skip");
        p["trustStores"] = json!(["ca:x"]);
        refused(json!({"version": "1.0", "trustPolicies": [p]}), "skip takes no");
        let mut p = policy("a", json!(["*"]), "strict");
        p["trustStores"] = json!(["acme"]);
        refused(json!({"version": "1.0", "trustPolicies": [p]}), "<type>:<name>");
        let mut p = policy("a", json!(["*"]), "strict");
        p["signatureVerification"]["verifyTimestamp"] = json!("sometimes");
        refused(json!({"version": "1.0", "trustPolicies": [p]}), "verifyTimestamp \"sometimes\"");
    }

    #[test]
    fn verify_timestamp_defaults_to_always() {
        let mut p = policy("a", json!(["*"]), "strict");
        let doc = parse(json!({"version": "1.0", "trustPolicies": [p.clone()]})).unwrap();
        assert_eq!(doc.select("r/x").unwrap().verify_timestamp, VerifyTimestamp::Always);
        p["signatureVerification"]["verifyTimestamp"] = json!("afterCertExpiry");
        let doc = parse(json!({"version": "1.0", "trustPolicies": [p]})).unwrap();
        assert_eq!(doc.select("r/x").unwrap().verify_timestamp, VerifyTimestamp::AfterCertExpiry);
    }
}
