//! What a model file holds, read from its first (or last) bytes without loading it: safetensors
//! headers, GGUF metadata, PyTorch zip checkpoints and plain pickles, whose imports are listed and
//! judged without running them ([`pickle`]). Pure functions over byte slices; [`read`] is the one
//! loop that feeds them a file's bytes, from a registry's ranges or from disk.
//!
//! Every parser answers `Err(Fault::Truncated(n))` when it needs the first `n` bytes (or, for a zip,
//! the part of the file it names) before it can go on, so the reader fetches exactly what a header
//! says it needs, within its bounds, and never more.

mod archive;
pub mod gguf;
mod lists;
pub mod pickle;
pub mod read;
pub mod safetensors;
mod sniff;
pub mod zip;

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use archive::{ArchiveContents, FileContents, Read as ArchiveFile};
pub use sniff::{HEAD, Sniffed, sniff};

/// Most entries of a list (imports, reasons, dtypes, members, metadata) a file's contents keep:
/// policies iterate them, and a hostile header must not grow the variables without bound.
pub const MAX_LISTED: usize = 64;
/// Longest string kept in the contents (a metadata value, an import, a member name).
pub const MAX_TEXT: usize = 256;

/// A file's format as its first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Safetensors,
    /// A zip checkpoint as `torch.save` writes it (a `data.pkl` beside raw tensor storages).
    Pytorch,
    /// A plain pickle (`.pkl`, `.joblib`, legacy `torch.save`).
    Pickle,
    Gguf,
    /// Anything else (text, JSON, an unknown binary).
    Other,
    /// Not read: an archive layer, or over the bounds; `reason` says which.
    Unread,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Pytorch => "pytorch",
            Format::Pickle => "pickle",
            Format::Gguf => "gguf",
            Format::Other => "other",
            Format::Unread => "unread",
        }
    }

    /// The formats that carry weights.
    pub fn holds_weights(self) -> bool {
        matches!(self, Format::Safetensors | Format::Pytorch | Format::Pickle | Format::Gguf)
    }
}

/// What a pickle scan concluded. Ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every import is on the allow-list and the whole pickle was read.
    Safe,
    /// An import outside both lists, or a call the scan cannot attribute to an import.
    Suspicious,
    /// Malformed, truncated or over the bounds, with nothing denied found: never "safe".
    Unknown,
    /// An import on the deny-list.
    Unsafe,
}

/// A pickle's imports and the verdict on them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PickleReport {
    pub verdict: Verdict,
    /// Every `module.name` imported (GLOBAL, STACK_GLOBAL, INST), sorted, at most [`MAX_LISTED`].
    pub imports: Vec<String>,
    /// Why the verdict is not "safe", one line each, at most [`MAX_LISTED`].
    pub reasons: Vec<String>,
}

impl Default for Verdict {
    /// A report made before anything was judged.
    fn default() -> Self {
        Verdict::Unknown
    }
}

/// What one file holds (the `contents` of a policy's layer and of `inspect -o json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Contents {
    pub format: Format,
    /// Total parameters (elements of every tensor), when the header states the shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    /// Number of tensors, when the header states them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors: Option<u64>,
    /// Tensor element types, distinct, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dtypes: Vec<String>,
    /// Scalar metadata: safetensors `__metadata__`, GGUF keys (arrays as `[N items]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// A zip checkpoint's member names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// The scan of the file's pickles (all of a zip's pickle members together), when one was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickle: Option<PickleReport>,
    /// Why the file was not read, or what is wrong with the header that was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Contents {
    pub fn of(format: Format) -> Contents {
        Contents {
            format,
            parameters: None,
            tensors: None,
            dtypes: Vec::new(),
            metadata: BTreeMap::new(),
            members: Vec::new(),
            pickle: None,
            reason: None,
        }
    }

    pub fn unread(reason: impl Into<String>) -> Contents {
        Contents { reason: Some(clip(&reason.into())), ..Contents::of(Format::Unread) }
    }

    /// `format` whose header could not be understood: no counts, the reason.
    pub fn malformed(format: Format, reason: impl Into<String>) -> Contents {
        Contents { reason: Some(clip(&reason.into())), ..Contents::of(format) }
    }

    /// One line for `inspect`: the format, counts, the pickle verdict and its first reason.
    pub fn line(&self) -> String {
        let mut s = self.format.as_str().to_owned();
        if let Some(p) = self.parameters {
            s.push_str(&format!(", {p} parameters"));
        }
        if let Some(t) = self.tensors {
            s.push_str(&format!(" in {t} tensors"));
        }
        if !self.dtypes.is_empty() {
            s.push_str(&format!(" ({})", self.dtypes.join(", ")));
        }
        if let Some(p) = &self.pickle {
            s.push_str(&format!(", pickle {}", verdict_name(p.verdict)));
            if !p.imports.is_empty() {
                s.push_str(&format!(" importing {}", p.imports.join(" ")));
            }
            if let Some(r) = p.reasons.first() {
                s.push_str(&format!(": {r}"));
            }
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!(": {r}"));
        }
        s
    }

    pub fn is_unsafe(&self) -> bool {
        self.pickle.as_ref().is_some_and(|p| p.verdict == Verdict::Unsafe)
    }
}

/// Why a parser stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// It needs the file's first `n` bytes (its whole header) to go on.
    Truncated(u64),
    /// The bytes contradict the format; the message says where.
    Malformed(String),
}

