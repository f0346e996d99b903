//! The COSE_Sign1 envelope (`application/cose`) of a Notary Project signature, parsed into the
//! format-neutral [`Envelope`].

use coset::cbor::value::Value;
use coset::{
    CborSerializable, CoseSign1, Label, RegisteredLabel, RegisteredLabelWithPrivate, TaggedCborSerializable, iana,
};

use super::envelope::{Algorithm, Envelope, KNOWN_CRITICAL, PAYLOAD_CONTENT_TYPE, Scheme};

const X5CHAIN: i64 = 33;
const MAX_CERTS: usize = 10;
const TIMESTAMP: &str = "io.cncf.notary.timestampSignature";

pub fn parse(bytes: &[u8]) -> Result<Envelope, String> {
    let sign1 = CoseSign1::from_tagged_slice(bytes)
        .or_else(|_| CoseSign1::from_slice(bytes))
        .map_err(|e| format!("COSE_Sign1: {e}"))?;
    let protected = &sign1.protected.header;
    let algorithm = match &protected.alg {
        Some(RegisteredLabelWithPrivate::Assigned(alg)) => match alg {
            iana::Algorithm::PS256 => Algorithm::Ps256,
            iana::Algorithm::PS384 => Algorithm::Ps384,
            iana::Algorithm::PS512 => Algorithm::Ps512,
            iana::Algorithm::ES256 => Algorithm::Es256,
            iana::Algorithm::ES384 => Algorithm::Es384,
            iana::Algorithm::ES512 => Algorithm::Es512,
            other => return Err(format!("COSE alg {other:?} is not one of PS256/384/512, ES256/384/512")),
        },
        other => return Err(format!("COSE alg {other:?} is not one of PS256/384/512, ES256/384/512")),
    };
    if protected.crit.is_empty() {
        return Err("COSE crit is missing or empty".into());
    }
    let mut critical = Vec::new();
    for label in &protected.crit {
        match label {
            RegisteredLabelWithPrivate::Text(t) if KNOWN_CRITICAL.contains(&t.as_str()) => critical.push(t.clone()),
            // Registered COSE parameters this verifier reads from the protected header.
            RegisteredLabelWithPrivate::Assigned(
                iana::HeaderParameter::Alg | iana::HeaderParameter::Crit | iana::HeaderParameter::ContentType,
            ) => {}
            other => return Err(format!("unknown critical header {other:?}")),
        }
    }
    match &protected.content_type {
        Some(RegisteredLabel::Text(t)) if t == PAYLOAD_CONTENT_TYPE => {}
        other => return Err(format!("COSE content type {other:?} is not {PAYLOAD_CONTENT_TYPE}")),
    }
    let text_header =
        |name: &str| protected.rest.iter().find(|(l, _)| *l == Label::Text(name.to_owned())).map(|(_, v)| v);
    let scheme = Scheme::parse(text_header("io.cncf.notary.signingScheme").and_then(Value::as_text))?;
    let time = |name: &str| -> Result<Option<i64>, String> {
        match text_header(name) {
            None => Ok(None),
            Some(Value::Tag(1, inner)) => match inner.as_ref() {
                Value::Integer(i) => i64::try_from(*i).map(Some).map_err(|_| format!("COSE {name} out of range")),
                other => Err(format!("COSE {name} is {other:?}, not epoch seconds")),
            },
            Some(other) => Err(format!("COSE {name} is {other:?}, not a tag-1 datetime")),
        }
    };
    let chain = sign1.unprotected.rest.iter().find(|(l, _)| *l == Label::Int(X5CHAIN)).map(|(_, v)| v);
    let certificates = match chain {
        Some(Value::Bytes(one)) => vec![one.clone()],
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_CERTS => items
            .iter()
            .map(|i| i.as_bytes().cloned().ok_or_else(|| "COSE x5chain holds a non-bstr".to_owned()))
            .collect::<Result<_, _>>()?,
        _ => return Err("COSE x5chain (the certificate chain) is missing or too long".into()),
    };
    let payload = sign1.payload.clone().ok_or("COSE payload is detached; Notary Project signatures embed it")?;
    let envelope = Envelope {
        algorithm,
        signing_input: sign1.tbs_data(&[]),
        signature: sign1.signature.clone(),
        payload,
        scheme,
        signing_time: time("io.cncf.notary.signingTime")?,
        authentic_signing_time: time("io.cncf.notary.authenticSigningTime")?,
        expiry: time("io.cncf.notary.expiry")?,
        critical,
        certificates,
        timestamp: match sign1.unprotected.rest.iter().find(|(l, _)| *l == Label::Text(TIMESTAMP.into())) {
            None => None,
            Some((_, Value::Bytes(token))) => Some(token.clone()),
            Some(_) => return Err(format!("COSE {TIMESTAMP} is not a byte string")),
        },
    };
    envelope.check_critical()?;
    Ok(envelope)
}
