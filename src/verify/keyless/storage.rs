//! Where keyless signatures are stored, read into [`Candidate`]s: cosign's `sha256-<hex>.sig` tag
//! (one layer per signature: the simple-signing payload, with the signature, certificate, Rekor
//! bundle and RFC 3161 timestamp in annotations) and Sigstore bundle v0.3 referrers (a DSSE
//! envelope of an in-toto statement naming the digest), as `cosign sign --new-bundle-format`
//! writes them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::{Candidate, OwnedEntry};
use crate::registry::{Registry, Repository};
use crate::verify::sigstore::{self, Bundle, Cert};
use crate::verify::{Error, Rejection};

const SIGNATURE: &str = "dev.cosignproject.cosign/signature";
const CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
const REKOR_BUNDLE: &str = "dev.sigstore.cosign/bundle";
const TIMESTAMP: &str = "dev.sigstore.cosign/rfc3161timestamp";
const SIGNATURE_MANIFESTS: &[&str] =
    &[crate::modelpack::OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"];
const IN_TOTO: &str = "application/vnd.in-toto+json";
const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
const MAX_PAYLOAD: usize = 64 << 10;
const MAX_BUNDLE: usize = 1 << 20;
/// Most signatures looked at per digest, in each form.
const MAX_SIGNATURES: usize = 16;

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Layer>,
    #[serde(default)]
    subject: Option<Layer>,
}

/// A descriptor as cosign's signature manifests hold them: the same reader as key-based cosign's.
use super::super::cosign::Layer;

/// cosign's `dev.sigstore.cosign/bundle` annotation.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RekorBundle {
    signed_entry_timestamp: sigstore::Base64,
    payload: RekorPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RekorPayload {
    body: sigstore::Base64,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Rfc3161Annotation {
    #[serde(rename = "SignedRFC3161Timestamp")]
    signed: sigstore::Base64,
}

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::rejected(Rejection::InvalidSignature, what.to_string())
}

/// Every keyless signature of `repo@digest` in either form (key-based layers are skipped).
pub async fn candidates(registry: &Registry, repo: &Repository, digest: &str) -> Result<Vec<Candidate>, Error> {
    let mut out = Vec::new();
    let hex =
        crate::modelpack::sha256_hex(digest).ok_or_else(|| malformed(format!("{digest} is not a sha256 digest")))?;
    let tag = format!("sha256-{hex}.sig");
    if let Some((bytes, signature_digest)) = registry.manifest_for_tag(repo, &tag, SIGNATURE_MANIFESTS).await? {
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| malformed(format!("signature manifest {repo}:{tag}: {e}")))?;
        let keyless = manifest.layers.iter().filter(|l| l.annotations.contains_key(CERTIFICATE)).take(MAX_SIGNATURES);
        for layer in keyless {
            let payload = registry.small_blob(repo, &layer.digest, MAX_PAYLOAD).await?;
            out.push(from_annotations(layer, payload, signature_digest.clone())?);
        }
    }
    let bundle_type = sigstore::BUNDLE_V03;
    let listed = registry.referrers_of_type(repo, digest, bundle_type, MAX_SIGNATURES).await?;
    for referrer in listed.referrers {
        let bytes = registry.manifest(repo, &referrer.digest).await?;
        let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else { continue };
        if manifest.subject.as_ref().is_none_or(|s| s.digest != digest) {
            continue;
        }
        let Some(layer) = manifest.layers.iter().find(|l| l.media_type == bundle_type) else { continue };
        let blob = registry.small_blob(repo, &layer.digest, MAX_BUNDLE).await?;
        out.push(from_bundle(&blob, referrer.digest)?);
    }
    Ok(out)
}

