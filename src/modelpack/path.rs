//! File paths inside a model directory, as claimed by layer annotations or tar entries. Every path
//! that reaches the cache goes through [`ModelPath::parse`], so a hostile artifact cannot name a
//! location outside the model directory.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest path accepted; Linux's PATH_MAX.
const MAX_LEN: usize = 4096;

/// Why a claimed path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} is absolute")]
    Absolute(String),
    #[error("path {0:?} has a '..' component")]
    ParentComponent(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} contains a backslash")]
    Backslash(String),
    #[error("path {0:?} contains a control character")]
    ControlCharacter(String),
    #[error("path {0:?} names the model directory itself, not a file in it")]
    ModelRoot(String),
    #[error("path is longer than {MAX_LEN} bytes")]
    TooLong,
}

/// A normalised, relative path that stays inside the model directory: no empty, `.` or `..`
/// components, no leading `/`, no NUL, backslash or control characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelPath(String);

impl ModelPath {
    pub fn parse(raw: &str) -> Result<ModelPath, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(PathError::TooLong);
        }
        if raw.contains('\0') {
            return Err(PathError::Nul(raw.replace('\0', "\\0")));
        }
        if raw.contains('\\') {
            // A backslash is a separator on Windows producers and a filename byte here: refuse
            // rather than guess which one was meant.
            return Err(PathError::Backslash(raw.to_owned()));
        }
        if raw.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter(raw.escape_debug().to_string()));
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute(raw.to_owned()));
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => continue,
                ".." => return Err(PathError::ParentComponent(raw.to_owned())),
                other => parts.push(other),
            }
        }
        if parts.is_empty() {
            return Err(PathError::ModelRoot(raw.to_owned()));
        }
        Ok(ModelPath(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Joins onto a model directory; the result is always inside `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// The first component: the top-level entry this path creates in the model directory.
    pub fn top_level(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for ModelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_harmless_forms() {
        for (raw, want) in [
            ("model.safetensors", "model.safetensors"),
            ("a/b/c.bin", "a/b/c.bin"),
            ("./a/./b", "a/b"),
            ("a//b/", "a/b"),
            ("..a/b..", "..a/b.."),
            ("weights/..hidden", "weights/..hidden"),
            ("日本/モデル.gguf", "日本/モデル.gguf"),
        ] {
            assert_eq!(ModelPath::parse(raw).unwrap().as_str(), want, "{raw}");
        }
    }

    #[test]
    fn rejects_every_traversal_form() {
        type Check = fn(&PathError) -> bool;
        let cases: [(&str, Check); 14] = [
            ("../x", |e| matches!(e, PathError::ParentComponent(_))),
            ("a/../../x", |e| matches!(e, PathError::ParentComponent(_))),
            ("a/..", |e| matches!(e, PathError::ParentComponent(_))),
            ("..", |e| matches!(e, PathError::ParentComponent(_))),
            ("/abs", |e| matches!(e, PathError::Absolute(_))),
            ("//abs", |e| matches!(e, PathError::Absolute(_))),
            ("/", |e| matches!(e, PathError::Absolute(_))),
            ("", |e| matches!(e, PathError::Empty)),
            (".", |e| matches!(e, PathError::ModelRoot(_))),
            ("./", |e| matches!(e, PathError::ModelRoot(_))),
            ("a\0b", |e| matches!(e, PathError::Nul(_))),
            ("..\\x", |e| matches!(e, PathError::Backslash(_))),
            ("C:\\Windows\\x", |e| matches!(e, PathError::Backslash(_))),
            ("a\nb", |e| matches!(e, PathError::ControlCharacter(_))),
        ];
        for (raw, expected) in cases {
            let err = ModelPath::parse(raw).expect_err(raw);
            assert!(expected(&err), "{raw:?} gave {err:?}");
        }
        assert_eq!(ModelPath::parse(&"a/".repeat(3000)), Err(PathError::TooLong));
    }

    #[test]
    fn joined_paths_stay_under_the_root() {
        let root = Path::new("/cache/models/sha256/abc");
        let p = ModelPath::parse("./sub//file").unwrap();
        assert_eq!(p.under(root), Path::new("/cache/models/sha256/abc/sub/file"));
        assert!(p.under(root).starts_with(root));
        assert_eq!(p.top_level(), "sub");
    }
}
