//! The registry's HTTP side: requests, the Basic and Docker-token authentication they need, and
//! every body read with a cap while it streams, so that a hostile registry costs bounded memory
//! whatever it answers (an endless manifest, tag page, token or error body).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;

use super::address::{self, Forbidden, Lookup};
use super::challenge::{self, Challenge};
use super::{Credential, Error, Options, Repository, clip};

/// A token response is a small JSON document; 64 KiB is many times the largest JWT seen in use.
pub(super) const MAX_TOKEN_BYTES: usize = 64 << 10;
/// How much of an error body is read (the rest is never received): enough for the error envelope.
const MAX_ERROR_BODY_BYTES: usize = 4 << 10;

/// One client per credential set; clones share connections, challenges and tokens.
#[derive(Clone)]
pub(super) struct Transport {
    client: reqwest::Client,
    over_tls: bool,
    credential: Option<Credential>,
    auth: Arc<Mutex<AuthState>>,
}

/// What each registry asked for (learnt from its first 401, so no `/v2/` ping is needed) and the
/// tokens it granted, per repository scope.
#[derive(Default)]
struct AuthState {
    challenges: HashMap<String, Challenge>,
    tokens: HashMap<(String, String), (HeaderValue, Instant)>,
}

impl Transport {
    pub(super) fn new(
        options: &Options,
        credential: Option<&Credential>,
        timeout: Duration,
    ) -> Result<Transport, Error> {
        Transport::with_lookup(options, credential, timeout, Arc::new(address::System))
    }

    /// The same, resolving names with `lookup` (tests resolve their own names). Every address a
    /// name resolves to is judged when the client connects ([`address::Resolver`]).
    pub(super) fn with_lookup(
        options: &Options,
        credential: Option<&Credential>,
        timeout: Duration,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Transport, Error> {
        let mut builder = reqwest::Client::builder()
            .dns_resolver(address::Resolver(lookup))
            .user_agent(concat!("modelpack-operator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .read_timeout(timeout)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 10 {
                    attempt.error("more than 10 redirects")
                } else if attempt.url().scheme() == "http" && attempt.previous().iter().any(|u| u.scheme() == "https") {
                    attempt.error("a redirect downgrades https to http; refused")
                } else if address::is_forbidden_url(attempt.url()) {
                    let what = format!("redirect target {}", attempt.url().host_str().unwrap_or_default());
                    attempt.error(Forbidden { what })
                } else {
                    attempt.follow()
                }
            }));
        if let Some(pem) = &options.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| Error::InvalidCa(e.to_string()))?;
            if certs.is_empty() || !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(Error::InvalidCa("no PEM certificate found".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| Error::InvalidCa(e.to_string()))?;
        let auth = Arc::default();
        Ok(Transport { client, over_tls: !options.insecure, credential: credential.cloned(), auth })
    }

    /// Sends `METHOD /v2/<repository>/<path>` with whatever authentication the registry asked for,
    /// learning it from a 401 and retrying once. The response may be any status; its body is unread.
    pub(super) async fn send(
        &self,
        method: Method,
        repo: &Repository,
        path: &str,
        accept: &[&str],
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Response, Error> {
        let scheme = if self.over_tls { "https" } else { "http" };
        let url = format!("{scheme}://{}/v2/{}/{path}", api_host(&repo.registry), repo.repository);
        let url = reqwest::Url::parse(&url).map_err(|e| Error::InvalidReference {
            reference: repo.to_string(),
            reason: format!("not a URL host ({e})"),
        })?;
        if address::is_forbidden_url(&url) {
            let detail = Forbidden { what: format!("host {}", url.host_str().unwrap_or_default()) }.to_string();
            return Err(Error::ForbiddenAddress { registry: repo.registry.clone(), detail });
        }
        let scope = format!("repository:{}:pull", repo.repository);
        let mut retried = false;
        loop {
            let mut request = self.client.request(method.clone(), url.clone());
            if !accept.is_empty() {
                request = request.header(ACCEPT, accept.join(", "));
            }
            match range {
                Some((from, Some(to))) => request = request.header(RANGE, format!("bytes={from}-{to}")),
                Some((from, None)) => request = request.header(RANGE, format!("bytes={from}-")),
                None => {}
            }
            if let Some(authorization) = self.authorization(&repo.registry, &scope).await? {
                request = request.header(AUTHORIZATION, authorization);
            }
            let response = request.send().await.map_err(|e| transport_error(&repo.registry, &e))?;
            if response.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(response);
            }
            let asked =
                response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).and_then(challenge::parse);
            let Some(asked) = asked else { return Ok(response) };
            if asked == Challenge::Basic && self.credential.is_none() {
                return Ok(response);
            }
            let mut state = self.auth.lock().unwrap_or_else(|p| p.into_inner());
            state.tokens.remove(&(repo.registry.clone(), scope.clone()));
            state.challenges.insert(repo.registry.clone(), asked);
            retried = true;
        }
    }

    /// The `Authorization` value for a request to `registry` in `scope`, fetching a token if needed.
    async fn authorization(&self, registry: &str, scope: &str) -> Result<Option<HeaderValue>, Error> {
        let key = (registry.to_owned(), scope.to_owned());
        let challenge = {
            let state = self.auth.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((token, until)) = state.tokens.get(&key)
                && *until > Instant::now()
            {
                return Ok(Some(token.clone()));
            }
            state.challenges.get(registry).cloned()
        };
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credential.as_ref().map(basic)),
            Some(Challenge::Bearer { realm, service }) => {
                let (token, valid_for) = self.token(registry, scope, &realm, service.as_deref()).await?;
                let mut state = self.auth.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                state.tokens.retain(|_, (_, until)| *until > now);
                state.tokens.insert(key, (token.clone(), now + valid_for));
                Ok(Some(token))
            }
        }
    }

    /// The Docker token flow: GET the realm with the scope (and Basic credentials when there are
    /// any); the answer is read up to [`MAX_TOKEN_BYTES`].
    async fn token(
        &self,
        registry: &str,
        scope: &str,
        realm: &str,
        service: Option<&str>,
    ) -> Result<(HeaderValue, Duration), Error> {
        let url = challenge::check_realm(realm, self.over_tls).map_err(|detail| Error::TokenRealm {
            registry: registry.to_owned(),
            realm: clip(realm),
            detail,
        })?;
        let what = format!("token response of {}", url.host_str().unwrap_or("the realm"));
        let mut request = self.client.get(url).query(&[("scope", scope)]);
        if let Some(service) = service {
            request = request.query(&[("service", service)]);
        }
        if let Some(c) = &self.credential {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let response = request.send().await.map_err(|e| transport_error(registry, &e))?;
        let response = expect_success(response, registry, &what).await?;
        let body = read_capped(response, MAX_TOKEN_BYTES, &what, registry).await?;
        let protocol =
            |detail: &str| Error::Protocol { registry: registry.to_owned(), detail: format!("{what}: {detail}") };
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| protocol(&clip(&e.to_string())))?;
        let token =
            parsed.token.or(parsed.access_token).filter(|t| !t.is_empty()).ok_or_else(|| protocol("no token"))?;
        let value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| protocol("token is not a header value"))?;
        // Used for most of its stated life; a 401 before then fetches a new one anyway.
        let seconds = parsed.expires_in.unwrap_or(60).clamp(10, 3600);
        Ok((value, Duration::from_secs(seconds * 9 / 10)))
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

