//! A registry of the tests' own, without the bed: the distribution API's read side (manifests by
//! tag or digest, blobs, HEAD) over a fixed set of crafted artifacts, on 127.0.0.1. For tests of the
//! node-side commands (`pull`, `gc`, `scrub`) that need bytes to pull and nothing else.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use super::craft::{Artifact, sha256};

pub struct StaticRegistry {
    /// `127.0.0.1:PORT`
    pub host: String,
    content: Arc<Mutex<Content>>,
    /// Requests answered, and the blob bytes sent.
    counts: Arc<Mutex<(usize, usize)>>,
}

#[derive(Default)]
struct Content {
    /// `repo/manifests/<tag|digest>` and `repo/blobs/<digest>` to (media type, bytes).
    objects: HashMap<String, (String, Vec<u8>)>,
}

impl StaticRegistry {
    pub fn start() -> StaticRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the static registry");
        let host = listener.local_addr().expect("its address").to_string();
        let content = Arc::new(Mutex::new(Content::default()));
        let counts = Arc::new(Mutex::new((0, 0)));
        let (served, counted) = (content.clone(), counts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (content, counts) = (served.clone(), counted.clone());
                std::thread::spawn(move || serve(client, &content, &counts));
            }
        });
        StaticRegistry { host, content, counts }
    }

    /// Requests answered and body bytes sent since the last call (which resets both).
    pub fn take_counts(&self) -> (usize, usize) {
        std::mem::take(&mut *self.counts.lock().expect("counts"))
    }

    /// Adds `artifact` under `repo:tag`; returns the manifest's digest.
    pub fn push(&self, repo: &str, tag: &str, artifact: &Artifact) -> String {
        let manifest = serde_json::to_vec(&artifact.manifest()).expect("manifest JSON");
        let digest = sha256(&manifest);
        let media_type = "application/vnd.oci.image.manifest.v1+json".to_owned();
        let mut content = self.content.lock().expect("registry content");
        for blob in artifact.layers.iter().chain([&artifact.config]) {
            let key = format!("{repo}/blobs/{}", sha256(&blob.data));
            content.objects.insert(key, ("application/octet-stream".into(), blob.data.clone()));
        }
        content.objects.insert(format!("{repo}/manifests/{tag}"), (media_type.clone(), manifest.clone()));
        content.objects.insert(format!("{repo}/manifests/{digest}"), (media_type, manifest));
        digest
    }
}

fn serve(mut client: TcpStream, content: &Mutex<Content>, counts: &Mutex<(usize, usize)>) {
    let head = super::read_request_head(&mut client);
    let mut words = head.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else { return };
    let key = path.trim_start_matches("/v2/");
    let found = content.lock().ok().and_then(|c| c.objects.get(key).cloned());
    let response = match (path, found) {
        ("/v2/" | "/v2", _) => answer(200, "application/json", None, b"{}", method),
        (_, Some((media_type, body))) => match closed_range(&head, body.len()) {
            // A closed `bytes=a-b` range of a blob is answered with exactly those bytes (as
            // distribution does); open ranges get the whole body, which clients must accept.
            Some((first, last)) if key.contains("/blobs/") => {
                let mut out = answer(206, &media_type, None, &body[first..=last], method);
                let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
                let range = format!("\r\nContent-Range: bytes {first}-{last}/{}", body.len());
                out.splice(at..at, range.into_bytes());
                out
            }
            _ => answer(200, &media_type, Some(&sha256(&body)), &body, method),
        },
        _ => answer(404, "application/json", None, br#"{"errors":[{"code":"NOT_FOUND"}]}"#, method),
    };
    if let Ok(mut c) = counts.lock() {
        c.0 += 1;
        c.1 += response.len();
    }
    let _ = client.write_all(&response);
}

/// The `Range: bytes=first-last` of a request, when it lies within a body of `len` bytes.
fn closed_range(head: &str, len: usize) -> Option<(usize, usize)> {
    let line = head.lines().find(|l| l.to_ascii_lowercase().starts_with("range:"))?;
    let (first, last) = line.split_once('=')?.1.trim().split_once('-')?;
    let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last && last < len).then_some((first, last))
}

fn answer(status: u16, media_type: &str, digest: Option<&str>, body: &[u8], method: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(digest) = digest {
        out.push_str(&format!("Docker-Content-Digest: {digest}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body);
    }
    out
}
