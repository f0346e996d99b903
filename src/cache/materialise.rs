//! Turning verified blobs into a model directory: single-file layers are hard-linked from the blob
//! store, archives are extracted with every entry checked. Work happens in a staging directory under
//! `tmp/` that is renamed into `models/sha256/<hex>` only when complete.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Error;
use super::store::{Store, digest_hex};
use crate::modelpack::{LayerFormat, Manifest, ModelPath, layer};

/// Marker written last into a model directory.
pub const COMPLETE: &str = ".complete";

/// Extraction bound for one archive layer when no better figure is known: a generous multiple of
/// the compressed size, never below 1 GiB (so small archives of zeros still extract).
pub fn default_extract_limit(layer_size: u64) -> u64 {
    layer_size.saturating_mul(20).max(1 << 30)
}

/// Builds the model directory for `manifest`; returns its path and the files it holds.
pub fn materialise(
    store: &Store,
    manifest_digest: &str,
    manifest: &Manifest,
    diff_ids: &[String],
    extract_limit: Option<u64>,
) -> Result<(PathBuf, Vec<String>), Error> {
    let target = store.model_dir(manifest_digest)?;
    let staging = store.tmp_dir().join(format!("model-{}-{}", digest_hex(manifest_digest)?, std::process::id()));
    remove_tree(&staging)?;
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let result = build(store, &staging, manifest, diff_ids, extract_limit);
    let files = match result {
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

fn build(
    store: &Store,
    staging: &Path,
    manifest: &Manifest,
    diff_ids: &[String],
    extract_limit: Option<u64>,
) -> Result<Vec<String>, Error> {
    let mut claimed = BTreeSet::new();
    for (index, descriptor) in manifest.layers.iter().enumerate() {
        let l = layer(descriptor)?;
        let blob = store.blob_path(&descriptor.digest)?;
        if l.format().is_single_file() {
            claim(&mut claimed, &l.path)?;
            let dest = l.path.under(staging);
            create_parents(staging, &dest)?;
            fs::hard_link(&blob, &dest).map_err(|e| Error::io(&dest, e))?;
            continue;
        }
        let size = u64::try_from(descriptor.size).unwrap_or(0);
        let limit = extract_limit.unwrap_or_else(|| default_extract_limit(size));
        let file = File::open(&blob).map_err(|e| Error::io(&blob, e))?;
        let reader: Box<dyn Read> = match l.format() {
            LayerFormat::Tar => Box::new(file),
            LayerFormat::TarGzip => Box::new(flate2::read::GzDecoder::new(file)),
            LayerFormat::TarZstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(&blob, e))?),
            LayerFormat::Raw | LayerFormat::SingleFile(_) => unreachable!("handled above"),
        };
        let mut hashing = HashingReader { inner: reader, hasher: Sha256::new() };
        extract(&mut hashing, staging, &mut claimed, limit, &descriptor.digest)?;
        // Read what tar left unread (padding), so the diffId covers the whole stream.
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| Error::io(&blob, e))?;
        if let Some(expected) = diff_ids.get(index) {
            let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
            if &actual != expected {
                return Err(Error::DiffIdMismatch {
                    layer: descriptor.digest.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
    }
    Ok(claimed.into_iter().collect())
}

fn claim(claimed: &mut BTreeSet<String>, path: &ModelPath) -> Result<(), Error> {
    if !claimed.insert(path.as_str().to_owned()) {
        return Err(Error::DuplicatePath(path.as_str().to_owned()));
    }
    Ok(())
}

/// Creates the parent directories of `dest`, refusing to go through anything that is not a real
/// directory inside `root` (a symlink planted by an archive must not redirect later writes).
fn create_parents(root: &Path, dest: &Path) -> Result<(), Error> {
    let parent = dest.parent().unwrap_or(root);
    let relative = parent.strip_prefix(root).map_err(|_| Error::UnsafeEntry {
        layer: String::new(),
        entry: dest.display().to_string(),
        reason: "outside the model directory".into(),
    })?;
    let mut current = root.to_path_buf();
    for component in relative.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Error::UnsafeEntry {
                    layer: String::new(),
                    entry: current.strip_prefix(root).unwrap_or(&current).display().to_string(),
                    reason: "a parent of another file is not a directory".into(),
                });
            }
            Err(_) => fs::create_dir(&current).map_err(|e| Error::io(&current, e))?,
        }
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

fn extract(
    reader: &mut dyn Read,
    root: &Path,
    claimed: &mut BTreeSet<String>,
    limit: u64,
    layer_digest: &str,
) -> Result<(), Error> {
    let unsafe_entry = |entry: &str, reason: &str| Error::UnsafeEntry {
        layer: layer_digest.to_owned(),
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    };
    let mut archive = tar::Archive::new(reader);
    let mut written = 0u64;
    let entries =
        archive.entries().map_err(|e| Error::Archive { layer: layer_digest.to_owned(), reason: e.to_string() })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::Archive { layer: layer_digest.to_owned(), reason: e.to_string() })?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let path = match ModelPath::parse(&raw) {
            Ok(p) => p,
            // The archive's own top directory (`./`) is harmless.
            Err(crate::modelpack::PathError::ModelRoot(_)) if kind.is_dir() => continue,
            Err(e) => return Err(unsafe_entry(&raw, &e.to_string())),
        };
        let dest = path.under(root);
        let mode = entry.header().mode().unwrap_or(0o644);
        if mode & 0o7000 != 0 {
            return Err(unsafe_entry(&raw, "setuid, setgid or sticky bit"));
        }
        match kind {
            tar::EntryType::Directory => {
                create_parents(root, &dest.join("x"))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                claim(claimed, &path).map_err(|_| unsafe_entry(&raw, "a second file with this path"))?;
                create_parents(root, &dest)?;
                let mut out = File::create_new(&dest).map_err(|e| Error::io(&dest, e))?;
                let budget = limit.saturating_sub(written);
                let copied = io::copy(&mut (&mut entry).take(budget + 1), &mut out).map_err(|e| Error::io(&dest, e))?;
                if copied > budget {
                    drop(out);
                    return Err(Error::ExtractionLimit { layer: layer_digest.to_owned(), limit });
                }
                written += copied;
                out.flush().map_err(|e| Error::io(&dest, e))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(0o444 | (mode & 0o111)))
                    .map_err(|e| Error::io(&dest, e))?;
            }
            tar::EntryType::Symlink => {
                let target =
                    entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                if !link_stays_inside(&path, &target) {
                    return Err(unsafe_entry(&raw, &format!("symlink to {target:?} leaves the model directory")));
                }
                claim(claimed, &path).map_err(|_| unsafe_entry(&raw, "a second file with this path"))?;
                create_parents(root, &dest)?;
                std::os::unix::fs::symlink(&target, &dest).map_err(|e| Error::io(&dest, e))?;
            }
            tar::EntryType::Link => {
                let target =
                    entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                let source = ModelPath::parse(&target)
                    .map_err(|e| unsafe_entry(&raw, &format!("hardlink to {target:?}: {e}")))?
                    .under(root);
                let meta = fs::symlink_metadata(&source)
                    .map_err(|_| unsafe_entry(&raw, &format!("hardlink to {target:?}, which is not in the archive")))?;
                if !meta.is_file() {
                    return Err(unsafe_entry(&raw, &format!("hardlink to {target:?}, which is not a regular file")));
                }
                claim(claimed, &path).map_err(|_| unsafe_entry(&raw, "a second file with this path"))?;
                create_parents(root, &dest)?;
                fs::hard_link(&source, &dest).map_err(|e| Error::io(&dest, e))?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(unsafe_entry(
                    &raw,
                    &format!("unsupported entry type {other:?} (devices, FIFOs and sockets are refused)"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether a relative symlink at `path` pointing to `target` resolves inside the model directory.
fn link_stays_inside(path: &ModelPath, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let mut depth: Vec<&str> = path.as_str().split('/').collect();
    depth.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            other => depth.push(other),
        }
    }
    !depth.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets() {
        let p = |s| ModelPath::parse(s).unwrap();
        assert!(link_stays_inside(&p("a/b"), "c"));
        assert!(link_stays_inside(&p("a/b"), "../c"));
        assert!(!link_stays_inside(&p("a/b"), "../../c"));
        assert!(!link_stays_inside(&p("b"), ".."));
        assert!(!link_stays_inside(&p("a/b"), "/etc/passwd"));
        assert!(!link_stays_inside(&p("a/b"), ""));
    }
}
