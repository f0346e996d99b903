//! One big blob over several connections: the blob is cut into ranges of `chunk` bytes, fetched as
//! concurrent `Range` requests (each holding one of the pull's connection permits, which layers and
//! ranges share), and written at their offsets in the blob's ingest file. A range is recorded next
//! to the ingest once all its bytes are written, so a killed pull resumes with the missing ranges
//! only. The blob is hashed once at the end, from byte 0 (re-reading it from the page cache costs
//! less than keeping ranges in memory until the prefix before them arrives); a wrong byte in any
//! range fails the digest, and nothing is published.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use tokio::sync::Semaphore;

use super::Error;
use super::pull::Progress;
use super::store::Ingest;
use crate::registry::{Registry, Repository};

/// Blobs above this size are fetched in ranges of this size (`pull --chunk-size`).
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;

/// What a ranged fetch did.
pub enum Fetched {
    /// Every range is written (the ingest still needs its hash and commit); bytes fetched.
    Complete(u64),
    /// The registry does not answer ranges: fetch the blob in one request instead.
    Unsupported,
}

/// The ranges `(first, last)` of a blob of `size` bytes in pieces of `chunk`.
pub fn plan(size: u64, chunk: u64) -> Vec<(u64, u64)> {
    let chunk = chunk.max(1);
    (0..size.div_ceil(chunk)).map(|i| (i * chunk, ((i + 1) * chunk).min(size) - 1)).collect()
}

/// Where one blob's ranged download goes.
pub struct Target<'a> {
    pub registry: &'a Registry,
    pub repo: &'a Repository,
    pub digest: &'a str,
    pub ingest: &'a Ingest,
    pub progress: &'a Progress,
    pub permits: &'a Arc<Semaphore>,
}

/// Fetches the ranges of `plan` the ingest does not hold yet, `parallel` at a time at most.
pub async fn fetch(target: &Target<'_>, ranges: Vec<(u64, u64)>, parallel: usize) -> Result<Fetched, Error> {
    let held = target.ingest.written_ranges();
    let (done, missing): (Vec<_>, Vec<_>) = ranges.into_iter().partition(|r| held.contains(r));
    let reused: u64 = done.iter().map(|(first, last)| last - first + 1).sum();
    target.progress.done.fetch_add(reused, Ordering::Relaxed);
    target.ingest.begin_ranges()?;
    let file = Arc::new(target.ingest.positional()?);
    let mut results = futures::stream::iter(missing)
        .map(|(first, last)| fetch_range(target, file.clone(), first, last))
        .buffer_unordered(parallel.max(1));
    let mut fetched = 0;
    while let Some(result) = results.next().await {
        match result? {
            Some(bytes) => fetched += bytes,
            None => return Ok(Fetched::Unsupported),
        }
    }
    Ok(Fetched::Complete(fetched))
}

/// One range: `None` when the registry did not answer with it.
async fn fetch_range(
    target: &Target<'_>,
    file: Arc<std::fs::File>,
    first: u64,
    last: u64,
) -> Result<Option<u64>, Error> {
    let _permit = target.permits.acquire().await.map_err(|e| Error::Internal(e.to_string()))?;
    let digest = target.digest;
    let Some(stream) = target.registry.blob_range(target.repo, digest, first, last).await? else {
        return Ok(None);
    };
    let (len, timeout) = (last - first + 1, target.registry.timeout());
    let mut chunks = stream.chunks;
    let mut at = 0u64;
    while let Some(chunk) = tokio::time::timeout(timeout, chunks.next())
        .await
        .map_err(|_| Error::Stalled { digest: digest.to_owned(), after: timeout })?
    {
        let chunk = chunk.map_err(|e| Error::Download { digest: digest.to_owned(), reason: e.to_string() })?;
        if at + chunk.len() as u64 > len {
            let reason = format!("the registry sent more than the {len} bytes of range {first}-{last}");
            return Err(Error::Download { digest: digest.to_owned(), reason });
        }
        // Written right here, like a streamed blob (see `pull::receive`): a positional write of
        // one chunk does not block the worker long.
        file.write_all_at(&chunk, first + at).map_err(|e| Error::io(target.ingest.path(), e))?;
        at += chunk.len() as u64;
        target.progress.done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    if at < len {
        let reason = format!("the registry closed range {first}-{last} after {at} of {len} bytes");
        return Err(Error::Download { digest: digest.to_owned(), reason });
    }
    target.ingest.record_range(first, last)?;
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_byte_once() {
        for (size, chunk) in [(1, 1), (10, 3), (9, 3), (64, 64), (65, 64), (63, 64), (1 << 20, 4096), (7, 100)] {
            let ranges = plan(size, chunk);
            assert_eq!(ranges.first().map(|r| r.0), Some(0), "{size}/{chunk}");
            assert_eq!(ranges.last().map(|r| r.1), Some(size - 1), "{size}/{chunk}");
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0, "{size}/{chunk}: contiguous");
            }
            assert!(ranges.iter().all(|(a, b)| b - a < chunk), "{size}/{chunk}: none longer than a chunk");
        }
        assert!(plan(0, 64).is_empty());
    }
}
