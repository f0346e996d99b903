//! The node cache's content store, in containerd's shape: bytes go to an ingest file under `tmp/`,
//! are hashed while written, and [`Ingest::commit`] renames them into `blobs/sha256/<hex>` only when
//! size and digest both match. A half-written blob is never visible; an ingest left behind by an
//! interrupted pull is resumed from where it stopped.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::budget::CacheLimit;
use super::layout::{self, BLOBS, Lock, Locked, MODELS, SOURCES, TMP};
use super::{Error, durable};

/// The cache directory layout (docs/node-cache.md "Layout"; the contract: docs/design/ARCHITECTURE.md "Node cache").
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Flush data before publishing it (see [`durable`]); off only where a crash may lose the cache.
    durable: bool,
    /// What building a model may take (`None`: the filesystem's free space), see [`super::allowance`].
    budget: Option<CacheLimit>,
}

/// Hex part of a `sha256:<64 hex>` digest, validated (it becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str, Error> {
    crate::modelpack::sha256_hex(digest).ok_or_else(|| Error::InvalidDigest(digest.to_owned()))
}

impl Store {
    /// Opens (creating when needed) the cache at `root`.
    pub fn open(root: &Path) -> Result<Store, Error> {
        for dir in layout::DIRS {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(Store { root: root.to_owned(), durable: true, budget: None })
    }

    /// Publishes without flushing to disk: faster, but after a node crash a published file may
    /// hold garbage. Only for caches that do not outlive the node's uptime (tmpfs, emptyDir).
    pub fn without_sync(mut self) -> Store {
        self.durable = false;
        self
    }

    /// Builds models within `budget` (the cache's `--cache-limit`), counting what they write.
    pub fn with_budget(mut self, budget: Option<CacheLimit>) -> Store {
        self.budget = budget;
        self
    }

    pub(super) fn budget(&self) -> Option<CacheLimit> {
        self.budget
    }

    /// Makes the renames and links in `dir` durable (nothing under `without_sync`).
    pub fn sync_dir(&self, dir: &Path) -> Result<(), Error> {
        if self.durable { durable::sync_dir(dir) } else { Ok(()) }
    }

    /// Flushes everything written to the cache's filesystem (nothing under `without_sync`).
    pub fn sync_filesystem(&self) -> Result<(), Error> {
        if self.durable { durable::sync_filesystem(&self.root) } else { Ok(()) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self.root.join(BLOBS).join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool, Error> {
        Ok(self.blob_path(digest)?.is_file())
    }

    pub fn model_dir(&self, manifest_digest: &str) -> Result<PathBuf, Error> {
        Ok(self.root.join(MODELS).join(digest_hex(manifest_digest)?))
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP)
    }

    /// Whether `source` (`registry/repository`) has served this blob's bytes to this cache: the
    /// only proof that a pull from `source` may use the blob without downloading it. A digest is
    /// no proof (anyone can name one), and a registry's word is none either (a registry of an
    /// attacker's answers yes to every HEAD); bytes it sent that hashed to the digest are.
    pub fn is_proven(&self, digest: &str, source: &str) -> Result<bool, Error> {
        let path = self.sources_path(digest)?;
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().any(|line| line == source)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn sources_path(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self.root.join(SOURCES).join(digest_hex(digest)?))
    }

    /// Records that `source` served the blob (under the blob's commit lock).
    fn add_source(&self, digest: &str, source: &str) -> Result<(), Error> {
        if self.is_proven(digest, source)? {
            return Ok(());
        }
        let path = self.sources_path(digest)?;
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        // Lost on a crash, the line only costs a download again; a torn one matches nothing.
        file.write_all(format!("{source}\n").as_bytes()).map_err(|e| Error::io(&path, e))
    }

    /// Removes a blob, its provenance and its commit stamp (garbage collection).
    pub fn remove_blob(&self, digest_hex: &str) -> Result<(), Error> {
        for dir in [BLOBS, SOURCES, layout::STAMPS] {
            let path = self.root.join(dir).join(digest_hex);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&path, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Starts (or resumes) writing blob `digest` of `size` bytes as served by `source`
    /// (`registry/repository`); `None` when the cache holds the blob and `source` has served it
    /// before. Each source has its own partial download and lock: a pull never resumes bytes
    /// another repository sent (they could be another tenant's), and a slow registry holds up
    /// only pulls from itself. Blocks while another pull from the same source writes the blob.
    /// Drops what a download of `digest` for `source` left in `tmp/` (after a mirror failed: its
    /// bytes are not resumed from another host, which would repeat its fault at every pull).
    pub fn discard_ingest(&self, digest: &str, source: &str) -> Result<(), Error> {
        let hex = digest_hex(digest)?;
        let key = layout::source_key(source);
        let _lock = self.lock(&Lock::Ingest { blob: hex.to_owned(), source: key.clone() })?;
        let path = self.tmp_path(layout::Tmp::Ingest { blob: hex, source_key: &key });
        remove_if_present(&path.with_extension("ranges"))?;
        remove_if_present(&path)
    }

    pub fn ingest(&self, digest: &str, size: u64, source: &str) -> Result<Option<Ingest>, Error> {
        let hex = digest_hex(digest)?;
        let key = layout::source_key(source);
        let lock = self.lock(&Lock::Ingest { blob: hex.to_owned(), source: key.clone() })?;
        let path = self.tmp_path(layout::Tmp::Ingest { blob: hex, source_key: &key });
        if self.has_blob(digest)? && self.is_proven(digest, source)? {
            // Whatever an interrupted writer left behind is of no use any more.
            let _ = fs::remove_file(path.with_extension("ranges"));
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        if !path.exists() {
            // A range record without its download (left by a kill) describes nothing.
            remove_if_present(&path.with_extension("ranges"))?;
        }
        let (mut hasher, mut written) = (Sha256::new(), 0u64);
        if let Ok(mut existing) = File::open(&path) {
            // Re-hash what an earlier attempt wrote, so the final digest covers every byte.
            (hasher, written) = hash_all(&mut existing).map_err(|e| Error::io(&path, e))?;
        }
        if written > size {
            // Longer than the blob can be: start over.
            remove_if_present(&path.with_extension("ranges"))?;
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            hasher = Sha256::new();
            written = 0;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Some(Ingest {
            _lock: lock,
            path,
            file,
            hasher,
            written,
            flushed: written,
            durable: self.durable,
            digest: digest.to_owned(),
            size,
            target: self.blob_path(digest)?,
            store: self.clone(),
            source: source.to_owned(),
        }))
    }
}

fn hash_all(file: &mut File) -> std::io::Result<(Sha256, u64)> {
    let (mut hasher, mut written) = (Sha256::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher, written));
        }
        hasher.update(&buf[..n]);
        written += n as u64;
    }
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// A blob being written; one writer per blob in the whole cache (its lock is held until dropped).
pub struct Ingest {
    _lock: Locked,
    path: PathBuf,
    file: File,
    hasher: Sha256,
    written: u64,
    /// Where the last writeback started: everything before it is on its way to disk.
    flushed: u64,
    durable: bool,
    digest: String,
    size: u64,
    target: PathBuf,
    store: Store,
    source: String,
}

impl Ingest {
    /// Bytes already on disk: where a resumed download continues.
    pub fn offset(&self) -> u64 {
        self.written
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.written + bytes.len() as u64 > self.size {
            self.abort();
            return Err(Error::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written + bytes.len() as u64,
            });
        }
        self.file.write_all(bytes).map_err(|e| Error::io(&self.path, e))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        if self.durable && self.written - self.flushed >= durable::WRITEBACK_EVERY {
            durable::start_writeback(&self.file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(())
    }

    /// Publishes the blob when size and digest match; otherwise removes the ingest and fails.
    pub fn commit(mut self) -> Result<PathBuf, Error> {
        if self.written != self.size {
            let actual = self.written;
            self.abort();
            return Err(Error::SizeMismatch { digest: self.digest.clone(), expected: self.size, actual });
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize_reset()));
        if actual != self.digest {
            self.abort();
            return Err(Error::DigestMismatch { expected: self.digest.clone(), actual });
        }
        if self.durable {
            self.file.sync_data().map_err(|e| Error::io(&self.path, e))?;
        }
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o444)).map_err(|e| Error::io(&self.path, e))?;
        // The record goes first: one left behind by a kill would claim ranges a later ingest lacks.
        remove_if_present(&self.ranges_path())?;
        // Writers from other sources may finish the same blob: publish once, record every source.
        let _commit = self.store.lock(&Lock::Commit(digest_hex(&self.digest)?.to_owned()))?;
        if self.target.is_file() {
            // Already there (the same bytes, verified): keep the published inode that models link.
            fs::remove_file(&self.path).map_err(|e| Error::io(&self.path, e))?;
        } else {
            fs::rename(&self.path, &self.target).map_err(|e| Error::io(&self.target, e))?;
            self.store.record_stamp(digest_hex(&self.digest)?)?;
        }
        self.store.add_source(&self.digest, &self.source)?;
        Ok(self.target.clone())
    }

    /// Empties the ingest, for a registry that answers a resumed download with the whole blob.
    pub fn restart(&mut self) -> Result<(), Error> {
        remove_if_present(&self.ranges_path())?;
        self.file.set_len(0).map_err(|e| Error::io(&self.path, e))?;
        (self.hasher, self.written, self.flushed) = (Sha256::new(), 0, 0);
        Ok(())
    }

    /// Removes the partial file: what it holds is wrong.
    pub fn abort(&mut self) {
        let _ = fs::remove_file(self.ranges_path());
        let _ = fs::remove_file(&self.path);
    }

    /// The partial file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A ranged download's record of the byte ranges already written, next to the ingest.
    fn ranges_path(&self) -> PathBuf {
        self.path.with_extension("ranges")
    }

    /// Whether the ingest was written in ranges (and so holds holes, not a prefix).
    pub fn is_ranged(&self) -> bool {
        self.ranges_path().exists()
    }

    /// A handle for writes at offsets: the ingest's own is opened for appending, where Linux
    /// ignores the offset of a positional write.
    pub fn positional(&self) -> Result<File, Error> {
        // Read too: the ranges are hashed back from it as the written prefix grows.
        OpenOptions::new().read(true).write(true).open(&self.path).map_err(|e| Error::io(&self.path, e))
    }

    /// The ranges `(first, last)` a ranged download recorded as fully written. A line cut short by
    /// a kill reads as nothing.
    pub fn written_ranges(&self) -> Vec<(u64, u64)> {
        let text = fs::read_to_string(self.ranges_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (first, last) = l.split_once('-')?;
                Some((first.parse().ok()?, last.parse().ok()?))
            })
            .collect()
    }

