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
        let served = content.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let content = served.clone();
                std::thread::spawn(move || serve(client, &content));
            }
        });
        StaticRegistry { host, content }
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

fn serve(mut client: TcpStream, content: &Mutex<Content>) {
    let head = super::read_request_head(&mut client);
    let mut words = head.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else { return };
    let key = path.trim_start_matches("/v2/");
    let found = content.lock().ok().and_then(|c| c.objects.get(key).cloned());
    let response = match (path, found) {
        ("/v2/" | "/v2", _) => answer(200, "application/json", None, b"{}", method),
        (_, Some((media_type, body))) => answer(200, &media_type, Some(&sha256(&body)), &body, method),
        _ => answer(404, "application/json", None, br#"{"errors":[{"code":"NOT_FOUND"}]}"#, method),
    };
    let _ = client.write_all(&response);
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
