//! The TSA certificate chain of a timestamp: built from the token's certificates to a root of the
//! store, valid at genTime, with RFC 3161 2.3 and the Notary Project's timestamping rules.

use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};

use super::{ANY_EKU, EXT_KEY_USAGE, MAX_CERTS, TIME_STAMPING};
use crate::verify::KeyKind;
use crate::verify::cert_rules::{check_extensions, check_leaf_usage};
use crate::verify::x509::Cert;

const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

/// leaf → (token certificates) → a root of the store, at most [`MAX_CERTS`] long.
pub(super) fn chain_to_root(leaf: &Cert, pool: &[Cert], roots: &[Cert]) -> Result<Vec<Cert>, String> {
    let mut chain = vec![leaf.clone()];
    while chain.len() <= MAX_CERTS {
        let current = &chain[chain.len() - 1];
        if roots.iter().any(|r| r.der == current.der) {
            return Ok(chain);
        }
        if let Some(root) = roots.iter().find(|r| current.issued_by(r)) {
            chain.push(root.clone());
            return Ok(chain);
        }
        let next = pool.iter().find(|c| current.issued_by(c) && !chain.iter().any(|seen| seen.der == c.der));
        match next {
            Some(issuer) => chain.push(issuer.clone()),
            None => break,
        }
    }
    Err(format!("the TSA certificate {} does not chain to a certificate of the tsa trust store", leaf.subject()))
}

/// Every certificate valid at genTime (the RFC 3161 reading: a TSA certificate that expired since
/// still proves the time it stamped); the chain ends in a self-signed root; each certificate
/// meets the timestamping requirements of its role.
pub(super) fn check_chain(chain: &[Cert], time_us: i64) -> Result<(), String> {
    let secs = time_us.div_euclid(1_000_000);
    let last = chain.len() - 1;
    for (i, cert) in chain.iter().enumerate() {
        let role = match i {
            0 => "TSA certificate",
            i if i == last => "TSA root certificate",
            _ => "TSA intermediate certificate",
        };
        let (not_before, not_after) = cert.validity();
        let at_gen_time = not_before * 1_000_000 <= time_us && (secs < not_after || time_us == not_after * 1_000_000);
        if !at_gen_time {
            return Err(format!("{role} {} was not valid at the timestamp's time", cert.subject()));
        }
        check_extensions(cert, role)?;
        // EKUs chain (RFC 5280 4.2.1.12, as Go's verifier applies them): a CA that limits its
        // key's purposes must allow timestamping.
        let eku: Option<(ExtendedKeyUsage, bool)> = cert.extension(EXT_KEY_USAGE)?;
        if let Some((eku, _)) = &eku
            && !eku.0.iter().any(|o| *o == TIME_STAMPING || *o == ANY_EKU)
        {
            return Err(format!("{role} {}: extended key usage does not allow timestamping", cert.subject()));
        }
        if i == last && !cert.issued_by(cert) {
            return Err(format!("{role} {} is not self-signed", cert.subject()));
        }
        if i > 0 {
            check_ca(cert, role, i - 1)?;
        }
    }
    check_leaf(&chain[0])
}

fn key_usage(cert: &Cert, role: &str) -> Result<KeyUsage, String> {
    // The Notary Project: present; critical is only recommended for timestamping certificates.
    let ku: Option<(KeyUsage, bool)> = cert.extension(KEY_USAGE)?;
    ku.map(|(k, _)| k).ok_or_else(|| format!("{role} {} has no keyUsage extension", cert.subject()))
}

fn check_ca(cert: &Cert, role: &str, below: usize) -> Result<(), String> {
    let bc: Option<(BasicConstraints, bool)> = cert.extension(BASIC_CONSTRAINTS)?;
    let Some((bc, _)) = bc.filter(|(b, _)| b.ca) else {
        return Err(format!("{role} {} is not a CA: it lacks basicConstraints cA=true", cert.subject()));
    };
    if let Some(limit) = bc.path_len_constraint
        && below > usize::from(limit)
    {
        return Err(format!("{role} {}: pathLenConstraint {limit} is exceeded", cert.subject()));
    }
    if !key_usage(cert, role)?.0.contains(KeyUsages::KeyCertSign) {
        return Err(format!("{role} {}: keyUsage lacks keyCertSign", cert.subject()));
    }
    Ok(())
}

/// RFC 3161 2.3 and the Notary Project's leaf rules for timestamping certificates.
fn check_leaf(leaf: &Cert) -> Result<(), String> {
    let (name, role) = (leaf.subject(), "TSA certificate");
    check_leaf_usage(leaf, role, &key_usage(leaf, role)?)?;
    match leaf.extension::<ExtendedKeyUsage>(EXT_KEY_USAGE)? {
        Some((eku, true)) if eku.0 == [TIME_STAMPING] => {}
        Some((_, false)) => return Err(format!("{role} {name}: extendedKeyUsage is not critical (RFC 3161 2.3)")),
        _ => return Err(format!("{role} {name}: extendedKeyUsage must be timeStamping only (RFC 3161 2.3)")),
    }
    if leaf.key.kind == KeyKind::Ed25519 {
        return Err(format!("{role} {name}: Ed25519 keys are not allowed by the Notary Project"));
    }
    Ok(())
}
