//! What each single-file layer holds, read by HTTP range requests: the first bytes of every file,
//! then exactly the header, directory or pickle they point at ([`crate::modelpack::contents`]
//! judges them). Bounded per file ([`Bounds::file_bytes`], [`Bounds::file_requests`]) and per
//! model ([`Bounds::model_bytes`], [`Bounds::model_time`]); a file over a bound is "unread" with
//! the bound it hit, never read further. Results are kept per blob digest: a digest's bytes never
//! change, so a second look costs no request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::{Error, Registry, Repository};
use crate::modelpack::contents::{self as parse, Contents, Fault, Format, HEAD, Sniffed, pickle, zip};
use crate::modelpack::{Descriptor, Manifest, layer};

/// How much reading one model's contents may cost.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Bytes fetched from one file.
    pub file_bytes: u64,
    /// Range requests for one file.
    pub file_requests: u32,
    /// Bytes fetched for all of a model's files.
    pub model_bytes: u64,
    /// Time for all of a model's files.
    pub model_time: Duration,
    /// Files read at once.
    pub parallel: usize,
}

pub const BOUNDS: Bounds = Bounds {
    file_bytes: 16 << 20,
    file_requests: 12,
    model_bytes: 128 << 20,
    model_time: Duration::from_secs(20),
    parallel: 8,
};

/// Zip members other than `*.pkl` looked into per file (TorchScript archives hold many).
const MAX_OTHER_MEMBERS: usize = 16;
/// Results kept, by blob digest.
const MAX_CACHED: usize = 8192;

fn cache() -> &'static Mutex<HashMap<String, Contents>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Contents>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The contents of every layer of `manifest`, in its order.
pub async fn read(registry: &Registry, repo: &Repository, manifest: &Manifest, bounds: Bounds) -> Vec<Contents> {
    let deadline = Instant::now() + bounds.model_time;
    let spent = AtomicU64::new(0);
    let model = Model { registry, repo, bounds, spent: &spent };
    let mut out = Vec::with_capacity(manifest.layers.len());
    // Chunks of `parallel` files at once: plain `join_all` over a named async fn keeps the future
    // `Send` for the controller's reconcile.
    for chunk in manifest.layers.chunks(bounds.parallel.max(1)) {
        out.extend(futures::future::join_all(chunk.iter().map(|d| read_one(&model, d, deadline))).await);
    }
    out
}

async fn read_one(model: &Model<'_>, descriptor: &Descriptor, deadline: Instant) -> Contents {
    let parsed = match layer(descriptor) {
        Ok(parsed) => parsed,
        Err(e) => return Contents::unread(e.to_string()),
    };
    if !parsed.format().is_single_file() {
        return Contents::unread("an archive layer: the puller reports what it holds");
    }
    let cached = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&descriptor.digest).cloned();
    if let Some(hit) = cached {
        return hit;
    }
    let size = u64::try_from(descriptor.size).unwrap_or(0);
    let mut file = File { model, digest: &descriptor.digest, size, fetched: Vec::new(), requests: 0 };
    let path = parsed.path.to_string();
    match tokio::time::timeout_at(deadline, file.contents(&path)).await {
        Ok(Ok(contents)) => {
            let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
            if c.len() >= MAX_CACHED {
                c.clear();
            }
            c.insert(descriptor.digest.clone(), contents.clone());
            contents
        }
        Ok(Err(unread)) => Contents::unread(unread),
        Err(_) => Contents::unread(format!("over the {:?} bound on reading a model", model.bounds.model_time)),
    }
}

struct Model<'a> {
    registry: &'a Registry,
    repo: &'a Repository,
    bounds: Bounds,
    spent: &'a AtomicU64,
}

/// One file being read: the ranges fetched so far.
struct File<'a> {
    model: &'a Model<'a>,
    digest: &'a str,
    size: u64,
    fetched: Vec<(u64, Vec<u8>)>,
    requests: u32,
}

