//! The cache's capacity budget: how much it may hold (`--cache-limit`), how much it holds, and
//! what a pull needs before it fetches anything. Pure decisions; [`super::usage`] measures.

use std::fmt;

use crate::modelpack::{Descriptor, LayerFormat, layer};

/// What one entry of a model (a directory, a file, a link: an inode or a directory entry) costs
/// besides its data: one filesystem block. [`super::usage::measure`] counts the same.
pub const ENTRY_COST: u64 = 4096;

/// `--cache-limit`: a Kubernetes quantity of bytes (`500Gi`, `800G`, `1073741824`) or a
/// percentage of the cache's filesystem (`80%`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheLimit {
    Bytes(u64),
    /// Hundredths of a percent (`80%` is 8000), 1 to 10000.
    Percent(u32),
}

impl Default for CacheLimit {
    fn default() -> CacheLimit {
        CacheLimit::Percent(8000)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "cache limit {0:?}: expected a quantity of bytes (500Gi, 800G, 1073741824) or a percentage above 0 and at most 100 (80%)"
)]
pub struct LimitError(String);

const SUFFIXES: [(&str, u64); 12] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

/// A decimal number `123` or `1.5` as (integer part, fraction digits); `None` when malformed.
fn decimal(text: &str) -> Option<(u64, &str)> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || (text.contains('.') && fraction.is_empty()) {
        return None;
    }
    Some((whole.parse().ok()?, fraction))
}

/// `value × unit` where value is `whole.fraction`, rounded down; `None` on overflow.
fn scale(whole: u64, fraction: &str, unit: u64) -> Option<u64> {
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 18 {
        return None;
    }
    let numerator: u128 = if fraction.is_empty() { 0 } else { fraction.parse().ok()? };
    let part = numerator * u128::from(unit) / 10u128.pow(fraction.len() as u32);
    u64::try_from(u128::from(whole).checked_mul(u128::from(unit))? + part).ok()
}

impl CacheLimit {
    pub fn parse(text: &str) -> Result<CacheLimit, LimitError> {
        let error = || LimitError(text.to_owned());
        if let Some(percent) = text.strip_suffix('%') {
            let (whole, fraction) = decimal(percent).ok_or_else(error)?;
            let hundredths = scale(whole, fraction, 100).ok_or_else(error)?;
            return match u32::try_from(hundredths) {
                Ok(h @ 1..=10_000) => Ok(CacheLimit::Percent(h)),
                _ => Err(error()),
            };
        }
        let (number, unit) = SUFFIXES
            .iter()
            .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n, *unit)))
            .unwrap_or((text, 1));
        let (whole, fraction) = decimal(number).ok_or_else(error)?;
        match scale(whole, fraction, unit) {
            Some(bytes) if bytes > 0 => Ok(CacheLimit::Bytes(bytes)),
            _ => Err(error()),
        }
    }

    /// The budget in bytes on a filesystem of `fs_size` bytes.
    pub fn bytes(self, fs_size: u64) -> u64 {
        match self {
            CacheLimit::Bytes(b) => b,
            CacheLimit::Percent(h) => (u128::from(fs_size) * u128::from(h) / 10_000) as u64,
        }
    }
}

impl std::str::FromStr for CacheLimit {
    type Err = LimitError;
    fn from_str(s: &str) -> Result<CacheLimit, LimitError> {
        CacheLimit::parse(s)
    }
}

impl fmt::Display for CacheLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheLimit::Bytes(b) => write!(f, "{b}"),
            CacheLimit::Percent(h) if h % 100 == 0 => write!(f, "{}%", h / 100),
            CacheLimit::Percent(h) => write!(f, "{}.{:02}%", h / 100, h % 100),
        }
    }
}

/// The cache's room, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Space {
    /// The budget.
    pub capacity: u64,
    /// Blobs, models and partial downloads, each inode once.
    pub used: u64,
    /// Free space of the cache's filesystem (for unprivileged users).
    pub fs_free: u64,
}

impl Space {
    /// What may still be written: under the budget and on the filesystem.
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.used).min(self.fs_free)
    }

    /// Bytes to free before `need` fits.
    pub fn shortfall(&self, need: u64) -> u64 {
        need.saturating_sub(self.free())
    }

    /// After `bytes` were removed from the cache.
    pub fn after_freeing(self, bytes: u64) -> Space {
        Space { used: self.used.saturating_sub(bytes), fs_free: self.fs_free.saturating_add(bytes), ..self }
    }
}

