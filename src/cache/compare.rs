//! Comparing a published model's tree with its index, for `scrub`: one walk of the tree (never
//! following a symlink), each entry looked up by its path's key and crossed off; what is left
//! over was removed. Memory is the index's keys, never its paths.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::index::{self, FileSum, Want};
use super::records::{Pace, hash_reader};
use super::store::Store;
use super::tree::{PathKey, str_key};
use super::walk::{Visitor, dir_flags, walk};

/// Compares models with their indexes, reading files at the scrub's pace.
pub(super) struct Compare<'a> {
    /// Blob inodes already hashed: (hex, whether it matched its name).
    checked: &'a BTreeMap<u64, (String, bool)>,
    pace: &'a mut Pace,
    /// Regular files looked at.
    pub files: usize,
}

/// Why a walk stopped.
enum Stop {
    Differs(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        Stop::Io(e)
    }
}

impl From<rustix::io::Errno> for Stop {
    fn from(e: rustix::io::Errno) -> Stop {
        Stop::Io(e.into())
    }
}

impl<'a> Compare<'a> {
    pub fn new(checked: &'a BTreeMap<u64, (String, bool)>, pace: &'a mut Pace) -> Compare<'a> {
        Compare { checked, pace, files: 0 }
    }

    /// `Ok` when model `hex` (directory `dir`) is exactly what its index records, or is gone
    /// (collected meanwhile: no corruption); otherwise what differs, or why it cannot be checked.
    pub fn model(&mut self, store: &Store, hex: &str, dir: &Path) -> Result<(), String> {
        let mut expected = match index::load(store, hex) {
            Ok(expected) => expected.entries,
            Err(why) => return gone_or(dir, format!("index: {why} (the model cannot be checked)")),
        };
        let root = match rustix::fs::open(dir, dir_flags(), Mode::empty()) {
            Ok(root) => root,
            Err(e) => return gone_or(dir, format!("entry \".\": {e}")),
        };
        match walk(root, &mut Visit { compare: self, expected: &mut expected }) {
            Ok(()) => {}
            Err(Stop::Differs(why)) => return gone_or(dir, why),
            Err(Stop::Io(e)) => return gone_or(dir, format!("entry \".\": cannot be read whole: {e}")),
        }
        match expected.keys().next() {
            Some(key) => {
                let path = index::path_of(store, hex, *key).unwrap_or_else(|| String::from("(unknown)"));
                gone_or(dir, format!("entry {path:?}: missing"))
            }
            None => Ok(()),
        }
    }

    fn file(&mut self, dir: &OwnedFd, name: &CStr, path: &str, sum: FileSum) -> Result<(), Stop> {
        self.files += 1;
        let changed = || Stop::Differs(format!("file {path}"));
        let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if u64::try_from(stat.st_size).ok() != Some(sum.size) {
            return Err(changed());
        }
        let hex = hex::encode(sum.sha256);
        if let Some((blob, matches)) = self.checked.get(&stat.st_ino) {
            return if *matches && *blob == hex { Ok(()) } else { Err(changed()) };
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(dir, name, flags, Mode::empty())?);
        if hash_reader(file, self.pace)? == hex { Ok(()) } else { Err(changed()) }
    }
}

/// A model that no longer exists was collected, not corrupted.
fn gone_or(dir: &Path, why: String) -> Result<(), String> {
    if std::fs::symlink_metadata(dir).is_ok() { Err(why) } else { Ok(()) }
}

struct Visit<'c, 'a> {
    compare: &'c mut Compare<'a>,
    /// What is not seen yet.
    expected: &'c mut HashMap<PathKey, Want>,
}

impl Visitor for Visit<'_, '_> {
    type Error = Stop;

    fn enter(&mut self, _: &OwnedFd, rel: &Path) -> Result<(), Stop> {
        if rel.as_os_str().is_empty() {
            return Ok(());
        }
        let path = index::text(rel);
        match self.expected.remove(&str_key(&path)) {
            Some(Want::Dir) => Ok(()),
            other => Err(differs(&path, FileType::Directory, other)),
        }
    }

    fn entry(&mut self, dir: &OwnedFd, rel: &Path, name: &CStr, kind: FileType) -> Result<(), Stop> {
        if index::is_marker(rel, name) && kind == FileType::RegularFile {
            return Ok(());
        }
        let path = index::text(&rel.join(name.to_string_lossy().as_ref()));
        match (kind, self.expected.remove(&str_key(&path))) {
            (FileType::RegularFile, Some(Want::File(sum))) => self.compare.file(dir, name, &path, sum),
            (FileType::Symlink, Some(Want::Symlink(target))) => {
                let now = rustix::fs::readlinkat(dir, name, Vec::new())?;
                let now = now.to_string_lossy();
                if str_key(&now) == target {
                    Ok(())
                } else {
                    Err(Stop::Differs(format!("entry {path:?}: symlink re-pointed to {now:?}")))
                }
            }
            (kind, want) => Err(differs(&path, kind, want)),
        }
    }
}

fn differs(path: &str, kind: FileType, want: Option<Want>) -> Stop {
    let is = describe(kind);
    Stop::Differs(match want {
        None => format!("entry {path:?}: {is} not in the index"),
        Some(Want::Dir) => format!("entry {path:?}: {is}, published as a directory"),
        Some(Want::File(_)) => format!("entry {path:?}: {is}, published as a regular file"),
        Some(Want::Symlink(_)) => format!("entry {path:?}: {is}, published as a symlink"),
    })
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "a directory",
        FileType::RegularFile => "a regular file",
        FileType::Symlink => "a symlink",
        _ => "a device, FIFO or socket",
    }
}
