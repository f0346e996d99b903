//! What `inspect` and the policy variables say a model file holds, side by side with outside tools:
//! pickle verdicts with picklescan and fickling, safetensors counts with the `safetensors` package,
//! GGUF with the `gguf` package (all from PyPI, pinned in e2e/tools/python/requirements.txt; the
//! cases are crafted by e2e/contents/cases.py). Where our verdict differs from an oracle's, the
//! docs/model-contents.md's table says so and why: the test fails on a difference the table does not state.
//! Without the bed: the artifacts come from a registry of the test's own on 127.0.0.1.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modelpack_operator::modelpack::contents::{Contents, Format, Verdict};
use modelpack_operator::registry::{self, Options, Registry, Repository};
use serde_json::{Value, json};
use support::craft::{Artifact, Blob};
use support::static_registry::StaticRegistry;

/// The pinned Python venv e2e/tools/build makes (`MODELPACK_E2E_PYTHON` overrides it).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MODELPACK_E2E_PYTHON") {
        return p.into();
    }
    let cache = std::env::var_os("MODELPACK_TOOLS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache"));
        base.join("modelpack-operator/tools")
    });
    let python = cache.join("python/bin/python3");
    assert!(python.exists(), "{} is missing: run e2e/tools/build python", python.display());
    python
}

/// Crafts the cases and has the oracles judge them, once per run of this file (the judges take a
/// while on the endless pickle); returns the directory and the cases.
fn cases() -> (&'static Path, Vec<Value>) {
    static CASES: std::sync::OnceLock<(PathBuf, Vec<Value>)> = std::sync::OnceLock::new();
    let (dir, cases) = CASES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("contents-cases");
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/contents/cases.py");
        let out = std::process::Command::new(python()).arg(&script).arg(&dir).output().expect("running cases.py");
        assert!(out.status.success(), "cases.py: {}", String::from_utf8_lossy(&out.stderr));
        let cases = serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
        (dir, cases)
    });
    (dir.as_path(), cases.clone())
}

fn model(name: &str, path: &str, data: Vec<u8>, param_size: Option<&str>) -> Artifact {
    let mut config = json!({"descriptor": {"name": name}, "modelfs": {"type": "layers", "diffIds": []}});
    if let Some(p) = param_size {
        config["config"] = json!({"paramSize": p});
    }
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![
            Blob::new("application/vnd.cncf.model.weight.v1.raw", data).annotate("org.cncf.model.filepath", path),
        ],
        annotations: BTreeMap::new(),
    }
}

fn client() -> Registry {
    Registry::new(&Options { insecure: true, ..Options::default() }, None).unwrap()
}

/// The contents of every layer of `repo:v1`, read as the controller and `check` read them.
async fn contents(registry: &StaticRegistry, repo: &str) -> Vec<Contents> {
    let repository = Repository::parse(&format!("{}/{repo}", registry.host)).unwrap();
    let resolution = client().resolve(&repository, &registry::RefSpec::Tag("v1".into())).await.unwrap();
    registry::inspect(&client(), &repository, &resolution.digest).await.unwrap().contents
}

fn name(v: Verdict) -> &'static str {
    match v {
        Verdict::Safe => "safe",
        Verdict::Suspicious => "suspicious",
        Verdict::Unknown => "unknown",
        Verdict::Unsafe => "unsafe",
    }
}

/// docs/model-contents.md's table of differences: case → (ours, picklescan, fickling).
fn documented() -> BTreeMap<String, (String, String, String)> {
    let readme = include_str!("../../docs/model-contents.md");
    let section = readme
        .split("<!-- contents-oracle-differences -->")
        .nth(1)
        .expect("docs/model-contents.md's differences table");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().trim_matches('`').to_owned()).collect();
            (cells[1].clone(), (cells[2].clone(), cells[3].clone(), cells[4].clone()))
        })
        .collect()
}

