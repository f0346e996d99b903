//! Turning verified blobs into a model directory: single-file layers are hard-linked from the blob
//! store, archives are extracted with every entry checked. Work happens in a staging directory under
//! `tmp/` that is renamed into `models/sha256/<hex>` only when complete.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::CStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{FileType, Mode};
use sha2::{Digest, Sha256};

use super::Error;
use super::allowance::{self, Allowance};
use super::budget::ENTRY_COST;
use super::index::{self, FileSum, Sums};
use super::layout::COMPLETE;
use super::store::{Store, digest_hex};
use super::tree::{PathKey, Refusal, Tree, path_key};
use super::walk::{Visitor, open_dir, remove_tree, walk};
use crate::modelpack::{LayerFormat, Manifest, ModelPath, layer};
use crate::verify::model_signing::Statement;

/// Extraction bound for a model when none is given: a generous multiple of the compressed size of
/// all its archive layers, never below 1 GiB (so small archives of zeros still extract). One budget
/// for the model, not one per layer: many small layers must not multiply it.
pub fn default_extract_limit(archive_bytes: u64) -> u64 {
    archive_bytes.saturating_mul(20).max(1 << 30)
}

/// Entries one model may create (files, directories, links) unless the pull raises it: inodes of
/// the node's filesystem are finite, and a small gzip layer can name millions of them.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// Bytes of tar headers and extension records (GNU long names, PAX) before one entry: tar reads
/// them into memory, so they are bounded on their own (a path is at most 4 KiB anyway).
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Bounds on what one model may extract.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Decompressed bytes of all the model's archive layers together, headers and padding included
    /// (default: a multiple of their total size, see [`default_extract_limit`]).
    pub extract_bytes: Option<u64>,
    /// Inodes per model, over all layers (implicit parent directories included); a tar entry that
    /// creates none still counts once.
    pub entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { extract_bytes: None, entries: DEFAULT_MAX_ENTRIES }
    }
}

/// Builds the model directory for `manifest`; returns its path and how many files (regular files
/// and links) it holds.
pub fn materialise(
    store: &Store,
    manifest_digest: &str,
    manifest: &Manifest,
    diff_ids: &[String],
    limits: Limits,
) -> Result<(PathBuf, usize), Error> {
    materialise_signed(store, manifest_digest, manifest, diff_ids, limits, None)
}

/// [`materialise`], and with `signed` the built tree must be exactly the statement's files (see
/// [`super::signed`]) before anything is published.
pub fn materialise_signed(
    store: &Store,
    manifest_digest: &str,
    manifest: &Manifest,
    diff_ids: &[String],
    limits: Limits,
    signed: Option<&Statement>,
) -> Result<(PathBuf, usize), Error> {
    let target = store.model_dir(manifest_digest)?;
    let staging = store.tmp_path(super::layout::Tmp::Model(digest_hex(manifest_digest)?));
    remove_tree(&staging)?;
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let hashes = RefCell::new(index::Writer::create(store, digest_hex(manifest_digest)?)?);
    let built = build(store, &staging, manifest_digest, manifest, diff_ids, limits, &hashes).and_then(|files| {
        if let Some(statement) = signed {
            let index = hashes.borrow_mut().written()?.to_path_buf();
            super::signed::check_index(&index, statement)?;
        }
        Ok(files)
    });
    let files = match built {
        Ok(files) => files,
        Err(e) => {
            let _ = remove_tree(&staging);
            hashes.into_inner().abort();
            return Err(e);
        }
    };
    seal(&staging, Seal::Below)?;
    hashes.into_inner().commit(store, digest_hex(manifest_digest)?)?;
    store.sync_filesystem()?;
    let hex = digest_hex(manifest_digest)?;
    if store.is_complete(hex) {
        // Another pull finished first; its copy is identical (and sealed here too, should that
        // pull have died between its rename and its seal).
        remove_tree(&staging)?;
        seal(&target, Seal::Top)?;
    } else {
        remove_tree(&target)?;
        fs::rename(&staging, &target).map_err(|e| Error::io(&target, e))?;
        // Moving a directory to another parent rewrites its `..`, which needs write permission on
        // it: without CAP_DAC_OVERRIDE (a pull Job drops every capability) not even root may move
        // a sealed one. So its top is sealed only once it is in place.
        seal(&target, Seal::Top)?;
        store.sync_dir(target.parent().unwrap_or(store.root()))?;
        store.mark_complete(hex, manifest_digest)?;
    }
    if let Some(statement) = signed {
        super::signed::record(store, hex, statement)?;
    }
    Ok((target, files))
}