impl File<'_> {
    /// Bytes `at..at+len` (within the file), from what was fetched or by one range request.
    async fn bytes(&mut self, at: u64, len: u64) -> Result<Vec<u8>, String> {
        let len = len.min(self.size.saturating_sub(at));
        if len == 0 {
            return Ok(Vec::new());
        }
        if let Some((start, bytes)) = self.fetched.iter().find(|(s, b)| *s <= at && at + len <= s + b.len() as u64) {
            let from = (at - start) as usize;
            return Ok(bytes[from..from + len as usize].to_vec());
        }
        let bounds = self.model.bounds;
        let file_spent: u64 = self.fetched.iter().map(|(_, b)| b.len() as u64).sum();
        if file_spent + len > bounds.file_bytes {
            return Err(format!("over the {}-byte bound on reading one file", bounds.file_bytes));
        }
        if self.requests >= bounds.file_requests {
            return Err(format!("over the {}-request bound on reading one file", bounds.file_requests));
        }
        if self.model.spent.fetch_add(len, Ordering::Relaxed) + len > bounds.model_bytes {
            return Err(format!("over the {}-byte bound on reading a model", bounds.model_bytes));
        }
        self.requests += 1;
        let bytes = self.range(at, len).await.map_err(|e| format!("reading bytes {at}+{len}: {e}"))?;
        self.fetched.push((at, bytes.clone()));
        Ok(bytes)
    }

    async fn range(&self, at: u64, len: u64) -> Result<Vec<u8>, String> {
        let (registry, repo) = (self.model.registry, self.model.repo);
        let stream =
            registry.blob_range(repo, self.digest, at, at + len - 1).await.map_err(|e: Error| e.to_string())?;
        let Some(stream) = stream else { return Err("the registry does not answer range requests".into()) };
        let mut chunks = stream.chunks;
        let mut out = Vec::with_capacity(len as usize);
        let read = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                if out.len() + chunk.len() > len as usize {
                    return Err(format!("the registry sent more than the {len} bytes asked for"));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(())
        };
        tokio::time::timeout(registry.timeout(), read)
            .await
            .map_err(|_| "the registry stopped sending".to_owned())??;
        if out.len() as u64 != len {
            return Err(format!("the registry sent {} of {len} bytes", out.len()));
        }
        Ok(out)
    }

    /// The file's first `n` bytes, fetched beyond what `have` holds.
    async fn prefix(&mut self, have: Vec<u8>, n: u64) -> Result<Vec<u8>, String> {
        let mut out = have;
        if (out.len() as u64) < n {
            let more = self.bytes(out.len() as u64, n - out.len() as u64).await?;
            out.extend(more);
        }
        Ok(out)
    }

    async fn contents(&mut self, path: &str) -> Result<Contents, String> {
        let head = self.bytes(0, HEAD).await?;
        match parse::sniff(&head, path) {
            Sniffed::Safetensors => self.safetensors(head).await,
            Sniffed::Gguf => self.gguf(head).await,
            Sniffed::Pickle => self.pickle(head).await,
            Sniffed::Zip => self.zip().await,
            Sniffed::Other => Ok(Contents::of(Format::Other)),
        }
    }

    async fn safetensors(&mut self, head: Vec<u8>) -> Result<Contents, String> {
        let end = match parse::safetensors::header_end(&head, self.size) {
            Ok(end) => end,
            Err(fault) => return Ok(faulted(Format::Safetensors, fault)),
        };
        let bytes = self.prefix(head, end).await?;
        Ok(parse::safetensors::parse(&bytes, self.size).unwrap_or_else(|f| faulted(Format::Safetensors, f)))
    }

    /// GGUF metadata has no stated length: the prefix doubles until the header parses.
    async fn gguf(&mut self, head: Vec<u8>) -> Result<Contents, String> {
        let mut bytes = head;
        loop {
            match parse::gguf::parse(&bytes) {
                Ok(c) => return Ok(c),
                Err(Fault::Truncated(n)) if n <= self.size && (bytes.len() as u64) < self.size => {
                    let want = n.max(2 * bytes.len() as u64).min(self.size).min(self.model.bounds.file_bytes);
                    if want < n {
                        return Err(format!("a GGUF header over the {}-byte bound", self.model.bounds.file_bytes));
                    }
                    bytes = self.prefix(bytes, want).await?;
                }
                Err(fault) => return Ok(faulted(Format::Gguf, fault)),
            }
        }
    }

    /// A pickle's length is where its STOP is: the prefix doubles while the scan runs past it.
    async fn pickle(&mut self, head: Vec<u8>) -> Result<Contents, String> {
        let mut bytes = head;
        loop {
            let complete = bytes.len() as u64 >= self.size;
            let scan = pickle::scan(&bytes, complete);
            let cap = self.size.min(self.model.bounds.file_bytes);
            if !scan.ran_past_end() || complete || bytes.len() as u64 >= cap {
                let mut c = Contents::of(Format::Pickle);
                if scan.tensors > 0 {
                    (c.parameters, c.tensors) = (Some(scan.parameters), Some(scan.tensors));
                }
                c.pickle = Some(scan.report());
                return Ok(c);
            }
            let want = (2 * bytes.len() as u64).min(cap);
            bytes = match self.prefix(bytes.clone(), want).await {
                Ok(more) => more,
                // Over a bound: what was read is judged, truncated ("unknown" unless denied).
                Err(_) => bytes,
            };
            if bytes.len() as u64 != want {
                let mut c = Contents::of(Format::Pickle);
                c.pickle = Some(scan.report());
                return Ok(c);
            }
        }
    }

    async fn zip(&mut self) -> Result<Contents, String> {
        let tail_len = zip::TAIL.min(self.size);
        let tail_at = self.size - tail_len;
        let tail = self.bytes(tail_at, tail_len).await?;
        // A zip whose directory cannot be read may still load elsewhere (Python's zipfile forgives
        // shifted offsets): its pickles are "unknown", never "safe".
        let unreadable = |fault: Fault| {
            let text = fault_text(fault);
            Contents {
                pickle: Some(pickle::Scan::unread(text.clone()).report()),
                ..Contents::malformed(Format::Pytorch, text)
            }
        };
        let end = match zip::end(&tail, tail_at, self.size) {
            Ok(end) => end,
            Err(fault) => return Ok(unreadable(fault)),
        };
        let dir = self.bytes(end.directory, end.directory_len).await?;
        let members = match zip::members(&dir, &end, self.size) {
            Ok(m) => m,
            Err(fault) => return Ok(unreadable(fault)),
        };
        let mut contents = Contents::of(Format::Other);
        let mut scan: Option<pickle::Scan> = None;
        let mut others = 0;
        for member in &members {
            if contents.members.len() < parse::MAX_LISTED {
                contents.members.push(parse::clip(&member.name));
            }
            let kind = zip::kind(&member.name);
            if kind == zip::Kind::Other {
                others += 1;
                if others > MAX_OTHER_MEMBERS {
                    let more = pickle::Scan::unread(format!("more than {MAX_OTHER_MEMBERS} members not read"));
                    scan.get_or_insert_with(pickle::Scan::default).merge(more);
                    break;
                }
            }
            if !matches!(kind, zip::Kind::Pickle | zip::Kind::Other) {
                continue;
            }
            let found = match self.member(member).await? {
                Ok(data) if kind == zip::Kind::Pickle || parse::sniff(&data, &member.name) == Sniffed::Pickle => {
                    contents.format = Format::Pytorch;
                    pickle::scan(&data, true)
                }
                Ok(_) => continue,
                Err(fault) => pickle::Scan::unread(fault_text(fault)),
            };
            scan.get_or_insert_with(pickle::Scan::default).merge(found);
        }
        if let Some(scan) = scan {
            contents.format = Format::Pytorch;
            if scan.tensors > 0 {
                (contents.parameters, contents.tensors) = (Some(scan.parameters), Some(scan.tensors));
            }
            contents.pickle = Some(scan.report());
        }
        Ok(contents)
    }

    /// A member's unpacked bytes: its local header and data in one request.
    async fn member(&mut self, member: &zip::Member) -> Result<Result<Vec<u8>, Fault>, String> {
        let limit = self.model.bounds.file_bytes;
        if member.compressed > limit || member.uncompressed > limit {
            return Ok(Err(Fault::Malformed(format!(
                "member {} over the {limit}-byte bound",
                parse::clip(&member.name)
            ))));
        }
        // The name and extra field are usually the central directory's; 1 KiB more covers most.
        let guess = zip::LOCAL_HEADER + member.name.len() as u64 + 1024 + member.compressed;
        let local = self.bytes(member.local, guess).await?;
        let start = match zip::data_start(&local, member, self.size) {
            Ok(start) => start,
            Err(fault) => return Ok(Err(fault)),
        };
        let data = self.bytes(start, member.compressed).await?;
        Ok(zip::unpack(&data, member, limit))
    }
}

fn fault_text(fault: Fault) -> String {
    match fault {
        Fault::Truncated(n) => format!("the header needs {n} bytes the file does not have"),
        Fault::Malformed(m) => m,
    }
}

fn faulted(format: Format, fault: Fault) -> Contents {
    Contents::malformed(format, fault_text(fault))
}
