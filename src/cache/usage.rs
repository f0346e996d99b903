//! Measuring the cache: which inodes each model and blob holds (a hard link is one inode, counted
//! once), the filesystem's room, and the inventory every Job reports (a node's ModelCache).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CStr;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode};
use serde::{Deserialize, Serialize};

use super::Error;
use super::budget::{CacheLimit, ENTRY_COST, Space};
use super::gc::{Hold, holders, layer_blobs};
use super::layout::{BLOBS, MODELS, TMP};
use super::store::Store;
use super::walk::{Visitor, dir_flags, walk};

/// Inode numbers with their sizes, per model and blob.
#[derive(Debug, Default)]
pub struct Inventory {
    pub sizes: HashMap<u64, u64>,
    /// Blob hex → inode.
    pub blobs: BTreeMap<String, u64>,
    pub models: BTreeMap<String, ModelInodes>,
    /// [`ENTRY_COST`] for every entry under `tmp/` (partial downloads, models being built).
    pub tmp_entries: u64,
}

#[derive(Debug, Default)]
pub struct ModelInodes {
    /// Regular files of the model directory.
    pub files: BTreeSet<u64>,
    /// The blobs it was built from that are in the store: its manifest and its layers.
    pub blobs: Vec<String>,
    /// What only the model holds besides its files' bytes: [`ENTRY_COST`] for every entry of its
    /// directory (itself, directories, files, links), and its index (bytes and an entry).
    pub own: u64,
}

impl Inventory {
    /// Bytes of every inode once, plus every entry of models and `tmp/` and the models' indexes:
    /// what building a model is charged (see [`super::allowance`]).
    pub fn used(&self) -> u64 {
        let own: u64 = self.models.values().map(|m| m.own).sum();
        self.sizes.values().sum::<u64>().saturating_add(own).saturating_add(self.tmp_entries)
    }

    /// Every inode model `hex` holds: its files and its blobs.
    pub fn model_inodes(&self, hex: &str) -> BTreeSet<u64> {
        let Some(model) = self.models.get(hex) else { return BTreeSet::new() };
        let blobs = model.blobs.iter().filter_map(|b| self.blobs.get(b).copied());
        model.files.iter().copied().chain(blobs).collect()
    }

    pub fn bytes_of(&self, inodes: &BTreeSet<u64>) -> u64 {
        inodes.iter().filter_map(|i| self.sizes.get(i)).sum()
    }

    /// Model `hex`'s size: its inodes and what only it holds.
    pub fn model_bytes(&self, hex: &str) -> u64 {
        let own = self.models.get(hex).map_or(0, |m| m.own);
        self.bytes_of(&self.model_inodes(hex)).saturating_add(own)
    }
}

/// Records regular files' inodes, and counts entries (directories, the root included, and the
/// rest).
struct Inodes<'a> {
    sizes: &'a mut HashMap<u64, u64>,
    found: BTreeSet<u64>,
    entries: u64,
}

impl Visitor for Inodes<'_> {
    type Error = std::io::Error;
    fn enter(&mut self, _: &OwnedFd, _: &Path) -> std::io::Result<()> {
        self.entries += 1;
        Ok(())
    }

    fn entry(&mut self, dir: &OwnedFd, _: &Path, name: &CStr, kind: FileType) -> std::io::Result<()> {
        self.entries += 1;
        if kind == FileType::RegularFile {
            let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            self.sizes.insert(stat.st_ino, u64::try_from(stat.st_size).unwrap_or(0));
            self.found.insert(stat.st_ino);
        }
        Ok(())
    }
}

/// The regular files' inodes under `dir`, and how many entries it holds (itself included).
fn inodes_under(dir: &Path, sizes: &mut HashMap<u64, u64>) -> Result<(BTreeSet<u64>, u64), Error> {
    let Ok(fd) = rustix::fs::open(dir, dir_flags(), Mode::empty()) else { return Ok((BTreeSet::new(), 0)) };
    let mut visitor = Inodes { sizes, found: BTreeSet::new(), entries: 0 };
    walk(fd, &mut visitor).map_err(|e| Error::io(dir, e))?;
    Ok((visitor.found, visitor.entries))
}

/// Model `hex`'s index: its bytes and an entry (nothing when it has none).
fn index_cost(store: &Store, hex: &str) -> u64 {
    fs::symlink_metadata(store.index_path(hex)).map_or(0, |m| m.len().saturating_add(ENTRY_COST))
}

