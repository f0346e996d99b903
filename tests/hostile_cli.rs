//! A hostile registry (tests/support/hostile.rs) answering an endless body on one endpoint at a
//! time, without the bed: the CLI refuses each with one line, in bounded time and memory (peak RSS
//! measured through GNU time), and the registry client cuts endless pages and drips off. The
//! controller's side (a Model on such a registry stalls, others stay Ready) is tests/bed/hostile.rs.

mod support;

use std::time::{Duration, Instant};

use modelpack_operator::exit::Exit;
use modelpack_operator::registry::{self, Options, RefSpec, Registry, Repository};
use serde_json::json;
use support::hostile::{Endless, Hostile, REPO, TAG, endless_digest};
use support::measure::run_measured;

/// What the CLI costs: well under this, while the hostile answer is 300 MB.
const MAX_PEAK_RSS: u64 = 64 << 20;
/// What a client that stops at its cap lets the front send: the largest cap (4 MiB) and the
/// sockets' buffers.
const MAX_SENT: usize = 32 << 20;
const MAX_SECONDS: u64 = 30;

/// Refused (exit 1) with one clear line, in bounded time and memory; returns the line.
fn refused(what: &str, args: &[&str]) -> String {
    failed(what, Exit::Refused, args)
}

/// Exit `exit` with one clear line, in bounded time and memory; returns the line.
fn failed(what: &str, exit: Exit, args: &[&str]) -> String {
    let run = run_measured(args);
    let line = run.stderr.trim_end();
    assert_eq!(run.code, i32::from(exit.code()), "{what}: {}", run.stderr);
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
            // An error answer says nothing about the artifact: could not decide.
            let what = format!("inspect {reference}, {endless:?}");
            let line = failed(&what, Exit::Undecided, &["inspect", "--insecure", &reference]);
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
