//! Depth-first traversal of a directory tree with constant stack and one directory handle moved a
//! level at a time (into a subdirectory, back by its `..`): a model may be 2,048 directories deep,
//! too deep to recurse on a blocking thread's stack and too deep to reopen every directory from
//! the root (a lookup per level, for each directory: quadratic). Memory is the names of the
//! subdirectories still to visit along the current path, never full paths.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::{fs, io};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::Error;

/// What a traversal does; every method is optional.
pub trait Visitor {
    type Error: From<std::io::Error>;

    /// Called on entering directory `rel` (relative to the root), before it is listed.
    fn enter(&mut self, _dir: &OwnedFd, _rel: &Path) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Called for every entry of `dir` that is not a directory.
    fn entry(&mut self, _dir: &OwnedFd, _rel: &Path, _name: &CStr, _kind: FileType) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Called once the subtree of `parent`'s subdirectory `name` has been visited.
    fn leave(&mut self, _parent: &OwnedFd, _name: &OsStr) -> Result<(), Self::Error> {
        Ok(())
    }
}

pub fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Visits the tree under `root` (a directory handle), never following a symlink.
pub fn walk<V: Visitor>(root: OwnedFd, visitor: &mut V) -> Result<(), V::Error> {
    let (mut dir, mut rel) = (root, PathBuf::new());
    let mut levels: Vec<Vec<OsString>> = Vec::new();
    loop {
        visitor.enter(&dir, &rel)?;
        let mut subdirs = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir).map_err(std::io::Error::from)? {
            let entry = entry.map_err(std::io::Error::from)?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let kind = match entry.file_type() {
                FileType::Unknown => FileType::from_raw_mode(
                    rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(std::io::Error::from)?.st_mode,
                ),
                kind => kind,
            };
            if kind == FileType::Directory {
                subdirs.push(OsStr::from_bytes(name.to_bytes()).to_owned());
            } else {
                visitor.entry(&dir, &rel, name, kind)?;
            }
        }
        levels.push(subdirs);
        loop {
            let Some(level) = levels.last_mut() else { return Ok(()) };
            if let Some(name) = level.pop() {
                dir = rustix::fs::openat(&dir, name.as_os_str(), dir_flags(), Mode::empty())
                    .map_err(std::io::Error::from)?;
                rel.push(name);
                break;
            }
            levels.pop();
            if levels.is_empty() {
                return Ok(());
            }
            // `..` of a real directory beneath the root is its parent: nothing here follows a link.
            let parent = rustix::fs::openat(&dir, "..", dir_flags(), Mode::empty()).map_err(std::io::Error::from)?;
            let name = rel.file_name().map(OsStr::to_owned).unwrap_or_default();
            rel.pop();
            visitor.leave(&parent, &name)?;
            dir = parent;
        }
    }
}

/// Removes a directory tree that `seal` (`materialise.rs`) made read-only.
pub fn remove_tree(path: &Path) -> Result<(), Error> {
    struct Remove;
    impl Visitor for Remove {
        type Error = io::Error;
        fn enter(&mut self, at: &OwnedFd, _: &Path) -> io::Result<()> {
            Ok(rustix::fs::fchmod(at, Mode::from_raw_mode(0o755))?)
        }
        fn entry(&mut self, at: &OwnedFd, _: &Path, name: &CStr, _: FileType) -> io::Result<()> {
            Ok(rustix::fs::unlinkat(at, name, AtFlags::empty())?)
        }
        fn leave(&mut self, parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
            Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
        }
    }
    let Ok(meta) = fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(|e| Error::io(path, e));
    }
    walk(open_dir(path)?, &mut Remove).map_err(|e| Error::io(path, e))?;
    fs::remove_dir(path).map_err(|e| Error::io(path, e))
}

pub(super) fn open_dir(dir: &Path) -> Result<OwnedFd, Error> {
    rustix::fs::open(dir, dir_flags(), Mode::empty()).map_err(|e| Error::io(dir, e.into()))
}
