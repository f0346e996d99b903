//! The distribution API reads: manifests, referrers, tag pages and blobs, each body read with a cap
//! ([`super::http`]) and each digest checked here, never taken from the registry.

use futures::{StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::http::{expect_success, read_capped};
use super::{
    ACCEPTED_MANIFESTS, BlobStream, Error, MAX_MANIFEST_BYTES, MAX_TAG_PAGE_BYTES, Registry, Repository, sha256_digest,
    verify_digest,
};

impl Registry {
    /// The manifest `repo@digest`, its bytes checked against the digest.
    pub async fn manifest(&self, repo: &Repository, digest: &str) -> Result<Vec<u8>, Error> {
        let what = format!("manifest {repo}@{digest}");
        let bytes = self
            .bounded(&repo.registry, async {
                let path = format!("manifests/{digest}");
                let response = self.transport.send(Method::GET, repo, &path, ACCEPTED_MANIFESTS, None).await?;
                let response = expect_success(response, &repo.registry, &what).await?;
                read_capped(response, MAX_MANIFEST_BYTES, &what, &repo.registry).await
            })
            .await?;
        verify_digest(&what, digest, &bytes)?;
        Ok(bytes)
    }

    /// The manifest a tag points at and its digest; `None` when the tag does not exist.
    pub async fn manifest_for_tag(
        &self,
        repo: &Repository,
        tag: &str,
        accept: &[&str],
    ) -> Result<Option<(Vec<u8>, String)>, Error> {
        let what = format!("manifest {repo}:{tag}");
        let fetched = self
            .bounded(&repo.registry, async {
                let response =
                    self.transport.send(Method::GET, repo, &format!("manifests/{tag}"), accept, None).await?;
                let stated = content_digest(&response);
                let response = expect_success(response, &repo.registry, &what).await?;
                Ok((read_capped(response, MAX_MANIFEST_BYTES, &what, &repo.registry).await?, stated))
            })
            .await;
        let (bytes, stated) = match fetched {
            Ok(found) => found,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        // The registry's Docker-Content-Digest is not trusted: the digest is computed here.
        let computed = sha256_digest(&bytes);
        if let Some(stated) = stated
            && stated != computed
        {
            return Err(Error::DigestMismatch { what, expected: stated, actual: computed });
        }
        Ok(Some((bytes, computed)))
    }

    /// The digest a tag points at: a HEAD, or a GET and a hash when the registry states none.
    pub(super) async fn tag_digest(&self, repo: &Repository, tag: &str) -> Result<String, Error> {
        let what = format!("tag {tag} of {repo}");
        let stated = self
            .bounded(&repo.registry, async {
                let response = self
                    .transport
                    .send(Method::HEAD, repo, &format!("manifests/{tag}"), ACCEPTED_MANIFESTS, None)
                    .await?;
                let stated = content_digest(&response);
                expect_success(response, &repo.registry, &what).await?;
                Ok(stated)
            })
            .await?;
        if let Some(digest) = stated {
            return Ok(digest);
        }
        let fetched = self.manifest_for_tag(repo, tag, ACCEPTED_MANIFESTS).await?;
        fetched.map(|(_, digest)| digest).ok_or(Error::NotFound { what })
    }

    /// One page of the tag list after `last`; tags that are not valid tag names are dropped (they
    /// would otherwise reach status and further requests).
    pub(super) async fn tag_page(
        &self,
        repo: &Repository,
        page: usize,
        last: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let what = format!("tag list of {repo}");
        let path = match last {
            Some(last) => format!("tags/list?n={page}&last={last}"),
            None => format!("tags/list?n={page}"),
        };
        let bytes = self
            .bounded(&repo.registry, async {
                let response = self.transport.send(Method::GET, repo, &path, &["application/json"], None).await?;
                let response = expect_success(response, &repo.registry, &what).await?;
                read_capped(response, MAX_TAG_PAGE_BYTES, &what, &repo.registry).await
            })
            .await?;
        let list: TagList = serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
            registry: repo.registry.clone(),
            detail: format!("{what}: {}", super::clip(&e.to_string())),
        })?;
        Ok(list.tags.unwrap_or_default().into_iter().filter(|t| is_tag(t)).collect())
    }

    /// A small blob (e.g. a config), read fully, bounded by `limit` and checked against its digest.
    pub async fn small_blob(&self, repo: &Repository, digest: &str, limit: usize) -> Result<Vec<u8>, Error> {
        let what = format!("blob {repo}@{digest}");
        let bytes = self
            .bounded(&repo.registry, async {
                let response = self.transport.send(Method::GET, repo, &format!("blobs/{digest}"), &[], None).await?;
                let response = expect_success(response, &repo.registry, &what).await?;
                read_capped(response, limit, &what, &repo.registry).await
            })
            .await?;
        verify_digest(&what, digest, &bytes)?;
        Ok(bytes)
    }

    /// Streams blob `digest` starting at `offset`; the caller hashes every byte it keeps. A Range
    /// request even from byte 0 (`bytes=0-`): the caller hashes anyway.
    pub async fn blob_stream(&self, repo: &Repository, digest: &str, offset: u64) -> Result<BlobStream, Error> {
        let what = format!("blob {repo}@{digest}");
        let response = self
            .bounded(&repo.registry, async {
                let response = self
                    .transport
                    .send(Method::GET, repo, &format!("blobs/{digest}"), &[], Some((offset, None)))
                    .await?;
                expect_success(response, &repo.registry, &what).await
            })
            .await?;
        let from_offset = response.status() == StatusCode::PARTIAL_CONTENT || offset == 0;
        let chunks = response.bytes_stream().map_err(std::io::Error::other).boxed();
        Ok(BlobStream { from_offset, chunks })
    }

    /// Streams bytes `start..=end` of blob `digest`, or `None` when the registry does not answer
    /// with exactly that range (it ignored `Range` and sent the whole blob, or another part): the
    /// caller then fetches the blob in one request. The caller hashes every byte.
    pub async fn blob_range(
        &self,
        repo: &Repository,
        digest: &str,
        start: u64,
        end: u64,
    ) -> Result<Option<BlobStream>, Error> {
        let what = format!("blob {repo}@{digest} bytes {start}-{end}");
        let response = self
            .bounded(&repo.registry, async {
                let path = format!("blobs/{digest}");
                let response = self.transport.send(Method::GET, repo, &path, &[], Some((start, Some(end)))).await?;
                expect_success(response, &repo.registry, &what).await
            })
            .await?;
        let exact = response.status() == StatusCode::PARTIAL_CONTENT
            && content_range(&response).is_some_and(|(from, to)| (from, to) == (start, end));
        if !exact {
            return Ok(None);
        }
        let chunks = response.bytes_stream().map_err(std::io::Error::other).boxed();
        Ok(Some(BlobStream { from_offset: true, chunks }))
    }

    /// Confirms with one HEAD that `repo` holds blob `digest` for these credentials. Pulls ask this
    /// before they use anything the node already has under that digest (a blob, a model, another
    /// pull's partial download): a digest alone is no proof that a tenant may read the bytes
    /// (Kubernetes decided the same for images, KEP-2535).
    pub async fn blob_exists(&self, repo: &Repository, digest: &str) -> Result<(), Error> {
        self.exists(repo, &format!("blobs/{digest}"), ACCEPT_ANY, &format!("blob {repo}@{digest}")).await
    }

    /// The same for a manifest, for a pull whose manifest bytes came from a mirror.
    pub async fn manifest_exists(&self, repo: &Repository, digest: &str) -> Result<(), Error> {
        self.exists(repo, &format!("manifests/{digest}"), ACCEPTED_MANIFESTS, &format!("manifest {repo}@{digest}"))
            .await
    }

    async fn exists(&self, repo: &Repository, path: &str, accept: &[&str], what: &str) -> Result<(), Error> {
        self.bounded(&repo.registry, async {
            let response = self.transport.send(Method::HEAD, repo, path, accept, None).await?;
            match response.status().as_u16() {
                401 | 403 => Err(Error::Unauthorized {
                    registry: repo.registry.clone(),
                    detail: format!("HEAD {what}: HTTP {}", response.status()),
                }),
                _ => expect_success(response, &repo.registry, what).await.map(drop),
            }
        })
        .await
    }
}

const ACCEPT_ANY: &[&str] = &[];

/// The `first-last` of a `Content-Range: bytes first-last/total` answer.
fn content_range(response: &reqwest::Response) -> Option<(u64, u64)> {
    let value = response.headers().get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let (first, last) = value.strip_prefix("bytes ")?.split_once('/')?.0.split_once('-')?;
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
}

/// The registry's stated digest, when it is a well-formed sha256 digest.
fn content_digest(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get("docker-content-digest")?.to_str().ok()?;
    crate::modelpack::sha256_hex(value).is_some().then(|| value.to_owned())
}

/// The OCI tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub(super) fn is_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[derive(Deserialize)]
struct TagList {
    tags: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_names() {
        for good in ["v1", "latest", "_x", "1.2.3-rc.1", &"a".repeat(128)] {
            assert!(is_tag(good), "{good}");
        }
        for bad in ["", ".v1", "-v1", "v 1", "v1\n", "a/b", "v1?x=1", "v1&last=z", &"a".repeat(129), "é"] {
            assert!(!is_tag(bad), "{bad:?}");
        }
    }
}
