//! When the cache's bytes reach the disk. Anything the cache publishes (a blob under its digest, a
//! model with `.complete`) is trusted without re-hashing, so after a node crash it must still hold
//! the bytes that were verified: data is flushed before the rename that publishes it.
//!
//! Flushing a multi-GiB blob only at the end would wait for the whole of it after the download;
//! writeback is instead started every [`WRITEBACK_EVERY`] bytes while the download runs, so the
//! disk works in parallel with the network and the final flush waits only for the tail.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::Error;

/// How much is written between two writeback starts: large enough to make sequential I/O, small
/// enough that the final flush after the last chunk is short.
pub const WRITEBACK_EVERY: u64 = 32 << 20;

/// Asks the kernel to start writing `len` bytes from `offset` to disk, without waiting.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for the
    // lifetime of `file`. It is an optimisation: a failure (e.g. a filesystem without support)
    // changes nothing, the flush before publishing still happens.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Makes a directory's entries (renames, links) durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Flushes everything written to the filesystem holding `path` — one call for the thousands of
/// small files an archive layer may hold, instead of one flush (and journal commit) per file.
pub fn sync_filesystem(path: &Path) -> Result<(), Error> {
    let dir = File::open(path).map_err(|e| Error::io(path, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::io(path, e.into()))
}
