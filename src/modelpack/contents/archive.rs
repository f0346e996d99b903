//! What the files of a model's archive layers held, as the puller read them on the node: archive
//! layers cannot be read by range requests, so this arrives with the pull's result instead.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Contents, Format, Verdict, Weights};

/// The archive layers' files: their contents summed, and each one's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveContents {
    /// Every file read, summed (`unread` counts files of weight layers that were not read).
    pub weights: Weights,
    /// Each file read, the worst pickle verdict first, then by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileContents>,
    /// Regular files not read at all: beyond the number read per model.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_read: u64,
    /// Entries of `files` left out of this report to keep it short (they are in the sum).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_omitted: u64,
}

/// One file an archive layer held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileContents {
    /// Its path inside the model.
    pub path: String,
    pub contents: Contents,
}

/// One file as read, with whether its layer is a weight layer.
pub struct Read {
    pub weight_layer: bool,
    pub file: FileContents,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ArchiveContents {
    /// Sums `files`; `not_read` files were not read, `not_read_weights` of them of weight layers.
    pub fn sum(files: Vec<Read>, not_read: u64, not_read_weights: u64) -> ArchiveContents {
        // A weight layer's file counts as a weight layer only when it was not read: a README beside
        // the weights must not add "other" to the formats.
        let summed =
            files.iter().map(|r| (r.weight_layer && r.file.contents.format == Format::Unread, &r.file.contents));
        let mut weights = Weights::sum(summed, None);
        weights.unread = weights.unread.saturating_add(not_read_weights);
        // A file never opened may be a pickle: what was read cannot make the whole "safe" (a
        // hostile archive could put a thousand harmless files before its pickle).
        if not_read > 0 {
            weights.pickle = Some(weights.pickle.map_or(Verdict::Unknown, |v| v.max(Verdict::Unknown)));
        }
        let mut files: Vec<FileContents> = files.into_iter().map(|r| r.file).collect();
        // Worst first: what is dropped to shorten the report is the least telling.
        files.sort_by(|a, b| rank(b).cmp(&rank(a)).then_with(|| a.path.cmp(&b.path)));
        ArchiveContents { weights, files, not_read, files_omitted: 0 }
    }

    /// Leaves the least telling files out: half of a long list (each try at a shorter report
    /// serialises it whole), one at a time once it is short; `false` when none is left.
    pub fn omit_some(&mut self) -> bool {
        let len = self.files.len();
        if len == 0 {
            return false;
        }
        let keep = if len > 16 { len / 2 } else { len - 1 };
        self.files.truncate(keep);
        self.files_omitted += (len - keep) as u64;
        true
    }

    /// The report as read back from a pod (a node writes it: nothing in it is taken as bounded):
    /// paths and lists clipped, formats distinct, then files left out until its JSON fits `limit`.
    pub fn within(mut self, limit: usize) -> ArchiveContents {
        self.weights.formats.sort();
        self.weights.formats.dedup();
        for f in &mut self.files {
            f.path = super::clip(&f.path);
            if let Some(p) = f.contents.pickle.as_mut() {
                p.imports.truncate(super::MAX_LISTED);
                p.reasons.truncate(super::MAX_LISTED);
                p.imports.iter_mut().chain(p.reasons.iter_mut()).for_each(|t| *t = super::clip(t));
            }
        }
        while serde_json::to_vec(&self).map_or(usize::MAX, |j| j.len()) > limit && self.omit_some() {}
        self
    }

    /// The files whose pickle imports a denied callable.
    pub fn unsafe_files(&self) -> impl Iterator<Item = &FileContents> {
        self.files.iter().filter(|f| f.contents.is_unsafe())
    }
}

/// How telling a file is: a pickle by its verdict, above weights, above the rest.
fn rank(f: &FileContents) -> (Option<super::Verdict>, bool) {
    (f.contents.pickle.as_ref().map(|p| p.verdict), f.contents.format.holds_weights())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modelpack::contents::PickleReport;

    fn file(path: &str, contents: Contents) -> Read {
        Read { weight_layer: true, file: FileContents { path: path.into(), contents } }
    }

    #[test]
    fn files_are_summed_worst_first_and_the_least_telling_are_omitted_first() {
        let mut st = Contents::of(Format::Safetensors);
        st.parameters = Some(7);
        let mut bad = Contents::of(Format::Pickle);
        bad.pickle = Some(PickleReport { verdict: Verdict::Unsafe, ..PickleReport::default() });
        let files = vec![
            file("a/readme.md", Contents::of(Format::Other)),
            file("a/model.safetensors", st),
            file("a/big.bin", Contents::unread("over the bound")),
            file("z/evil.pkl", bad),
        ];
        let mut a = ArchiveContents::sum(files, 3, 2);
        assert_eq!(a.weights.parameters, 7);
        assert!(a.weights.is_unsafe);
        assert_eq!(a.weights.formats, [Format::Safetensors, Format::Pickle, Format::Unread]);
        assert_eq!(a.weights.unread, 3, "one unread file, two not read of weight layers");
        let paths: Vec<_> = a.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["z/evil.pkl", "a/model.safetensors", "a/big.bin", "a/readme.md"]);
        assert_eq!(a.unsafe_files().count(), 1);
        assert!(a.omit_some());
        assert_eq!((a.files.len(), a.files_omitted), (3, 1));
        assert_eq!(a.files.last().unwrap().path, "a/big.bin");
    }

    /// Files past the cap were never opened: the pickles read cannot vouch for them.
    #[test]
    fn files_not_read_make_the_pickle_verdict_at_best_unknown() {
        let mut good = Contents::of(Format::Pickle);
        good.pickle = Some(PickleReport { verdict: Verdict::Safe, ..PickleReport::default() });
        let all_read = ArchiveContents::sum(vec![file("a/ok.pkl", good.clone())], 0, 0);
        assert_eq!(all_read.weights.pickle, Some(Verdict::Safe));
        let capped = ArchiveContents::sum(vec![file("a/ok.pkl", good)], 1, 0);
        assert_eq!(capped.weights.pickle, Some(Verdict::Unknown));
        let mut bad = Contents::of(Format::Pickle);
        bad.pickle = Some(PickleReport { verdict: Verdict::Unsafe, ..PickleReport::default() });
        assert_eq!(ArchiveContents::sum(vec![file("a/evil.pkl", bad)], 5, 0).weights.pickle, Some(Verdict::Unsafe));
        assert_eq!(ArchiveContents::sum(Vec::new(), 2, 0).weights.pickle, Some(Verdict::Unknown));
    }
}
