//! What the store remembers about its contents besides the bytes: each blob's stamp at commit (so a
//! pull can tell a blob changed since it was verified without re-reading it) and each model's last
//! use (the eviction order).

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::Error;
use super::layout::{BLOBS, STAMPS, USED};
use super::store::Store;

/// Size, inode and modification time: what in-place writes, truncation or replacement change.
fn stamp_of(meta: &fs::Metadata) -> String {
    format!("{} {} {} {}\n", meta.len(), meta.ino(), meta.mtime(), meta.mtime_nsec())
}

impl Store {
    /// Records blob `hex`'s stamp (right after it is published).
    pub(super) fn record_stamp(&self, hex: &str) -> Result<(), Error> {
        let blob = self.dir(BLOBS).join(hex);
        let meta = fs::metadata(&blob).map_err(|e| Error::io(&blob, e))?;
        let path = self.dir(STAMPS).join(hex);
        fs::write(&path, stamp_of(&meta)).map_err(|e| Error::io(&path, e))
    }

    /// Whether blob `hex` looks as it did when committed. `false` when no stamp was recorded (a
    /// cache from an older version): the caller re-hashes it once.
    pub(super) fn blob_unchanged(&self, hex: &str) -> Result<bool, Error> {
        let blob = self.dir(BLOBS).join(hex);
        let meta = match fs::symlink_metadata(&blob) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(&blob, e)),
        };
        let path = self.dir(STAMPS).join(hex);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text == stamp_of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Re-hashes blob `hex` when its stamp changed; records the stamp again when the bytes still
    /// match. `Ok(false)`: the bytes no longer match their name.
    pub(super) fn check_blob(&self, hex: &str) -> Result<bool, Error> {
        if self.blob_unchanged(hex)? {
            return Ok(true);
        }
        let blob = self.dir(BLOBS).join(hex);
        if !hash_matches(&blob, hex, &mut Pace::unlimited())? {
            return Ok(false);
        }
        self.record_stamp(hex)?;
        Ok(true)
    }

    /// Records that model `hex` was used now (linked as current, pulled, or kept).
    pub fn touch_model(&self, hex: &str) -> Result<(), Error> {
        let path = self.dir(USED).join(hex);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        file.set_modified(SystemTime::now()).map_err(|e| Error::io(&path, e))
    }

    /// When model `hex` was last used; `None` when never recorded (oldest of all).
    pub fn last_used(&self, hex: &str) -> Option<SystemTime> {
        fs::metadata(self.dir(USED).join(hex)).and_then(|m| m.modified()).ok()
    }

    pub(super) fn forget_use(&self, hex: &str) {
        let _ = fs::remove_file(self.dir(USED).join(hex));
    }
}

/// Reads at most `rate` bytes a second (scrubs share the disk with the workloads).
pub struct Pace {
    rate: Option<u64>,
    started: Instant,
    read: u64,
}

impl Pace {
    pub fn new(rate: Option<u64>) -> Pace {
        Pace { rate: rate.filter(|r| *r > 0), started: Instant::now(), read: 0 }
    }

    pub fn unlimited() -> Pace {
        Pace::new(None)
    }

    pub fn bytes(&self) -> u64 {
        self.read
    }

    /// Counts `n` bytes read and sleeps until they are within the rate.
    fn account(&mut self, n: u64) {
        self.read += n;
        let Some(rate) = self.rate else { return };
        let due = Duration::from_secs_f64(self.read as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// The SHA-256 of a file as hex, read at `pace`.
pub fn hash_file(path: &Path, pace: &mut Pace) -> Result<String, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    hash_reader(file, pace).map_err(|e| Error::io(path, e))
}

/// The SHA-256 of what `reader` holds as hex, read at `pace`.
pub fn hash_reader(mut reader: impl Read, pace: &mut Pace) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        pace.account(n as u64);
    }
}

pub(super) fn hash_matches(path: &Path, hex: &str, pace: &mut Pace) -> Result<bool, Error> {
    Ok(hash_file(path, pace)? == hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_changed_in_place_is_rehashed_and_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"verified bytes".to_vec();
        let hex = hex::encode(Sha256::digest(&data));
        let mut ingest = store.ingest(&format!("sha256:{hex}"), data.len() as u64, "r/x").unwrap().unwrap();
        ingest.write(&data).unwrap();
        let path = ingest.commit().unwrap();
        assert!(store.blob_unchanged(&hex).unwrap());
        assert!(store.check_blob(&hex).unwrap());
        // Same size, one byte different, through the (read-only for others) file.
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let mut bytes = data.clone();
        bytes[3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(!store.blob_unchanged(&hex).unwrap());
        assert!(!store.check_blob(&hex).unwrap());
        // Restored bytes with a new mtime: re-hashed, accepted, stamped again.
        fs::write(&path, &data).unwrap();
        assert!(store.check_blob(&hex).unwrap());
        assert!(store.blob_unchanged(&hex).unwrap());
    }

    #[test]
    fn the_pace_bounds_the_rate() {
        let mut pace = Pace::new(Some(1000));
        let started = Instant::now();
        pace.account(300);
        pace.account(300);
        assert!(started.elapsed() >= Duration::from_millis(590), "{:?}", started.elapsed());
        let mut free = Pace::unlimited();
        free.account(1 << 40);
        assert_eq!(free.bytes(), 1 << 40);
    }
}
