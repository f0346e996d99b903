//! The person-facing subcommands (`inspect`, …): argument plumbing and output formats over the
//! library's modules.

pub mod check;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use modelpack_operator::cache::Endpoint;
use modelpack_operator::modelpack::{Family, ModelDescriptor, ModelProperties};
use modelpack_operator::policy::{self, LayerVar, ReferrerVar};
use modelpack_operator::printable::{printable, printable_json};
use modelpack_operator::registry::{self, Keyring, Mirror, Options, Registry, Repository};

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

/// `inspect REF`: resolve and describe a ModelPack.
pub async fn inspect(reference: &str, args: &RegistryArgs, json_output: bool) -> Result<()> {
    let (repo, spec) = Repository::parse_reference(reference)?;
    let registry = args.registry_for(&repo)?;
    let resolution = registry.resolve(&repo, &spec).await?;
    let inspection = registry::inspect(&registry, &repo, &resolution.digest).await?;
    // What is attached is described, not required (`check` requires it): a registry that answers the
    // referrers request with an error still gets its artifact inspected, with a warning.
    let (referrers, unread) = match registry.referrers(&repo, &resolution.digest).await {
        Ok(referrers) => (referrers, None),
        Err(e) => (Vec::new(), Some(format!("referrers not read: {e}"))),
    };
    let variables = policy::Variables::of(&repo, &inspection, resolution.tag.as_deref(), &referrers)?;
    let collected = policy::Collected { inspection, referrers, variables };
    let mut report = InspectReport::new(reference, resolution.tag, &collected);
    report.warnings.extend(unread);
    if json_output {
        println!("{}", printable_json(&serde_json::to_string_pretty(&report)?));
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// What `inspect` prints, as JSON (`-o json`) or as text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InspectReport<'a> {
    reference: &'a str,
    digest: &'a str,
    tag: Option<String>,
    family: Family,
    artifact_type: Option<&'a str>,
    config_digest: &'a str,
    size: i64,
    descriptor: &'a ModelDescriptor,
    config: &'a ModelProperties,
    layers: &'a [LayerVar],
    /// Every file's contents summed.
    weights: &'a modelpack_operator::modelpack::contents::Weights,
    /// What is attached to the digest (referrers API or `sha256-<hex>` tag, first page).
    referrers: &'a [ReferrerVar],
    warnings: Vec<String>,
}

impl<'a> InspectReport<'a> {
    fn new(reference: &'a str, tag: Option<String>, collected: &'a policy::Collected) -> InspectReport<'a> {
        let inspection = &collected.inspection;
        let manifest = &inspection.manifest;
        InspectReport {
            reference,
            digest: &inspection.digest,
            tag,
            family: inspection.family,
            artifact_type: manifest.artifact_type.as_deref(),
            config_digest: &manifest.config.digest,
            size: manifest.total_size(),
            descriptor: &inspection.config.descriptor,
            config: &inspection.config.config,
            layers: &collected.variables.layers,
            weights: &collected.variables.weights,
            referrers: &collected.variables.referrers,
            warnings: inspection.warnings.iter().map(|w| format!("{w:?}")).collect(),
        }
    }

    /// Every string from the registry is made printable ([`printable`]), field by field, so that
    /// no value can start a line of its own either.
    fn text(&self) -> String {
        let mut s = String::new();
        let mut field = |label: &str, text: &str| {
            if !text.is_empty() {
                s.push_str(&format!("{:<14} {}\n", printable(label), printable(text)));
            }
        };
        field("Digest:", self.digest);
        field("Tag:", self.tag.as_deref().unwrap_or_default());
        field("Family:", &self.family.to_string());
        field("ArtifactType:", self.artifact_type.unwrap_or_default());
        field("Config:", self.config_digest);
        field("Size:", &self.size.to_string());
        // The config's objects print field by field, as their JSON names and values.
        for section in [serde_json::to_value(self.descriptor), serde_json::to_value(self.config)] {
            let Ok(serde_json::Value::Object(map)) = section else { continue };
            for (k, value) in map {
                let text = match value {
                    serde_json::Value::String(t) => t,
                    other => other.to_string(),
                };
                field(&format!("{k}:"), &text);
            }
        }
        field("Weights:", &self.weights.summary());
        for w in &self.warnings {
            field("Warning:", w);
        }
        s.push_str("Files:\n");
        for l in self.layers {
            let (path, digest, media_type) = (printable(&l.path), printable(&l.digest), printable(&l.media_type));
            s.push_str(&format!("  {path:<40} {:>12}  {digest}  {media_type}\n", l.size));
            s.push_str(&format!("  {:<40} {}\n", "", printable(&l.contents.line())));
        }
        if !self.referrers.is_empty() {
            s.push_str("Referrers:\n");
            for r in self.referrers {
                s.push_str(&format!("  {:<40} {}\n", printable(&r.artifact_type), printable(&r.digest)));
            }
        }
        s
    }
}

