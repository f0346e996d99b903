//! Mirrors, in the shape of containerd's `hosts.toml`: for registry X, try these hosts in order,
//! then X itself. A mirror serves the same repository paths (a pull-through cache such as Harbor's
//! proxy projects or distribution in proxy mode, or a node-local P2P engine such as Dragonfly's or
//! Spegel's) and is never trusted: every manifest and blob it sends is verified against the digest
//! asked for, and a mirror that fails or lies is passed over for the next host.

use super::Error;

/// `REGISTRY=URL`: `URL` (`http://` or `https://`, host and port, no path) mirrors `REGISTRY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The registry it mirrors, as references name it (`registry.example.com`, `host:5000`).
    pub registry: String,
    /// The mirror's `host[:port]`.
    pub host: String,
    /// Plain HTTP (`http://`).
    pub insecure: bool,
}

impl Mirror {
    pub fn parse(spec: &str) -> Result<Mirror, Error> {
        let invalid = |reason: &str| Error::InvalidMirror { spec: spec.to_owned(), reason: reason.to_owned() };
        let (registry, url) = spec.split_once('=').ok_or_else(|| invalid("expected REGISTRY=URL"))?;
        let (insecure, rest) = match url.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some(("https", rest)) => (false, rest),
            _ => return Err(invalid("the URL must start with http:// or https://")),
        };
        let host = rest.strip_suffix('/').unwrap_or(rest);
        let valid_host = |h: &str| {
            !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        };
        if !valid_host(registry) {
            return Err(invalid("the registry must be a host name, with an optional port"));
        }
        if !valid_host(host) {
            return Err(invalid("the URL must be a scheme and a host with an optional port, without a path"));
        }
        Ok(Mirror { registry: registry.to_owned(), host: host.to_owned(), insecure })
    }

    /// The mirrors of `registry`, in the order given.
    pub fn of<'a>(mirrors: &'a [Mirror], registry: &'a str) -> impl Iterator<Item = &'a Mirror> {
        mirrors.iter().filter(move |m| m.registry == registry)
    }
}

/// The spec it was parsed from, as `pull --mirror` takes it.
impl std::fmt::Display for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.insecure { "http" } else { "https" };
        write!(f, "{}={scheme}://{}", self.registry, self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_registry_and_a_host_url() {
        let m = Mirror::parse("registry.example.com=http://127.0.0.1:5001/").unwrap();
        assert_eq!(
            m,
            Mirror { registry: "registry.example.com".into(), host: "127.0.0.1:5001".into(), insecure: true }
        );
        let m = Mirror::parse("docker.io=https://mirror.gcr.io").unwrap();
        assert_eq!((m.host.as_str(), m.insecure), ("mirror.gcr.io", false));
        assert_eq!(Mirror::parse(&m.to_string()).unwrap(), m, "a Job's --mirror reads back the same");
        for bad in [
            "docker.io",
            "docker.io=mirror:5000",
            "docker.io=ftp://m",
            "=https://m",
            "docker.io=https://m/v2/x",
            "docker.io=https://",
        ] {
            let err = Mirror::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn mirrors_apply_to_their_registry_in_order() {
        let all: Vec<Mirror> =
            ["a=http://m1", "b=http://m2", "a=https://m3"].iter().map(|s| Mirror::parse(s).unwrap()).collect();
        let hosts: Vec<&str> = Mirror::of(&all, "a").map(|m| m.host.as_str()).collect();
        assert_eq!(hosts, ["m1", "m3"]);
        assert_eq!(Mirror::of(&all, "c").count(), 0);
    }
}
