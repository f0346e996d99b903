//! A hostile registry: a tiny distribution API of its own serving one small ModelPack (tag `1.0.0`,
//! repository `hostile/model`), except that one endpoint answers with an endless body, streamed
//! here 64 KiB at a time (never buffered) until the client hangs up or 300 MB have gone.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::craft::{Artifact, Blob, sha256};

/// Which answer is endless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endless {
    /// Every request first needs a bearer token, and the token endpoint's answer never ends.
    Token,
    /// GET and HEAD of `manifests/1.0.0` (HEAD without a digest header, so the client must GET).
    ManifestByTag,
    /// HEAD of the tag states a digest; GET of `manifests/<digest>` never ends.
    ManifestByDigest,
    /// The same, with `Content-Length: 300 MB` stated up front.
    ManifestStatedTooLarge,
    /// `tags/list`.
    TagList,
    /// The cosign signature manifest (`manifests/sha256-<hex>.sig`).
    SignatureTag,
    /// `referrers/<digest>`.
    Referrers,
    /// The config blob.
    ConfigBlob,
    /// Manifest GETs answer 500 with an endless body of control characters and text (a HEAD of
    /// the tag answers 200 without a digest, so that the GET follows).
    ServerError,
    /// The tag's manifest GET drips one byte every 200 ms (for 40 s; HEAD as for `ServerError`):
    /// each read is quick, only a deadline on the whole read ends it.
    Drip,
    /// Manifest GETs answer 404 with an endless body (HEAD as for `ServerError`).
    NotFoundError,
    /// Not endless: a 3 MiB manifest (under the cap) whose artifactType is an escape sequence and
    /// 3 MiB of text, served as the good manifest.
    HugeMediaType,
}

pub const REPO: &str = "hostile/model";
pub const TAG: &str = "1.0.0";
const ENDLESS_BYTES: usize = 300 << 20;

pub struct Hostile {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// The digest of the good manifest it serves.
    pub digest: String,
    /// Bytes of endless bodies sent so far: a client that stops reading at its cap hangs up after
    /// a few MiB (the cap and the sockets' buffers), one that buffers whole takes all 300 MB.
    pub endless_sent: Arc<AtomicUsize>,
}

impl Hostile {
    pub fn start(endless: Endless) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let artifact = artifact();
        let mut manifest = artifact.manifest();
        if endless == Endless::HugeMediaType {
            manifest["artifactType"] = json!(format!("application/x\u{1b}[31m\n{}", "a".repeat(3 << 20)));
            manifest["config"]["mediaType"] = json!("application/x");
        }
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let digest = sha256(&manifest);
        let endless_sent = Arc::new(AtomicUsize::new(0));
        let served = Served { host: host.clone(), endless, manifest, artifact, sent: endless_sent.clone() };
        std::thread::spawn(move || {
            let served = Arc::new(served);
            for client in listener.incoming().flatten() {
                let served = served.clone();
                std::thread::spawn(move || {
                    let _ = served.serve(client);
                });
            }
        });
        Hostile { host, digest, endless_sent }
    }

    pub fn endless_sent(&self) -> usize {
        self.endless_sent.load(Ordering::SeqCst)
    }

    pub fn reference(&self) -> String {
        format!("{}/{REPO}:{TAG}", self.host)
    }
}

pub fn artifact() -> Artifact {
    let weights = b"hostile weights".to_vec();
    let config =
        json!({"descriptor": {"name": "hostile"}, "modelfs": {"type": "layers", "diffIds": [sha256(&weights)]}});
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![
            Blob::new("application/vnd.cncf.model.weight.v1.raw", weights).annotate("org.cncf.model.filepath", "w.bin"),
        ],
        annotations: Default::default(),
    }
}

struct Served {
    host: String,
    endless: Endless,
    manifest: Vec<u8>,
    artifact: Artifact,
    sent: Arc<AtomicUsize>,
}

/// A digest this registry claims for a manifest it never finishes sending.
pub fn endless_digest() -> String {
    format!("sha256:{}", "e".repeat(64))
}

