//! `pull`: one ModelPack, by digest, into the node cache. Layers already in the store are never
//! fetched again; missing ones are streamed in parallel (bounded), hashed while written, resumed
//! from a partial ingest with HTTP Range, and published only when verified.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::Semaphore;

use super::archive::MAX_FILES;
use super::budget::{self, CacheLimit, LayerNeed};
use super::evict::{Evicted, make_room};
use super::gc;
use super::layout::Lock;
use super::materialise::{Limits, default_extract_limit, materialise_signed};
use super::outcome::PullOutcome;
use super::pace::{DEFAULT_MIN_RATE, Pace, next_chunk};
use super::progress::Progress;
use super::scrub::{RemovedModel, check_before_reuse};
use super::store::{Ingest, Store, digest_hex};
use super::{Error, link, ranged};
use crate::modelpack::contents::read::BOUNDS;
use crate::modelpack::{Manifest, ModelConfig, layer};
use crate::registry::{Error as RegistryError, MAX_CONFIG_BYTES, Registry, Repository};
use crate::verify::model_signing::Statement;

#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Parallel connections, shared by layers and by the ranges of big blobs.
    pub concurrency: usize,
    /// Blobs above this size are fetched as concurrent ranges of this size (0: never).
    pub chunk_size: u64,
    /// `(namespace, name)` of the deployment whose `current` link should point at the model.
    pub link: Option<(String, String)>,
    /// Bounds on extraction (bytes per archive layer, entries per model).
    pub limits: Limits,
    /// With `link`: other versions this deployment keeps; everything no deployment keeps is
    /// garbage-collected. `None` collects nothing.
    pub keep: Option<Vec<String>>,
    /// The cache's budget (`None`: the filesystem's free space only).
    pub cache_limit: Option<CacheLimit>,
    /// Hosts to fetch the manifest, config and layers from before the registry itself, in order
    /// (see [`crate::registry::Mirror`]). What they send is verified like the registry's.
    pub mirrors: Vec<Endpoint>,
    /// Bytes per second every blob read must keep up over each registry-timeout window (`None`:
    /// [`DEFAULT_MIN_RATE`]; see [`super::pace`]).
    pub min_rate: Option<u64>,
    /// The OpenSSF model signature's statement the model was verified under: the model is
    /// published (or, already built, linked) only if its files are exactly the statement's.
    pub signed: Option<Arc<Statement>>,
}

/// A host serving the repository's content: a mirror, or the registry itself.
#[derive(Clone)]
pub struct Endpoint {
    pub registry: Registry,
    pub repo: Repository,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({})", self.repo)
    }
}

