//! Making room for a pull. Never a model any deployment links as `current`, never what another
//! pull holds (its lock) or what this pull needs; first what no deployment holds (models and blobs
//! left by failures), then versions kept only as previous ones, least recently used first.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Error;
use super::budget::{CacheLimit, Space};
use super::gc::{Hold, drop_kept, holders, layer_blobs};
use super::layout::{Lock, Protected};
use super::store::Store;
use super::usage::{Inventory, measure, space};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// No deployment holds it.
    Orphan,
    /// Deployments keep it as a previous version only.
    Kept,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Model,
    /// A blob no model in the store was built from.
    Blob,
}

/// Something eviction may remove.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub hex: String,
    pub kind: Kind,
    pub class: Class,
    /// `None`: never recorded, the oldest of all.
    pub last_used: Option<SystemTime>,
    /// Its files and blobs.
    pub inodes: BTreeSet<u64>,
    /// What only it holds besides them (a model's entries and index, see [`super::usage::ModelInodes::own`]).
    pub own: u64,
}

/// The eviction order: orphans first, then least recently used, then by digest (deterministic).
pub fn order(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| (a.class, a.last_used, &a.hex).cmp(&(b.class, b.last_used, &b.hex)));
}

/// Takes ordered candidates until `shortfall` bytes are freed (all of them when that is not
/// enough). `holds` counts, per inode, everything in the cache that holds it, the candidates
/// included: an inode is freed when its last holder goes. Returns (index, bytes it frees).
pub fn choose(
    candidates: &[Candidate],
    holds: &HashMap<u64, usize>,
    sizes: &HashMap<u64, u64>,
    shortfall: u64,
) -> Vec<(usize, u64)> {
    let mut holds = holds.clone();
    let (mut chosen, mut freed) = (Vec::new(), 0u64);
    for (index, candidate) in candidates.iter().enumerate() {
        if freed >= shortfall {
            break;
        }
        let mut bytes = candidate.own;
        for inode in &candidate.inodes {
            let count = holds.entry(*inode).or_insert(1);
            *count = count.saturating_sub(1);
            if *count == 0 {
                bytes = bytes.saturating_add(sizes.get(inode).copied().unwrap_or(0));
            }
        }
        freed = freed.saturating_add(bytes);
        chosen.push((index, bytes));
    }
    chosen
}

/// One thing evicted, in the pull's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evicted {
    pub digest: String,
    pub bytes: u64,
    /// `namespace/name` of the deployments that kept it as a previous version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<String>,
}

/// What [`make_room`] found and did.
#[derive(Debug)]
pub struct Room {
    pub space: Space,
    pub evicted: Vec<Evicted>,
}

/// Evicts until `need` bytes fit (or nothing more may go). `own`: the caller's model lock;
/// `pinned`: blobs (hex) the caller's pull uses.
pub fn make_room(
    store: &Store,
    limit: Option<CacheLimit>,
    need: u64,
    own: &Lock,
    pinned: &[String],
) -> Result<Room, Error> {
    let inv = measure(store)?;
    let space = space(store, limit, inv.used())?;
    if space.shortfall(need) == 0 {
        return Ok(Room { space, evicted: Vec::new() });
    }
    let _gc = store.lock(&Lock::Gc)?;
    let held = store.held_by_others(Some(own))?;
    let mut pinned: BTreeSet<String> = pinned.iter().cloned().collect();
    let mut busy_models = BTreeSet::new();
    if let Lock::Model(hex) = own {
        busy_models.insert(hex.clone());
    }
    for what in &held {
        match what {
            Protected::Model(hex) => {
                busy_models.insert(hex.clone());
                pinned.insert(hex.clone());
                pinned.extend(layer_blobs(store, hex).unwrap_or_default());
            }
            Protected::Blob(hex) => {
                pinned.insert(hex.clone());
            }
            // A lock this version cannot name: touch nothing.
            Protected::Unknown => return Ok(Room { space, evicted: Vec::new() }),
        }
    }
    let (mut candidates, holds) = candidates(store, &inv, &busy_models, &pinned)?;
    order(&mut candidates);
    let (mut evicted, mut remaining) = (Vec::new(), holds.clone());
    for (index, bytes) in choose(&candidates, &holds, &inv.sizes, space.shortfall(need)) {
        for inode in &candidates[index].inodes {
            remaining.entry(*inode).and_modify(|n| *n = n.saturating_sub(1));
        }
        evicted.extend(evict(store, &inv, &remaining, &candidates[index], bytes)?);
    }
    let freed = evicted.iter().map(|e| e.bytes).sum();
    Ok(Room { space: space.after_freeing(freed), evicted })
}