    /// Marks the ingest as written in ranges before the first positional write, so that a kill
    /// before any range completes does not leave holes a streamed resume would read as a prefix.
    pub fn begin_ranges(&self) -> Result<(), Error> {
        let path = self.ranges_path();
        OpenOptions::new().create(true).append(true).open(&path).map(drop).map_err(|e| Error::io(&path, e))
    }

    /// Records that bytes `first..=last` are written (after they are).
    pub fn record_range(&self, first: u64, last: u64) -> Result<(), Error> {
        let path = self.ranges_path();
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        file.write_all(format!("{first}-{last}\n").as_bytes()).map_err(|e| Error::io(&path, e))
    }

    /// Takes the hash a ranged download made of the first `hashed` bytes (all of them once every
    /// range is in); [`Ingest::commit`] then checks size and digest as for a streamed one.
    pub fn adopt_hash(&mut self, hasher: Sha256, hashed: u64) {
        (self.hasher, self.written, self.flushed) = (hasher, hashed, hashed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "r.example/team/model";

    fn digest(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[test]
    fn commit_publishes_only_verified_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"hello model".to_vec();
        let d = digest(&data);
        let mut ingest = store.ingest(&d, data.len() as u64, SRC).unwrap().unwrap();
        ingest.write(&data[..5]).unwrap();
        assert!(!store.has_blob(&d).unwrap(), "nothing visible before commit");
        ingest.write(&data[5..]).unwrap();
        let path = ingest.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(fs::metadata(&path).unwrap().permissions().readonly());
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn wrong_bytes_are_rejected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = digest(b"expected");
        let mut ingest = store.ingest(&d, 8, SRC).unwrap().unwrap();
        ingest.write(b"tampered").unwrap();
        assert!(matches!(ingest.commit(), Err(Error::DigestMismatch { .. })));
        assert!(!store.has_blob(&d).unwrap());
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0, "partial removed");
        let mut ingest = store.ingest(&d, 4, SRC).unwrap().unwrap();
        assert!(matches!(ingest.write(b"too long"), Err(Error::SizeMismatch { .. })));
    }

    #[test]
    fn an_interrupted_ingest_resumes_and_is_verified_from_byte_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let d = digest(&data);
        let mut first = store.ingest(&d, data.len() as u64, SRC).unwrap().unwrap();
        first.write(&data[..4000]).unwrap();
        drop(first);
        let mut resumed = store.ingest(&d, data.len() as u64, SRC).unwrap().unwrap();
        assert_eq!(resumed.offset(), 4000);
        resumed.write(&data[4000..]).unwrap();
        resumed.commit().unwrap();
        assert_eq!(fs::read(store.blob_path(&d).unwrap()).unwrap(), data);
    }

