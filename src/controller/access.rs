//! Registry access for a Model: its credentials (Secret, ServiceAccount imagePullSecrets), CA and
//! transport. The memo that makes identical registry work happen once is `registry_memo.rs`.

use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::{Api, Client};

use super::Error;
use crate::api::Model;
use crate::registry::{Credential, Keyring, Options, Repository};

/// Everything needed to talk to one Model's registry.
pub struct Access {
    pub repository: Repository,
    pub options: Options,
    pub credential: Option<Credential>,
    /// Where the credential came from, for messages (never its contents).
    pub credential_source: Option<String>,
}

const DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";
const LEGACY_DOCKER_CFG: &str = ".dockercfg";
const CA_KEY: &str = "ca.crt";

pub async fn access_for(client: &Client, model: &Model, namespace: &str) -> Result<Access, Error> {
    let spec = &model.spec;
    let repository = Repository::parse(&spec.repository)?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut keyring = Keyring::default();
    let mut sources = Vec::new();
    if let Some(r) = &spec.secret_ref {
        keyring.extend(docker_keyring(&secrets, namespace, &r.name).await?);
        sources.push(format!("secret {namespace}/{}", r.name));
    }
    if let Some(sa_name) = &spec.service_account_name {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let sa = sas
            .get_opt(sa_name)
            .await?
            .ok_or_else(|| Error::ServiceAccountNotFound { name: format!("{namespace}/{sa_name}") })?;
        for pull_secret in sa.image_pull_secrets.unwrap_or_default() {
            keyring.extend(docker_keyring(&secrets, namespace, &pull_secret.name).await?);
            sources
                .push(format!("secret {namespace}/{} (imagePullSecret of serviceaccount {sa_name})", pull_secret.name));
        }
    }
    let ca_pem = match &spec.ca_secret_ref {
        Some(r) => Some(secret_key(&secrets, namespace, &r.name, CA_KEY).await?),
        None => None,
    };
    let timeout = match &spec.timeout {
        Some(t) => Some(crate::api::duration::parse(t).map_err(|e| Error::InvalidSpec(e.to_string()))?),
        None => None,
    };
    let credential = keyring.lookup(&repository.registry, &repository.repository).cloned();
    let credential_source = (!sources.is_empty()).then(|| sources.join(", "));
    Ok(Access {
        repository,
        options: Options { insecure: spec.insecure, ca_pem, timeout },
        credential,
        credential_source,
    })
}

async fn get_secret(secrets: &Api<Secret>, namespace: &str, name: &str) -> Result<Secret, Error> {
    secrets.get_opt(name).await?.ok_or_else(|| Error::SecretNotFound { name: format!("{namespace}/{name}") })
}

async fn docker_keyring(secrets: &Api<Secret>, namespace: &str, name: &str) -> Result<Keyring, Error> {
    let secret = get_secret(secrets, namespace, name).await?;
    let data = secret.data.unwrap_or_default();
    let source = format!("secret {namespace}/{name}");
    if let Some(json) = data.get(DOCKER_CONFIG_JSON) {
        return Ok(Keyring::parse(&json.0, &source)?);
    }
    if let Some(legacy) = data.get(LEGACY_DOCKER_CFG) {
        // The legacy format is the "auths" map itself.
        let wrapped = format!(r#"{{"auths":{}}}"#, String::from_utf8_lossy(&legacy.0));
        return Ok(Keyring::parse(wrapped.as_bytes(), &source)?);
    }
    Err(Error::InvalidSecret {
        name: format!("{namespace}/{name}"),
        reason: format!("has no {DOCKER_CONFIG_JSON} key"),
    })
}

async fn secret_key(secrets: &Api<Secret>, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, Error> {
    let secret = get_secret(secrets, namespace, name).await?;
    secret.data.unwrap_or_default().remove(key).map(|b| b.0).ok_or_else(|| Error::InvalidSecret {
        name: format!("{namespace}/{name}"),
        reason: format!("has no {key} key"),
    })
}

impl Access {
    /// Changes whenever the credential or transport does; reveals neither.
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.options, self.credential.as_ref())
    }
}

/// A fingerprint of everything that changes what a registry answers, without keeping secrets.
fn fingerprint(options: &Options, credential: Option<&Credential>) -> u64 {
    let mut h = DefaultHasher::new();
    options.hash(&mut h);
    credential.map(|c| (&c.username, &c.password)).hash(&mut h);
    h.finish()
}