/// What `verify` checks with.
pub enum VerifyWith<'a> {
    Cosign(&'a [PathBuf]),
    Notation { policy: &'a Path, certs: &'a Path },
}

/// `verify REF …`: exit 0 when the policy's verdict is pass, 1 with the reason when not.
pub async fn verify(reference: &str, with: VerifyWith<'_>, args: &RegistryArgs, json_output: bool) -> Result<bool> {
    use modelpack_operator::verify::{self, cosign::NamedKey, notation};
    let (repo, spec) = Repository::parse_reference(reference)?;
    let registry = args.registry_for(&repo)?;
    let digest = registry.resolve(&repo, &spec).await?.digest;
    let (provider, result) = match with {
        VerifyWith::Cosign(keys) => {
            let mut named = Vec::new();
            for path in keys {
                let pem = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
                let key = verify::PublicKey::from_pem(&pem).with_context(|| format!("key {}", path.display()))?;
                let name =
                    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
                named.push(NamedKey { name, key });
            }
            ("cosign", verify::cosign::verify(&registry, &repo, &digest, &named).await)
        }
        VerifyWith::Notation { policy, certs } => {
            let doc = std::fs::read(policy).with_context(|| format!("reading trust policy {}", policy.display()))?;
            let policies = notation::Policies::parse(&doc).with_context(|| policy.display().to_string())?;
            let stores = notation::TrustStores::from_dir(certs)?;
            let manifest = registry.manifest(&repo, &digest).await?;
            let media_type = serde_json::from_slice::<Value>(&manifest)
                .ok()
                .and_then(|m| m["mediaType"].as_str().map(str::to_owned))
                .unwrap_or_else(|| modelpack_operator::modelpack::OCI_MANIFEST.to_owned());
            let target = notation::Target { digest: &digest, media_type: &media_type, size: manifest.len() as i64 };
            let now = jiff::Timestamp::now().as_second();
            ("notation", notation::verify(&registry, &repo, &target, &policies, &stores, now).await)
        }
    };
    let report = match &result {
        Ok(v) => VerifyReport {
            verified: true,
            provider: v.provider,
            digest: &v.digest,
            identity: Some(&v.identity),
            signature_digest: Some(&v.signature_digest),
            reason: None,
            detail: None,
            warnings: &v.warnings,
        },
        Err(verify::Error::Rejected { reason, detail }) => VerifyReport {
            verified: false,
            provider,
            digest: &digest,
            identity: None,
            signature_digest: None,
            reason: Some(reason.as_str()),
            detail: Some(detail),
            warnings: &[],
        },
        Err(e) => anyhow::bail!("verifying {repo}@{digest}: {e}"),
    };
    if json_output {
        println!("{}", printable_json(&serde_json::to_string_pretty(&report)?));
    } else {
        print!("{}", report.text(&repo));
    }
    Ok(report.verified)
}