/// Extracts the layers into `staging` through a [`Tree`] and writes the completion marker; the
/// caller removes it on error.
fn build(
    store: &Store,
    staging: &Path,
    manifest_digest: &str,
    manifest: &Manifest,
    diff_ids: &[String],
    limits: Limits,
    hashes: &RefCell<index::Writer>,
) -> Result<usize, Error> {
    // Everything written from here on is charged to the budget before it is written: the staging
    // directory and the index (an entry each), every entry, file byte and index line.
    let room = Rc::new(allowance::for_model(store, manifest_digest, manifest, store.budget())?);
    let built = room
        .charge(ENTRY_COST)
        .and_then(|()| hashes.borrow_mut().metered(room.clone()))
        .and_then(|()| Ok(Tree::open(staging, limits.entries)?.metered(room.clone())))
        .map_err(|e| Error::io(staging, e))
        .and_then(|mut tree| {
            let files = extract_all(store, staging, manifest, diff_ids, limits, hashes, &mut tree)?;
            check_symlinks(&mut tree)?;
            Ok(files)
        });
    built.map_err(|e| room.explain(e))
}

/// Extracts the layers into `staging` through `tree`; returns how many files it created.
fn extract_all(
    store: &Store,
    staging: &Path,
    manifest: &Manifest,
    diff_ids: &[String],
    limits: Limits,
    hashes: &RefCell<index::Writer>,
    tree: &mut Tree,
) -> Result<usize, Error> {
    let mut claimed = HashSet::new();
    let sums = RefCell::new(Sums::default());
    let mut archive_bytes = 0u64;
    for descriptor in &manifest.layers {
        if !layer(descriptor)?.format().is_single_file() {
            archive_bytes = archive_bytes.saturating_add(u64::try_from(descriptor.size).unwrap_or(0));
        }
    }
    let meter = Rc::new(Meter::new(limits.extract_bytes.unwrap_or_else(|| default_extract_limit(archive_bytes))));
    for (index, descriptor) in manifest.layers.iter().enumerate() {
        let l = layer(descriptor)?;
        let blob = store.blob_path(&descriptor.digest)?;
        let refuse = |entry: &str, r: Refusal| match r {
            Refusal::Unsafe(reason) => {
                Error::UnsafeEntry { layer: descriptor.digest.clone(), entry: entry.to_owned(), reason }
            }
            Refusal::TooManyEntries => {
                Error::TooManyEntries { layer: descriptor.digest.clone(), limit: limits.entries }
            }
            Refusal::Io(e) => Error::io(&staging.join(entry), e),
        };
        if l.format().is_single_file() {
            claim(&mut claimed, &l.path)?;
            tree.link_blob(&blob, &l.path).map_err(|r| refuse(l.path.as_str(), r))?;
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(digest_hex(&descriptor.digest)?, &mut sha256)
                .map_err(|_| Error::InvalidDigest(descriptor.digest.clone()))?;
            sums.borrow_mut().insert(l.path.as_str(), FileSum { sha256, size: size_of(descriptor.size) });
            continue;
        }
        let file = File::open(&blob).map_err(|e| Error::io(&blob, e))?;
        let reader: Box<dyn Read> = match l.format() {
            LayerFormat::Tar => Box::new(file),
            LayerFormat::TarGzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            LayerFormat::TarZstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(&blob, e))?),
            LayerFormat::Raw | LayerFormat::SingleFile(_) => unreachable!("handled above"),
        };
        let mut metered =
            Metered { inner: HashingReader { inner: reader, hasher: Sha256::new() }, meter: meter.clone() };
        let announced = Announced { path: &l.path, directory: l.directory };
        let layer = Layer::new(&descriptor.digest, &meter, limits.entries, Some(&sums), Some(announced));
        layer.extract(&mut metered, tree, &mut claimed)?;
        // Read what tar left unread (padding, trailing bytes), so the diffId covers the whole
        // stream; the meter bounds this too.
        io::copy(&mut metered, &mut io::sink()).map_err(|e| layer.read_error(e))?;
        if let Some(expected) = diff_ids.get(index) {
            let actual = format!("sha256:{}", hex::encode(metered.inner.hasher.finalize()));
            if &actual != expected {
                return Err(Error::DiffIdMismatch {
                    layer: descriptor.digest.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
    }
    // The index records the tree as it is now, whole: what the scrub compares with.
    hashes.borrow_mut().add_tree(open_dir(staging)?, &sums.borrow()).map_err(|e| Error::io(staging, e))?;
    Ok(claimed.len())
}

/// Extracts one uncompressed tar stream into the empty directory `dir` under the same rules as a
/// pull (for the fuzz target and tests): entries checked, links kept inside, limits enforced.
/// Returns how many files (regular files and links) it created.
pub fn extract_tar(reader: &mut dyn Read, dir: &Path, limits: Limits) -> Result<usize, Error> {
    let mut tree = Tree::open(dir, limits.entries).map_err(|e| Error::io(dir, e))?;
    let mut claimed = HashSet::new();
    let limit = limits.extract_bytes.unwrap_or_else(|| default_extract_limit(0));
    let meter = Rc::new(Meter::new(limit));
    let mut metered = Metered { inner: reader, meter: meter.clone() };
    let layer = Layer::new("(archive)", &meter, limits.entries, None, None);
    layer.extract(&mut metered, &mut tree, &mut claimed)?;
    check_symlinks(&mut tree)?;
    Ok(claimed.len())
}

fn check_symlinks(tree: &mut Tree) -> Result<(), Error> {
    tree.check_symlinks().map_err(|refused| Error::UnsafeEntry {
        layer: String::from("(the finished model)"),
        entry: refused.link,
        reason: format!("symlink {}", refused.reason),
    })
}

fn claim(claimed: &mut HashSet<PathKey>, path: &ModelPath) -> Result<(), Error> {
    if !claimed.insert(path_key(path)) {
        return Err(Error::DuplicatePath(path.as_str().to_owned()));
    }
    Ok(())
}

/// Hashes what is written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
    /// The cache budget every byte is charged to before it is written.
    room: Option<Rc<Allowance>>,
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(room) = &self.room {
            room.charge(buf.len() as u64)?;
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn size_of(size: i64) -> u64 {
    u64::try_from(size).unwrap_or(0)
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Counts every decompressed byte of the model's archive layers against its limit, and the bytes read while tar looks
/// for the next entry (headers, long names, PAX records, which it buffers) against
/// [`MAX_HEADER_BYTES`]. Shared with the extraction loop, which says when a header starts.
struct Meter {
    limit: u64,
    total: Cell<u64>,
    header: Cell<Option<u64>>,
    exceeded: Cell<Option<Exceeded>>,
}

#[derive(Clone, Copy)]
enum Exceeded {
    Bytes,
    Header,
}

impl Meter {
    fn new(limit: u64) -> Meter {
        Meter { limit, total: Cell::new(0), header: Cell::new(None), exceeded: Cell::new(None) }
    }
}

struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        let n = self.inner.read(buf)?;
        m.total.set(m.total.get().saturating_add(n as u64));
        if m.total.get() > m.limit {
            m.exceeded.set(Some(Exceeded::Bytes));
        }
        if let Some(header) = m.header.get() {
            m.header.set(Some(header + n as u64));
            if header + n as u64 > MAX_HEADER_BYTES {
                m.exceeded.set(Some(Exceeded::Header));
            }
        }
        if m.exceeded.get().is_some() {
            return Err(io::Error::other("extraction limit"));
        }
        Ok(n)
    }
}

/// One archive layer being extracted.
struct Layer<'a> {
    digest: &'a str,
    meter: &'a Meter,
    max_entries: u64,
    /// Where the sums of the regular files it writes are recorded, hashed while written (for the
    /// index, which `scrub` compares with).
    sums: Option<&'a RefCell<Sums>>,
    /// What the layer's annotations say it holds (none for [`extract_tar`]'s bare archives), and
    /// whether an entry was that.
    announced: Option<Announced<'a>>,
    found: Cell<bool>,
}

impl<'a> Layer<'a> {
    fn new(
        digest: &'a str,
        meter: &'a Meter,
        max_entries: u64,
        sums: Option<&'a RefCell<Sums>>,
        announced: Option<Announced<'a>>,
    ) -> Layer<'a> {
        Layer { digest, meter, max_entries, sums, announced, found: Cell::new(false) }
    }
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeEntry { layer: self.digest.to_owned(), entry: entry.to_owned(), reason: reason.into() }
    }

    fn too_many(&self) -> Error {
        Error::TooManyEntries { layer: self.digest.to_owned(), limit: self.max_entries }
    }

    /// A read error, or the limit the meter stopped at.
    fn read_error(&self, e: io::Error) -> Error {
        match self.meter.exceeded.get() {
            Some(Exceeded::Bytes) => Error::ExtractionLimit { layer: self.digest.to_owned(), limit: self.meter.limit },
            Some(Exceeded::Header) => self.unsafe_entry(
                "(tar headers)",
                format!("more than {MAX_HEADER_BYTES} bytes of headers and extension records for one entry"),
            ),
            None => Error::Archive { layer: self.digest.to_owned(), reason: e.to_string() },
        }
    }

    fn extract(&self, reader: &mut dyn Read, tree: &mut Tree, claimed: &mut HashSet<PathKey>) -> Result<(), Error> {
        let mut archive = tar::Archive::new(reader);
        let mut iter = archive.entries().map_err(|e| self.read_error(e))?;
        loop {
            self.meter.header.set(Some(0));
            let Some(entry) = iter.next() else { break };
            self.meter.header.set(None);
            let mut entry = entry.map_err(|e| self.read_error(e))?;
            let created = tree.created();
            self.entry(&mut entry, tree, claimed)?;
            // Every entry counts, even one that creates nothing (an existing directory, say).
            if tree.created() == created {
                tree.charge_entry().map_err(|_| self.too_many())?;
            }
            // Drain what the entry did not use (a directory's data, say) here rather than inside
            // the next header read, so the header bound measures headers only.
            io::copy(&mut entry, &mut io::sink()).map_err(|e| self.read_error(e))?;
        }
        self.meter.header.set(None);
        match self.announced {
            Some(a) if !self.found.get() => Err(Error::Archive {
                layer: self.digest.to_owned(),
                reason: format!("{} its annotations announce is not in it", a.describe()),
            }),
            _ => Ok(()),
        }
    }

    fn entry<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        tree: &mut Tree,
        claimed: &mut HashSet<PathKey>,
    ) -> Result<(), Error> {
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let path = match ModelPath::parse(&raw) {
            Ok(p) => p,
            // The archive's own top directory (`./`) is harmless.
            Err(crate::modelpack::PathError::ModelRoot(_)) if kind.is_dir() => return Ok(()),
            Err(e) => return Err(self.unsafe_entry(&raw, e.to_string())),
        };
        let mode = entry.header().mode().unwrap_or(0o644);
        if mode & 0o7000 != 0 {
            return Err(self.unsafe_entry(&raw, "setuid, setgid or sticky bit"));
        }
        let refuse = |r: Refusal| match r {
            Refusal::Unsafe(reason) => self.unsafe_entry(&raw, reason),
            Refusal::TooManyEntries => self.too_many(),
            Refusal::Io(e) => Error::Io { path: raw.clone(), error: e },
        };
        let link_name = |entry: &tar::Entry<'_, R>| {
            entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
        };
        let metadata = matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        );
        if let (Some(a), false) = (self.announced, metadata) {
            let announced = check_announced(a, &path, kind).map_err(|reason| self.unsafe_entry(&raw, reason))?;
            self.found.set(self.found.get() || announced);
        }
        if !kind.is_dir() && !metadata {
            claim(claimed, &path).map_err(|_| self.unsafe_entry(&raw, "a second file with this path"))?;
        }
        match kind {
            tar::EntryType::Directory => tree.mkdir(&path).map_err(refuse),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let out = tree.create_file(&path).map_err(refuse)?;
                let mut out = HashingWriter { inner: out, hasher: Sha256::new(), size: 0, room: tree.room() };
                io::copy(entry, &mut out).map_err(|e| match self.meter.exceeded.get() {
                    Some(_) => self.read_error(e),
                    None => Error::Io { path: raw.clone(), error: e },
                })?;
                if let Some(sums) = self.sums {
                    let sum = FileSum { sha256: out.hasher.finalize_reset().into(), size: out.size };
                    sums.borrow_mut().insert(path.as_str(), sum);
                }
                out.inner
                    .set_permissions(fs::Permissions::from_mode(0o444 | (mode & 0o111)))
                    .map_err(|e| Error::Io { path: raw.clone(), error: e })
            }
            tar::EntryType::Symlink => {
                let target = link_name(entry);
                tree.symlink(&path, &target).map_err(refuse)
            }
            tar::EntryType::Link => {
                let target = link_name(entry);
                let source = ModelPath::parse(&target)
                    .map_err(|e| self.unsafe_entry(&raw, format!("hard link to {target:?}: {e}")))?;
                tree.hard_link(&source, &path).map_err(refuse)?;
                if let Some(sums) = self.sums {
                    sums.borrow_mut().link(source.as_str(), path.as_str());
                }
                Ok(())
            }
            _ if metadata => Ok(()),
            other => Err(self.unsafe_entry(
                &raw,
                format!("unsupported entry type {other:?} (devices, FIFOs and sockets are refused)"),
            )),
        }
    }
}

