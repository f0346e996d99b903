//! Turning verified blobs into a model directory: single-file layers are hard-linked from the blob
//! store, archives are extracted with every entry checked. Work happens in a staging directory under
//! `tmp/` that is renamed into `models/sha256/<hex>` only when complete.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::Error;
use super::store::{Store, digest_hex};
use super::tree::{Refusal, Tree};
use crate::modelpack::{LayerFormat, Manifest, ModelPath, layer};

/// Marker written last into a model directory.
pub const COMPLETE: &str = ".complete";

/// Extraction bound for one archive layer when no better figure is known: a generous multiple of
/// the compressed size, never below 1 GiB (so small archives of zeros still extract).
pub fn default_extract_limit(layer_size: u64) -> u64 {
    layer_size.saturating_mul(20).max(1 << 30)
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
    /// Decompressed bytes per archive layer, headers and padding included (default: a multiple of
    /// its size, see [`default_extract_limit`]).
    pub extract_bytes: Option<u64>,
    /// Entries per model, over all layers.
    pub entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { extract_bytes: None, entries: DEFAULT_MAX_ENTRIES }
    }
}

/// Builds the model directory for `manifest`; returns its path and the files it holds.
pub fn materialise(
    store: &Store,
    manifest_digest: &str,
    manifest: &Manifest,
    diff_ids: &[String],
    limits: Limits,
) -> Result<(PathBuf, Vec<String>), Error> {
    let target = store.model_dir(manifest_digest)?;
    let staging = store.tmp_dir().join(format!("model-{}-{}", digest_hex(manifest_digest)?, std::process::id()));
    remove_tree(&staging)?;
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let files = match build(store, &staging, manifest, diff_ids, limits) {
        Ok(files) => files,
        Err(e) => {
            let _ = remove_tree(&staging);
            return Err(e);
        }
    };
    let marker = staging.join(COMPLETE);
    fs::write(&marker, manifest_digest).map_err(|e| Error::io(&marker, e))?;
    fs::set_permissions(&marker, fs::Permissions::from_mode(0o444)).map_err(|e| Error::io(&marker, e))?;
    seal(&staging)?;
    store.sync_filesystem()?;
    if target.join(COMPLETE).exists() {
        // Another pull finished first; its copy is identical.
        remove_tree(&staging)?;
    } else {
        remove_tree(&target)?;
        fs::rename(&staging, &target).map_err(|e| Error::io(&target, e))?;
        store.sync_dir(target.parent().unwrap_or(store.root()))?;
    }
    Ok((target, files))
}

/// Extracts the layers into `staging` through a [`Tree`]; the caller removes it on error.
fn build(
    store: &Store,
    staging: &Path,
    manifest: &Manifest,
    diff_ids: &[String],
    limits: Limits,
) -> Result<Vec<String>, Error> {
    let mut tree = Tree::open(staging).map_err(|e| Error::io(staging, e))?;
    let mut claimed = BTreeSet::new();
    let mut entries = 0u64;
    for (index, descriptor) in manifest.layers.iter().enumerate() {
        let l = layer(descriptor)?;
        let blob = store.blob_path(&descriptor.digest)?;
        let refuse = |entry: &str, r: Refusal| match r {
            Refusal::Unsafe(reason) => {
                Error::UnsafeEntry { layer: descriptor.digest.clone(), entry: entry.to_owned(), reason }
            }
            Refusal::Io(e) => Error::io(&staging.join(entry), e),
        };
        if l.format().is_single_file() {
            count(&mut entries, limits.entries, &descriptor.digest)?;
            claim(&mut claimed, &l.path)?;
            tree.link_blob(&blob, &l.path).map_err(|r| refuse(l.path.as_str(), r))?;
            continue;
        }
        let size = u64::try_from(descriptor.size).unwrap_or(0);
        let limit = limits.extract_bytes.unwrap_or_else(|| default_extract_limit(size));
        let file = File::open(&blob).map_err(|e| Error::io(&blob, e))?;
        let reader: Box<dyn Read> = match l.format() {
            LayerFormat::Tar => Box::new(file),
            LayerFormat::TarGzip => Box::new(flate2::read::GzDecoder::new(file)),
            LayerFormat::TarZstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(&blob, e))?),
            LayerFormat::Raw | LayerFormat::SingleFile(_) => unreachable!("handled above"),
        };
        let meter = Rc::new(Meter::new(limit));
        let mut metered =
            Metered { inner: HashingReader { inner: reader, hasher: Sha256::new() }, meter: meter.clone() };
        let layer = Layer { digest: &descriptor.digest, meter: &meter, max_entries: limits.entries };
        layer.extract(&mut metered, &mut tree, &mut claimed, &mut entries)?;
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
    check_symlinks(&tree)?;
    Ok(claimed.into_iter().collect())
}