/// A layer as the preflight sees it.
#[derive(Clone, Copy, Debug)]
pub struct LayerNeed {
    pub size: u64,
    /// In the store, verified and served by this source before: nothing to fetch.
    pub present: bool,
    pub extract: Extract,
}

/// What a layer adds to the model directory beside its blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extract {
    /// Hard-linked from its blob: nothing.
    Linked,
    /// An archive whose extracted size is known (plain tar: at most its own size).
    Known(u64),
    /// A compressed archive that does not say: up to the extraction limit.
    Unknown,
}

/// Bytes a pull will write: missing blobs, plus the extracted archives when the model directory is
/// not built yet (bounded by the extraction limit, which is all an unknown archive may take).
pub fn need(layers: &[LayerNeed], model_built: bool, extract_limit: u64) -> u64 {
    let fetch = layers.iter().filter(|l| !l.present).fold(0u64, |sum, l| sum.saturating_add(l.size));
    if model_built {
        return fetch;
    }
    let mut extract = 0u64;
    for l in layers {
        match l.extract {
            Extract::Linked => {}
            Extract::Known(bytes) => extract = extract.saturating_add(bytes),
            Extract::Unknown => return fetch.saturating_add(extract_limit),
        }
    }
    fetch.saturating_add(extract.min(extract_limit))
}

/// What layer `descriptor` extracts: plain tars at most their size, compressed ones what their
/// file metadata annotation says for a single regular file, else unknown.
pub fn extract_of(descriptor: &Descriptor) -> Extract {
    let size = u64::try_from(descriptor.size).unwrap_or(0);
    match layer(descriptor).map(|l| l.format()) {
        Ok(LayerFormat::Raw | LayerFormat::SingleFile(_)) => Extract::Linked,
        Ok(LayerFormat::Tar) => Extract::Known(size),
        _ => declared_file_size(descriptor).map_or(Extract::Unknown, Extract::Known),
    }
}

/// `org.cncf.model.file.metadata+json` (or cnai's) of a single regular file: its size.
fn declared_file_size(descriptor: &Descriptor) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        size: u64,
        typeflag: serde_json::Value,
    }
    let text = crate::modelpack::Family::ALL
        .iter()
        .find_map(|f| descriptor.annotation(&f.annotation("model.file.metadata+json")))?;
    let meta: Metadata = serde_json::from_str(text).ok()?;
    // Regular file: `0` (as the tar byte '0' = 48 or as a string).
    let regular = matches!(&meta.typeflag, serde_json::Value::Number(n) if n.as_u64() == Some(48) || n.as_u64() == Some(0))
        || meta.typeflag.as_str() == Some("0");
    regular.then_some(meta.size)
}

