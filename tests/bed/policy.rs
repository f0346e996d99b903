//! ModelPolicy rules on the bed's registries: `check` sees every variable with the artifact's own
//! values (both families, artifacts from modctl, oras and crafted ones, referrers attached by oras
//! on a registry with the referrers API and one without), and its verdicts equal cel-go's
//! (`celeval`, the CEL of the Kubernetes API server) on the same variables and rules.

use crate::support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::craft::{self, Artifact, Blob};
use support::fixtures::{ModelFiles, cncf_config, modctl_push, oras_push_cncf};
use support::{Bed, Registry, operator, run_tool, unique_suffix};

/// One artifact in a registry and the variables a rule should see for it, built here from the
/// bytes the registry serves and what the test attached, independently of the operator's code —
/// except what each file holds (`layers[].contents`, `weights`), which is what `inspect` printed
/// (tests/bed/contents_oracles.rs holds those to picklescan, fickling, safetensors and gguf).
struct Case {
    label: String,
    reference: String,
    variables: Value,
}

// The legacy (spec ≤ v0.0.6) config names and the ones of the current specification.
const LEGACY: [(&str, &str); 10] = [
    ("created_at", "createdAt"),
    ("doc_url", "docURL"),
    ("source_url", "sourceURL"),
    ("datasets_url", "datasetsURL"),
    ("param_size", "paramSize"),
    ("input_types", "inputTypes"),
    ("output_types", "outputTypes"),
    ("knowledge_cutoff", "knowledgeCutoff"),
    ("tool_usage", "toolUsage"),
    ("diff_ids", "diffIds"),
];

fn current_names(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let name = LEGACY.iter().find(|(old, _)| old == k).map_or(k.as_str(), |(_, new)| new);
                    (name.to_owned(), current_names(v))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

async fn case(registry: &Registry, repo: &str, tag: &str, referrers: Vec<Value>, label: &str) -> Case {
    let digest = craft::manifest_digest(registry, repo, tag).await;
    let manifest: Value = serde_json::from_slice(&craft::manifest_bytes(registry, repo, &digest).await).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: Value = serde_json::from_slice(&craft::blob(registry, repo, config_digest).await).unwrap();
    let config = current_names(&config);
    let layers: Vec<Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let a = &l["annotations"];
            let path = ["org.cncf.model.filepath", "org.cnai.model.filepath", "org.opencontainers.image.title"]
                .iter()
                .find_map(|k| a[*k].as_str())
                .unwrap();
            json!({"mediaType": l["mediaType"], "digest": l["digest"], "size": l["size"], "path": path,
                   "annotations": a.as_object().cloned().unwrap_or_default()})
        })
        .collect();
    // What each file holds (`layers[].contents`, `weights`) is read by range requests from the
    // registry; a rule sees what `inspect` prints, which is taken from it here.
    let reference = format!("{}/{repo}:{tag}", registry.host);
    let (code, stdout, stderr) = operator(&["inspect", "-o", "json", "--insecure", &reference]);
    assert_eq!(code, 0, "inspect {reference}: {stderr}");
    let inspected: Value = serde_json::from_str(&stdout).unwrap();
    let layers: Vec<Value> = layers
        .into_iter()
        .enumerate()
        .map(|(i, mut l)| {
            l["contents"] = inspected["layers"][i]["contents"].clone();
            l
        })
        .collect();
    let object = |v: &Value| Value::Object(v.as_object().cloned().unwrap_or_default());
    Case {
        label: format!("{label} on {}", registry.host),
        reference,
        variables: json!({
            "repository": format!("{}/{repo}", registry.host), "digest": digest, "tag": tag,
            "descriptor": object(&config["descriptor"]), "config": object(&config["config"]),
            "modelfs": object(&config["modelfs"]), "annotations": object(&manifest["annotations"]),
            "layers": layers, "referrers": referrers, "weights": inspected["weights"],
            // `check` without trust flags verifies nothing (tests/bed/verify_model_signing.rs
            // checks what a verified digest gives).
            "verified": {"provider": "", "identity": "", "signature": "", "files": 0, "anchor": ""},
        }),
    }
}

/// `oras attach` of a small file to `repo:tag`; the referrer as a rule should see it, its
/// annotations read back from its manifest (oras adds `org.opencontainers.image.created`).
async fn attach(
    registry: &Registry,
    repo: &str,
    tag: &str,
    artifact_type: &str,
    annotations: &[(&str, &str)],
) -> Value {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("doc.json"), br#"{"spdxVersion":"SPDX-2.3"}"#).unwrap();
    let reference = format!("{}/{repo}:{tag}", registry.host);
    let mut args = vec!["attach", "--plain-http", "--artifact-type", artifact_type, "--format", "json"];
    let pairs: Vec<String> = annotations.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for p in &pairs {
        args.extend(["--annotation", p.as_str()]);
    }
    args.extend([reference.as_str(), "doc.json:application/json"]);
    let out = run_tool(&Bed::get().tool("oras"), &args, &[], Some(dir.path()));
    let parsed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("oras attach output ({e}):\n{out}"));
    let digest = parsed["digest"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(&craft::manifest_bytes(registry, repo, digest).await).unwrap();
    for (k, v) in annotations {
        assert_eq!(manifest["annotations"][k], *v, "oras attached {k}");
    }
    json!({"artifactType": artifact_type, "digest": digest, "annotations": manifest["annotations"]})
}

