//! The docs' links hold (no bed): every relative markdown link in README.md, docs/ and the chart's
//! README resolves to a file, every `#anchor` to a heading of its target (GitHub's slugs), and every
//! repository path named in backticks (`src/…`, `tests/…`, `e2e/…`, …) exists. The reason tables
//! the bed tests read (support::reason_table) parse, and the README still names the command CI runs.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use regex::Regex;
use support::reason_table;

/// Top-level entries of the repository: a backticked path starting with one of these is a file reference.
const REPO_DIRS: &[&str] = &["src", "tests", "e2e", "charts", "deploy", "crds", "docs", "fuzz", ".ci"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pages checked: the README, every page under docs/, the chart's README.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md"), root.join("charts/modelpack-operator/README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    pages.sort();
    pages
}

/// The lines outside fenced code blocks, with their line numbers.
fn prose(markdown: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (n, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push((n + 1, line));
        }
    }
    lines
}

/// GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens; repeats get -1, -2, ….
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose(markdown) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else { continue };
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        for n in 1.. {
            if !seen.contains(&unique) {
                break;
            }
            unique = format!("{slug}-{n}");
        }
        seen.insert(unique);
    }
    seen
}

/// Every link, anchor and backticked repository path of `page` that does not resolve, one line each.
fn problems(root: &Path, page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let name = page.strip_prefix(root).unwrap_or(page).display().to_string();
    let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let code = Regex::new(r"`([^`]+)`").unwrap();
    let mut found = Vec::new();
    for (n, line) in prose(&text) {
        let at = format!("{name}:{n}");
        for target in link.captures_iter(line).map(|c| c[1].to_owned()) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() { page.to_path_buf() } else { page.parent().unwrap().join(file) };
            if !path.exists() {
                found.push(format!("{at}: link {target}: no file {}", path.display()));
                continue;
            }
            if !anchor.is_empty() && path.extension().is_some_and(|e| e == "md") {
                let heads = anchors(&std::fs::read_to_string(&path).unwrap());
                if !heads.contains(anchor) {
                    found.push(format!("{at}: link {target}: no heading #{anchor} in {file}"));
                }
            }
        }
        for span in code.captures_iter(line).map(|c| c[1].to_owned()) {
            let token = span.split_whitespace().next().unwrap_or("");
            let first = token.split('/').next().unwrap_or("");
            let placeholder = token.contains(['<', '*', '…', '$', '{', '[', '|']);
            if token.contains('/') && REPO_DIRS.contains(&first) && !placeholder && !root.join(token).exists() {
                found.push(format!("{at}: `{token}`: no such file in the repository"));
            }
        }
    }
    found
}

#[test]
fn every_relative_link_anchor_and_repository_path_in_the_docs_resolves() {
    let root = root();
    let found: Vec<String> = pages(&root).iter().flat_map(|p| problems(&root, p)).collect();
    assert!(found.is_empty(), "links that do not resolve:\n{}", found.join("\n"));
}

#[test]
fn a_broken_link_anchor_or_path_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/here.rs"), "").unwrap();
    std::fs::write(dir.path().join("other.md"), "# Other page\n\n## The `pull` step, again\n").unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(
        &page,
        "# Page\n\n[ok](other.md#the-pull-step-again) [ok](#page) `src/here.rs` [web](https://example.com/x)\n\
         [gone](missing.md) [bad anchor](other.md#nothing) [self](#nowhere) `src/gone.rs`\n\
         ```\n[in code](ignored.md) `src/ignored.rs`\n```\n",
    )
    .unwrap();
    let found = problems(dir.path(), &page);
    let wanted = ["missing.md", "#nothing", "#nowhere", "src/gone.rs"];
    assert_eq!(found.len(), wanted.len(), "{found:#?}");
    for (line, what) in found.iter().zip(wanted) {
        assert!(line.contains(what), "{line} should name {what}");
    }
}

/// The rows the bed tests look up (status_reasons, deployment_controller, trust_and_bounds) exist and
/// are unambiguous, so that a table edit breaks here, without the bed, before it breaks there.
#[test]
fn the_reason_table_rows_the_bed_tests_read_resolve() {
    let model: &[&[&str]] = &[
        &["Succeeded"],
        &["RegistryUnavailable"],
        &["RegistryTimeout"],
        &["AuthenticationFailed"],
        &["ArtifactNotFound"],
        &["NoMatchingTag"],
        &["SecretNotFound"],
        &["ServiceAccountNotFound"],
        &["NotAModelPack"],
        &["InvalidModelPack"],
        &["InvalidReference"],
        &["InvalidSecret"],
        &["InvalidCA"],
        &["ArtifactTooLarge"],
        &["SignatureRejected"],
        &["TrustRevoked"],
        &["spec.suspend: true"],
    ];
    let deployment: &[&[&str]] = &[
        &["InSync", "Deployed"],
        &["ModelNotFound"],
        &["ModelNotReady"],
        &["RegistryAccess"],
        &["NoNodesSelected"],
        &["ModelStalled"],
        &["VerificationFailed"],
        &["NodesNotReady"],
        &["NewVersionPending"],
        &["NodeJoined"],
        &["PullFailed"],
        &["TrustRevoked"],
        &["TolerationNotAllowed"],
        &["spec.suspend: true", "Deployed"],
        &["spec.suspend: true", "Suspended"],
    ];
    for (page, keys) in [("docs/model.md", model), ("docs/modeldeployment.md", deployment)] {
        let rows = reason_table::read(page).unwrap();
        for k in keys {
            reason_table::verdicts(&rows, k).unwrap_or_else(|e| panic!("{page}: {e}"));
        }
    }
    // `Deployed` alone names two rows that disagree (in sync; in sync but suspended): refused.
    let rows = reason_table::read("docs/modeldeployment.md").unwrap();
    assert!(reason_table::verdicts(&rows, &["Deployed"]).is_err());
}

#[test]
fn the_readme_names_the_command_ci_runs() {
    let run = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let command = run.lines().find_map(|l| l.strip_prefix("exec ")).expect(".ci/run execs the test command");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme.split("\n## ").find(|s| s.starts_with("The two commands")).expect("README: The two commands");
    assert!(section.contains(&format!("`{command}`")), "README's two commands do not name `{command}` (.ci/run)");
}

#[test]
fn every_reason_the_operator_writes_is_documented_on_a_kind_page() {
    let kinds = ["docs/model.md", "docs/modeldeployment.md", "docs/modelpolicy.md", "docs/modelcache.md"];
    let text: String = kinds.iter().map(|p| std::fs::read_to_string(root().join(p)).unwrap()).collect();
    let missing: Vec<&str> = modelpack_operator::api::conditions::Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .filter(|r| !text.contains(&format!("`{r}`")))
        .collect();
    assert!(missing.is_empty(), "reasons no kind page names (in backticks): {missing:?}");
}
