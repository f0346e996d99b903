//! Rekor entries as proof of a signature's time: the signed entry timestamp (SET), the inclusion
//! proof with its signed checkpoint, and the entry body naming the very signature and certificate.
//! As sigstore-go does, only a verified SET makes the integrated time a proven time: an inclusion
//! proof shows the entry is in the log, but the time in it is not signed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::verify::sigstore::trusted_root::TrustedRoot;
use crate::verify::sigstore::{InclusionProof, verify_message};

/// Longest inclusion proof followed (a tree of 2^64 leaves needs 64 hashes).
const MAX_PROOF: usize = 64;

/// An entry as either storage form carries it.
pub struct Entry<'a> {
    pub body: &'a [u8],
    pub integrated_time: i64,
    pub log_index: i64,
    pub log_id: &'a [u8],
    pub set: Option<&'a [u8]>,
    pub proof: Option<&'a InclusionProof>,
}

/// What the entry must name: the signature, the signing certificate (DER) and the SHA-256 of what
/// was signed (the payload for `hashedrekord`, the DSSE payload for `dsse`).
pub struct Signed<'a> {
    pub signature: &'a [u8],
    pub certificate: &'a [u8],
    pub payload_sha256: [u8; 32],
}

/// Checks the entry; returns the integrated time when a SET proves it, `None` when only an
/// inclusion proof verified.
pub fn verify(root: &TrustedRoot, entry: &Entry, signed: &Signed) -> Result<Option<i64>, String> {
    let log = root
        .tlog(entry.log_id)
        .ok_or_else(|| format!("the log entry's log {} is not in the trusted root", STANDARD.encode(entry.log_id)))?;
    if entry.set.is_none() && entry.proof.is_none() {
        return Err("the log entry has neither a signed entry timestamp nor an inclusion proof".into());
    }
    let mut time = None;
    if let Some(set) = entry.set {
        // The SET signs the RFC 8785 canonical JSON of these four fields (keys sorted; base64 and
        // hex need no escaping).
        let canonical = format!(
            "{{\"body\":\"{}\",\"integratedTime\":{},\"logID\":\"{}\",\"logIndex\":{}}}",
            STANDARD.encode(entry.body),
            entry.integrated_time,
            hex::encode(entry.log_id),
            entry.log_index
        );
        if !verify_message(&log.key, canonical.as_bytes(), set) {
            return Err("the log entry's signed entry timestamp does not verify with the log's key".into());
        }
        if !log.window.contains(entry.integrated_time) {
            return Err("the log entry was integrated outside the log key's validity in the trusted root".into());
        }
        time = Some(entry.integrated_time);
    }
    if let Some(proof) = entry.proof {
        inclusion(proof, entry.body, &log.key)?;
    }
    body_names(entry.body, signed)?;
    Ok(time)
}

fn node(left: &[u8], right: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update([1]).chain_update(left).chain_update(right).finalize().into()
}

/// RFC 6962 (RFC 9162 §2.1.3.2) inclusion of the entry's leaf at `log_index` in the proof's tree,
/// and the tree's root signed by the log in the checkpoint.
fn inclusion(proof: &InclusionProof, body: &[u8], key: &crate::verify::PublicKey) -> Result<(), String> {
    let (index, size) = (proof.log_index.0, proof.tree_size.0);
    if index < 0 || size <= index || proof.hashes.len() > MAX_PROOF {
        return Err(format!("inclusion proof: index {index} in a tree of {size} with {} hashes", proof.hashes.len()));
    }
    let (index, size) = (index as u64, size as u64);
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = (index >> inner).count_ones() as usize;
    if proof.hashes.len() != inner + border {
        return Err(format!("inclusion proof: {} hashes where the tree needs {}", proof.hashes.len(), inner + border));
    }
    let mut hash: [u8; 32] = Sha256::new().chain_update([0]).chain_update(body).finalize().into();
    for (i, sibling) in proof.hashes.iter().enumerate() {
        hash = if i < inner && (index >> i) & 1 == 0 { node(&hash, &sibling.0) } else { node(&sibling.0, &hash) };
    }
    if hash[..] != proof.root_hash.0[..] {
        return Err("inclusion proof: the entry does not hash to the proof's root".into());
    }
    checkpoint(&proof.checkpoint.envelope, size, &hash, key)
}

/// A signed note: `origin\nsize\nbase64(root)\n[other lines]\n\n— name base64(keyhint+sig)\n…`.
fn checkpoint(note: &str, size: u64, root: &[u8], key: &crate::verify::PublicKey) -> Result<(), String> {
    let bad = |why: &str| Err(format!("inclusion proof checkpoint: {why}"));
    let Some((text, signatures)) = note.split_once("\n\n") else { return bad("not a signed note") };
    let text = format!("{text}\n");
    let mut lines = text.lines().skip(1);
    if lines.next().and_then(|l| l.parse::<u64>().ok()) != Some(size) {
        return bad("its tree size is not the proof's");
    }
    if lines.next().and_then(|l| STANDARD.decode(l).ok()).as_deref() != Some(root) {
        return bad("its root hash is not the proof's");
    }
    let signed = signatures.lines().take(16).any(|line| {
        let sig =
            line.strip_prefix("\u{2014} ").and_then(|l| l.rsplit_once(' ')).and_then(|(_, b)| STANDARD.decode(b).ok());
        sig.is_some_and(|s| s.len() > 4 && verify_message(key, text.as_bytes(), &s[4..]))
    });
    if signed { Ok(()) } else { bad("no signature of the log's key") }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    kind: String,
    api_version: String,
    spec: serde_json::Value,
}

/// The body must be about this signature, certificate and payload: a log entry of another
/// signature proves nothing about this one.
fn body_names(body: &[u8], signed: &Signed) -> Result<(), String> {
    let parsed: Body = serde_json::from_slice(body).map_err(|e| format!("log entry body: {e}"))?;
    let spec = &parsed.spec;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let (sig, verifier, hash) = match (parsed.kind.as_str(), parsed.api_version.as_str()) {
        ("hashedrekord", "0.0.1") => (
            text(&spec["signature"]["content"]),
            text(&spec["signature"]["publicKey"]["content"]),
            text(&spec["data"]["hash"]["value"]),
        ),
        ("dsse", "0.0.1") => {
            let sigs = spec["signatures"].as_array().map(Vec::as_slice).unwrap_or_default();
            let [one] = sigs else { return Err(format!("dsse log entry lists {} signatures, not 1", sigs.len())) };
            (text(&one["signature"]), text(&one["verifier"]), text(&spec["payloadHash"]["value"]))
        }
        (kind, version) => return Err(format!("log entry of kind {kind} {version} is not supported")),
    };
    if STANDARD.decode(&sig).ok().as_deref() != Some(signed.signature) {
        return Err("the log entry is of another signature".into());
    }
    let pem = STANDARD.decode(&verifier).ok().and_then(|p| String::from_utf8(p).ok()).unwrap_or_default();
    let certificate = crate::verify::sigstore::Cert::from_pem_bundle(pem.as_bytes()).ok();
    if certificate.as_ref().and_then(|c| c.first()).map(|c| c.der.as_slice()) != Some(signed.certificate) {
        return Err("the log entry names another signing certificate".into());
    }
    if hash != hex::encode(signed.payload_sha256) {
        return Err("the log entry is of another payload".into());
    }
    Ok(())
}
