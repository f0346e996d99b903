//! Hostile registries' redirects and token realms: what they make the operator fetch, what it
//! sends there, and what of the answer it repeats (no bed needed: the servers are local threads).

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use modelpack_operator::registry::{Credential, Options, Registry, Repository};

/// A one-route HTTP server: answers every request with `respond(request head)`; logs the heads.
fn server(respond: impl Fn(&str) -> String + Send + 'static) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let heads = log.clone();
    std::thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            let head = support::read_request_head(&mut client);
            heads.lock().unwrap().push(head.clone());
            let _ = client.write_all(respond(&head).as_bytes());
        }
    });
    (host, log)
}

fn reply(status: &str, headers: &str, body: &str) -> String {
    format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// A registry names any URL as its token realm, or redirects a read there; the operator fetches it
/// from inside the cluster (registries do live on private networks, so it cannot refuse every
/// such address; link-local metadata endpoints it refuses, see `challenge.rs`), but it never
/// repeats that host's answer into the error, hence into the Model's status that the tenant reads.
/// Here an "internal" service answers 500 with a secret in its body.
#[tokio::test]
async fn a_registry_cannot_make_the_operator_fetch_and_reflect_an_internal_url() {
    let (internal, internal_log) =
        server(|_| reply("500 Internal Server Error", "", "INTERNAL-SECRET: db-password=hunter2"));
    let digest = format!("sha256:{}", "e".repeat(64));
    let mut leaks = Vec::new();
    for how in ["realm", "redirect"] {
        let internal = internal.clone();
        let (registry_host, _) = server(move |head| match how {
            "realm" if !head.to_ascii_lowercase().contains("authorization") => reply(
                "401 Unauthorized",
                &format!("WWW-Authenticate: Bearer realm=\"http://{internal}/admin/export\",service=\"x\"\r\n"),
                "",
            ),
            _ => reply("302 Found", &format!("Location: http://{internal}/admin/export\r\n"), ""),
        });
        let registry = Registry::new(&Options { insecure: true, ..Options::default() }, None).unwrap();
        let repo = Repository { registry: registry_host, repository: "attacker/model".into() };
        let err = registry.manifest(&repo, &digest).await.expect_err("no manifest there").to_string();
        if err.contains("hunter2") {
            leaks.push(format!("{how}: {err}"));
        }
    }
    assert!(leaks.is_empty(), "reflected: {leaks:#?}");
    assert_eq!(internal_log.lock().unwrap().len(), 2, "the test's internal service was reached both ways");
}

/// Basic credentials of the registry do not follow a redirect to another host.
#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_host() {
    let (other, other_log) = server(|_| reply("404 Not Found", "", ""));
    let other_port = other.rsplit(':').next().unwrap().to_owned();
    let (registry_host, _) = server(move |head| {
        if head.to_ascii_lowercase().contains("authorization: basic") {
            reply("302 Found", &format!("Location: http://localhost:{other_port}/v2/x\r\n"), "")
        } else {
            reply("401 Unauthorized", "WWW-Authenticate: Basic realm=\"r\"\r\n", "")
        }
    });
    let credential = Credential { username: "tenant".into(), password: "s3cret".into() };
    let registry = Registry::new(&Options { insecure: true, ..Options::default() }, Some(&credential)).unwrap();
    let repo = Repository { registry: registry_host, repository: "a/b".into() };
    let _ = registry.manifest(&repo, &format!("sha256:{}", "e".repeat(64))).await;
    let heads = other_log.lock().unwrap();
    assert!(!heads.is_empty(), "the redirect was not followed");
    assert!(heads.iter().all(|h| !h.to_ascii_lowercase().contains("authorization")), "{heads:#?}");
}
