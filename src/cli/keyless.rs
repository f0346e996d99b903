//! `verify`'s keyless cosign flags, named as cosign names them.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use modelpack_operator::verify::keyless::{Identity, KeylessTrust, Matcher};
use modelpack_operator::verify::sigstore::trusted_root::TrustedRoot;

#[derive(clap::Args, Debug)]
pub struct KeylessArgs {
    /// Sigstore trusted_root.json (Fulcio CAs, Rekor logs, timestamp authorities): verify a keyless
    /// cosign signature offline against it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["cosign_key", "notation_policy", "model_signing_key", "model_signing_certs"])]
    pub trusted_root: Option<PathBuf>,
    /// The signer's identity (certificate SAN), exactly.
    #[arg(long, value_name = "IDENTITY", requires = "trusted_root", conflicts_with = "certificate_identity_regexp")]
    pub certificate_identity: Option<String>,
    /// The signer's identity, as a regular expression.
    #[arg(long, value_name = "REGEXP", requires = "trusted_root")]
    pub certificate_identity_regexp: Option<String>,
    /// The OIDC issuer of the signer's identity, exactly.
    #[arg(long, value_name = "ISSUER", requires = "trusted_root", conflicts_with = "certificate_oidc_issuer_regexp")]
    pub certificate_oidc_issuer: Option<String>,
    /// The OIDC issuer, as a regular expression.
    #[arg(long, value_name = "REGEXP", requires = "trusted_root")]
    pub certificate_oidc_issuer_regexp: Option<String>,
}

impl KeylessArgs {
    /// The trust the flags give, or `None` without `--trusted-root`.
    pub fn trust(&self) -> Result<Option<KeylessTrust>> {
        let Some(path) = &self.trusted_root else { return Ok(None) };
        let matcher = |exact: &Option<String>, regexp: &Option<String>, flag: &str| match (exact, regexp) {
            (Some(e), _) => Ok(Matcher::Exact(e.clone())),
            (None, Some(r)) => Matcher::regexp(r).map_err(|e| anyhow::anyhow!("--{flag}-regexp: {e}")),
            (None, None) => bail!("--trusted-root needs --{flag} or --{flag}-regexp"),
        };
        let subject = matcher(&self.certificate_identity, &self.certificate_identity_regexp, "certificate-identity")?;
        let issuer =
            matcher(&self.certificate_oidc_issuer, &self.certificate_oidc_issuer_regexp, "certificate-oidc-issuer")?;
        let bytes = std::fs::read(path).with_context(|| format!("reading trusted root {}", path.display()))?;
        let root = TrustedRoot::parse(&bytes).with_context(|| path.display().to_string())?;
        let trust =
            KeylessTrust::new(root, vec![Identity { issuer, subject }]).with_context(|| path.display().to_string())?;
        Ok(Some(trust))
    }
}