impl Served {
    fn serve(&self, mut client: TcpStream) -> std::io::Result<()> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
            if client.read(&mut byte)? == 0 {
                return Ok(());
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut words = text.split_whitespace();
        let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let path = target.split('?').next().unwrap_or_default();
        let has_token = text.lines().any(|l| l.to_ascii_lowercase().starts_with("authorization: bearer "));
        let head_only = method == "HEAD";
        let prefix = format!("/v2/{REPO}/");
        let digest = sha256(&self.manifest);
        let e = self.endless;

        if path == "/token" {
            return endless(&mut client, &self.sent, 200, "application/json", b"{\"token\":\"", None);
        }
        if e == Endless::Token && !has_token {
            let challenge = format!("Bearer realm=\"http://{}/token\",service=\"hostile\"", self.host);
            return answer(&mut client, 401, &[("WWW-Authenticate", &challenge)], b"", head_only);
        }
        let Some(rest) = path.strip_prefix(&prefix) else {
            return answer(&mut client, 404, &[], b"", head_only);
        };
        if let Some(reference) = rest.strip_prefix("manifests/") {
            match e {
                // A HEAD without a digest, so that the GET (and its error body) follows.
                Endless::ServerError | Endless::NotFoundError | Endless::Drip if head_only && reference == TAG => {
                    return answer(&mut client, 200, &[], &self.manifest, head_only);
                }
                Endless::Drip if reference == TAG => return drip(&mut client),
                Endless::SignatureTag if reference.ends_with(".sig") => {
                    return endless(
                        &mut client,
                        &self.sent,
                        200,
                        "application/vnd.oci.image.manifest.v1+json",
                        b"{",
                        None,
                    );
                }
                Endless::ServerError => {
                    return endless(&mut client, &self.sent, 500, "text/plain", b"\x1b[31mboom\r\n", None);
                }
                Endless::NotFoundError => {
                    return endless(&mut client, &self.sent, 404, "application/json", b"{\"errors\":[", None);
                }
                Endless::ManifestByTag if reference == TAG => {
                    return endless(
                        &mut client,
                        &self.sent,
                        200,
                        "application/vnd.oci.image.manifest.v1+json",
                        b"{",
                        None,
                    );
                }
                Endless::ManifestByDigest | Endless::ManifestStatedTooLarge if reference == TAG => {
                    let headers = [("Docker-Content-Digest", endless_digest())];
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    return answer(&mut client, 200, &headers, &self.manifest, head_only);
                }
                Endless::ManifestByDigest if reference == endless_digest() => {
                    return endless(
                        &mut client,
                        &self.sent,
                        200,
                        "application/vnd.oci.image.manifest.v1+json",
                        b"{",
                        None,
                    );
                }
                Endless::ManifestStatedTooLarge if reference == endless_digest() => {
                    let media = "application/vnd.oci.image.manifest.v1+json";
                    return endless(&mut client, &self.sent, 200, media, b"{", Some(ENDLESS_BYTES));
                }
                _ if reference == TAG || reference == digest => {
                    let headers = [("Docker-Content-Digest", digest.as_str())];
                    return answer(&mut client, 200, &headers, &self.manifest, head_only);
                }
                _ => return answer(&mut client, 404, &[], br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#, head_only),
            }
        }
        if rest == "tags/list" {
            if e == Endless::TagList {
                return endless(&mut client, &self.sent, 200, "application/json", b"{\"tags\":[\"", None);
            }
            return answer(&mut client, 200, &[], format!("{{\"tags\":[\"{TAG}\"]}}").as_bytes(), head_only);
        }
        if rest.starts_with("referrers/") {
            if e == Endless::Referrers {
                return endless(
                    &mut client,
                    &self.sent,
                    200,
                    "application/vnd.oci.image.index.v1+json",
                    b"{\"manifests\":[",
                    None,
                );
            }
            let empty =
                json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []});
            return answer(&mut client, 200, &[], empty.to_string().as_bytes(), head_only);
        }
        if let Some(blob) = rest.strip_prefix("blobs/") {
            if blob == sha256(&self.artifact.config.data) {
                if e == Endless::ConfigBlob {
                    return endless(&mut client, &self.sent, 200, "application/octet-stream", b"{", None);
                }
                return answer(&mut client, 200, &[], &self.artifact.config.data, head_only);
            }
            if let Some(layer) = self.artifact.layers.iter().find(|l| sha256(&l.data) == blob) {
                return answer(&mut client, 200, &[], &layer.data, head_only);
            }
        }
        answer(&mut client, 404, &[], br#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#, head_only)
    }
}

fn answer(
    client: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
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

/// `prefix` then filler until the client leaves or 300 MB have been sent; a body delimited by the
/// connection's close unless `stated` gives a Content-Length. HEAD requests get the same (what a
/// hostile server may do).
fn endless(
    client: &mut TcpStream,
    counter: &AtomicUsize,
    status: u16,
    content_type: &str,
    prefix: &[u8],
    stated: Option<usize>,
) -> std::io::Result<()> {
    let length = stated.map(|n| format!("Content-Length: {n}\r\n")).unwrap_or_default();
    let head = format!("HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n{length}Connection: close\r\n\r\n");
    client.write_all(head.as_bytes())?;
    client.write_all(prefix)?;
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = prefix.len();
    while sent < ENDLESS_BYTES {
        client.write_all(&chunk)?;
        sent += chunk.len();
        counter.fetch_add(chunk.len(), Ordering::SeqCst);
    }
    client.shutdown(std::net::Shutdown::Both)
}

fn drip(client: &mut TcpStream) -> std::io::Result<()> {
    client.write_all(
        b"HTTP/1.1 200 X\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n",
    )?;
    for _ in 0..200 {
        client.write_all(b" ")?;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    client.shutdown(std::net::Shutdown::Both)
}
