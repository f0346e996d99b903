//! `registry/repository[:tag][@digest]`, parsed by hand after distribution's reference grammar and
//! Docker Hub normalisation. oci-spec's parser builds a Unicode regex whose `\w{0,127}` alone
//! costs about 80 ms and several MiB on first use — a third of a small pull's run time, paid by
//! every pull Job — and accepts non-ASCII tags, which distribution's (ASCII) `\w` does not.

const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A parsed reference; `registry` and `repository` are normalised (`docker.io`, `library/`).
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub registry: String,
    pub repository: String,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

pub fn parse(text: &str) -> Result<Parsed<'_>, String> {
    if text.is_empty() {
        return Err("empty reference".into());
    }
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(check_digest(digest)?)),
        None => (text, None),
    };
    // A colon after the last slash starts a tag; one before it belongs to host:port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(check_tag(&rest[last_slash + i + 1..])?)),
        None => (rest, None),
    };
    let (registry, path) = split_domain(name);
    if let Some(registry) = registry {
        check_domain(registry)?;
    }
    for component in path.split('/') {
        check_path_component(component)?;
    }
    let (registry, repository) = normalise(registry, path);
    if repository.len() > NAME_MAX {
        return Err(format!("repository name longer than {NAME_MAX} characters"));
    }
    Ok(Parsed { registry, repository, tag, digest })
}

/// distribution's splitDockerDomain: the first component is a host when it looks like one.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
        _ => (None, name),
    }
}

fn normalise(registry: Option<&str>, path: &str) -> (String, String) {
    let registry = match registry {
        None | Some("index.docker.io") => "docker.io",
        Some(other) => other,
    };
    let repository =
        if registry == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path.to_owned() };
    (registry.to_owned(), repository)
}

/// `label(.label)*(:port)?` with DNS-like labels.
fn check_domain(domain: &str) -> Result<(), String> {
    let invalid = || Err(format!("invalid registry host {domain:?}"));
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return invalid();
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return invalid();
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(component: &str) -> Result<(), String> {
    let invalid = || Err(format!("invalid repository path component {component:?}"));
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return invalid();
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        if !(separator == "." || separator == "_" || separator == "__" || separator.bytes().all(|b| b == b'-')) {
            return invalid();
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn check_tag(tag: &str) -> Result<&str, String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = tag.len() <= TAG_MAX
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok { Ok(tag) } else { Err(format!("invalid tag {tag:?}")) }
}

/// `algorithm:hex` with the hex length of sha256, sha384 or sha512.
fn check_digest(digest: &str) -> Result<&str, String> {
    let (algorithm, hex) = digest.split_once(':').ok_or_else(|| format!("invalid digest {digest:?}"))?;
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm {algorithm:?}")),
    };
    if hex.len() != length || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("invalid {algorithm} digest {digest:?}"));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (String, String, Option<&str>, Option<&str>) {
        let p = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (p.registry, p.repository, p.tag, p.digest)
    }

    #[test]
    fn docker_hub_and_hosts() {
        assert_eq!(ok("model"), ("docker.io".into(), "library/model".into(), None, None));
        assert_eq!(ok("team/model:v1"), ("docker.io".into(), "team/model".into(), Some("v1"), None));
        assert_eq!(ok("index.docker.io/model").1, "library/model");
        assert_eq!(ok("docker.io/team/m").0, "docker.io");
        assert_eq!(ok("localhost/m").0, "localhost");
        assert_eq!(ok("localhost:5000/a/b:1.0").0, "localhost:5000");
        assert_eq!(ok("127.0.0.1:5000/a/b").1, "a/b");
        assert_eq!(ok("reg.example/a__b/c-d/e.f_g---h").1, "a__b/c-d/e.f_g---h");
        let d = format!("sha256:{}", "a".repeat(64));
        let text = format!("r.example/m:v2@{d}");
        let (_, _, tag, digest) = ok(&text);
        assert_eq!((tag, digest), (Some("v2"), Some(d.as_str())));
    }

    #[test]
    fn what_distribution_refuses() {
        let bad_digest = format!("r.example/m@sha256:{}", "a".repeat(63));
        let long_tag = format!("r.example/m:{}", "t".repeat(129));
        let long_name = format!("r.example/{}", "a".repeat(256));
        for bad in [
            "",
            "r.example/UPPER",
            "r.example/a..b",
            "r.example/a/",
            "r.example//a",
            "r.example/-a",
            "r.example/a:",
            "r.example/a:.tag",
            "r.example/a:tägg",
            "r.example/a@sha256:xyz",
            "r.example/a@md5:00",
            "-bad.example/a",
            "bad_host.example/a",
            "r.example:port/a",
            bad_digest.as_str(),
            long_tag.as_str(),
            long_name.as_str(),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// The hand-written parser agrees with oci-spec's regex on every accepted and refused form.
    #[test]
    fn agrees_with_oci_spec() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let with_digest = format!("r.example:443/a/b@{digest}");
        let both = format!("r.example/a:t@{digest}");
        for text in [
            "model",
            "team/model:latest",
            "localhost:5000/x",
            "ghcr.io/org/sub/model:v1.2.3-rc_1",
            "index.docker.io/x/y",
            "r.example/a-b/c.d",
            "r.example/a___b",
            "r.example/A",
            "r.example/a:-x",
            with_digest.as_str(),
            both.as_str(),
        ] {
            let ours =
                parse(text).map(|p| (p.registry, p.repository, p.tag.map(str::to_owned), p.digest.map(str::to_owned)));
            let theirs = text.parse::<oci_client::Reference>().map(|r| {
                let explicit_tag =
                    text.rsplit('/').next().is_some_and(|last| last.split('@').next().unwrap_or("").contains(':'));
                (
                    r.registry().to_owned(),
                    r.repository().to_owned(),
                    r.tag().filter(|_| explicit_tag).map(str::to_owned),
                    r.digest().map(str::to_owned),
                )
            });
            assert_eq!(ours.ok(), theirs.ok(), "{text}");
        }
    }
}
