//! A misbehaving registry in front of a real one: one HTTP/1.1 request per connection, forwarded
//! as is, except that responses for one blob are corrupted or cut short. For the puller's tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// Flip one byte in the middle of every GET of the blob (whole or ranged).
    Corrupt,
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
    /// Forward everything as is (for the request log).
    Honest,
}

pub struct Proxy {
    /// `127.0.0.1:PORT`
    pub host: String,
    pub blob_gets: Arc<AtomicUsize>,
    /// Every request line received (`GET /v2/…/blobs/sha256:… HTTP/1.1`), in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// The blob GETs received so far (any blob).
    pub fn blob_requests(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|r| r.starts_with("GET ") && r.contains("/blobs/")).cloned().collect()
    }
}

impl Proxy {
    pub fn start(upstream: &str, blob_hex: &str, how: Misbehaviour) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let blob_gets = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (upstream, blob_hex, gets, log) =
            (upstream.to_owned(), blob_hex.to_owned(), blob_gets.clone(), requests.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, blob_hex, gets, log) = (upstream.clone(), blob_hex.clone(), gets.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &blob_hex, how, &gets, &log);
                });
            }
        });
        Proxy { host, blob_gets, requests }
    }
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    blob_hex: &str,
    how: Misbehaviour,
    gets: &AtomicUsize,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
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
    log.lock().unwrap().push(request_line.clone());
    let mut forwarded: String = text
        .lines()
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .filter(|l| {
            !(matches!(how, Misbehaviour::TruncateOnceWithoutRanges) && l.to_ascii_lowercase().starts_with("range:"))
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(forwarded.as_bytes())?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    let is_blob_get = request_line.starts_with("GET ") && request_line.contains(&format!("/blobs/sha256:{blob_hex}"));
    // 206 too: the puller asks for ranges, from byte 0 on a first download.
    let is_body = response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.1 206");
    if is_blob_get && is_body {
        let n = gets.fetch_add(1, Ordering::SeqCst);
        let body_at = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |p| p + 4);
        match how {
            Misbehaviour::Corrupt => {
                let middle = body_at + (response.len() - body_at) / 2;
                response[middle] ^= 0xff;
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
            | Misbehaviour::Honest => {}
        }
    }
    client.write_all(&response)?;
    client.shutdown(std::net::Shutdown::Both)
}
