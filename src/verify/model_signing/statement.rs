//! The in-toto statement `model_signing sign` signs (predicate `https://model_signing/signature/v1.0`):
//! one subject named after the model whose SHA-256 is taken over every listed file digest in order,
//! and a predicate listing each file (`resources`: name, algorithm, hex digest) with the
//! serialisation options the signer used. Options this verifier cannot honour are refused by name.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::modelpack::ModelPath;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// model_signing 0.2's predicate: no serialisation options, no root digest to hold the list together.
const PREDICATE_TYPE_V02: &str = "https://model_signing/Digests/v0.1";
/// Most files one statement may list (a model is bounded by the cache's entry limit anyway).
pub const MAX_FILES: usize = 200_000;

/// A statement's file list, checked for consistency, with the options the binding honours. (Its
/// serde form is what the node cache records beside a model pulled under it, for the scrub.)
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Statement {
    /// The subject's name: the signed directory's name (informative only).
    pub model_name: String,
    /// Path (relative, `/`-separated) → SHA-256, lowercase hex.
    pub files: BTreeMap<String, String>,
    /// Paths (files or directories) the signer left out: files under them are neither signed nor
    /// required, as `model_signing verify` skips them.
    pub ignore_paths: Vec<String>,
    /// Whether the signer followed symbolic links; a symlink in the published model is refused
    /// either way where a file was signed (the ModelPack carries files, not links).
    pub allow_symlinks: bool,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "_type")]
    type_: String,
    #[serde(default)]
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Option<Predicate>,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    name: String,
    #[serde(default)]
    digest: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Predicate {
    serialization: Serialization,
    #[serde(default)]
    resources: Vec<Resource>,
}

#[derive(Deserialize)]
struct Serialization {
    method: String,
    hash_type: String,
    #[serde(default)]
    allow_symlinks: bool,
    #[serde(default)]
    ignore_paths: Vec<String>,
    #[serde(default)]
    shard_size: Option<u64>,
}

#[derive(Deserialize)]
struct Resource {
    name: String,
    algorithm: String,
    digest: String,
}

impl Statement {
    /// Parses the DSSE payload; every refusal names the field or option.
    pub fn parse(payload: &[u8]) -> Result<Statement, String> {
        let raw: Raw = serde_json::from_slice(payload).map_err(|e| format!("in-toto statement: {e}"))?;
        if raw.type_ != STATEMENT_TYPE {
            return Err(format!("statement _type {:?} is not {STATEMENT_TYPE}", raw.type_));
        }
        if raw.predicate_type == PREDICATE_TYPE_V02 {
            return Err(format!(
                "predicate type {PREDICATE_TYPE_V02} (model_signing 0.2) is not supported: sign again with model_signing 1.x"
            ));
        }
        if raw.predicate_type != PREDICATE_TYPE {
            return Err(format!("predicate type {:?} is not {PREDICATE_TYPE}", raw.predicate_type));
        }
        let [subject] = raw.subject.as_slice() else {
            return Err(format!("the statement has {} subjects, model_signing writes one", raw.subject.len()));
        };
        let predicate = raw.predicate.ok_or("the statement has no predicate")?;
        let s = &predicate.serialization;
        match s.method.as_str() {
            "files" => {}
            "shards" => {
                return Err(format!(
                    "serialization method \"shards\" (shard_size {}) is not supported: a shard is no file of the ModelPack; sign with the \"files\" method",
                    s.shard_size.map_or_else(|| "unset".to_owned(), |n| n.to_string())
                ));
            }
            other => return Err(format!("serialization method {other:?} is not supported (only \"files\")")),
        }
        if s.hash_type != "sha256" {
            return Err(format!(
                "serialization hash_type {:?} is not supported: only \"sha256\" can be bound to the ModelPack's layer digests",
                s.hash_type
            ));
        }
        if predicate.resources.len() > MAX_FILES {
            return Err(format!("the statement lists {} files, more than {MAX_FILES}", predicate.resources.len()));
        }
        let mut files = BTreeMap::new();
        let mut root = Sha256::new();
        for r in &predicate.resources {
            if r.algorithm != s.hash_type {
                return Err(format!(
                    "resource {:?}: algorithm {:?} is not the declared {:?}",
                    r.name, r.algorithm, s.hash_type
                ));
            }
            let bytes = hex::decode(&r.digest)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| format!("resource {:?}: digest {:?} is not 64 hex digits", r.name, r.digest))?;
            root.update(&bytes);
            let path = ModelPath::parse(&r.name).map_err(|e| format!("resource {:?}: {e}", r.name))?;
            if files.insert(path.as_str().to_owned(), hex::encode(&bytes)).is_some() {
                return Err(format!("resource {:?} is listed twice", r.name));
            }
        }
        let root = hex::encode(root.finalize());
        match subject.digest.get("sha256") {
            Some(d) if d.eq_ignore_ascii_case(&root) => {}
            Some(d) => {
                return Err(format!(
                    "the statement is inconsistent: subject digest sha256:{d}, but its resources hash to sha256:{root}"
                ));
            }
            None => return Err("the statement's subject has no sha256 digest".into()),
        }
        let ignore_paths = s.ignore_paths.iter().map(|p| normalise(p)).filter(|p| !p.is_empty()).collect();
        Ok(Statement { model_name: subject.name.clone(), files, ignore_paths, allow_symlinks: s.allow_symlinks })
    }

    /// Whether `path` is, or is beneath, one of the ignored paths (model_signing's
    /// `is_relative_to`, component-wise).
    pub fn ignores(&self, path: &str) -> bool {
        self.ignore_paths
            .iter()
            .any(|i| path == i || path.strip_prefix(i.as_str()).is_some_and(|rest| rest.starts_with('/')))
    }
}

/// `./a/b/` → `a/b` (model_signing records them relative to the model directory).
fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    parts.join("/")
}
