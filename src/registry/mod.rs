//! OCI registry access: repository names, credentials, resolution of tags, semver ranges and digests,
//! and digest-verified manifest and blob fetches. Built on oci-client; one [`Registry`] per
//! credential set (oci-client keys stored credentials by host and never replaces them).

mod credentials;
mod inspect;
mod reference;
mod resolve;
mod semver_range;

use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

pub use credentials::{Credential, Keyring};
pub use inspect::{Inspection, inspect};
pub use resolve::{RefSpec, Resolution};
pub use semver_range::SemverRange;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
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
    #[error("registry {registry}: {detail}")]
    Protocol { registry: String, detail: String },
    #[error(transparent)]
    ModelPack(#[from] crate::modelpack::Error),
}

impl Error {
    /// Failures that retrying cannot fix without a spec change.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidReference { .. }
                | Error::InvalidSemver { .. }
                | Error::InvalidFilter { .. }
                | Error::DigestMismatch { .. }
                | Error::ModelPack(_)
        )
    }
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

    fn with_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(self.registry.clone(), self.repository.clone(), tag.to_owned())
    }

    fn with_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(self.registry.clone(), self.repository.clone(), digest.to_owned())
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
    client: Client,
    auth: RegistryAuth,
    timeout: Duration,
}

impl Registry {
    pub fn new(options: &Options, credential: Option<&Credential>) -> Result<Registry, Error> {
        let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut config = ClientConfig {
            protocol: if options.insecure { ClientProtocol::Http } else { ClientProtocol::Https },
            connect_timeout: Some(timeout.min(Duration::from_secs(10))),
            read_timeout: Some(timeout),
            user_agent: concat!("modelpack-operator/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        if let Some(pem) = &options.ca_pem {
            if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(Error::InvalidCa("no PEM certificate found".into()));
            }
            config.extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data: pem.clone() });
        }
        let client = Client::try_from(config).map_err(|e| Error::InvalidCa(e.to_string()))?;
        let auth = match credential {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Registry { client, auth, timeout })
    }

    /// Runs one registry call under the timeout and classifies its failure.
    async fn call<T>(
        &self,
        registry: &str,
        what: &str,
        fut: impl Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(Error::Timeout { registry: registry.to_owned(), after: self.timeout }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(registry, what, e)),
        }
    }

    /// The manifest `repo@digest`, its bytes checked against the digest.
    pub async fn manifest(&self, repo: &Repository, digest: &str) -> Result<Vec<u8>, Error> {
        let reference = repo.with_digest(digest);
        let what = format!("manifest {repo}@{digest}");
        let (bytes, _) = self
            .call(&repo.registry, &what, self.client.pull_manifest_raw(&reference, &self.auth, ACCEPTED_MANIFESTS))
            .await?;
        verify_digest(&what, digest, &bytes)?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::TooLarge { what, limit: MAX_MANIFEST_BYTES });
        }
        Ok(bytes.to_vec())
    }

    /// The manifest a tag points at and its digest; `None` when the tag does not exist.
    pub async fn manifest_for_tag(
        &self,
        repo: &Repository,
        tag: &str,
        accept: &[&str],
    ) -> Result<Option<(Vec<u8>, String)>, Error> {
        let reference = repo.with_tag(tag);
        let what = format!("manifest {repo}:{tag}");
        let fetched =
            self.call(&repo.registry, &what, self.client.pull_manifest_raw(&reference, &self.auth, accept)).await;
        let (bytes, digest) = match fetched {
            Ok(found) => found,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::TooLarge { what, limit: MAX_MANIFEST_BYTES });
        }
        // The registry's Docker-Content-Digest is not trusted: the digest is computed here.
        let computed = sha256_digest(&bytes);
        if !digest.is_empty() && digest.starts_with("sha256:") && digest != computed {
            return Err(Error::DigestMismatch { what, expected: digest, actual: computed });
        }
        Ok(Some((bytes.to_vec(), computed)))
    }

    /// Manifests that refer to `repo@digest` (their `subject`), through the referrers API or, where
    /// the registry lacks it, the `sha256-<hex>` tag schema. Unfiltered: legacy referrers carry their
    /// type only in their config media type.
    pub async fn referrers(&self, repo: &Repository, digest: &str) -> Result<Vec<Referrer>, Error> {
        let reference = repo.with_digest(digest);
        let what = format!("referrers of {repo}@{digest}");
        self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth).await;
        let index = self.call(&repo.registry, &what, self.client.pull_referrers(&reference, None)).await?;
        Ok(index
            .manifests
            .into_iter()
            .map(|m| Referrer { digest: m.digest, media_type: m.media_type, artifact_type: m.artifact_type })
            .collect())
    }

    /// A small blob (e.g. a config), read fully, bounded by `limit` and checked against its digest.
    pub async fn small_blob(&self, repo: &Repository, digest: &str, limit: usize) -> Result<Vec<u8>, Error> {
        use futures::StreamExt;
        let reference = repo.with_digest(digest);
        let what = format!("blob {repo}@{digest}");
        self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth).await;
        let mut stream =
            self.call(&repo.registry, &what, self.client.pull_blob_stream(&reference, digest)).await?.stream;
        let mut out = Vec::new();
        while let Some(chunk) = tokio::time::timeout(self.timeout, stream.next())
            .await
            .map_err(|_| Error::Timeout { registry: repo.registry.clone(), after: self.timeout })?
        {
            let chunk =
                chunk.map_err(|e| Error::Unavailable { registry: repo.registry.clone(), detail: e.to_string() })?;
            if out.len() + chunk.len() > limit {
                return Err(Error::TooLarge { what, limit });
            }
            out.extend_from_slice(&chunk);
        }
        verify_digest(&what, digest, &out)?;
        Ok(out)
    }
}

