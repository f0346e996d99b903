//! A hostile registry (tests/support/hostile.rs) answering an endless body on one endpoint at a
//! time: the CLI refuses each with one line, in bounded time and memory (peak RSS from wait4), and
//! the controller stalls the Model that points at it while a Model on the bed's registry stays Ready.

use crate::support;

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use modelpack_operator::api::conditions::{ConditionStatus, READY, STALLED, find};
use modelpack_operator::api::{Model, ModelStatus};
use modelpack_operator::registry::{self, Options, RefSpec, Registry, Repository};
use serde_json::{Value, json};
use support::fixtures::{ModelFiles, cncf_config, oras_push_cncf};
use support::hostile::{Endless, Hostile, REPO, TAG, endless_digest};
use support::measure::run_measured;
use support::{Bed, Operator, eventually, install_crds, namespace, unique_suffix};

/// What the CLI costs: well under this, while the hostile answer is 300 MB.
const MAX_PEAK_RSS: u64 = 64 << 20;
/// What a client that stops at its cap lets the front send: the largest cap (4 MiB) and the
/// sockets' buffers.
const MAX_SENT: usize = 32 << 20;
const MAX_SECONDS: u64 = 30;

/// One clear line, bounded time and memory; returns the line.
fn refused(what: &str, args: &[&str]) -> String {
    let run = run_measured(args);
    let line = run.stderr.trim_end();
    assert_eq!(run.code, 1, "{what}: {}", run.stderr);
    assert_eq!(line.lines().count(), 1, "{what}: one line: {line:?}");
    assert!(line.len() < 1000 && !line.chars().any(char::is_control), "{what}: a short clean line: {line:?}");
    assert!(run.peak_rss < MAX_PEAK_RSS, "{what}: peak RSS {} MiB", run.peak_rss >> 20);
    assert!(run.elapsed < Duration::from_secs(MAX_SECONDS), "{what}: took {:?}", run.elapsed);
    eprintln!("{what}: {} MiB peak, {:?}: {line}", run.peak_rss >> 20, run.elapsed);
    line.to_owned()
}

#[test]
fn inspect_refuses_every_endless_answer_in_bounded_memory() {
    let cases = [
        (Endless::Token, "token response of 127.0.0.1 is larger than the 65536-byte limit"),
        (Endless::ManifestByTag, &format!("manifest {{host}}/{REPO}:{TAG} is larger than the 4194304-byte limit")),
        (Endless::ManifestByDigest, &format!("manifest {{host}}/{REPO}@{} is larger than", endless_digest())),
        (Endless::ManifestStatedTooLarge, "is larger than the 4194304-byte limit"),
        (Endless::ConfigBlob, "is larger than the 1048576-byte limit"),
    ];
    for (endless, expected) in cases {
        let front = Hostile::start(endless);
        let line = refused(&format!("inspect, {endless:?}"), &["inspect", "--insecure", &front.reference()]);
        assert!(front.endless_sent() < MAX_SENT, "{endless:?}: {} MiB received", front.endless_sent() >> 20);
        let expected = expected.replace("{host}", &front.host);
        assert!(line.contains(&expected), "{endless:?}: {line}");
    }
}

#[test]
fn endless_error_bodies_become_one_short_line() {
    for (endless, expected) in
        [(Endless::ServerError, "HTTP 500 Internal Server Error: [31mboom aaaa"), (Endless::NotFoundError, "not found")]
    {
        let front = Hostile::start(endless);
        let by_digest = format!("{}/{REPO}@{}", front.host, front.digest);
        for reference in [front.reference(), by_digest] {
            let line = refused(&format!("inspect {reference}, {endless:?}"), &["inspect", "--insecure", &reference]);
            assert!(line.contains(expected), "{endless:?}: {line}");
            assert!(line.len() < 500, "{endless:?}: {} bytes", line.len());
        }
    }
}