#[tokio::test]
async fn pickle_verdicts_side_by_side_with_picklescan_and_fickling() {
    let (dir, cases) = cases();
    let registry = StaticRegistry::start();
    let documented = documented();
    let mut table = String::from("case                         ours        picklescan  fickling\n");
    let mut undocumented = Vec::new();
    let mut seen = Vec::new();
    for case in cases.iter().filter(|c| c["kind"] == "pickle") {
        let case_name = case["name"].as_str().unwrap();
        let data = std::fs::read(dir.join(case_name)).unwrap();
        let repo = format!("oracles/{}", case_name.replace('_', "-"));
        registry.push(&repo, "v1", &model(case_name, case["path"].as_str().unwrap(), data, None));
        let c = contents(&registry, &repo).await.remove(0);
        let ours = c.pickle.as_ref().map_or("none", |p| name(p.verdict));
        let (picklescan, fickling) = (case["picklescan"].as_str().unwrap(), case["fickling"].as_str().unwrap());
        table.push_str(&format!("{case_name:<28} {ours:<11} {picklescan:<11} {fickling}\n"));
        if case["malicious"] == true {
            assert_eq!(ours, "unsafe", "{case_name}: crafted to run a command: {c:?}");
        }
        if ours != picklescan || ours != fickling {
            let row = (ours.to_owned(), picklescan.to_owned(), fickling.to_owned());
            if documented.get(case_name) != Some(&row) {
                undocumented.push(format!("{case_name}: ours {ours}, picklescan {picklescan}, fickling {fickling}"));
            }
        }
        seen.push(case_name.to_owned());
    }
    println!("{table}");
    assert!(
        undocumented.is_empty(),
        "differences docs/model-contents.md does not state:\n{}\n{table}",
        undocumented.join("\n")
    );
    let stale: Vec<_> = documented.keys().filter(|k| !seen.contains(k)).collect();
    assert!(stale.is_empty(), "docs/model-contents.md documents cases that do not exist: {stale:?}");
}

#[tokio::test]
async fn safetensors_and_gguf_headers_match_their_packages() {
    let (dir, cases) = cases();
    let registry = StaticRegistry::start();
    for case in cases.iter().filter(|c| c["kind"] != "pickle") {
        let case_name = case["name"].as_str().unwrap();
        let data = std::fs::read(dir.join(case_name)).unwrap();
        let repo = format!("oracles/{}", case_name.replace('_', "-"));
        registry.push(&repo, "v1", &model(case_name, case["path"].as_str().unwrap(), data, None));
        let c = contents(&registry, &repo).await.remove(0);
        let oracle = &case["oracle"];
        if oracle.get("error").is_some() {
            assert!(
                c.parameters.is_none() && c.reason.is_some(),
                "{case_name}: the package refuses it ({oracle}): {c:?}"
            );
            continue;
        }
        assert_eq!(c.parameters, oracle["parameters"].as_u64(), "{case_name}: {c:?}");
        assert_eq!(c.tensors, oracle["tensors"].as_u64(), "{case_name}: {c:?}");
        match case["kind"].as_str().unwrap() {
            "safetensors" => {
                assert_eq!(c.format, Format::Safetensors);
                let theirs: BTreeMap<String, String> = serde_json::from_value(oracle["metadata"].clone()).unwrap();
                assert_eq!(c.metadata, theirs, "{case_name}");
            }
            "gguf" => {
                assert_eq!(c.format, Format::Gguf);
                assert_eq!(c.metadata["general.architecture"], oracle["architecture"].as_str().unwrap());
                let keys: Vec<&String> = c.metadata.keys().collect();
                let theirs: Vec<String> = serde_json::from_value(oracle["keys"].clone()).unwrap();
                assert_eq!(keys, theirs.iter().collect::<Vec<_>>(), "{case_name}");
            }
            other => panic!("unknown case kind {other}"),
        }
    }
}