fn basic(c: &Credential) -> HeaderValue {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or_else(|_| HeaderValue::from_static("Basic"))
}

/// Whether `url` is the registry's own origin: its host and port (another port of the same host
/// is another service).
fn same_host(url: &reqwest::Url, registry: &str) -> bool {
    let own = api_host(registry);
    // `host[:port]`, `[v6]:port` or `[v6]`.
    let (host, port) = match own.rsplit_once(':') {
        Some((host, port)) if !own.ends_with(']') && port.chars().all(|c| c.is_ascii_digit()) => {
            (host, port.parse().ok())
        }
        _ => (own, None),
    };
    let strip = |h: &str| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let port = port.or_else(|| url.port_or_known_default().filter(|_| url.port().is_none()));
    url.host_str().is_some_and(|h| strip(h) == strip(host)) && url.port_or_known_default() == port
}

/// Docker Hub's API lives on another host than its name.
fn api_host(registry: &str) -> &str {
    if registry == "docker.io" { "registry-1.docker.io" } else { registry }
}

/// What a failed request means; a refused address (a redirect target, what a name resolved to)
/// is said as such, whatever layer of the client it surfaced in.
fn transport_error(registry: &str, e: &reqwest::Error) -> Error {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(forbidden) = s.downcast_ref::<Forbidden>() {
            return Error::ForbiddenAddress { registry: registry.to_owned(), detail: clip(&forbidden.to_string()) };
        }
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    Error::Unavailable { registry: registry.to_owned(), detail: clip(&detail) }
}

/// The body, refused as soon as it would exceed `limit` (before any byte when Content-Length says
/// so): at most `limit` bytes plus one network chunk are ever held.
pub(super) async fn read_capped(
    mut response: Response,
    limit: usize,
    what: &str,
    registry: &str,
) -> Result<Vec<u8>, Error> {
    let too_large = || Error::TooLarge { what: what.to_owned(), limit };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(registry, &e))? {
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The response when its status is a success; otherwise the error it stands for, from the first
/// [`MAX_ERROR_BODY_BYTES`] of its body (the connection is dropped with the rest unread).
pub(super) async fn expect_success(mut response: Response, registry: &str, what: &str) -> Result<Response, Error> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    // Text from another host than the registry's own (a token realm, a redirect target the
    // registry chose) is not repeated into errors and status: a hostile registry could point the
    // operator at an internal service and read its answer back from the Model's status.
    if !same_host(response.url(), registry) {
        body.clear();
    }
    Err(failure(registry, what, status, &body))
}

