//! What building one model may write to the cache, counted while it is written: every entry it
//! creates (directory, file, link, the completion marker, the file index) one block, every byte
//! of extracted file data and of the index line by line. Nothing the artifact declares counts: a
//! layer that says 1 byte and extracts 40 MiB is stopped at the first block the budget does not
//! have. When a charge does not fit, the budget is measured again and eviction asked for exactly
//! that charge (a pull's preflight only knew what the artifact declared); when even that does not
//! make room, the charge is refused and the pull fails with `InsufficientStorage`.

use std::cell::{Cell, RefCell};
use std::io;

use super::Error;
use super::budget::CacheLimit;
use super::evict::{Evicted, make_room};
use super::layout::Lock;
use super::store::{Store, digest_hex};
use crate::modelpack::Manifest;

/// What a refill found: the room now free (under the budget and on the filesystem, everything
/// written so far already counted), and what it evicted to get it.
pub struct Grant {
    pub free: u64,
    pub evicted: Vec<Evicted>,
}

type Refill = Box<dyn FnMut(u64) -> Result<Grant, Error>>;

pub struct Allowance {
    /// What may still be written before the budget is measured again.
    room: Cell<u64>,
    charged: Cell<u64>,
    /// The charge that did not fit: (bytes charged before it + it, room there was).
    refused: Cell<Option<(u64, u64)>>,
    evicted: RefCell<Vec<Evicted>>,
    failed: RefCell<Option<Error>>,
    refill: RefCell<Refill>,
}

impl Allowance {
    /// Starts with no room: the first charge measures.
    pub fn new(refill: impl FnMut(u64) -> Result<Grant, Error> + 'static) -> Allowance {
        Allowance {
            room: Cell::new(0),
            charged: Cell::new(0),
            refused: Cell::new(None),
            evicted: RefCell::new(Vec::new()),
            failed: RefCell::new(None),
            refill: RefCell::new(Box::new(refill)),
        }
    }

    /// Counts `bytes` about to be written; an error (`StorageFull`) when they do not fit even
    /// after eviction, and for every charge after that.
    pub fn charge(&self, bytes: u64) -> io::Result<()> {
        if self.refused.get().is_some() || self.failed.borrow().is_some() {
            return Err(no_room());
        }
        if bytes > self.room.get() {
            let grant = (self.refill.borrow_mut())(bytes);
            let grant = match grant {
                Ok(grant) => grant,
                Err(e) => {
                    *self.failed.borrow_mut() = Some(e);
                    return Err(no_room());
                }
            };
            self.evicted.borrow_mut().extend(grant.evicted);
            self.room.set(grant.free);
            if bytes > grant.free {
                let charged = self.charged.get();
                self.refused.set(Some((charged.saturating_add(bytes), charged.saturating_add(grant.free))));
                return Err(no_room());
            }
        }
        self.room.set(self.room.get() - bytes);
        self.charged.set(self.charged.get().saturating_add(bytes));
        Ok(())
    }

    /// Bytes charged so far.
    #[cfg(test)]
    pub fn charged(&self) -> u64 {
        self.charged.get()
    }

    /// The error a build that failed with `error` reports: `InsufficientStorage` when a charge was
    /// refused (whatever error the refusal surfaced as), the refill's own error when measuring
    /// failed, else `error`.
    pub fn explain(&self, error: Error) -> Error {
        if let Some(failed) = self.failed.borrow_mut().take() {
            return failed;
        }
        match self.refused.get() {
            Some((needs, free)) => Error::InsufficientStorage { needs, free, evicted: self.evicted.take() },
            None => error,
        }
    }
}

fn no_room() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "the cache budget has no room for it")
}