/// The top-level `weights` variable: the model's files summed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Weights {
    /// Parameters of every file whose header states them.
    pub parameters: u64,
    /// Formats of the weight layers and of every file holding weights, distinct, in [`Format`]'s order.
    pub formats: Vec<Format>,
    /// A pickle of some file imports a denied callable.
    #[serde(rename = "unsafe")]
    pub is_unsafe: bool,
    /// The worst pickle verdict of any file, absent when no pickle was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickle: Option<Verdict>,
    /// Weight layers whose contents were not read.
    pub unread: u64,
    /// The config's `paramSize` as a number (`"8B"` is 8,000,000,000), when it parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_parameters: Option<u64>,
}

impl Weights {
    /// Sums `files`, each `(is a weight layer, its contents)`, with the config's `paramSize`.
    pub fn sum<'a>(files: impl IntoIterator<Item = (bool, &'a Contents)>, param_size: Option<&str>) -> Weights {
        let mut w = Weights { declared_parameters: param_size.and_then(parse_param_size), ..Weights::default() };
        let mut formats = BTreeSet::new();
        for (weight_layer, c) in files {
            w.parameters = w.parameters.saturating_add(c.parameters.unwrap_or(0));
            if weight_layer || c.format.holds_weights() {
                formats.insert(c.format);
            }
            w.unread += u64::from(weight_layer && c.format == Format::Unread);
            if let Some(p) = &c.pickle {
                w.pickle = w.pickle.max(Some(p.verdict));
            }
        }
        w.is_unsafe = w.pickle == Some(Verdict::Unsafe);
        w.formats = formats.into_iter().collect();
        w
    }

    /// One line for a Model's status: formats, parameters, the worst pickle verdict.
    pub fn summary(&self) -> String {
        let formats: Vec<_> = self.formats.iter().map(|f| f.as_str()).collect();
        let mut s = format!(
            "{} parameters in {}",
            self.parameters,
            if formats.is_empty() { "no weights".to_owned() } else { formats.join(", ") }
        );
        if let Some(v) = self.pickle {
            s.push_str(&format!("; pickles {}", verdict_name(v)));
        }
        if self.unread > 0 {
            s.push_str(&format!("; {} weight layers unread", self.unread));
        }
        s
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Safe => "safe",
        Verdict::Suspicious => "suspicious",
        Verdict::Unknown => "unknown",
        Verdict::Unsafe => "unsafe",
    }
}

/// `"7B"`, `"1.5b"`, `"350M"`, `"8x7B"` (experts multiply), `"1,000,000"` as a number of parameters.
pub fn parse_param_size(text: &str) -> Option<u64> {
    let text = text.trim().replace([',', '_', ' '], "");
    let mut total: f64 = 1.0;
    for factor in text.split(['x', 'X']) {
        let (number, scale) = match factor.char_indices().last()? {
            (i, c) if c.is_ascii_alphabetic() => (&factor[..i], c.to_ascii_uppercase()),
            _ => (factor, ' '),
        };
        let scale = match scale {
            ' ' => 1.0,
            'K' => 1e3,
            'M' => 1e6,
            'B' | 'G' => 1e9,
            'T' => 1e12,
            _ => return None,
        };
        let n: f64 = number.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
        total *= n * scale;
    }
    (total < 1e18).then_some(total.round() as u64)
}

/// A string from a file made one bounded, printable line.
pub fn clip(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() || crate::printable::is_unprintable(c) { ' ' } else { c })
        .take(MAX_TEXT)
        .collect();
    if text.chars().count() > MAX_TEXT {
        out.push('…');
    }
    out
}

/// Pushes `item` unless the list is full; says whether it was kept.
fn push_bounded(list: &mut Vec<String>, item: String) -> bool {
    if list.len() >= MAX_LISTED {
        return false;
    }
    list.push(item);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_sizes_parse_as_people_write_them() {
        for (text, n) in [
            ("7B", 7_000_000_000),
            ("1.5b", 1_500_000_000),
            ("350M", 350_000_000),
            ("8x7B", 56_000_000_000),
            ("1,000,000", 1_000_000),
            ("125k", 125_000),
            (" 70B ", 70_000_000_000),
        ] {
            assert_eq!(parse_param_size(text), Some(n), "{text}");
        }
        for bad in ["", "B", "seven", "7Q", "-1B", "1e400", "NaNB"] {
            assert_eq!(parse_param_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn weights_sum_files_and_keep_the_worst_verdict() {
        let mut st = Contents::of(Format::Safetensors);
        st.parameters = Some(10);
        let mut pk = Contents::of(Format::Pytorch);
        pk.parameters = Some(5);
        pk.pickle = Some(PickleReport { verdict: Verdict::Unsafe, ..PickleReport::default() });
        let doc = Contents::of(Format::Other);
        let unread = Contents::unread("archive");
        let w = Weights::sum([(true, &st), (false, &pk), (false, &doc), (true, &unread)], Some("15"));
        assert_eq!(w.parameters, 15);
        assert_eq!(w.formats, [Format::Safetensors, Format::Pytorch, Format::Unread]);
        assert!(w.is_unsafe);
        assert_eq!(w.unread, 1);
        assert_eq!(w.declared_parameters, Some(15));
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["unsafe"], true);
        assert_eq!(json["formats"], serde_json::json!(["safetensors", "pytorch", "unread"]));
        assert!(w.summary().contains("pickles unsafe"), "{}", w.summary());
    }
}
