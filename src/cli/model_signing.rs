//! `verify --model-signing-key PEM` / `--model-signing-certs PEM`: the trust of an OpenSSF model
//! signature read from files, and the verification against the ModelPack at the digest.

use std::path::PathBuf;

use anyhow::{Context, Result};

use modelpack_operator::modelpack::Manifest;
use modelpack_operator::registry::{Registry, Repository};
use modelpack_operator::verify::{self, Verification, cosign::NamedKey, model_signing, sigstore::Cert};

/// Keys (any may verify) or root certificates, from the command line.
pub fn trust(keys: &[PathBuf], certs: &[PathBuf]) -> Result<model_signing::Trust> {
    let name =
        |p: &PathBuf| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
    if !keys.is_empty() {
        let mut named = Vec::new();
        for path in keys {
            let pem = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
            let key = verify::PublicKey::from_pem(&pem).with_context(|| format!("key {}", path.display()))?;
            named.push(NamedKey { name: name(path), key });
        }
        return Ok(model_signing::Trust::Keys(named));
    }
    let mut roots = Vec::new();
    for path in certs {
        let pem = std::fs::read(path).with_context(|| format!("reading certificates {}", path.display()))?;
        roots.extend(Cert::from_pem_bundle(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?);
    }
    Ok(model_signing::Trust::Roots(roots))
}

pub async fn verify(
    registry: &Registry,
    repo: &Repository,
    digest: &str,
    trust: &model_signing::Trust,
) -> Result<Result<Verification, verify::Error>> {
    let manifest = Manifest::parse(&registry.manifest(repo, digest).await?)?;
    Ok(model_signing::verify(registry, repo, digest, &manifest, trust).await.map(|s| s.verification))
}
