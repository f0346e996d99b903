//! RFC 3161 timestamp tokens: a Time Stamping Authority's countersignature proving that some
//! bytes (a signature) existed at a time. Verified offline against given TSA roots: the CMS
//! SignedData signature over the TSTInfo (with its contentType, messageDigest and
//! signingCertificateV2 attributes, RFC 5652 / RFC 5816), the messageImprint over the stamped
//! bytes, and the TSA certificate chain at the stamped time under RFC 3161 2.3 (the timestamping
//! EKU, alone and critical) and the Notary Project's certificate requirements. A nonce is not
//! required: a token stored in a signature is checked long after the request that fetched it.
//!
//! The surface is small so that any verifier can use it (notation's `tsa` trust stores, Sigstore
//! timestamp authorities): token, stamped bytes, roots → the time and the TSA.
//!
//! Parsing uses RustCrypto's `cms` for the SignedData, on the same `der` and `x509-cert` as the
//! certificates. The TSTInfo is declared here with der's derive instead of taken from `x509-tsp`:
//! that crate reads genTime with der's GeneralizedTime, which refuses the fractional seconds RFC
//! 3161 2.4.2 allows (and TSAs send), and it brings the CMP crates along for one structure.
//! Tokens must be DER, as TSAs send them; BER with indefinite lengths is refused.

