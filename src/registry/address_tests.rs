use super::*;

fn url(text: &str) -> reqwest::Url {
    reqwest::Url::parse(text).unwrap()
}

/// Every spelling of a metadata address a URL can carry is refused; the registries' own addresses
/// (loopback, private, public, CGNAT next to Alibaba's) are not.
#[test]
fn metadata_addresses_are_refused_in_every_spelling() {
    for bad in [
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.170.2/v2/credentials",
        "http://169.254.0.23/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[0:0:0:0:0:ffff:169.254.169.254]:80/",
        "http://[::ffff:0:169.254.169.254]/",
        "http://[::169.254.169.254]/",
        "http://[64:ff9b::169.254.169.254]/",
        "http://[64:ff9b:1:a9fe:a9:fe00::]/",
        "http://[64:ff9b:1::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[2001:0:4136:e378:8000:63bf:5601:5601]/",
        "http://0xa9fea9fe/",
        "http://2852039166/",
        "http://0251.0376.0251.0376/",
        "http://169.254.43518/",
        "http://[fe80::1]/",
        "http://[fe80::a9fe:a9fe]/",
        "http://[febf::1]/",
        "http://[fd00:ec2::254]/latest/api/token",
        "http://[fd00:ec2::23]/v1/credentials",
        "http://[fd20:ce::254]/",
        "http://[fd00:42::42]/",
        "http://[fd00:a9fe:a9fe::1]/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[::ffff:100.100.100.200]/",
        "http://192.0.0.192/",
        "http://168.63.129.16/machine",
        "http://metadata/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.GOOGLE.INTERNAL./x",
        "http://x.metadata.google.internal/",
        "http://metadata.goog/",
        "http://instance-data/",
        "http://instance-data.ec2.internal/",
        "http://instance-data.us-east-1.compute.internal/",
        "http://metadata.tencentyun.com/",
        "http://metadata.platformequinix.com/metadata",
        "http://api.metadata.cloud.ibm.com/",
    ] {
        assert!(is_forbidden_url(&url(bad)), "{bad}");
    }
    for good in [
        "http://127.0.0.1:5000/",
        "http://[::1]:5000/",
        "http://localhost/",
        "https://10.0.0.5/token",
        "https://192.168.1.1/",
        "https://172.16.0.1/",
        "https://100.64.0.1/",
        "https://100.100.100.201/",
        "https://169.253.255.255/",
        "https://169.255.0.0/",
        "http://[fd00::1]/",
        "http://[fd00:ec3::254]/",
        "http://[fec0::1]/",
        "http://[2001:db8::1]/",
        "http://[64:ff9b::10.0.0.1]/",
        "http://[2002:0a00:0001::1]/",
        "http://[::ffff:127.0.0.1]/",
        "https://registry-1.docker.io/v2/",
        "https://metadata.example.com/",
        "https://instance-data.example.com/",
        "https://ghcr.io/",
    ] {
        assert!(!is_forbidden_url(&url(good)), "{good}");
    }
}

#[test]
fn embedded_addresses_are_found_where_each_form_puts_them() {
    let v4 = |t: &str| t.parse::<Ipv4Addr>().unwrap();
    let embedded = |t: &str| embedded_v4(t.parse().unwrap());
    assert_eq!(embedded("::ffff:1.2.3.4"), [v4("1.2.3.4")]);
    assert_eq!(embedded("::ffff:0:1.2.3.4"), [v4("1.2.3.4")]);
    assert_eq!(embedded("::1.2.3.4"), [v4("1.2.3.4")]);
    assert_eq!(embedded("64:ff9b::1.2.3.4"), [v4("1.2.3.4")]);
    assert_eq!(embedded("2002:102:304::"), [v4("1.2.3.4")]);
    assert_eq!(embedded("2001:0:0:0:0:0:fefd:fcfb"), [v4("1.2.3.4")]);
    assert!(embedded("64:ff9b:1:102:3:400::").contains(&v4("1.2.3.4")), "/48 form");
    assert!(embedded("64:ff9b:1:1:2:304::").contains(&v4("1.2.3.4")), "/56 form");
    assert!(embedded("64:ff9b:1:0:1:203:400::").contains(&v4("1.2.3.4")), "/64 form");
    assert!(embedded("64:ff9b:1::102:304").contains(&v4("1.2.3.4")), "/96 form");
    assert!(embedded("::1").is_empty(), "loopback is not 0.0.0.1");
    assert!(embedded("::").is_empty());
    assert!(embedded("2001:db8::1").is_empty());
    assert_eq!(embedded("1.2.3.4"), [v4("1.2.3.4")]);
}

/// A name is judged by every address it resolves to: one forbidden address refuses it whole.
#[test]
fn resolved_names_are_judged_by_every_address() {
    let ips = |list: &[&str]| list.iter().map(|t| t.parse().unwrap()).collect::<Vec<IpAddr>>();
    assert_eq!(judge("registry.test", ips(&["127.0.0.1", "::1"])).unwrap(), ips(&["127.0.0.1", "::1"]));
    for (name, resolved) in [
        ("a.test", ips(&["169.254.169.254"])),
        ("b.test", ips(&["127.0.0.1", "169.254.169.254"])),
        ("c.test", ips(&["::ffff:169.254.169.254"])),
        ("d.test", ips(&["fd00:ec2::254"])),
        ("e.test", ips(&["100.100.100.200"])),
        ("metadata.google.internal", ips(&["127.0.0.1"])),
    ] {
        let refused = judge(name, resolved).unwrap_err().to_string();
        assert!(refused.contains(name) && refused.ends_with("metadata address; refused"), "{refused}");
    }
}

