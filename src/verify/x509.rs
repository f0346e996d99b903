//! Certificates for the Notary Project: parsing, distinguished names, issuer signatures, validity.
//! The code-signing chain rules are in `rules`.

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use x509_cert::Certificate;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::Extension;

use crate::verify::{KeyKind, PublicKey};

const CRL_DISTRIBUTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.31");
const AUTHORITY_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.1");

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

    /// Whether this certificate names `issuer` as its issuer, compared as encoded (as notation
    /// does: two spellings of one name are two names) and `issuer`'s key signed it.
    pub(crate) fn issued_by(&self, issuer: &Cert) -> bool {
        let (Ok(named), Ok(subject)) =
            (self.cert.tbs_certificate.issuer.to_der(), issuer.cert.tbs_certificate.subject.to_der())
        else {
            return false;
        };
        named == subject && self.signed_by(issuer)
    }

    /// Whether `at` (unix seconds) is within the validity period.
    pub fn valid_at(&self, at: i64) -> bool {
        let (not_before, not_after) = self.validity();
        not_before <= at && at <= not_after
    }

    /// notBefore and notAfter, unix seconds.
    pub fn validity(&self) -> (i64, i64) {
        let v = &self.cert.tbs_certificate.validity;
        let secs = |t: &x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
        (secs(&v.not_before), secs(&v.not_after))
    }

    pub(crate) fn extensions(&self) -> &[Extension] {
        self.cert.tbs_certificate.extensions.as_deref().unwrap_or_default()
    }

    /// The extension `oid` (the first: `rules` refuses a certificate that repeats one) decoded,
    /// with whether it is critical.
    pub(crate) fn extension<'a, T: Decode<'a>>(&'a self, oid: ObjectIdentifier) -> Result<Option<(T, bool)>, String> {
        match self.extensions().iter().find(|e| e.extn_id == oid) {
            None => Ok(None),
            Some(e) => T::from_der(e.extn_value.as_bytes())
                .map(|v| Some((v, e.critical)))
                .map_err(|err| format!("certificate {}: extension {oid} does not decode: {err}", self.subject())),
        }
    }

    fn has_extension(&self, oid: ObjectIdentifier) -> bool {
        self.extensions().iter().any(|e| e.extn_id == oid)
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
pub(crate) fn algorithms(oid: &ObjectIdentifier, key: KeyKind) -> Vec<&'static dyn VerificationAlgorithm> {
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
                // notation refuses multi-valued RDNs in an identity; read as a value, `+` would
                // make an identity that no certificate can ever match, silently.
                '+' => return Err("multi-valued RDNs (+) are not supported; escape a + inside a value as \\+".into()),
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

    /// The first attribute type this name holds more than once (in separate RDNs or in one
    /// multi-valued RDN): such a subject (`O=evil, O=acme`) has no single value to compare.
    pub fn repeated(&self) -> Option<&str> {
        let mut seen = std::collections::BTreeSet::new();
        self.0.iter().map(|(k, _)| k.as_str()).find(|k| !seen.insert(*k))
    }

    /// Whether every attribute of `self` is in `subject` with the same value (notation's rule).
    /// A subject that repeats an attribute type matches nothing: with `O=evil, O=acme`, "the O"
    /// is not defined, and picking either value lets the certificate's holder choose.
    pub fn is_subset_of(&self, subject: &DistinguishedName) -> bool {
        subject.repeated().is_none() && self.0.iter().all(|(k, v)| subject.0.iter().any(|(sk, sv)| sk == k && sv == v))
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
        assert!(DistinguishedName::parse("C=US, ST=WA, O=acme+OU=x").is_err(), "multi-valued RDN in an identity");
        assert_eq!(DistinguishedName::parse("C=US, ST=WA, O=a\\+b").unwrap().to_string(), "C=US, ST=WA, O=a+b");
    }

    /// A subject that holds an attribute type twice (two RDNs, or one multi-valued RDN) matches
    /// no identity, whichever of its values the identity names; distinct types in one RDN are
    /// plain attributes (as Go, hence notation, reads them).
    #[test]
    fn subjects_repeating_an_attribute_match_no_identity() {
        use std::str::FromStr;
        let identity = DistinguishedName::parse("C=US, ST=WA, O=acme").unwrap();
        let subject = |rfc4514: &str| DistinguishedName::of(&x509_cert::name::Name::from_str(rfc4514).unwrap());
        assert!(identity.is_subset_of(&subject("CN=signer,O=acme,ST=WA,C=US")));
        assert!(identity.is_subset_of(&subject("CN=signer+O=acme,ST=WA,C=US")));
        for repeated in [
            "CN=signer,O=acme,O=evil,ST=WA,C=US",
            "CN=signer,O=evil,O=acme,ST=WA,C=US",
            "CN=signer,O=evil+O=acme,ST=WA,C=US",
            "CN=signer,CN=other,O=acme,ST=WA,C=US",
        ] {
            let s = subject(repeated);
            assert!(s.repeated().is_some(), "{repeated}");
            assert!(!identity.is_subset_of(&s), "{repeated} matched {identity}");
        }
    }
}
