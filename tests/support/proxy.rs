//! A misbehaving registry in front of a real one: one HTTP/1.1 request per connection, forwarded
//! as is, except that responses for one blob are corrupted or cut short. For the puller's tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// Forward everything unchanged (the request log is what the test reads).
    Pass,
    /// Drop every `Range` header: every answer is the whole blob, as from a server without ranges.
    IgnoreRanges,
    /// Flip one byte in the middle of every GET of the blob (whole or ranged).
    Corrupt,
    /// Flip one byte in the first quarter of every GET of the blob, then close at its half.
    CorruptThenCut,
    /// Send only the first half of the blob's body on its first GET, then close.
    TruncateOnce,
    /// As `TruncateOnce`, behind a server without range support: `Range` headers are dropped, so
    /// every answer is the whole blob.
    TruncateOnceWithoutRanges,
    /// Send the first half of the blob's body on its first GET, then keep the connection open
    /// without sending more (for killing the client mid-blob).
    StallOnce,
    /// Send the first half of the blob's body, pause a second, then the rest (every GET): keeps a
    /// download in flight long enough for another to meet it.
    Slow,
}

pub struct Proxy {
    /// `127.0.0.1:PORT`
    pub host: String,
    pub blob_gets: Arc<AtomicUsize>,
    /// The `Range` header of every GET of the blob, in arrival order (empty: none).
    pub ranges: Arc<Mutex<Vec<String>>>,
    /// Requests (any path) that carried an `Authorization` header.
    pub authorized: Arc<AtomicUsize>,
    /// Every request line received (`GET /v2/…/blobs/sha256:… HTTP/1.1`), in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// The `Range` headers seen so far, and forgets them.
    pub fn take_ranges(&self) -> Vec<String> {
        std::mem::take(&mut *self.ranges.lock().unwrap())
    }
}

impl Proxy {
    /// The blob GETs received so far (any blob).
    pub fn blob_requests(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|r| r.starts_with("GET ") && r.contains("/blobs/")).cloned().collect()
    }

    pub fn start(upstream: &str, blob_hex: &str, how: Misbehaviour) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let blob_gets = Arc::new(AtomicUsize::new(0));
        let (ranges, authorized) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Log {
            gets: blob_gets.clone(),
            ranges: ranges.clone(),
            authorized: authorized.clone(),
            requests: requests.clone(),
        };
        let (upstream, blob_hex) = (upstream.to_owned(), blob_hex.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, blob_hex, log) = (upstream.clone(), blob_hex.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &blob_hex, how, &log);
                });
            }
        });
        Proxy { host, blob_gets, ranges, authorized, requests }
    }
}

/// What the proxy records, shared by its connection threads.
#[derive(Clone)]
struct Log {
    gets: Arc<AtomicUsize>,
    ranges: Arc<Mutex<Vec<String>>>,
    authorized: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn serve(mut client: TcpStream, upstream: &str, blob_hex: &str, how: Misbehaviour, log: &Log) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_owned();
    log.requests.lock().unwrap().push(request_line.clone());
    let mut forwarded: String = text
        .lines()
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .filter(|l| {
            let drops_ranges = matches!(how, Misbehaviour::TruncateOnceWithoutRanges | Misbehaviour::IgnoreRanges);
            !(drops_ranges && l.to_ascii_lowercase().starts_with("range:"))
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    forwarded.push_str("Connection: close\r\n\r\n");
    let is_blob_get = request_line.starts_with("GET ") && request_line.contains(&format!("/blobs/sha256:{blob_hex}"));
    let header =
        |name: &str| text.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix(name).map(|r| r.trim().to_owned()));
    if header("authorization:").is_some() {
        log.authorized.fetch_add(1, Ordering::SeqCst);
    }
    if is_blob_get {
        log.ranges.lock().unwrap().push(header("range:").unwrap_or_default());
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(forwarded.as_bytes())?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    // 206 too: the puller asks for ranges, from byte 0 on a first download.
    let is_body = response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.1 206");
    if is_blob_get && is_body {
        let n = log.gets.fetch_add(1, Ordering::SeqCst);
        let body_at = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |p| p + 4);
        match how {
            Misbehaviour::Corrupt => {
                let middle = body_at + (response.len() - body_at) / 2;
                response[middle] ^= 0xff;
            }
            Misbehaviour::CorruptThenCut => {
                let body = response.len() - body_at;
                response[body_at + body / 4] ^= 0xff;
                response.truncate(body_at + body / 2);
            }
            Misbehaviour::TruncateOnce | Misbehaviour::TruncateOnceWithoutRanges if n == 0 => {
                let half = body_at + (response.len() - body_at) / 2;
                response.truncate(half);
            }
            Misbehaviour::StallOnce if n == 0 => {
                let half = body_at + (response.len() - body_at) / 2;
                client.write_all(&response[..half])?;
                std::thread::sleep(std::time::Duration::from_secs(120));
                return Ok(());
            }
            Misbehaviour::Slow => {
                let half = body_at + (response.len() - body_at) / 2;
                client.write_all(&response[..half])?;
                std::thread::sleep(std::time::Duration::from_secs(1));
                client.write_all(&response[half..])?;
                return client.shutdown(std::net::Shutdown::Both);
            }
            Misbehaviour::TruncateOnce
            | Misbehaviour::TruncateOnceWithoutRanges
            | Misbehaviour::StallOnce
            | Misbehaviour::Pass
            | Misbehaviour::IgnoreRanges => {}
        }
    }
    client.write_all(&response)?;
    client.shutdown(std::net::Shutdown::Both)
}
