//! The registry memo: what makes identical registry work happen once — resolutions per interval
//! (shared by every Model with the same repository, ref and credentials), inspections per digest
//! (digests are immutable), referrers, passed verifications, and clients per credential set.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Error;
use super::access::Access;
use super::trust::{Trust, Verifications};
use crate::api::Model;
use crate::registry::{self, Inspection, Options, RefSpec, Referrer, Registry, Repository, Resolution};

/// Everything that changes what a registry answers to whom, whole: a cache keyed by a hash of it
/// could hand one tenant's client (and credentials) to another on a collision.
type ClientKey = (Options, Option<(String, String)>);

fn client_key(access: &Access) -> ClientKey {
    (access.options.clone(), access.credential.as_ref().map(|c| (c.username.clone(), c.password.clone())))
}

type ResolutionKey = (Repository, RefSpec, ClientKey);
type ReferrersKey = (Repository, String, ClientKey);

/// The registry memo shared by every Model reconcile.
#[derive(Default)]
pub struct RegistryMemo {
    clients: Mutex<HashMap<ClientKey, Arc<Registry>>>,
    resolutions: Mutex<HashMap<ResolutionKey, (Resolution, Instant)>>,
    inspections: Mutex<HashMap<(Repository, String), Arc<Inspection>>>,
    referrers: Mutex<HashMap<ReferrersKey, (Vec<Referrer>, Instant)>>,
    /// One registry round trip per key at a time: the others wait for it and read the cache.
    in_flight: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// The last outage (no answer) per in-flight key, and when: a reconcile that waited for the
    /// same request gets that failure rather than asking the silent registry again. With bounded
    /// reconciles, Models queued one by one behind a registry that times out would hold every slot.
    outages: Mutex<HashMap<u64, (Instant, registry::Error)>>,
    verifications: Verifications,
}

/// Only for the in-flight gates: two keys that collide merely wait for each other.
fn key_hash(key: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// A cached answer and how long until it is due again, if it is not due yet. An answer with less
/// than a tenth of `max_age` left counts as due: a Model reconciled that close to the next read
/// would otherwise come back for a moment later and read again.
fn fresh<K: Hash + Eq, T: Clone>(
    cache: &Mutex<HashMap<K, (T, Instant)>>,
    key: &K,
    max_age: Duration,
) -> Option<(T, Duration)> {
    let cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    let (value, at) = cache.get(key)?;
    let left = max_age.checked_sub(at.elapsed())?;
    (left >= max_age / 10).then(|| (value.clone(), left))
}

/// Stores an answer read now, dropping answers older than a day (references no Model asks for).
fn remember<K: Hash + Eq, T>(cache: &Mutex<HashMap<K, (T, Instant)>>, key: K, value: T) {
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(24 * 3600));
    cache.insert(key, (value, Instant::now()));
}

/// A copy of an outage (the registry did not answer), which waiters share; other failures are
/// particular to the answer and are not.
fn outage(error: &registry::Error) -> Option<registry::Error> {
    match error {
        registry::Error::Unavailable { registry, detail } => {
            Some(registry::Error::Unavailable { registry: registry.clone(), detail: detail.clone() })
        }
        registry::Error::Timeout { registry, after } => {
            Some(registry::Error::Timeout { registry: registry.clone(), after: *after })
        }
        _ => None,
    }
}

/// Inspections kept; each is a few KiB.
const MAX_INSPECTIONS: usize = 512;

impl RegistryMemo {
    fn registry(&self, access: &Access) -> Result<(Arc<Registry>, ClientKey), Error> {
        let key = client_key(access);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = clients.get(&key) {
            return Ok((r.clone(), key));
        }
        let r = Arc::new(Registry::new(&access.options, access.credential.as_ref())?);
        clients.insert(key.clone(), r.clone());
        Ok((r, key))
    }

    /// Waits for the key's turn; then the outage the request made meanwhile, if any.
    async fn turn(&self, key: u64) -> (tokio::sync::OwnedMutexGuard<()>, Option<registry::Error>) {
        let since = Instant::now();
        let turn = self.gate(key).lock_owned().await;
        let outages = self.outages.lock().unwrap_or_else(|p| p.into_inner());
        let outage = outages.get(&key).filter(|(at, _)| *at >= since).and_then(|(_, e)| outage(e));
        (turn, outage)
    }

