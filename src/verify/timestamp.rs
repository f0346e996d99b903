//! RFC 3161 timestamp tokens: a timestamp authority's signed statement that some data (here, a
//! signature) existed at `genTime`. Parsed with RustCrypto's `cms` and `x509-tsp` (on the
//! `x509-cert`/`der` the project already uses: a small addition, and no hand-written CMS). The
//! surface is small so that every verifier can use it: [`Token::parse`] (a `TimeStampResp` or a
//! bare `TimeStampToken`), [`Token::covers`] (the message imprint), [`Token::signed_by`] (the
//! signer-info signature over the signed attributes, with the content's digest in them), and
//! [`Token::gen_time`]. Which certificates may sign a token, and when, is the caller's policy.

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerInfo};
use sha2::Digest;
use x509_cert::der::asn1::OctetString;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_tsp::{TimeStampResp, TstInfo};

use super::KeyKind;
use super::notation::x509::Cert;

const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
/// Bigger than any token a TSA writes (a few KiB with its chain).
const MAX_TOKEN: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
#[error("RFC 3161 timestamp: {0}")]
pub struct Error(String);

fn err<T>(why: impl Into<String>) -> Result<T, Error> {
    Err(Error(why.into()))
}

/// A parsed timestamp token.
pub struct Token {
    info: TstInfo,
    /// The DER of the TSTInfo, which the message-digest attribute covers.
    info_der: Vec<u8>,
    signer: SignerInfo,
    certificates: Vec<Cert>,
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn of(oid: &ObjectIdentifier) -> Result<Hash, Error> {
        match *oid {
            SHA256 => Ok(Hash::Sha256),
            SHA384 => Ok(Hash::Sha384),
            SHA512 => Ok(Hash::Sha512),
            other => err(format!("hash algorithm {other} is not supported")),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

impl Token {
    pub fn parse(der: &[u8]) -> Result<Token, Error> {
        if der.len() > MAX_TOKEN {
            return err(format!("{} bytes, more than {MAX_TOKEN}", der.len()));
        }
        // A response (status, token) or the token alone: bundles and annotations hold either.
        let content = match TimeStampResp::from_der(der) {
            Ok(resp) => match resp.time_stamp_token {
                Some(token) => token,
                None => return err("the response holds no token (the TSA refused)"),
            },
            Err(_) => ContentInfo::from_der(der).map_err(|e| Error(format!("neither a response nor a token: {e}")))?,
        };
        if content.content_type != SIGNED_DATA {
            return err(format!("content type {} is not SignedData", content.content_type));
        }
        let signed: SignedData = content.content.decode_as().map_err(|e| Error(format!("SignedData: {e}")))?;
        if signed.encap_content_info.econtent_type != TST_INFO {
            return err("the signed content is not a TSTInfo");
        }
        let econtent = signed.encap_content_info.econtent.as_ref().ok_or_else(|| Error("no TSTInfo".into()))?;
        let info_der = econtent.decode_as::<OctetString>().map_err(|e| Error(format!("TSTInfo: {e}")))?.into_bytes();
        let info = TstInfo::from_der(&info_der).map_err(|e| Error(format!("TSTInfo: {e}")))?;
        let signers: Vec<_> = signed.signer_infos.0.into_vec();
        let [signer] =
            <[SignerInfo; 1]>::try_from(signers).map_err(|s| Error(format!("{} signer infos, not 1", s.len())))?;
        let mut certificates = Vec::new();
        for choice in signed.certificates.iter().flat_map(|c| c.0.iter()).take(16) {
            if let CertificateChoices::Certificate(c) = choice {
                let der = c.to_der().map_err(|e| Error(e.to_string()))?;
                certificates.push(Cert::from_der(&der).map_err(Error)?);
            }
        }
        Ok(Token { info, info_der, signer, certificates })
    }

    /// The time the authority states, in unix seconds.
    pub fn gen_time(&self) -> i64 {
        self.info.gen_time.to_unix_duration().as_secs() as i64
    }

    /// The certificates the token embeds (the signer's, sometimes its chain).
    pub fn certificates(&self) -> &[Cert] {
        &self.certificates
    }

    /// Whether the token's message imprint is the hash of `data`.
    pub fn covers(&self, data: &[u8]) -> Result<bool, Error> {
        let imprint = &self.info.message_imprint;
        let hash = Hash::of(&imprint.hash_algorithm.oid)?;
        Ok(hash.digest(data) == imprint.hashed_message.as_bytes())
    }

    /// Whether `cert`'s key signed the token: the signed attributes carry the TSTInfo's content
    /// type and digest, and the signature over them verifies.
    pub fn signed_by(&self, cert: &Cert) -> Result<bool, Error> {
        let hash = Hash::of(&self.signer.digest_alg.oid)?;
        let Some(attrs) = &self.signer.signed_attrs else { return err("the signer info has no signed attributes") };
        let attr = |oid| attrs.iter().find(|a| a.oid == oid).and_then(|a| a.values.get(0));
        let content_type = attr(CONTENT_TYPE).and_then(|v| v.decode_as::<ObjectIdentifier>().ok());
        if content_type != Some(TST_INFO) {
            return err("the signed attributes do not name the TSTInfo content type");
        }
        let digest = attr(MESSAGE_DIGEST).and_then(|v| v.decode_as::<OctetString>().ok());
        if digest.as_ref().map(OctetString::as_bytes) != Some(hash.digest(&self.info_der).as_slice()) {
            return err("the signed attributes' message digest is not the TSTInfo's");
        }
        // The signature is over the attributes encoded as a SET OF (DER), not as the [0] field.
        let signed = attrs.to_der().map_err(|e| Error(e.to_string()))?;
        let sig = self.signer.signature.as_bytes();
        Ok(algorithms(cert.key.kind, hash).iter().any(|alg| cert.key.verify(*alg, &signed, sig)))
    }
}

fn algorithms(key: KeyKind, hash: Hash) -> Vec<&'static dyn VerificationAlgorithm> {
    match (key, hash) {
        (KeyKind::EcP256, Hash::Sha256) => vec![&signature::ECDSA_P256_SHA256_ASN1],
        (KeyKind::EcP256, Hash::Sha384) => vec![&signature::ECDSA_P256_SHA384_ASN1],
        (KeyKind::EcP384, Hash::Sha256) => vec![&signature::ECDSA_P384_SHA256_ASN1],
        (KeyKind::EcP384, Hash::Sha384) => vec![&signature::ECDSA_P384_SHA384_ASN1],
        (KeyKind::EcP521, Hash::Sha512) => vec![&signature::ECDSA_P521_SHA512_ASN1],
        (KeyKind::Rsa, Hash::Sha256) => {
            vec![&signature::RSA_PKCS1_2048_8192_SHA256, &signature::RSA_PSS_2048_8192_SHA256]
        }
        (KeyKind::Rsa, Hash::Sha384) => {
            vec![&signature::RSA_PKCS1_2048_8192_SHA384, &signature::RSA_PSS_2048_8192_SHA384]
        }
        (KeyKind::Rsa, Hash::Sha512) => {
            vec![&signature::RSA_PKCS1_2048_8192_SHA512, &signature::RSA_PSS_2048_8192_SHA512]
        }
        _ => Vec::new(),
    }
}
