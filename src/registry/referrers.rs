//! The referrers of a digest: through the referrers API (its pages followed, filtered by artifact
//! type where the registry can) or, where the registry lacks it (a 404), the `sha256-<hex>` tag
//! schema's one index.

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::http::{expect_success, read_capped};
use super::{Error, MAX_MANIFEST_BYTES, Referrer, Registry, Repository};

/// Most pages of one referrers listing followed (`Link: <…>; rel="next"`), each at most
/// [`MAX_MANIFEST_BYTES`]; the whole listing also runs under the registry timeout.
pub const MAX_REFERRER_PAGES: usize = 64;

/// Referrers of one artifact type, and whether the listing was cut short.
#[derive(Debug, Default)]
pub struct TypedReferrers {
    /// Entries of the type, in listing order, then entries that state no type at all (a tag-schema
    /// index written by an old client), each list at most the `limit` asked for.
    pub referrers: Vec<Referrer>,
    /// A page past [`MAX_REFERRER_PAGES`] or the limit was not read: an entry of the type may be
    /// there.
    pub incomplete: bool,
}

/// One page: its entries and the query of the next page, if any.
struct Page {
    entries: Vec<Referrer>,
    next: Option<String>,
}

impl Registry {
    /// Manifests that refer to `repo@digest` (their `subject`), through the referrers API or the
    /// tag schema. Unfiltered (legacy referrers carry their type only in their config media type);
    /// one page (at most 4 MiB) is read: what policies and `inspect` show.
    pub async fn referrers(&self, repo: &Repository, digest: &str) -> Result<Vec<Referrer>, Error> {
        let what = format!("referrers of {repo}@{digest}");
        match self.bounded(&repo.registry, self.referrers_page(repo, digest, None, &what)).await? {
            Some(page) => Ok(page.entries),
            None => self.referrers_by_tag(repo, digest, &what).await,
        }
    }

    /// The referrers of `repo@digest` of `artifact_type`: asked with `?artifactType=` (a registry
    /// that applies the filter says so in `OCI-Filters-Applied`; the type is checked here either
    /// way), every page followed up to [`MAX_REFERRER_PAGES`], at most `limit` kept of the type and
    /// `limit` of no stated type. Entries of other types are dropped as they are read: no number of
    /// them (10,000 SBOMs) uses up the limit or hides an entry of the type.
    pub async fn referrers_of_type(
        &self,
        repo: &Repository,
        digest: &str,
        artifact_type: &str,
        limit: usize,
    ) -> Result<TypedReferrers, Error> {
        let what = format!("referrers of {repo}@{digest}");
        let mut found = TypedReferrers::default();
        let mut untyped = Vec::new();
        let mut keep = |entries: Vec<Referrer>, found: &mut TypedReferrers| {
            for entry in entries {
                match entry.artifact_type.as_deref() {
                    Some(t) if t == artifact_type && found.referrers.len() < limit => found.referrers.push(entry),
                    Some(t) if t == artifact_type => found.incomplete = true,
                    None if untyped.len() < limit => untyped.push(entry),
                    None => found.incomplete = true,
                    Some(_) => {}
                }
            }
        };
        let listing = async {
            let mut query = Some(format!("artifactType={}", encode(artifact_type)));
            for _ in 0..MAX_REFERRER_PAGES {
                let Some(asked) = query.take() else { return Ok(true) };
                match self.referrers_page(repo, digest, Some(&asked), &what).await? {
                    Some(page) => {
                        keep(page.entries, &mut found);
                        query = page.next.filter(|next| *next != asked);
                    }
                    None => {
                        keep(self.referrers_by_tag(repo, digest, &what).await?, &mut found);
                        return Ok(true);
                    }
                }
            }
            Ok::<_, Error>(query.is_none())
        };
        let complete = self.bounded(&repo.registry, listing).await?;
        found.incomplete |= !complete;
        found.referrers.extend(untyped);
        Ok(found)
    }

