//! `verify` finds a signature behind 10,000 other referrers in bounded time and memory. Its own
//! test binary: the peak RSS that wait4 reports includes the parent's at spawn time, so the parent
//! here holds nothing but two registries: the figure is an upper bound of the child's own. No bed
//! needed.

mod support;

use std::time::Duration;

use serde_json::json;
use support::measure::run_measured;
use support::notary::{Chain, KeyType};
use support::signed::registry_with;

/// The CLI finds the signature behind 10,000 others on 11 pages (and again on one page) in bounded
/// time and memory: the other entries are dropped as each page is read.
#[test]
fn verify_finds_it_in_bounded_time_and_memory() {
    let chain = Chain::new(KeyType::EcP256, "acme", false, None);
    let dir = tempfile::tempdir().unwrap();
    let policy = json!({"version": "1.0", "trustPolicies": [{"name": "all", "registryScopes": ["*"],
        "signatureVerification": {"level": "strict"}, "trustStores": ["ca:acme"], "trustedIdentities": ["*"]}]});
    std::fs::write(dir.path().join("trustpolicy.json"), policy.to_string()).unwrap();
    std::fs::create_dir_all(dir.path().join("certs/ca/acme")).unwrap();
    std::fs::write(dir.path().join("certs/ca/acme/root.pem"), &chain.root_pem).unwrap();
    let (policy, certs) = (dir.path().join("trustpolicy.json"), dir.path().join("certs"));
    // Both registries first: the parent's share of the figure is then the same for both runs.
    let registries = [1000, 0].map(|page| (page, registry_with(&chain, 10_000, 0, |s| s.page = page)));
    for (page, served) in &registries {
        let n = 10_000;
        let reference = served.reference();
        let args = [
            "verify",
            "--insecure",
            "--notation-policy",
            policy.to_str().unwrap(),
            "--notation-certs",
            certs.to_str().unwrap(),
            &reference,
        ];
        let run = run_measured(&args);
        assert_eq!(run.code, 0, "{n} in pages of {page}: {}", run.stderr);
        assert!(run.peak_rss < 64 << 20, "{n} in pages of {page}: peak RSS {} MiB", run.peak_rss >> 20);
        assert!(run.elapsed < Duration::from_secs(30), "{n} in pages of {page}: took {:?}", run.elapsed);
        eprintln!("{n} pages of {page}: {} MiB peak, {:?}", run.peak_rss >> 20, run.elapsed);
    }
}