/// What an archive layer's annotations say it holds: the one regular file `path`, or, when
/// `directory`, the directory `path` and entries beneath it.
#[derive(Clone, Copy)]
struct Announced<'a> {
    path: &'a ModelPath,
    directory: bool,
}

impl Announced<'_> {
    fn describe(&self) -> String {
        if self.directory {
            format!("the directory \"{}/\"", self.path)
        } else {
            format!("the file {:?}", self.path.as_str())
        }
    }
}

/// Whether an archive entry is one its layer announced: `Ok(true)` for the announced path itself
/// (or an entry beneath an announced directory), `Ok(false)` for a directory above it (harmless:
/// it would be created anyway), the reason otherwise. Policies and `inspect` see the announced
/// path, so nothing else may be published from the layer.
fn check_announced(a: Announced<'_>, path: &ModelPath, kind: tar::EntryType) -> Result<bool, String> {
    let (announced, at) = (a.path.as_str(), path.as_str());
    let below = |upper: &str, lower: &str| lower.strip_prefix(upper).is_some_and(|rest| rest.starts_with('/'));
    let hint = "(an archive of a directory is announced with a trailing '/')";
    let what = || match kind {
        tar::EntryType::Directory => "a directory",
        tar::EntryType::Symlink => "a symlink",
        tar::EntryType::Link => "a hard link",
        tar::EntryType::Regular | tar::EntryType::Continuous => "a regular file",
        _ => "another kind of entry",
    };
    let regular = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
    if at == announced {
        return match (a.directory, kind.is_dir(), regular) {
            (true, true, _) | (false, _, true) => Ok(true),
            _ => Err(format!("{} is announced; the archive holds {} there {hint}", a.describe(), what())),
        };
    }
    if below(announced, at) {
        return if a.directory {
            Ok(true)
        } else {
            Err(format!("beneath {}, which is no directory {hint}", a.describe()))
        };
    }
    if below(at, announced) && kind.is_dir() {
        return Ok(false);
    }
    Err(format!("not announced: the layer's annotations name only {}", a.describe()))
}

