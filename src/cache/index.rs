//! A model's index: every entry of the tree the cache published, recorded when it was built
//! (`index/sha256/<model hex>`, outside the model directory so no model file can take its name):
//! each directory, each regular file with its SHA-256 and size, each symlink with its target.
//! Files hard-linked from a single-file layer's blob carry the blob's digest; files extracted from
//! archives are hashed while written. `scrub` compares the whole tree against it: an extracted
//! file is no blob, and without it a changed byte, an added file or a re-pointed symlink would
//! never be noticed.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::FileType;
use serde::{Deserialize, Serialize};

use super::Error;
use super::allowance::Allowance;
use super::budget::ENTRY_COST;
use super::layout::COMPLETE;
use super::layout::Tmp;
use super::store::Store;
use super::tree::{PathKey, str_key};
use super::walk::{Visitor, walk};

/// Most records an index may have to be checked: 20 times the default entry limit. What the
/// scrub holds per record is a few dozen bytes (never the paths), so this bounds its memory.
pub const MAX_RECORDS: usize = 1 << 21;

/// Longest line of an index: a 4 KiB path and a 4 KiB target, JSON-escaped.
const MAX_LINE: u64 = 64 << 10;

/// What an entry of the published tree is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Indexes written before directories and symlinks were recorded hold only files.
    #[default]
    File,
    Dir,
    Symlink,
}

/// One line of an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Relative to the model directory.
    pub path: String,
    #[serde(rename = "type", default, skip_serializing_if = "is_file")]
    pub kind: Kind,
    /// Hex, for files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// For symlinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn is_file(kind: &Kind) -> bool {
    *kind == Kind::File
}

/// A regular file's content as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSum {
    pub sha256: [u8; 32],
    pub size: u64,
}

/// The sums of the regular files of a model being built, by path key: recorded while each file
/// is written (or linked from its blob), read when the tree is indexed.
#[derive(Default)]
pub struct Sums(HashMap<PathKey, FileSum>);

impl Sums {
    pub fn insert(&mut self, path: &str, sum: FileSum) {
        self.0.insert(str_key(path), sum);
    }

    /// A hard link: the same content under another name.
    pub fn link(&mut self, source: &str, path: &str) {
        if let Some(sum) = self.0.get(&str_key(source)).copied() {
            self.0.insert(str_key(path), sum);
        }
    }
}

/// An index being written while its model is built, one JSON line per entry: a model may have
/// 100,000 entries with 4 KiB paths, too many to hold in memory.
pub struct Writer {
    file: BufWriter<fs::File>,
    tmp: PathBuf,
    /// The cache budget each line is charged to before it is written.
    room: Option<Rc<Allowance>>,
}

