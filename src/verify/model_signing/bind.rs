//! Binding a verified statement to a ModelPack: the files it lists are exactly the model's files.
//!
//! Before the pull ([`bind`]): a single-file layer is a file whose digest is the layer's, so it is
//! bound by path and digest there and then; an archive layer announces a path (a file, or a
//! directory and what is beneath it) whose files are known only once extracted, so the statement's
//! files under it are left for the node. Every listed file must belong to a layer and every
//! single-file layer must be listed, the ignored paths aside.
//!
//! On the node ([`check_tree`]): the extracted tree as the cache indexed it (every regular file
//! with its SHA-256, every symlink) must hold exactly the listed files with their digests.

use std::collections::BTreeSet;

use super::statement::Statement;
use crate::modelpack::{Manifest, layer, sha256_hex};

/// Differences named in one refusal; the rest are counted.
const SHOWN: usize = 5;

/// What the statement was bound to before the pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Files the statement lists.
    pub files: usize,
    /// Of which inside archive layers: their bytes are checked on the node once extracted.
    pub in_archives: usize,
    /// Layers of the ModelPack under the statement's ignored paths: published, not signed.
    pub ignored: usize,
}

/// Differences between a statement and a model, refused as one line.
#[derive(Default)]
struct Differences(Vec<String>);

impl Differences {
    fn push(&mut self, what: String) {
        self.0.push(what);
    }

    fn verdict(self, model: &str) -> Result<(), String> {
        let total = self.0.len();
        if total == 0 {
            return Ok(());
        }
        let mut line = self.0.into_iter().take(SHOWN).collect::<Vec<_>>().join("; ");
        if total > SHOWN {
            line.push_str(&format!("; and {} more", total - SHOWN));
        }
        Err(format!("the signed files are not the {model}'s files: {line}"))
    }
}

fn under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// Binds `statement` to `manifest`'s layers; `Err` lists the differences.
pub fn bind(statement: &Statement, manifest: &Manifest) -> Result<Binding, String> {
    let mut differences = Differences::default();
    let mut claimed = BTreeSet::<String>::new();
    let (mut in_archives, mut ignored) = (0, 0);
    for descriptor in &manifest.layers {
        let layer = layer(descriptor).map_err(|e| e.to_string())?;
        let path = layer.path.as_str();
        if layer.format().is_single_file() {
            if statement.ignores(path) {
                ignored += 1;
                continue;
            }
            let digest = sha256_hex(&descriptor.digest).unwrap_or_default();
            match statement.files.get(path) {
                None => differences.push(format!("{path} (layer {}) is not signed", descriptor.digest)),
                Some(signed) if signed != digest => {
                    differences.push(format!("{path}: signed sha256:{signed}, the layer is {}", descriptor.digest))
                }
                Some(_) => {
                    claimed.insert(path.to_owned());
                }
            }
        } else if layer.directory {
            for (name, _) in statement
                .files
                .range::<str, _>((std::ops::Bound::Included(path), std::ops::Bound::Unbounded))
                .take_while(|(n, _)| n.starts_with(path))
            {
                if under(name, path) && claimed.insert(name.clone()) {
                    in_archives += 1;
                }
            }
        } else if statement.files.contains_key(path) {
            if claimed.insert(path.to_owned()) {
                in_archives += 1;
            }
        } else if statement.ignores(path) {
            ignored += 1;
        } else {
            differences.push(format!("{path} (archive layer {}) is not signed", descriptor.digest));
        }
    }
    for name in statement.files.keys().filter(|n| !claimed.contains(*n)) {
        differences.push(format!("{name} is signed but no layer of the ModelPack holds it"));
    }
    differences.verdict("ModelPack").map(|()| Binding { files: statement.files.len(), in_archives, ignored })
}

/// One entry of a published model's tree, as the cache's index records it.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    File { path: &'a str, sha256: &'a str },
    Symlink { path: &'a str },
    Dir,
}

/// Checks the model's tree against the statement: every regular file listed with its digest,
/// every listed file present, no symlink but beneath ignored paths. Returns the files checked.
pub fn check_tree<'a>(statement: &Statement, entries: impl IntoIterator<Item = Entry<'a>>) -> Result<usize, String> {
    let mut differences = Differences::default();
    let mut seen = BTreeSet::new();
    for entry in entries {
        match entry {
            Entry::Dir => {}
            Entry::File { path, .. } | Entry::Symlink { path } if statement.ignores(path) => {}
            Entry::Symlink { path } if statement.files.contains_key(path) => {
                seen.insert(path.to_owned());
                differences.push(format!("{path} is a symlink where a file was signed"));
            }
            Entry::Symlink { path } => differences.push(format!("{path} is a symlink that is not signed")),
            Entry::File { path, sha256 } => match statement.files.get(path) {
                None => differences.push(format!("{path} is not signed")),
                Some(signed) => {
                    seen.insert(path.to_owned());
                    if signed != sha256 {
                        differences.push(format!("{path}: signed sha256:{signed}, extracted sha256:{sha256}"));
                    }
                }
            },
        }
    }
    for name in statement.files.keys().filter(|n| !seen.contains(*n)) {
        differences.push(format!("{name} is signed but missing"));
    }
    differences.verdict("model directory").map(|()| seen.len())
}