type Holds = HashMap<u64, usize>;

/// The candidates and, per inode, how many things hold it.
fn candidates(
    store: &Store,
    inv: &Inventory,
    busy_models: &BTreeSet<String>,
    pinned: &BTreeSet<String>,
) -> Result<(Vec<Candidate>, Holds), Error> {
    let holders = holders(store)?;
    let mut holds: Holds = HashMap::new();
    let mut add = |inodes: &BTreeSet<u64>| inodes.iter().for_each(|i| *holds.entry(*i).or_default() += 1);
    let mut out = Vec::new();
    let mut built_from = BTreeSet::new();
    for (hex, model) in &inv.models {
        built_from.extend(model.blobs.iter().cloned());
        let inodes = inv.model_inodes(hex);
        add(&inodes);
        let held: Vec<Hold> = holders.iter().filter(|h| &h.model == hex).map(|h| h.hold).collect();
        if held.contains(&Hold::Current) || busy_models.contains(hex) {
            continue;
        }
        let class = if held.is_empty() { Class::Orphan } else { Class::Kept };
        let last_used = store.last_used(hex);
        out.push(Candidate { hex: hex.clone(), kind: Kind::Model, class, last_used, inodes, own: model.own });
    }
    for (hex, inode) in &inv.blobs {
        if pinned.contains(hex) {
            add(&BTreeSet::from([*inode]));
        } else if !built_from.contains(hex) {
            let inodes = BTreeSet::from([*inode]);
            add(&inodes);
            let (kind, class) = (Kind::Blob, Class::Orphan);
            out.push(Candidate { hex: hex.clone(), kind, class, last_used: None, inodes, own: 0 });
        }
    }
    Ok((out, holds))
}

/// Removes one candidate: a model with its blobs that nothing else holds any more (`remaining`
/// counts holders once this candidate and those before it are gone), or an orphan blob. Each is
/// removed under its own lock; `None` when a pull took the model's lock since the check.
fn evict(
    store: &Store,
    inv: &Inventory,
    remaining: &Holds,
    candidate: &Candidate,
    bytes: u64,
) -> Result<Option<Evicted>, Error> {
    let mut deployments = Vec::new();
    if candidate.kind == Kind::Model {
        let Some(_model) = store.try_lock(&Lock::model(&candidate.hex))? else { return Ok(None) };
        deployments = drop_kept(store, &candidate.hex)?;
        store.remove_model(&candidate.hex)?;
        for blob in inv.models.get(&candidate.hex).map(|m| m.blobs.as_slice()).unwrap_or_default() {
            if inv.blobs.get(blob).is_some_and(|i| remaining.get(i).copied().unwrap_or(0) == 0) {
                remove_blob(store, blob)?;
            }
        }
    } else if !remove_blob(store, &candidate.hex)? {
        return Ok(None);
    }
    Ok(Some(Evicted { digest: format!("sha256:{}", candidate.hex), bytes, deployments }))
}