/// What `verify` prints, as JSON (`-o json`) or as text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerifyReport<'a> {
    verified: bool,
    provider: &'a str,
    digest: &'a str,
    identity: Option<&'a str>,
    signature_digest: Option<&'a str>,
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    warnings: &'a [String],
}

impl VerifyReport<'_> {
    /// The signer's identity, the rejection's detail and the warnings carry a certificate's text
    /// (and the registry's): each is made printable.
    fn text(&self, repo: &Repository) -> String {
        let (provider, digest) = (self.provider, self.digest);
        if !self.verified {
            let (reason, detail) = (self.reason.unwrap_or_default(), printable(self.detail.unwrap_or_default()));
            return format!("rejected {repo}@{digest}: {reason}: {detail}\n");
        }
        let identity = printable(self.identity.unwrap_or_default());
        let mut s = format!("verified {repo}@{digest}: signed by {identity} ({provider})\n");
        for w in self.warnings {
            s.push_str(&format!("warning: {}\n", printable(w)));
        }
        s
    }
}

/// `pull REF --cache-dir DIR …`: one model by digest into a node cache.
pub struct PullCommand {
    pub repository: Repository,
    pub digest: String,
    pub cache_dir: PathBuf,
    pub link: Option<(String, String)>,
    pub keep: Option<Vec<String>>,
    pub tuning: PullTuning,
    pub termination_log: Option<PathBuf>,
}

/// How a pull runs, as opposed to what it pulls.
pub struct PullTuning {
    pub concurrency: usize,
    pub chunk_size: u64,
    /// `--min-rate`: bytes per second each blob read must keep up.
    pub min_rate: u64,
    /// Hosts tried before the registry (`--mirror REGISTRY=URL`).
    pub mirrors: Vec<Mirror>,
    pub limits: modelpack_operator::cache::Limits,
    /// Flush to disk before publishing (off: `--no-sync`).
    pub durable: bool,
    /// `--cache-limit` (none: the filesystem's free space only).
    pub cache_limit: Option<modelpack_operator::cache::CacheLimit>,
}

impl PullCommand {
    /// Checks the arguments a person or a Job can get wrong before anything is fetched (exit 2).
    pub fn new(
        reference: &str,
        cache_dir: PathBuf,
        link: Option<&str>,
        keep: &[String],
        tuning: PullTuning,
        termination_log: Option<PathBuf>,
    ) -> Result<PullCommand> {
        let (repository, spec) = Repository::parse_reference(reference)?;
        let registry::RefSpec::Digest(digest) = spec else {
            anyhow::bail!("{reference:?} is not a digest reference (repo@sha256:…); pull takes digests only")
        };
        modelpack_operator::cache::digest_hex(&digest)?;
        let link = link.map(modelpack_operator::cache::parse_link).transpose()?;
        if !keep.is_empty() && link.is_none() {
            anyhow::bail!("--keep needs --link: versions are kept per deployment link");
        }
        for digest in keep {
            modelpack_operator::cache::digest_hex(digest)?;
        }
        // GC runs when asked: `--keep` names the versions this link keeps besides the one pulled.
        let keep = (!keep.is_empty()).then(|| keep.to_vec());
        Ok(PullCommand { repository, digest, cache_dir, link, keep, tuning, termination_log })
    }

