//! Registry credentials from docker config JSON (`kubernetes.io/dockerconfigjson` Secrets,
//! `--docker-config` files), matched to a registry host the way the kubelet matches image pull
//! secrets: scheme ignored, `*` globs per DNS label, ports must agree, the key's path must prefix
//! the repository, and the most specific key wins.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::Deserialize;

use super::Error;

/// A username/password (or identity token) for one registry. Debug never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The credentials of one docker config document, keyed by registry pattern.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keyring {
    entries: Vec<(Pattern, Credential)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    host_labels: Vec<String>,
    port: Option<String>,
    path: String,
}

const DOCKER_HUB_ALIASES: [&str; 4] =
    ["docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"];

impl Pattern {
    fn parse(key: &str) -> Pattern {
        let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
        let (host_port, path) = without_scheme.split_once('/').unwrap_or((without_scheme, ""));
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p.to_owned())),
            _ => (host_port, None),
        };
        let host = host.to_ascii_lowercase();
        // Docker Hub's legacy key is https://index.docker.io/v1/: its path is the API version.
        let is_hub = DOCKER_HUB_ALIASES.contains(&host.as_str());
        let path = if is_hub { "" } else { path.trim_end_matches('/') };
        let host = if is_hub { "docker.io".to_owned() } else { host };
        Pattern { host_labels: host.split('.').map(str::to_owned).collect(), port, path: path.to_owned() }
    }

    fn matches(&self, host: &str, port: Option<&str>, repository: &str) -> bool {
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() != self.host_labels.len() || self.port.as_deref() != port {
            return false;
        }
        let hosts_match = self.host_labels.iter().zip(&labels).all(|(p, l)| glob_label(p, l));
        let path_matches = self.path.is_empty()
            || repository == self.path
            || repository.strip_prefix(&self.path).is_some_and(|r| r.starts_with('/'));
        hosts_match && path_matches
    }

    /// More specific patterns first: longer paths, then fewer wildcards.
    fn specificity(&self) -> (usize, usize) {
        let wildcards = self.host_labels.iter().filter(|l| l.contains('*')).count();
        (self.path.len(), usize::MAX - wildcards)
    }
}

fn glob_label(pattern: &str, label: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == label,
        Some((prefix, suffix)) => {
            label.len() >= prefix.len() + suffix.len() && label.starts_with(prefix) && label.ends_with(suffix)
        }
    }
}

impl Keyring {
    /// Parses a docker config JSON document (`{"auths": {...}}`). `source` names it in errors
    /// (e.g. `secret ml/registry-creds`); credentials never appear in errors.
    pub fn parse(json: &[u8], source: &str) -> Result<Keyring, Error> {
        let config: DockerConfig = serde_json::from_slice(json).map_err(|e| Error::Credentials {
            origin: source.to_owned(),
            reason: format!("not docker config JSON: {e}"),
        })?;
        let mut entries = Vec::new();
        for (key, entry) in config.auths {
            let credential = entry.credential().map_err(|reason| Error::Credentials {
                origin: source.to_owned(),
                reason: format!("entry {key:?}: {reason}"),
            })?;
            if let Some(credential) = credential {
                entries.push((Pattern::parse(&key), credential));
            }
        }
        Ok(Keyring { entries })
    }

    /// Merges another keyring; earlier entries win on equal specificity.
    pub fn extend(&mut self, other: Keyring) {
        self.entries.extend(other.entries);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credential for `registry` (`host[:port]`) and `repository`, if any key matches.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<&Credential> {
        let registry = registry.to_ascii_lowercase();
        let (host, port) = match registry.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
            _ => (registry.as_str(), None),
        };
        let host = if DOCKER_HUB_ALIASES.contains(&host) { "docker.io" } else { host };
        self.entries
            .iter()
            .filter(|(pattern, _)| pattern.matches(host, port, repository))
            .max_by_key(|(pattern, _)| pattern.specificity())
            .map(|(_, credential)| credential)
    }
}

