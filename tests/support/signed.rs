//! A model served with a valid Notary Project signature among other referrers (for the tests of
//! signature discovery): tests/support/served.rs with the signature's manifest and envelope.

use serde_json::{Value, json};

use super::craft::sha256;
use super::notary::{Chain, crafted_jws};
use super::served::{Served, Setup};

const SIGNATURE: &str = "application/vnd.cncf.notary.signature";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `n` referrers of other types, each a digest the registry does not serve: fetching one fails
/// the verification, so the test also shows they are never fetched.
pub fn others(n: usize) -> Vec<Value> {
    let types = ["application/spdx+json", "application/vnd.in-toto+json", "application/vnd.cyclonedx+json"];
    (0..n)
        .map(|i| {
            let digest = sha256(format!("other {i}").as_bytes());
            json!({"mediaType": MANIFEST, "digest": digest, "size": 500, "artifactType": types[i % types.len()],
                "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}})
        })
        .collect()
}

/// The model's signature: the signature manifest, its envelope, and its referrers entry.
pub fn signature(chain: &Chain, digest: &str, manifest_len: usize) -> (Vec<u8>, Vec<u8>, Value) {
    let target = json!({"mediaType": MANIFEST, "digest": digest, "size": manifest_len});
    let envelope = crafted_jws(chain, &target, None);
    let empty = b"{}";
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": SIGNATURE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": 2},
        "layers": [{"mediaType": "application/jose+json", "digest": sha256(&envelope), "size": envelope.len()}],
        "subject": target,
    }))
    .unwrap();
    let entry =
        json!({"mediaType": MANIFEST, "digest": sha256(&manifest), "size": manifest.len(), "artifactType": SIGNATURE});
    (manifest, envelope, entry)
}

/// Serves the model with `before` other referrers, then its signature, then `after` others.
pub fn registry_with(chain: &Chain, before: usize, after: usize, shape: impl Fn(&mut Setup)) -> Served {
    // The digest does not depend on the referrers: learn it from a first server.
    let probe = Served::start(Setup::default());
    let (manifest, envelope, entry) = signature(chain, &probe.digest, probe.manifest.len());
    let mut referrers = others(before);
    referrers.push(entry);
    referrers.extend(others(after + before).into_iter().skip(before));
    let mut setup = Setup { referrers, manifests: vec![manifest], blobs: vec![envelope], ..Setup::default() };
    shape(&mut setup);
    Served::start(setup)
}