/// A manifest that refers to another through its `subject`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
}

/// A blob's bytes as they arrive.
pub struct BlobStream {
    /// True when the registry honoured the requested offset; false when it sent the whole blob.
    pub from_offset: bool,
    pub chunks: futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
}

impl Registry {
    /// Streams blob `digest` starting at `offset`; the caller hashes every byte it keeps.
    pub async fn blob_stream(&self, repo: &Repository, digest: &str, offset: u64) -> Result<BlobStream, Error> {
        let reference = repo.with_digest(digest);
        let what = format!("blob {repo}@{digest}");
        self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth).await;
        // A Range request even from byte 0: oci-client hashes only whole (200) responses, and the
        // caller must hash anyway (a resumed blob is verified from its first byte), so asking for
        // `bytes=0-` keeps a blob from being hashed twice (about a core-second per GiB).
        let response = self
            .call(&repo.registry, &what, self.client.pull_blob_stream_partial(&reference, digest, offset, None))
            .await?;
        Ok(match response {
            oci_client::client::BlobResponse::Partial(s) => BlobStream { from_offset: true, chunks: s.stream },
            oci_client::client::BlobResponse::Full(s) => BlobStream { from_offset: offset == 0, chunks: s.stream },
        })
    }

    /// Confirms with one HEAD that `repo` holds blob `digest` for these credentials. Pulls ask this
    /// before they use anything the node already has under that digest (a blob, a model, another
    /// pull's partial download): a digest alone is no proof that a tenant may read the bytes
    /// (Kubernetes decided the same for images, KEP-2535).
    pub async fn blob_exists(&self, repo: &Repository, digest: &str) -> Result<(), Error> {
        let reference = repo.with_digest(digest);
        let what = format!("blob {repo}@{digest}");
        self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth).await;
        let found = tokio::time::timeout(self.timeout, self.client.blob_exists(&reference, digest))
            .await
            .map_err(|_| Error::Timeout { registry: repo.registry.clone(), after: self.timeout })?;
        match found {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotFound { what }),
            Err(OciDistributionError::RequestError(e)) if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) => {
                Err(Error::Unauthorized { registry: repo.registry.clone(), detail: format!("HEAD {what}: {e}") })
            }
            Err(e) => Err(classify(&repo.registry, &what, e)),
        }
    }

    /// The per-request timeout, for callers that read streams themselves.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// What a manifest fetch accepts: ModelPacks are OCI image manifests; indexes and Docker manifests
/// are accepted only so that they can be reported as "not a ModelPack".
const ACCEPTED_MANIFESTS: &[&str] = &[
    crate::modelpack::OCI_MANIFEST,
    crate::modelpack::OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Manifests over 4 MiB are refused by common registries; anything bigger here is hostile.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

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

fn classify(registry: &str, what: &str, e: OciDistributionError) -> Error {
    let unauthorized = |detail: String| Error::Unauthorized { registry: registry.to_owned(), detail };
    let unavailable = |detail: String| Error::Unavailable { registry: registry.to_owned(), detail };
    match e {
        OciDistributionError::UnauthorizedError { .. } => unauthorized("401 Unauthorized".into()),
        OciDistributionError::AuthenticationFailure(detail) => unauthorized(detail),
        OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound { what: what.to_owned() },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = envelope.to_string();
            if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                unauthorized(detail)
            } else if codes.iter().any(|c| {
                matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown)
            }) {
                Error::NotFound { what: what.to_owned() }
            } else {
                Error::Protocol { registry: registry.to_owned(), detail }
            }
        }
        OciDistributionError::ServerError { code, message, .. } => match code {
            401 | 403 => unauthorized(format!("HTTP {code}")),
            404 => Error::NotFound { what: what.to_owned() },
            _ => unavailable(format!("HTTP {code}: {}", message.chars().take(200).collect::<String>())),
        },
        OciDistributionError::RequestError(e) => {
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail = format!("{detail}: {s}");
                source = s.source();
            }
            unavailable(detail)
        }
        other => Error::Protocol { registry: registry.to_owned(), detail: other.to_string() },
    }
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
    fn digests_are_checked() {
        let d = sha256_digest(b"abc");
        assert!(verify_digest("x", &d, b"abc").is_ok());
        assert!(matches!(verify_digest("x", &d, b"abd"), Err(Error::DigestMismatch { .. })));
        assert!(matches!(verify_digest("x", "sha512:00", b"abc"), Err(Error::InvalidReference { .. })));
    }
}