    /// Records `error` for the reconciles waiting on `key` when it is an outage.
    fn failed<T>(&self, key: u64, result: Result<T, registry::Error>) -> Result<T, Error> {
        if let Err(e) = &result
            && let Some(copy) = outage(e)
        {
            let mut outages = self.outages.lock().unwrap_or_else(|p| p.into_inner());
            outages.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(600));
            outages.insert(key, (Instant::now(), copy));
        }
        Ok(result?)
    }

    fn gate(&self, key: u64) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // Gates nobody holds or waits for can go: only the map refers to them.
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        gates.entry(key).or_default().clone()
    }

    /// An answer of `cache` for `key` with at least a tenth of `max_age` left, else `read`'s, made
    /// once for every reconcile asking at the same time (the others wait and take it, or its
    /// outage); with how long until it is due again.
    async fn shared_read<K: Hash + Eq, T: Clone>(
        &self,
        cache: &Mutex<HashMap<K, (T, Instant)>>,
        key: K,
        max_age: Duration,
        read: impl Future<Output = Result<T, registry::Error>>,
    ) -> Result<(T, Duration), Error> {
        if let Some(hit) = fresh(cache, &key, max_age) {
            return Ok(hit);
        }
        let (_turn, outage) = self.turn(key_hash(&key)).await;
        if let Some(hit) = fresh(cache, &key, max_age) {
            return Ok(hit);
        }
        if let Some(e) = outage {
            return Err(e.into());
        }
        let value = self.failed(key_hash(&key), read.await)?;
        remember(cache, key, value.clone());
        Ok((value, max_age))
    }

    /// Resolves `spec`, reusing a resolution of the same (repository, ref, credentials) with at
    /// least a tenth of `max_age` left; also says when that resolution is due again. A Model that
    /// comes back then shares the next resolution with every Model of its reference, so each
    /// reference is asked once per interval however long one pass over all Models takes.
    pub async fn resolve(
        &self,
        access: &Access,
        spec: &RefSpec,
        max_age: Duration,
    ) -> Result<(Resolution, Duration), Error> {
        let (registry, fp) = self.registry(access)?;
        let key = (access.repository.clone(), spec.clone(), fp);
        self.shared_read(&self.resolutions, key, max_age, registry.resolve(&access.repository, spec)).await
    }

    /// Verifies the inspected digest with the Model's trust material (passed verifications are cached).
    pub async fn verify(
        &self,
        access: &Access,
        model: &Model,
        trust: &Trust,
        inspection: &Inspection,
    ) -> Result<(crate::verify::Verification, bool), Error> {
        let (registry, _) = self.registry(access)?;
        self.verifications.verify(&registry, access, model, trust, inspection).await
    }

    /// What refers to `digest` (first page), reusing a read of the same (repository, digest,
    /// credentials) with at least a tenth of `max_age` left: Models sharing a reference ask the
    /// registry about once per interval, and a referrer attached later counts from then on.
    pub async fn referrers(&self, access: &Access, digest: &str, max_age: Duration) -> Result<Vec<Referrer>, Error> {
        let (registry, fp) = self.registry(access)?;
        let key = (access.repository.clone(), digest.to_owned(), fp);
        let read = registry.referrers(&access.repository, digest);
        Ok(self.shared_read(&self.referrers, key, max_age, read).await?.0)
    }

    pub async fn inspect(&self, access: &Access, digest: &str) -> Result<Arc<Inspection>, Error> {
        let key = (access.repository.clone(), digest.to_owned());
        let cached = || self.inspections.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        let (_turn, outage) = self.turn(key_hash(&key)).await;
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        if let Some(e) = outage {
            return Err(e.into());
        }
        let (registry, _) = self.registry(access)?;
        let inspected = registry::inspect(&registry, &access.repository, digest).await;
        let inspection = Arc::new(self.failed(key_hash(&key), inspected)?);
        let mut cache = self.inspections.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_INSPECTIONS {
            cache.clear();
        }
        cache.insert(key, inspection.clone());
        Ok(inspection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Credential;

    #[test]
    fn clients_are_shared_only_by_identical_transport_and_credentials() {
        let caches = RegistryMemo::default();
        let access = |user: &str, password: &str, insecure: bool| Access {
            repository: Repository::parse("r.example/team/model").unwrap(),
            options: Options { insecure, ..Options::default() },
            credential: Some(Credential { username: user.into(), password: password.into() }),
            credential_source: None,
        };
        let (a, _) = caches.registry(&access("tenant-a", "secret-a", false)).unwrap();
        let (same, _) = caches.registry(&access("tenant-a", "secret-a", false)).unwrap();
        assert!(Arc::ptr_eq(&a, &same));
        for other in [
            access("tenant-b", "secret-a", false),
            access("tenant-a", "secret-b", false),
            access("tenant-a", "secret-a", true),
        ] {
            let (b, _) = caches.registry(&other).unwrap();
            assert!(!Arc::ptr_eq(&a, &b), "{:?}", other.options);
        }
        let anonymous = Access { credential: None, ..access("x", "y", false) };
        assert!(!Arc::ptr_eq(&a, &caches.registry(&anonymous).unwrap().0));
    }

    #[test]
    fn an_answer_is_fresh_until_its_last_tenth_and_says_when_it_is_due() {
        let cache: Mutex<HashMap<&str, (u32, Instant)>> = Mutex::default();
        let minute = Duration::from_secs(60);
        let aged = |secs: u64| Instant::now().checked_sub(Duration::from_secs(secs)).unwrap();
        assert_eq!(fresh(&cache, &"a", minute), None, "nothing read yet");
        cache.lock().unwrap().insert("a", (1, aged(20)));
        let (value, left) = fresh(&cache, &"a", minute).unwrap();
        assert_eq!(value, 1);
        assert!(
            left <= Duration::from_secs(40) && left > Duration::from_secs(39),
            "due when the first read is a minute old: {left:?}"
        );
        cache.lock().unwrap().insert("a", (1, aged(55)));
        assert_eq!(fresh(&cache, &"a", minute), None, "5s left of 60 is due: read again rather than come back in 5s");
        cache.lock().unwrap().insert("a", (1, aged(61)));
        assert_eq!(fresh(&cache, &"a", minute), None, "older than max_age");
        remember(&cache, "a", 2);
        assert_eq!(fresh(&cache, &"a", minute).map(|(v, _)| v), Some(2), "a new read replaces the old one");
    }

    #[tokio::test]
    async fn reconciles_waiting_for_a_request_share_its_outage() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        // A registry that accepts connections and drops them unanswered after 300 ms.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    drop(socket);
                });
            }
        });
        let access = |name: &str| Access {
            repository: Repository::parse(&format!("127.0.0.1:{port}/{name}")).unwrap(),
            options: Options { insecure: true, ..Options::default() },
            credential: None,
            credential_source: None,
        };
        let (caches, spec, minute) =
            (Arc::new(RegistryMemo::default()), RefSpec::Tag("v1".into()), Duration::from_secs(60));
        let is_outage = |r: &Result<(Resolution, Duration), Error>| {
            matches!(r, Err(Error::Registry(registry::Error::Unavailable { .. } | registry::Error::Timeout { .. })))
        };
        let alone = caches.resolve(&access("alone"), &spec, minute).await;
        assert!(is_outage(&alone), "{:?}", alone.err());
        let per_request = accepted.swap(0, SeqCst);
        assert!(per_request > 0);
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (caches, access, spec) = (caches.clone(), access("shared"), spec.clone());
                tokio::spawn(async move { caches.resolve(&access, &spec, minute).await })
            })
            .collect();
        for task in tasks {
            let result = task.await.unwrap();
            assert!(is_outage(&result), "{:?}", result.err());
        }
        assert_eq!(accepted.load(SeqCst), per_request, "the reconciles that waited asked the silent registry again");
        let later = caches.resolve(&access("shared"), &spec, minute).await;
        assert!(is_outage(&later));
        assert_eq!(accepted.load(SeqCst), 2 * per_request, "a reconcile that did not wait asks again");
    }
}
