//! `WWW-Authenticate` challenges and the rule for bearer-token realms, as pure functions.

/// How a registry asked to be authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    /// The Docker token flow: a token from `realm` for `service`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` value that is Basic or Bearer (with a realm).
pub(super) fn parse(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = auth_params(rest);
    let get = |key: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm: get("realm")?, service: get("service").filter(|s| !s.is_empty()) })
}

/// `key=value` and `key="quoted, \"escaped\""` pairs separated by commas (RFC 7235 auth-params).
fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            return out;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned();
        }
        out.push((key.trim().to_owned(), value));
    }
}

/// Why a token realm is refused: credentials sent to it must not travel in clear text when the
/// registry itself was reached over TLS (a hostile or tampered challenge could otherwise downgrade
/// them), and only http(s) URLs are fetched.
pub(super) fn check_realm(realm: &str, registry_over_tls: bool) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(realm).map_err(|e| format!("token realm is not a URL ({e})"))?;
    if super::address::is_forbidden_url(&url) {
        return Err("token realm is a link-local or cloud metadata address; refused".into());
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if !registry_over_tls => Ok(url),
        "http" => Err("token realm downgrades https to http; refused".into()),
        other => Err(format!("token realm has scheme {other:?}; only http(s) is fetched")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_endpoints_are_never_fetched() {
        for bad in [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "https://169.254.170.2/v2/credentials",
            "http://[fe80::1]/token",
            "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token",
            "http://METADATA.GOOGLE.INTERNAL./x",
            "http://[::ffff:169.254.169.254]/token",
            "http://[fd00:ec2::254]/latest/api/token",
            "http://100.100.100.200/latest/meta-data/",
        ] {
            assert!(check_realm(bad, false).is_err(), "{bad}");
        }
        for good in ["https://auth.docker.io/token", "http://127.0.0.1:5001/token", "https://10.0.0.5/token"] {
            assert!(check_realm(good, false).is_ok(), "{good}");
        }
    }

    #[test]
    fn challenges() {
        let bearer = |realm: &str, service: Option<&str>| {
            Some(Challenge::Bearer { realm: realm.into(), service: service.map(Into::into) })
        };
        assert_eq!(parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse("basic"), Some(Challenge::Basic));
        assert_eq!(
            parse(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#),
            bearer("https://auth.example/token", Some("registry.example"))
        );
        assert_eq!(
            parse(r#"Bearer scope="repository:a,b:pull", realm=https://a/t , service="""#),
            bearer("https://a/t", None)
        );
        assert_eq!(parse(r#"Bearer realm="https://a/\"q\"""#), bearer(r#"https://a/"q""#, None));
        assert_eq!(parse(r#"Bearer service="x""#), None, "no realm");
        assert_eq!(parse(r#"Negotiate abc"#), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse(r#"Bearer realm="unterminated"#), bearer("unterminated", None));
    }

    #[test]
    fn realms() {
        assert!(check_realm("https://auth.example/token", true).is_ok());
        assert!(check_realm("https://auth.example/token", false).is_ok());
        assert!(check_realm("http://auth.example/token", false).is_ok(), "a plain-HTTP registry, its plain realm");
        let downgrade = check_realm("http://auth.example/token", true).unwrap_err();
        assert!(downgrade.contains("downgrades https to http"), "{downgrade}");
        assert!(check_realm("HTTP://auth.example/token", true).is_err(), "scheme case does not matter");
        assert!(check_realm("file:///etc/passwd", false).is_err());
        assert!(check_realm("/token", false).is_err(), "relative realms are not followed");
    }
}
