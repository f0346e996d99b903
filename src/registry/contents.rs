//! What each single-file layer holds, read by HTTP range requests of its blob through the one
//! reading loop ([`crate::modelpack::contents::read`]), within its bounds per file and per model
//! ([`Bounds`]). Results are kept per blob digest: a digest's bytes never change, so a second look
//! costs no request.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use futures::StreamExt;
use tokio::time::Instant;

use super::{Error, Registry, Repository};
use crate::modelpack::contents::Contents;
use crate::modelpack::contents::read::{self as reading, Source};
pub use crate::modelpack::contents::read::{BOUNDS, Bounds};
use crate::modelpack::{Descriptor, Manifest, layer};

/// Results kept, by blob digest.
const MAX_CACHED: usize = 8192;

fn cache() -> &'static Mutex<HashMap<String, Contents>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Contents>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The contents of every layer of `manifest`, in its order.
pub async fn read(registry: &Registry, repo: &Repository, manifest: &Manifest, bounds: Bounds) -> Vec<Contents> {
    let deadline = Instant::now() + bounds.model_time;
    let spent = AtomicU64::new(0);
    let model = Model { registry, repo, bounds, spent: &spent };
    let mut out = Vec::with_capacity(manifest.layers.len());
    // Chunks of `parallel` files at once: plain `join_all` over a named async fn keeps the future
    // `Send` for the controller's reconcile.
    for chunk in manifest.layers.chunks(bounds.parallel.max(1)) {
        out.extend(futures::future::join_all(chunk.iter().map(|d| read_one(&model, d, deadline))).await);
    }
    out
}

async fn read_one(model: &Model<'_>, descriptor: &Descriptor, deadline: Instant) -> Contents {
    let parsed = match layer(descriptor) {
        Ok(parsed) => parsed,
        Err(e) => return Contents::unread(e.to_string()),
    };
    if !parsed.format().is_single_file() {
        return Contents::unread("an archive layer: the puller reports what it holds");
    }
    let cached = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&descriptor.digest).cloned();
    if let Some(hit) = cached {
        return hit;
    }
    let size = u64::try_from(descriptor.size).unwrap_or(0);
    let blob = Blob { model, digest: &descriptor.digest, size };
    let path = parsed.path.to_string();
    match tokio::time::timeout_at(deadline, reading::contents(blob, &path, model.bounds, model.spent)).await {
        Ok(Ok(contents)) => {
            let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
            if c.len() >= MAX_CACHED {
                c.clear();
            }
            c.insert(descriptor.digest.clone(), contents.clone());
            contents
        }
        Ok(Err(unread)) => Contents::unread(unread),
        Err(_) => Contents::unread(format!("over the {:?} bound on reading a model", model.bounds.model_time)),
    }
}

struct Model<'a> {
    registry: &'a Registry,
    repo: &'a Repository,
    bounds: Bounds,
    spent: &'a AtomicU64,
}

/// One blob, read by range requests.
struct Blob<'a> {
    model: &'a Model<'a>,
    digest: &'a str,
    size: u64,
}

impl Source for Blob<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&mut self, at: u64, len: u64) -> Result<Vec<u8>, String> {
        let (registry, repo) = (self.model.registry, self.model.repo);
        let stream =
            registry.blob_range(repo, self.digest, at, at + len - 1).await.map_err(|e: Error| e.to_string())?;
        let Some(stream) = stream else { return Err("the registry does not answer range requests".into()) };
        let mut chunks = stream.chunks;
        let mut out = Vec::with_capacity(len as usize);
        let read = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                if out.len() + chunk.len() > len as usize {
                    return Err(format!("the registry sent more than the {len} bytes asked for"));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(())
        };
        tokio::time::timeout(registry.timeout(), read)
            .await
            .map_err(|_| "the registry stopped sending".to_owned())??;
        if out.len() as u64 != len {
            return Err(format!("the registry sent {} of {len} bytes", out.len()));
        }
        Ok(out)
    }
}
