//! The files of an archive layer report, through a real pull, exactly what the registry's range
//! reads report for the same bytes served as single-file layers: one reading loop, two sources.
//! No bed needed: the registry is tests/support/served.rs on 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use modelpack_operator::cache::{self, Progress, PullOptions, Store};
use modelpack_operator::modelpack::Manifest;
use modelpack_operator::modelpack::contents::{Contents, Format, Verdict};
use modelpack_operator::registry::contents::{self as ranged, BOUNDS};
use modelpack_operator::registry::{Options, Registry, Repository};
use serde_json::json;
use support::craft::{Artifact, Blob};
use support::served::{REPO, Served, Setup};

fn safetensors(shape: &[u64]) -> Vec<u8> {
    let n: u64 = shape.iter().product();
    let header =
        json!({"__metadata__": {"format": "pt"}, "w": {"dtype": "F16", "shape": shape, "data_offsets": [0, 2 * n]}});
    let header = header.to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(vec![0u8; 2 * n as usize]);
    out
}

/// `torch.save`'s `data.pkl`: an OrderedDict of one (3, 4) tensor.
fn checkpoint_pickle() -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01".to_vec();
    p.extend_from_slice(b"X\x06\x00\x00\x00weightq\x02");
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\nq\x03");
    p.extend_from_slice(b"((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x0ctq\x08Q");
    p.extend_from_slice(
        b"K\x00K\x03K\x04\x86q\x09K\x04K\x01\x86q\x0a\x89ccollections\nOrderedDict\nq\x0b)Rq\x0ctq\x0dRq\x0e",
    );
    p.extend_from_slice(b"s.");
    p
}

/// A stored zip of `members`, as `torch.save` writes one (CRCs 0: not read).
fn stored_zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in members {
        let offset = out.len() as u32;
        let sizes = [(data.len() as u32).to_le_bytes(), (data.len() as u32).to_le_bytes()].concat();
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(&sizes);
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(*data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(&sizes);
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0u8; 12]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let directory = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend([(members.len() as u16).to_le_bytes(), (members.len() as u16).to_le_bytes()].concat());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(directory.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn files() -> Vec<(&'static str, Vec<u8>)> {
    let pickle = checkpoint_pickle();
    vec![
        ("w/model.safetensors", safetensors(&[3, 4])),
        ("w/nested/deep/part.safetensors", safetensors(&[7])),
        ("w/evil.pkl", b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.".to_vec()),
        ("w/ckpt.pt", stored_zip(&[("ckpt/data.pkl", &pickle), ("ckpt/version", b"3\n")])),
        ("w/README.md", b"# a model\n".to_vec()),
    ]
}

fn config() -> Blob {
    let config = json!({"descriptor": {"name": "archive"}, "modelfs": {"type": "layers", "diffIds": []}});
    Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap())
}

fn artifact(layers: Vec<Blob>) -> Artifact {
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: config(),
        layers,
        annotations: BTreeMap::new(),
    }
}

/// The same files as one tar+gzip layer announcing `w/`, with a symlink beside them.
fn archive() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files() {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    builder.append_link(&mut h, "w/link.pkl", "evil.pkl").unwrap();
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

/// Ranges answered as asked (all at once).
fn serve(artifact: Artifact) -> Served {
    Served::start(Setup { artifact: Some(artifact), drip: Some((1 << 30, Duration::ZERO)), ..Setup::default() })
}

fn client(served: &Served) -> (Registry, Repository) {
    let options = Options { insecure: true, timeout: Some(Duration::from_secs(5)), ..Default::default() };
    (Registry::new(&options, None).unwrap(), Repository::parse(&format!("{}/{REPO}", served.host)).unwrap())
}

/// What the registry's range reads say of each file, served as single-file layers.
async fn by_ranges() -> BTreeMap<String, Contents> {
    let raw = "application/vnd.cncf.model.weight.v1.raw";
    let layers = files().into_iter().map(|(p, d)| Blob::new(raw, d).annotate("org.cncf.model.filepath", p)).collect();
    let served = serve(artifact(layers));
    let (registry, repo) = client(&served);
    let manifest = Manifest::parse(&served.manifest).unwrap();
    let contents = ranged::read(&registry, &repo, &manifest, BOUNDS).await;
    files().into_iter().map(|(p, _)| p.to_owned()).zip(contents).collect()
}

#[tokio::test]
async fn archive_files_report_what_range_reads_report_for_the_same_bytes() {
    let expected = by_ranges().await;
    assert!(expected.values().all(|c| c.format != Format::Unread), "the oracle read every file: {expected:#?}");
    let tar = "application/vnd.cncf.model.weight.v1.tar+gzip";
    let served = serve(artifact(vec![Blob::new(tar, archive()).annotate("org.cncf.model.filepath", "w/")]));
    let (registry, repo) = client(&served);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().without_sync();
    let options = PullOptions { concurrency: 2, ..Default::default() };
    let outcome =
        cache::pull(&registry, &repo, &served.digest, &store, &options, Arc::new(Progress::default())).await.unwrap();
    let reported = outcome.contents.expect("an archive layer is reported");
    let got: BTreeMap<_, _> = reported.files.iter().map(|f| (f.path.clone(), f.contents.clone())).collect();
    for (path, contents) in &expected {
        assert_eq!(got.get(path), Some(contents), "{path}");
    }
    let link = &got["w/link.pkl"];
    assert_eq!((link.format, link.pickle.is_none()), (Format::Unread, true), "a symlink is not followed: {link:?}");
    assert_eq!(got.len(), expected.len() + 1);
    // The sum: 12 + 7 parameters of safetensors, 12 of the checkpoint's pickle; the worst verdict.
    assert_eq!(reported.weights.parameters, 31);
    assert_eq!(reported.weights.pickle, Some(Verdict::Unsafe));
    assert!(reported.weights.is_unsafe);
    assert_eq!(reported.files[0].path, "w/evil.pkl");
    // And the termination message carries it.
    let back: cache::PullOutcome = serde_json::from_str(&outcome_message(&served, &store).await).unwrap();
    assert!(back.contents.unwrap().weights.is_unsafe);
}

/// The same pull again (the model is already on the node): its message still reports the contents.
async fn outcome_message(served: &Served, store: &Store) -> String {
    let (registry, repo) = client(served);
    let options = PullOptions { concurrency: 2, ..Default::default() };
    let outcome =
        cache::pull(&registry, &repo, &served.digest, store, &options, Arc::new(Progress::default())).await.unwrap();
    outcome.to_message()
}