/// Names resolved by the test: each to the addresses given, every question recorded.
struct Hosts {
    table: Vec<(&'static str, Vec<IpAddr>)>,
    asked: std::sync::Mutex<Vec<String>>,
}

impl Lookup for Hosts {
    fn lookup(&self, name: String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        self.asked.lock().unwrap().push(name.clone());
        let found = self.table.iter().find(|(n, _)| *n == name).map(|(_, ips)| ips.clone());
        Box::pin(async move { found.ok_or_else(|| std::io::Error::other("no such host")) })
    }
}

/// A registry on 127.0.0.1 that redirects `/v2/redirect/...` to `http://<name>:<port>/x`, asks
/// for a token from `http://<name>:<port>/token` on `/v2/realm/...` and answers 404 otherwise;
/// returns its port and the paths it was asked for.
fn registry_server() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let paths = log.clone();
    std::thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
            paths.lock().unwrap().push(path.clone());
            // `/v2/<how>/<target>/manifests/...`: the target is the name (or literal) to send to.
            let parts: Vec<&str> = path.split('/').collect();
            let (how, target) = (parts.get(2).copied().unwrap_or_default(), parts.get(3).copied().unwrap_or_default());
            let target = target.replace("%5B", "[").replace("%5D", "]");
            let extra = match how {
                "redirect" => format!("HTTP/1.1 302 Found\r\nLocation: http://{target}:{port}/x\r\n"),
                "realm" => format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{target}:{port}/token\"\r\n"
                ),
                _ => "HTTP/1.1 404 Not Found\r\n".to_owned(),
            };
            let _ = client.write_all(format!("{extra}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
    (port, log)
}

/// The registry's host, a redirect target and a token realm, named or literal, that are (or
/// resolve to) metadata addresses: refused before any connection, within a second, and said so;
/// the same requests through a name for 127.0.0.1 reach the registry (the resolver is the one in
/// use). No packet goes anywhere but 127.0.0.1.
#[tokio::test]
async fn names_and_literals_of_metadata_addresses_are_refused_before_connecting() {
    use super::super::{Error, Options, Registry, Repository, http::Transport};
    let ips = |list: &[&str]| list.iter().map(|t| t.parse().unwrap()).collect::<Vec<IpAddr>>();
    let hosts = Arc::new(Hosts {
        table: vec![
            ("good.test", ips(&["127.0.0.1"])),
            ("meta.test", ips(&["169.254.169.254"])),
            ("mapped.test", ips(&["::ffff:169.254.169.254"])),
            ("mixed.test", ips(&["127.0.0.1", "100.100.100.200"])),
            ("aws6.test", ips(&["fd00:ec2::254"])),
            ("nat64.test", ips(&["64:ff9b::a9fe:a9fe"])),
        ],
        asked: Default::default(),
    });
    let (port, paths) = registry_server();
    let options = Options { insecure: true, ..Default::default() };
    let timeout = std::time::Duration::from_secs(5);
    let transport = Transport::with_lookup(&options, None, timeout, hosts.clone()).unwrap();
    let registry = Registry { transport, timeout };
    let digest = format!("sha256:{}", "e".repeat(64));
    let fetch = |host: &str, repository: &str| {
        let repo = Repository { registry: format!("{host}:{port}"), repository: repository.to_owned() };
        let registry = registry.clone();
        let digest = digest.clone();
        async move { registry.manifest(&repo, &digest).await }
    };
    // Through the test's resolver, a name for 127.0.0.1 reaches the registry.
    assert!(matches!(fetch("good.test", "plain/m").await, Err(Error::NotFound { .. })));
    assert_eq!(paths.lock().unwrap().len(), 1);
    let started = std::time::Instant::now();
    let mut refusals = Vec::new();
    for name in ["meta.test", "mapped.test", "mixed.test", "aws6.test", "nat64.test", "metadata.google.internal"] {
        refusals.push((name.to_owned(), fetch(name, "plain/m").await));
        refusals.push((format!("redirect to {name}"), fetch("good.test", &format!("redirect/{name}")).await));
        refusals.push((format!("realm {name}"), fetch("good.test", &format!("realm/{name}")).await));
    }
    for literal in ["[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "169.254.169.254", "100.100.100.200"] {
        refusals.push((literal.to_owned(), fetch(literal, "plain/m").await));
        refusals.push((format!("redirect to {literal}"), fetch("good.test", &format!("redirect/{literal}")).await));
        refusals.push((format!("realm {literal}"), fetch("good.test", &format!("realm/{literal}")).await));
    }
    for (what, result) in &refusals {
        let message = result.as_ref().map(|_| ()).unwrap_err().to_string();
        match result {
            Err(Error::ForbiddenAddress { .. }) => {}
            Err(Error::TokenRealm { detail, .. }) if detail.contains("metadata address") => {}
            other => panic!("{what}: {other:?}"),
        }
        assert!(message.contains("metadata address; refused"), "{what}: {message}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
    // Only the registry's own paths were asked for: never a redirect target's or a realm's.
    let asked = paths.lock().unwrap().clone();
    assert!(asked.iter().all(|p| p.starts_with("/v2/")), "{asked:?}");
    assert!(hosts.asked.lock().unwrap().iter().any(|n| n == "meta.test"), "names go through the resolver");
}
