//! A zip checkpoint's structure as `torch.save` writes it: the end-of-directory record (zip64 when
//! large) in the last bytes, the central directory it points at, and each member's local header.
//! Every offset is checked against the file's size before anything is read at it, so a directory
//! that points outside the file is malformed, never a read past the end.

use std::io::Read;

use super::Fault;

/// The end record and the longest comment it may be followed by: how much of the tail to read.
pub const TAIL: u64 = 22 + 65_535;
/// A local header's fixed part.
pub const LOCAL_HEADER: u64 = 30;

const END: u32 = 0x0605_4b50;
const END64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

/// Where the central directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    pub directory: u64,
    pub directory_len: u64,
    pub entries: u64,
}

/// One member as the central directory states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub method: u16,
    pub compressed: u64,
    pub uncompressed: u64,
    pub local: u64,
}

/// What a member is to `torch.load`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `*.pkl`: unpickled (`data.pkl`, `constants.pkl`).
    Pickle,
    /// `<archive>/data/<n>`: raw tensor bytes, never unpickled.
    Storage,
    /// The small records `torch.save` writes beside them (`version`, `byteorder`, …).
    Record,
    /// Anything else: read and scanned if it is a pickle.
    Other,
}

pub fn kind(name: &str) -> Kind {
    let lower = name.to_ascii_lowercase();
    let (dir, file) = lower.rsplit_once('/').unwrap_or(("", &lower));
    if lower.ends_with(".pkl") {
        Kind::Pickle
    } else if (dir.ends_with("/data") || dir == "data") && !file.is_empty() && file.bytes().all(|b| b.is_ascii_digit())
    {
        Kind::Storage
    } else if matches!(
        file,
        "version" | "byteorder" | "serialization_id" | ".format_version" | ".storage_alignment" | "data_descriptor"
    ) {
        Kind::Record
    } else {
        Kind::Other
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

/// Finds the end record in `tail`, the file's bytes from `tail_at` to its end (`size`).
pub fn end(tail: &[u8], tail_at: u64, size: u64) -> Result<End, Fault> {
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|i| u32_at(tail, *i) == END)
        .ok_or_else(|| Fault::Malformed("no zip end-of-directory record".into()))?;
    let mut e = End {
        entries: u64::from(u16_at(tail, at + 10)),
        directory_len: u64::from(u32_at(tail, at + 12)),
        directory: u64::from(u32_at(tail, at + 16)),
    };
    let zip64 = e.entries == 0xffff || e.directory_len == 0xffff_ffff || e.directory == 0xffff_ffff;
    if zip64 {
        let locator = at.checked_sub(20).filter(|l| u32_at(tail, *l) == LOCATOR64);
        let locator = locator.ok_or_else(|| Fault::Malformed("zip64 sizes without a zip64 locator".into()))?;
        let record = u64_at(tail, locator + 8);
        let inside = record.checked_sub(tail_at).map(|r| r as usize).filter(|r| r + 56 <= tail.len());
        let r = inside.ok_or_else(|| Fault::Malformed(format!("zip64 end record at {record}, outside the tail")))?;
        if u32_at(tail, r) != END64 {
            return Err(Fault::Malformed(format!("no zip64 end record at {record}")));
        }
        e = End { entries: u64_at(tail, r + 32), directory_len: u64_at(tail, r + 40), directory: u64_at(tail, r + 48) };
    }
    let fits = e.directory.checked_add(e.directory_len).is_some_and(|stop| stop <= size);
    if !fits {
        return Err(Fault::Malformed(format!(
            "the central directory ({} bytes at {}) points outside the file of {size} bytes",
            e.directory_len, e.directory
        )));
    }
    Ok(e)
}

/// Reads the central directory `dir` (the `end.directory_len` bytes at `end.directory`).
pub fn members(dir: &[u8], end: &End, size: u64) -> Result<Vec<Member>, Fault> {
    let mut out = Vec::new();
    let mut at = 0usize;
    // Each entry takes at least 46 bytes: a count that lies runs out of directory.
    for i in 0..end.entries {
        let bad = |what: &str| Fault::Malformed(format!("zip directory entry {i}: {what}"));
        if u32_at(dir, at) != CENTRAL || at + 46 > dir.len() {
            return Err(bad("not a central directory header"));
        }
        let (n, m, k) = (u16_at(dir, at + 28) as usize, u16_at(dir, at + 30) as usize, u16_at(dir, at + 32) as usize);
        let name = dir.get(at + 46..at + 46 + n).ok_or_else(|| bad("name past the directory"))?;
        let extra = dir.get(at + 46 + n..at + 46 + n + m).ok_or_else(|| bad("extra field past the directory"))?;
        let mut member = Member {
            name: String::from_utf8_lossy(name).into_owned(),
            method: u16_at(dir, at + 10),
            compressed: u64::from(u32_at(dir, at + 20)),
            uncompressed: u64::from(u32_at(dir, at + 24)),
            local: u64::from(u32_at(dir, at + 42)),
        };
        zip64_extra(extra, &mut member);
        if member.local.checked_add(LOCAL_HEADER).is_none_or(|e| e > size)
            || member.local.checked_add(member.compressed).is_none_or(|e| e > size)
        {
            return Err(bad(&format!("{} points outside the file", super::clip(&member.name))));
        }
        out.push(member);
        at += 46 + n + m + k;
    }
    Ok(out)
}

/// The zip64 extra field replaces the sizes and offset that overflowed, in this order.
fn zip64_extra(extra: &[u8], m: &mut Member) {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, at), u16_at(extra, at + 2) as usize);
        if id == 1 {
            let mut field = at + 4;
            for value in [&mut m.uncompressed, &mut m.compressed, &mut m.local] {
                if *value == 0xffff_ffff && field + 8 <= at + 4 + len {
                    *value = u64_at(extra, field);
                    field += 8;
                }
            }
        }
        at += 4 + len;
    }
}

/// Where a member's data starts, from its local header `local` (at least its fixed part).
pub fn data_start(local: &[u8], member: &Member, size: u64) -> Result<u64, Fault> {
    if local.len() < LOCAL_HEADER as usize {
        return Err(Fault::Truncated(LOCAL_HEADER));
    }
    if u32_at(local, 0) != LOCAL {
        return Err(Fault::Malformed(format!("member {}: no local header", super::clip(&member.name))));
    }
    let start = member.local + LOCAL_HEADER + u64::from(u16_at(local, 26)) + u64::from(u16_at(local, 28));
    if start.checked_add(member.compressed).is_none_or(|e| e > size) {
        return Err(Fault::Malformed(format!("member {} ends past the file", super::clip(&member.name))));
    }
    Ok(start)
}

/// A member's bytes: stored as is, or deflated (at most `limit` bytes out).
pub fn unpack(data: &[u8], member: &Member, limit: u64) -> Result<Vec<u8>, Fault> {
    match member.method {
        0 => Ok(data.to_vec()),
        8 => {
            let mut out = Vec::new();
            let mut reader = flate2::read::DeflateDecoder::new(data).take(limit + 1);
            reader
                .read_to_end(&mut out)
                .map_err(|e| Fault::Malformed(format!("member {}: {e}", super::clip(&member.name))))?;
            if out.len() as u64 > limit {
                return Err(Fault::Malformed(format!(
                    "member {} inflates past {limit} bytes",
                    super::clip(&member.name)
                )));
            }
            Ok(out)
        }
        other => Err(Fault::Malformed(format!("member {}: compression method {other}", super::clip(&member.name)))),
    }
}

#[cfg(test)]
#[path = "zip_tests.rs"]
pub(crate) mod tests;
