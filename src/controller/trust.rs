//! The verification material of a Model (`spec.verify.secretRef`) and the verification step of its
//! reconcile, with a cache of passed verifications: a verified digest is not verified again while
//! the digest, the generation and the material stay the same. Failures are never cached, so a
//! rejected digest is tried again at every interval (signatures are often attached after a push).
//!
//! The cache is keyed by the whole (repository, digest, generation, trust) tuple, the trust being
//! the provider and every byte of the Secret's data: a fingerprint would let two different trusts
//! (or digests) collide and one stand for the other. A hit must also name the digest asked for.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::Error;
use super::access::Access;
use crate::api::{Model, VerifyProvider, VerifySpec};
use crate::registry::{Inspection, Repository};
use crate::verify::keyless::{Identity, KeylessTrust, Matcher};
use crate::verify::sigstore::trusted_root::TrustedRoot;
use crate::verify::{self, Verification, cosign::NamedKey, model_signing, notation};

/// Keys and certificates from the trust Secret, and what identifies them.
pub struct Trust {
    material: Material,
    id: TrustId,
}

/// Everything that decides a verification's verdict besides the artifact: the provider, the
/// trust Secret's data, byte for byte (public keys, certificates and policies, nothing secret), and
/// the identities the Model accepts (two Models sharing a Secret may accept different signers).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustId {
    provider: VerifyProvider,
    data: Arc<BTreeMap<String, Vec<u8>>>,
    /// `matchOIDCIdentity` as written: (issuer, subject) patterns.
    identities: Vec<(String, String)>,
}

/// A passed verification's key: the whole tuple, compared field by field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PassKey {
    repository: Repository,
    digest: String,
    generation: Option<i64>,
    trust: TrustId,
}

enum Material {
    /// Keys (any may verify) and, with a trusted root, keyless signatures.
    Cosign(Vec<NamedKey>, Option<Box<KeylessTrust>>),
    Notation {
        policies: notation::Policies,
        stores: notation::TrustStores,
    },
    ModelSigning(model_signing::Trust),
}

const TRUST_POLICY_KEY: &str = "trustpolicy.json";
const TRUSTED_ROOT_KEY: &str = "trusted_root.json";

/// The keyless trust of a cosign Secret: its `trusted_root.json` and the spec's identities.
fn keyless(
    spec: &VerifySpec,
    root: Option<&[u8]>,
    invalid: impl Fn(String) -> Error,
) -> Result<Option<Box<KeylessTrust>>, Error> {
    let Some(root) = root else {
        if spec.match_oidc_identity.is_empty() {
            return Ok(None);
        }
        return Err(invalid(format!("has no {TRUSTED_ROOT_KEY}, which matchOIDCIdentity needs")));
    };
    let root = TrustedRoot::parse(root).map_err(|e| invalid(format!("key {TRUSTED_ROOT_KEY}: {e}")))?;
    let mut identities = Vec::new();
    for (i, id) in spec.match_oidc_identity.iter().enumerate() {
        let compile = |field: &str, pattern: &str| {
            Matcher::regexp(pattern)
                .map_err(|e| verify::Error::InvalidTrust(format!("spec.verify.matchOIDCIdentity[{i}].{field}: {e}")))
        };
        identities.push(Identity { issuer: compile("issuer", &id.issuer)?, subject: compile("subject", &id.subject)? });
    }
    let trust = KeylessTrust::new(root, identities).map_err(|e| {
        verify::Error::InvalidTrust(format!("{TRUSTED_ROOT_KEY} needs spec.verify.matchOIDCIdentity: {e}"))
    })?;
    Ok(Some(Box::new(trust)))
}

