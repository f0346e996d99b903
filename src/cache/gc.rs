//! Garbage collection. A deployment keeps `current` plus the versions named with `--keep`, recorded
//! as `deployments/<ns>/<name>/versions/<hex>` links; a model no deployment keeps is removed, and so
//! is a blob no kept model's manifest references. Nothing is collected while another pull holds a
//! lock: its blobs may not be linked into a model yet.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::Error;
use super::layout::{BLOBS, DEPLOYMENTS, Lock, MODELS};
use super::store::{Store, digest_hex};
use super::walk::remove_tree;
use crate::modelpack::Manifest;

/// What a collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Collected {
    pub models: usize,
    pub blobs: usize,
    /// True when another pull was in progress and nothing was removed.
    pub deferred: bool,
}

impl Store {
    /// Removes model `hex`: its directory, its file index and its use record. Links to it
    /// (`current`, `versions/`) are the caller's business.
    pub(super) fn remove_model(&self, hex: &str) -> Result<(), Error> {
        self.forget_complete(hex)?;
        self.forget_signed(hex)?;
        remove_tree(&self.dir(MODELS).join(hex))?;
        let index = self.index_path(hex);
        match fs::remove_file(&index) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&index, e)),
            _ => {}
        }
        self.forget_use(hex);
        Ok(())
    }
}

/// Records the versions `namespace/name` keeps (its current digest is always kept).
pub fn keep_versions(store: &Store, namespace: &str, name: &str, current: &str, keep: &[String]) -> Result<(), Error> {
    let versions = store.deployment_dir(namespace, name).join("versions");
    fs::create_dir_all(&versions).map_err(|e| Error::io(&versions, e))?;
    let mut wanted = BTreeSet::new();
    for digest in std::iter::once(current).chain(keep.iter().map(String::as_str)) {
        let hex = digest_hex(digest)?;
        // Versions that were never pulled here cannot be kept warm; nothing to record.
        if store.model_dir(digest)?.exists() {
            wanted.insert(hex.to_owned());
        }
    }
    for entry in fs::read_dir(&versions).map_err(|e| Error::io(&versions, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !wanted.contains(&name) {
            fs::remove_file(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
        }
    }
    for hex in wanted {
        let link = versions.join(&hex);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Store::version_target(&hex), &link).map_err(|e| Error::io(&link, e))?;
            // Kept from now on: its last use is now (not every later pull that keeps it again).
            store.touch_model(&hex)?;
        }
    }
    Ok(())
}

/// Forgets deployment `namespace/name` (its `current` and kept versions), then collects what no
/// other deployment keeps: what a deleted ModelDeployment's cleanup Job runs.
pub fn unlink(store: &Store, namespace: &str, name: &str) -> Result<Collected, Error> {
    super::link::parse_link(&format!("deployments/{namespace}/{name}"))?;
    let dir = store.deployment_dir(namespace, name);
    let ns_dir = store.dir(DEPLOYMENTS).join(namespace);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&dir, e)),
    }
    // Only succeeds when no other deployment of the namespace is left; that is fine.
    let _ = fs::remove_dir(&ns_dir);
    collect(store, None)
}

