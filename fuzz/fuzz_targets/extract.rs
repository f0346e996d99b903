#![no_main]
//! The archive extractor on arbitrary bytes: whatever it accepts or refuses, nothing outside the
//! directory it extracts into may be created, changed or linked, and every symlink it leaves must
//! resolve inside that directory.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use modelpack_operator::cache::{Limits, extract_tar};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("temp dir");
    let model = scratch.path().join("a/b/model");
    let victim = scratch.path().join("victim");
    std::fs::create_dir_all(&model).expect("model dir");
    std::fs::write(&victim, b"victim").expect("victim file");
    let limits = Limits { extract_bytes: Some(1 << 20), entries: 1000 };
    let accepted = extract_tar(&mut &data[..], &model, limits).is_ok();
    let mut outside: Vec<_> = walk(scratch.path()).into_iter().filter(|p| !p.starts_with(&model)).collect();
    outside.sort();
    let expected = [scratch.path().join("a"), scratch.path().join("a/b"), victim.clone()];
    assert_eq!(outside, expected, "something was created outside the model directory");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"victim");
    assert_eq!(std::fs::metadata(&victim).expect("victim").nlink(), 1, "the victim was hard-linked");
    if accepted {
        let root = model.canonicalize().expect("model");
        for path in walk(&model) {
            if path.is_symlink() {
                let resolved = path.canonicalize().expect("an accepted symlink resolves");
                assert!(resolved.starts_with(&root), "{} resolves to {}", path.display(), resolved.display());
            }
        }
    }
});

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