pub async fn trust_for(client: &Client, spec: &VerifySpec, namespace: &str) -> Result<Trust, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = &spec.secret_ref.name;
    let secret =
        secrets.get_opt(name).await?.ok_or_else(|| Error::SecretNotFound { name: format!("{namespace}/{name}") })?;
    let data = secret.data.unwrap_or_default();
    let invalid = |reason: String| Error::InvalidSecret { name: format!("{namespace}/{name}"), reason };
    let material = match spec.provider {
        VerifyProvider::Cosign => {
            let keys = public_keys(&data).map_err(invalid)?;
            let keyless = keyless(spec, data.get(TRUSTED_ROOT_KEY).map(|v| v.0.as_slice()), invalid)?;
            if keys.is_empty() && keyless.is_none() {
                return Err(invalid(format!("has no *.pub public key nor {TRUSTED_ROOT_KEY}")));
            }
            Material::Cosign(keys, keyless)
        }
        VerifyProvider::ModelSigning => {
            let pems = data.iter().filter(|(k, _)| k.ends_with(".pem") || k.ends_with(".crt"));
            let pems: Vec<(&String, &[u8])> = pems.map(|(k, v)| (k, v.0.as_slice())).collect();
            let keyless = keyless(spec, data.get(TRUSTED_ROOT_KEY).map(|v| v.0.as_slice()), invalid)?;
            let keys = public_keys(&data).map_err(invalid)?;
            Material::ModelSigning(model_signing_trust(keys, &pems, keyless).map_err(invalid)?)
        }
        VerifyProvider::Notation => {
            let policy = data.get(TRUST_POLICY_KEY).ok_or_else(|| invalid(format!("has no {TRUST_POLICY_KEY} key")))?;
            let policies = notation::Policies::parse(&policy.0).map_err(|e| invalid(e.to_string()))?;
            let mut stores = notation::TrustStores::default();
            let mut any = false;
            for (key, value) in &data {
                any |= stores.add_key(key, &value.0).map_err(|e| invalid(e.to_string()))?;
            }
            if !any {
                return Err(invalid("has no trust-store certificates (keys like ca.<store>.pem)".into()));
            }
            Material::Notation { policies, stores }
        }
    };
    let data = data.into_iter().map(|(k, v)| (k, v.0)).collect();
    let identities = spec.match_oidc_identity.iter().map(|i| (i.issuer.clone(), i.subject.clone())).collect();
    Ok(Trust { material, id: TrustId { provider: spec.provider, data: Arc::new(data), identities } })
}

/// The `*.pub` keys of a Secret's data, named by their keys.
fn public_keys(data: &BTreeMap<String, k8s_openapi::ByteString>) -> Result<Vec<NamedKey>, String> {
    let mut keys = Vec::new();
    for (key, value) in data.iter().filter(|(k, _)| k.ends_with(".pub")) {
        let public = verify::PublicKey::from_pem(&value.0).map_err(|e| format!("key {key}: {e}"))?;
        keys.push(NamedKey { name: key.clone(), key: public });
    }
    Ok(keys)
}

/// Keys, root certificates or a Sigstore trusted root: one kind, so the Secret says plainly which
/// signatures it trusts.
pub fn model_signing_trust(
    keys: Vec<NamedKey>,
    pems: &[(&String, &[u8])],
    keyless: Option<Box<KeylessTrust>>,
) -> Result<model_signing::Trust, String> {
    let mut roots = Vec::new();
    for (key, pem) in pems {
        roots.extend(verify::sigstore::Cert::from_pem_bundle(pem).map_err(|e| format!("certificate {key}: {e}"))?);
    }
    match (keys.is_empty(), roots.is_empty(), keyless) {
        (false, true, None) => Ok(model_signing::Trust::Keys(keys)),
        (true, false, None) => Ok(model_signing::Trust::Roots(roots)),
        (true, true, Some(keyless)) => Ok(model_signing::Trust::Keyless(keyless)),
        (true, true, None) => {
            Err(format!("has no *.pub public key, *.pem/*.crt root certificate nor {TRUSTED_ROOT_KEY}"))
        }
        _ => Err(format!("holds more than one of *.pub keys, certificates and {TRUSTED_ROOT_KEY}: give one kind")),
    }
}

/// Passed verifications by (repository, digest, generation, trust and identities); `verify` says whether its
/// answer came from the cache.
#[derive(Default)]
pub struct Verifications {
    passed: Mutex<HashMap<PassKey, Verification>>,
}

const MAX_CACHED: usize = 1024;