    /// One page of the referrers API (`query` after the `?`); `None` when the registry lacks the
    /// API (a 404).
    async fn referrers_page(
        &self,
        repo: &Repository,
        digest: &str,
        query: Option<&str>,
        what: &str,
    ) -> Result<Option<Page>, Error> {
        let accept = [crate::modelpack::OCI_INDEX];
        let path = match query {
            Some(query) => format!("referrers/{digest}?{query}"),
            None => format!("referrers/{digest}"),
        };
        let response = self.transport.send(Method::GET, repo, &path, &accept, None).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = expect_success(response, &repo.registry, what).await?;
        let own_path = format!("/v2/{}/referrers/{digest}", repo.repository);
        let next = next_page(&response, &own_path).map_err(|detail| Error::Protocol {
            registry: repo.registry.clone(),
            detail: format!("{what}: {detail}"),
        })?;
        let bytes = read_capped(response, MAX_MANIFEST_BYTES, what, &repo.registry).await?;
        Ok(Some(Page { entries: entries(&bytes, repo, what)?, next }))
    }

    /// The tag schema: the image index tagged `sha256-<hex>`, no entries when there is none.
    async fn referrers_by_tag(&self, repo: &Repository, digest: &str, what: &str) -> Result<Vec<Referrer>, Error> {
        let accept = [crate::modelpack::OCI_INDEX];
        match self.manifest_for_tag(repo, &digest.replace(':', "-"), &accept).await? {
            Some((bytes, _)) => entries(&bytes, repo, what),
            None => Ok(Vec::new()),
        }
    }
}

/// The query of the page a `Link: <…>; rel="next"` header names, which must be this listing's
/// own path on the same origin (a registry does not send the operator elsewhere with it).
fn next_page(response: &reqwest::Response, own_path: &str) -> Result<Option<String>, String> {
    let Some(link) = response.headers().get(reqwest::header::LINK) else { return Ok(None) };
    let link = link.to_str().map_err(|_| "its Link header is not text".to_owned())?;
    let Some(target) = link_next(link) else { return Ok(None) };
    let url = response.url().join(target).map_err(|e| format!("its next-page link is not a URL ({e})"))?;
    if url.origin() != response.url().origin() || url.path() != own_path {
        return Err(format!("its next-page link leaves the listing ({})", super::clip(url.as_str())));
    }
    Ok(Some(url.query().unwrap_or_default().to_owned()))
}

/// The target of the `rel="next"` link of a `Link` value (RFC 8288).
fn link_next(value: &str) -> Option<&str> {
    value.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        let next = params.split(';').any(|p| {
            let p = p.trim();
            p.strip_prefix("rel=")
                .is_some_and(|rel| rel.trim_matches('"').split_whitespace().any(|r| r.eq_ignore_ascii_case("next")))
        });
        next.then_some(target)
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `/`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn entries(bytes: &[u8], repo: &Repository, what: &str) -> Result<Vec<Referrer>, Error> {
    let index: Index = serde_json::from_slice(bytes).map_err(|e| Error::Protocol {
        registry: repo.registry.clone(),
        detail: format!("{what}: not an image index ({})", super::clip(&e.to_string())),
    })?;
    Ok(index
        .manifests
        .into_iter()
        .map(|m| Referrer {
            digest: m.digest,
            media_type: m.media_type,
            artifact_type: m.artifact_type,
            annotations: m.annotations,
        })
        .collect())
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        let next = "</v2/a/referrers/sha256:x?n=2&last=b>; rel=\"next\"";
        assert_eq!(link_next(next), Some("/v2/a/referrers/sha256:x?n=2&last=b"));
        assert_eq!(link_next("<https://r/v2/a?x>; rel=next"), Some("https://r/v2/a?x"));
        assert_eq!(link_next("<a>; rel=\"prev\", <b>; rel=\"next\""), Some("b"));
        assert_eq!(link_next("<a>; rel=\"prev next\""), Some("a"));
        assert_eq!(link_next("<a>; rel=\"prev\""), None);
        assert_eq!(link_next("a; rel=next"), None);
        assert_eq!(link_next(""), None);
    }

    #[test]
    fn artifact_types_are_encoded_for_a_query() {
        assert_eq!(encode("application/vnd.cncf.notary.signature"), "application/vnd.cncf.notary.signature");
        assert_eq!(encode("application/spdx+json"), "application/spdx%2Bjson");
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
