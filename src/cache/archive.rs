//! What the files of a model's archive layers hold, read from the built model on disk by the one
//! reading loop the registry's range reads use ([`crate::modelpack::contents::read`]): same
//! parsers, same bounds per file and per model, so a file reports the same contents whichever way
//! it was read. Nothing here fails a pull: a file that cannot be read is "unread" with the reason.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::walk::{Visitor, dir_flags, open_dir, walk};
use crate::modelpack::contents::read::{self as reading, Bounds, Source};
use crate::modelpack::contents::{ArchiveContents, ArchiveFile, Contents, FileContents};
use crate::modelpack::{LayerKind, Manifest, layer};

/// Files read per model: an archive may hold 100,000 small files, each a few reads; the rest are
/// counted as not read.
pub const MAX_FILES: usize = 1000;

/// The contents of every file the archive layers of `manifest` put in `model`; `None` when it has
/// no archive layer.
pub fn read(model: &Path, manifest: &Manifest, bounds: Bounds, max_files: usize) -> Option<ArchiveContents> {
    let mut look = Look {
        bounds,
        max_files,
        spent: AtomicU64::new(0),
        deadline: Instant::now() + bounds.model_time,
        files: Vec::new(),
        not_read: 0,
        not_read_weights: 0,
    };
    let mut any = false;
    for descriptor in &manifest.layers {
        let Ok(l) = layer(descriptor) else { continue };
        if l.format().is_single_file() {
            continue;
        }
        any = true;
        let weight = l.media_type.kind == LayerKind::Weight;
        if let Err(e) = look.layer(model, l.path.as_str(), weight) {
            look.push(weight, l.path.as_str().to_owned(), Contents::unread(format!("listing the layer's files: {e}")));
        }
    }
    any.then(|| ArchiveContents::sum(look.files, look.not_read, look.not_read_weights))
}

struct Look {
    bounds: Bounds,
    max_files: usize,
    /// Bytes read for the whole model.
    spent: AtomicU64,
    deadline: Instant,
    files: Vec<ArchiveFile>,
    not_read: u64,
    not_read_weights: u64,
}

impl Look {
    /// The files beneath (or at) `path`, an archive layer's announced path, never following a
    /// symlink on the way.
    fn layer(&mut self, model: &Path, path: &str, weight: bool) -> std::io::Result<()> {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = open_dir(&model.join(parent)).map_err(|e| std::io::Error::other(e.to_string()))?;
        let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
        let kind = FileType::from_raw_mode(rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode);
        if kind != FileType::Directory {
            self.file(&dir, path.to_owned(), &name, kind, weight);
            return Ok(());
        }
        let root = rustix::fs::openat(&dir, &name, dir_flags(), Mode::empty())?;
        walk(root, &mut Layer { look: self, path, weight })
    }

    fn file(&mut self, dir: &OwnedFd, path: String, name: &CStr, kind: FileType, weight: bool) {
        if self.files.len() >= self.max_files {
            self.not_read += 1;
            self.not_read_weights += u64::from(weight);
            return;
        }
        let contents = match kind {
            FileType::RegularFile => self.regular(dir, &path, name),
            FileType::Symlink => Contents::unread("a symlink: not followed"),
            _ => Contents::unread("not a regular file"),
        };
        self.push(weight, path, contents);
    }

    fn regular(&self, dir: &OwnedFd, path: &str, name: &CStr) -> Contents {
        if Instant::now() >= self.deadline {
            return Contents::unread(over_time(self.bounds));
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let file = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(e) => return Contents::unread(format!("opening it: {e}")),
        };
        let size = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Contents::unread(format!("reading its size: {e}")),
        };
        let source = OnDisk { file, size, deadline: self.deadline, bounds: self.bounds };
        // The loop is async for the registry's sake; reads from disk never wait on anything else.
        futures::executor::block_on(reading::contents(source, path, self.bounds, &self.spent))
            .unwrap_or_else(Contents::unread)
    }

    fn push(&mut self, weight_layer: bool, path: String, contents: Contents) {
        let path = crate::modelpack::contents::clip(&path);
        self.files.push(ArchiveFile { weight_layer, file: FileContents { path, contents } });
    }
}

fn over_time(bounds: Bounds) -> String {
    format!("over the {:?} bound on reading a model", bounds.model_time)
}

/// Visits one archive layer's directory.
struct Layer<'a> {
    look: &'a mut Look,
    /// The layer's path in the model.
    path: &'a str,
    weight: bool,
}

impl Visitor for Layer<'_> {
    type Error = std::io::Error;

    fn entry(&mut self, dir: &OwnedFd, rel: &Path, name: &CStr, kind: FileType) -> std::io::Result<()> {
        let mut path = Path::new(self.path).join(rel);
        path.push(name.to_string_lossy().as_ref());
        self.look.file(dir, path.to_string_lossy().into_owned(), name, kind, self.weight);
        Ok(())
    }
}

/// One file on disk, read where the loop asks.
struct OnDisk {
    file: File,
    size: u64,
    deadline: Instant,
    bounds: Bounds,
}

impl Source for OnDisk {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&mut self, at: u64, len: u64) -> Result<Vec<u8>, String> {
        if Instant::now() >= self.deadline {
            return Err(over_time(self.bounds));
        }
        let mut out = vec![0; usize::try_from(len).map_err(|e| e.to_string())?];
        self.file.read_exact_at(&mut out, at).map_err(|e| e.to_string())?;
        Ok(out)
    }
}
