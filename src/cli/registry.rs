//! The transport and credential flags every command that talks to a registry shares.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use modelpack_operator::cache::Endpoint;
use modelpack_operator::registry::{Keyring, Mirror, Options, Registry, Repository};

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
    /// Seconds each registry operation may take, body included (default 60); for `pull`, also the
    /// window over which `--min-rate` is measured.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
}

impl RegistryArgs {
    /// A client for `repo` with the matching credential from the docker config, if any.
    pub fn registry_for(&self, repo: &Repository) -> Result<Registry> {
        self.registry_over(repo, self.insecure)
    }

    /// A client for `repo` (`insecure`: plain HTTP), with the docker config's credentials for its
    /// host only.
    fn registry_over(&self, repo: &Repository, insecure: bool) -> Result<Registry> {
        let ca_pem = match &self.ca_file {
            Some(path) => Some(std::fs::read(path).with_context(|| format!("reading CA file {}", path.display()))?),
            None => None,
        };
        let keyring = self.keyring()?;
        let credential = keyring.lookup(&repo.registry, &repo.repository);
        let options = Options { insecure, ca_pem, timeout: self.timeout.map(std::time::Duration::from_secs) };
        Ok(Registry::new(&options, credential)?)
    }

    /// The mirrors of `repo`'s registry as hosts to pull from, in order.
    pub fn mirror_endpoints(&self, repo: &Repository, mirrors: &[Mirror]) -> Result<Vec<Endpoint>> {
        Mirror::of(mirrors, &repo.registry)
            .map(|m| {
                let repo = Repository { registry: m.host.clone(), repository: repo.repository.clone() };
                Ok(Endpoint { registry: self.registry_over(&repo, m.insecure)?, repo })
            })
            .collect()
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