fn policy(rules: &[(&str, &str)]) -> tempfile::NamedTempFile {
    let rules: Vec<Value> = rules.iter().map(|(n, e)| json!({"name": n, "expression": e})).collect();
    let doc = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "ModelPolicy", "metadata": {"name": "weights"},
        "spec": {"action": "Enforce", "rules": rules}});
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, doc.to_string().as_bytes()).unwrap();
    file
}

/// The rules the issue names: no pickle outside the allow-list, only safetensors, and the declared
/// `paramSize` within 5 % of the weights.
const RULES: [(&str, &str); 4] = [
    ("no-unsafe-code", "!weights.unsafe"),
    ("pickles-allowed", "layers.all(l, !has(l.contents.pickle) || l.contents.pickle.verdict == 'safe')"),
    ("only-safetensors", "weights.formats.all(f, f == 'safetensors')"),
    (
        "declared-size",
        "!has(weights.declaredParameters) || (weights.parameters * 100 >= weights.declaredParameters * 95 \
         && weights.parameters * 100 <= weights.declaredParameters * 105)",
    ),
];

#[test]
fn check_refuses_a_malicious_pickle_and_a_false_param_size_before_any_pull() {
    let (dir, cases) = cases();
    let st = cases.iter().find(|c| c["name"] == "model_safetensors").unwrap();
    let params = st["oracle"]["parameters"].as_u64().unwrap().to_string();
    let safetensors = std::fs::read(dir.join("model_safetensors")).unwrap();
    let malicious = std::fs::read(dir.join("torch_zip_malicious")).unwrap();
    let registry = StaticRegistry::start();
    registry.push("m/good", "v1", &model("good", "model.safetensors", safetensors.clone(), Some(&params)));
    registry.push("m/false-size", "v1", &model("big", "model.safetensors", safetensors, Some("7B")));
    registry.push("m/pickle", "v1", &model("evil", "pytorch_model.bin", malicious, None));
    let file = policy(&RULES);
    let path = file.path().to_str().unwrap();
    let check = |repo: &str| {
        let reference = format!("{}/{repo}:v1", registry.host);
        let (code, stdout, stderr) =
            support::operator(&["check", &reference, "--policy", path, "--insecure", "-o", "json"]);
        let out: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
        let failed: Vec<String> = out["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["passed"] == false)
            .map(|r| r["rule"].as_str().unwrap().to_owned())
            .collect();
        (code, failed)
    };
    assert_eq!(check("m/good"), (0, vec![]));
    assert_eq!(check("m/false-size"), (1, vec!["declared-size".to_owned()]));
    let (code, failed) = check("m/pickle");
    assert_eq!(code, 1);
    assert_eq!(failed, ["no-unsafe-code", "pickles-allowed", "only-safetensors"]);
}

#[test]
fn inspect_json_carries_each_files_contents_and_the_weights() {
    let (dir, _) = cases();
    let malicious = std::fs::read(dir.join("torch_zip_malicious")).unwrap();
    let registry = StaticRegistry::start();
    registry.push("m/pickle", "v1", &model("evil", "pytorch_model.bin", malicious, None));
    let reference = format!("{}/m/pickle:v1", registry.host);
    let (code, stdout, stderr) = support::operator(&["inspect", &reference, "--insecure", "-o", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    let contents = &out["layers"][0]["contents"];
    assert_eq!(contents["format"], "pytorch", "{contents}");
    assert_eq!(contents["pickle"]["verdict"], "unsafe");
    assert!(contents["pickle"]["imports"].as_array().unwrap().contains(&json!("posix.system")), "{contents}");
    assert_eq!(out["weights"]["unsafe"], true);
    let (_, text, _) = support::operator(&["inspect", &reference, "--insecure"]);
    assert!(text.contains("pytorch") && text.contains("pickle unsafe"), "{text}");
}

/// A 100-file model costs a bounded number of requests, and a second look at the same blobs none
/// beyond the manifest and config (results are kept per blob digest).
#[tokio::test]
async fn a_hundred_files_cost_bounded_requests_and_a_second_look_none() {
    let (dir, _) = cases();
    let safetensors = std::fs::read(dir.join("model_safetensors")).unwrap();
    let pickle = std::fs::read(dir.join("torch_zip_benign")).unwrap();
    let registry = StaticRegistry::start();
    let mut artifact = model("many", "w/0.safetensors", safetensors.clone(), None);
    artifact.layers.clear();
    for i in 0..100u8 {
        // Distinct blobs (a trailing byte each would break the headers: the name differs instead).
        let (mut data, path) = if i % 2 == 0 {
            (safetensors.clone(), format!("w/{i}.safetensors"))
        } else {
            (pickle.clone(), format!("w/{i}.pt"))
        };
        if i % 2 == 0 {
            // A metadata value of the header changes: same length, another digest.
            let at = data.windows(6).position(|w| w == b"oracle").unwrap();
            data[at..at + 2].copy_from_slice(format!("{i:02}").as_bytes());
        } else {
            data.extend(std::iter::repeat_n(0u8, usize::from(i)));
        }
        artifact.layers.push(
            Blob::new("application/vnd.cncf.model.weight.v1.raw", data).annotate("org.cncf.model.filepath", &path),
        );
    }
    registry.push("m/many", "v1", &artifact);
    registry.take_counts();
    let all = contents(&registry, "m/many").await;
    let (requests, bytes) = registry.take_counts();
    println!("100 files: {requests} requests, {bytes} bytes");
    assert_eq!(all.iter().filter(|c| c.format == Format::Safetensors && c.parameters.is_some()).count(), 50);
    // Zips with trailing bytes are still read (the end record is found from the end).
    assert_eq!(all.iter().filter(|c| c.format == Format::Pytorch).count(), 50, "{:?}", all[1]);
    assert!(requests <= 2 + 100 * 3, "{requests} requests");
    let _ = contents(&registry, "m/many").await;
    let (again, _) = registry.take_counts();
    assert!(again <= 3, "a second look: {again} requests");
}

/// Hostile files cost their bounds and no more: an endless pickle larger than the per-file bound, a
/// safetensors header that claims more bytes than the file has, a zip whose directory points
/// outside the file. Each is "unknown" or malformed with the reason.
#[tokio::test]
async fn hostile_files_are_read_within_the_bounds_and_never_safe() {
    let registry = StaticRegistry::start();
    let bound = registry::contents::BOUNDS.file_bytes as usize;
    let mut endless = b"\x80\x02".to_vec();
    endless.resize(bound + (4 << 20), b'(');
    let mut lying = (u64::MAX / 2).to_le_bytes().to_vec();
    lying.extend_from_slice(b"{\"a\":1}");
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend([0u8; 40]);
    zip.extend(b"PK\x05\x06\0\0\0\0\x01\0\x01\0\x2e\0\0\0\0\0\xff\x7f\0\0");
    for (repo, path, data) in
        [("h/endless", "model.pkl", endless), ("h/lying", "model.safetensors", lying), ("h/zip", "model.pt", zip)]
    {
        registry.push(repo, "v1", &model(repo, path, data, None));
    }
    registry.take_counts();
    let c = contents(&registry, "h/endless").await.remove(0);
    let (requests, bytes) = registry.take_counts();
    assert_eq!(c.pickle.as_ref().map(|p| p.verdict), Some(Verdict::Unknown), "{c:?}");
    assert!(bytes < bound + (1 << 20), "{bytes} bytes read for a file over the {bound}-byte bound");
    assert!(requests < 20, "{requests} requests");
    let c = contents(&registry, "h/lying").await.remove(0);
    assert_eq!((c.format, c.parameters), (Format::Safetensors, None));
    assert!(c.reason.as_deref().is_some_and(|r| r.contains("header of")), "{c:?}");
    let c = contents(&registry, "h/zip").await.remove(0);
    assert_eq!(c.pickle.as_ref().map(|p| p.verdict), Some(Verdict::Unknown), "{c:?}");
    assert!(c.reason.as_deref().is_some_and(|r| r.contains("outside")), "{c:?}");
}
