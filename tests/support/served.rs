//! A small registry of our own on 127.0.0.1 (threads, no bed): one ModelPack in repository
//! `served/model` (tag `1.0.0`), the referrers it is told to list — paged as told, filtered by
//! `?artifactType=` or not, or through the tag schema only — extra manifests and blobs by digest,
//! and, when asked, layers dripped one byte at a time. Every request line is logged.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::craft::{Artifact, sha256};

pub const REPO: &str = "served/model";
pub const TAG: &str = "1.0.0";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What the registry serves.
#[derive(Clone, Default)]
pub struct Setup {
    pub artifact: Option<Artifact>,
    /// Index entries listed as the model's referrers, in order.
    pub referrers: Vec<Value>,
    /// Entries per referrers page (0: all in one).
    pub page: usize,
    /// Whether `?artifactType=` is applied (and `OCI-Filters-Applied` said).
    pub filters: bool,
    /// No referrers API (404): the entries are the index tagged `sha256-<hex>`.
    pub tag_schema: bool,
    /// Every page links to one more, forever (each listing the same entries).
    pub endless_pages: bool,
    /// Manifests and blobs served by their digest.
    pub manifests: Vec<Vec<u8>>,
    pub blobs: Vec<Vec<u8>>,
    /// Layers are sent `n` bytes per pause (config and manifests are not), after the first
    /// `fast` bytes of each answer at full speed. Ranges (`bytes=a-b`) are answered as asked.
    pub drip: Option<(usize, Duration)>,
    pub fast: usize,
}

pub struct Served {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// The model manifest's digest and bytes.
    pub digest: String,
    pub manifest: Vec<u8>,
    /// Request lines (`GET /v2/... HTTP/1.1`), in order.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    pub fn start(setup: Setup) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let artifact = setup.artifact.clone().unwrap_or_else(super::hostile::artifact);
        let manifest = serde_json::to_vec(&artifact.manifest()).unwrap();
        let digest = sha256(&manifest);
        let log = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State { setup, artifact, manifest: manifest.clone(), digest: digest.clone() });
        let requests = log.clone();
        std::thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                let (state, requests) = (state.clone(), requests.clone());
                std::thread::spawn(move || {
                    let head = super::read_request_head(&mut client);
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    requests.lock().unwrap().push(line.clone());
                    let _ = state.answer(&mut client, &line, &head);
                });
            }
        });
        Served { host, digest, manifest, log }
    }

    pub fn reference(&self) -> String {
        format!("{}/{REPO}:{TAG}", self.host)
    }

    pub fn requests(&self, containing: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| l.contains(containing)).cloned().collect()
    }
}

struct State {
    setup: Setup,
    artifact: Artifact,
    manifest: Vec<u8>,
    digest: String,
}

