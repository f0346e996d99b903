//! A model directory under construction, written only through directory handles opened beneath
//! its root one component at a time with `O_NOFOLLOW`: no entry of an archive can make a later
//! entry write, link or read through a symlink, whatever the symlinks it planted point at.
//! (`openat2(RESOLVE_BENEATH)` would do the walk in one call, but nodes still run kernels older
//! than 5.6, and the walk is what it does anyway.)
//!
//! The rules, each enforced here rather than by looking at path strings:
//! - every parent of every entry is a real directory of this tree (never a symlink);
//! - a hard link's source is a regular file this model itself created;
//! - every symlink, when finally followed, resolves to something inside the tree;
//! - no entry takes the name of the completion marker earlier versions wrote (`.complete`), which
//!   `scrub` still skips at the top of a model;
//! - every inode created counts against the model's entry limit (implicit parents too), and every
//!   directory lookup against a budget (deep paths and symlinks cost time per component).
//!
//! Paths are remembered as 128-bit hashes, not strings: a path may be 4 KiB and a model has up to
//! the entry limit of them.

use std::collections::{HashSet, VecDeque};
use std::ffi::CStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::allowance::Allowance;
use super::budget::ENTRY_COST;
use super::layout::COMPLETE;
use super::walk::{Visitor, dir_flags, walk};
use crate::modelpack::ModelPath;

/// Symlinks followed while resolving one symlink, as Linux's own limit (MAXSYMLINKS).
const MAX_HOPS: usize = 40;

/// Directory lookups (one per path component walked or resolved) one model may cost: well above
/// what real models need (100,000 entries 20 levels deep), and seconds of system calls at worst,
/// where 100,000 paths or symlinks of 2,048 components would cost 200 million.
pub const MAX_LOOKUPS: u64 = 1 << 21;