/// Removes models and blobs that no deployment keeps. `own` is the lock the caller holds. Each
/// model and blob is removed under its own lock (one lock file open at a time, whatever the cache
/// holds): a pull that starts meanwhile waits for it, or keeps what it locked first.
pub fn collect(store: &Store, own: Option<&Lock>) -> Result<Collected, Error> {
    let _gc = store.lock(&Lock::Gc)?;
    if !store.held_by_others(own)?.is_empty() {
        return Ok(Collected { deferred: true, ..Default::default() });
    }
    let kept_models = kept_models(store)?;
    let mut collected = Collected::default();
    let models = store.dir(MODELS);
    let mut kept_blobs = BTreeSet::new();
    for entry in fs::read_dir(&models).map_err(|e| Error::io(&models, e))?.flatten() {
        let hex = entry.file_name().to_string_lossy().into_owned();
        if kept_models.contains(&hex) {
            kept_blobs.insert(hex.clone());
            kept_blobs.extend(layer_blobs(store, &hex)?);
        } else if let Some(_pulling) = store.try_lock(&Lock::model(&hex))? {
            store.remove_model(&hex)?;
            collected.models += 1;
        } else {
            // A pull of it started since the check: it keeps the model and what it is built from.
            kept_blobs.insert(hex.clone());
            kept_blobs.extend(layer_blobs(store, &hex)?);
        }
    }
    let blobs = store.dir(BLOBS);
    for entry in fs::read_dir(&blobs).map_err(|e| Error::io(&blobs, e))?.flatten() {
        let hex = entry.file_name().to_string_lossy().into_owned();
        if kept_blobs.contains(&hex) {
            continue;
        }
        if let Some(_commit) = store.try_lock(&Lock::Commit(hex.clone()))? {
            store.remove_blob(&hex)?;
            collected.blobs += 1;
        }
    }
    Ok(collected)
}

/// Hex digests of the models any deployment keeps (its `current` and its `versions/`).
fn kept_models(store: &Store) -> Result<BTreeSet<String>, Error> {
    Ok(holders(store)?.into_iter().map(|h| h.model).collect())
}

/// How a deployment holds a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hold {
    Current,
    Kept,
}

/// One deployment's hold on one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub model: String,
    /// `namespace/name`
    pub deployment: String,
    pub hold: Hold,
}

/// Every deployment link of the cache: `current` and `versions/`.
pub fn holders(store: &Store) -> Result<Vec<Holder>, Error> {
    let mut out = Vec::new();
    for ns in read_dirs(&store.dir(DEPLOYMENTS))? {
        for deployment in read_dirs(&ns)? {
            let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let key = format!("{}/{}", name(&ns), name(&deployment));
            let current = link_hex(&deployment.join("current"));
            if let Some(hex) = &current {
                out.push(Holder { model: hex.clone(), deployment: key.clone(), hold: Hold::Current });
            }
            let versions = deployment.join("versions");
            if versions.is_dir() {
                for v in fs::read_dir(&versions).map_err(|e| Error::io(&versions, e))?.flatten() {
                    let model = v.file_name().to_string_lossy().into_owned();
                    // `versions/` records the current one too; it is held as current.
                    if current.as_ref() != Some(&model) {
                        out.push(Holder { model, deployment: key.clone(), hold: Hold::Kept });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Removes the `versions/` links to model `hex` (an evicted or corrupt model); returns the
/// deployments that kept it.
pub(super) fn drop_kept(store: &Store, hex: &str) -> Result<Vec<String>, Error> {
    let mut lost = Vec::new();
    for holder in holders(store)? {
        if holder.model == hex && holder.hold == Hold::Kept {
            let (ns, name) = holder.deployment.split_once('/').unwrap_or_default();
            let link = store.deployment_dir(ns, name).join("versions").join(hex);
            fs::remove_file(&link).map_err(|e| Error::io(&link, e))?;
            lost.push(holder.deployment);
        }
    }
    Ok(lost)
}

fn read_dirs(dir: &Path) -> Result<Vec<std::path::PathBuf>, Error> {
    Ok(fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect())
}

fn link_hex(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The blobs a kept model needs: its manifest's layers (the manifest is stored as a blob by pull).
pub(super) fn layer_blobs(store: &Store, model_hex: &str) -> Result<Vec<String>, Error> {
    let manifest_blob = store.dir(BLOBS).join(model_hex);
    let Ok(bytes) = fs::read(&manifest_blob) else {
        // No manifest blob to read: the model's files are hard links and survive their blobs.
        return Ok(Vec::new());
    };
    let manifest = Manifest::parse(&bytes)?;
    Ok(manifest.layers.iter().filter_map(|l| digest_hex(&l.digest).ok().map(str::to_owned)).collect())
}
