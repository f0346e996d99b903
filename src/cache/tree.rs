//! A model directory under construction, written only through directory handles opened beneath
//! its root one component at a time with `O_NOFOLLOW`: no entry of an archive can make a later
//! entry write, link or read through a symlink, whatever the symlinks it planted point at.
//! (`openat2(RESOLVE_BENEATH)` would do the walk in one call, but nodes still run kernels older
//! than 5.6, and the walk is what it does anyway.)
//!
//! The rules, each enforced here rather than by looking at path strings:
//! - every parent of every entry is a real directory of this tree (never a symlink);
//! - a hard link's source is a regular file this model itself created;
//! - every symlink, when finally followed, resolves to something inside the tree.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::modelpack::ModelPath;

/// Symlinks followed while resolving one symlink, as Linux's own limit (MAXSYMLINKS).
const MAX_HOPS: usize = 40;

/// Why an entry was refused: the caller names the layer and entry.
#[derive(Debug)]
pub enum Refusal {
    /// The archive tried something this tree does not allow.
    Unsafe(String),
    /// The filesystem failed.
    Io(std::io::Error),
}

impl From<Errno> for Refusal {
    fn from(e: Errno) -> Refusal {
        Refusal::Io(e.into())
    }
}

type Result<T> = std::result::Result<T, Refusal>;

fn unsafe_(reason: impl Into<String>) -> Refusal {
    Refusal::Unsafe(reason.into())
}

pub struct Tree {
    root: OwnedFd,
    /// Regular files created by this model (the only valid hard-link sources).
    files: HashSet<String>,
    symlinks: Vec<ModelPath>,
}

impl Tree {
    /// Opens the (empty) staging directory `root`.
    pub fn open(root: &Path) -> std::io::Result<Tree> {
        let root = rustix::fs::open(root, dir_flags(), Mode::empty())?;
        Ok(Tree { root, files: HashSet::new(), symlinks: Vec::new() })
    }

    /// Creates directory `path` and its parents (an existing real directory is fine).
    pub fn mkdir(&mut self, path: &ModelPath) -> Result<()> {
        self.walk(&components(path), true).map(drop)
    }