/// A `vnd.cncf` artifact with every descriptor and config field a rule may read, unknown ones
/// included, manifest and layer annotations, and a path given by the OCI title only.
fn rich_artifact() -> Artifact {
    let weights = Blob::new("application/vnd.cncf.model.weight.v1.raw", vec![7u8; 1000])
        .annotate("org.cncf.model.filepath", "models/w.gguf")
        .annotate("org.example.extra", "yes");
    let readme = Blob::new("application/vnd.cncf.model.doc.v1.raw", b"# model\n".to_vec())
        .annotate("org.opencontainers.image.title", "README.md");
    let config = json!({
        "descriptor": {"name": "rich", "licenses": ["Apache-2.0", "MIT"], "authors": [], "vendor": "Example",
            "createdAt": "2025-06-01T12:00:00Z", "docURL": "https://example.com/d", "future": {"x": 1.5}},
        "config": {"format": "gguf", "paramSize": "8b", "precision": "bfloat16",
            "capabilities": {"inputTypes": ["text", "image"], "outputTypes": ["text"], "reasoning": true,
                "toolUsage": false, "languages": ["en", "fr"], "knowledgeCutoff": "2025-01-01T00:00:00Z"}},
        "modelfs": {"type": "layers", "diffIds": [craft::sha256(&weights.data), craft::sha256(&readme.data)]}
    });
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![weights, readme],
        annotations: [
            ("org.opencontainers.image.source".to_owned(), "https://example.com/src".to_owned()),
            ("org.cncf.model.custom".to_owned(), "x\"y\\z".to_owned()),
        ]
        .into(),
    }
}

/// A legacy `vnd.cnai` artifact written with the snake_case names of spec ≤ v0.0.6.
fn legacy_artifact() -> Artifact {
    let weights = Blob::new("application/vnd.cnai.model.weight.v1.tar", vec![1u8; 2048])
        .annotate("org.cnai.model.filepath", "weights");
    let config = json!({
        "descriptor": {"created_at": "2024-02-03T04:05:06Z", "licenses": ["GPL-3.0-only"], "doc_url": "https://e/d"},
        "config": {"param_size": "1B", "capabilities": {"input_types": ["text"], "tool_usage": true}},
        "modelfs": {"type": "layers", "diff_ids": [craft::sha256(&[1u8; 2048])]}
    });
    Artifact {
        artifact_type: Some("application/vnd.cnai.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cnai.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![weights],
        annotations: BTreeMap::new(),
    }
}

/// A config of `{}`: every descriptor and config field is absent.
fn empty_artifact() -> Artifact {
    let weights = Blob::new("application/vnd.cncf.model.weight.v1.raw", vec![3u8; 10])
        .annotate("org.cncf.model.filepath", "m.bin");
    Artifact {
        artifact_type: None,
        config: Blob::new("application/vnd.cncf.model.config.v1+json", b"{}".to_vec()),
        layers: vec![weights],
        annotations: BTreeMap::new(),
    }
}

/// Every artifact kind on `registry`; SBOM and another referrer attached to the rich one.
async fn cases(registry: &Registry) -> Vec<Case> {
    let bed = Bed::get();
    let base = format!("policy/{}", unique_suffix());
    let mut out = Vec::new();
    for (name, artifact) in [("rich", rich_artifact()), ("legacy", legacy_artifact()), ("empty", empty_artifact())] {
        let repo = format!("{base}/{name}");
        craft::push(registry, &repo, "v1", &artifact).await;
        let referrers = if name == "rich" {
            vec![
                attach(registry, &repo, "v1", "application/spdx+json", &[("org.example.kind", "sbom")]).await,
                attach(registry, &repo, "v1", "application/vnd.example.report", &[]).await,
            ]
        } else {
            vec![]
        };
        out.push(case(registry, &repo, "v1", referrers, name).await);
    }
    let files = ModelFiles::new(16, &[("model.safetensors", 4096), ("config.json", 64), ("docs/README.md", 20)]);
    let repo = format!("{base}/modctl");
    modctl_push(bed, registry, &repo, "v2", &files);
    out.push(case(registry, &repo, "v2", vec![], "modctl").await);
    let repo = format!("{base}/oras");
    oras_push_cncf(bed, registry, &repo, "v3", &files, &cncf_config("oras-model", &files));
    out.push(case(registry, &repo, "v3", vec![], "oras").await);
    out
}

/// A CEL literal for a JSON value (JSON string escapes are CEL escapes).
fn literal(v: &Value) -> String {
    match v {
        Value::Array(items) => format!("[{}]", items.iter().map(literal).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            let entries: Vec<String> = map.iter().map(|(k, v)| format!("{}: {}", json!(k), literal(v))).collect();
            format!("{{{}}}", entries.join(", "))
        }
        other => other.to_string(),
    }
}

/// `path == value` for the whole of every variable and each value inside it.
fn value_rules(path: &str, v: &Value, out: &mut Vec<String>) {
    out.push(format!("{path} == {}", literal(v)));
    match v {
        Value::Object(map) => {
            for (k, inner) in map {
                let is_ident = k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !k.starts_with(|c: char| c.is_ascii_digit());
                let inner_path = if is_ident { format!("{path}.{k}") } else { format!("{path}[{}]", json!(k)) };
                value_rules(&inner_path, inner, out);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                value_rules(&format!("{path}[{i}]"), inner, out);
            }
        }
        _ => {}
    }
}

/// Rules over every kind of value and every standard macro and function the issue lists, with
/// missing fields, errors and non-bool results among them.
const CORPUS: &[&str] = &[
    r#"descriptor.licenses.all(l, l in ["Apache-2.0", "MIT"])"#,
    r#"has(descriptor.licenses) && descriptor.licenses.all(l, l in ["Apache-2.0", "MIT"])"#,
    r#"!has(descriptor.licenses) || descriptor.licenses.exists(l, l.startsWith("GPL"))"#,
    r#"referrers.exists(r, r.artifactType == "application/spdx+json")"#,
    r#"referrers.exists_one(r, r.annotations["org.example.kind"] == "sbom")"#,
    r#"referrers.exists(r, "org.example.kind" in r.annotations && r.annotations["org.example.kind"] == "sbom")"#,
    "size(referrers) == 0",
    "referrers.all(r, r.digest.startsWith('sha256:'))",
    "layers.all(l, l.size > 0 && l.size < 1073741824)",
    "layers.map(l, l.size).exists(s, s >= 1000)",
    r#"layers.filter(l, l.path.endsWith(".gguf")).size() == 1"#,
    r#"layers.exists(l, l.path.contains("/"))"#,
    r#"layers.all(l, l.mediaType.matches("^application/vnd\\.(cncf|cnai)\\.model\\."))"#,
    r#"layers.exists(l, l.annotations.exists(k, k == "org.example.extra"))"#,
    r#"config.capabilities.inputTypes.exists(t, t == "image")"#,
    "has(config.capabilities) && has(config.capabilities.reasoning) && config.capabilities.reasoning",
    "has(config.capabilities.toolUsage)",
    "config.capabilities.toolUsage == false",
    r#"timestamp(descriptor.createdAt) > timestamp("2025-01-01T00:00:00Z")"#,
    r#"timestamp(descriptor.createdAt) + duration("8760h") > timestamp("2026-01-01T00:00:00Z")"#,
    r#"duration("1h30m") < duration("2h") && duration("90m") == duration("1h30m")"#,
    r#"annotations.exists(k, k.startsWith("org.opencontainers"))"#,
    r#""org.cncf.model.custom" in annotations"#,
    r#"tag == "" || tag.startsWith("v")"#,
    r#"repository.endsWith("/rich")"#,
    r#"digest.matches("^sha256:[0-9a-f]{64}$")"#,
    "modelfs.diffIds.size() == size(layers)",
    r#"config.paramSize in ["1M", "8b"]"#,
    "descriptor.name",
    "layers[5].size > 0",
    "dyn(1) == 1.0",
    "layers.exists(l, l.size == 1000.0)",
    "dyn(layers[0].size) > 2.5",
    "descriptor.authors.size() == 0",
    "type(layers[0].size) == int && type(descriptor) == map",
    r#""x" + tag != "" && [1, 2] + [3] == [1, 2, 3] && {"a": 1}.a == 1"#,
    "1 / 0 == 1 || true",
    "false && 1 / 0 == 1",
    "1 / 0 == 1 && false",
    "size(descriptor) >= 0 && size(annotations) >= 0",
    "descriptor.future.x == 1.5",
    "layers.exists_one(l, l.size > 0)",
    "layers.all(a, layers.exists(b, a.digest == b.digest))",
    r#"config.capabilities.languages.all(l, l.size() == 2) && "fr" in config.capabilities.languages"#,
    r#"descriptor.docURL.startsWith("https://")"#,
    "modelfs.type == 'layers' && !has(modelfs.diff_ids)",
    "has(descriptor.created_at)",
    "null == descriptor.vendor",
];

fn policy_file(rules: &[String]) -> tempfile::NamedTempFile {
    let docs: Vec<String> = rules
        .chunks(64)
        .enumerate()
        .map(|(i, chunk)| {
            let rules: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(j, e)| json!({"name": format!("r{}", i * 64 + j), "expression": e}))
                .collect();
            json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "ModelPolicy", "metadata": {"name": format!("p{i}")},
                   "spec": {"action": "Audit", "rules": rules}})
            .to_string()
        })
        .collect();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(docs.join("\n---\n").as_bytes()).unwrap();
    file
}

