//! Who a Fulcio certificate names: its OIDC issuer (Fulcio's extensions) and subject (the SAN), and
//! the identities a policy accepts (Flux's `matchOIDCIdentity`, cosign's `--certificate-identity`
//! flags).

use regex::{Regex, RegexBuilder};
use x509_cert::der::asn1::Utf8StringRef;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use crate::verify::sigstore::Cert;

const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
/// Fulcio's issuer extension, v2: a DER UTF8String.
const ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8");
/// The deprecated v1 form: the issuer's bytes, not DER. Read when v2 is absent, as cosign does.
const ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1");
/// Fulcio's "username" otherName SAN.
const USERNAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.7");
/// A bound on each compiled expression, so a hostile pattern cannot take unbounded memory.
const REGEX_SIZE: usize = 1 << 20;

/// Matches a value exactly or by a regular expression (unanchored, as cosign and Flux match).
#[derive(Clone, Debug)]
pub enum Matcher {
    Exact(String),
    Regexp(Regex),
}

impl Matcher {
    pub fn regexp(pattern: &str) -> Result<Matcher, String> {
        RegexBuilder::new(pattern).size_limit(REGEX_SIZE).build().map(Matcher::Regexp).map_err(|e| {
            format!(
                "regular expression {pattern:?} does not compile: {}",
                e.to_string().lines().last().unwrap_or_default()
            )
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => s == value,
            Matcher::Regexp(r) => r.is_match(value),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Exact(s) => write!(f, "{s:?}"),
            Matcher::Regexp(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

/// One accepted identity: both parts must match.
#[derive(Clone, Debug)]
pub struct Identity {
    pub issuer: Matcher,
    pub subject: Matcher,
}

/// What a certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub issuer: String,
    pub subjects: Vec<String>,
}

impl Named {
    pub fn of(cert: &Cert) -> Result<Named, String> {
        let issuer = match cert.extension::<Utf8StringRef>(ISSUER_V2)? {
            Some((s, _)) => s.as_str().to_owned(),
            None => match cert.extensions().iter().find(|e| e.extn_id == ISSUER_V1) {
                Some(e) => String::from_utf8(e.extn_value.as_bytes().to_vec())
                    .map_err(|_| "the certificate's OIDC issuer extension is not UTF-8".to_owned())?,
                None => {
                    return Err(
                        "the signing certificate has no OIDC issuer extension (not a Fulcio certificate)".into()
                    );
                }
            },
        };
        let mut subjects = Vec::new();
        if let Some((san, _)) = cert.extension::<SubjectAltName>(SUBJECT_ALT_NAME)? {
            for name in san.0 {
                match name {
                    GeneralName::Rfc822Name(s) => subjects.push(s.to_string()),
                    GeneralName::UniformResourceIdentifier(s) => subjects.push(s.to_string()),
                    GeneralName::OtherName(o) if o.type_id == USERNAME => {
                        if let Ok(s) = o.value.decode_as::<Utf8StringRef>() {
                            subjects.push(s.as_str().to_owned());
                        }
                    }
                    _ => {}
                }
            }
        }
        if subjects.is_empty() {
            return Err("the signing certificate names no subject (email, URI or username SAN)".into());
        }
        Ok(Named { issuer, subjects })
    }

    /// The first identity this certificate matches, as `subject (issuer)`.
    pub fn matching(&self, identities: &[Identity]) -> Option<String> {
        identities.iter().find_map(|id| {
            let subject = self.subjects.iter().find(|s| id.subject.matches(s))?;
            id.issuer.matches(&self.issuer).then(|| format!("{subject} ({})", self.issuer))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> Named {
        Named {
            issuer: "https://token.actions.githubusercontent.com".into(),
            subjects: vec!["https://github.com/a/b/.github/workflows/r.yml@refs/heads/main".into()],
        }
    }

    #[test]
    fn both_parts_must_match_exactly_or_by_expression() {
        let n = named();
        let exact = |i: &str, s: &str| Identity { issuer: Matcher::Exact(i.into()), subject: Matcher::Exact(s.into()) };
        let re =
            |i: &str, s: &str| Identity { issuer: Matcher::regexp(i).unwrap(), subject: Matcher::regexp(s).unwrap() };
        assert!(n.matching(&[exact(&n.issuer, &n.subjects[0])]).is_some());
        assert!(n.matching(&[exact(&n.issuer, "https://github.com/a/b")]).is_none());
        assert!(n.matching(&[exact("https://gitlab.com", &n.subjects[0])]).is_none());
        assert!(n.matching(&[re("^https://token\\.actions\\.", "^https://github\\.com/a/b/")]).is_some());
        assert!(n.matching(&[re("^https://gitlab", ".*"), re(".*", "/c/")]).is_none());
        // Any one identity may match.
        let m = n.matching(&[re("^https://gitlab", ".*"), re("actions", "workflows")]).unwrap();
        assert_eq!(m, format!("{} ({})", n.subjects[0], n.issuer));
        assert!(Matcher::regexp("(unclosed").unwrap_err().contains("(unclosed"));
        assert!(Matcher::regexp("a{1000}{1000}").is_err(), "a pattern larger than the bound");
    }
}