    /// Creates regular file `path`, which must not exist yet.
    pub fn create_file(&mut self, path: &ModelPath) -> Result<File> {
        let (parent, name) = self.parent(path)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o644)).map_err(exists)?;
        self.files.insert(path.as_str().to_owned());
        Ok(File::from(fd))
    }

    /// Hard-links `blob` (a file of the store, outside the tree) as `path`.
    pub fn link_blob(&mut self, blob: &Path, path: &ModelPath) -> Result<()> {
        let (parent, name) = self.parent(path)?;
        rustix::fs::linkat(CWD, blob, &parent, name, AtFlags::empty()).map_err(exists)?;
        self.files.insert(path.as_str().to_owned());
        Ok(())
    }

    /// Hard-links `source`, a regular file this model created, as `path`.
    pub fn hard_link(&mut self, source: &ModelPath, path: &ModelPath) -> Result<()> {
        if !self.files.contains(source.as_str()) {
            return Err(unsafe_(format!("hard link to {source:?}, which is not a regular file of this model")));
        }
        let (from_dir, from_name) = self.parent_existing(source)?;
        let (parent, name) = self.parent(path)?;
        // No AT_SYMLINK_FOLLOW: the link is to the source entry itself.
        rustix::fs::linkat(&from_dir, from_name, &parent, name, AtFlags::empty()).map_err(exists)?;
        self.files.insert(path.as_str().to_owned());
        Ok(())
    }

    /// Creates symlink `path` -> `target`; whether it resolves inside is checked by [`Tree::check_symlinks`]
    /// once every entry exists (a target may be created by a later entry).
    pub fn symlink(&mut self, path: &ModelPath, target: &str) -> Result<()> {
        if target.is_empty() || target.starts_with('/') || target.contains('\0') {
            return Err(unsafe_(format!("symlink to {target:?} leaves the model directory (only relative targets)")));
        }
        let (parent, name) = self.parent(path)?;
        rustix::fs::symlinkat(target, &parent, name).map_err(exists)?;
        self.symlinks.push(path.clone());
        Ok(())
    }

    /// Follows every symlink of the tree as a consumer would and refuses the first that leaves it,
    /// dangles or loops.
    pub fn check_symlinks(&self) -> std::result::Result<(), (ModelPath, String)> {
        for link in &self.symlinks {
            self.resolve(link).map_err(|reason| (link.clone(), reason))?;
        }
        Ok(())
    }

    fn resolve(&self, link: &ModelPath) -> std::result::Result<(), String> {
        let mut at: Vec<String> = components(link).iter().map(|s| (*s).to_owned()).collect();
        let mut pending: VecDeque<String> = VecDeque::from([at.pop().unwrap_or_default()]);
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    if at.pop().is_none() {
                        return Err("leaves the model directory".into());
                    }
                    continue;
                }
                _ => {}
            }
            let here = if at.is_empty() { part.clone() } else { format!("{}/{part}", at.join("/")) };
            // `at` holds real directories only, so this looks up `part` without following anything.
            let stat = rustix::fs::statat(&self.root, here.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|_| format!("dangles: {here:?} does not exist"))?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Symlink => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(format!("more than {MAX_HOPS} symlinks deep (a loop?)"));
                    }
                    let target = rustix::fs::readlinkat(&self.root, here.as_str(), Vec::new())
                        .map_err(|e| format!("reading {here:?}: {e}"))?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        return Err(format!("{here:?} points at the absolute path {target:?}"));
                    }
                    for part in target.split('/').rev() {
                        pending.push_front(part.to_owned());
                    }
                }
                FileType::Directory => at.push(part),
                _ if pending.iter().all(|p| p.is_empty() || p == ".") => return Ok(()),
                _ => return Err(format!("{here:?} is not a directory")),
            }
        }
        Ok(())
    }

    /// The parent directory of `path` (created when missing) and its last component.
    fn parent<'p>(&self, path: &'p ModelPath) -> Result<(OwnedFd, &'p str)> {
        let parts = components(path);
        let (name, dirs) = parts.split_last().ok_or_else(|| unsafe_("the model directory itself"))?;
        Ok((self.walk(dirs, true)?, name))
    }

    fn parent_existing<'p>(&self, path: &'p ModelPath) -> Result<(OwnedFd, &'p str)> {
        let parts = components(path);
        let (name, dirs) = parts.split_last().ok_or_else(|| unsafe_("the model directory itself"))?;
        Ok((self.walk(dirs, false)?, name))
    }

    /// Opens directory `parts` beneath the root one component at a time, never following a
    /// symlink; creates missing ones when `create`.
    fn walk(&self, parts: &[&str], create: bool) -> Result<OwnedFd> {
        let mut dir = rustix::io::dup(&self.root)?;
        for (i, part) in parts.iter().enumerate() {
            let prefix = || parts[..=i].join("/");
            dir = match rustix::fs::openat(&dir, *part, dir_flags(), Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755))?;
                    rustix::fs::openat(&dir, *part, dir_flags(), Mode::empty())?
                }
                // Linux says ENOTDIR or ELOOP for a symlink, depending on the flags: look.
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let is_link = rustix::fs::statat(&dir, *part, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                    let what = if is_link { "a symlink" } else { "which is not a directory" };
                    return Err(unsafe_(format!("goes through {:?}, {what}", prefix())));
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(dir)
    }
}