fn from_annotations(layer: &Layer, payload: Vec<u8>, signature_digest: String) -> Result<Candidate, Error> {
    let a = &layer.annotations;
    let signature = a
        .get(SIGNATURE)
        .and_then(|s| STANDARD.decode(s.trim()).ok())
        .ok_or_else(|| malformed(format!("layer {}: no base64 {SIGNATURE} annotation", layer.digest)))?;
    let pem = a.get(CERTIFICATE).map(String::as_str).unwrap_or_default();
    let certificate = Cert::from_pem_bundle(pem.as_bytes())
        .map_err(|e| malformed(format!("layer {}: {CERTIFICATE}: {e}", layer.digest)))?
        .swap_remove(0)
        .der;
    let mut entries = Vec::new();
    if let Some(text) = a.get(REKOR_BUNDLE) {
        let b: RekorBundle = serde_json::from_str(text)
            .map_err(|e| malformed(format!("layer {}: {REKOR_BUNDLE}: {e}", layer.digest)))?;
        let log_id = hex::decode(&b.payload.log_id)
            .map_err(|e| malformed(format!("layer {}: {REKOR_BUNDLE}: logID: {e}", layer.digest)))?;
        entries.push(OwnedEntry {
            body: b.payload.body.0,
            integrated_time: b.payload.integrated_time,
            log_index: b.payload.log_index,
            log_id,
            set: Some(b.signed_entry_timestamp.0),
            proof: None,
        });
    }
    let mut timestamps = Vec::new();
    if let Some(text) = a.get(TIMESTAMP) {
        let t: Rfc3161Annotation =
            serde_json::from_str(text).map_err(|e| malformed(format!("layer {}: {TIMESTAMP}: {e}", layer.digest)))?;
        timestamps.push(t.signed.0);
    }
    Ok(Candidate {
        signature_digest,
        certificate,
        signature,
        message: payload.clone(),
        names_digest: crate::verify::cosign::signed_digest(&payload),
        payload,
        entries,
        timestamps,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    type_: String,
    subject: Vec<Subject>,
    predicate_type: String,
}

#[derive(Deserialize)]
struct Subject {
    digest: std::collections::BTreeMap<String, String>,
}

pub(super) fn from_bundle(bytes: &[u8], signature_digest: String) -> Result<Candidate, Error> {
    let bundle = Bundle::parse(bytes).map_err(|e| malformed(format!("bundle {signature_digest}: {e}")))?;
    of_bundle(&bundle, signature_digest)
}

/// The signature a parsed bundle carries (a DSSE envelope with one signature, a certificate).
pub(super) fn of_bundle(bundle: &Bundle, signature_digest: String) -> Result<Candidate, Error> {
    let envelope = bundle.dsse().map_err(|e| malformed(format!("bundle {signature_digest}: {e}")))?;
    let [signature] = envelope.signatures.as_slice() else {
        return Err(malformed(format!(
            "bundle {signature_digest}: {} DSSE signatures, not 1",
            envelope.signatures.len()
        )));
    };
    let certificate =
        bundle.certificates().first().map(|c| c.to_vec()).ok_or_else(|| {
            malformed(format!("bundle {signature_digest}: no signing certificate (a key-signed bundle)"))
        })?;
    let payload = envelope.payload.0.clone();
    let names_digest = if envelope.payload_type != IN_TOTO {
        Err(format!("the envelope's payload type is {:?}, not {IN_TOTO}", envelope.payload_type))
    } else {
        statement_digest(&payload)
    };
    let material = &bundle.verification_material;
    let entries = material
        .tlog_entries
        .iter()
        .map(|e| OwnedEntry {
            body: e.canonicalized_body.0.clone(),
            integrated_time: e.integrated_time.0,
            log_index: e.log_index.0,
            log_id: e.log_id.key_id.0.clone(),
            set: e.inclusion_promise.as_ref().map(|p| p.signed_entry_timestamp.0.clone()),
            proof: e.inclusion_proof.clone(),
        })
        .collect();
    let timestamps = material
        .timestamp_verification_data
        .iter()
        .flat_map(|t| t.rfc3161_timestamps.iter().map(|s| s.signed_timestamp.0.clone()))
        .collect();
    Ok(Candidate {
        signature_digest,
        certificate,
        signature: signature.sig.0.clone(),
        message: sigstore::pae(&envelope.payload_type, &payload),
        payload,
        names_digest,
        entries,
        timestamps,
    })
}

/// The one sha256 subject of a cosign-sign in-toto statement.
fn statement_digest(payload: &[u8]) -> Result<String, String> {
    let s: Statement = serde_json::from_slice(payload).map_err(|e| format!("in-toto statement: {e}"))?;
    if !s.type_.starts_with("https://in-toto.io/Statement/") || s.predicate_type != COSIGN_SIGN_PREDICATE {
        return Err(format!("the statement ({}, predicate {}) is not a cosign signature", s.type_, s.predicate_type));
    }
    let [subject] = s.subject.as_slice() else {
        return Err(format!("the statement names {} subjects, not 1", s.subject.len()));
    };
    subject
        .digest
        .get("sha256")
        .map(|h| format!("sha256:{h}"))
        .ok_or_else(|| "the statement's subject has no sha256 digest".into())
}