pub async fn pull(
    registry: &Registry,
    repo: &Repository,
    digest: &str,
    store: &Store,
    options: &PullOptions,
    progress: Arc<Progress>,
) -> Result<PullOutcome, Error> {
    let started = Instant::now();
    let hex = digest_hex(digest)?.to_owned();
    // One pull of a digest at a time per cache; a second one waits, then finds it complete.
    let _lock = blocking({
        let store = store.clone();
        move || store.lock(&Lock::Model(hex))
    })
    .await?;

    let manifest_bytes =
        match from_mirrors(&options.mirrors, |m| async move { m.registry.manifest(&m.repo, digest).await }).await {
            Some(bytes) => {
                // A mirror reads the registry with its own credentials: the registry itself says
                // whether this pull's may read the manifest, before the cache records it as served.
                registry.manifest_exists(repo, digest).await?;
                bytes
            }
            None => registry.manifest(repo, digest).await?,
        };
    let manifest = Manifest::parse(&manifest_bytes)?;
    let source = repo.to_string();
    // Kept as a blob so garbage collection knows which layers this model needs. (Under this
    // model's lock, nobody else writes it: taking its blob lock does not wait.)
    if let Some(mut ingest) = store.ingest(digest, manifest_bytes.len() as u64, &source)? {
        ingest.write(&manifest_bytes)?;
        ingest.commit()?;
    }
    manifest.family()?;
    for descriptor in &manifest.layers {
        layer(descriptor)?;
    }
    // Before a single blob is requested: a model that cannot fit fails here, having fetched nothing.
    let (evicted, removed) = blocking({
        let (store, manifest, digest, source, options) =
            (store.clone(), manifest.clone(), digest.to_owned(), source.clone(), options.clone());
        move || preflight(&store, &source, &digest, &manifest, &options)
    })
    .await?;
    confirm_layers(registry, repo, &manifest, options.concurrency.max(1)).await?;
    let total = manifest.layers.iter().fold(0u64, |sum, l| sum.saturating_add(size_of(l.size)));
    progress.total.store(total, Ordering::Relaxed);

    let model_dir = store.model_dir(digest)?;
    // Every layer must be this repository's: served to this cache by it before, or downloaded
    // now, even when the finished model is already on the node (see `Store::is_proven`).
    let fetched = fetch_layers(registry, repo, store, &manifest, options, &progress).await?;
    let files = if store.is_complete(digest_hex(digest)?) {
        if let Some(statement) = &options.signed {
            super::signed::check_published(store, digest, statement)?;
            super::signed::record(store, digest_hex(digest)?, statement)?;
        }
        count_files(&model_dir)
    } else {
        let config_digest = &manifest.config.digest;
        let mirrored = from_mirrors(&options.mirrors, |m| async move {
            m.registry.small_blob(&m.repo, config_digest, MAX_CONFIG_BYTES).await
        });
        let config = match mirrored.await {
            Some(bytes) => bytes,
            None => registry.small_blob(repo, config_digest, MAX_CONFIG_BYTES).await?,
        };
        let (config, _) = ModelConfig::parse(&config)?;
        // What the build writes is counted against the budget while it is written (whatever the
        // artifact declared, which the preflight went by).
        let store = store.clone().with_budget(options.cache_limit);
        let (manifest, digest, diff_ids, limit, signed) =
            (manifest.clone(), digest.to_owned(), config.modelfs.diff_ids, options.limits, options.signed.clone());
        let (_, files) =
            blocking(move || materialise_signed(&store, &digest, &manifest, &diff_ids, limit, signed.as_deref()))
                .await?;
        files
    };
    // Read before `current` points at the model, so the result a deployment sees says what it holds.
    let contents = blocking({
        let (model_dir, manifest) = (model_dir.clone(), manifest.clone());
        move || Ok(super::archive::read(&model_dir, &manifest, BOUNDS, MAX_FILES).map(Box::new))
    })
    .await?;
    store.touch_model(digest_hex(digest)?)?;
    let mut collected = None;
    if let Some((namespace, name)) = &options.link {
        link::set_current(store, namespace, name, digest)?;
        if let Some(keep) = &options.keep {
            gc::keep_versions(store, namespace, name, digest, keep)?;
            let (store, own) = (store.clone(), Lock::model(digest_hex(digest)?));
            collected = Some(blocking(move || gc::collect(&store, Some(&own))).await?);
        }
    }
    Ok(PullOutcome {
        bytes_fetched: fetched,
        bytes_reused: total.saturating_sub(fetched),
        seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        files,
        path: Some(model_dir),
        collected,
        evicted,
        removed,
        contents,
        ..PullOutcome::new(digest)
    })
}

/// What the pull will write (blobs it lacks, checked ones it reuses, archives to extract), and
/// room for it: evicts, or fails with [`Error::InsufficientStorage`]. Returns what it evicted and
/// the models it removed because a blob they were built from changed since its commit.
fn preflight(
    store: &Store,
    source: &str,
    digest: &str,
    manifest: &Manifest,
    options: &PullOptions,
) -> Result<(Vec<Evicted>, Vec<RemovedModel>), Error> {
    let (mut layers, mut pinned, mut removed) = (Vec::new(), vec![digest_hex(digest)?.to_owned()], Vec::new());
    let mut archive_bytes = 0u64;
    for l in &manifest.layers {
        let hex = digest_hex(&l.digest)?.to_owned();
        if pinned.contains(&hex) {
            continue;
        }
        let mut present = store.has_blob(&l.digest)? && store.is_proven(&l.digest, source)?;
        if present {
            let (ok, healed) = check_before_reuse(store, &hex)?;
            present = ok;
            removed.extend(healed);
        }
        let extract = budget::extract_of(l);
        if extract != budget::Extract::Linked {
            archive_bytes = archive_bytes.saturating_add(size_of(l.size));
        }
        layers.push(LayerNeed { size: size_of(l.size), present, extract });
        pinned.push(hex);
    }
    let built = store.is_complete(digest_hex(digest)?);
    let limit = options.limits.extract_bytes.unwrap_or_else(|| default_extract_limit(archive_bytes));
    let needs = budget::need(&layers, built, limit);
    let room = make_room(store, options.cache_limit, needs, &Lock::model(digest_hex(digest)?), &pinned)?;
    if room.space.shortfall(needs) > 0 {
        return Err(Error::InsufficientStorage { needs, free: room.space.free(), evicted: room.evicted });
    }
    Ok((room.evicted, removed))
}

/// The first mirror's answer; `None` when there is none or every mirror failed (the registry itself
/// is asked next). Answers are digest-checked by the registry client, as the registry's are.
async fn from_mirrors<'a, T, F, Fut>(mirrors: &'a [Endpoint], fetch: F) -> Option<T>
where
    F: Fn(&'a Endpoint) -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    for mirror in mirrors {
        match fetch(mirror).await {
            Ok(answer) => return Some(answer),
            Err(e) => tracing::warn!(mirror = %mirror.repo, error = %e, "mirror failed; trying the next host"),
        }
    }
    None
}