impl AuthEntry {
    fn credential(&self) -> Result<Option<Credential>, String> {
        if let (Some(username), Some(password)) = (&self.username, &self.password) {
            return Ok(Some(Credential { username: username.clone(), password: password.clone() }));
        }
        if let Some(token) = &self.identity_token {
            // An identity token is exchanged as the password of the special user <token>.
            return Ok(Some(Credential { username: "<token>".into(), password: token.clone() }));
        }
        let Some(auth) = &self.auth else { return Ok(None) };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "\"auth\" is not base64".to_owned())?;
        let decoded = String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8".to_owned())?;
        let (username, password) = decoded.split_once(':').ok_or("\"auth\" is not user:password")?;
        Ok(Some(Credential { username: username.to_owned(), password: password.to_owned() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(auths: serde_json::Value) -> Keyring {
        Keyring::parse(serde_json::json!({ "auths": auths }).to_string().as_bytes(), "test").unwrap()
    }

    fn user(k: &Keyring, registry: &str, repo: &str) -> Option<String> {
        k.lookup(registry, repo).map(|c| c.username.clone())
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn kubelet_matching_rules() {
        let k = keyring(serde_json::json!({
            "registry.example.com": {"auth": b64("plain:p")},
            "https://registry.example.com/team": {"username": "team", "password": "p"},
            "registry.example.com/team/special": {"username": "special", "password": "p"},
            "*.corp.example": {"username": "glob", "password": "p"},
            "localhost:5000": {"username": "port", "password": "p"},
            "https://index.docker.io/v1/": {"username": "hub", "password": "p"},
        }));
        assert_eq!(user(&k, "registry.example.com", "other/model").as_deref(), Some("plain"));
        assert_eq!(user(&k, "registry.example.com", "team/model").as_deref(), Some("team"));
        assert_eq!(user(&k, "registry.example.com", "team/special/m").as_deref(), Some("special"));
        assert_eq!(
            user(&k, "registry.example.com", "teamster/m").as_deref(),
            Some("plain"),
            "path prefix is per segment"
        );
        assert_eq!(user(&k, "eu.corp.example", "m").as_deref(), Some("glob"));
        assert_eq!(user(&k, "a.eu.corp.example", "m"), None, "a glob matches exactly one label");
        assert_eq!(user(&k, "localhost:5000", "m").as_deref(), Some("port"));
        assert_eq!(user(&k, "localhost:5001", "m"), None, "ports must agree");
        assert_eq!(user(&k, "localhost", "m"), None);
        assert_eq!(user(&k, "registry.example.com:443", "m"), None);
        assert_eq!(user(&k, "docker.io", "library/m").as_deref(), Some("hub"));
        assert_eq!(user(&k, "index.docker.io", "library/m").as_deref(), Some("hub"));
    }

    #[test]
    fn auth_forms_and_identity_tokens() {
        let k = keyring(serde_json::json!({
            "a.example": {"auth": b64("u:p:with:colons")},
            "b.example": {"identitytoken": "tok"},
            "c.example": {},
        }));
        let a = k.lookup("a.example", "m").unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p:with:colons"));
        assert_eq!(k.lookup("b.example", "m").unwrap().username, "<token>");
        assert!(k.lookup("c.example", "m").is_none());
    }

    #[test]
    fn bad_documents_name_the_source_but_never_the_secret() {
        let err = Keyring::parse(br#"{"auths":{"a.example":{"auth":"!!!"}}}"#, "secret ns/creds").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("secret ns/creds") && msg.contains("a.example"), "{msg}");
        let err = Keyring::parse(b"not json", "file x").unwrap_err().to_string();
        assert!(err.contains("file x"), "{err}");
        let leaked = Keyring::parse(format!(r#"{{"auths":{{"a":{{"auth":"{}"}}}}}}"#, b64("secretpw")).as_bytes(), "s");
        assert!(leaked.is_err());
        assert!(!leaked.unwrap_err().to_string().contains("secretpw"));
        let c = Credential { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
