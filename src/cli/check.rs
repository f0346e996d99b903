//! `check REF --policy FILE…`: the controller's compliance step for a pipeline. Exit 0 when every
//! rule of every `Enforce` policy passes, 1 when one fails (or the artifact cannot be read), 2 on a
//! usage error or a policy that does not compile.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use modelpack_operator::api::PolicyAction;
use modelpack_operator::policy::{self, CompiledPolicy, RuleResult};
use modelpack_operator::registry::Repository;

use super::RegistryArgs;

/// How `check` ended.
pub enum Verdict {
    Passed,
    Failed,
}

/// What `check -o json` prints.
#[derive(Serialize)]
struct CheckReport<'a> {
    digest: &'a str,
    results: &'a [RuleResult],
}

/// Reads and compiles every policy of `files` (a usage error when one does not: exit 2).
pub fn load(files: &[PathBuf]) -> Result<Vec<CompiledPolicy>> {
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

/// Resolves `reference`, evaluates every policy on it and prints the results.
pub async fn run(
    reference: &str,
    policies: &[CompiledPolicy],
    args: &RegistryArgs,
    json_output: bool,
) -> Result<Verdict> {
    let (repo, spec) = Repository::parse_reference(reference)?;
    let registry = args.registry_for(&repo)?;
    let resolution = registry.resolve(&repo, &spec).await?;
    let collected = policy::collect(&registry, &repo, &resolution.digest, resolution.tag.as_deref()).await?;
    let mut results = Vec::new();
    let mut failed = false;
    for p in policies {
        let outcome = policy::evaluate(p, &collected.variables);
        failed |= p.action == PolicyAction::Enforce && outcome.iter().any(|r| !r.passed);
        results.extend(outcome);
    }
    if json_output {
        let report = CheckReport { digest: &resolution.digest, results: &results };
        println!("{}", modelpack_operator::printable::printable_json(&serde_json::to_string_pretty(&report)?));
    } else {
        print!("{}", text(&repo, &resolution.digest, policies, &results));
    }
    Ok(if failed { Verdict::Failed } else { Verdict::Passed })
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
