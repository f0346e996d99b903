//! A Sigstore `trusted_root.json` (protobuf-specs `dev.sigstore.trustroot.v1.TrustedRoot`, proto3
//! JSON): the Fulcio CAs, Rekor logs, CT logs and timestamp authorities a keyless verification
//! trusts, each with the window it is trusted in. It comes from the user (a Secret, a file), never
//! from TUF: verification is offline by construction.

use serde::Deserialize;
use x509_cert::der::Decode;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::{Base64, Cert};
use crate::verify::PublicKey;

/// The media type of the only version of the format.
pub const TRUSTED_ROOT_V01: &str = "application/vnd.dev.sigstore.trustedroot+json;version=0.1";
/// Bounds a trusted root must stay under (the public good instance lists a handful of each).
const MAX_BYTES: usize = 1 << 20;
const MAX_ENTRIES: usize = 64;
const MAX_CHAIN: usize = 10;

/// Why a trusted root is unusable: one line naming the entry and field.
#[derive(Debug, thiserror::Error)]
#[error("trusted root: {0}")]
pub struct Error(String);

/// A time window in unix seconds; an absent end is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: Option<i64>,
}

impl Window {
    pub fn contains(&self, at: i64) -> bool {
        self.start <= at && self.end.is_none_or(|end| at <= end)
    }
}

/// A transparency log (Rekor or CT): its key, the key's id (SHA-256 of the key's DER) and window.
#[derive(Clone, Debug)]
pub struct Log {
    pub base_url: String,
    pub id: Vec<u8>,
    pub key: PublicKey,
    pub window: Window,
}

/// A certificate authority (Fulcio) or timestamp authority: its chain as listed (issuing
/// certificate first, root last) and window.
#[derive(Clone, Debug)]
pub struct Authority {
    pub uri: String,
    pub chain: Vec<Cert>,
    pub window: Window,
}

impl Authority {
    /// The self-signed root ending the chain.
    pub fn root(&self) -> &Cert {
        // `parse` refuses an empty chain.
        &self.chain[self.chain.len() - 1]
    }
}