/// Bytes for people: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_quantities_or_percentages() {
        let cases = [
            ("500Gi", Some(CacheLimit::Bytes(500 << 30))),
            ("1.5Gi", Some(CacheLimit::Bytes(3 << 29))),
            ("800G", Some(CacheLimit::Bytes(800_000_000_000))),
            ("1k", Some(CacheLimit::Bytes(1000))),
            ("1073741824", Some(CacheLimit::Bytes(1 << 30))),
            ("80%", Some(CacheLimit::Percent(8000))),
            ("12.5%", Some(CacheLimit::Percent(1250))),
            ("100%", Some(CacheLimit::Percent(10_000))),
            ("0.01%", Some(CacheLimit::Percent(1))),
            ("0%", None),
            ("101%", None),
            ("0.001%", None),
            ("0", None),
            ("-1Gi", None),
            ("1.Gi", None),
            (".5Gi", None),
            ("Gi", None),
            ("", None),
            ("%", None),
            ("5gi", None),
            ("100m", None),
            ("1 Gi", None),
            ("99999999999Ei", None),
        ];
        for (text, expected) in cases {
            assert_eq!(CacheLimit::parse(text).ok(), expected, "{text:?}");
        }
        assert!(CacheLimit::parse("5gi").unwrap_err().to_string().contains("\"5gi\""));
        for limit in [CacheLimit::Bytes(42), CacheLimit::Percent(8000), CacheLimit::Percent(1250)] {
            assert_eq!(CacheLimit::parse(&limit.to_string()), Ok(limit));
        }
    }

    #[test]
    fn a_percentage_is_of_the_filesystem() {
        assert_eq!(CacheLimit::Percent(8000).bytes(1000), 800);
        assert_eq!(CacheLimit::Percent(10_000).bytes(u64::MAX), u64::MAX);
        assert_eq!(CacheLimit::Bytes(7).bytes(1000), 7);
    }

    #[test]
    fn free_is_the_smaller_of_budget_and_filesystem() {
        let cases = [
            // capacity, used, fs_free, free
            (100, 30, 1000, 70),
            (100, 30, 50, 50),
            (100, 130, 1000, 0),
            (100, 0, 0, 0),
        ];
        for (capacity, used, fs_free, free) in cases {
            let space = Space { capacity, used, fs_free };
            assert_eq!(space.free(), free, "{space:?}");
            assert_eq!(space.shortfall(60), 60u64.saturating_sub(free), "{space:?}");
        }
        let after = Space { capacity: 100, used: 90, fs_free: 5 }.after_freeing(40);
        assert_eq!((after.used, after.fs_free, after.free()), (50, 45, 45));
    }

    #[test]
    fn need_counts_missing_blobs_and_extraction_once() {
        let l = |size, present, extract| LayerNeed { size, present, extract };
        let linked = l(100, false, Extract::Linked);
        let have = l(100, true, Extract::Linked);
        let tar = l(10, false, Extract::Known(10));
        let tar_have = l(10, true, Extract::Known(10));
        let gz = l(5, false, Extract::Unknown);
        let cases: Vec<(Vec<LayerNeed>, bool, u64)> = vec![
            (vec![], false, 0),
            (vec![linked], false, 100),
            (vec![have], false, 0),
            (vec![linked, have], true, 100),
            (vec![tar], false, 20),
            (vec![tar_have], false, 10),
            (vec![tar_have], true, 0),
            (vec![tar, gz], false, 15 + 1000),
            (vec![gz, tar], true, 15),
            (vec![l(10, false, Extract::Known(5000))], false, 10 + 1000),
        ];
        for (layers, built, expected) in cases {
            assert_eq!(need(&layers, built, 1000), expected, "{layers:?} built={built}");
        }
        assert_eq!(need(&[l(u64::MAX, false, Extract::Unknown)], false, 10), u64::MAX);
    }

    #[test]
    fn extraction_comes_from_the_media_type_and_file_metadata() {
        let d = |media_type: &str, annotations: &[(&str, &str)]| -> Descriptor {
            let mut a: std::collections::BTreeMap<String, String> =
                annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            a.insert("org.cncf.model.filepath".into(), "w".into());
            serde_json::from_value(serde_json::json!({
                "mediaType": media_type, "digest": format!("sha256:{}", "a".repeat(64)), "size": 7, "annotations": a
            }))
            .unwrap()
        };
        let meta = "org.cncf.model.file.metadata+json";
        let cases = [
            (d("application/vnd.cncf.model.weight.v1.raw", &[]), Extract::Linked),
            (d("application/vnd.cncf.model.weight.v1.tar", &[]), Extract::Known(7)),
            (d("application/vnd.cncf.model.weight.v1.tar+gzip", &[]), Extract::Unknown),
            (
                d("application/vnd.cncf.model.weight.v1.tar+zstd", &[(meta, r#"{"size":900,"typeflag":48}"#)]),
                Extract::Known(900),
            ),
            (
                d("application/vnd.cncf.model.weight.v1.tar+gzip", &[(meta, r#"{"size":900,"typeflag":"0"}"#)]),
                Extract::Known(900),
            ),
            (
                d("application/vnd.cncf.model.weight.v1.tar+gzip", &[(meta, r#"{"size":4096,"typeflag":53}"#)]),
                Extract::Unknown,
            ),
            (d("application/vnd.cncf.model.weight.v1.tar+gzip", &[(meta, "not json")]), Extract::Unknown),
        ];
        for (descriptor, expected) in cases {
            assert_eq!(extract_of(&descriptor), expected, "{descriptor:?}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(1 << 20), "1.0 MiB");
    }
}
