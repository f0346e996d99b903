//! The [`Store`]'s paths and locks, joined from the names of `layout.rs` under its root.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use super::Error;
use super::layout::*;
use super::store::Store;

/// Whether `path` still names the file `file` has open (and locked): a holder removes its lock file
/// on release, so a waiter may have locked a file that is gone or replaced.
fn still_named(file: &File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match fs::metadata(path) {
        Ok(named) => Ok(named.ino() == held.ino() && named.dev() == held.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn open_lock(path: &Path) -> Result<File, Error> {
    OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(|e| Error::io(path, e))
}

impl Store {
    pub(super) fn dir(&self, which: &str) -> PathBuf {
        self.root().join(which)
    }

    /// `deployments/<ns>/<name>` (names already checked by [`super::parse_link`]'s rules).
    pub(super) fn deployment_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir(DEPLOYMENTS).join(namespace).join(name)
    }

    /// Where `deployments/<ns>/<name>/current` points for model `hex`.
    pub(super) fn current_target(hex: &str) -> String {
        format!("../../../{MODELS}/{hex}")
    }

    /// Where `deployments/<ns>/<name>/versions/<hex>` points.
    pub(super) fn version_target(hex: &str) -> String {
        format!("../../../../{MODELS}/{hex}")
    }

    pub(super) fn tmp_path(&self, what: Tmp) -> PathBuf {
        let pid = std::process::id();
        self.dir(TMP).join(match what {
            Tmp::Ingest { blob, source_key } => format!("ingest-{blob}-{source_key}"),
            Tmp::Model(hex) => format!("model-{hex}-{pid}"),
            Tmp::Index(hex) => format!("index-{hex}-{pid}"),
            Tmp::Complete(hex) => format!("complete-{hex}-{pid}"),
            Tmp::Signed(hex) => format!("signed-{hex}-{pid}"),
        })
    }

    pub(super) fn index_path(&self, model_hex: &str) -> PathBuf {
        self.dir(INDEX).join(model_hex)
    }

    fn lock_path(&self, lock: &Lock) -> PathBuf {
        self.dir(LOCKS).join(lock.file_name())
    }

    /// Takes a cache-wide lock, blocking until a concurrent holder releases it.
    pub fn lock(&self, lock: &Lock) -> Result<Locked, Error> {
        let path = self.lock_path(lock);
        loop {
            let file = open_lock(&path)?;
            file.lock().map_err(|e| Error::io(&path, e))?;
            if still_named(&file, &path).map_err(|e| Error::io(&path, e))? {
                return Ok(Locked { _file: file, path });
            }
        }
    }

    /// Takes a lock unless someone holds it (this process too, through another handle).
    pub fn try_lock(&self, lock: &Lock) -> Result<Option<Locked>, Error> {
        let path = self.lock_path(lock);
        loop {
            let file = open_lock(&path)?;
            match file.try_lock() {
                Ok(()) if still_named(&file, &path).map_err(|e| Error::io(&path, e))? => {
                    return Ok(Some(Locked { _file: file, path }));
                }
                Ok(()) => continue,
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
    }

    /// What the locks other processes (or other handles of this one) hold right now protect, but
    /// `own` (which the caller holds) and [`Lock::Gc`]. One lock file is open at a time, whatever
    /// `locks/` holds; a file nobody holds (left by a killed pull, or by a version that kept them)
    /// is removed on the way.
    pub fn held_by_others(&self, own: Option<&Lock>) -> Result<Vec<Protected>, Error> {
        let dir = self.dir(LOCKS);
        let mut held = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let lock = Lock::parse(&name);
            if lock == Some(Lock::Gc) || (lock.is_some() && lock.as_ref() == own) {
                continue;
            }
            let path = entry.path();
            let file = match File::options().write(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            match file.try_lock() {
                // Nobody holds it: left behind. Removed under its lock (a waiter starts over).
                Ok(()) if lock.is_some() => {
                    if still_named(&file, &path).map_err(|e| Error::io(&path, e))? {
                        let _ = fs::remove_file(&path);
                    }
                }
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => held.push(match lock {
                    Some(Lock::Model(hex)) => Protected::Model(hex),
                    Some(Lock::Ingest { blob, .. } | Lock::Commit(blob)) => Protected::Blob(blob),
                    Some(Lock::Gc) | None => Protected::Unknown,
                }),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn another_holder_is_reported_and_the_callers_own_lock_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let _mine = store.lock(&Lock::model(&a)).unwrap();
        let theirs = store.lock(&Lock::ingest(&b, "r/x")).unwrap();
        assert_eq!(store.held_by_others(Some(&Lock::model(&a))).unwrap(), vec![Protected::Blob(b.clone())]);
        drop(theirs);
        assert!(store.held_by_others(Some(&Lock::model(&a))).unwrap().is_empty());
        assert_eq!(store.held_by_others(None).unwrap(), vec![Protected::Model(a)]);
    }

    fn lock_files(store: &Store) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(store.dir(LOCKS))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Issue 25: a 1,024-layer pull left 2,051 lock files that nothing removed. Now a lock file
    /// lives as long as the lock: during the "pull" only what is held is there, after it nothing.
    #[test]
    fn lock_files_live_as_long_as_their_locks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let model = "e".repeat(64);
        let pull = store.lock(&Lock::model(&model)).unwrap();
        for layer in 0..1024u32 {
            let blob = hex::encode(Sha256::digest(layer.to_le_bytes()));
            let ingest = store.lock(&Lock::ingest(&blob, "r/x")).unwrap();
            let commit = store.lock(&Lock::Commit(blob.clone())).unwrap();
            assert_eq!(lock_files(&store).len(), 3, "layer {layer}: the model's, the ingest's, the commit's");
            drop((commit, ingest));
            assert!(store.try_lock(&Lock::Commit(blob)).unwrap().is_some(), "released");
        }
        assert_eq!(lock_files(&store), [format!("{model}.lock")]);
        drop(pull);
        assert_eq!(lock_files(&store), Vec::<String>::new());
        // Taken again after removal: a fresh file, removed again.
        let gc = store.lock(&Lock::Gc).unwrap();
        assert!(store.try_lock(&Lock::Gc).unwrap().is_none(), "held through another handle");
        drop(gc);
        assert!(lock_files(&store).is_empty());
    }

    /// Removing a lock file on release must not let two holders in: a waiter that got the lock of
    /// a removed file starts over. Eight threads, each entering the critical section 200 times.
    #[test]
    fn removed_lock_files_never_let_two_holders_in() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let inside = std::sync::Arc::new(AtomicUsize::new(0));
        let overlaps = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, inside, overlaps) = (store.clone(), inside.clone(), overlaps.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _held = store.lock(&Lock::model(&"c".repeat(64))).unwrap();
                        if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(overlaps.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(lock_files(&store).is_empty());
    }

    /// Lock files a killed pull (or an older version) left are removed by the next look at the
    /// locks, one open file at a time; held ones stay and are reported.
    #[test]
    fn left_behind_lock_files_are_removed_and_held_ones_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..300u32 {
            let hex = hex::encode(Sha256::digest(i.to_le_bytes()));
            for lock in [Lock::model(&hex), Lock::ingest(&hex, "r/x"), Lock::Commit(hex.clone())] {
                fs::write(store.lock_path(&lock), b"").unwrap();
            }
        }
        fs::write(store.dir(LOCKS).join("from-a-newer-version.lock"), b"").unwrap();
        let busy = "d".repeat(64);
        let _held = store.lock(&Lock::model(&busy)).unwrap();
        assert_eq!(store.held_by_others(None).unwrap(), vec![Protected::Model(busy.clone())]);
        assert_eq!(lock_files(&store), [format!("{busy}.lock"), "from-a-newer-version.lock".to_owned()]);
    }
}
