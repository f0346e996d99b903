//! `deployments/<namespace>/<name>/current`: the stable path a workload mounts, swapped atomically
//! (a new symlink renamed over the old one) so a reader sees either version, never neither.

use std::fs;

use super::Error;
use super::store::{Store, digest_hex};

/// Kubernetes object names and namespaces: DNS subdomains, so never `/` or `..`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with('.')
        && !s.contains("..")
}

/// Parses `deployments/NS/NAME` (the `--link` argument).
pub fn parse_link(text: &str) -> Result<(String, String), Error> {
    let parts: Vec<&str> = text.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        ["deployments", ns, name] if valid_name(ns) && valid_name(name) => Ok(((*ns).to_owned(), (*name).to_owned())),
        _ => Err(Error::InvalidLink(text.to_owned())),
    }
}

pub fn set_current(store: &Store, namespace: &str, name: &str, digest: &str) -> Result<(), Error> {
    if !valid_name(namespace) || !valid_name(name) {
        return Err(Error::InvalidLink(format!("deployments/{namespace}/{name}")));
    }
    let dir = store.deployment_dir(namespace, name);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let hex = digest_hex(digest)?;
    let target = Store::current_target(hex);
    let tmp = dir.join(format!(".current-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(|e| Error::io(&tmp, e))?;
    let current = dir.join("current");
    fs::rename(&tmp, &current).map_err(|e| Error::io(&current, e))?;
    store.touch_model(hex)?;
    store.sync_dir(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(parse_link("deployments/ml/llama").unwrap(), ("ml".into(), "llama".into()));
        for bad in [
            "deployments/ml",
            "deployments/../x",
            "deployments/ml/../../etc",
            "other/ml/x",
            "deployments/ML/x",
            "deployments/a/b/c",
        ] {
            assert!(parse_link(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn current_is_swapped_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64)));
        set_current(&store, "ml", "m", &a).unwrap();
        set_current(&store, "ml", "m", &b).unwrap();
        let current = dir.path().join("deployments/ml/m/current");
        assert_eq!(
            fs::read_link(&current).unwrap().to_str().unwrap(),
            format!("../../../models/sha256/{}", "b".repeat(64))
        );
    }
}
