//! Depth-first traversal of a directory tree with constant stack and one directory handle moved a
//! level at a time (into a subdirectory, back by its `..`): a model may be 2,048 directories deep,
//! too deep to recurse on a blocking thread's stack and too deep to reopen every directory from
//! the root (a lookup per level, for each directory: quadratic). Memory is the names of the
//! subdirectories still to visit along the current path, never full paths.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

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
