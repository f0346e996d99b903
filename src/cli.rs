//! The person-facing subcommands (`inspect`, …): argument plumbing and output formats over the
//! library's modules.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use modelpack_operator::modelpack::layer;
use modelpack_operator::registry::{self, Keyring, Options, Registry, Repository};

/// Transport and credential flags shared by every command that talks to a registry.
#[derive(clap::Args, Debug)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry.
    #[arg(long)]
    pub insecure: bool,
    /// A docker config.json with registry credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json when present).
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// PEM CA bundle that verifies the registry's certificate (in addition to the system roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    /// A client for `repo` with the matching credential from the docker config, if any.
    pub fn registry_for(&self, repo: &Repository) -> Result<Registry> {
        let ca_pem = match &self.ca_file {
            Some(path) => Some(std::fs::read(path).with_context(|| format!("reading CA file {}", path.display()))?),
            None => None,
        };
        let keyring = self.keyring()?;
        let credential = keyring.lookup(&repo.registry, &repo.repository);
        let options = Options { insecure: self.insecure, ca_pem, timeout: None };
        Ok(Registry::new(&options, credential)?)
    }

    fn keyring(&self) -> Result<Keyring> {
        let path = match &self.docker_config {
            Some(path) => path.clone(),
            None => match default_docker_config() {
                Some(path) => path,
                None => return Ok(Keyring::default()),
            },
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading docker config {}", path.display()))?;
        Ok(Keyring::parse(&bytes, &format!("docker config {}", path.display()))?)
    }
}

fn default_docker_config() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    Some(dir.join("config.json")).filter(|p| p.is_file())
}

/// `inspect REF`: resolve and describe a ModelPack.
pub async fn inspect(reference: &str, args: &RegistryArgs, json_output: bool) -> Result<()> {
    let (repo, spec) = Repository::parse_reference(reference)?;
    let registry = args.registry_for(&repo)?;
    let resolution = registry.resolve(&repo, &spec).await?;
    let inspection = registry::inspect(&registry, &repo, &resolution.digest).await?;
    let manifest = &inspection.manifest;
    let mut layers = Vec::new();
    for descriptor in &manifest.layers {
        let l = layer(descriptor)?;
        layers.push(json!({
            "mediaType": descriptor.media_type,
            "digest": descriptor.digest,
            "size": descriptor.size,
            "path": l.path.as_str(),
        }));
    }
    let out = json!({
        "reference": reference,
        "digest": resolution.digest,
        "tag": resolution.tag,
        "family": inspection.family,
        "artifactType": manifest.artifact_type,
        "configDigest": manifest.config.digest,
        "size": manifest.total_size(),
        "descriptor": inspection.config.descriptor,
        "config": inspection.config.config,
        "layers": layers,
        "warnings": inspection.warnings.iter().map(|w| format!("{w:?}")).collect::<Vec<_>>(),
    });
    if json_output {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", inspect_text(&out));
    }
    Ok(())
}

fn inspect_text(v: &Value) -> String {
    let mut s = String::new();
    let field = |s: &mut String, label: &str, value: &Value| {
        let text = match value {
            Value::Null => return,
            Value::String(t) => t.clone(),
            Value::Array(items) if items.is_empty() => return,
            other => other.to_string(),
        };
        s.push_str(&format!("{label:<14} {text}\n"));
    };
    field(&mut s, "Digest:", &v["digest"]);
    field(&mut s, "Tag:", &v["tag"]);
    field(&mut s, "Family:", &v["family"]);
    field(&mut s, "ArtifactType:", &v["artifactType"]);
    field(&mut s, "Config:", &v["configDigest"]);
    field(&mut s, "Size:", &v["size"]);
    for section in ["descriptor", "config"] {
        if let Some(map) = v[section].as_object() {
            for (k, value) in map {
                field(&mut s, &format!("{k}:"), value);
            }
        }
    }
    s.push_str("Files:\n");
    for l in v["layers"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {:<40} {:>12}  {}  {}\n",
            l["path"].as_str().unwrap_or(""),
            l["size"],
            l["digest"].as_str().unwrap_or(""),
            l["mediaType"].as_str().unwrap_or("")
        ));
    }
    s
}