fn components(path: &ModelPath) -> Vec<&str> {
    path.as_str().split('/').collect()
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn exists(e: Errno) -> Refusal {
    if e == Errno::EXIST { unsafe_("a second entry with this path") } else { e.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ModelPath {
        ModelPath::parse(s).unwrap()
    }

    fn refused<T>(r: Result<T>) -> String {
        match r {
            Err(Refusal::Unsafe(reason)) => reason,
            Err(Refusal::Io(e)) => panic!("io error instead of a refusal: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn writes_never_pass_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut tree = Tree::open(dir.path()).unwrap();
        tree.mkdir(&p("a/b/c")).unwrap();
        tree.symlink(&p("a/b/c/u"), "../..").unwrap();
        // Symlinks to absolute paths are refused outright; relative ones may still point anywhere
        // until checked, so plant one to the outside by hand.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        for path in ["a/b/c/u/x", "a/b/c/u/d/x", "out/x", "out/sub/x"] {
            assert!(refused(tree.create_file(&p(path))).contains("a symlink"), "{path}");
            assert!(refused(tree.mkdir(&p(path))).contains("a symlink"), "{path}");
            assert!(refused(tree.symlink(&p(path), "y")).contains("a symlink"), "{path}");
        }
        tree.create_file(&p("f")).unwrap();
        assert!(refused(tree.create_file(&p("f/x"))).contains("not a directory"));
        assert!(refused(tree.create_file(&p("f"))).contains("second entry"));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn hard_links_only_to_files_of_this_model() {
        let dir = tempfile::tempdir().unwrap();
        let victim = tempfile::NamedTempFile::new().unwrap();
        let mut tree = Tree::open(dir.path()).unwrap();
        tree.create_file(&p("a/real")).unwrap();
        tree.hard_link(&p("a/real"), &p("b/copy")).unwrap();
        tree.hard_link(&p("b/copy"), &p("c")).unwrap();
        tree.symlink(&p("s"), "a").unwrap();
        tree.symlink(&p("t"), "a/real").unwrap();
        std::os::unix::fs::symlink(victim.path(), dir.path().join("v")).unwrap();
        assert!(refused(tree.hard_link(&p("s/real"), &p("x"))).contains("not a regular file of this model"));
        assert!(refused(tree.hard_link(&p("t"), &p("x"))).contains("not a regular file of this model"));
        assert!(refused(tree.hard_link(&p("v"), &p("x"))).contains("not a regular file of this model"));
        assert!(refused(tree.hard_link(&p("a"), &p("x"))).contains("not a regular file of this model"));
        assert!(refused(tree.hard_link(&p("a/real"), &p("s/x"))).contains("a symlink"));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(dir.path().join("c")).unwrap().nlink(), 3);
    }

    #[test]
    fn symlinks_must_resolve_inside_when_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::open(dir.path()).unwrap();
        tree.mkdir(&p("a/b/c")).unwrap();
        tree.create_file(&p("a/file")).unwrap();
        tree.symlink(&p("a/b/c/u"), "../..").unwrap(); // really `a`: inside
        tree.symlink(&p("ok1"), "a/b/c/u/file").unwrap();
        tree.symlink(&p("a/b/ok2"), "../../ok1").unwrap(); // a chain of two
        tree.symlink(&p("ok3"), "./a/./b/c/").unwrap();
        assert!(tree.check_symlinks().is_ok());

        let bad = [
            ("t", "a/b/c/u/../../.."), // through a symlink, three levels up: outside
            ("a/t", "b/c/u/../.."),    // the same from a subdirectory
            ("loop1", "loop2"),
            ("loop2", "loop1"),
            ("dangling", "a/missing"),
            ("through-file", "a/file/x"),
            ("deep/down/t", "../../a/b/c/u/../.."),
        ];
        for (link, target) in bad {
            let dir = tempfile::tempdir().unwrap();
            let mut tree = Tree::open(dir.path()).unwrap();
            tree.mkdir(&p("a/b/c")).unwrap();
            tree.create_file(&p("a/file")).unwrap();
            tree.symlink(&p("a/b/c/u"), "../..").unwrap();
            tree.symlink(&p(link), target).unwrap();
            if link == "loop1" {
                tree.symlink(&p("loop2"), "loop1").unwrap();
            }
            let (which, reason) = tree.check_symlinks().expect_err(link);
            assert_eq!(which.as_str(), link, "{reason}");
        }
        assert!(refused(tree.symlink(&p("abs"), "/etc/passwd")).contains("leaves the model directory"));
    }
}