/// Why an entry was refused: the caller names the layer and entry.
#[derive(Debug)]
pub enum Refusal {
    /// The archive tried something this tree does not allow.
    Unsafe(String),
    /// The model would have more inodes than its entry limit.
    TooManyEntries,
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

/// A path as remembered: the first 128 bits of the SHA-256 of its normalised form.
pub type PathKey = u128;

pub fn path_key(path: &ModelPath) -> PathKey {
    str_key(path.as_str())
}

/// [`path_key`] of a path already in normal form (as a walk of the tree or an index gives it).
pub fn str_key(path: &str) -> PathKey {
    let digest = Sha256::digest(path.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(key)
}

pub struct Tree {
    root: OwnedFd,
    /// Regular files created by this model (the only valid hard-link sources).
    files: HashSet<PathKey>,
    /// Inodes created so far, and the most allowed.
    created: u64,
    max_entries: u64,
    /// Directory lookups made so far, and the most allowed (see [`MAX_LOOKUPS`]).
    lookups: u64,
    max_lookups: u64,
    /// The cache budget every entry is charged to, when the tree is a model of the cache.
    room: Option<Rc<Allowance>>,
}

impl Tree {
    /// Opens the (empty) staging directory `root`; the tree will create at most `max_entries` inodes.
    pub fn open(root: &Path, max_entries: u64) -> std::io::Result<Tree> {
        let root = rustix::fs::open(root, dir_flags(), Mode::empty())?;
        Ok(Tree {
            root,
            files: HashSet::new(),
            created: 0,
            max_entries,
            lookups: 0,
            max_lookups: MAX_LOOKUPS,
            room: None,
        })
    }

    /// Charges every entry created from now on [`ENTRY_COST`] of `room`: an entry that does not
    /// fit is refused (`StorageFull`) before it is created.
    pub fn metered(mut self, room: Rc<Allowance>) -> Tree {
        self.room = Some(room);
        self
    }

    /// The budget the tree's entries are charged to (for the data written into its files).
    pub fn room(&self) -> Option<Rc<Allowance>> {
        self.room.clone()
    }

    /// Inodes created so far.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Counts one entry against the limit (every inode is counted before it is created; the
    /// caller charges entries that create none).
    pub fn charge_entry(&mut self) -> Result<()> {
        if self.created >= self.max_entries {
            return Err(Refusal::TooManyEntries);
        }
        self.created += 1;
        Ok(())
    }

    /// Counts an inode or directory entry about to be created: against the entry limit and the
    /// budget.
    fn charge_inode(&mut self) -> Result<()> {
        self.charge_entry()?;
        match &self.room {
            Some(room) => room.charge(ENTRY_COST).map_err(Refusal::Io),
            None => Ok(()),
        }
    }

    fn charge_lookup(&mut self) -> Result<()> {
        self.lookups += 1;
        if self.lookups > self.max_lookups {
            return Err(unsafe_(format!(
                "the model's paths and symlinks cost more than {} directory lookups (too deep)",
                self.max_lookups
            )));
        }
        Ok(())
    }

    /// Creates directory `path` and its parents (an existing real directory is fine).
    pub fn mkdir(&mut self, path: &ModelPath) -> Result<()> {
        not_reserved(path)?;
        self.walk(&components(path), true).map(drop)
    }

    /// Creates regular file `path`, which must not exist yet.
    pub fn create_file(&mut self, path: &ModelPath) -> Result<File> {
        not_reserved(path)?;
        let (parent, name) = self.parent(path)?;
        self.charge_inode()?;
        let file = create_excl(&parent, name)?;
        self.files.insert(path_key(path));
        Ok(file)
    }

    /// Hard-links `blob` (a file of the store, outside the tree) as `path`.
    pub fn link_blob(&mut self, blob: &Path, path: &ModelPath) -> Result<()> {
        not_reserved(path)?;
        let (parent, name) = self.parent(path)?;
        self.charge_inode()?;
        rustix::fs::linkat(CWD, blob, &parent, name, AtFlags::empty()).map_err(exists)?;
        self.files.insert(path_key(path));
        Ok(())
    }

    /// Hard-links `source`, a regular file this model created, as `path`.
    pub fn hard_link(&mut self, source: &ModelPath, path: &ModelPath) -> Result<()> {
        not_reserved(path)?;
        if !self.files.contains(&path_key(source)) {
            return Err(unsafe_(format!("hard link to {source:?}, which is not a regular file of this model")));
        }
        let (from_dir, from_name) = self.parent_existing(source)?;
        let (parent, name) = self.parent(path)?;
        self.charge_inode()?;
        // No AT_SYMLINK_FOLLOW: the link is to the source entry itself.
        rustix::fs::linkat(&from_dir, from_name, &parent, name, AtFlags::empty()).map_err(exists)?;
        self.files.insert(path_key(path));
        Ok(())
    }

    /// Creates symlink `path` -> `target`; whether it resolves inside is checked by [`Tree::check_symlinks`]
    /// once every entry exists (a target may be created by a later entry).
    pub fn symlink(&mut self, path: &ModelPath, target: &str) -> Result<()> {
        not_reserved(path)?;
        if target.is_empty() || target.starts_with('/') || target.contains('\0') {
            return Err(unsafe_(format!("symlink to {target:?} leaves the model directory (only relative targets)")));
        }
        let (parent, name) = self.parent(path)?;
        self.charge_inode()?;
        rustix::fs::symlinkat(target, &parent, name).map_err(exists)
    }

    /// Follows every symlink of the tree as a consumer would and refuses the first that leaves it,
    /// dangles or loops. The symlinks are found by walking the tree, not remembered: a model may
    /// hold the entry limit of them, each with a 4 KiB path.
    pub fn check_symlinks(&mut self) -> std::result::Result<(), LinkRefused> {
        struct Check<'t>(&'t mut Tree);
        impl Visitor for Check<'_> {
            type Error = LinkRefused;
            fn entry(
                &mut self,
                dir: &OwnedFd,
                rel: &Path,
                name: &CStr,
                kind: FileType,
            ) -> std::result::Result<(), LinkRefused> {
                if kind != FileType::Symlink {
                    return Ok(());
                }
                let name = name.to_string_lossy().into_owned();
                let depth = rel.components().count();
                let at = rustix::io::dup(dir).map_err(std::io::Error::from)?;
                self.0
                    .resolve(at, depth, name.clone())
                    .map_err(|reason| LinkRefused { link: rel.join(&name).to_string_lossy().into_owned(), reason })
            }
        }
        let root = rustix::io::dup(&self.root).map_err(std::io::Error::from)?;
        walk(root, &mut Check(self))
    }

