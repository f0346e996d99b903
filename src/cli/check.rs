//! `check REF --policy FILE…`: the controller's compliance step for a pipeline. Exit 0 when every
//! rule of every `Enforce` policy passes, 1 when one fails (or the artifact is not a ModelPack), 2
//! on a usage error or a policy that does not compile, 4 when the registry did not let it decide.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use modelpack_operator::api::PolicyAction;
use modelpack_operator::exit::Exit;
use modelpack_operator::policy::{self, CompiledPolicy, RuleResult, VerifiedVar};
use modelpack_operator::registry::Repository;
use modelpack_operator::verify;

use super::{Failure, Output, RegistryArgs, Usage};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// `registry/repository[:tag|@sha256:…]`.
    reference: String,
    /// ModelPolicy YAML files (`--policy A B` or `--policy A --policy B`; a file may hold several
    /// documents).
    #[arg(long, value_name = "FILE", required = true, num_args = 1..)]
    policy: Vec<PathBuf>,
    /// Verify the digest first, as a Model's `spec.verify` would, and give rules its signer as
    /// `verified` (without these flags `verified` is empty, as for a Model without `spec.verify`).
    #[command(flatten)]
    trust: super::trust::TrustArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// What `check -o json` prints.
#[derive(Serialize)]
struct CheckReport<'a> {
    digest: &'a str,
    /// The `verified` variable the rules saw.
    verified: &'a VerifiedVar,
    results: &'a [RuleResult],
}

/// Reads and compiles every policy of `files` (a usage error when one does not: exit 2).
fn load(files: &[PathBuf]) -> Result<Vec<CompiledPolicy>> {
    let mut compiled = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading policy {}", path.display()))?;
        for document in policy::parse_documents(&text, &path.display().to_string())? {
            let policy = policy::compile(&document.name, &document.spec)
                .with_context(|| format!("{}: ModelPolicy {}", path.display(), document.name))?;
            compiled.push(policy);
        }
    }
    Ok(compiled)
}

/// Resolves the reference, evaluates every policy on it and prints the results.
pub async fn run(args: CheckArgs) -> Result<Exit, Failure> {
    let policies = &load(&args.policy).usage()?;
    let trust = args.trust.load()?;
    let (reference, json_output, args) = (args.reference.as_str(), args.output == Output::Json, &args.registry);
    let (repo, spec) = Repository::parse_reference(reference)?;
    let registry = args.registry_for(&repo).usage()?;
    let resolution = registry.resolve(&repo, &spec).await?;
    let mut collected = policy::collect(&registry, &repo, &resolution.digest, resolution.tag.as_deref()).await?;
    if let Some(trust) = &trust {
        collected.variables.verified = verified(trust, &registry, &repo, &resolution.digest).await?;
    }
    let mut results = Vec::new();
    let mut failed = false;
    for p in policies {
        let outcome = policy::evaluate(p, &collected.variables);
        failed |= p.action == PolicyAction::Enforce && outcome.iter().any(|r| !r.passed);
        results.extend(outcome);
    }
    if json_output {
        let report =
            CheckReport { digest: &resolution.digest, verified: &collected.variables.verified, results: &results };
        println!("{}", modelpack_operator::printable::printable_json(&serde_json::to_string_pretty(&report)?));
    } else {
        print!("{}", text(&repo, &resolution.digest, policies, &results));
    }
    Ok(if failed { Exit::Refused } else { Exit::Ok })
}

/// The `verified` variable: the signer when the signature verifies, empty (and a line on stderr
/// saying why) when it is rejected; a registry that does not let it decide stops the check (4).
async fn verified(
    trust: &super::trust::Trust,
    registry: &modelpack_operator::registry::Registry,
    repo: &Repository,
    digest: &str,
) -> Result<VerifiedVar, Failure> {
    match trust.verify(registry, repo, digest).await? {
        (provider, Ok(v)) => {
            if !v.enforced {
                eprintln!("not verified ({provider}): passed at the audit level only");
            }
            Ok(VerifiedVar::of(&v))
        }
        (provider, Err(verify::Error::Rejected { reason, detail })) => {
            let detail = modelpack_operator::printable::printable(&detail);
            eprintln!("not verified ({provider}): {}: {detail}", reason.as_str());
            Ok(VerifiedVar::default())
        }
        (_, Err(e)) => Err(Failure { exit: e.exit(), error: anyhow::anyhow!("verifying {repo}@{digest}: {e}") }),
    }
}

/// One line per failed rule (`FAIL` under Enforce, `AUDIT` under Audit), then a summary line.
fn text(repo: &Repository, digest: &str, policies: &[CompiledPolicy], results: &[RuleResult]) -> String {
    let action = |name: &str| policies.iter().find(|p| p.name == name).map_or(PolicyAction::Enforce, |p| p.action);
    let mut s = String::new();
    for r in results.iter().filter(|r| !r.passed) {
        let label = match action(&r.policy) {
            PolicyAction::Enforce => "FAIL",
            PolicyAction::Audit => "AUDIT",
        };
        let message = modelpack_operator::printable::printable(&r.message);
        s.push_str(&format!("{label} {}/{}: {message}\n", r.policy, r.rule));
    }
    let passed = results.iter().filter(|r| r.passed).count();
    s.push_str(&format!("{repo}@{digest}: {passed} of {} rules passed\n", results.len()));
    s
}