#[derive(Deserialize)]
struct Envelope {
    errors: Vec<EnvelopeError>,
}

#[derive(Deserialize)]
struct EnvelopeError {
    code: String,
    #[serde(default)]
    message: String,
}

/// What a failed response means, from its status and the distribution error envelope if any.
pub(super) fn failure(registry: &str, what: &str, status: StatusCode, body: &[u8]) -> Error {
    let envelope = serde_json::from_slice::<Envelope>(body).ok().filter(|e| !e.errors.is_empty());
    let codes: Vec<&str> = envelope.iter().flat_map(|e| &e.errors).map(|e| e.code.as_str()).collect();
    let detail = match &envelope {
        Some(e) => e.errors.iter().map(|e| format!("{}: {}", e.code, e.message)).collect::<Vec<_>>().join("; "),
        None if body.is_empty() => format!("HTTP {status}"),
        None => format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
    };
    let detail = format!("{what}: {}", clip(&detail));
    let has = |wanted: &[&str]| codes.iter().any(|c| wanted.contains(c));
    let registry = registry.to_owned();
    if has(&["UNAUTHORIZED", "DENIED"]) || matches!(status.as_u16(), 401 | 403) {
        Error::Unauthorized { registry, detail }
    } else if has(&["MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"]) || status == StatusCode::NOT_FOUND {
        Error::NotFound { what: what.to_owned() }
    } else if has(&["TOOMANYREQUESTS"]) || status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Error::Unavailable { registry, detail }
    } else {
        Error::Protocol { registry, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_registrys_own_origin_is_its_own() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        for (u, registry, own) in [
            ("https://r.example/v2/m/manifests/x", "r.example", true),
            ("https://r.example:443/v2/", "r.example", true),
            ("https://R.Example/v2/", "r.example", true),
            ("https://r.example:8443/v2/", "r.example", false),
            ("https://storage.example/blob", "r.example", false),
            ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000", true),
            ("http://127.0.0.1:5001/admin", "127.0.0.1:5000", false),
            ("http://[::1]:5000/v2/", "[::1]:5000", true),
            ("https://registry-1.docker.io/v2/", "docker.io", true),
            ("https://auth.docker.io/token", "docker.io", false),
        ] {
            assert_eq!(same_host(&url(u), registry), own, "{u} vs {registry}");
        }
    }

    /// The realm rule is applied before anything is sent: over TLS an http realm is refused; the
    /// same realm for a plain-HTTP registry is fetched (and here finds nothing listening).
    #[tokio::test]
    async fn a_realm_that_downgrades_https_is_refused_before_it_is_asked() {
        let credential = Credential { username: "u".into(), password: "p".into() };
        let realm = "http://127.0.0.1:1/token";
        for insecure in [false, true] {
            let options = Options { insecure, ..Default::default() };
            let transport = Transport::new(&options, Some(&credential), Duration::from_secs(5)).unwrap();
            let got = transport.token("r.example", "repository:m:pull", realm, Some("svc")).await;
            match (insecure, got) {
                (false, Err(Error::TokenRealm { detail, .. })) => assert!(detail.contains("downgrades"), "{detail}"),
                (true, Err(Error::Unavailable { .. })) => {}
                (insecure, other) => panic!("insecure={insecure}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn failures_are_classified_and_clipped() {
        let f = |status: u16, body: &str| {
            failure("r", "manifest r/m:v1", StatusCode::from_u16(status).unwrap(), body.as_bytes())
        };
        assert!(matches!(f(401, ""), Error::Unauthorized { .. }));
        assert!(matches!(f(403, "nope"), Error::Unauthorized { .. }));
        assert!(matches!(f(400, r#"{"errors":[{"code":"DENIED","message":"x"}]}"#), Error::Unauthorized { .. }));
        assert!(matches!(f(404, ""), Error::NotFound { .. }));
        assert!(matches!(f(400, r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#), Error::NotFound { .. }));
        assert!(matches!(f(500, ""), Error::Unavailable { .. }));
        assert!(matches!(f(429, ""), Error::Unavailable { .. }));
        assert!(matches!(f(400, r#"{"errors":[{"code":"MANIFEST_INVALID","message":"m"}]}"#), Error::Protocol { .. }));
        let long = format!("\x1b[31m{}\r\nInjected: header", "A".repeat(10_000));
        let message = f(500, &long).to_string();
        assert!(message.len() < 500, "{} bytes", message.len());
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(message.contains("HTTP 500 Internal Server Error"), "{message}");
    }
}
