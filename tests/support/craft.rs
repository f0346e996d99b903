//! A small artifact builder of our own, for what no peer tool will produce: crafted and malicious
//! ModelPacks (traversal paths, wrong digests, foreign media types). It pushes through the OCI
//! distribution API with oci-client, byte for byte as given.

use std::collections::BTreeMap;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Registry;

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A tar of regular files (mode 0644), as a layer holds them.
pub fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A blob with its descriptor fields.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub data: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

impl Blob {
    pub fn new(media_type: &str, data: impl Into<Vec<u8>>) -> Blob {
        Blob { media_type: media_type.into(), data: data.into(), annotations: BTreeMap::new() }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Blob {
        self.annotations.insert(key.into(), value.into());
        self
    }

    pub fn descriptor(&self) -> serde_json::Value {
        let mut d = json!({"mediaType": self.media_type, "digest": sha256(&self.data), "size": self.data.len()});
        if !self.annotations.is_empty() {
            d["annotations"] = json!(self.annotations);
        }
        d
    }
}

/// An OCI image manifest to push as is.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub artifact_type: Option<String>,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub annotations: BTreeMap<String, String>,
}

impl Artifact {
    pub fn manifest(&self) -> serde_json::Value {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": self.config.descriptor(),
            "layers": self.layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        if let Some(at) = &self.artifact_type {
            m["artifactType"] = json!(at);
        }
        if !self.annotations.is_empty() {
            m["annotations"] = json!(self.annotations);
        }
        m
    }
}

/// A ModelPack (cncf family) of one raw weight layer holding `data` at `path`.
pub fn raw_model(name: &str, path: &str, data: Vec<u8>) -> Artifact {
    let config = json!({"descriptor": {"name": name}, "modelfs": {"type": "layers", "diffIds": []}});
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![
            Blob::new("application/vnd.cncf.model.weight.v1.raw", data).annotate("org.cncf.model.filepath", path),
        ],
        annotations: BTreeMap::new(),
    }
}

/// An ordinary container image (not a ModelPack).
pub fn container_image() -> Artifact {
    Artifact {
        artifact_type: None,
        config: Blob::new("application/vnd.oci.image.config.v1+json", br#"{"architecture":"amd64"}"#.to_vec()),
        layers: vec![Blob::new("application/vnd.oci.image.layer.v1.tar", vec![0u8; 1024])],
        annotations: BTreeMap::new(),
    }
}

/// A client and credentials for one bed registry (one client per credential set: oci-client keys
/// stored credentials by host and never replaces them).
pub fn client(registry: &Registry) -> (Client, RegistryAuth) {
    let mut config = ClientConfig {
        protocol: if registry.is_tls() { ClientProtocol::Https } else { ClientProtocol::Http },
        ..Default::default()
    };
    if let Some(ca) = &registry.tls_ca {
        let data = std::fs::read(ca).expect("reading the bed's registry CA");
        config.extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
    }
    let client = Client::try_from(config).expect("building an OCI client");
    let auth = match &registry.basic_auth {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    (client, auth)
}

/// Pushes every blob and then the manifest under `tag`; returns the manifest digest.
pub async fn push(registry: &Registry, repo: &str, tag: &str, artifact: &Artifact) -> String {
    let manifest = serde_json::to_vec(&artifact.manifest()).expect("manifest JSON");
    push_with_manifest(registry, repo, tag, artifact, &manifest).await
}

/// Like [`push`], but with manifest bytes the caller made (e.g. lying about a blob's digest).
pub async fn push_with_manifest(
    registry: &Registry,
    repo: &str,
    tag: &str,
    artifact: &Artifact,
    manifest: &[u8],
) -> String {
    let (client, auth) = client(registry);
    let reference = Reference::with_tag(registry.host.clone(), repo.into(), tag.into());
    client.auth(&reference, &auth, oci_client::RegistryOperation::Push).await.expect("registry auth");
    for blob in std::iter::once(&artifact.config).chain(&artifact.layers) {
        client
            .push_blob(&reference, blob.data.clone(), &sha256(&blob.data))
            .await
            .unwrap_or_else(|e| panic!("pushing blob to {}: {e}", registry.host));
    }
    client
        .push_manifest_raw(
            &reference,
            manifest.to_vec(),
            "application/vnd.oci.image.manifest.v1+json".parse().expect("header value"),
        )
        .await
        .unwrap_or_else(|e| panic!("pushing manifest to {}: {e}", registry.host));
    sha256(manifest)
}

/// The digest the registry serves for `repo:tag` (HEAD, GET fallback), read independently of the
/// tool that pushed it.
pub async fn manifest_digest(registry: &Registry, repo: &str, tag: &str) -> String {
    let (client, auth) = client(registry);
    let reference = Reference::with_tag(registry.host.clone(), repo.into(), tag.into());
    client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .unwrap_or_else(|e| panic!("reading the digest of {}/{repo}:{tag}: {e}", registry.host))
}

/// The raw manifest bytes of `repo@digest` (any media type).
pub async fn manifest_bytes(registry: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let (client, auth) = client(registry);
    let reference = Reference::with_digest(registry.host.clone(), repo.into(), digest.into());
    let (bytes, got) = client
        .pull_manifest_raw(&reference, &auth, &["application/vnd.oci.image.manifest.v1+json"])
        .await
        .unwrap_or_else(|e| panic!("pulling manifest {}/{repo}@{digest}: {e}", registry.host));
    assert_eq!(got, digest);
    bytes.to_vec()
}

/// A blob's bytes.
pub async fn blob(registry: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let (client, auth) = client(registry);
    let reference = Reference::with_digest(registry.host.clone(), repo.into(), digest.into());
    client.auth(&reference, &auth, oci_client::RegistryOperation::Pull).await.expect("registry auth");
    let mut out = Vec::new();
    client.pull_blob(&reference, digest, &mut out).await.unwrap_or_else(|e| panic!("pulling blob {digest}: {e}"));
    out
}
