//! Embedded signed certificate timestamps (RFC 6962 §3.2): a CT log's promise that it logged the
//! signing certificate's precertificate. Checked when the trusted root lists CT logs, as cosign
//! does: one SCT of a log in the root, inside that log's window, must verify over the certificate's
//! TBS without the SCT extension and the issuer's key hash.

use sha2::{Digest, Sha256};
use x509_cert::der::Encode;
use x509_cert::der::asn1::OctetString;
use x509_cert::der::oid::ObjectIdentifier;

use crate::verify::sigstore::trusted_root::Log;
use crate::verify::sigstore::{Cert, verify_message};

const SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2");
/// More SCTs than any CA embeds are not read.
const MAX_SCTS: usize = 16;

/// One parsed SCT: the log, its time (ms) and extensions, and the signature.
struct Sct<'a> {
    log_id: &'a [u8],
    timestamp: u64,
    extensions: &'a [u8],
    signature: &'a [u8],
}

/// A TLS-encoding reader: big-endian lengths, bounded by what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn number(&mut self, bytes: usize) -> Option<u64> {
        Some(self.take(bytes)?.iter().fold(0, |n, b| (n << 8) | u64::from(*b)))
    }

    fn vector(&mut self, length_bytes: usize) -> Option<&'a [u8]> {
        let n = self.number(length_bytes)? as usize;
        self.take(n)
    }
}

fn parse(sct: &[u8]) -> Option<Sct<'_>> {
    let mut r = Reader(sct);
    if r.number(1)? != 0 {
        return None; // only v1 exists
    }
    let log_id = r.take(32)?;
    let timestamp = r.number(8)?;
    let extensions = r.vector(2)?;
    let _hash_and_signature_algorithms = r.take(2)?;
    let signature = r.vector(2)?;
    r.0.is_empty().then_some(Sct { log_id, timestamp, extensions, signature })
}

/// Whether an embedded SCT of one of `logs` verifies for `leaf`, issued by `issuer`.
pub fn verify(leaf: &Cert, issuer: &Cert, logs: &[Log]) -> Result<(), String> {
    let list = leaf
        .extension::<OctetString>(SCT_LIST)?
        .ok_or_else(|| "the signing certificate embeds no SCT, which the trusted root's CT logs require".to_owned())?
        .0;
    let mut tbs = leaf.cert.tbs_certificate.clone();
    if let Some(extensions) = tbs.extensions.as_mut() {
        extensions.retain(|e| e.extn_id != SCT_LIST);
    }
    let tbs = tbs.to_der().map_err(|e| e.to_string())?;
    let issuer_spki = issuer.cert.tbs_certificate.subject_public_key_info.to_der().map_err(|e| e.to_string())?;
    let issuer_key_hash = Sha256::digest(&issuer_spki);
    let mut outer = Reader(list.as_bytes());
    let mut scts = Reader(outer.vector(2).ok_or("the SCT list does not parse")?);
    for _ in 0..MAX_SCTS {
        let Some(one) = scts.vector(2) else { break };
        let Some(sct) = parse(one) else { continue };
        let Some(log) = logs.iter().find(|l| l.id == sct.log_id) else { continue };
        if !log.window.contains((sct.timestamp / 1000) as i64) || tbs.len() >= 1 << 24 {
            continue;
        }
        let mut signed = vec![0u8, 0u8]; // v1, certificate_timestamp
        signed.extend_from_slice(&sct.timestamp.to_be_bytes());
        signed.extend_from_slice(&[0, 1]); // precert_entry
        signed.extend_from_slice(&issuer_key_hash);
        signed.extend_from_slice(&(tbs.len() as u32).to_be_bytes()[1..]);
        signed.extend_from_slice(&tbs);
        signed.extend_from_slice(&(sct.extensions.len() as u16).to_be_bytes());
        signed.extend_from_slice(sct.extensions);
        if verify_message(&log.key, &signed, sct.signature) {
            return Ok(());
        }
    }
    Err("no embedded SCT of a CT log of the trusted root verifies".into())
}