use aws_lc_rs::digest;
use aws_lc_rs::signature::VerificationAlgorithm;
use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{Any, Int, OctetString};
use der::oid::ObjectIdentifier;
use der::{Decode, Encode, Sequence, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::KeyKind;
use super::x509::{Cert, algorithms};

const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
const SIGNING_CERTIFICATE_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const TIME_STAMPING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8");
const ANY_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");
/// ETSI's baseline time-stamp policy (RFC 3628 5.2): without an accuracy, it means one second.
const BASELINE_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("0.4.0.2023.1.1");

/// Larger tokens are refused before parsing (a token with a full chain is a few KiB).
pub const MAX_TOKEN: usize = 64 << 10;
/// Most certificates read from a token, and the longest chain built from them.
const MAX_CERTS: usize = 10;

/// A verified timestamp.
#[derive(Clone, Debug)]
pub struct Timestamp {
    /// TSTInfo.genTime, microseconds since the Unix epoch.
    pub time_us: i64,
    /// TSTInfo.accuracy (or the baseline policy's second), microseconds.
    pub accuracy_us: i64,
    /// The TSA certificate's subject.
    pub authority: String,
    /// The TSA certificate chain, its signing certificate first and the trusted root last.
    pub chain: Vec<Cert>,
}

impl Timestamp {
    /// Whether the whole range genTime ± accuracy (RFC 3161 2.4.2) lies within
    /// `[not_before, not_after]` (Unix seconds).
    pub fn within(&self, not_before: i64, not_after: i64) -> bool {
        let (lower, upper) = (self.time_us - self.accuracy_us, self.time_us + self.accuracy_us);
        not_before.saturating_mul(1_000_000) <= lower && upper <= not_after.saturating_mul(1_000_000)
    }

    /// genTime as RFC 3339 (UTC).
    pub fn time(&self) -> String {
        jiff::Timestamp::from_microsecond(self.time_us).map_or_else(|_| self.time_us.to_string(), |t| t.to_string())
    }
}

#[derive(Sequence)]
struct MessageImprint {
    hash_algorithm: AlgorithmIdentifierOwned,
    hashed_message: OctetString,
}

#[derive(Sequence)]
struct Accuracy {
    #[asn1(optional = "true")]
    seconds: Option<u32>,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    millis: Option<u16>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    micros: Option<u16>,
}

/// RFC 3161 2.4.2.
#[derive(Sequence)]
struct TstInfo {
    version: u8,
    policy: ObjectIdentifier,
    message_imprint: MessageImprint,
    serial_number: Int,
    /// GeneralizedTime, read by hand for its fractional seconds.
    gen_time: Any,
    #[asn1(optional = "true")]
    accuracy: Option<Accuracy>,
    #[asn1(default = "Default::default")]
    ordering: bool,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    tsa: Option<GeneralName>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    extensions: Option<x509_cert::ext::Extensions>,
}

/// RFC 5035 (ESS signingCertificateV2).
#[derive(Sequence)]
struct SigningCertificateV2 {
    certs: Vec<EssCertIdV2>,
    #[asn1(optional = "true")]
    policies: Option<Any>,
}

#[derive(Sequence)]
struct EssCertIdV2 {
    /// Absent means SHA-256.
    #[asn1(optional = "true")]
    hash_algorithm: Option<AlgorithmIdentifierOwned>,
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<IssuerSerial>,
}

#[derive(Sequence)]
struct IssuerSerial {
    issuer: Vec<GeneralName>,
    serial_number: Int,
}

fn hash(algorithm: &ObjectIdentifier, data: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match *algorithm {
        SHA256 => &digest::SHA256,
        SHA384 => &digest::SHA384,
        SHA512 => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(algorithm, data).as_ref().to_vec())
}

/// Why a token was refused: one line naming the rule.
#[derive(Debug, thiserror::Error)]
#[error("RFC 3161 timestamp: {0}")]
pub struct Error(String);

/// RFC 3161 2.4.2 TimeStampResp: a TSA's answer, holding the token when granted.
#[derive(Sequence)]
struct TimeStampResp {
    status: PkiStatusInfo,
    #[asn1(optional = "true")]
    token: Option<ContentInfo>,
}

#[derive(Sequence)]
struct PkiStatusInfo {
    status: u8,
    #[asn1(optional = "true")]
    text: Option<Vec<String>>,
    #[asn1(optional = "true")]
    fail_info: Option<der::asn1::BitString>,
}

/// A parsed timestamp token, checked piece by piece by its verifier: [`verify`] for the whole
/// RFC 3161 / Notary Project verification against TSA roots, or [`Token::covers`],
/// [`Token::signed_by`] and [`Token::gen_time`] for a caller with a policy of its own (Sigstore's
/// trusted roots name the TSA certificates and their validity themselves).
pub struct Token {
    /// The TSTInfo's DER, which the signed messageDigest attribute covers.
    content: Vec<u8>,
    tst: TstInfo,
    time_us: i64,
    accuracy_us: i64,
    signers: Vec<SignerInfo>,
    certificates: Vec<Cert>,
}

impl Token {
    /// A DER TimeStampToken, or a TimeStampResp holding one (bundles and annotations carry either).
    pub fn parse(der: &[u8]) -> Result<Token, Error> {
        Token::read(der).map_err(Error)
    }

    fn read(der: &[u8]) -> Result<Token, String> {
        if der.len() > MAX_TOKEN {
            return Err(format!("the timestamp token is {} bytes, more than {MAX_TOKEN}", der.len()));
        }
        let malformed = |what: &str, e: der::Error| format!("the timestamp token is malformed ({what}: {e})");
        let info = match ContentInfo::from_der(der) {
            Ok(info) => info,
            Err(e) => match TimeStampResp::from_der(der) {
                Ok(resp) => resp
                    .token
                    .ok_or_else(|| format!("the TSA response holds no token (status {})", resp.status.status))?,
                Err(_) => return Err(malformed("ContentInfo", e)),
            },
        };
        if info.content_type != SIGNED_DATA {
            return Err(format!("the timestamp token is a {} ContentInfo, not SignedData", info.content_type));
        }
        let signed: SignedData = info.content.decode_as().map_err(|e| malformed("SignedData", e))?;
        if signed.version != CmsVersion::V3 {
            return Err(format!(
                "the timestamp token's SignedData is version {:?}, not 3 (RFC 3161 2.4.2)",
                signed.version
            ));
        }
        let encap = &signed.encap_content_info;
        if encap.econtent_type != TST_INFO {
            return Err(format!("the timestamp token holds {}, not a TSTInfo", encap.econtent_type));
        }
        let content = encap
            .econtent
            .as_ref()
            .ok_or("the timestamp token has no TSTInfo content")?
            .decode_as::<OctetString>()
            .map_err(|e| malformed("eContent", e))?
            .into_bytes();
        let tst = TstInfo::from_der(&content).map_err(|e| malformed("TSTInfo", e))?;
        if tst.version != 1 {
            return Err(format!("the TSTInfo is version {}, not 1 (RFC 3161 2.4.2)", tst.version));
        }
        if tst.gen_time.tag() != Tag::GeneralizedTime {
            return Err("the TSTInfo genTime is not a GeneralizedTime".into());
        }
        let time_us = generalized_time_us(tst.gen_time.value())?;
        let accuracy_us = match &tst.accuracy {
            Some(a) => {
                i64::from(a.seconds.unwrap_or(0)) * 1_000_000
                    + i64::from(a.millis.unwrap_or(0)) * 1_000
                    + i64::from(a.micros.unwrap_or(0))
            }
            None if tst.policy == BASELINE_POLICY => 1_000_000,
            None => 0,
        };
        let mut certificates = Vec::new();
        for choice in signed.certificates.iter().flat_map(|set| set.0.iter()) {
            if let CertificateChoices::Certificate(cert) = choice {
                let der = cert.to_der().map_err(|e| malformed("certificate", e))?;
                certificates.push(Cert::from_der(&der)?);
            }
        }
        if certificates.len() > MAX_CERTS {
            return Err(format!(
                "the timestamp token carries {} certificates, more than {MAX_CERTS}",
                certificates.len()
            ));
        }
        let signers = signed.signer_infos.0.into_vec();
        Ok(Token { content, tst, time_us, accuracy_us, signers, certificates })
    }

    /// genTime, unix seconds.
    pub fn gen_time(&self) -> i64 {
        self.time_us.div_euclid(1_000_000)
    }

    /// The certificates the token embeds (the TSA's, sometimes its chain).
    pub fn certificates(&self) -> &[Cert] {
        &self.certificates
    }

    /// Whether the messageImprint is the hash of `data`.
    pub fn covers(&self, data: &[u8]) -> Result<bool, Error> {
        let imprint = &self.tst.message_imprint;
        let expected = hash(&imprint.hash_algorithm.oid, data).ok_or_else(|| {
            Error(format!("the messageImprint uses hash {}, not SHA-256/384/512", imprint.hash_algorithm.oid))
        })?;
        Ok(imprint.hashed_message.as_bytes() == expected.as_slice())
    }

    /// Whether `cert`'s key signed the token: a SignerInfo whose signed attributes name the
    /// TSTInfo's content type and digest, with a signature over them that verifies.
    pub fn signed_by(&self, cert: &Cert) -> Result<bool, Error> {
        let (mut error, mut checked) = ("the timestamp token has no SignerInfo".to_owned(), false);
        for signer in &self.signers {
            match check_attributes(signer, &self.content).and_then(|()| signature_verifies(signer, cert)) {
                Ok(true) => return Ok(true),
                Ok(false) => checked = true,
                Err(e) => error = e,
            }
        }
        if checked { Ok(false) } else { Err(Error(error)) }
    }
}

/// Verifies `token` as a timestamp of `message` by a TSA whose chain ends in one of `roots`, under
/// RFC 3161 2.3 and the Notary Project's requirements for timestamping certificates.
pub fn verify(token: &[u8], message: &[u8], roots: &[Cert]) -> Result<Timestamp, Error> {
    let token = Token::parse(token)?;
    if !token.covers(message)? {
        return Err(Error("the messageImprint is not the hash of the signature it countersigns".into()));
    }
    // As notation (tspclient-go): the first signer that verifies decides.
    let mut last = "the timestamp token has no SignerInfo".to_owned();
    for signer in &token.signers {
        match verify_signer(signer, &token, roots) {
            Ok(chain) => {
                let authority = chain[0].subject().to_string();
                return Ok(Timestamp { time_us: token.time_us, accuracy_us: token.accuracy_us, authority, chain });
            }
            Err(e) => last = e,
        }
    }
    Err(Error(last))
}

/// `YYYYMMDDhhmmss[.f...]Z` (RFC 3161 2.4.2: UTC, optional fractional seconds) in µs since the
/// epoch; digits past the microsecond are dropped.
fn generalized_time_us(text: &[u8]) -> Result<i64, String> {
    let bad = || format!("the TSTInfo genTime {:?} is not YYYYMMDDhhmmss[.f]Z", String::from_utf8_lossy(text));
    let body = text.strip_suffix(b"Z").ok_or_else(bad)?;
    let (whole, fraction) = match body.iter().position(|&b| b == b'.') {
        Some(dot) => (&body[..dot], &body[dot + 1..]),
        None => (body, &b""[..]),
    };
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if whole.len() != 14 || !digits(whole) || (body.len() != whole.len() && !digits(fraction)) {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| whole[r].iter().fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0'));
    let year = i16::try_from(n(0..4)).map_err(|_| bad())?;
    let [month, day, hour, minute, second] = [n(4..6), n(6..8), n(8..10), n(10..12), n(12..14)].map(|v| v as i8);
    let at = jiff::civil::DateTime::new(year, month, day, hour, minute, second, 0).map_err(|_| bad())?;
    let seconds = at.to_zoned(jiff::tz::TimeZone::UTC).map_err(|_| bad())?.timestamp().as_second();
    let micros =
        fraction.iter().chain(std::iter::repeat(&b'0')).take(6).fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    Ok(seconds * 1_000_000 + micros)
}

/// The signed attribute `oid` of `signer`: at most one, single-valued.
fn attribute(signer: &SignerInfo, oid: ObjectIdentifier) -> Result<Option<&Any>, String> {
    let attrs = signer.signed_attrs.as_ref().ok_or("the timestamp's SignerInfo has no signed attributes")?;
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    match (found.next(), found.next()) {
        (None, _) => Ok(None),
        (Some(a), None) if a.values.len() == 1 => Ok(a.values.get(0)),
        _ => Err(format!("the timestamp's signed attribute {oid} is repeated or multi-valued")),
    }
}

/// contentType is id-ct-TSTInfo and messageDigest the hash of the TSTInfo (RFC 5652 5.3).
fn check_attributes(signer: &SignerInfo, content: &[u8]) -> Result<(), String> {
    let content_type = attribute(signer, CONTENT_TYPE)?.ok_or("the timestamp's signed attributes lack contentType")?;
    if content_type.decode_as::<ObjectIdentifier>().ok() != Some(TST_INFO) {
        return Err("the timestamp's signed contentType is not id-ct-TSTInfo".into());
    }
    let digest_value =
        attribute(signer, MESSAGE_DIGEST)?.ok_or("the timestamp's signed attributes lack messageDigest")?;
    let signed_digest = digest_value.decode_as::<OctetString>().map_err(|e| format!("messageDigest: {e}"))?;
    let actual = hash(&signer.digest_alg.oid, content)
        .ok_or_else(|| format!("the timestamp's digest algorithm {} is not SHA-256/384/512", signer.digest_alg.oid))?;
    if signed_digest.as_bytes() != actual.as_slice() {
        return Err("the timestamp's messageDigest does not match its TSTInfo (the token was altered)".into());
    }
    Ok(())
}

/// Whether `cert`'s key signed `signer`'s attributes (DER as a SET OF, not as the [0] field).
fn signature_verifies(signer: &SignerInfo, cert: &Cert) -> Result<bool, String> {
    let attrs = signer.signed_attrs.as_ref().ok_or("the timestamp's SignerInfo has no signed attributes")?;
    let signed_attrs = attrs.to_der().map_err(|e| e.to_string())?;
    Ok(signature_algorithms(&signer.digest_alg.oid, &signer.signature_algorithm.oid, cert.key.kind)
        .iter()
        .any(|alg| cert.key.verify(*alg, &signed_attrs, signer.signature.as_bytes())))
}

/// One SignerInfo: its signed attributes, its signing certificate (named by signingCertificateV2),
/// the signature, and the TSA chain to a root at genTime.
fn verify_signer(signer: &SignerInfo, token: &Token, roots: &[Cert]) -> Result<Vec<Cert>, String> {
    let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer.sid else {
        return Err("the timestamp's SignerInfo names its certificate by key identifier (only issuer and serial, version 1, are supported)".into());
    };
    if signer.version != CmsVersion::V1 {
        return Err(format!("the timestamp's SignerInfo is version {:?}, not 1", signer.version));
    }
    check_attributes(signer, &token.content)?;
    let pool = &token.certificates;
    let leaf = signing_certificate(attribute(signer, SIGNING_CERTIFICATE_V2)?, sid, pool)?;
    if !signature_verifies(signer, leaf)? {
        return Err(format!("the timestamp's signature does not verify with the TSA certificate {}", leaf.subject()));
    }
    let chain = chain::chain_to_root(leaf, pool, roots)?;
    chain::check_chain(&chain, token.time_us)?;
    if let Some(at) = attribute(signer, SIGNING_TIME)? {
        let der = at.to_der().map_err(|e| format!("signingTime: {e}"))?;
        let at = x509_cert::time::Time::from_der(&der).map_err(|e| format!("signingTime: {e}"))?;
        let secs = at.to_unix_duration().as_secs() as i64;
        if let Some(cert) = chain.iter().find(|c| !c.valid_at(secs)) {
            return Err(format!("the timestamp's signingTime is outside the validity of {}", cert.subject()));
        }
    }
    Ok(chain)
}

/// The certificate signingCertificateV2 names (RFC 5816: required), matched by its issuer and
/// serial (or the SignerInfo's when it names none) and then by its hash.
fn signing_certificate<'a>(
    attribute: Option<&Any>,
    sid: &cms::cert::IssuerAndSerialNumber,
    pool: &'a [Cert],
) -> Result<&'a Cert, String> {
    let value = attribute.ok_or("the timestamp's signed attributes lack signingCertificateV2 (RFC 5816)")?;
    let ess: SigningCertificateV2 = value.decode_as().map_err(|e| format!("signingCertificateV2: {e}"))?;
    let id = ess.certs.first().ok_or("the timestamp's signingCertificateV2 names no certificate")?;
    let (issuer, serial) = match &id.issuer_serial {
        Some(is) => {
            let name = is.issuer.iter().find_map(|g| match g {
                GeneralName::DirectoryName(n) => Some(n.clone()),
                _ => None,
            });
            (
                name.ok_or("the timestamp's signingCertificateV2 issuer is not a directory name")?,
                is.serial_number.as_bytes().to_vec(),
            )
        }
        None => (sid.issuer.clone(), sid.serial_number.as_bytes().to_vec()),
    };
    let cert = pool
        .iter()
        .find(|c| c.cert.tbs_certificate.issuer == issuer && c.cert.tbs_certificate.serial_number.as_bytes() == serial)
        .ok_or("the timestamp token does not carry the TSA certificate it names")?;
    let algorithm = id.hash_algorithm.as_ref().map_or(SHA256, |a| a.oid);
    let digest = hash(&algorithm, &cert.der)
        .ok_or_else(|| format!("the timestamp's signingCertificateV2 uses hash {algorithm}, not SHA-256/384/512"))?;
    if id.cert_hash.as_bytes() != digest.as_slice() {
        return Err("the timestamp's signingCertificateV2 hash does not match the TSA certificate".into());
    }
    Ok(cert)
}

/// The verification algorithms for a SignerInfo: rsaEncryption and RSASSA-PSS take their hash
/// from the digest algorithm, the others name it (as tspclient-go reads them).
fn signature_algorithms(
    digest: &ObjectIdentifier,
    signature: &ObjectIdentifier,
    key: KeyKind,
) -> Vec<&'static dyn VerificationAlgorithm> {
    let named = match (*signature, *digest) {
        (RSA, SHA256) => ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11"),
        (RSA, SHA384) => ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12"),
        (RSA, SHA512) => ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13"),
        (RSA, _) => return Vec::new(),
        (other, _) => other,
    };
    algorithms(&named, key)
}

#[path = "timestamp_chain.rs"]
mod chain;

#[cfg(test)]
#[path = "timestamp_tests.rs"]
mod tests;