impl State {
    fn answer(&self, client: &mut TcpStream, line: &str, head: &str) -> std::io::Result<()> {
        let mut words = line.split_whitespace();
        let head_only = words.next() == Some("HEAD");
        let target = words.next().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let Some(rest) = path.strip_prefix(&format!("/v2/{REPO}/")) else { return reply(client, 404, &[], b"", false) };
        let manifest_type = "application/vnd.oci.image.manifest.v1+json";
        if let Some(reference) = rest.strip_prefix("manifests/") {
            if reference == TAG || reference == self.digest {
                let headers = [("Docker-Content-Digest", self.digest.clone()), ("Content-Type", manifest_type.into())];
                return reply(client, 200, &headers, &self.manifest, head_only);
            }
            if self.setup.tag_schema && reference == self.digest.replace(':', "-") {
                let index = index(&self.setup.referrers);
                return reply(client, 200, &[("Content-Type", INDEX.into())], &index, head_only);
            }
            if let Some(m) = self.setup.manifests.iter().find(|m| sha256(m) == reference) {
                return reply(client, 200, &[("Content-Type", manifest_type.into())], m, head_only);
            }
            return reply(client, 404, &[], br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#, head_only);
        }
        if rest.starts_with("referrers/") && !self.setup.tag_schema {
            return self.referrers(client, query, head_only);
        }
        if let Some(digest) = rest.strip_prefix("blobs/") {
            if digest == sha256(&self.artifact.config.data) {
                return reply(client, 200, &[], &self.artifact.config.data, head_only);
            }
            if let Some(layer) = self.artifact.layers.iter().find(|l| sha256(&l.data) == digest) {
                return match self.setup.drip {
                    Some(pace) if !head_only => drip(client, &layer.data, range(head), self.setup.fast, pace),
                    _ => reply(client, 200, &[], &layer.data, head_only),
                };
            }
            if let Some(blob) = self.setup.blobs.iter().find(|b| sha256(b) == digest) {
                return reply(client, 200, &[], blob, head_only);
            }
        }
        reply(client, 404, &[], br#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#, head_only)
    }

    /// One page: `last=<index>` says where it starts; a `Link` names the next while there is one.
    fn referrers(&self, client: &mut TcpStream, query: &str, head_only: bool) -> std::io::Result<()> {
        let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}=")));
        // Clients percent-encode the type (`+` as `%2B`).
        let decoded = param("artifactType").map(|t| t.replace("%2B", "+").replace("%2F", "/"));
        let wanted = decoded.as_deref().filter(|_| self.setup.filters);
        let entries: Vec<&Value> = self
            .setup
            .referrers
            .iter()
            .filter(|e| wanted.is_none_or(|t| e["artifactType"].as_str() == Some(t)))
            .collect();
        let start: usize = param("last").and_then(|n| n.parse().ok()).unwrap_or(0);
        let page = if self.setup.page == 0 { entries.len().max(1) } else { self.setup.page };
        let end = (start + page).min(entries.len());
        let shown = if self.setup.endless_pages { &entries[..] } else { &entries[start.min(end)..end] };
        let mut headers = vec![("Content-Type", INDEX.to_owned())];
        if end < entries.len() || self.setup.endless_pages {
            let filter = wanted.map(|t| format!("artifactType={t}&")).unwrap_or_default();
            let next = if self.setup.endless_pages { start + 1 } else { end };
            let link = format!("</v2/{REPO}/referrers/{}?{filter}n={page}&last={next}>; rel=\"next\"", self.digest);
            headers.push(("Link", link));
        }
        if wanted.is_some() {
            headers.push(("OCI-Filters-Applied", "artifactType".to_owned()));
        }
        reply(client, 200, &headers, &index(shown), head_only)
    }
}

fn index<T: serde::Serialize>(entries: &[T]) -> Vec<u8> {
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries})).unwrap()
}

fn reply(
    client: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut response = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        response.push_str(&format!("{k}: {v}\r\n"));
    }
    response.push_str("\r\n");
    client.write_all(response.as_bytes())?;
    if !head_only {
        client.write_all(body)?;
    }
    client.shutdown(std::net::Shutdown::Both)
}

/// The `first-last` of a request's `Range: bytes=first-last` (or `first-`).
fn range(head: &str) -> Option<(usize, Option<usize>)> {
    let value = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_owned))?;
    let (first, last) = value.trim().split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()))
}

/// The body (or the range asked) announced, its first `fast` bytes sent at once, then `n` bytes
/// per pause until the client hangs up.
fn drip(
    client: &mut TcpStream,
    body: &[u8],
    range: Option<(usize, Option<usize>)>,
    fast: usize,
    (n, pause): (usize, Duration),
) -> std::io::Result<()> {
    let (status, extra, body) = match range {
        Some((first, last)) => {
            let last = last.unwrap_or(body.len() - 1).min(body.len() - 1);
            let extra = format!("Content-Range: bytes {first}-{last}/{}\r\n", body.len());
            (206, extra, &body[first..=last])
        }
        None => (200, String::new(), body),
    };
    let head = format!("HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    client.write_all(head.as_bytes())?;
    let (now, later) = body.split_at(fast.min(body.len()));
    client.write_all(now)?;
    for piece in later.chunks(n.max(1)) {
        client.write_all(piece)?;
        client.flush()?;
        std::thread::sleep(pause);
    }
    client.shutdown(std::net::Shutdown::Both)
}
