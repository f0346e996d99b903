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
/// `*.pkl` members looked into per file: a checkpoint has one `data.pkl`, TorchScript a few more.
const MAX_PICKLE_MEMBERS: usize = 64;

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
        let (mut others, mut pickles, mut unpacked) = (0, 0, 0u64);
        // A directory may point many entries at one local header: each is unpacked and scanned
        // once (the bytes come from what was fetched, so no other bound would stop the repeats).
        let mut seen = std::collections::HashSet::new();
        for member in &members {
            if contents.members.len() < parse::MAX_LISTED {
                contents.members.push(parse::clip(&member.name));
            }
            let kind = zip::kind(&member.name);
            if !matches!(kind, zip::Kind::Pickle | zip::Kind::Other) || !seen.insert(member.local) {
                continue;
            }
            let (count, cap) = if kind == zip::Kind::Other {
                (&mut others, MAX_OTHER_MEMBERS)
            } else {
                (&mut pickles, MAX_PICKLE_MEMBERS)
            };
            *count += 1;
            if *count > cap {
                let more = pickle::Scan::unread(format!("more than {cap} such members not read"));
                scan.get_or_insert_with(pickle::Scan::default).merge(more);
                break;
            }
            let found = match self.member(member).await? {
                Ok(data) => {
                    unpacked += data.len() as u64;
                    if unpacked > self.bounds.file_bytes {
                        let over = format!("members unpack to over the {}-byte bound", self.bounds.file_bytes);
                        scan.get_or_insert_with(pickle::Scan::default).merge(pickle::Scan::unread(over));
                        break;
                    }
                    if kind != zip::Kind::Pickle && parse::sniff(&data, &member.name) != Sniffed::Pickle {
                        continue;
                    }
                    contents.format = Format::Pytorch;
                    pickle::scan(&data, true)
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in memory.
    struct InMemory(Vec<u8>);

    impl Source for InMemory {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }

        async fn read(&mut self, at: u64, len: u64) -> Result<Vec<u8>, String> {
            Ok(self.0[at as usize..(at + len) as usize].to_vec())
        }
    }

    fn read(bytes: Vec<u8>) -> Contents {
        let spent = AtomicU64::new(0);
        futures::executor::block_on(contents(InMemory(bytes), "model.pt", BOUNDS, &spent)).unwrap()
    }

    /// A stored zip whose central directory lists `copies` entries, all pointing at the one local
    /// header of `name` holding `data`.
    fn one_member_listed(name: &str, data: &[u8], copies: u16) -> Vec<u8> {
        let single = zip::tests::stored(&[(name, data)]);
        let end_at = single.len() - 22;
        let directory = u32::from_le_bytes(single[end_at + 16..end_at + 20].try_into().unwrap()) as usize;
        let (local, entry) = (&single[..directory], &single[directory..end_at]);
        let mut out = local.to_vec();
        for _ in 0..copies {
            out.extend(entry);
        }
        out.extend(&single[end_at..end_at + 8]);
        out.extend(copies.to_le_bytes());
        out.extend(copies.to_le_bytes());
        out.extend(((entry.len() * copies as usize) as u32).to_le_bytes());
        out.extend((directory as u32).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out
    }

    /// Found in review: 3,000 directory entries naming one 1 MB pickle were each unpacked and
    /// scanned again (from the bytes already fetched, so no byte or request bound stopped it):
    /// hours for a larger file. Each local header is now scanned once.
    #[test]
    fn directory_entries_sharing_a_member_are_scanned_once() {
        let mut pickle = b"N0".repeat(500_000);
        pickle.extend(b"N.");
        let got = read(one_member_listed("archive/data.pkl", &pickle, 3000));
        assert_eq!(got.format, Format::Pytorch);
        let scan = got.pickle.expect("scanned");
        assert_eq!(scan.verdict, parse::Verdict::Safe, "{scan:?}");
        assert_eq!(got.members.len(), parse::MAX_LISTED);
    }

    /// More `*.pkl` members than a checkpoint has: the rest are not read, so the verdict is at
    /// best "unknown", never "safe".
    #[test]
    fn pickle_members_past_the_cap_make_the_verdict_unknown() {
        let names: Vec<String> = (0..=MAX_PICKLE_MEMBERS).map(|i| format!("archive/p{i:03}.pkl")).collect();
        let members: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"N."[..])).collect();
        let got = read(zip::tests::stored(&members));
        let scan = got.pickle.expect("scanned");
        assert_eq!(scan.verdict, parse::Verdict::Unknown, "{scan:?}");
        assert!(scan.reasons.iter().any(|r| r.contains("not read")), "{scan:?}");
        // At the cap exactly, every member is read.
        let got = read(zip::tests::stored(&members[..MAX_PICKLE_MEMBERS]));
        assert_eq!(got.pickle.expect("scanned").verdict, parse::Verdict::Safe);
    }
}