fn entries(dir: &Path) -> Result<Vec<String>, Error> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Walks blobs, models and partial downloads.
pub fn measure(store: &Store) -> Result<Inventory, Error> {
    let mut inv = Inventory::default();
    let blobs = store.dir(BLOBS);
    for hex in entries(&blobs)? {
        let path = blobs.join(&hex);
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_file() {
            inv.sizes.insert(meta.ino(), meta.len());
            inv.blobs.insert(hex, meta.ino());
        }
    }
    let models = store.dir(MODELS);
    for hex in entries(&models)? {
        let (files, entries) = inodes_under(&models.join(&hex), &mut inv.sizes)?;
        let own = entries.saturating_mul(ENTRY_COST).saturating_add(index_cost(store, &hex));
        let blobs = std::iter::once(hex.clone())
            .chain(layer_blobs(store, &hex).unwrap_or_default())
            .filter(|b| inv.blobs.contains_key(b))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        inv.models.insert(hex, ModelInodes { files, blobs, own });
    }
    // `tmp/` itself is the cache's, not an entry anything wrote.
    let (_, entries) = inodes_under(&store.dir(TMP), &mut inv.sizes)?;
    inv.tmp_entries = entries.saturating_sub(1).saturating_mul(ENTRY_COST);
    Ok(inv)
}

/// The budget and the filesystem's room for `used` bytes of cache.
pub fn space(store: &Store, limit: Option<CacheLimit>, used: u64) -> Result<Space, Error> {
    let stat = rustix::fs::statvfs(store.root()).map_err(|e| Error::io(store.root(), e.into()))?;
    let fs_size = stat.f_blocks.saturating_mul(stat.f_frsize);
    let fs_free = stat.f_bavail.saturating_mul(stat.f_frsize);
    Ok(Space { capacity: limit.map_or(fs_size, |l| l.bytes(fs_size)), used, fs_free })
}

/// A node cache's inventory as every Job reports it (the ModelCache status).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheReport {
    pub capacity: u64,
    pub used: u64,
    pub free: u64,
    pub models: Vec<ModelUsage>,
    /// Models left out to keep the result within a termination message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub models_omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    pub digest: String,
    /// Bytes of its files and blobs (shared ones counted for each model holding them).
    pub size: u64,
    /// `namespace/name` of deployments linking it as `current`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current: Vec<String>,
    /// `namespace/name` of deployments keeping it as a previous version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
}

/// Measures the cache and reports it.
pub fn report(store: &Store, limit: Option<CacheLimit>) -> Result<CacheReport, Error> {
    let inv = measure(store)?;
    let space = space(store, limit, inv.used())?;
    let holders = holders(store)?;
    let models = inv
        .models
        .keys()
        .map(|hex| {
            let held = |hold| -> Vec<String> {
                holders.iter().filter(|h| &h.model == hex && h.hold == hold).map(|h| h.deployment.clone()).collect()
            };
            ModelUsage {
                digest: format!("sha256:{hex}"),
                size: inv.model_bytes(hex),
                current: held(Hold::Current),
                kept: held(Hold::Kept),
                last_used: store.last_used(hex).and_then(rfc3339),
            }
        })
        .collect();
    Ok(CacheReport { capacity: space.capacity, used: space.used, free: space.free(), models, models_omitted: 0 })
}

pub fn rfc3339(time: std::time::SystemTime) -> Option<String> {
    let ts = jiff::Timestamp::try_from(time).ok()?;
    Some(ts.round(jiff::Unit::Second).ok()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hex = "c".repeat(64);
        fs::write(store.dir(BLOBS).join(&hex), vec![0u8; 1000]).unwrap();
        let model = store.dir(MODELS).join("d".repeat(64));
        fs::create_dir_all(model.join("sub")).unwrap();
        fs::hard_link(store.dir(BLOBS).join(&hex), model.join("w.bin")).unwrap();
        fs::write(model.join("sub/extracted"), vec![1u8; 300]).unwrap();
        fs::write(store.dir(TMP).join("ingest-x"), vec![2u8; 20]).unwrap();
        fs::write(store.index_path(&"d".repeat(64)), vec![3u8; 50]).unwrap();
        let inv = measure(&store).unwrap();
        // Entries: the model's directory, `sub`, both files (4); the partial download (1).
        let entries = 5 * ENTRY_COST;
        let index = 50 + ENTRY_COST;
        assert_eq!(
            inv.used(),
            1320 + entries + index,
            "the linked blob once, the extracted file, the partial download"
        );
        assert_eq!(inv.bytes_of(&inv.model_inodes(&"d".repeat(64))), 1300);
        assert_eq!(inv.model_bytes(&"d".repeat(64)), 1300 + 4 * ENTRY_COST + index);
    }
}
