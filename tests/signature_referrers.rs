//! A valid Notary Project signature among many other referrers (SBOMs, attestations): found on
//! whichever page, through the referrers API with or without the registry's artifactType filter,
//! or through the tag schema; a listing that never ends decides nothing. No bed needed: the
//! registry is tests/support/served.rs on 127.0.0.1.

mod support;

use std::time::{Duration, Instant};

use modelpack_operator::registry::{self, Options, Registry, Repository};
use modelpack_operator::verify::{self, Rejection, notation};
use serde_json::json;
use support::notary::{Chain, KeyType};
use support::served::{REPO, Served, Setup};
use support::signed::{others, registry_with};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Trust {
    policies: notation::Policies,
    stores: notation::TrustStores,
}

fn trust(chain: &Chain) -> Trust {
    let policy = json!({"version": "1.0", "trustPolicies": [{"name": "all", "registryScopes": ["*"],
        "signatureVerification": {"level": "strict"}, "trustStores": ["ca:acme"], "trustedIdentities": ["*"]}]});
    let policies = notation::Policies::parse(policy.to_string().as_bytes()).unwrap();
    let mut stores = notation::TrustStores::default();
    assert!(stores.add_key("ca.acme.pem", chain.root_pem.as_bytes()).unwrap());
    Trust { policies, stores }
}

async fn verify(served: &Served, trust: &Trust) -> Result<verify::Verification, verify::Error> {
    let registry = Registry::new(&Options { insecure: true, ..Default::default() }, None).unwrap();
    let repo = Repository::parse(&format!("{}/{REPO}", served.host)).unwrap();
    let target = notation::Target { digest: &served.digest, media_type: MANIFEST, size: served.manifest.len() as i64 };
    let now = jiff::Timestamp::now().as_second();
    notation::verify(&registry, &repo, &target, &trust.policies, &trust.stores, now).await
}

#[tokio::test]
async fn a_signature_after_many_other_referrers_is_found_on_any_page() {
    let chain = Chain::new(KeyType::EcP256, "acme", false, None);
    let trust = trust(&chain);
    // (what, referrers before the signature, after it, the registry's shape, referrer pages read)
    type Shape = fn(&mut Setup);
    let cases: [(&str, usize, usize, Shape, usize); 6] = [
        ("100 SBOMs, one page", 100, 0, |_| {}, 1),
        ("150 others, pages of 50, no filter", 150, 20, |s| s.page = 50, 4),
        ("150 others, pages of 50, filtered", 150, 20, |s| (s.page, s.filters) = (50, true), 1),
        ("10,000 others, pages of 1,000", 10_000, 0, |s| s.page = 1000, 11),
        ("10,000 others, one 2 MB page", 10_000, 500, |_| {}, 1),
        ("300 others, tag schema (after the API's 404)", 300, 5, |s| s.tag_schema = true, 1),
    ];
    for (what, before, after, shape, pages) in cases {
        let served = registry_with(&chain, before, after, shape);
        let started = Instant::now();
        let verification = verify(&served, &trust).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(verification.enforced && verification.identity.contains("acme release signer"), "{what}");
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: took {:?}", started.elapsed());
        let listed = served.requests("/referrers/");
        assert_eq!(listed.len(), pages, "{what}: {listed:#?}");
        assert!(listed[0].contains("artifactType=application/vnd.cncf.notary.signature"), "{what}: {listed:?}");
        // Only the signature's manifest was fetched of all the referrers.
        assert_eq!(served.requests("/manifests/sha256:").len(), 1, "{what}");
    }
}

/// A listing whose pages never end, all of other types, or that links elsewhere: nothing is decided
/// (an error, not "no signature", so a verified digest is not revoked on it), in bounded time.
#[tokio::test]
async fn a_listing_that_never_ends_or_leaves_decides_nothing() {
    let chain = Chain::new(KeyType::EcP256, "acme", false, None);
    let trust = trust(&chain);
    let served = Served::start(Setup { referrers: others(10), page: 10, endless_pages: true, ..Setup::default() });
    let started = Instant::now();
    let error = verify(&served, &trust).await.unwrap_err();
    assert!(
        matches!(&error, verify::Error::Registry(registry::Error::Protocol { detail, .. }) if detail.contains("pages")),
        "{error}"
    );
    assert_eq!(served.requests("/referrers/").len(), registry::MAX_REFERRER_PAGES);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // No signature at all, the listing complete: rejected as unsigned.
    let served = Served::start(Setup { referrers: others(150), page: 50, ..Setup::default() });
    let error = verify(&served, &trust).await.unwrap_err();
    assert!(matches!(error, verify::Error::Rejected { reason: Rejection::NoSignature, .. }), "{error}");
}
