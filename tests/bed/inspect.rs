//! `modelpack-operator inspect` and the registry module against the bed's real registries:
//! both families, TLS with a custom CA, basic auth from a docker config, semver over a paginated tag
//! list, and each failure with a one-line cause.

use crate::support;

use std::collections::BTreeMap;

use base64::Engine;
use modelpack_operator::registry::{self, Credential, Options, RefSpec, Registry, Repository};
use serde_json::{Value, json};
use support::fixtures::{ModelFiles, cncf_config, modctl_push, oras_push_cncf};
use support::{Bed, craft, operator, run_tool, unique_suffix};

fn inspect_json(args: &[&str]) -> Value {
    let mut all = vec!["inspect", "-o", "json"];
    all.extend(args);
    let (code, stdout, stderr) = operator(&all);
    assert_eq!(code, 0, "inspect failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn inspect_error(args: &[&str]) -> String {
    let mut all = vec!["inspect"];
    all.extend(args);
    let (code, stdout, stderr) = operator(&all);
    assert_eq!(code, 1, "expected failure, got {code}: {stdout}{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

fn model() -> ModelFiles {
    ModelFiles::new(7, &[("model.safetensors", 200_000), ("config.json", 300), ("docs/README.md", 50)])
}

fn check_layers(got: &Value, model: &ModelFiles) {
    let layers: BTreeMap<String, (String, u64)> = got["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_owned(),
                (l["digest"].as_str().unwrap().to_owned(), l["size"].as_u64().unwrap()),
            )
        })
        .collect();
    assert_eq!(layers.len(), model.files.len(), "{layers:?}");
    for (path, data) in &model.files {
        let (digest, size) = &layers[path];
        assert_eq!(digest, &craft::sha256(data), "{path}");
        assert_eq!(*size, data.len() as u64, "{path}");
    }
}

#[tokio::test]
async fn inspects_a_modctl_artifact_and_an_oras_artifact() {
    let bed = Bed::get();
    let m = model();
    let repo = format!("inspect/modctl-{}", unique_suffix());
    let digest = modctl_push(bed, &bed.plain, &repo, "v1", &m);
    let got = inspect_json(&["--insecure", &format!("{}/{repo}:v1", bed.plain.host)]);
    assert_eq!(got["digest"], json!(digest));
    assert_eq!(got["tag"], json!("v1"));
    assert_eq!(got["family"], json!("cnai"));
    assert_eq!(got["artifactType"], json!("application/vnd.cnai.model.manifest.v1+json"));
    assert_eq!(got["config"]["architecture"], json!("transformer"));
    check_layers(&got, &m);
    // By digest, the same answer.
    let by_digest = inspect_json(&["--insecure", &format!("{}/{repo}@{digest}", bed.plain.host)]);
    assert_eq!(by_digest["layers"], got["layers"]);

    let repo = format!("inspect/oras-{}", unique_suffix());
    let digest = oras_push_cncf(bed, &bed.referrers, &repo, "v2", &m, &cncf_config("oras-model", &m));
    let got = inspect_json(&["--insecure", &format!("{}/{repo}:v2", bed.referrers.host)]);
    assert_eq!(got["digest"], json!(digest));
    assert_eq!(got["family"], json!("cncf"));
    assert_eq!(got["descriptor"]["name"], json!("oras-model"));
    assert_eq!(got["config"]["paramSize"], json!("1M"));
    check_layers(&got, &m);

    let text = operator(&["inspect", "--insecure", &format!("{}/{repo}:v2", bed.referrers.host)]);
    assert_eq!(text.0, 0);
    assert!(text.1.contains("docs/README.md") && text.1.contains(&digest), "{}", text.1);
}

#[tokio::test]
async fn tls_registry_needs_its_ca() {
    let bed = Bed::get();
    let m = model();
    let repo = format!("inspect/tls-{}", unique_suffix());
    let digest = oras_push_cncf(bed, &bed.tls, &repo, "v1", &m, &cncf_config("tls", &m));
    let reference = format!("{}/{repo}:v1", bed.tls.host);
    let ca = bed.tls.tls_ca.as_ref().unwrap().to_str().unwrap();
    assert_eq!(inspect_json(&["--ca-file", ca, &reference])["digest"], json!(digest));
    let err = inspect_error(&[&reference]);
    assert!(err.contains("certificate") || err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn basic_auth_from_a_docker_config() {
    let bed = Bed::get();
    credentials_from_a_docker_config(&bed.auth).await;
}

#[tokio::test]
async fn bearer_token_flow_from_a_docker_config() {
    let bed = Bed::get();
    credentials_from_a_docker_config(&bed.token).await;
}

async fn credentials_from_a_docker_config(registry: &support::Registry) {
    let bed = Bed::get();
    let m = model();
    let repo = format!("inspect/auth-{}", unique_suffix());
    let digest = oras_push_cncf(bed, registry, &repo, "v1", &m, &cncf_config("auth", &m));
    let reference = format!("{}/{repo}:v1", registry.host);
    let (user, password) = registry.basic_auth.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write_config = |name: &str, password: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let path = dir.path().join(name);
        std::fs::write(&path, json!({"auths": {&registry.host: {"auth": auth}}}).to_string()).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let good = write_config("good.json", &password);
    assert_eq!(inspect_json(&["--insecure", "--docker-config", &good, &reference])["digest"], json!(digest));

    let bad = write_config("bad.json", "wrong-password");
    let err = inspect_error(&["--insecure", "--docker-config", &bad, &reference]);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("wrong-password"), "the password leaked: {err}");
    let err = inspect_error(&["--insecure", "--docker-config", "/nonexistent/config.json", &reference]);
    assert!(err.contains("/nonexistent/config.json"), "{err}");
    let empty = dir.path().join("none.json");
    std::fs::write(&empty, r#"{"auths":{}}"#).unwrap();
    let err = inspect_error(&["--insecure", "--docker-config", empty.to_str().unwrap(), &reference]);
    assert!(err.contains("refused the credentials"), "anonymous access is refused too: {err}");
}

#[tokio::test]
async fn failures_name_their_cause() {
    let bed = Bed::get();
    let host = &bed.plain.host;
    let err = inspect_error(&["--insecure", &format!("{host}/inspect/missing-{}:v1", unique_suffix())]);
    assert!(err.contains("not found"), "{err}");
    let err = inspect_error(&["--insecure", "127.0.0.1:1/x/y:v1"]);
    assert!(err.contains("unavailable") && err.contains("127.0.0.1:1"), "{err}");
    let err = inspect_error(&["--insecure", "not a reference"]);
    assert!(err.contains("invalid reference"), "{err}");

    // An ordinary container image is not a ModelPack.
    let repo = format!("inspect/image-{}", unique_suffix());
    craft::push(&bed.plain, &repo, "v1", &craft::container_image()).await;
    let err = inspect_error(&["--insecure", &format!("{host}/{repo}:v1")]);
    assert!(err.contains("not a ModelPack") && err.contains("application/vnd.oci.image.config.v1+json"), "{err}");

    // A layer that would escape the model directory.
    let repo = format!("inspect/evil-{}", unique_suffix());
    let evil = craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", b"{}".to_vec()),
        layers: vec![
            craft::Blob::new("application/vnd.cncf.model.weight.v1.raw", b"x".to_vec())
                .annotate("org.cncf.model.filepath", "a/../../escape"),
        ],
        annotations: BTreeMap::new(),
    };
    craft::push(&bed.plain, &repo, "v1", &evil).await;
    let err = inspect_error(&["--insecure", &format!("{host}/{repo}:v1")]);
    assert!(err.contains("unsafe file path") && err.contains("a/../../escape"), "{err}");
}

#[tokio::test]
async fn semver_picks_the_highest_match_across_paginated_tags() {
    let bed = Bed::get();
    let m = model();
    let repo = format!("inspect/semver-{}", unique_suffix());
    oras_push_cncf(bed, &bed.plain, &repo, "0.1.0", &m, &cncf_config("old", &m));
    let target = ModelFiles::new(8, &[("model.safetensors", 1000)]);
    let best = oras_push_cncf(bed, &bed.plain, &repo, "1.1049.0", &target, &cncf_config("best", &target));
    // 1,050 more tags than one page (1,000) holds, plus tags that are not versions or are filtered.
    let mut tags: Vec<String> = (0..1049).map(|i| format!("1.{i}.0")).collect();
    tags.extend(["latest".into(), "2.0.0-rc.1".into(), "3.0.0-gguf".into(), "main".into()]);
    let source = format!("{}/{repo}:0.1.0", bed.plain.host);
    for chunk in tags.chunks(400) {
        let mut args = vec!["tag", "--plain-http", source.as_str()];
        args.extend(chunk.iter().map(String::as_str));
        run_tool(&bed.tool("oras"), &args, &[], None);
    }
    let registry = Registry::new(&Options { insecure: true, ..Default::default() }, None::<&Credential>).unwrap();
    let repository = Repository::parse(&format!("{}/{repo}", bed.plain.host)).unwrap();
    let all = registry.tags(&repository).await.unwrap();
    assert_eq!(all.len(), 1049 + 4 + 2, "every tag, across pages");

    let semver =
        |range: &str, filter: Option<&str>| RefSpec::Semver { range: range.into(), filter: filter.map(Into::into) };
    let got = registry.resolve(&repository, &semver(">=1.0.0 <2.0.0", None)).await.unwrap();
    assert_eq!((got.digest.as_str(), got.tag.as_deref()), (best.as_str(), Some("1.1049.0")));
    let got = registry.resolve(&repository, &semver("^1.5", Some(r"^1\.[0-9]{1,2}\.0$"))).await.unwrap();
    assert_eq!(got.tag.as_deref(), Some("1.99.0"), "the filter restricts candidates");
    let err = registry.resolve(&repository, &semver(">=5", None)).await.unwrap_err();
    assert!(err.to_string().contains("no tag") && err.to_string().contains("1055 tags considered"), "{err}");
    let err = registry.resolve(&repository, &semver("not a range", None)).await.unwrap_err();
    assert!(matches!(err, registry::Error::InvalidSemver { .. }), "{err}");
}