#[test]
fn manifest_text_in_an_error_is_one_short_line() {
    let front = Hostile::start(Endless::HugeMediaType);
    let line = refused("inspect, HugeMediaType", &["inspect", "--insecure", &front.reference()]);
    assert!(line.contains("not a ModelPack") && line.ends_with('…'), "{line}");
}

#[test]
fn verify_refuses_an_endless_signature_manifest() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cosign.pub");
    std::fs::write(&key_file, key.public_key_pem()).unwrap();
    let front = Hostile::start(Endless::SignatureTag);
    let args = ["verify", "--insecure", "--cosign-key", key_file.to_str().unwrap(), &front.reference()];
    let line = refused("verify, SignatureTag", &args);
    assert!(front.endless_sent() < MAX_SENT, "{} MiB received", front.endless_sent() >> 20);
    let expected = format!(
        "manifest {}/{REPO}:sha256-{}.sig is larger than the 4194304-byte limit",
        front.host,
        &front.digest[7..]
    );
    assert!(line.contains(&expected), "{line}");
}

#[test]
fn verify_refuses_an_endless_referrers_list() {
    let dir = tempfile::tempdir().unwrap();
    let policy = json!({"version": "1.0", "trustPolicies": [{
        "name": "all", "registryScopes": ["*"], "signatureVerification": {"level": "strict"},
        "trustStores": ["ca:hostile"], "trustedIdentities": ["*"]}]});
    std::fs::write(dir.path().join("trustpolicy.json"), policy.to_string()).unwrap();
    let store = dir.path().join("certs/ca/hostile");
    std::fs::create_dir_all(&store).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(store.join("root.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
    let front = Hostile::start(Endless::Referrers);
    let (policy, certs) = (dir.path().join("trustpolicy.json"), dir.path().join("certs"));
    let args = [
        "verify",
        "--insecure",
        "--notation-policy",
        policy.to_str().unwrap(),
        "--notation-certs",
        certs.to_str().unwrap(),
        &front.reference(),
    ];
    let line = refused("verify, Referrers", &args);
    assert!(front.endless_sent() < MAX_SENT, "{} MiB received", front.endless_sent() >> 20);
    assert!(line.contains(&format!("referrers of {}/{REPO}@{} is larger than", front.host, front.digest)), "{line}");
}

#[test]
fn pull_refuses_an_endless_manifest_and_config() {
    for (endless, digest) in [(Endless::ManifestByDigest, endless_digest()), (Endless::ConfigBlob, String::new())] {
        let front = Hostile::start(endless);
        let digest = if digest.is_empty() { front.digest.clone() } else { digest };
        let cache = tempfile::tempdir().unwrap();
        let reference = format!("{}/{REPO}@{digest}", front.host);
        let args = ["pull", "--insecure", &reference, "--cache-dir", cache.path().to_str().unwrap()];
        let line = refused(&format!("pull, {endless:?}"), &args);
        assert!(line.contains("is larger than the"), "{endless:?}: {line}");
    }
}

fn hostile_repo(front: &Hostile) -> Repository {
    Repository::parse(&format!("{}/{REPO}", front.host)).unwrap()
}

#[tokio::test]
async fn an_endless_tag_page_and_referrers_list_are_cut_off() {
    let options = Options { insecure: true, ..Default::default() };
    let registry = Registry::new(&options, None).unwrap();
    let started = Instant::now();
    let front = Hostile::start(Endless::TagList);
    let semver = RefSpec::Semver { range: "^1".into(), filter: None };
    let err = registry.resolve(&hostile_repo(&front), &semver).await.unwrap_err();
    assert!(matches!(err, registry::Error::TooLarge { limit: registry::MAX_TAG_PAGE_BYTES, .. }), "{err}");
    assert!(front.endless_sent() < MAX_SENT, "tag page: {} MiB received", front.endless_sent() >> 20);
    let front = Hostile::start(Endless::Referrers);
    let err = registry.referrers(&hostile_repo(&front), &front.digest).await.unwrap_err();
    assert!(matches!(err, registry::Error::TooLarge { limit: registry::MAX_MANIFEST_BYTES, .. }), "{err}");
    assert!(front.endless_sent() < MAX_SENT, "referrers: {} MiB received", front.endless_sent() >> 20);
    assert!(started.elapsed() < Duration::from_secs(MAX_SECONDS));
    // The same fronts answer the good endpoints: a tag and no referrers.
    let front = Hostile::start(Endless::ConfigBlob);
    assert_eq!(registry.resolve(&hostile_repo(&front), &semver).await.unwrap().digest, front.digest);
    assert_eq!(registry.referrers(&hostile_repo(&front), &front.digest).await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_registry_that_drips_is_cut_off_at_the_deadline() {
    let options = Options { insecure: true, timeout: Some(Duration::from_secs(2)), ..Default::default() };
    let registry = Registry::new(&options, None).unwrap();
    let front = Hostile::start(Endless::Drip);
    let started = Instant::now();
    let err = registry.resolve(&hostile_repo(&front), &RefSpec::Tag(TAG.into())).await.unwrap_err();
    assert!(matches!(err, registry::Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

async fn apply_model(models: &Api<Model>, name: &str, spec: Value) {
    let obj =
        json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model", "metadata": {"name": name}, "spec": spec});
    models.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
}

async fn wait_status(models: &Api<Model>, name: &str, what: &str, check: impl Fn(&ModelStatus) -> bool) -> ModelStatus {
    eventually(&format!("model {name}: {what}"), Duration::from_secs(90), || async {
        let m = models.get(name).await.ok()?;
        let status = m.status?;
        (status.observed_generation == m.metadata.generation && check(&status)).then_some(status)
    })
    .await
}

#[tokio::test]
async fn the_controller_stalls_only_the_models_on_a_hostile_registry() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "hostile").await;
    let operator = Operator::start(&ns);
    let models: Api<Model> = Api::namespaced(client, &ns);
    let repo = format!("ctl/hostile-good-{}", unique_suffix());
    let m = ModelFiles::new(14, &[("model.safetensors", 40_000), ("config.json", 100)]);
    oras_push_cncf(bed, &bed.plain, &repo, "v1", &m, &cncf_config("good", &m));
    let good = json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "v1"}, "insecure": true});
    apply_model(&models, "good", good).await;

    let tag = json!({"tag": TAG});
    let semver = json!({"semver": "^1"});
    let cases = [
        ("by-tag", Endless::ManifestByTag, tag.clone()),
        ("by-digest", Endless::ManifestByDigest, tag.clone()),
        ("by-semver", Endless::TagList, semver),
        ("token", Endless::Token, tag.clone()),
        ("config", Endless::ConfigBlob, tag),
    ];
    let fronts: Vec<Hostile> = cases.iter().map(|(_, endless, _)| Hostile::start(*endless)).collect();
    for ((name, _, reference), front) in cases.iter().zip(&fronts) {
        let spec = json!({"repository": format!("{}/{REPO}", front.host), "ref": reference, "insecure": true});
        apply_model(&models, name, spec).await;
    }
    for (name, endless, _) in &cases {
        let status = wait_status(&models, name, "ArtifactTooLarge", |s| {
            find(&s.conditions, READY).is_some_and(|c| c.reason == "ArtifactTooLarge")
        })
        .await;
        let stalled = find(&status.conditions, STALLED).expect("Stalled");
        assert!(stalled.message.contains("is larger than the"), "{endless:?}: {}", stalled.message);
    }
    let good = wait_status(&models, "good", "Ready", |s| {
        find(&s.conditions, READY).is_some_and(|c| c.status == ConditionStatus::True)
    })
    .await;
    assert!(good.resolved.is_some());
    let peak = operator.peak_rss();
    eprintln!("operator peak RSS: {} MiB", peak >> 20);
    assert!(peak < 128 << 20, "the controller's peak RSS: {} MiB", peak >> 20);
}
