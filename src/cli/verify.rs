//! `verify REF …`: the controller's verification step for a person or a pipeline.

use serde::Serialize;

use modelpack_operator::exit::Exit;
use modelpack_operator::printable::{printable, printable_json};
use modelpack_operator::registry::Repository;
use modelpack_operator::verify;

use super::{Failure, Output, RegistryArgs, Usage};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// `registry/repository[:tag|@sha256:…]`.
    reference: String,
    #[command(flatten)]
    trust: super::trust::TrustArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Exit 0 when the policy's verdict is pass, 1 with the reason when not, 4 when the registry did
/// not let it decide.
pub async fn run(args: VerifyArgs) -> Result<Exit, Failure> {
    let Some(trust) = args.trust.load()? else {
        return Err(Failure::usage(anyhow::anyhow!(
            "give --cosign-key FILE (repeatable), --trusted-root FILE with the identity flags, --notation-policy FILE --notation-certs DIR, or --model-signing-key PEM / --model-signing-certs PEM / --model-signing --trusted-root FILE"
        )));
    };
    let (reference, json_output, args) = (args.reference.as_str(), args.output == Output::Json, &args.registry);
    let (repo, spec) = Repository::parse_reference(reference)?;
    let registry = args.registry_for(&repo).usage()?;
    let digest = registry.resolve(&repo, &spec).await?.digest;
    let (provider, result) = trust.verify(&registry, &repo, &digest).await?;
    let report = match &result {
        Ok(v) => VerifyReport {
            verified: true,
            provider: v.provider,
            digest: &v.digest,
            identity: Some(&v.identity),
            signature_digest: Some(&v.signature_digest),
            timestamp: v.timestamp.as_ref(),
            files: v.files,
            anchor: v.anchor.as_deref(),
            reason: None,
            detail: None,
            warnings: &v.warnings,
        },
        Err(verify::Error::Rejected { reason, detail }) => VerifyReport {
            verified: false,
            provider,
            digest: &digest,
            identity: None,
            signature_digest: None,
            timestamp: None,
            files: None,
            anchor: None,
            reason: Some(reason.as_str()),
            detail: Some(detail),
            warnings: &[],
        },
        Err(e) => {
            return Err(Failure { exit: e.exit(), error: anyhow::anyhow!("verifying {repo}@{digest}: {e}") });
        }
    };
    if json_output {
        println!("{}", printable_json(&serde_json::to_string_pretty(&report)?));
    } else {
        print!("{}", report.text(&repo));
    }
    Ok(if report.verified { Exit::Ok } else { Exit::Refused })
}

/// What `verify` prints, as JSON (`-o json`) or as text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerifyReport<'a> {
    verified: bool,
    provider: &'a str,
    digest: &'a str,
    identity: Option<&'a str>,
    signature_digest: Option<&'a str>,
    /// The verified RFC 3161 timestamp (notation with a `tsa` trust store).
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a verify::Timestamped>,
    /// modelSigning: the files the signature lists, all bound to the ModelPack.
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<u64>,
    /// `sha256:<hex>` of the key or certificate the trust rests on.
    #[serde(skip_serializing_if = "Option::is_none")]
    anchor: Option<&'a str>,
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    warnings: &'a [String],
}

impl VerifyReport<'_> {
    /// The signer's identity, the rejection's detail and the warnings carry a certificate's text
    /// (and the registry's): each is made printable.
    fn text(&self, repo: &Repository) -> String {
        let (provider, digest) = (self.provider, self.digest);
        if !self.verified {
            let (reason, detail) = (self.reason.unwrap_or_default(), printable(self.detail.unwrap_or_default()));
            return format!("rejected {repo}@{digest}: {reason}: {detail}\n");
        }
        let identity = printable(self.identity.unwrap_or_default());
        let mut s = format!("verified {repo}@{digest}: signed by {identity} ({provider})\n");
        if let Some(anchor) = self.anchor {
            s.push_str(&format!("trust anchor: {anchor}\n"));
        }
        if let Some(files) = self.files {
            s.push_str(&format!("files: {files} signed, each bound to the ModelPack\n"));
        }
        if let Some(t) = self.timestamp {
            s.push_str(&format!("timestamped {} by {}\n", printable(&t.time), printable(&t.authority)));
        }
        for w in self.warnings {
            s.push_str(&format!("warning: {}\n", printable(w)));
        }
        s
    }
}
