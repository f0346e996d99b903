//! The verification material of a Model (`spec.verify.secretRef`) and the verification step of its
//! reconcile, with a cache of passed verifications: a verified digest is not verified again while
//! the digest, the generation and the material stay the same. Failures are never cached, so a
//! rejected digest is tried again at every interval (signatures are often attached after a push).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::Error;
use super::access::Access;
use crate::api::{Model, VerifyProvider, VerifySpec};
use crate::registry::Inspection;
use crate::verify::{self, Verification, cosign::NamedKey, notation};

/// Keys and certificates from the trust Secret, and a fingerprint of them.
pub struct Trust {
    material: Material,
    fingerprint: u64,
}

enum Material {
    Cosign(Vec<NamedKey>),
    Notation { policies: notation::Policies, stores: notation::TrustStores },
}

const TRUST_POLICY_KEY: &str = "trustpolicy.json";

pub async fn trust_for(client: &Client, spec: &VerifySpec, namespace: &str) -> Result<Trust, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = &spec.secret_ref.name;
    let secret =
        secrets.get_opt(name).await?.ok_or_else(|| Error::SecretNotFound { name: format!("{namespace}/{name}") })?;
    let data = secret.data.unwrap_or_default();
    let mut h = DefaultHasher::new();
    for (k, v) in &data {
        (k, &v.0).hash(&mut h);
    }
    let invalid = |reason: String| Error::InvalidSecret { name: format!("{namespace}/{name}"), reason };
    let material = match spec.provider {
        VerifyProvider::Cosign => {
            let mut keys = Vec::new();
            for (key, value) in data.iter().filter(|(k, _)| k.ends_with(".pub")) {
                let public = verify::PublicKey::from_pem(&value.0).map_err(|e| invalid(format!("key {key}: {e}")))?;
                keys.push(NamedKey { name: key.clone(), key: public });
            }
            if keys.is_empty() {
                return Err(invalid("has no *.pub public key".into()));
            }
            Material::Cosign(keys)
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
    format!("{:?}", spec.provider).hash(&mut h);
    Ok(Trust { material, fingerprint: h.finish() })
}

/// Passed verifications by (repository, digest, generation, material); `verify` says whether its
/// answer came from the cache.
#[derive(Default)]
pub struct Verifications {
    passed: Mutex<HashMap<u64, Verification>>,
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
        let mut h = DefaultHasher::new();
        (&access.repository, digest, model.metadata.generation, trust.fingerprint).hash(&mut h);
        let key = h.finish();
        if let Some(hit) = self.passed.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok((hit.clone(), true));
        }
        let verification = match &trust.material {
            Material::Cosign(keys) => verify::cosign::verify(registry, &access.repository, digest, keys).await?,
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
}