/// `check -o json`: each rule's verdict by name.
fn check(reference: &str, rules: &[String]) -> (String, BTreeMap<String, (bool, String)>) {
    let file = policy_file(rules);
    let path = file.path().to_str().unwrap();
    let (code, stdout, stderr) = operator(&["check", reference, "--policy", path, "--insecure", "-o", "json"]);
    assert_eq!(code, 0, "check (Audit only) exits 0: {stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("check output ({e}):\n{stdout}"));
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), rules.len());
    let verdicts = results
        .iter()
        .map(|r| {
            let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["message", "passed", "policy", "rule"]);
            (r["rule"].as_str().unwrap().to_owned(), (r["passed"].as_bool().unwrap(), r["message"].to_string()))
        })
        .collect();
    (out["digest"].as_str().unwrap().to_owned(), verdicts)
}

/// cel-go's verdicts on the same variables and rules.
fn celeval(variables: &Value, rules: &[String]) -> BTreeMap<String, (bool, bool, String)> {
    let input = json!({"variables": variables, "rules": rules.iter().enumerate()
        .map(|(i, e)| json!({"name": format!("r{i}"), "expression": e})).collect::<Vec<_>>()});
    let mut child = Command::new(Bed::get().tool("celeval"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running celeval (e2e/tools/build celeval)");
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "celeval failed");
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    parsed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let fields = (r["compiled"].as_bool().unwrap(), r["passed"].as_bool().unwrap(), r["error"].to_string());
            (r["rule"].as_str().unwrap().to_owned(), fields)
        })
        .collect()
}

