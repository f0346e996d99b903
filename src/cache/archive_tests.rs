//! Reading the files of archive layers from disk: bounds per file and per model, the cap on files
//! read, symlinks never followed. (That a file reports what a registry's range reads report for
//! the same bytes is tests/archive_contents.rs, through a real pull.)

use std::time::Duration;

use super::archive::{MAX_FILES, read};
use super::extract_tests::{TAR, descriptor, manifest, tar_of};
use super::materialise::{Limits, extract_tar};
use crate::modelpack::contents::read::{BOUNDS, Bounds};
use crate::modelpack::contents::{ArchiveContents, Format, Verdict};

/// A safetensors file of one F32 tensor of `shape`.
fn safetensors(shape: &[u64]) -> Vec<u8> {
    let n: u64 = shape.iter().product();
    let header = serde_json::json!({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 * n]}}).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(vec![0u8; 4 * n as usize]);
    out
}

const EVIL: &[u8] = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.";

/// Extracts `tar` as a model whose one tar layer announces the directory `w/`, then reads it.
fn extract_and_read(tar: &[u8], bounds: Bounds, max_files: usize) -> ArchiveContents {
    let dir = tempfile::tempdir().unwrap();
    extract_tar(&mut &tar[..], dir.path(), Limits::default()).unwrap();
    let m = manifest(vec![descriptor(TAR, &format!("sha256:{}", "1".repeat(64)), tar.len(), "w/")]);
    read(dir.path(), &m, bounds, max_files).expect("an archive layer")
}

fn find<'a>(a: &'a ArchiveContents, path: &str) -> &'a crate::modelpack::contents::Contents {
    &a.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("{path} in {:#?}", a.files)).contents
}

#[test]
fn nested_files_are_read_and_an_unsafe_pickle_is_found() {
    let tar = tar_of(&[
        ("w/model.safetensors", safetensors(&[3, 4])),
        ("w/a/b/c/deep.safetensors", safetensors(&[5])),
        ("w/evil.pkl", EVIL.to_vec()),
        ("w/README.md", b"# hello".to_vec()),
    ]);
    let a = extract_and_read(&tar, BOUNDS, MAX_FILES);
    assert_eq!(find(&a, "w/model.safetensors").parameters, Some(12));
    assert_eq!(find(&a, "w/a/b/c/deep.safetensors").parameters, Some(5));
    assert_eq!(find(&a, "w/README.md").format, Format::Other);
    assert!(find(&a, "w/evil.pkl").is_unsafe());
    assert_eq!(a.files[0].path, "w/evil.pkl", "the worst file first");
    assert_eq!(a.weights.parameters, 17);
    assert!(a.weights.is_unsafe);
    assert_eq!(a.weights.pickle, Some(Verdict::Unsafe));
}

#[test]
fn a_symlink_is_listed_and_never_followed() {
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(EVIL.len() as u64);
    builder.append_data(&mut h, "w/evil.pkl", EVIL).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    builder.append_link(&mut h, "w/link.bin", "evil.pkl").unwrap();
    let a = extract_and_read(&builder.into_inner().unwrap(), BOUNDS, MAX_FILES);
    let link = find(&a, "w/link.bin");
    assert_eq!(link.format, Format::Unread);
    assert!(link.reason.as_deref().unwrap().contains("symlink"), "{link:?}");
    assert!(link.pickle.is_none(), "not read through the link");
    assert_eq!(a.files.len(), 2);
}

#[test]
fn a_file_over_the_bound_is_unread_with_the_bound_named() {
    let tar = tar_of(&[("w/big.bin", vec![7u8; 8192]), ("w/small.safetensors", safetensors(&[2]))]);
    let bounds = Bounds { file_bytes: 1024, ..BOUNDS };
    let a = extract_and_read(&tar, bounds, MAX_FILES);
    let big = find(&a, "w/big.bin");
    assert_eq!(big.format, Format::Unread);
    assert!(big.reason.as_deref().unwrap().contains("1024-byte bound on reading one file"), "{big:?}");
    assert_eq!(find(&a, "w/small.safetensors").parameters, Some(2));
    assert_eq!(a.weights.unread, 1, "an unread file of a weight layer");
}

#[test]
fn the_model_bounds_stop_reading_and_say_so() {
    let tar = tar_of(&[("w/a.bin", vec![1u8; 4096]), ("w/b.bin", vec![2u8; 4096]), ("w/c.bin", vec![3u8; 4096])]);
    let a = extract_and_read(&tar, Bounds { model_bytes: 6000, ..BOUNDS }, MAX_FILES);
    let unread: Vec<_> = a.files.iter().filter(|f| f.contents.format == Format::Unread).collect();
    assert_eq!(unread.len(), 2, "{:#?}", a.files);
    assert!(unread[0].contents.reason.as_deref().unwrap().contains("6000-byte bound on reading a model"));
    let a = extract_and_read(&tar, Bounds { model_time: Duration::ZERO, ..BOUNDS }, MAX_FILES);
    for f in &a.files {
        assert!(f.contents.reason.as_deref().unwrap_or_default().contains("bound on reading a model"), "{f:?}");
    }
}

#[test]
fn files_past_the_cap_are_counted_not_read() {
    let files: Vec<(String, Vec<u8>)> = (0..3000).map(|i| (format!("w/{i}.pkl"), EVIL.to_vec())).collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let tar = tar_of(&refs);
    let started = std::time::Instant::now();
    let a = extract_and_read(&tar, BOUNDS, MAX_FILES);
    assert_eq!(a.files.len(), MAX_FILES);
    assert_eq!(a.not_read, 3000 - MAX_FILES as u64);
    assert_eq!(a.weights.unread, 3000 - MAX_FILES as u64, "files of a weight layer not read");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

#[test]
fn a_model_without_archive_layers_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(vec![descriptor(super::extract_tests::RAW, &format!("sha256:{}", "1".repeat(64)), 1, "w.bin")]);
    assert_eq!(read(dir.path(), &m, BOUNDS, MAX_FILES), None);
}

#[test]
fn a_layer_that_is_not_on_disk_is_unread_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(vec![descriptor(TAR, &format!("sha256:{}", "1".repeat(64)), 1, "gone/")]);
    let a = read(dir.path(), &m, BOUNDS, MAX_FILES).unwrap();
    assert_eq!(a.files.len(), 1);
    assert_eq!(a.files[0].contents.format, Format::Unread);
}
