//! A model's file index: the SHA-256 of every regular file it holds, recorded when it was built
//! (`index/sha256/<model hex>`, outside the model directory so no model file can take its name).
//! Files hard-linked from a single-file layer's blob carry the blob's digest; files extracted from
//! archives are hashed while written. `scrub` re-hashes against it: an archive's extracted files
//! are not blobs, and without it a byte changed in one would never be noticed.

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::Error;
use super::allowance::{Allowance, ENTRY_COST};
use super::layout::Tmp;
use super::store::Store;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    /// Relative to the model directory.
    pub path: String,
    /// Hex.
    pub sha256: String,
    pub size: u64,
}

/// An index being written while its model is built, one JSON line per file: a model may have
/// 100,000 files with 4 KiB paths, too many to hold in memory.
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

    pub fn add(&mut self, file: &FileHash) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(file)?;
        line.push(b'\n');
        if let Some(room) = &self.room {
            room.charge(line.len() as u64)?;
        }
        self.file.write_all(&line)
    }

    /// Publishes the index of model `hex` (atomically: a reader sees none or all of it).
    pub fn commit(self, store: &Store, hex: &str) -> Result<(), Error> {
        let Writer { file, tmp, .. } = self;
        file.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        let path = store.index_path(hex);
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    pub fn abort(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Model `hex`'s index, a line at a time; `None` for a model built before indexes existed. A line
/// that does not parse reads as a file that cannot match (the index was tampered with).
pub fn read(store: &Store, hex: &str) -> Option<impl Iterator<Item = FileHash>> {
    let file = fs::File::open(store.index_path(hex)).ok()?;
    Some(BufReader::new(file).lines().map(|line| {
        line.ok().and_then(|l| serde_json::from_str(&l).ok()).unwrap_or(FileHash {
            path: String::from("(unreadable index line)"),
            sha256: String::new(),
            size: u64::MAX,
        })
    }))
}
