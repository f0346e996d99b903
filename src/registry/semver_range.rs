//! Semver ranges as Flux and Helm users write them (`>=1.2.0 <2.0.0`, `^1.4`, `~1.2`, `1.x`,
//! `>=1 || <0.5`), over tags that may carry a `v` prefix or omit minor/patch (`v1`, `1.2`).

use semver::{Version, VersionReq};

use super::Error;

/// A parsed range: any alternative (`||`) may match.
#[derive(Clone, Debug)]
pub struct SemverRange {
    text: String,
    alternatives: Vec<VersionReq>,
}

impl SemverRange {
    pub fn parse(text: &str) -> Result<SemverRange, Error> {
        let invalid = |reason: String| Error::InvalidSemver { range: text.to_owned(), reason };
        let mut alternatives = Vec::new();
        for alternative in text.split("||") {
            // Masterminds/semver separates AND-ed comparators with spaces or commas; the semver
            // crate wants commas. Operators may be followed by a space (`>= 1.2`).
            let mut comparators: Vec<String> = Vec::new();
            let mut pending_operator = String::new();
            for token in alternative.split([' ', ',']).filter(|t| !t.is_empty()) {
                if token.chars().all(|c| "<>=~^!".contains(c)) {
                    pending_operator.push_str(token);
                    continue;
                }
                comparators.push(format!("{pending_operator}{}", token.trim_start_matches('v')));
                pending_operator.clear();
            }
            if comparators.is_empty() || !pending_operator.is_empty() {
                return Err(invalid("empty comparator".into()));
            }
            let req = VersionReq::parse(&comparators.join(", ")).map_err(|e| invalid(e.to_string()))?;
            alternatives.push(req);
        }
        Ok(SemverRange { text: text.to_owned(), alternatives })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, version: &Version) -> bool {
        self.alternatives.iter().any(|r| r.matches(version))
    }

    /// The tag holding the highest version in range; tags that are not versions are ignored. Among
    /// tags naming the same version (`1.2` and `v1.2.0`), the lexically greatest wins, so the
    /// choice is stable.
    pub fn best<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        tags.into_iter()
            .filter_map(|tag| Some((lenient_version(tag)?, tag)))
            .filter(|(v, _)| self.matches(v))
            .max()
            .map(|(_, tag)| tag)
    }
}

/// `v1.2.3`, `1.2.3-rc.1`, `1.2` and `1` as versions; anything else is not a version.
pub fn lenient_version(tag: &str) -> Option<Version> {
    let text = tag.strip_prefix('v').unwrap_or(tag);
    if let Ok(v) = Version::parse(text) {
        return Some(v);
    }
    let (core, rest) = match text.find(['-', '+']) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 2
        || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let padded = format!("{}{}{rest}", core, ".0".repeat(3 - parts.len()));
    Version::parse(&padded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn best(range: &str, tags: &[&str]) -> Option<String> {
        SemverRange::parse(range).unwrap().best(tags.iter().copied()).map(str::to_owned)
    }

    #[test]
    fn flux_style_ranges() {
        let tags = ["latest", "v1.0.0", "1.2.0", "v1.10.1", "2.0.0", "2.1.0-rc.1", "main", "1.9"];
        assert_eq!(best(">=1.0.0 <2.0.0", &tags).as_deref(), Some("v1.10.1"), "numeric, not lexical, order");
        assert_eq!(best(">= 1.0.0, < 2.0.0", &tags).as_deref(), Some("v1.10.1"));
        assert_eq!(best("^1.2", &tags).as_deref(), Some("v1.10.1"));
        assert_eq!(best("~1.2", &tags).as_deref(), Some("1.2.0"));
        assert_eq!(best("1.x", &tags).as_deref(), Some("v1.10.1"));
        assert_eq!(best("*", &tags).as_deref(), Some("2.0.0"), "prereleases only when asked for");
        assert_eq!(best(">=2.1.0-rc.0", &tags).as_deref(), Some("2.1.0-rc.1"));
        assert_eq!(best("<1.0.0 || >=2.0.0", &tags).as_deref(), Some("2.0.0"));
        assert_eq!(best(">=3", &tags), None);
        assert_eq!(best("<1.5 >1.8", &tags), None);
        assert_eq!(best("=1.9.0", &tags).as_deref(), Some("1.9"));
    }

    #[test]
    fn invalid_ranges_are_errors() {
        for bad in ["", "abc", ">=", "1.2.3.4.5", ">=1 ||"] {
            assert!(SemverRange::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lenient_versions() {
        assert_eq!(lenient_version("v1"), Some(Version::new(1, 0, 0)));
        assert_eq!(lenient_version("1.2"), Some(Version::new(1, 2, 0)));
        assert_eq!(lenient_version("1.2-beta").unwrap().pre.as_str(), "beta");
        for not in ["latest", "v", "1.", "1..2", "a.b.c", "sha256-abc", "1.2.3.4"] {
            assert_eq!(lenient_version(not), None, "{not}");
        }
    }
}
