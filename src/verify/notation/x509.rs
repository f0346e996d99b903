//! Certificates for the Notary Project: parsing, distinguished names, the code-signing chain rules
//! (leaf key usage and EKU, CA basic constraints and keyCertSign, issuer signatures), validity.

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use x509_cert::Certificate;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};

use crate::verify::{KeyKind, PublicKey};

const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const CRL_DISTRIBUTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.31");
const AUTHORITY_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.1");
const CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
const ANY_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");

/// A parsed certificate with its DER.
#[derive(Clone, Debug)]
pub struct Cert {
    pub der: Vec<u8>,
    pub cert: Certificate,
    pub key: PublicKey,
}

impl Cert {
    pub fn from_der(der: &[u8]) -> Result<Cert, String> {
        let cert = Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
        let key = PublicKey::from_spki(&cert.tbs_certificate.subject_public_key_info).map_err(|e| e.to_string())?;
        Ok(Cert { der: der.to_vec(), cert, key })
    }

    /// Every certificate of a PEM bundle.
    pub fn from_pem_bundle(pem: &[u8]) -> Result<Vec<Cert>, String> {
        let text = std::str::from_utf8(pem).map_err(|_| "not PEM text".to_owned())?;
        let mut out = Vec::new();
        for block in text.split("-----END CERTIFICATE-----") {
            let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else { continue };
            let pem = format!("{}-----END CERTIFICATE-----\n", &block[start..]);
            let cert = Certificate::from_pem(pem.as_bytes()).map_err(|e| format!("PEM certificate: {e}"))?;
            let der = cert.to_der().map_err(|e| e.to_string())?;
            out.push(Cert::from_der(&der)?);
        }
        if out.is_empty() {
            return Err("no PEM certificate found".into());
        }
        Ok(out)
    }

    pub fn subject(&self) -> DistinguishedName {
        DistinguishedName::of(&self.cert.tbs_certificate.subject)
    }

    fn issuer(&self) -> DistinguishedName {
        DistinguishedName::of(&self.cert.tbs_certificate.issuer)
    }

    /// Whether `at` (unix seconds) is within the validity period.
    pub fn valid_at(&self, at: i64) -> bool {
        let v = &self.cert.tbs_certificate.validity;
        let secs = |t: &x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
        secs(&v.not_before) <= at && at <= secs(&v.not_after)
    }

    fn extension<'a, T: Decode<'a>>(&'a self, oid: ObjectIdentifier) -> Result<Option<T>, String> {
        let Some(exts) = &self.cert.tbs_certificate.extensions else { return Ok(None) };
        match exts.iter().find(|e| e.extn_id == oid) {
            None => Ok(None),
            Some(e) => T::from_der(e.extn_value.as_bytes()).map(Some).map_err(|err| format!("extension {oid}: {err}")),
        }
    }

    fn has_extension(&self, oid: ObjectIdentifier) -> bool {
        self.cert.tbs_certificate.extensions.as_ref().is_some_and(|e| e.iter().any(|e| e.extn_id == oid))
    }

    /// Whether the certificate names revocation endpoints (CRL or OCSP).
    pub fn revocable(&self) -> bool {
        self.has_extension(CRL_DISTRIBUTION) || self.has_extension(AUTHORITY_INFO)
    }

    /// Whether `issuer`'s key signed this certificate.
    fn signed_by(&self, issuer: &Cert) -> bool {
        let Ok(tbs) = self.cert.tbs_certificate.to_der() else { return false };
        let sig = self.cert.signature.raw_bytes();
        algorithms(&self.cert.signature_algorithm.oid, issuer.key.kind)
            .iter()
            .any(|alg| issuer.key.verify(*alg, &tbs, sig))
    }
}