    #[test]
    fn a_second_writer_of_a_blob_waits_then_finds_it_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"a layer two models share".to_vec();
        let (d, len) = (digest(&data), data.len() as u64);
        let mut first = store.ingest(&d, len, SRC).unwrap().unwrap();
        let (other, d2) = (store.clone(), d.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let second = std::thread::spawn(move || {
            tx.send(fs::read_link("/proc/thread-self").unwrap()).unwrap();
            other.ingest(&d2, len, SRC).unwrap().is_none()
        });
        let thread = rx.recv().unwrap();
        wait_until_blocked_in_flock(&thread, || second.is_finished());
        first.write(&data).unwrap();
        first.commit().unwrap();
        assert!(second.join().unwrap(), "then finds the blob published and writes nothing");
    }

    /// Waits until `thread` (`<pid>/task/<tid>` under /proc) is blocked in flock(2), the call
    /// `File::lock` makes: the kernel's word that it waits, no guess from a sleep. Panics when
    /// `finished()` first (it never waited) or after 10 s.
    fn wait_until_blocked_in_flock(thread: &std::path::Path, finished: impl Fn() -> bool) {
        const FLOCK: &str = if cfg!(target_arch = "aarch64") { "32" } else { "73" };
        let syscall = std::path::Path::new("/proc").join(thread).join("syscall");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert!(!finished(), "the second writer returned while the first held the blob");
            let now = fs::read_to_string(&syscall).unwrap_or_default();
            if now.split_whitespace().next() == Some(FLOCK) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the second writer never blocked: {now}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_blob_is_reused_only_by_sources_that_served_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"private layer".to_vec();
        let (d, len) = (digest(&data), data.len() as u64);
        let mut first = store.ingest(&d, len, SRC).unwrap().unwrap();
        first.write(&data).unwrap();
        let published = first.commit().unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&published);
        assert!(store.ingest(&d, len, SRC).unwrap().is_none(), "the source that served it reuses it");
        let other = "evil.example/attacker/model";
        assert!(!store.is_proven(&d, other).unwrap());
        // Another repository must send the bytes itself; then it is proven too, and the published
        // inode (which models hard-link) stays the same.
        let mut second = store.ingest(&d, len, other).unwrap().expect("another source downloads");
        assert_eq!(second.offset(), 0);
        second.write(&data).unwrap();
        second.commit().unwrap();
        assert!(store.is_proven(&d, other).unwrap() && store.is_proven(&d, SRC).unwrap());
        assert_eq!(inode(&published), before);
        assert!(store.ingest(&d, len, other).unwrap().is_none());
        // Wrong bytes from a third source prove nothing.
        let third = "evil.example/other";
        let mut wrong = store.ingest(&d, len, third).unwrap().unwrap();
        wrong.write(b"guessed bytes").unwrap();
        assert!(wrong.commit().is_err());
        assert!(!store.is_proven(&d, third).unwrap());
        assert_eq!(fs::read(&published).unwrap(), data);
    }

    #[test]
    fn partial_downloads_are_per_source_and_do_not_block_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 199) as u8).collect();
        let (d, len) = (digest(&data), data.len() as u64);
        let mut slow = store.ingest(&d, len, "slow.example/a").unwrap().unwrap();
        slow.write(&data[..4999]).unwrap();
        // While that writer holds its lock, another source starts from zero, at once.
        let (other, d2) = (store.clone(), d.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(other.ingest(&d2, len, SRC).unwrap().unwrap().offset()));
        let offset = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("not blocked by the other source");
        assert_eq!(offset, 0, "never resumes another source's bytes");
        drop(slow);
        assert_eq!(store.ingest(&d, len, "slow.example/a").unwrap().unwrap().offset(), 4999);
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        for bad in ["sha256:../../etc", "sha512:00", "sha256:ABC", ""] {
            assert!(digest_hex(bad).is_err(), "{bad}");
        }
    }
}
