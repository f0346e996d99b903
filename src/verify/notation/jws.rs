//! The JWS envelope (`application/jose+json`, flattened JSON serialization) of a Notary Project
//! signature: parsed into the format-neutral [`Envelope`].

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::Value;

use super::envelope::{Algorithm, Envelope, KNOWN_CRITICAL, PAYLOAD_CONTENT_TYPE, Scheme};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flattened {
    payload: String,
    protected: String,
    #[serde(default)]
    header: BTreeMap<String, Value>,
    signature: String,
}

const MAX_CERTS: usize = 10;
const TIMESTAMP: &str = "io.cncf.notary.timestampSignature";

pub fn parse(bytes: &[u8]) -> Result<Envelope, String> {
    let jws: Flattened = serde_json::from_slice(bytes).map_err(|e| format!("JWS envelope: {e}"))?;
    let decode = |what: &str, s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|e| format!("JWS {what}: {e}"));
    let protected_bytes = decode("protected header", &jws.protected)?;
    let payload = decode("payload", &jws.payload)?;
    let signature = decode("signature", &jws.signature)?;
    let protected: BTreeMap<String, Value> =
        serde_json::from_slice(&protected_bytes).map_err(|e| format!("JWS protected header: {e}"))?;

    let text = |key: &str| protected.get(key).and_then(Value::as_str);
    let algorithm = match text("alg") {
        Some("PS256") => Algorithm::Ps256,
        Some("PS384") => Algorithm::Ps384,
        Some("PS512") => Algorithm::Ps512,
        Some("ES256") => Algorithm::Es256,
        Some("ES384") => Algorithm::Es384,
        Some("ES512") => Algorithm::Es512,
        other => return Err(format!("JWS alg {other:?} is not one of PS256/384/512, ES256/384/512")),
    };
    let critical: Vec<String> = match protected.get("crit") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or("JWS crit holds a non-string"))
            .collect::<Result<_, _>>()?,
        _ => return Err("JWS crit is missing or empty".into()),
    };
    let known: Vec<&str> = ["alg", "crit", "cty"].iter().chain(KNOWN_CRITICAL).copied().collect();
    if let Some(unknown) = protected.keys().find(|k| !known.contains(&k.as_str()) && critical.contains(k)) {
        return Err(format!("unknown critical header {unknown:?}"));
    }
    if text("cty") != Some(PAYLOAD_CONTENT_TYPE) {
        return Err(format!("JWS cty {:?} is not {PAYLOAD_CONTENT_TYPE}", text("cty")));
    }
    let scheme = Scheme::parse(text("io.cncf.notary.signingScheme"))?;
    let time = |key: &str| -> Result<Option<i64>, String> {
        match text(key) {
            None => Ok(None),
            Some(t) => {
                t.parse::<jiff::Timestamp>().map(|ts| Some(ts.as_second())).map_err(|e| format!("JWS {key} {t:?}: {e}"))
            }
        }
    };
    let x5c = match jws.header.get("x5c") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_CERTS => items
            .iter()
            .map(|c| {
                let s = c.as_str().ok_or("JWS x5c holds a non-string")?;
                STANDARD.decode(s).map_err(|e| format!("JWS x5c: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?,
        _ => return Err("JWS header x5c (the certificate chain) is missing or too long".into()),
    };
    let envelope = Envelope {
        algorithm,
        signing_input: format!("{}.{}", jws.protected, jws.payload).into_bytes(),
        signature,
        payload,
        scheme,
        signing_time: time("io.cncf.notary.signingTime")?,
        authentic_signing_time: time("io.cncf.notary.authenticSigningTime")?,
        expiry: time("io.cncf.notary.expiry")?,
        critical,
        certificates: x5c,
        timestamp: match jws.header.get(TIMESTAMP) {
            None => None,
            Some(Value::String(token)) => Some(STANDARD.decode(token).map_err(|e| format!("JWS {TIMESTAMP}: {e}"))?),
            Some(_) => return Err(format!("JWS {TIMESTAMP} is not a base64 string")),
        },
    };
    envelope.check_critical()?;
    Ok(envelope)
}
