//! A model-signing bundle among referrers the registry serves wrongly: one over the bundle bound,
//! one that is gone. Each is passed over (it says nothing of
//! the others) and the valid bundle after them verifies; with nothing valid, the verdict is a
//! rejection naming the referrer, not a registry failure. No bed needed: the registry is
//! tests/support/served.rs on 127.0.0.1.

mod support;

use modelpack_operator::modelpack::Manifest;
use modelpack_operator::registry::{Options, Registry, Repository};
use modelpack_operator::verify::cosign::NamedKey;
use modelpack_operator::verify::{self, PublicKey, Rejection, model_signing};
use serde_json::{Value, json};
use support::craft::{Artifact, Blob, sha256};
use support::served::{REPO, Served, Setup};

/// `p256.sig` was written by `model_signing sign key` over `a.txt` ("hello\n") and `sub/w.bin`.
const SIG: &[u8] = include_bytes!("../src/verify/sigstore/testdata/p256.sig");
const PUB: &[u8] = include_bytes!("../src/verify/sigstore/testdata/p256.pub");
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

fn artifact() -> Artifact {
    let config = json!({"descriptor": {"name": "m"}, "modelfs": {"type": "layers", "diffIds": []}});
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![
            Blob::new("application/vnd.cncf.model.doc.v1.raw", b"hello\n".to_vec())
                .annotate("org.cncf.model.filepath", "a.txt"),
            // sub/w.bin lies in an archive: checked on the node, not here.
            Blob::new("application/vnd.cncf.model.weight.v1.tar", b"a tar".to_vec())
                .annotate("org.cncf.model.filepath", "sub/"),
        ],
        annotations: Default::default(),
    }
}

/// A bundle referrer whose one layer is `blob` (described as `size` bytes with `digest`).
fn referrer(digest: &str, size: usize) -> (Vec<u8>, Value) {
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": BUNDLE, "config": {"mediaType": "application/vnd.oci.empty.v1+json",
        "digest": sha256(b"{}"), "size": 2}, "layers": [{"mediaType": BUNDLE, "digest": digest, "size": size}],
        "annotations": {"dev.sigstore.bundle.predicateType": model_signing::PREDICATE_TYPE}});
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let entry = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&bytes),
        "size": bytes.len(), "artifactType": BUNDLE,
        "annotations": {"dev.sigstore.bundle.predicateType": model_signing::PREDICATE_TYPE}});
    (bytes, entry)
}

async fn verify(served: &Served) -> Result<model_signing::Signed, verify::Error> {
    let registry = Registry::new(&Options { insecure: true, ..Default::default() }, None).unwrap();
    let repo = Repository::parse(&format!("{}/{REPO}", served.host)).unwrap();
    let manifest = Manifest::parse(&served.manifest).unwrap();
    let trust =
        model_signing::Trust::Keys(vec![NamedKey { name: "p256.pub".into(), key: PublicKey::from_pem(PUB).unwrap() }]);
    model_signing::verify(&registry, &repo, &served.digest, &manifest, &trust).await
}

#[tokio::test]
async fn referrers_served_wrongly_hide_no_valid_bundle() {
    let big = vec![b' '; model_signing::MAX_BUNDLE + 1];
    let (over_bound, over_entry) = referrer(&sha256(&big), big.len());
    let (gone, gone_entry) = referrer(&sha256(b"never served"), 12);
    let (valid, valid_entry) = referrer(&sha256(SIG), SIG.len());
    let setup = |entries: Vec<Value>, manifests: Vec<Vec<u8>>| Setup {
        artifact: Some(artifact()),
        referrers: entries,
        filters: true,
        manifests,
        blobs: vec![big.clone(), SIG.to_vec()],
        ..Setup::default()
    };
    let wrong = vec![over_entry, gone_entry];
    let served = Served::start(setup(
        [wrong.clone(), vec![valid_entry]].concat(),
        vec![over_bound.clone(), gone.clone(), valid],
    ));
    let signed = verify(&served).await.unwrap_or_else(|e| panic!("the valid bundle after two bad ones: {e}"));
    assert_eq!(signed.verification.identity, "p256.pub");
    assert_eq!(signed.bundle_digest, sha256(SIG));

    // Only referrers served wrongly: a rejection naming one, not "the registry failed".
    let served = Served::start(setup(wrong, vec![over_bound, gone]));
    match verify(&served).await {
        Err(verify::Error::Rejected { reason: Rejection::InvalidSignature, detail }) => {
            assert!(detail.contains("model-signing referrer sha256:"), "{detail}")
        }
        other => panic!("{:?}", other.map(|s| s.verification.identity)),
    }
}