/// The allowance of model `manifest_digest` being built in `store`: refilled by measuring the
/// cache against `limit` and evicting what a pull of it may evict (never the model itself nor the
/// blobs it is built from).
pub fn for_model(
    store: &Store,
    manifest_digest: &str,
    manifest: &Manifest,
    limit: Option<CacheLimit>,
) -> Result<Allowance, Error> {
    let hex = digest_hex(manifest_digest)?.to_owned();
    let mut pinned = vec![hex.clone()];
    pinned.extend(manifest.layers.iter().filter_map(|l| digest_hex(&l.digest).ok().map(str::to_owned)));
    let (store, own) = (store.clone(), Lock::model(&hex));
    Ok(Allowance::new(move |need| {
        let room = make_room(&store, limit, need, &own, &pinned)?;
        Ok(Grant { free: room.space.free(), evicted: room.evicted })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of `capacity` bytes, `evictable` of them held by something the first refill that
    /// lacks room "evicts"; charges go through [`Fake::write`], which puts them on its "disk".
    struct Fake {
        allowance: Allowance,
        disk: std::rc::Rc<Cell<u64>>,
        measured: std::rc::Rc<Cell<u32>>,
    }

    impl Fake {
        fn new(capacity: u64, evictable: u64) -> Fake {
            let (disk, measured) = (std::rc::Rc::new(Cell::new(evictable)), std::rc::Rc::new(Cell::new(0)));
            let (used, count) = (disk.clone(), measured.clone());
            let mut evictable = evictable;
            let allowance = Allowance::new(move |need| {
                count.set(count.get() + 1);
                let mut evicted = Vec::new();
                if capacity.saturating_sub(used.get()) < need && evictable > 0 {
                    evicted.push(Evicted { digest: "sha256:x".into(), bytes: evictable, deployments: vec![] });
                    used.set(used.get() - evictable);
                    evictable = 0;
                }
                Ok(Grant { free: capacity.saturating_sub(used.get()), evicted })
            });
            Fake { allowance, disk, measured }
        }

        fn write(&self, bytes: u64) -> io::Result<()> {
            self.allowance.charge(bytes)?;
            self.disk.set(self.disk.get() + bytes);
            Ok(())
        }
    }

    #[test]
    fn charges_fit_until_the_room_is_spent_then_the_next_byte_is_refused() {
        let f = Fake::new(10_000, 0);
        f.write(4096).unwrap();
        f.write(5904).unwrap();
        assert_eq!((f.allowance.charged(), f.measured.get()), (10_000, 1), "one measurement while it fits");
        assert_eq!(f.write(1).unwrap_err().kind(), io::ErrorKind::StorageFull);
        // Refused once, refused for good (no more measuring).
        assert!(f.write(0).is_err());
        assert_eq!(f.measured.get(), 2);
        match f.allowance.explain(Error::Internal("surfaced as".into())) {
            Error::InsufficientStorage { needs, free, evicted } => {
                assert_eq!((needs, free, evicted.len()), (10_001, 10_000, 0));
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_charge_that_does_not_fit_evicts_for_itself() {
        let f = Fake::new(50_100, 50_000);
        f.write(60).unwrap();
        assert_eq!(f.measured.get(), 1);
        f.write(30_000).unwrap();
        assert_eq!(f.measured.get(), 2, "measured again, and evicted");
        f.write(20_000).unwrap();
        assert!(f.write(41).is_err(), "nothing more to evict");
        let Error::InsufficientStorage { needs, free, evicted } = f.allowance.explain(Error::Internal(String::new()))
        else {
            panic!("not InsufficientStorage")
        };
        assert_eq!((needs, free), (50_101, 50_100));
        assert_eq!(evicted.iter().map(|e| e.bytes).sum::<u64>(), 50_000);
    }

    #[test]
    fn an_unrefused_error_is_left_alone_and_a_failed_measurement_is_reported() {
        let f = Fake::new(100, 0);
        f.write(1).unwrap();
        assert!(matches!(f.allowance.explain(Error::Internal("x".into())), Error::Internal(_)));
        let failing = Allowance::new(|_| Err(Error::Internal("statvfs failed".into())));
        assert!(failing.charge(1).is_err());
        assert!(failing.explain(Error::Internal("other".into())).to_string().contains("statvfs failed"));
    }
}