#[derive(Clone, Debug)]
pub struct TrustedRoot {
    pub tlogs: Vec<Log>,
    pub ctlogs: Vec<Log>,
    pub certificate_authorities: Vec<Authority>,
    pub timestamp_authorities: Vec<Authority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoot {
    media_type: String,
    #[serde(default)]
    tlogs: Vec<RawLog>,
    #[serde(default)]
    ctlogs: Vec<RawLog>,
    #[serde(default)]
    certificate_authorities: Vec<RawAuthority>,
    #[serde(default)]
    timestamp_authorities: Vec<RawAuthority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    #[serde(default)]
    base_url: String,
    public_key: RawKey,
    log_id: RawLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKey {
    raw_bytes: Base64,
    valid_for: Option<RawWindow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: Base64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAuthority {
    #[serde(default)]
    uri: String,
    cert_chain: RawChain,
    valid_for: Option<RawWindow>,
}

#[derive(Deserialize)]
struct RawChain {
    #[serde(default)]
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCert {
    raw_bytes: Base64,
}

#[derive(Deserialize)]
struct RawWindow {
    start: Option<String>,
    end: Option<String>,
}

fn window(raw: Option<&RawWindow>, what: &str) -> Result<Window, Error> {
    let time = |t: &str| {
        t.parse::<jiff::Timestamp>()
            .map(|t| t.as_second())
            .map_err(|e| Error(format!("{what}: validFor time {t:?}: {e}")))
    };
    let Some(raw) = raw else { return Err(Error(format!("{what} has no validFor"))) };
    let start = raw.start.as_deref().ok_or_else(|| Error(format!("{what}: validFor has no start")))?;
    Ok(Window { start: time(start)?, end: raw.end.as_deref().map(time).transpose()? })
}

fn log(raw: &RawLog, what: &str) -> Result<Log, Error> {
    let spki = SubjectPublicKeyInfoOwned::from_der(&raw.public_key.raw_bytes.0)
        .map_err(|e| Error(format!("{what}: publicKey.rawBytes: {e}")))?;
    let key = PublicKey::from_spki(&spki).map_err(|e| Error(format!("{what}: publicKey: {e}")))?;
    Ok(Log {
        base_url: raw.base_url.clone(),
        id: raw.log_id.key_id.0.clone(),
        key,
        window: window(raw.public_key.valid_for.as_ref(), &format!("{what}.publicKey"))?,
    })
}

fn authority(raw: &RawAuthority, what: &str) -> Result<Authority, Error> {
    let certs = &raw.cert_chain.certificates;
    if certs.is_empty() || certs.len() > MAX_CHAIN {
        return Err(Error(format!("{what}: certChain lists {} certificates (1 to {MAX_CHAIN})", certs.len())));
    }
    let chain = certs
        .iter()
        .enumerate()
        .map(|(i, c)| Cert::from_der(&c.raw_bytes.0).map_err(|e| Error(format!("{what}.certChain[{i}]: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Authority { uri: raw.uri.clone(), chain, window: window(raw.valid_for.as_ref(), what)? })
}

impl TrustedRoot {
    pub fn parse(bytes: &[u8]) -> Result<TrustedRoot, Error> {
        if bytes.len() > MAX_BYTES {
            return Err(Error(format!("{} bytes, more than {MAX_BYTES}", bytes.len())));
        }
        let raw: RawRoot = serde_json::from_slice(bytes).map_err(|e| Error(e.to_string()))?;
        if raw.media_type != TRUSTED_ROOT_V01 {
            return Err(Error(format!("mediaType {:?} is not {TRUSTED_ROOT_V01}", raw.media_type)));
        }
        let lists = [
            ("tlogs", raw.tlogs.len()),
            ("ctlogs", raw.ctlogs.len()),
            ("certificateAuthorities", raw.certificate_authorities.len()),
            ("timestampAuthorities", raw.timestamp_authorities.len()),
        ];
        for (field, n) in lists {
            if n > MAX_ENTRIES {
                return Err(Error(format!("{field} lists {n} entries, more than {MAX_ENTRIES}")));
            }
        }
        let logs = |list: &[RawLog], field: &str| {
            list.iter().enumerate().map(|(i, l)| log(l, &format!("{field}[{i}]"))).collect::<Result<Vec<_>, _>>()
        };
        let authorities = |list: &[RawAuthority], field: &str| {
            list.iter().enumerate().map(|(i, a)| authority(a, &format!("{field}[{i}]"))).collect::<Result<Vec<_>, _>>()
        };
        let root = TrustedRoot {
            tlogs: logs(&raw.tlogs, "tlogs")?,
            ctlogs: logs(&raw.ctlogs, "ctlogs")?,
            certificate_authorities: authorities(&raw.certificate_authorities, "certificateAuthorities")?,
            timestamp_authorities: authorities(&raw.timestamp_authorities, "timestampAuthorities")?,
        };
        if root.certificate_authorities.is_empty() {
            return Err(Error("lists no certificateAuthorities: no signing certificate could be trusted".into()));
        }
        Ok(root)
    }

    /// The Rekor log whose key id is `id`.
    pub fn tlog(&self, id: &[u8]) -> Option<&Log> {
        self.tlogs.iter().find(|l| l.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by sigstore-go's encoder (e2e/tools/sigstoretest) for one run.
    const ROOT: &[u8] = include_bytes!("testdata/trusted_root.json");

    #[test]
    fn a_root_written_by_sigstore_go_parses_with_its_windows() {
        let root = TrustedRoot::parse(ROOT).unwrap();
        assert_eq!(root.tlogs.len(), 1);
        assert_eq!(root.certificate_authorities[0].chain.len(), 2);
        assert_eq!(root.timestamp_authorities[0].chain.len(), 3);
        let log = &root.tlogs[0];
        assert!(root.tlog(&log.id).is_some() && root.tlog(b"other").is_none());
        assert!(log.window.contains(log.window.start) && !log.window.contains(log.window.start - 1));
        assert_eq!(log.window.end, None);
    }

    #[test]
    fn the_public_good_root_parses() {
        // The Sigstore public-good instance's root as sigstore/sigstore v1.10.3 embeds it.
        let root = TrustedRoot::parse(include_bytes!("testdata/public_good_trusted_root.json")).unwrap();
        assert!(!root.tlogs.is_empty() && !root.ctlogs.is_empty() && !root.certificate_authorities.is_empty());
        assert!(root.certificate_authorities.iter().any(|ca| ca.window.end.is_none()), "the current Fulcio CA");
    }

    #[test]
    fn broken_roots_are_refused_with_the_entry_named() {
        let text = std::str::from_utf8(ROOT).unwrap();
        let cases = [
            ("not json", "expected".to_owned()),
            ("{}", "missing field `mediaType`".to_owned()),
            (&text.replace("version=0.1", "version=9") as &str, "mediaType".to_owned()),
            (
                &text.replacen("\"rawBytes\":\"MI", "\"rawBytes\":\"AA", 1),
                "certificateAuthorities[0].certChain[0]".to_owned(),
            ),
            (&text.replacen("\"start\":\"", "\"start\":\"x", 1), "validFor time".to_owned()),
        ];
        for (doc, expect) in cases {
            let err = TrustedRoot::parse(doc.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(&expect), "{err} should name {expect}");
        }
    }
}
