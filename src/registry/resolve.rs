//! Resolving a ref (tag, semver range or digest) to a manifest digest.

use regex::Regex;

use super::semver_range::SemverRange;
use super::{Error, Registry, Repository};

/// Which version of a repository to use.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RefSpec {
    Tag(String),
    Semver { range: String, filter: Option<String> },
    Digest(String),
}

impl RefSpec {
    /// One line for status and logs: `tag latest`, `semver ^1.2`, `digest sha256:…`.
    pub fn describe(&self) -> String {
        match self {
            RefSpec::Tag(t) => format!("tag {t}"),
            RefSpec::Semver { range, filter: None } => format!("semver {range}"),
            RefSpec::Semver { range, filter: Some(f) } => format!("semver {range} (filter {f})"),
            RefSpec::Digest(d) => format!("digest {d}"),
        }
    }
}

/// Where a ref points now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub digest: String,
    /// The tag it was found under (none for digest refs).
    pub tag: Option<String>,
}

/// Page size asked of registries; they may return fewer (and say so with a `Link` header).
const TAGS_PAGE: usize = 1000;
/// A repository with more tags than this is refused rather than listed forever.
const MAX_TAGS: usize = 100_000;

impl Registry {
    pub async fn resolve(&self, repo: &Repository, spec: &RefSpec) -> Result<Resolution, Error> {
        match spec {
            RefSpec::Tag(tag) => Ok(Resolution { digest: self.tag_digest(repo, tag).await?, tag: Some(tag.clone()) }),
            RefSpec::Digest(digest) => {
                // The pin must exist and hash to itself: fetch and check it.
                self.manifest(repo, digest).await?;
                Ok(Resolution { digest: digest.clone(), tag: None })
            }
            RefSpec::Semver { range, filter } => {
                let range = SemverRange::parse(range)?;
                let filter = filter
                    .as_deref()
                    .map(|f| {
                        Regex::new(f).map_err(|e| Error::InvalidFilter { filter: f.to_owned(), reason: e.to_string() })
                    })
                    .transpose()?;
                let tags = self.tags(repo).await?;
                let candidates =
                    tags.iter().map(String::as_str).filter(|t| filter.as_ref().is_none_or(|f| f.is_match(t)));
                let tag = range.best(candidates).ok_or_else(|| Error::NoMatchingTag {
                    repository: repo.to_string(),
                    range: range.as_str().to_owned(),
                    considered: tags.len(),
                })?;
                Ok(Resolution { digest: self.tag_digest(repo, tag).await?, tag: Some(tag.to_owned()) })
            }
        }
    }

    /// Every tag of the repository, following pagination: each page continues after the last tag of
    /// the previous one (the `last` parameter that registries' `Link` headers carry), until a page
    /// adds nothing new.
    pub async fn tags(&self, repo: &Repository) -> Result<Vec<String>, Error> {
        let what = format!("tag list of {repo}");
        let mut all: Vec<String> = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = self.tag_page(repo, TAGS_PAGE, last.as_deref()).await?;
            let new_last = page.last().cloned();
            if page.is_empty() || new_last == last {
                break;
            }
            all.extend(page);
            if all.len() > MAX_TAGS {
                return Err(Error::TooLarge { what, limit: MAX_TAGS });
            }
            last = new_last;
        }
        all.sort();
        all.dedup();
        Ok(all)
    }
}