impl Verifications {
    pub async fn verify(
        &self,
        registry: &crate::registry::Registry,
        access: &Access,
        model: &Model,
        trust: &Trust,
        inspection: &Inspection,
    ) -> Result<(Verification, bool), Error> {
        let digest = inspection.digest.as_str();
        let key = PassKey {
            repository: access.repository.clone(),
            digest: digest.to_owned(),
            generation: model.metadata.generation,
            trust: trust.id.clone(),
        };
        if let Some(hit) = self.hit(&key) {
            return Ok((hit, true));
        }
        let verification = match &trust.material {
            Material::Cosign(keys, None) => verify::cosign::verify(registry, &access.repository, digest, keys).await?,
            Material::Cosign(keys, Some(keyless)) => {
                // A key signature, when keys are given, else keyless; the keyless verdict is the
                // one reported when neither passes (what a keyless user needs to read).
                let by_key = match keys.is_empty() {
                    true => None,
                    false => verify::cosign::verify(registry, &access.repository, digest, keys).await.ok(),
                };
                match by_key {
                    Some(v) => v,
                    None => verify::keyless::verify(registry, &access.repository, digest, keyless).await?,
                }
            }
            Material::ModelSigning(trust) => {
                let manifest = &inspection.manifest;
                model_signing::verify(registry, &access.repository, digest, manifest, trust).await?.verification
            }
            Material::Notation { policies, stores } => {
                let media_type = inspection.manifest.media_type.as_deref().unwrap_or(crate::modelpack::OCI_MANIFEST);
                let target = notation::Target { digest, media_type, size: inspection.manifest_size as i64 };
                let now = jiff::Timestamp::now().as_second();
                notation::verify(registry, &access.repository, &target, policies, stores, now).await?
            }
        };
        let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        if passed.len() >= MAX_CACHED {
            passed.clear();
        }
        passed.insert(key, verification.clone());
        Ok((verification, false))
    }