impl Writer {
    pub fn create(store: &Store, hex: &str) -> Result<Writer, Error> {
        let tmp = store.tmp_path(Tmp::Index(hex));
        let file = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Writer { file: BufWriter::new(file), tmp, room: None })
    }

    /// Charges the index file (one entry) and every line from now on to `room`.
    pub fn metered(&mut self, room: Rc<Allowance>) -> std::io::Result<()> {
        room.charge(ENTRY_COST)?;
        self.room = Some(room);
        Ok(())
    }

    pub fn add(&mut self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        if let Some(room) = &self.room {
            room.charge(line.len() as u64)?;
        }
        self.file.write_all(&line)
    }

    /// Records every entry of the finished tree `root` (the completion marker aside), as it is
    /// on disk: what the scrub will compare with. A regular file without a sum is an error.
    pub fn add_tree(&mut self, root: OwnedFd, sums: &Sums) -> std::io::Result<()> {
        struct Indexer<'a>(&'a mut Writer, &'a Sums);
        impl Visitor for Indexer<'_> {
            type Error = std::io::Error;
            fn enter(&mut self, _: &OwnedFd, rel: &Path) -> std::io::Result<()> {
                if rel.as_os_str().is_empty() {
                    return Ok(());
                }
                self.0.add(&Record {
                    path: text(rel),
                    kind: Kind::Dir,
                    sha256: String::new(),
                    size: None,
                    target: None,
                })
            }
            fn entry(&mut self, dir: &OwnedFd, rel: &Path, name: &CStr, kind: FileType) -> std::io::Result<()> {
                if is_marker(rel, name) {
                    return Ok(());
                }
                let path = text(&rel.join(name.to_string_lossy().as_ref()));
                let record = match kind {
                    FileType::RegularFile => {
                        let sum = self.1.0.get(&str_key(&path)).ok_or_else(|| {
                            std::io::Error::other(format!("{path}: a regular file with no recorded sum"))
                        })?;
                        let (sha256, size) = (hex::encode(sum.sha256), Some(sum.size));
                        Record { path, kind: Kind::File, sha256, size, target: None }
                    }
                    FileType::Symlink => {
                        let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
                        let target = Some(target.to_string_lossy().into_owned());
                        Record { path, kind: Kind::Symlink, sha256: String::new(), size: None, target }
                    }
                    other => return Err(std::io::Error::other(format!("{path}: unexpected {other:?}"))),
                };
                self.0.add(&record)
            }
        }
        walk(root, &mut Indexer(self, sums))
    }

    /// Publishes the index of model `hex` (atomically: a reader sees none or all of it).
    pub fn commit(self, store: &Store, hex: &str) -> Result<(), Error> {
        let Writer { file, tmp, .. } = self;
        file.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        let path = store.index_path(hex);
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// The lines written so far, flushed, for reading back before the index is committed.
    pub fn written(&mut self) -> Result<&Path, Error> {
        self.file.flush().map_err(|e| Error::io(&self.tmp, e))?;
        Ok(&self.tmp)
    }

    pub fn abort(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// The completion marker, which the cache writes after the index: not an entry of the model.
pub fn is_marker(rel: &Path, name: &CStr) -> bool {
    rel.as_os_str().is_empty() && name.to_bytes() == COMPLETE.as_bytes()
}

/// A path as recorded and compared (the tree's names are UTF-8: they come from model paths).
pub fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// What an entry of the published tree must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Dir,
    File(FileSum),
    /// The key of its target.
    Symlink(PathKey),
}

/// A model's index as the scrub holds it: keys, not paths.
#[derive(Debug, Default)]
pub struct Expected {
    pub entries: HashMap<PathKey, Want>,
}

/// Model `hex`'s index, whole; `Err` with why when it cannot be used to check the model (missing,
/// unreadable, a line that does not parse, too large).
pub fn load(store: &Store, hex: &str) -> Result<Expected, String> {
    let path = store.index_path(hex);
    let file = fs::File::open(&path).map_err(|e| format!("index {}: {e}", path.display()))?;
    let mut expected = Expected::default();
    for_each_line::<()>(file, |n, line| {
        let record: Record = serde_json::from_slice(line).map_err(|e| format!("index line {n}: {e}"))?;
        let want = want_of(&record).ok_or_else(|| format!("index line {n}: incomplete {:?} record", record.kind))?;
        if expected.entries.insert(str_key(&record.path), want).is_some_and(|old| old != want) {
            return Err(format!("index line {n}: {:?} recorded twice", record.path));
        }
        if expected.entries.len() > MAX_RECORDS {
            return Err(format!("the index has more than {MAX_RECORDS} entries"));
        }
        Ok(None)
    })?;
    Ok(expected)
}

/// Calls `f` with every record of the index file at `path`.
pub fn each_record(path: &Path, mut f: impl FnMut(&Record)) -> Result<(), String> {
    let file = fs::File::open(path).map_err(|e| format!("index {}: {e}", path.display()))?;
    for_each_line::<()>(file, |n, line| {
        let record: Record = serde_json::from_slice(line).map_err(|e| format!("index line {n}: {e}"))?;
        f(&record);
        Ok(None)
    })
    .map(|_| ())
}

/// The recorded path of the entry with key `key` (for saying which one is missing).
pub fn path_of(store: &Store, hex: &str, key: PathKey) -> Option<String> {
    let file = fs::File::open(store.index_path(hex)).ok()?;
    for_each_line(file, |_, line| {
        let record: Option<Record> = serde_json::from_slice(line).ok();
        Ok(record.filter(|r| str_key(&r.path) == key).map(|r| r.path))
    })
    .ok()
    .flatten()
}

/// Calls `f` on each line (numbered from 1) until it returns a value or an error; lines are
/// bounded by [`MAX_LINE`].
fn for_each_line<T>(
    file: fs::File,
    mut f: impl FnMut(usize, &[u8]) -> Result<Option<T>, String>,
) -> Result<Option<T>, String> {
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        let read = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line).map_err(|e| format!("index: {e}"))?;
        if read == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            return Err(format!("index line {n}: longer than {MAX_LINE} bytes or cut short"));
        }
        if let Some(found) = f(n, &line[..line.len() - 1])? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn want_of(record: &Record) -> Option<Want> {
    Some(match record.kind {
        Kind::Dir => Want::Dir,
        Kind::Symlink => Want::Symlink(str_key(record.target.as_deref()?)),
        Kind::File => {
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&record.sha256, &mut sha256).ok()?;
            Want::File(FileSum { sha256, size: record.size? })
        }
    })
}
