//! Garbage collection. A deployment keeps `current` plus the versions named with `--keep`, recorded
//! as `deployments/<ns>/<name>/versions/<hex>` links; a model no deployment keeps is removed, and so
//! is a blob no kept model's manifest references. Nothing is collected while another pull holds a
//! lock: its blobs may not be linked into a model yet.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::Path;

use super::Error;
use super::materialise::remove_tree;
use super::store::{Store, digest_hex};
use crate::modelpack::Manifest;

/// What a collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Collected {
    pub models: usize,
    pub blobs: usize,
    /// True when another pull was in progress and nothing was removed.
    pub deferred: bool,
}

/// Records the versions `namespace/name` keeps (its current digest is always kept).
pub fn keep_versions(store: &Store, namespace: &str, name: &str, current: &str, keep: &[String]) -> Result<(), Error> {
    let versions = store.root().join("deployments").join(namespace).join(name).join("versions");
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
            std::os::unix::fs::symlink(format!("../../../../models/sha256/{hex}"), &link)
                .map_err(|e| Error::io(&link, e))?;
        }
    }
    Ok(())
}

/// Forgets deployment `namespace/name` (its `current` and kept versions), then collects what no
/// other deployment keeps: what a deleted ModelDeployment's cleanup Job runs.
pub fn unlink(store: &Store, namespace: &str, name: &str) -> Result<Collected, Error> {
    super::link::parse_link(&format!("deployments/{namespace}/{name}"))?;
    let ns_dir = store.root().join("deployments").join(namespace);
    let dir = ns_dir.join(name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&dir, e)),
    }
    // Only succeeds when no other deployment of the namespace is left; that is fine.
    let _ = fs::remove_dir(&ns_dir);
    collect(store, "")
}

/// Removes models and blobs that no deployment keeps. `own_lock` is the lock name the caller holds.
pub fn collect(store: &Store, own_lock: &str) -> Result<Collected, Error> {
    let _gc = store.lock("gc")?;
    let locks = store.root().join("locks");
    let mut held: Vec<File> = Vec::new();
    for entry in fs::read_dir(&locks).map_err(|e| Error::io(&locks, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == format!("{own_lock}.lock") || name == "gc.lock" {
            continue;
        }
        let file = File::options().write(true).open(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
        match file.try_lock() {
            Ok(()) => held.push(file),
            Err(_) => return Ok(Collected { deferred: true, ..Default::default() }),
        }
    }
    let kept_models = kept_models(store)?;
    let mut collected = Collected::default();
    let models = store.root().join("models/sha256");
    let mut kept_blobs = BTreeSet::new();
    for entry in fs::read_dir(&models).map_err(|e| Error::io(&models, e))?.flatten() {
        let hex = entry.file_name().to_string_lossy().into_owned();
        if kept_models.contains(&hex) {
            kept_blobs.insert(hex.clone());
            kept_blobs.extend(layer_blobs(store, &hex)?);
        } else {
            remove_tree(&entry.path())?;
            collected.models += 1;
        }
    }
    let blobs = store.root().join("blobs/sha256");
    for entry in fs::read_dir(&blobs).map_err(|e| Error::io(&blobs, e))?.flatten() {
        if !kept_blobs.contains(&entry.file_name().to_string_lossy().into_owned()) {
            store.remove_blob(&entry.file_name().to_string_lossy())?;
            collected.blobs += 1;
        }
    }
    drop(held);
    Ok(collected)
}

/// Hex digests of the models any deployment keeps (its `current` and its `versions/`).
fn kept_models(store: &Store) -> Result<BTreeSet<String>, Error> {
    let mut kept = BTreeSet::new();
    let deployments = store.root().join("deployments");
    for ns in read_dirs(&deployments)? {
        for deployment in read_dirs(&ns)? {
            if let Some(hex) = link_hex(&deployment.join("current")) {
                kept.insert(hex);
            }
            let versions = deployment.join("versions");
            if versions.is_dir() {
                for v in fs::read_dir(&versions).map_err(|e| Error::io(&versions, e))?.flatten() {
                    kept.insert(v.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    Ok(kept)
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
fn layer_blobs(store: &Store, model_hex: &str) -> Result<Vec<String>, Error> {
    let manifest_blob = store.root().join("blobs/sha256").join(model_hex);
    let Ok(bytes) = fs::read(&manifest_blob) else {
        // No manifest blob to read: the model's files are hard links and survive their blobs.
        return Ok(Vec::new());
    };
    let manifest = Manifest::parse(&bytes)?;
    Ok(manifest.layers.iter().filter_map(|l| digest_hex(&l.digest).ok().map(str::to_owned)).collect())
}