    /// Runs the pull; exit code 0, 1 (failed) or 3 (`InsufficientStorage`: does not fit even after
    /// eviction, so retrying on this node is useless until something else leaves it).
    pub async fn run(self, args: &RegistryArgs) -> Result<std::process::ExitCode> {
        use modelpack_operator::cache::{self, Error, PullOutcome};
        let result = self.pull(args).await;
        let store = cache::Store::open(&self.cache_dir).ok();
        let inventory = store.as_ref().and_then(|s| cache::report(s, self.tuning.cache_limit).ok());
        let (outcome, code) = match result {
            Ok(outcome) => (PullOutcome { cache: inventory, ..outcome }, 0),
            Err(e) => {
                let line = one_line(&e);
                eprintln!("error: {line}");
                let error = e.downcast_ref::<Error>();
                let code = if matches!(error, Some(Error::InsufficientStorage { .. })) { 3 } else { 1 };
                (PullOutcome { cache: inventory, ..PullOutcome::failed(&self.digest, line, error) }, code)
            }
        };
        let message = outcome.to_message();
        if let Some(path) = &self.termination_log {
            std::fs::write(path, &message).with_context(|| format!("writing {}", path.display()))?;
        }
        if code == 0 {
            println!("{message}");
        }
        Ok(std::process::ExitCode::from(code))
    }

    async fn pull(&self, args: &RegistryArgs) -> Result<modelpack_operator::cache::PullOutcome> {
        use modelpack_operator::cache::{Progress, PullOptions, Store};
        use std::sync::Arc;
        let registry = args.registry_for(&self.repository)?;
        let mut store = Store::open(&self.cache_dir)?;
        if !self.tuning.durable {
            store = store.without_sync();
        }
        let options = PullOptions {
            concurrency: self.tuning.concurrency,
            chunk_size: self.tuning.chunk_size,
            mirrors: args.mirror_endpoints(&self.repository, &self.tuning.mirrors)?,
            link: self.link.clone(),
            limits: self.tuning.limits,
            keep: self.keep.clone(),
            cache_limit: self.tuning.cache_limit,
            min_rate: Some(self.tuning.min_rate),
        };
        let progress = Arc::new(Progress::default());
        let reporter = tokio::spawn(report_progress(progress.clone()));
        let result =
            modelpack_operator::cache::pull(&registry, &self.repository, &self.digest, &store, &options, progress)
                .await;
        reporter.abort();
        Ok(result?)
    }
}

/// One line whatever the error carries (registry or manifest text can hold newlines, escape
/// sequences and megabytes): each cause once, control characters become spaces, and the line is cut.
pub fn one_line(e: &anyhow::Error) -> String {
    const MAX_CHARS: usize = 900;
    let text = modelpack_operator::chain::one_line(e.as_ref());
    let mut line: String = printable(&text).chars().take(MAX_CHARS).collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        line.push('…');
    }
    line
}

/// `scrub --cache-dir DIR`: exit 0 when everything matched, 1 when something was removed.
pub fn scrub(
    cache_dir: &Path,
    rate: Option<u64>,
    cache_limit: Option<modelpack_operator::cache::CacheLimit>,
    termination_log: Option<&Path>,
) -> Result<bool> {
    use modelpack_operator::cache;
    let store = cache::Store::open(cache_dir)?;
    let report = cache::scrub(&store, rate)?;
    let outcome = cache::ScrubOutcome { scrub: report, cache: cache::report(&store, cache_limit).ok() };
    let message = outcome.to_message();
    if let Some(path) = termination_log {
        std::fs::write(path, &message).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{message}");
    Ok(outcome.scrub.clean())
}

/// Progress on stderr while a pull runs: a bar with bytes, rate and ETA on a terminal; otherwise
/// (a Job's log) a plain line every 5 s.
async fn report_progress(progress: std::sync::Arc<modelpack_operator::cache::Progress>) {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            bar.set_length(progress.total.load(Ordering::Relaxed));
            bar.set_position(progress.done.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (done, total) = (progress.done.load(Ordering::Relaxed), progress.total.load(Ordering::Relaxed));
        let rate = done as f64 / started.elapsed().as_secs_f64();
        let eta = if rate > 0.0 { total.saturating_sub(done) as f64 / rate } else { 0.0 };
        eprintln!("{:.1} / {:.1} MiB  {:.1} MiB/s  ETA {eta:.0}s", mib(done), mib(total), mib(rate as u64));
    }
}