    /// Resolves symlink `name` of `dir` (`depth` levels below the root) with one directory handle
    /// moved a component at a time (`..` is the real parent, as `depth` never goes above the root):
    /// each step costs one lookup, whatever the depth.
    fn resolve(&mut self, mut dir: OwnedFd, mut depth: usize, name: String) -> std::result::Result<(), String> {
        let mut pending: VecDeque<String> = VecDeque::from([name]);
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            if part.is_empty() || part == "." {
                continue;
            }
            self.charge_lookup().map_err(describe)?;
            if part == ".." {
                depth = depth.checked_sub(1).ok_or("leaves the model directory")?;
                dir = rustix::fs::openat(&dir, "..", dir_flags(), Mode::empty()).map_err(|e| e.to_string())?;
                continue;
            }
            // Most components are directories: one system call for those.
            if let Ok(next) = rustix::fs::openat(&dir, part.as_str(), dir_flags(), Mode::empty()) {
                dir = next;
                depth += 1;
                continue;
            }
            let stat = rustix::fs::statat(&dir, part.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|_| format!("dangles: {part:?} does not exist"))?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Symlink => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(format!("more than {MAX_HOPS} symlinks deep (a loop?)"));
                    }
                    let target = rustix::fs::readlinkat(&dir, part.as_str(), Vec::new())
                        .map_err(|e| format!("reading {part:?}: {e}"))?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        return Err(format!("{part:?} points at the absolute path {target:?}"));
                    }
                    for part in target.split('/').rev() {
                        pending.push_front(part.to_owned());
                    }
                }
                _ if pending.iter().all(|p| p.is_empty() || p == ".") => return Ok(()),
                _ => return Err(format!("{part:?} is not a directory")),
            }
        }
        Ok(())
    }

    /// The parent directory of `path` (created when missing) and its last component.
    fn parent<'p>(&mut self, path: &'p ModelPath) -> Result<(OwnedFd, &'p str)> {
        let parts = components(path);
        let (name, dirs) = parts.split_last().ok_or_else(|| unsafe_("the model directory itself"))?;
        Ok((self.walk(dirs, true)?, name))
    }

    fn parent_existing<'p>(&mut self, path: &'p ModelPath) -> Result<(OwnedFd, &'p str)> {
        let parts = components(path);
        let (name, dirs) = parts.split_last().ok_or_else(|| unsafe_("the model directory itself"))?;
        Ok((self.walk(dirs, false)?, name))
    }

    /// Opens directory `parts` beneath the root one component at a time, never following a
    /// symlink; creates missing ones when `create`, each counted as an entry.
    fn walk(&mut self, parts: &[&str], create: bool) -> Result<OwnedFd> {
        let mut dir = rustix::io::dup(&self.root)?;
        for (i, part) in parts.iter().enumerate() {
            self.charge_lookup()?;
            let prefix = || parts[..=i].join("/");
            dir = match rustix::fs::openat(&dir, *part, dir_flags(), Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    self.charge_inode()?;
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

/// The completion marker's name is the cache's, at the top of the tree: no entry may take it
/// (nor make it a directory), or writing the marker could go through what the archive planted.
fn not_reserved(path: &ModelPath) -> Result<()> {
    if path.as_str().split('/').next() == Some(COMPLETE) {
        return Err(unsafe_(format!("{COMPLETE:?} is the cache's completion marker; no entry may use that name")));
    }
    Ok(())
}

fn create_excl(dir: &OwnedFd, name: &str) -> Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o644)).map_err(exists)?;
    Ok(File::from(fd))
}

/// A symlink of the finished tree that does not resolve inside it (or the walk failing).
#[derive(Debug)]
pub struct LinkRefused {
    pub link: String,
    pub reason: String,
}

impl From<std::io::Error> for LinkRefused {
    fn from(e: std::io::Error) -> LinkRefused {
        LinkRefused { link: String::from("(walking the model)"), reason: e.to_string() }
    }
}