/// Extracts one uncompressed tar stream into the empty directory `dir` under the same rules as a
/// pull (for the fuzz target and tests): entries checked, links kept inside, limits enforced.
pub fn extract_tar(reader: &mut dyn Read, dir: &Path, limits: Limits) -> Result<Vec<String>, Error> {
    let mut tree = Tree::open(dir).map_err(|e| Error::io(dir, e))?;
    let mut claimed = BTreeSet::new();
    let limit = limits.extract_bytes.unwrap_or_else(|| default_extract_limit(0));
    let meter = Rc::new(Meter::new(limit));
    let mut metered = Metered { inner: reader, meter: meter.clone() };
    let layer = Layer { digest: "(archive)", meter: &meter, max_entries: limits.entries };
    layer.extract(&mut metered, &mut tree, &mut claimed, &mut 0)?;
    check_symlinks(&tree)?;
    Ok(claimed.into_iter().collect())
}

fn check_symlinks(tree: &Tree) -> Result<(), Error> {
    tree.check_symlinks().map_err(|(link, reason)| Error::UnsafeEntry {
        layer: String::from("(the finished model)"),
        entry: link.to_string(),
        reason: format!("symlink {reason}"),
    })
}

fn count(entries: &mut u64, max: u64, layer: &str) -> Result<(), Error> {
    *entries += 1;
    if *entries > max {
        return Err(Error::TooManyEntries { layer: layer.to_owned(), limit: max });
    }
    Ok(())
}

fn claim(claimed: &mut BTreeSet<String>, path: &ModelPath) -> Result<(), Error> {
    if !claimed.insert(path.as_str().to_owned()) {
        return Err(Error::DuplicatePath(path.as_str().to_owned()));
    }
    Ok(())
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

/// Counts every decompressed byte of a layer against its limit, and the bytes read while tar looks
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
        m.total.set(m.total.get() + n as u64);
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
}

impl Layer<'_> {
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeEntry { layer: self.digest.to_owned(), entry: entry.to_owned(), reason: reason.into() }
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

    fn extract(
        &self,
        reader: &mut dyn Read,
        tree: &mut Tree,
        claimed: &mut BTreeSet<String>,
        entries: &mut u64,
    ) -> Result<(), Error> {
        let mut archive = tar::Archive::new(reader);
        let mut iter = archive.entries().map_err(|e| self.read_error(e))?;
        loop {
            self.meter.header.set(Some(0));
            let Some(entry) = iter.next() else { break };
            self.meter.header.set(None);
            let mut entry = entry.map_err(|e| self.read_error(e))?;
            count(entries, self.max_entries, self.digest)?;
            self.entry(&mut entry, tree, claimed)?;
            // Drain what the entry did not use (a directory's data, say) here rather than inside
            // the next header read, so the header bound measures headers only.
            io::copy(&mut entry, &mut io::sink()).map_err(|e| self.read_error(e))?;
        }
        self.meter.header.set(None);
        Ok(())
    }

    fn entry<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        tree: &mut Tree,
        claimed: &mut BTreeSet<String>,
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
        if !kind.is_dir() && !metadata {
            claim(claimed, &path).map_err(|_| self.unsafe_entry(&raw, "a second file with this path"))?;
        }
        match kind {
            tar::EntryType::Directory => tree.mkdir(&path).map_err(refuse),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut out = tree.create_file(&path).map_err(refuse)?;
                io::copy(entry, &mut out).map_err(|e| match self.meter.exceeded.get() {
                    Some(_) => self.read_error(e),
                    None => Error::Io { path: raw.clone(), error: e },
                })?;
                out.set_permissions(fs::Permissions::from_mode(0o444 | (mode & 0o111)))
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
                tree.hard_link(&source, &path).map_err(refuse)
            }
            _ if metadata => Ok(()),
            other => Err(self.unsafe_entry(
                &raw,
                format!("unsupported entry type {other:?} (devices, FIFOs and sockets are refused)"),
            )),
        }
    }
}

/// Makes a finished model read-only: files 0444 (0555 if executable), directories 0555.
fn seal(dir: &Path) -> Result<(), Error> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            seal(&path)?;
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(|e| Error::io(dir, e))
}

/// Removes a directory tree that [`seal`] made read-only.
pub fn remove_tree(path: &Path) -> Result<(), Error> {
    let Ok(meta) = fs::symlink_metadata(path) else { return Ok(()) };
    if meta.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(|e| Error::io(path, e))?;
        for entry in fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            remove_tree(&entry.map_err(|e| Error::io(path, e))?.path())?;
        }
        fs::remove_dir(path).map_err(|e| Error::io(path, e))
    } else {
        fs::remove_file(path).map_err(|e| Error::io(path, e))
    }
}