#[tokio::test]
async fn check_sees_every_variable_and_agrees_with_cel_go() {
    let bed = Bed::get();
    // distribution has no referrers API (oras falls back to the sha256-<hex> tag); olareg has it.
    for registry in [&bed.plain, &bed.referrers] {
        for case in cases(registry).await {
            let vars = &case.variables;
            let mut reaching = Vec::new();
            // Every variable a rule can read (the expected values above are built independently).
            for name in modelpack_operator::policy::NAMES {
                value_rules(name, &vars[name], &mut reaching);
            }
            let (digest, got) = check(&case.reference, &reaching);
            assert_eq!(digest, vars["digest"], "{}", case.label);
            for (i, rule) in reaching.iter().enumerate() {
                let (passed, message) = &got[&format!("r{i}")];
                assert!(passed, "{}: `{rule}` is false: {message}", case.label);
            }
            let mut all: Vec<String> = reaching.iter().map(|r| format!("!({r})")).collect();
            all.extend(CORPUS.iter().map(|r| (*r).to_owned()));
            let (_, ours) = check(&case.reference, &all);
            let theirs = celeval(vars, &all);
            let mut passed = 0;
            for (i, rule) in all.iter().enumerate() {
                let name = format!("r{i}");
                let (ok, message) = &ours[&name];
                let (compiled, go_ok, go_error) = &theirs[&name];
                assert!(compiled, "{}: cel-go does not compile `{rule}`: {go_error}", case.label);
                assert_eq!(ok, go_ok, "{}: `{rule}`: check says {message}, cel-go {go_error}", case.label);
                passed += usize::from(*ok);
            }
            // The negations all fail; the corpus has rules that pass on every artifact.
            assert!(passed > 0 && passed < CORPUS.len(), "{}: {passed} passed", case.label);
        }
    }
}

/// Costly shapes within the bounds (macros over thousands of entries, `matches` over a list,
/// concatenations, nested macros over short lists) give cel-go's verdicts.
#[test]
fn costly_rules_within_the_bounds_agree_with_cel_go() {
    let licenses: Vec<String> = (0..3000).map(|i| format!("{i:024}")).collect();
    let layers: Vec<Value> = (0..40)
        .map(|i| json!({"digest": format!("sha256:{i:064}"), "size": i, "path": format!("w{i}.safetensors")}))
        .collect();
    let vars = json!({"descriptor": {"licenses": licenses}, "layers": layers, "tag": "v1.2.3"});
    let rules: Vec<String> = [
        "descriptor.licenses.all(l, l.matches('^[0-9]{24}$'))",
        "descriptor.licenses.exists(l, matches(l, '^0+2999$'))",
        "descriptor.licenses.map(l, l + l).all(x, size(x) == 48)",
        "descriptor.licenses.filter(l, l.endsWith('7')).size() == 300",
        "descriptor.licenses.exists_one(l, l.startsWith('0000000000000000000029'))",
        "descriptor.licenses.map(l, l + '-' + tag).exists(x, x.endsWith('v1.2.3') && x.contains('-'))",
        "layers.all(a, layers.exists_one(b, a.digest == b.digest))",
        "layers.filter(a, layers.exists(b, b.size > a.size)).size() == 39",
        "layers.map(a, layers.filter(b, b.path.matches('^w[0-9]+[.]safetensors$')).size()).all(n, n == 40)",
        "tag.matches(tag) && !descriptor.licenses.exists(l, l.matches('[a-z]'))",
    ]
    .map(String::from)
    .to_vec();
    let spec = modelpack_operator::api::ModelPolicySpec {
        action: modelpack_operator::api::PolicyAction::Audit,
        namespace_selector: None,
        model_selector: None,
        rules: rules
            .iter()
            .enumerate()
            .map(|(i, e)| modelpack_operator::api::PolicyRule {
                name: format!("r{i}"),
                expression: e.clone(),
                message: None,
            })
            .collect(),
    };
    let ours =
        modelpack_operator::policy::evaluate_json(&modelpack_operator::policy::compile("p", &spec).unwrap(), &vars);
    let theirs = celeval(&vars, &rules);
    let mut passed = 0;
    for (rule, r) in rules.iter().zip(&ours) {
        let (compiled, go_ok, go_error) = &theirs[&r.rule];
        assert!(compiled, "cel-go does not compile `{rule}`: {go_error}");
        assert_eq!(r.passed, *go_ok, "`{rule}`: ours {}, cel-go {go_error}", r.message);
        passed += usize::from(r.passed);
    }
    assert!(passed > 5 && passed < rules.len(), "{passed} passed");
}

