//! The trust flags `verify` and `check` share: what a digest's signature is checked with, read
//! before anything is fetched (a file that cannot be read is a usage error, exit 2).

use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

use modelpack_operator::registry::{Registry, Repository};
use modelpack_operator::verify::{self, Verification, cosign::NamedKey, notation};

use super::{Failure, Usage};

#[derive(clap::Args, Debug)]
pub struct TrustArgs {
    /// Notary Project trust policy (trustpolicy.json).
    #[arg(long, value_name = "FILE", requires = "notation_certs", conflicts_with = "cosign_key")]
    pub notation_policy: Option<PathBuf>,
    /// Trust store in notation's layout: `<type>/<store>/*.crt|*.pem`.
    #[arg(long, value_name = "DIR", requires = "notation_policy")]
    pub notation_certs: Option<PathBuf>,
    /// cosign public key (repeatable: any key may verify).
    #[arg(long, value_name = "FILE")]
    pub cosign_key: Vec<PathBuf>,
    /// OpenSSF model signing: public key of `model_signing sign key` (repeatable).
    #[arg(long, value_name = "PEM", conflicts_with_all = ["cosign_key", "notation_policy", "model_signing_certs"])]
    pub model_signing_key: Vec<PathBuf>,
    /// OpenSSF model signing: root certificates of `model_signing sign certificate` (repeatable).
    #[arg(long, value_name = "PEM", conflicts_with_all = ["cosign_key", "notation_policy"])]
    pub model_signing_certs: Vec<PathBuf>,
    /// OpenSSF model signing, keyless (`model_signing sign sigstore`): with `--trusted-root` and
    /// the identity flags, verify a model-signing bundle instead of a cosign signature.
    #[arg(long, requires = "trusted_root", conflicts_with_all = ["model_signing_key", "model_signing_certs"])]
    pub model_signing: bool,
    #[command(flatten)]
    pub keyless: super::keyless::KeylessArgs,
}

/// What a digest's signature is checked with.
pub enum Trust {
    Cosign(Vec<NamedKey>),
    Keyless(verify::keyless::KeylessTrust),
    ModelSigning(verify::model_signing::Trust),
    Notation { policies: notation::Policies, stores: notation::TrustStores },
}

impl TrustArgs {
    /// The trust the flags give; `None` when none was given.
    pub fn load(&self) -> Result<Option<Trust>, Failure> {
        if let Some(trust) = self.keyless.trust().usage()? {
            if self.model_signing {
                return Ok(Some(Trust::ModelSigning(verify::model_signing::Trust::Keyless(Box::new(trust)))));
            }
            return Ok(Some(Trust::Keyless(trust)));
        }
        if let (Some(policy), Some(certs)) = (&self.notation_policy, &self.notation_certs) {
            let doc =
                std::fs::read(policy).with_context(|| format!("reading trust policy {}", policy.display())).usage()?;
            let policies = notation::Policies::parse(&doc).with_context(|| policy.display().to_string()).usage()?;
            let stores = notation::TrustStores::from_dir(certs).usage()?;
            return Ok(Some(Trust::Notation { policies, stores }));
        }
        if !self.model_signing_key.is_empty() || !self.model_signing_certs.is_empty() {
            let trust = super::model_signing::trust(&self.model_signing_key, &self.model_signing_certs).usage()?;
            return Ok(Some(Trust::ModelSigning(trust)));
        }
        if self.cosign_key.is_empty() {
            return Ok(None);
        }
        let mut named = Vec::new();
        for path in &self.cosign_key {
            let pem = std::fs::read(path).with_context(|| format!("reading key {}", path.display())).usage()?;
            let key = verify::PublicKey::from_pem(&pem).with_context(|| format!("key {}", path.display())).usage()?;
            let name =
                path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            named.push(NamedKey { name, key });
        }
        Ok(Some(Trust::Cosign(named)))
    }
}

impl Trust {
    /// The provider's name and its verdict on `repo@digest`; an error reading the registry before
    /// a verdict is the outer one.
    pub async fn verify(
        &self,
        registry: &Registry,
        repo: &Repository,
        digest: &str,
    ) -> Result<(&'static str, Result<Verification, verify::Error>), Failure> {
        Ok(match self {
            Trust::Cosign(keys) => ("cosign", verify::cosign::verify(registry, repo, digest, keys).await),
            Trust::Keyless(trust) => ("cosign", verify::keyless::verify(registry, repo, digest, trust).await),
            Trust::ModelSigning(trust) => {
                (verify::model_signing::PROVIDER, super::model_signing::verify(registry, repo, digest, trust).await?)
            }
            Trust::Notation { policies, stores } => {
                let manifest = registry.manifest(repo, digest).await?;
                let media_type = serde_json::from_slice::<Value>(&manifest)
                    .ok()
                    .and_then(|m| m["mediaType"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| modelpack_operator::modelpack::OCI_MANIFEST.to_owned());
                let target = notation::Target { digest, media_type: &media_type, size: manifest.len() as i64 };
                let now = jiff::Timestamp::now().as_second();
                ("notation", notation::verify(registry, repo, &target, policies, stores, now).await)
            }
        })
    }
}