/// Which directories of a model [`seal`] makes read-only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seal {
    /// Every directory below the model's own.
    Below,
    /// The model's own directory.
    Top,
}

/// Makes a finished model read-only: files are already 0444 (0555 if executable), directories
/// become 0555.
fn seal(dir: &Path, which: Seal) -> Result<(), Error> {
    if which == Seal::Top {
        return fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(|e| Error::io(dir, e));
    }
    struct Below;
    impl Visitor for Below {
        type Error = io::Error;
        fn enter(&mut self, at: &OwnedFd, rel: &Path) -> io::Result<()> {
            if rel.as_os_str().is_empty() {
                return Ok(());
            }
            Ok(rustix::fs::fchmod(at, Mode::from_raw_mode(0o555))?)
        }
    }
    walk(open_dir(dir)?, &mut Below).map_err(|e| Error::io(dir, e))
}

/// The files (regular files and links) of a finished model, the marker aside.
pub fn count_files(dir: &Path) -> Result<usize, Error> {
    struct Count(usize);
    impl Visitor for Count {
        type Error = io::Error;
        fn entry(&mut self, _: &OwnedFd, rel: &Path, name: &CStr, _: FileType) -> io::Result<()> {
            let marker = rel.as_os_str().is_empty() && name.to_bytes() == COMPLETE.as_bytes();
            self.0 += usize::from(!marker);
            Ok(())
        }
    }
    let mut count = Count(0);
    walk(open_dir(dir)?, &mut count).map_err(|e| Error::io(dir, e))?;
    Ok(count.0)
}
