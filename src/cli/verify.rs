//! `verify REF …`: the controller's verification step for a person or a pipeline.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use modelpack_operator::exit::Exit;
use modelpack_operator::printable::{printable, printable_json};
use modelpack_operator::registry::Repository;
use modelpack_operator::verify::{self, cosign::NamedKey, notation};

use super::{Failure, Output, RegistryArgs, Usage};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// `registry/repository[:tag|@sha256:…]`.
    reference: String,
    /// Notary Project trust policy (trustpolicy.json).
    #[arg(long, value_name = "FILE", requires = "notation_certs", conflicts_with = "cosign_key")]
    notation_policy: Option<PathBuf>,
    /// Trust store in notation's layout: `<type>/<store>/*.crt|*.pem`.
    #[arg(long, value_name = "DIR", requires = "notation_policy")]
    notation_certs: Option<PathBuf>,
    /// cosign public key (repeatable: any key may verify).
    #[arg(long, value_name = "FILE")]
    cosign_key: Vec<PathBuf>,
    /// OpenSSF model signing: public key of `model_signing sign key` (repeatable).
    #[arg(long, value_name = "PEM", conflicts_with_all = ["cosign_key", "notation_policy", "model_signing_certs"])]
    model_signing_key: Vec<PathBuf>,
    /// OpenSSF model signing: root certificates of `model_signing sign certificate` (repeatable).
    #[arg(long, value_name = "PEM", conflicts_with_all = ["cosign_key", "notation_policy"])]
    model_signing_certs: Vec<PathBuf>,
    /// OpenSSF model signing, keyless (`model_signing sign sigstore`): with `--trusted-root` and
    /// the identity flags, verify a model-signing bundle instead of a cosign signature.
    #[arg(long, requires = "trusted_root", conflicts_with_all = ["model_signing_key", "model_signing_certs"])]
    model_signing: bool,
    #[command(flatten)]
    keyless: super::keyless::KeylessArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// What `verify` checks with, read before anything is fetched (a file that cannot be read is a usage
/// error, exit 2).
enum Trust {
    Cosign(Vec<NamedKey>),
    Keyless(verify::keyless::KeylessTrust),
    ModelSigning(verify::model_signing::Trust),
    Notation { policies: notation::Policies, stores: notation::TrustStores },
}

impl Trust {
    fn load(args: &VerifyArgs) -> Result<Trust, Failure> {
        if let Some(trust) = args.keyless.trust().usage()? {
            if args.model_signing {
                return Ok(Trust::ModelSigning(verify::model_signing::Trust::Keyless(Box::new(trust))));
            }
            return Ok(Trust::Keyless(trust));
        }
        if let (Some(policy), Some(certs)) = (&args.notation_policy, &args.notation_certs) {
            let doc =
                std::fs::read(policy).with_context(|| format!("reading trust policy {}", policy.display())).usage()?;
            let policies = notation::Policies::parse(&doc).with_context(|| policy.display().to_string()).usage()?;
            let stores = notation::TrustStores::from_dir(certs).usage()?;
            return Ok(Trust::Notation { policies, stores });
        }
        if !args.model_signing_key.is_empty() || !args.model_signing_certs.is_empty() {
            let trust = super::model_signing::trust(&args.model_signing_key, &args.model_signing_certs).usage()?;
            return Ok(Trust::ModelSigning(trust));
        }
        if args.cosign_key.is_empty() {
            return Err(Failure::usage(anyhow::anyhow!(
                "give --cosign-key FILE (repeatable), --trusted-root FILE with the identity flags, --notation-policy FILE --notation-certs DIR, or --model-signing-key PEM / --model-signing-certs PEM / --model-signing --trusted-root FILE"
            )));
        }
        let mut named = Vec::new();
        for path in &args.cosign_key {
            let pem = std::fs::read(path).with_context(|| format!("reading key {}", path.display())).usage()?;
            let key = verify::PublicKey::from_pem(&pem).with_context(|| format!("key {}", path.display())).usage()?;
            let name =
                path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            named.push(NamedKey { name, key });
        }
        Ok(Trust::Cosign(named))
    }
}

/// Exit 0 when the policy's verdict is pass, 1 with the reason when not, 4 when the registry did
/// not let it decide.
pub async fn run(args: VerifyArgs) -> Result<Exit, Failure> {
    let trust = Trust::load(&args)?;
    let (reference, json_output, args) = (args.reference.as_str(), args.output == Output::Json, &args.registry);
    let (repo, spec) = Repository::parse_reference(reference)?;
    let registry = args.registry_for(&repo).usage()?;
    let digest = registry.resolve(&repo, &spec).await?.digest;
    let (provider, result) = match &trust {
        Trust::Cosign(keys) => ("cosign", verify::cosign::verify(&registry, &repo, &digest, keys).await),
        Trust::Keyless(trust) => ("cosign", verify::keyless::verify(&registry, &repo, &digest, trust).await),
        Trust::ModelSigning(trust) => {
            (verify::model_signing::PROVIDER, super::model_signing::verify(&registry, &repo, &digest, trust).await?)
        }
        Trust::Notation { policies, stores } => {
            let manifest = registry.manifest(&repo, &digest).await?;
            let media_type = serde_json::from_slice::<Value>(&manifest)
                .ok()
                .and_then(|m| m["mediaType"].as_str().map(str::to_owned))
                .unwrap_or_else(|| modelpack_operator::modelpack::OCI_MANIFEST.to_owned());
            let target = notation::Target { digest: &digest, media_type: &media_type, size: manifest.len() as i64 };
            let now = jiff::Timestamp::now().as_second();
            ("notation", notation::verify(&registry, &repo, &target, policies, stores, now).await)
        }
    };
    let report = match &result {
        Ok(v) => VerifyReport {
            verified: true,
            provider: v.provider,
            digest: &v.digest,
            identity: Some(&v.identity),
            signature_digest: Some(&v.signature_digest),
            timestamp: v.timestamp.as_ref(),
            files: v.files,
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
