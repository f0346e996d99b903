//! OCI registry access: repository names, credentials, resolution of tags, semver ranges and digests,
//! and digest-verified manifest and blob fetches over the distribution API (our own small client on
//! reqwest: every body is read with a cap while it streams, see [`http`]); one [`Registry`] per
//! credential set.

mod address;
mod challenge;
pub mod contents;
mod credentials;
mod fetch;
mod http;
mod inspect;
mod mirror;
mod reference;
mod referrers;
mod resolve;
mod semver_range;

use std::time::Duration;

use sha2::{Digest, Sha256};

pub use credentials::{Credential, Keyring};
pub use inspect::{Inspection, MAX_CONFIG_BYTES, inspect};
pub use mirror::Mirror;
pub use referrers::{MAX_REFERRER_PAGES, TypedReferrers};
pub use resolve::{RefSpec, Resolution};
pub use semver_range::SemverRange;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid mirror {spec:?}: {reason}")]
    InvalidMirror { spec: String, reason: String },
    #[error("credentials from {origin}: {reason}")]
    Credentials { origin: String, reason: String },
    #[error("registry {registry} refused the credentials ({detail})")]
    Unauthorized { registry: String, detail: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("registry {registry} is unavailable: {detail}")]
    Unavailable { registry: String, detail: String },
    #[error("registry {registry} did not answer within {after:?}")]
    Timeout { registry: String, after: Duration },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: usize },
    #[error("no tag of {repository} matches semver range {range:?} ({considered} tags considered)")]
    NoMatchingTag { repository: String, range: String, considered: usize },
    #[error("invalid semver range {range:?}: {reason}")]
    InvalidSemver { range: String, reason: String },
    #[error("invalid semverFilter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: String },
    #[error("CA bundle: {0}")]
    InvalidCa(String),
    #[error("registry {registry} names token realm {realm:?}: {detail}")]
    TokenRealm { registry: String, realm: String, detail: String },
    #[error("registry {registry}: {detail}")]
    Protocol { registry: String, detail: String },
    /// A request would have gone to a link-local or cloud metadata address (the registry's own
    /// host, a redirect target or what a name resolved to): refused before connecting.
    #[error("registry {registry}: {detail}")]
    ForbiddenAddress { registry: String, detail: String },
    #[error(transparent)]
    ModelPack(#[from] crate::modelpack::Error),
}

/// A repository in a registry, e.g. `registry.example.com:5000` + `team/model`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository {
    /// `host[:port]` as written (Docker Hub names become `docker.io`).
    pub registry: String,
    pub repository: String,
}

impl Repository {
    /// Parses a repository name without tag or digest, applying Docker Hub's implicit
    /// `docker.io/library/` rules.
    pub fn parse(name: &str) -> Result<Repository, Error> {
        let invalid = |reason: &str| Error::InvalidReference { reference: name.to_owned(), reason: reason.to_owned() };
        if name.contains('@') {
            return Err(invalid("a repository must not contain a digest"));
        }
        // host:port can only be the first component; a colon after the last slash is a tag.
        if name.rsplit('/').next().is_some_and(|last| last.contains(':')) {
            return Err(invalid("a repository must not contain a tag"));
        }
        let parsed = reference::parse(name).map_err(|reason| invalid(&reason))?;
        Ok(Repository { registry: parsed.registry, repository: parsed.repository })
    }

    /// Parses `repo[:tag][@digest]` (what the CLI takes); a bare repository means tag `latest`.
    pub fn parse_reference(text: &str) -> Result<(Repository, RefSpec), Error> {
        let parsed =
            reference::parse(text).map_err(|reason| Error::InvalidReference { reference: text.to_owned(), reason })?;
        let spec = match (parsed.digest, parsed.tag) {
            (Some(digest), _) => RefSpec::Digest(digest.to_owned()),
            (None, Some(tag)) => RefSpec::Tag(tag.to_owned()),
            (None, None) => RefSpec::Tag("latest".to_owned()),
        };
        Ok((Repository { registry: parsed.registry, repository: parsed.repository }, spec))
    }
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// How to reach a registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// Plain HTTP.
    pub insecure: bool,
    /// PEM CA certificates trusted in addition to the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Per-request timeout (default 60s).
    pub timeout: Option<Duration>,
}

/// A client for one credential set and transport configuration; clones share connections and
/// tokens.
#[derive(Clone)]
pub struct Registry {
    transport: http::Transport,
    timeout: Duration,
}

impl Registry {
    pub fn new(options: &Options, credential: Option<&Credential>) -> Result<Registry, Error> {
        let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if let Some(pem) = &options.ca_pem
            && !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----")
        {
            return Err(Error::InvalidCa("no PEM certificate found".into()));
        }
        Ok(Registry { transport: http::Transport::new(options, credential, timeout)?, timeout })
    }