/// Removes blob `hex` under its commit lock; `false` when a pull is publishing it right now.
fn remove_blob(store: &Store, hex: &str) -> Result<bool, Error> {
    let Some(_commit) = store.try_lock(&Lock::Commit(hex.to_owned()))? else { return Ok(false) };
    store.remove_blob(hex)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(seconds: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
    }

    fn c(hex: &str, kind: Kind, class: Class, last_used: Option<SystemTime>, inodes: &[u64]) -> Candidate {
        Candidate { hex: hex.into(), kind, class, last_used, inodes: inodes.iter().copied().collect(), own: 0 }
    }

    #[test]
    fn orphans_go_first_then_the_least_recently_used() {
        let mut list = vec![
            c("k-new", Kind::Model, Class::Kept, at(30), &[]),
            c("k-old", Kind::Model, Class::Kept, at(10), &[]),
            c("k-never", Kind::Model, Class::Kept, None, &[]),
            c("o-model", Kind::Model, Class::Orphan, at(50), &[]),
            c("o-blob", Kind::Blob, Class::Orphan, None, &[]),
            c("k-tie-b", Kind::Model, Class::Kept, at(20), &[]),
            c("k-tie-a", Kind::Model, Class::Kept, at(20), &[]),
        ];
        order(&mut list);
        let names: Vec<&str> = list.iter().map(|c| c.hex.as_str()).collect();
        assert_eq!(names, ["o-blob", "o-model", "k-never", "k-old", "k-tie-a", "k-tie-b", "k-new"]);
    }

    #[test]
    fn choose_stops_once_enough_is_freed_and_counts_shared_inodes_once() {
        let sizes: HashMap<u64, u64> = [(1, 100), (2, 50), (3, 70), (4, 30), (9, 1000)].into();
        // a: inodes 1, 2 (2 shared with b); b: 2, 3; d: 4; 9 is held by a current model only.
        let list = vec![
            c("a", Kind::Model, Class::Kept, at(1), &[1, 2]),
            c("b", Kind::Model, Class::Kept, at(2), &[2, 3]),
            c("d", Kind::Model, Class::Kept, at(3), &[4]),
        ];
        let holds: HashMap<u64, usize> = [(1, 1), (2, 2), (3, 1), (4, 1), (9, 1)].into();
        let cases: [(u64, Vec<(usize, u64)>); 6] = [
            (0, vec![]),
            (1, vec![(0, 100)]),
            (100, vec![(0, 100)]),
            // b frees its own inode and the one it shared with a.
            (101, vec![(0, 100), (1, 120)]),
            (220, vec![(0, 100), (1, 120)]),
            // Not enough even with everything: everything is chosen, the current model's inode never.
            (5000, vec![(0, 100), (1, 120), (2, 30)]),
        ];
        for (shortfall, expected) in cases {
            assert_eq!(choose(&list, &holds, &sizes, shortfall), expected, "shortfall {shortfall}");
        }
    }

    /// A store with models built by hand: each model `name` has one layer blob of `size` bytes
    /// (`shared` names a layer it shares instead) hard-linked into its directory.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
    }

    fn hex_of(name: &str) -> String {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(name.as_bytes()))
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            Fixture { _dir: dir, store }
        }

        fn model(&self, name: &str, layer: &str, size: usize) -> String {
            let (model, layer_hex) = (hex_of(name), hex_of(layer));
            let blob = self.store.dir(super::super::layout::BLOBS).join(&layer_hex);
            if !blob.exists() {
                std::fs::write(&blob, vec![7u8; size]).unwrap();
            }
            let manifest = serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:00", "size": 1},
                "layers": [{"mediaType": "x", "digest": format!("sha256:{layer_hex}"), "size": size}]});
            std::fs::write(self.store.dir(super::super::layout::BLOBS).join(&model), manifest.to_string()).unwrap();
            let dir = self.store.dir(super::super::layout::MODELS).join(&model);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::hard_link(&blob, dir.join("w.bin")).unwrap();
            model
        }

        fn room(&self, limit: u64, need: u64, own: &str, pinned: &[String]) -> Room {
            make_room(&self.store, Some(CacheLimit::Bytes(limit)), need, &Lock::model(own), pinned).unwrap()
        }

        fn models(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.store.dir(super::super::layout::MODELS))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn make_room_keeps_current_versions_shared_blobs_and_what_the_pull_needs() {
        let f = Fixture::new();
        let (a, b, c) = (f.model("a", "la", 1000), f.model("b", "shared", 1000), f.model("c", "shared", 1000));
        let d = f.model("d", "ld", 1000);
        crate::cache::set_current(&f.store, "ns", "serve", &format!("sha256:{a}")).unwrap();
        crate::cache::set_current(&f.store, "ns", "other", &format!("sha256:{d}")).unwrap();
        crate::cache::keep_versions(&f.store, "ns", "other", &format!("sha256:{d}"), &[format!("sha256:{b}")]).unwrap();
        // a current, d current, b kept, c orphan (sharing b's layer); the pull needs `d`'s layer.
        let used = crate::cache::usage::measure(&f.store).unwrap().used();
        let pinned = vec![hex_of("ld")];
        // Enough room: nothing goes.
        assert!(f.room(used + 10, 10, &"e".repeat(64), &pinned).evicted.is_empty());
        // Short by one byte: the orphan goes first; it frees only its manifest and its entries
        // (its directory and file: the layer is b's too).
        let room = f.room(used, 1, &"e".repeat(64), &pinned);
        assert_eq!(room.evicted.iter().map(|e| e.digest.clone()).collect::<Vec<_>>(), [format!("sha256:{c}")]);
        assert!(room.evicted[0].bytes < 1000 + 2 * crate::cache::ENTRY_COST, "{room:?}");
        assert!(f.store.dir(super::super::layout::BLOBS).join(hex_of("shared")).exists());
        // Short by far more than everything: b (kept) goes with the layer now nobody holds, never a
        // current model nor the pinned blob.
        let room = f.room(0, 1 << 40, &"e".repeat(64), &pinned);
        assert_eq!(room.evicted.iter().map(|e| e.digest.clone()).collect::<Vec<_>>(), [format!("sha256:{b}")]);
        assert_eq!(room.evicted[0].deployments, ["ns/other"]);
        assert!(room.evicted[0].bytes >= 1000);
        assert!(room.space.shortfall(1 << 40) > 0);
        let mut left = vec![a.clone(), d.clone()];
        left.sort();
        assert_eq!(f.models(), left);
        assert!(!f.store.dir(super::super::layout::BLOBS).join(hex_of("shared")).exists());
        assert!(f.store.dir(super::super::layout::BLOBS).join(hex_of("ld")).exists());
    }

    #[test]
    fn another_pulls_model_and_blobs_are_never_evicted() {
        let f = Fixture::new();
        let (a, _) = (f.model("a", "la", 1000), f.model("b", "lb", 1000));
        let _busy = f.store.lock(&Lock::model(&a)).unwrap();
        let _writing = f.store.lock(&Lock::Ingest { blob: hex_of("lb"), source: "k".into() }).unwrap();
        let room = f.room(0, 1 << 40, &"e".repeat(64), &[]);
        // a is being pulled (its model lock): untouched. b goes, but not its blob, being written.
        assert_eq!(
            room.evicted.iter().map(|e| e.digest.clone()).collect::<Vec<_>>(),
            [format!("sha256:{}", hex_of("b"))]
        );
        assert!(f.store.model_dir(&format!("sha256:{a}")).unwrap().exists());
        assert!(f.store.dir(super::super::layout::BLOBS).join(hex_of("lb")).exists());
    }

    #[test]
    fn an_inode_held_by_something_kept_is_never_counted_as_freed() {
        let sizes: HashMap<u64, u64> = [(1, 100)].into();
        let list = vec![c("a", Kind::Model, Class::Orphan, None, &[1])];
        // Also held by a current model (or a pinned blob): evicting `a` frees nothing.
        let holds: HashMap<u64, usize> = [(1, 2)].into();
        assert_eq!(choose(&list, &holds, &sizes, 10), vec![(0, 0)]);
    }
}