#[test]
fn a_policy_that_does_not_compile_exits_2_with_the_compilers_message() {
    let file = policy_file(&["layers.all(l, ".to_owned()]);
    let path = file.path().to_str().unwrap();
    let (code, stdout, stderr) = operator(&["check", "127.0.0.1:1/none:v1", "--policy", path, "--insecure"]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("p0") && stderr.contains("\"r0\" does not compile: ERROR: <input>:1:"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // Each kind of rule cel-go refuses to compile is refused by check too (exit 2, before any
    // registry is asked).
    let refused: Vec<String> = [
        "layers.all(l, ",
        "sizeof(layers) > 0",
        "tag.lowerAscii() == 'v1'",
        "descriptr.name == 'x'",
        "layers.all(l, true) && l.size > 0",
        "descriptor.?name",
        "tag == 'unterminated",
    ]
    .map(String::from)
    .to_vec();
    let theirs = celeval(&json!({}), &refused);
    for (i, rule) in refused.iter().enumerate() {
        assert!(!theirs[&format!("r{i}")].0, "cel-go compiles `{rule}`");
        let file = policy_file(std::slice::from_ref(rule));
        let (code, _, stderr) = operator(&["check", "127.0.0.1:1/none:v1", "--policy", file.path().to_str().unwrap()]);
        assert_eq!(code, 2, "`{rule}`: {stderr}");
    }
    let (missing, _, _) = operator(&["check", "127.0.0.1:1/none:v1"]);
    assert_eq!(missing, 2, "--policy is required");
}

#[test]
fn argocd_health_of_a_modelpolicy() {
    let cm: Value = serde_saphyr::from_str(include_str!("../../deploy/argocd/argocd-cm.yaml")).unwrap();
    assert_eq!(
        cm["data"]["resource.customizations.health.modelpack.dev_ModelPolicy"],
        include_str!("../../deploy/argocd/modelpolicy.lua")
    );
    let policy = |generation: i64, observed: i64, conditions: Value| {
        json!({"kind": "ModelPolicy", "metadata": {"name": "p", "generation": generation},
               "status": {"observedGeneration": observed, "conditions": conditions}})
    };
    let ready = json!([{"type": "Ready", "status": "True", "reason": "RulesCompiled", "message": "2 rules compiled"}]);
    assert_eq!(support::argo::health(&policy(1, 1, ready.clone())), ("Healthy".into(), "2 rules compiled".into()));
    assert_eq!(support::argo::health(&policy(2, 1, ready)).0, "Progressing");
    let stalled = json!([{"type": "Ready", "status": "False", "reason": "InvalidPolicy", "message": "rule \"r\" does not compile"},
                         {"type": "Stalled", "status": "True", "reason": "InvalidPolicy", "message": "rule \"r\" does not compile"}]);
    let (status, message) = support::argo::health(&policy(1, 1, stalled));
    assert_eq!((status.as_str(), message.as_str()), ("Degraded", "InvalidPolicy: rule \"r\" does not compile"));
    assert_eq!(support::argo::health(&json!({"kind": "ModelPolicy", "metadata": {"name": "p"}})).0, "Progressing");
}

mod gate {
    //! The comply gate in a cluster: Enforce blocks a rollout and the nodes keep the old version,
    //! Audit lets it through, a policy for other namespaces and one that does not compile leave the
    //! Model alone, and deleting the policy re-accepts.

    use std::time::Duration;

    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{Api, DeleteParams, ListParams};
    use kube::{Client, ResourceExt};
    use modelpack_operator::api::conditions::{COMPLIANT, ConditionStatus, READY, find};
    use modelpack_operator::api::{Model, ModelDeployment, ModelDeploymentStatus, ModelPolicy};
    use serde_json::{Value, json};

    use super::support::fixtures::{ModelFiles, cncf_config, oras_push_cncf};
    use super::support::kstatus::{self, KStatus};
    use super::support::{
        Bed, Operator, TestNodes, apply, argo, ensure_namespace, eventually, http_get, install_crds, namespace,
        unique_suffix, wait_for_deployment,
    };

    const JOBS_NAMESPACE: &str = "modelpack-system";

    fn licensed(files: &ModelFiles, license: &str) -> Value {
        let mut config = cncf_config("gated", files);
        config["descriptor"]["licenses"] = json!([license]);
        config
    }

    fn in_sync_on(digest: &str) -> impl Fn(&ModelDeploymentStatus) -> bool + '_ {
        move |s| {
            s.deployed.as_ref().is_some_and(|d| d.digest == digest)
                && s.drift.as_ref().is_some_and(|d| d.reason == "InSync")
        }
    }

    async fn pulled(client: &Client, owner: &str) -> Vec<String> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), JOBS_NAMESPACE);
        let all = jobs.list(&ListParams::default().labels("app.kubernetes.io/managed-by=modelpack-operator")).await;
        let owned = all
            .unwrap()
            .items
            .into_iter()
            .filter(|j| j.annotations().get("modelpack.dev/deployment").map(String::as_str) == Some(owner));
        owned.filter_map(|j| j.annotations().get("modelpack.dev/digest").cloned()).collect()
    }

    async fn model_where(models: &Api<Model>, what: &str, check: impl Fn(&Model) -> bool) -> Model {
        eventually(&format!("model: {what}"), Duration::from_secs(60), || async {
            let m = models.get("llm").await.ok()?;
            let current = m.status.as_ref()?.observed_generation == m.metadata.generation;
            (current && check(&m)).then_some(m)
        })
        .await
    }

    fn compliant(m: &Model) -> Option<(ConditionStatus, String)> {
        find(&m.status.as_ref()?.conditions, COMPLIANT).map(|c| (c.status, c.reason.clone()))
    }

    fn policy_spec(action: &str, label: &str, rules: Value) -> Value {
        json!({"action": action, "modelSelector": {"matchLabels": {"e2e.modelpack.dev/policy": label}}, "rules": rules})
    }

    #[tokio::test]
    async fn enforce_blocks_audit_lets_through_other_namespaces_are_left_alone_and_deletion_re_accepts() {
        let bed = Bed::get();
        let client = bed.client().await;
        install_crds(&client).await;
        ensure_namespace(&client, JOBS_NAMESPACE).await;
        let ns = namespace(&client, "policy-gate").await;
        let operator = Operator::start(&ns);
        let nodes = TestNodes::create("policy", 2);
        let models: Api<Model> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
        let policies: Api<ModelPolicy> = Api::all(client.clone());
        let label = unique_suffix();
        let (enforce, elsewhere, broken) =
            (format!("licenses-{label}"), format!("elsewhere-{label}"), format!("broken-{label}"));

        let repo = format!("policy/gate-{label}");
        let files = ModelFiles::new(41, &[("model.safetensors", 20_000), ("config.json", 40)]);
        let v1 = oras_push_cncf(bed, &bed.plain, &repo, "prod", &files, &licensed(&files, "Apache-2.0"));
        let model = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model",
            "metadata": {"name": "llm", "labels": {"e2e.modelpack.dev/policy": label}},
            "spec": {"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "prod"}, "insecure": true, "interval": "10s"}});
        let params = kube::api::PatchParams::apply("e2e").force();
        models.patch("llm", &params, &kube::api::Patch::Apply(&model)).await.unwrap();
        apply(
            &deployments,
            "ModelDeployment",
            "serve",
            json!({"modelRef": {"name": "llm"}, "nodeSelector": nodes.selector()}),
        )
        .await;
        wait_for_deployment(&deployments, "serve", "v1 in sync", in_sync_on(&v1)).await;

        // A policy that selects only namespaces labelled otherwise, and one that does not compile:
        // neither touches the Model. The licence policy passes v1.
        let other = json!({"action": "Enforce", "namespaceSelector": {"matchLabels": {"e2e.modelpack.dev/env": format!("other-{label}")}},
            "rules": [{"name": "nothing", "expression": "false"}]});
        apply(&policies, "ModelPolicy", &elsewhere, other).await;
        apply(
            &policies,
            "ModelPolicy",
            &broken,
            policy_spec("Enforce", &label, json!([{"name": "bad", "expression": "layers.all(l, "}])),
        )
        .await;
        let license = json!([{"name": "license", "expression": r#"has(descriptor.licenses) && descriptor.licenses.all(l, l in ["Apache-2.0", "MIT"])"#,
            "message": "only Apache-2.0 or MIT"}]);
        apply(&policies, "ModelPolicy", &enforce, policy_spec("Enforce", &label, license.clone())).await;
        let stalled = eventually("the broken policy is Stalled", Duration::from_secs(30), || async {
            let p = policies.get(&broken).await.ok()?;
            let s = p.status.clone()?;
            (s.observed_generation == p.metadata.generation
                && find(&s.conditions, READY)?.status == ConditionStatus::False)
                .then_some(p)
        })
        .await;
        let status = stalled.status.clone().unwrap();
        assert_eq!(kstatus::of(&stalled), KStatus::Failed);
        assert!(
            find(&status.conditions, READY).unwrap().message.contains("rule \"bad\" does not compile"),
            "{status:?}"
        );
        assert_eq!(argo::status_of(&stalled), "Degraded");
        eventually("the licence policy is Ready", Duration::from_secs(30), || async {
            let p = policies.get(&enforce).await.ok()?;
            (p.status?.compiled_rules == Some(1)).then_some(())
        })
        .await;
        let m = model_where(&models, "v1 compliant", |m| {
            compliant(m) == Some((ConditionStatus::True, "PoliciesPassed".into()))
        })
        .await;
        assert!(m.status.unwrap().violations.is_empty());
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let passed = eventually("a PoliciesPassed event", Duration::from_secs(30), || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| e.reason.as_deref() == Some("PoliciesPassed"))
        })
        .await;
        assert_eq!(passed.regarding.and_then(|r| r.name).as_deref(), Some("llm"));
        // Idle: the Model is reconciled again (interval 10s) and nothing is evaluated again.
        let metrics = operator.address("metrics");
        let passes = format!("modelpack_policy_evaluations_total{{policy=\"{enforce}\",result=\"pass\"}} 1");
        assert!(http_get(&metrics, "/metrics").1.contains(&passes), "{passes}");
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(http_get(&metrics, "/metrics").1.contains(&passes), "evaluated again while idle");

        // v2 is GPL: not accepted, the nodes keep v1, the deployment is Stalled naming the policy.
        let v2 = oras_push_cncf(bed, &bed.plain, &repo, "prod", &files, &licensed(&files, "GPL-3.0-only"));
        let d = wait_for_deployment(&deployments, "serve", "PolicyViolation", |s| {
            s.drift.as_ref().is_some_and(|d| d.reason == "PolicyViolation")
        })
        .await;
        let status = d.status.clone().unwrap();
        assert_eq!(status.deployed.as_ref().map(|v| v.digest.as_str()), Some(v1.as_str()));
        let ready = find(&status.conditions, READY).unwrap();
        assert_eq!(ready.reason, "PolicyViolation");
        assert!(ready.message.contains(&enforce) && ready.message.contains("license"), "{}", ready.message);
        assert_eq!(kstatus::of(&d), KStatus::Failed);
        let m =
            model_where(&models, "v2 refused", |m| compliant(m).is_some_and(|c| c.0 == ConditionStatus::False)).await;
        let ms = m.status.clone().unwrap();
        assert_eq!(ms.accepted.as_ref().map(|a| a.digest.as_str()), Some(v1.as_str()));
        assert_eq!(ms.violations.len(), 1, "{:?}", ms.violations);
        assert_eq!((ms.violations[0].policy.as_str(), ms.violations[0].rule.as_str()), (enforce.as_str(), "license"));
        assert!(ms.violations.iter().all(|v| v.policy != elsewhere && v.policy != broken));
        assert_eq!(argo::status_of(&m), "Degraded");
        let owner = format!("{ns}/serve");
        assert!(!pulled(&client, &owner).await.contains(&v2), "a refused version was pulled");

        // Audit: v2 goes through, the violation stays reported.
        apply(&policies, "ModelPolicy", &enforce, policy_spec("Audit", &label, license.clone())).await;
        wait_for_deployment(&deployments, "serve", "v2 in sync under Audit", in_sync_on(&v2)).await;
        let m = model_where(&models, "v2 accepted", |m| {
            m.status.as_ref().and_then(|s| s.accepted.as_ref()).is_some_and(|a| a.digest == v2)
        })
        .await;
        assert_eq!(compliant(&m), Some((ConditionStatus::False, "PolicyViolation".into())));
        assert_eq!(find(&m.status.as_ref().unwrap().conditions, READY).unwrap().status, ConditionStatus::True);
        assert_eq!(argo::status_of(&m), "Healthy");

        // Enforce again and a GPL v3: blocked, v2 kept; deleting the policy re-accepts.
        apply(&policies, "ModelPolicy", &enforce, policy_spec("Enforce", &label, license)).await;
        let v3_files = ModelFiles::new(42, &[("model.safetensors", 20_000)]);
        let v3 = oras_push_cncf(bed, &bed.plain, &repo, "prod", &v3_files, &licensed(&v3_files, "GPL-3.0-only"));
        let d = wait_for_deployment(&deployments, "serve", "v3 refused", |s| {
            s.drift.as_ref().is_some_and(|d| d.reason == "PolicyViolation" && d.message.contains(&v3[7..19]))
        })
        .await;
        assert_eq!(d.status.unwrap().deployed.map(|v| v.digest), Some(v2.clone()));
        let (_, metrics) = http_get(&metrics, "/metrics");
        let sample = format!("modelpack_policy_evaluations_total{{policy=\"{enforce}\",result=\"fail\"}}");
        assert!(metrics.contains(&sample), "{sample} in\n{metrics}");
        policies.delete(&enforce, &DeleteParams::default()).await.unwrap();
        wait_for_deployment(&deployments, "serve", "v3 in sync once the policy is gone", in_sync_on(&v3)).await;
        let m = model_where(&models, "no policy left", |m| compliant(m).is_none()).await;
        assert!(m.status.unwrap().violations.is_empty());
        for name in [&elsewhere, &broken] {
            policies.delete(name, &DeleteParams::default()).await.unwrap();
        }
        drop(nodes);
    }

    /// A tenant's pathological rule over a 0.9 MB config (a nested `map` concatenating strings:
    /// hours and gigabytes if it ran) on three Models, next to a good Model: the three fail the rule
    /// at once, naming the bound, and the good Model still follows its tag within its interval.
    #[tokio::test]
    async fn a_pathological_rule_holds_up_no_other_model() {
        let bed = Bed::get();
        let client = bed.client().await;
        install_crds(&client).await;
        let ns = namespace(&client, "policy-bounds").await;
        let _operator = Operator::start(&ns);
        let models: Api<Model> = Api::namespaced(client.clone(), &ns);
        let policies: Api<ModelPolicy> = Api::all(client.clone());
        let label = unique_suffix();
        let files = ModelFiles::new(44, &[("model.safetensors", 10_000)]);
        let mut config = cncf_config("huge", &files);
        config["descriptor"]["licenses"] = json!((0..36_000).map(|i| format!("{i:024}")).collect::<Vec<_>>());
        let (bad, good) = (format!("policy/bounds-bad-{label}"), format!("policy/bounds-good-{label}"));
        oras_push_cncf(bed, &bed.plain, &bad, "prod", &files, &config);
        oras_push_cncf(bed, &bed.plain, &good, "prod", &files, &licensed(&files, "MIT"));
        let blowup = "descriptor.licenses.map(a, descriptor.licenses.map(b, a + b)).size() > 0";
        let policy = format!("bounds-{label}");
        apply(
            &policies,
            "ModelPolicy",
            &policy,
            policy_spec("Enforce", &label, json!([{"name": "blowup", "expression": blowup}])),
        )
        .await;
        let spec = |repo: &str| json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "prod"}, "insecure": true, "interval": "10s"});
        let params = kube::api::PatchParams::apply("e2e").force();
        for i in 0..3 {
            let model = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model",
                "metadata": {"name": format!("bad-{i}"), "labels": {"e2e.modelpack.dev/policy": label}}, "spec": spec(&bad)});
            models.patch(&format!("bad-{i}"), &params, &kube::api::Patch::Apply(&model)).await.unwrap();
        }
        apply(&models, "Model", "good", spec(&good)).await;
        eventually("the good Model is accepted", Duration::from_secs(30), || async {
            models.get("good").await.ok()?.status?.accepted
        })
        .await;
        let v2_files = ModelFiles::new(45, &[("model.safetensors", 10_000)]);
        let v2 = oras_push_cncf(bed, &bed.plain, &good, "prod", &v2_files, &licensed(&v2_files, "MIT"));
        eventually("the good Model follows its tag within its interval", Duration::from_secs(25), || async {
            let m = models.get("good").await.ok()?;
            m.status?.accepted.filter(|a| a.digest == v2)
        })
        .await;
        for i in 0..3 {
            let m = eventually("the pathological rule failed at once", Duration::from_secs(10), || async {
                let m = models.get(&format!("bad-{i}")).await.ok()?;
                compliant(&m).is_some_and(|c| c.0 == ConditionStatus::False).then_some(m)
            })
            .await;
            let violations = m.status.unwrap().violations;
            assert!(violations[0].message.contains("not evaluated"), "{violations:?}");
        }
        policies.delete(&policy, &DeleteParams::default()).await.unwrap();
    }

    /// A label put on a Model can make a policy select it: judged at once, not at the next interval
    /// (an hour here).
    #[tokio::test]
    async fn a_model_labelled_into_a_policys_selection_is_judged_at_once() {
        let bed = Bed::get();
        let client = bed.client().await;
        install_crds(&client).await;
        let ns = namespace(&client, "policy-label").await;
        let _operator = Operator::start(&ns);
        let models: Api<Model> = Api::namespaced(client.clone(), &ns);
        let policies: Api<ModelPolicy> = Api::all(client.clone());
        let label = unique_suffix();
        let repo = format!("policy/label-{label}");
        let files = ModelFiles::new(43, &[("model.safetensors", 10_000)]);
        oras_push_cncf(bed, &bed.plain, &repo, "prod", &files, &licensed(&files, "GPL-3.0-only"));
        let name = format!("audit-{label}");
        let rules = json!([{"name": "license", "expression": r#"descriptor.licenses.all(l, l == "MIT")"#}]);
        apply(&policies, "ModelPolicy", &name, policy_spec("Audit", &label, rules)).await;
        let spec = json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "prod"}, "insecure": true, "interval": "1h"});
        apply(&models, "Model", "llm", spec).await;
        let m = model_where(&models, "ready, selected by no policy", |m| {
            m.status.as_ref().is_some_and(|s| s.accepted.is_some()) && compliant(m).is_none()
        })
        .await;
        assert!(m.metadata.labels.as_ref().is_none_or(|l| l.is_empty()));
        let labelled = json!({"metadata": {"labels": {"e2e.modelpack.dev/policy": label}}});
        models.patch("llm", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&labelled)).await.unwrap();
        let judged = eventually("the labelled Model is judged", Duration::from_secs(20), || async {
            let m = models.get("llm").await.ok()?;
            compliant(&m).filter(|(status, _)| *status == ConditionStatus::False)
        })
        .await;
        assert_eq!(judged.1, "PolicyViolation");
        policies.delete(&name, &DeleteParams::default()).await.unwrap();
    }
}