/// aws-lc-rs algorithms for an X.509 signature algorithm and issuer key.
fn algorithms(oid: &ObjectIdentifier, key: KeyKind) -> Vec<&'static dyn VerificationAlgorithm> {
    match (oid.to_string().as_str(), key) {
        ("1.2.840.113549.1.1.11", KeyKind::Rsa) => vec![&signature::RSA_PKCS1_2048_8192_SHA256],
        ("1.2.840.113549.1.1.12", KeyKind::Rsa) => vec![&signature::RSA_PKCS1_2048_8192_SHA384],
        ("1.2.840.113549.1.1.13", KeyKind::Rsa) => vec![&signature::RSA_PKCS1_2048_8192_SHA512],
        // RSASSA-PSS: the hash is in the parameters; each is tried.
        ("1.2.840.113549.1.1.10", KeyKind::Rsa) => vec![
            &signature::RSA_PSS_2048_8192_SHA256,
            &signature::RSA_PSS_2048_8192_SHA384,
            &signature::RSA_PSS_2048_8192_SHA512,
        ],
        ("1.2.840.10045.4.3.2", KeyKind::EcP256) => vec![&signature::ECDSA_P256_SHA256_ASN1],
        ("1.2.840.10045.4.3.3", KeyKind::EcP256) => vec![&signature::ECDSA_P256_SHA384_ASN1],
        ("1.2.840.10045.4.3.2", KeyKind::EcP384) => vec![&signature::ECDSA_P384_SHA256_ASN1],
        ("1.2.840.10045.4.3.3", KeyKind::EcP384) => vec![&signature::ECDSA_P384_SHA384_ASN1],
        ("1.2.840.10045.4.3.4", KeyKind::EcP384) => vec![&signature::ECDSA_P384_SHA512_ASN1],
        ("1.2.840.10045.4.3.3", KeyKind::EcP521) => vec![&signature::ECDSA_P521_SHA384_ASN1],
        ("1.2.840.10045.4.3.4", KeyKind::EcP521) => vec![&signature::ECDSA_P521_SHA512_ASN1],
        _ => Vec::new(),
    }
}

/// Checks the signature's certificate chain (leaf first) against the Notary Project certificate
/// requirements, with every certificate valid at `at` (the signing time).
pub fn validate_chain(chain: &[Cert], at: i64) -> Result<(), String> {
    let Some(leaf) = chain.first() else { return Err("the signature carries no certificate".into()) };
    for (i, cert) in chain.iter().enumerate() {
        if !cert.valid_at(at) {
            return Err(format!("certificate {} is not valid at the signing time", cert.subject()));
        }
        match chain.get(i + 1) {
            Some(issuer) => {
                if cert.issuer() != issuer.subject() || !cert.signed_by(issuer) {
                    return Err(format!("certificate {} is not issued by {}", cert.subject(), issuer.subject()));
                }
            }
            None => {
                // The chain ends in a self-signed certificate (a root, or a self-signed leaf).
                if cert.issuer() != cert.subject() || !cert.signed_by(cert) {
                    return Err(format!("the chain does not end in a self-signed root ({})", cert.subject()));
                }
            }
        }
        if i > 0 {
            validate_ca(cert, i - 1)?;
        }
    }
    validate_leaf(leaf, chain.len() == 1)
}

fn validate_ca(cert: &Cert, below: usize) -> Result<(), String> {
    let name = cert.subject();
    let bc: Option<BasicConstraints> = cert.extension(BASIC_CONSTRAINTS)?;
    let Some(bc) = bc.filter(|b| b.ca) else {
        return Err(format!("CA certificate {name} lacks basicConstraints CA=true"));
    };
    if let Some(limit) = bc.path_len_constraint
        && below > limit as usize + 1
    {
        return Err(format!("CA certificate {name}: path length constraint {limit} exceeded"));
    }
    let ku: Option<KeyUsage> = cert.extension(KEY_USAGE)?;
    if !ku.is_some_and(|k| k.0.contains(KeyUsages::KeyCertSign)) {
        return Err(format!("CA certificate {name} lacks keyUsage keyCertSign"));
    }
    Ok(())
}