fn size_of(size: i64) -> u64 {
    u64::try_from(size).unwrap_or(0)
}

fn count_files(dir: &std::path::Path) -> usize {
    // Iterative (a model may be 2,048 directories deep, this runs on an async worker's stack).
    super::materialise::count_files(dir).unwrap_or(0)
}

/// Asks the registry, with this pull's credentials, whether `repo` serves each layer (one HEAD per
/// distinct layer), before anything the node holds under those digests (a blob, a finished model,
/// another pull's partial download) is used. Without it, a manifest in an attacker's registry that
/// names another tenant's private layers would be materialised from the node's cache without a
/// byte fetched: a digest is no proof of access (Kubernetes decided the same for images, KEP-2535).
async fn confirm_layers(
    registry: &Registry,
    repo: &Repository,
    manifest: &Manifest,
    concurrency: usize,
) -> Result<(), Error> {
    use futures::TryStreamExt;
    let digests: std::collections::BTreeSet<&str> = manifest.layers.iter().map(|l| l.digest.as_str()).collect();
    futures::stream::iter(digests.into_iter().map(Ok))
        .try_for_each_concurrent(concurrency, |digest| async move {
            registry.blob_exists(repo, digest).await.map_err(|e| match e {
                RegistryError::NotFound { .. } | RegistryError::Unauthorized { .. } => Error::LayerNotInRepository {
                    layer: digest.to_owned(),
                    repository: repo.to_string(),
                    reason: e.to_string(),
                },
                other => Error::Registry(other),
            })
        })
        .await
}

/// Downloads every layer blob the store lacks or that this repository has not served to it; returns the bytes fetched from the registry.
async fn fetch_layers(
    registry: &Registry,
    repo: &Repository,
    store: &Store,
    manifest: &Manifest,
    options: &PullOptions,
    progress: &Arc<Progress>,
) -> Result<u64, Error> {
    let concurrency = options.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut missing = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for l in &manifest.layers {
        if !seen.insert(l.digest.clone()) {
            continue;
        }
        if store.has_blob(&l.digest)? && store.is_proven(&l.digest, &repo.to_string())? {
            progress.done.fetch_add(size_of(l.size), Ordering::Relaxed);
        } else {
            missing.push((l.digest.clone(), size_of(l.size)));
        }
    }
    // Each download is a task of its own, so that hashing and writing spread over the runtime's
    // workers instead of all running where this function is polled. Dropping the set (on the
    // first error) aborts the others; their partial ingests stay resumable.
    let chunk_size = split_blobs(&missing, options.chunk_size, concurrency);
    let mut pending = missing.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut fetched = 0;
    loop {
        while running.len() < concurrency {
            let Some((digest, size)) = pending.next() else { break };
            let (registry, repo, store, progress) = (registry.clone(), repo.clone(), store.clone(), progress.clone());
            let (permits, chunk, mirrors) = (permits.clone(), chunk_size, options.mirrors.clone());
            let min_rate = options.min_rate.unwrap_or(DEFAULT_MIN_RATE);
            running.spawn(async move {
                let origin = repo.to_string();
                for mirror in &mirrors {
                    let source = Source {
                        registry: &mirror.registry,
                        repo: &mirror.repo,
                        origin: &origin,
                        permits: &permits,
                        concurrency,
                        min_rate,
                    };
                    match fetch_blob(&source, &store, &digest, size, chunk, &progress).await {
                        Ok(fetched) => return Ok(fetched),
                        Err(e) => {
                            tracing::warn!(mirror = %mirror.repo, error = %e, "mirror failed; trying the next host");
                            let (store, digest, origin) = (store.clone(), digest.clone(), origin.clone());
                            blocking(move || store.discard_ingest(&digest, &origin)).await?;
                        }
                    }
                }
                let source = Source {
                    registry: &registry,
                    repo: &repo,
                    origin: &origin,
                    permits: &permits,
                    concurrency,
                    min_rate,
                };
                fetch_blob(&source, &store, &digest, size, chunk, &progress).await
            });
        }
        match running.join_next().await {
            None => return Ok(fetched),
            Some(done) => fetched += done.map_err(|e| Error::Internal(e.to_string()))??,
        }
    }
}

/// The range size big blobs are split into (0: none is). Splitting pays only when connections
/// would otherwise sit idle: with as many big blobs as connections, each blob already has one, and
/// ranges would only add the final re-read for hashing (measured in `e2e/bench/pull`).
fn split_blobs(missing: &[(String, u64)], chunk: u64, concurrency: usize) -> u64 {
    let big = missing.iter().filter(|(_, size)| chunk > 0 && *size > chunk).count();
    if big >= concurrency { 0 } else { chunk }
}