fn describe(r: Refusal) -> String {
    match r {
        Refusal::Unsafe(reason) => reason,
        Refusal::TooManyEntries => String::from("too many entries"),
        Refusal::Io(e) => e.to_string(),
    }
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
            Err(Refusal::TooManyEntries) => panic!("too many entries instead of a refusal"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn path_depth_is_paid_from_a_lookup_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::open(dir.path(), u64::MAX).unwrap();
        let deep = vec!["a"; 500].join("/");
        tree.mkdir(&p(&deep)).unwrap();
        for i in 0..4 {
            tree.symlink(&p(&format!("s{i}")), &deep).unwrap();
        }
        // Each resolution costs one lookup per component, not one per component per level.
        let before = tree.lookups;
        assert!(tree.check_symlinks().is_ok());
        assert_eq!(tree.lookups - before, 4 * (1 + 500));

        tree.max_lookups = tree.lookups + 100;
        tree.symlink(&p("one-more"), &deep).unwrap();
        let link = tree.check_symlinks().unwrap_err();
        assert!(link.reason.contains("directory lookups"), "{link:?}");
        assert!(refused(tree.create_file(&p(&format!("{deep}/x")))).contains("directory lookups"));
    }

    #[test]
    fn every_inode_counts_against_the_entry_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::open(dir.path(), 4).unwrap();
        tree.mkdir(&p("a/b")).unwrap();
        tree.create_file(&p("a/f")).unwrap();
        tree.hard_link(&p("a/f"), &p("g")).unwrap();
        assert_eq!(tree.created(), 4);
        for result in [
            tree.mkdir(&p("a/b/c")),
            tree.create_file(&p("h")).map(drop),
            tree.hard_link(&p("a/f"), &p("h")),
            tree.symlink(&p("h"), "a"),
            tree.link_blob(&dir.path().join("a/f"), &p("h")),
            tree.create_file(&p("new/dir/f")).map(drop),
        ] {
            assert!(matches!(result, Err(Refusal::TooManyEntries)), "{result:?}");
        }
        assert!(!dir.path().join("new").exists());
        tree.mkdir(&p("a/b")).unwrap(); // existing: creates nothing
    }

    #[test]
    fn no_entry_takes_the_legacy_marker_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = tempfile::NamedTempFile::new().unwrap();
        let mut tree = Tree::open(dir.path(), u64::MAX).unwrap();
        tree.create_file(&p("w")).unwrap();
        for refusal in [
            refused(tree.create_file(&p(".complete"))),
            refused(tree.mkdir(&p(".complete/x"))),
            refused(tree.symlink(&p(".complete"), "w")),
            refused(tree.hard_link(&p("w"), &p(".complete"))),
            refused(tree.link_blob(victim.path(), &p(".complete"))),
        ] {
            assert!(refusal.contains("completion marker"), "{refusal}");
        }
        tree.create_file(&p("x/.complete")).unwrap(); // only the top-level name is the cache's
    }

    #[test]
    fn writes_never_pass_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut tree = Tree::open(dir.path(), u64::MAX).unwrap();
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
        let mut tree = Tree::open(dir.path(), u64::MAX).unwrap();
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
        let mut tree = Tree::open(dir.path(), u64::MAX).unwrap();
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
            let mut tree = Tree::open(dir.path(), u64::MAX).unwrap();
            tree.mkdir(&p("a/b/c")).unwrap();
            tree.create_file(&p("a/file")).unwrap();
            tree.symlink(&p("a/b/c/u"), "../..").unwrap();
            tree.symlink(&p(link), target).unwrap();
            if link == "loop1" {
                tree.symlink(&p("loop2"), "loop1").unwrap();
            }
            let refused = tree.check_symlinks().expect_err(link);
            // The two links of a loop are both refused; the walk finds either first.
            let expected = if link == "loop1" { vec!["loop1", "loop2"] } else { vec![link] };
            assert!(expected.contains(&refused.link.as_str()), "{link}: {refused:?}");
        }
        assert!(refused(tree.symlink(&p("abs"), "/etc/passwd")).contains("leaves the model directory"));
    }
}