fn one_policy(action: &str, rules: Value) -> tempfile::NamedTempFile {
    let doc = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "ModelPolicy", "metadata": {"name": "ci"},
        "spec": {"action": action, "rules": rules}});
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(serde_saphyr::to_string(&doc).unwrap().as_bytes()).unwrap();
    file
}

#[tokio::test]
async fn check_in_text_mode_exits_by_the_enforce_verdicts() {
    let registry = &Bed::get().referrers;
    let repo = format!("policy/{}/text", unique_suffix());
    let digest = craft::push(registry, &repo, "v1", &rich_artifact()).await;
    let rules = json!([
        {"name": "licenses", "expression": r#"descriptor.licenses.all(l, l in ["MIT"])"#, "message": "MIT only"},
        {"name": "sbom", "expression": r#"referrers.exists(r, r.artifactType == "application/spdx+json")"#},
        {"name": "format", "expression": "config.format == 'gguf'"},
    ]);
    let by_tag = format!("{}/{repo}:v1", registry.host);
    let enforce = one_policy("Enforce", rules.clone());
    let (code, stdout, stderr) =
        operator(&["check", &by_tag, "--policy", enforce.path().to_str().unwrap(), "--insecure"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one line per failure and a summary: {stdout}");
    assert!(lines[0].starts_with("FAIL ci/licenses: MIT only (evaluated to false)"), "{stdout}");
    assert!(lines[1].starts_with("FAIL ci/sbom: referrers.exists("), "{stdout}");
    assert_eq!(lines[2], format!("{}/{repo}@{digest}: 1 of 3 rules passed", registry.host));

    let audit = one_policy("Audit", rules);
    let (code, stdout, _) = operator(&["check", &by_tag, "--policy", audit.path().to_str().unwrap(), "--insecure"]);
    assert_eq!(code, 0, "Audit failures do not fail the pipeline: {stdout}");
    assert!(stdout.lines().next().unwrap().starts_with("AUDIT ci/licenses: "), "{stdout}");

    // Both files at once, the Enforce one passing; by digest the tag is empty.
    let by_digest = format!("{}/{repo}@{digest}", registry.host);
    let passing = one_policy(
        "Enforce",
        json!([{"name": "no-tag", "expression": "tag == '' && digest == '" .to_owned() + &digest + "'"}]),
    );
    let (code, stdout, stderr) = operator(&[
        "check",
        &by_digest,
        "--policy",
        passing.path().to_str().unwrap(),
        "--policy",
        audit.path().to_str().unwrap(),
        "--insecure",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["digest"], digest);
    assert_eq!(out["results"].as_array().unwrap().len(), 4);
    assert_eq!(out["results"][0], json!({"policy": "ci", "rule": "no-tag", "passed": true, "message": ""}));
    let (passing, audit) = (passing.path().to_str().unwrap(), audit.path().to_str().unwrap());
    let (code, stdout, _) = operator(&["check", &by_digest, "--policy", passing, audit, "--insecure", "-o", "json"]);
    assert_eq!(code, 0, "--policy takes several files: {stdout}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["results"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn the_crd_refuses_invalid_policies_with_the_rules_message() {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let client = Bed::get().client().await;
    support::install_crds(&client).await;
    let gvk = GroupVersionKind::gvk("modelpack.dev", "v1alpha1", "ModelPolicy");
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::from_gvk(&gvk));
    let create = |spec: Value| {
        let api = api.clone();
        async move {
            let name = format!("crd-{}", unique_suffix());
            let obj: DynamicObject = serde_json::from_value(json!({"apiVersion": "modelpack.dev/v1alpha1",
                "kind": "ModelPolicy", "metadata": {"name": name}, "spec": spec}))
            .unwrap();
            let result = api.create(&PostParams::default(), &obj).await;
            if result.is_ok() {
                api.delete(&name, &Default::default()).await.unwrap();
            }
            result.map(|_| ()).map_err(|e| e.to_string())
        }
    };
    let rule = |name: &str| json!({"name": name, "expression": "true"});
    create(json!({"rules": [rule("a"), rule("b-2")], "modelSelector": {"matchLabels": {"x": "y"}}})).await.unwrap();
    let invalid = [
        (json!({"rules": [rule("a"), rule("a")]}), "rule names must be unique"),
        (json!({"rules": [rule("Not_A_Label")]}), "rule name must be a lowercase DNS label"),
        (json!({"rules": []}), "spec.rules"),
        (json!({"action": "Block", "rules": [rule("a")]}), "spec.action"),
        (json!({"rules": [{"name": "a", "expression": ""}]}), "spec.rules[0].expression"),
    ];
    for (spec, want) in invalid {
        let err = create(spec.clone()).await.expect_err(&format!("{spec} was accepted"));
        assert!(err.contains(want), "{spec}: {err}");
    }
}