    /// Runs one registry operation, body reads included, under the timeout: a registry that
    /// drips an answer is cut off like one that does not answer.
    async fn bounded<T>(&self, registry: &str, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Timeout { registry: registry.to_owned(), after: self.timeout })?
    }

    /// The per-request timeout, for callers that read streams themselves.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A manifest that refers to another through its `subject`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// The index entry's annotations (what a policy's `referrers` variable shows).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A blob's bytes as they arrive.
pub struct BlobStream {
    /// True when the registry honoured the requested offset; false when it sent the whole blob.
    pub from_offset: bool,
    pub chunks: futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
}

/// What a manifest fetch accepts: ModelPacks are OCI image manifests; indexes and Docker manifests
/// are accepted only so that they can be reported as "not a ModelPack".
const ACCEPTED_MANIFESTS: &[&str] = &[
    crate::modelpack::OCI_MANIFEST,
    crate::modelpack::OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Manifests (and referrer indexes) over 4 MiB are refused by distribution, the reference
/// registry; a bigger answer is hostile and is cut off while it streams.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// One page of a tag list: 1000 tags of at most 128 characters fit in 4 MiB many times over (and a
/// registry that ignores the page size still fits 100,000 ordinary tags).
pub const MAX_TAG_PAGE_BYTES: usize = 4 << 20;
/// Error text from a registry in a message (and so in a Model's status) is cut to this many
/// characters.
pub const MAX_DETAIL_CHARS: usize = 300;

/// Registry-supplied text made safe for one line of status or a terminal: control characters
/// (newlines, escape sequences), bidirectional overrides ([`crate::printable`]) and runs of white space become one space, and the text is cut to
/// [`MAX_DETAIL_CHARS`] (an ellipsis says so).
pub fn clip(text: &str) -> String {
    let mut out = String::new();
    let mut words =
        text.split(|c: char| c.is_whitespace() || crate::printable::is_unprintable(c)).filter(|w| !w.is_empty());
    let mut chars = 0;
    for word in words.by_ref() {
        let separated = if out.is_empty() { 0 } else { 1 };
        if chars + separated + word.chars().count() > MAX_DETAIL_CHARS {
            let room = MAX_DETAIL_CHARS.saturating_sub(chars + separated);
            out.extend(std::iter::repeat_n(' ', separated).chain(word.chars().take(room)));
            out.push('…');
            return out;
        }
        out.extend(std::iter::repeat_n(' ', separated).chain(word.chars()));
        chars += separated + word.chars().count();
    }
    out
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn verify_digest(what: &str, expected: &str, bytes: &[u8]) -> Result<(), Error> {
    if crate::modelpack::sha256_hex(expected).is_none() {
        return Err(Error::InvalidReference {
            reference: expected.to_owned(),
            reason: "expected sha256:<64 lowercase hex>".into(),
        });
    }
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(Error::DigestMismatch { what: what.to_owned(), expected: expected.to_owned(), actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_and_docker_hub_rules() {
        let r = Repository::parse("registry.example.com:5000/team/sub/model").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("registry.example.com:5000", "team/sub/model"));
        let r = Repository::parse("model").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("docker.io", "library/model"));
        let r = Repository::parse("team/model").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("docker.io", "team/model"));
        let r = Repository::parse("localhost/model").unwrap();
        assert_eq!(r.registry, "localhost");
        assert!(Repository::parse("r.example/m:v1").is_err());
        assert!(Repository::parse("r.example/m@sha256:00").is_err());
        assert!(Repository::parse("r.example/UPPER").is_err());
        assert!(Repository::parse("").is_err());
    }

    #[test]
    fn cli_references() {
        let (r, spec) = Repository::parse_reference("127.0.0.1:5000/a/b:v2").unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:5000/a/b");
        assert_eq!(spec, RefSpec::Tag("v2".into()));
        let digest = format!("sha256:{}", "a".repeat(64));
        let (_, spec) = Repository::parse_reference(&format!("r.example/m@{digest}")).unwrap();
        assert_eq!(spec, RefSpec::Digest(digest));
        assert_eq!(Repository::parse_reference("r.example/m").unwrap().1, RefSpec::Tag("latest".into()));
    }

    #[test]
    fn registry_text_is_clipped_to_one_line() {
        assert_eq!(clip("  HTTP 500:\r\n\x1b[31mboom\t x "), "HTTP 500: [31mboom x");
        let long = clip(&"ab ".repeat(1000));
        assert_eq!(long.chars().count(), MAX_DETAIL_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(
            clip(&"é".repeat(MAX_DETAIL_CHARS)),
            "é".repeat(MAX_DETAIL_CHARS),
            "exactly the limit is kept whole"
        );
        assert_eq!(clip(""), "");
    }

    #[test]
    fn digests_are_checked() {
        let d = sha256_digest(b"abc");
        assert!(verify_digest("x", &d, b"abc").is_ok());
        assert!(matches!(verify_digest("x", &d, b"abd"), Err(Error::DigestMismatch { .. })));
        assert!(matches!(verify_digest("x", "sha512:00", b"abc"), Err(Error::InvalidReference { .. })));
    }
}
