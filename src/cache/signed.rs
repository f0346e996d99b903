//! The node's half of OpenSSF model signing: a model pulled under a model signature is published
//! only if its tree, as the cache indexed it while building it (every regular file with its
//! SHA-256, every symlink), holds exactly the files the signature lists with their digests. The
//! index is what `scrub` compares the published tree with afterwards, so the scrub holds the tree
//! to the same digests (and [`check_published`] checks an index against a statement again).

use std::path::Path;

use super::Error;
use super::index::{Kind, Record, each_record};
use super::store::{Store, digest_hex};
use crate::verify::model_signing::{Entry, Statement, check_tree};

/// Checks the index file at `path` against `statement`; returns how many files it bound.
pub fn check_index(path: &Path, statement: &Statement) -> Result<usize, Error> {
    let mut records: Vec<Record> = Vec::new();
    each_record(path, |r| {
        if r.kind != Kind::Dir {
            records.push(r.clone());
        }
    })
    .map_err(Error::SignedFiles)?;
    let entries = records.iter().map(|r| match r.kind {
        Kind::File => Entry::File { path: &r.path, sha256: &r.sha256 },
        Kind::Symlink => Entry::Symlink { path: &r.path },
        Kind::Dir => Entry::Dir,
    });
    check_tree(statement, entries).map_err(Error::SignedFiles)
}

/// Checks the published model `digest` (its committed index) against `statement`.
pub fn check_published(store: &Store, digest: &str, statement: &Statement) -> Result<usize, Error> {
    check_index(&store.index_path(digest_hex(digest)?), statement)
}
