//! The reading loop over one file's bytes, wherever they are: the first bytes of the file, then
//! exactly the header, directory or pickle they point at, parsed by this module's parsers. The
//! registry feeds it HTTP ranges of a blob (`registry::contents`), the puller the files an archive
//! layer held, from disk (`cache::archive`): one loop, so both report the same contents for the
//! same bytes. Bounded per file ([`Bounds::file_bytes`], [`Bounds::file_requests`]) and per model
//! ([`Bounds::model_bytes`]; the time bound is the caller's, which knows its clock); a file over a
//! bound is "unread" with the bound it hit, never read further.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{self as parse, Contents, Fault, Format, HEAD, Sniffed, pickle, zip};

/// How much reading one model's contents may cost.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Bytes read from one file.
    pub file_bytes: u64,
    /// Reads (range requests) for one file.
    pub file_requests: u32,
    /// Bytes read for all of a model's files.
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

/// Where one file's bytes come from.
pub trait Source {
    /// The file's length.
    fn size(&self) -> u64;
    /// Exactly the bytes `at..at + len` (`len > 0`, within [`Source::size`]), or why not.
    fn read(&mut self, at: u64, len: u64) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

/// What one file holds, read from `source` within `bounds`; `spent` counts the bytes read for the
/// whole model (shared by its files). `Err` is why the file is unread.
pub async fn contents<S: Source>(source: S, path: &str, bounds: Bounds, spent: &AtomicU64) -> Result<Contents, String> {
    let size = source.size();
    let mut reader = Reader { source, bounds, spent, size, fetched: Vec::new(), requests: 0 };
    reader.contents(path).await
}

/// One file being read: the ranges read so far.
struct Reader<'a, S> {
    source: S,
    bounds: Bounds,
    spent: &'a AtomicU64,
    size: u64,
    fetched: Vec<(u64, Vec<u8>)>,
    requests: u32,
}

impl<S: Source> Reader<'_, S> {
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
        let bounds = self.bounds;
        let file_spent: u64 = self.fetched.iter().map(|(_, b)| b.len() as u64).sum();
        if file_spent + len > bounds.file_bytes {
            return Err(format!("over the {}-byte bound on reading one file", bounds.file_bytes));
        }
        if self.requests >= bounds.file_requests {
            return Err(format!("over the {}-request bound on reading one file", bounds.file_requests));
        }
        if self.spent.fetch_add(len, Ordering::Relaxed) + len > bounds.model_bytes {
            return Err(format!("over the {}-byte bound on reading a model", bounds.model_bytes));
        }
        self.requests += 1;
        let bytes = self.source.read(at, len).await.map_err(|e| format!("reading bytes {at}+{len}: {e}"))?;
        self.fetched.push((at, bytes.clone()));
        Ok(bytes)
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
                    let want = n.max(2 * bytes.len() as u64).min(self.size).min(self.bounds.file_bytes);
                    if want < n {
                        return Err(format!("a GGUF header over the {}-byte bound", self.bounds.file_bytes));
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
            let cap = self.size.min(self.bounds.file_bytes);
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
        let limit = self.bounds.file_bytes;
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