fn validate_leaf(leaf: &Cert, self_signed: bool) -> Result<(), String> {
    let name = leaf.subject();
    let bc: Option<BasicConstraints> = leaf.extension(BASIC_CONSTRAINTS)?;
    if bc.is_some_and(|b| b.ca) && !self_signed {
        return Err(format!("signing certificate {name} is a CA certificate"));
    }
    let ku: Option<KeyUsage> = leaf.extension(KEY_USAGE)?;
    match ku {
        Some(k) if k.0.contains(KeyUsages::DigitalSignature) => {}
        _ => return Err(format!("signing certificate {name} lacks keyUsage digitalSignature")),
    }
    let eku: Option<ExtendedKeyUsage> = leaf.extension(EXT_KEY_USAGE)?;
    if let Some(eku) = eku {
        if eku.0.contains(&ANY_EKU) {
            return Err(format!("signing certificate {name} has extended key usage anyExtendedKeyUsage"));
        }
        if !eku.0.contains(&CODE_SIGNING) {
            return Err(format!("signing certificate {name} has extended key usages without codeSigning"));
        }
    }
    Ok(())
}

/// An X.509 distinguished name as ordered (attribute, value) pairs with short attribute names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistinguishedName(Vec<(String, String)>);

impl DistinguishedName {
    fn of(name: &x509_cert::name::Name) -> DistinguishedName {
        let mut out = Vec::new();
        for rdn in name.0.iter() {
            for atv in rdn.0.iter() {
                let key = match atv.oid.to_string().as_str() {
                    "2.5.4.6" => "C".to_owned(),
                    "2.5.4.8" => "ST".to_owned(),
                    "2.5.4.7" => "L".to_owned(),
                    "2.5.4.10" => "O".to_owned(),
                    "2.5.4.11" => "OU".to_owned(),
                    "2.5.4.3" => "CN".to_owned(),
                    "1.2.840.113549.1.9.1" => "E".to_owned(),
                    other => other.to_owned(),
                };
                out.push((key, String::from_utf8_lossy(atv.value.value()).into_owned()));
            }
        }
        DistinguishedName(out)
    }

    /// `C=US, ST=WA, O=acme, CN=signer` (commas inside values escaped as `\,`).
    pub fn parse(text: &str) -> Result<DistinguishedName, String> {
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.extend(chars.next()),
                ',' | ';' => parts.push(std::mem::take(&mut current)),
                other => current.push(other),
            }
        }
        parts.push(current);
        let mut out: Vec<(String, String)> = Vec::new();
        for part in parts {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?} is not ATTRIBUTE=value"))?;
            let key = k.trim().to_uppercase();
            let key = if key == "S" { "ST".to_owned() } else { key };
            if key.is_empty() || v.trim().is_empty() {
                return Err(format!("{part:?} is not ATTRIBUTE=value"));
            }
            if out.iter().any(|(existing, _)| existing == &key) {
                return Err(format!("attribute {key} appears twice"));
            }
            out.push((key, v.trim().to_owned()));
        }
        Ok(DistinguishedName(out))
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Whether every attribute of `self` is in `subject` with the same value (notation's rule).
    pub fn is_subset_of(&self, subject: &DistinguishedName) -> bool {
        self.0.iter().all(|(k, v)| subject.0.iter().any(|(sk, sv)| sk == k && sv == v))
    }
}

impl std::fmt::Display for DistinguishedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={}", v.replace(',', "\\,"))).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_parsing_and_subset_matching() {
        let trusted = DistinguishedName::parse("C=US, ST=WA, O=acme\\, inc").unwrap();
        let subject = DistinguishedName::parse("C=US, ST=WA, L=Seattle, O=acme\\, inc, CN=release").unwrap();
        assert!(trusted.is_subset_of(&subject));
        assert!(!subject.is_subset_of(&trusted));
        assert!(!DistinguishedName::parse("C=US, ST=CA, O=acme\\, inc").unwrap().is_subset_of(&subject));
        assert!(DistinguishedName::parse("C=US, C=DE").is_err());
        assert!(DistinguishedName::parse("C=US, nonsense").is_err());
        assert_eq!(trusted.to_string(), "C=US, ST=WA, O=acme\\, inc");
    }
}