/// Where blobs come from, and the connections a pull may open to it.
struct Source<'a> {
    registry: &'a Registry,
    repo: &'a Repository,
    /// The repository whose content this is (`registry/repository`): what the store records as
    /// the blob's provenance, whichever host sends the bytes.
    origin: &'a str,
    permits: &'a Arc<Semaphore>,
    concurrency: usize,
    /// Bytes per second each read must keep up ([`super::pace`]).
    min_rate: u64,
}

async fn fetch_blob(
    source: &Source<'_>,
    store: &Store,
    digest: &str,
    size: u64,
    chunk: u64,
    progress: &Progress,
) -> Result<u64, Error> {
    let (registry, repo) = (source.registry, source.repo);
    let ingest = blocking({
        let (store, digest) = (store.clone(), digest.to_owned());
        let origin = source.origin.to_owned();
        move || store.ingest(&digest, size, &origin)
    })
    .await?;
    let Some(mut ingest) = ingest else {
        // Another pull (of a model sharing this layer) published it while this one waited.
        progress.done.fetch_add(size, Ordering::Relaxed);
        return Ok(0);
    };
    if chunk > 0 && size > chunk {
        let permits = source.permits;
        let target =
            ranged::Target { registry, repo, digest, ingest: &ingest, progress, permits, min_rate: source.min_rate };
        match ranged::fetch(&target, ranged::plan(size, chunk), source.concurrency).await? {
            ranged::Fetched::Complete(fetched, hasher, hashed) => {
                blocking(move || {
                    ingest.adopt_hash(hasher, hashed);
                    ingest.commit()
                })
                .await?;
                return Ok(fetched);
            }
            // The registry (or the redirect target) ignores ranges: one request after all.
            ranged::Fetched::Unsupported => ingest.restart()?,
        }
    } else if ingest.is_ranged() {
        // Written in ranges by an earlier pull with a smaller chunk size: holes, not a prefix.
        ingest.restart()?;
    }
    let _permit = source.permits.acquire().await.map_err(|e| Error::Internal(e.to_string()))?;
    let resumed_at = ingest.offset();
    progress.done.fetch_add(resumed_at, Ordering::Relaxed);
    if resumed_at == size {
        // Nothing left to download (an empty blob, or an ingest cut just before its commit).
        blocking(move || ingest.commit()).await?;
        return Ok(0);
    }
    let stream = registry.blob_stream(repo, digest, resumed_at).await?;
    if !stream.from_offset && resumed_at > 0 {
        // The registry ignored the Range request: start this blob over.
        ingest.restart()?;
        progress.done.fetch_sub(resumed_at, Ordering::Relaxed);
    }
    let start = ingest.offset();
    let pace = Pace::new(registry.timeout(), source.min_rate, size.saturating_sub(ingest.offset()), Instant::now());
    let received = receive(pace, digest, stream.chunks, &mut ingest, progress).await;
    let written = ingest.offset();
    if written < size {
        // Cut short: the partial ingest stays in tmp/ and the next pull resumes it. An error from
        // the ingest itself (wrong size) has already removed it.
        return Err(received.err().unwrap_or_else(|| Error::Download {
            digest: digest.to_owned(),
            reason: format!("the registry closed the response after {written} of {size} bytes"),
        }));
    }
    // Every byte arrived; a stream error after the last byte changes nothing: the commit checks
    // size and digest, reports a mismatch and removes the ingest.
    blocking(move || ingest.commit()).await?;
    Ok(written - start)
}

/// Writes a blob's chunks as they arrive. Hashing and writing happen right here on the async
/// worker: a pull runs nothing latency-sensitive beside its downloads, and handing each chunk to a
/// writer thread cost a fifth more CPU and a third more wall time in `e2e/bench/pull`.
async fn receive(
    mut pace: Pace,
    digest: &str,
    mut chunks: futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
    ingest: &mut Ingest,
    progress: &Progress,
) -> Result<(), Error> {
    while let Some(chunk) = next_chunk(&mut chunks, &mut pace, digest).await? {
        ingest.write(&chunk)?;
        progress.done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::Internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::split_blobs;

    #[test]
    fn blobs_are_split_only_while_connections_would_sit_idle() {
        let blobs = |sizes: &[u64]| sizes.iter().map(|s| ("d".to_owned(), *s)).collect::<Vec<_>>();
        assert_eq!(split_blobs(&blobs(&[100]), 10, 4), 10, "one big blob: split");
        assert_eq!(split_blobs(&blobs(&[100, 1, 2, 3, 4, 5]), 10, 4), 10, "one big, many small: split");
        assert_eq!(split_blobs(&blobs(&[100, 100, 100]), 10, 4), 10);
        assert_eq!(split_blobs(&blobs(&[100, 100, 100, 100]), 10, 4), 0, "a connection each already");
        assert_eq!(split_blobs(&blobs(&[100]), 0, 4), 0, "off");
    }
}