    /// A cached pass for exactly this key, and only if it is a pass of the digest asked for.
    fn hit(&self, key: &PassKey) -> Option<Verification> {
        let passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        passed.get(key).filter(|v| v.digest == key.digest).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    fn trust(provider: VerifyProvider, pem: &[u8]) -> TrustId {
        let data = Arc::new(BTreeMap::from([("release.pub".to_owned(), pem.to_vec())]));
        TrustId { provider, data, identities: vec![("^https://issuer$".into(), "^https://github.com/acme/".into())] }
    }

    fn key(repo: &str, d: &str, generation: i64, trust: TrustId) -> PassKey {
        let repository = Repository { registry: "r.example".into(), repository: repo.into() };
        PassKey { repository, digest: d.into(), generation: Some(generation), trust }
    }

    fn pass(d: &str) -> Verification {
        Verification {
            provider: "cosign",
            digest: d.into(),
            identity: "release.pub".into(),
            signature_digest: digest('s'),
            warnings: Vec::new(),
            enforced: true,
            timestamp: None,
            files: None,
            anchor: None,
        }
    }

    #[test]
    fn a_pass_is_reused_only_for_the_same_whole_tuple() {
        let cache = Verifications::default();
        let a = trust(VerifyProvider::Cosign, b"key A");
        let stored = key("m", &digest('a'), 1, a.clone());
        cache.passed.lock().unwrap().insert(stored.clone(), pass(&digest('a')));
        assert!(cache.hit(&stored).is_some());
        let others = [
            key("other", &digest('a'), 1, a.clone()),
            key("m", &digest('b'), 1, a.clone()),
            key("m", &digest('a'), 2, a.clone()),
            key("m", &digest('a'), 1, trust(VerifyProvider::Cosign, b"key B")),
            key("m", &digest('a'), 1, trust(VerifyProvider::Cosign, b"key A ")),
            key("m", &digest('a'), 1, trust(VerifyProvider::Notation, b"key A")),
            // Another Model on the same Secret accepting other signers (found on the bed: a pass for
            // one identity was reused for a Model accepting only another).
            key(
                "m",
                &digest('a'),
                1,
                TrustId {
                    identities: vec![("^https://issuer$".into(), "^https://github.com/other/".into())],
                    ..a.clone()
                },
            ),
            key("m", &digest('a'), 1, TrustId { identities: Vec::new(), ..a.clone() }),
        ];
        for other in others {
            assert!(cache.hit(&other).is_none(), "{other:?} reused a pass of {stored:?}");
        }
    }

    #[test]
    fn keyless_trust_needs_a_root_that_parses_and_expressions_that_compile() {
        let root = include_bytes!("../verify/keyless/testdata/trusted_root.json");
        let spec = |ids: &[(&str, &str)]| VerifySpec {
            provider: VerifyProvider::Cosign,
            secret_ref: crate::api::LocalObjectReference { name: "sigstore".into() },
            match_oidc_identity: ids
                .iter()
                .map(|(i, s)| crate::api::OidcIdentity { issuer: (*i).into(), subject: (*s).into() })
                .collect(),
        };
        let invalid = |reason: String| Error::InvalidSecret { name: "ns/sigstore".into(), reason };
        let good = spec(&[("^https://token\\.actions\\.githubusercontent\\.com$", "^https://github\\.com/acme/")]);
        assert!(keyless(&good, Some(root), invalid).unwrap().is_some());
        assert!(keyless(&spec(&[]), None, invalid).unwrap().is_none(), "keys only");
        let message = |r: Result<Option<Box<KeylessTrust>>, Error>| r.expect_err("refused").to_string();
        let m = message(keyless(&good, Some(b"{}"), invalid));
        assert!(m.contains("ns/sigstore") && m.contains("trusted_root.json"), "{m}");
        let m = message(keyless(&good, None, invalid));
        assert!(m.contains("has no trusted_root.json"), "{m}");
        let bad = spec(&[(".*", ".*"), ("(unclosed", ".*")]);
        match keyless(&bad, Some(root), invalid) {
            Err(Error::Verify(verify::Error::InvalidTrust(m))) => {
                assert!(m.contains("matchOIDCIdentity[1].issuer"), "{m}")
            }
            other => panic!("{:?}", other.map(|t| t.is_some())),
        }
        assert!(matches!(keyless(&spec(&[]), Some(root), invalid), Err(Error::Verify(verify::Error::InvalidTrust(_)))));
    }

    /// A modelSigning Secret holds one kind of trust: keys, root certificates or a trusted root.
    #[test]
    fn model_signing_trust_is_of_one_kind() {
        let pem = include_bytes!("../verify/sigstore/testdata/p256.pub");
        let key = || vec![NamedKey { name: "a.pub".into(), key: verify::PublicKey::from_pem(pem).unwrap() }];
        let (name, root_pem) = ("root.pem".to_owned(), &include_bytes!("../verify/sigstore/testdata/root.pem")[..]);
        let roots = [(&name, root_pem)];
        let root = include_bytes!("../verify/sigstore/testdata/keyless_root.json");
        let id = crate::api::OidcIdentity { issuer: "^https://issuer$".into(), subject: "^me$".into() };
        let spec = VerifySpec {
            provider: VerifyProvider::ModelSigning,
            secret_ref: crate::api::LocalObjectReference { name: "s".into() },
            match_oidc_identity: vec![id],
        };
        let invalid = |reason: String| Error::InvalidSecret { name: "ns/s".into(), reason };
        let keyless = || keyless(&spec, Some(root), invalid).unwrap();
        assert!(matches!(model_signing_trust(key(), &[], None), Ok(model_signing::Trust::Keys(_))));
        assert!(matches!(model_signing_trust(vec![], &roots, None), Ok(model_signing::Trust::Roots(_))));
        assert!(matches!(model_signing_trust(vec![], &[], keyless()), Ok(model_signing::Trust::Keyless(_))));
        for mixed in [
            model_signing_trust(key(), &roots, None),
            model_signing_trust(key(), &[], keyless()),
            model_signing_trust(vec![], &roots, keyless()),
        ] {
            let m = mixed.expect_err("two kinds");
            assert!(m.contains("give one kind"), "{m}");
        }
        let m = model_signing_trust(vec![], &[], None).expect_err("none");
        assert!(m.contains("trusted_root.json"), "{m}");
    }

    #[test]
    fn a_hit_naming_another_digest_is_not_a_pass() {
        let cache = Verifications::default();
        let k = key("m", &digest('a'), 1, trust(VerifyProvider::Cosign, b"key A"));
        cache.passed.lock().unwrap().insert(k.clone(), pass(&digest('b')));
        assert!(cache.hit(&k).is_none());
    }
}
