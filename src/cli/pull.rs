//! `pull REF --cache-dir DIR …`: what the per-node Jobs run.

use std::path::PathBuf;

use anyhow::{Context, Result};

use modelpack_operator::exit::Exit;
use modelpack_operator::registry::{self, Mirror, Repository};

use super::{Failure, RegistryArgs, Usage, one_line};

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// `registry/repository@sha256:…` (tags are refused: the controller pins digests).
    reference: String,
    #[arg(long, value_name = "DIR")]
    cache_dir: PathBuf,
    /// Point `deployments/<NS>/<NAME>/current` at the pulled model.
    #[arg(long, value_name = "deployments/NS/NAME")]
    link: Option<String>,
    /// Versions to keep for this link (others are garbage-collected).
    #[arg(long, value_name = "DIGEST")]
    keep: Vec<String>,
    /// Parallel connections to the registry, shared by layers and by the ranges of big blobs.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Blobs above this many bytes are fetched as concurrent ranges of this size, resumable per
    /// range (0: every blob in one request).
    #[arg(long, value_name = "BYTES", default_value_t = modelpack_operator::cache::DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// Bytes per second every blob read (each range of a big blob) must keep up: each 60 s window
    /// (the registry timeout) must bring 60× this many bytes, or the rest of the read, or the read
    /// is cut off (a registry that drips). A read of N bytes thus lasts at most N / this + 60 s.
    #[arg(long, value_name = "BYTES", default_value_t = modelpack_operator::cache::DEFAULT_MIN_RATE)]
    min_rate: u64,
    /// Fetch from URL (`http://` or `https://`, a pull-through cache or a P2P peer proxy) before
    /// REGISTRY itself; repeatable, tried in order. What a mirror sends is verified like the
    /// registry's; credentials go to it only when the docker config names its host.
    #[arg(long, value_name = "REGISTRY=URL", value_parser = modelpack_operator::registry::Mirror::parse)]
    mirror: Vec<modelpack_operator::registry::Mirror>,
    /// Most bytes extracted from the model's archive layers all together, tar headers included
    /// (default: 20× their total size, at least 1 GiB).
    #[arg(long, value_name = "BYTES")]
    extract_limit: Option<u64>,
    /// Most entries (files, directories, links) one model may create, over all its layers.
    #[arg(long, value_name = "N", default_value_t = modelpack_operator::cache::DEFAULT_MAX_ENTRIES)]
    max_entries: u64,
    /// Publish without flushing to disk: faster, but a node crash soon after may leave garbage
    /// under a verified name. Only for caches that do not survive a reboot (tmpfs, emptyDir).
    #[arg(long)]
    no_sync: bool,
    /// The cache's budget: a quantity (500Gi) or a percentage of its filesystem (80%). A model that
    /// does not fit evicts models no deployment holds, then kept previous versions (least recently
    /// used first); when it still does not fit, the pull fails with exit code 3, having fetched
    /// nothing. Default: the filesystem's free space only.
    #[arg(long, value_name = "SIZE|PERCENT%")]
    cache_limit: Option<modelpack_operator::cache::CacheLimit>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Also write the JSON result here (a pod's termination message).
    #[arg(long, value_name = "FILE")]
    termination_log: Option<PathBuf>,
    /// The OpenSSF model-signing referrer (manifest digest) the model was verified under: the model
    /// is published only if its files are exactly the ones that signature lists.
    #[arg(long, value_name = "DIGEST")]
    model_signature: Option<String>,
}

/// One model by digest into a node cache.
struct PullCommand {
    pub repository: Repository,
    pub digest: String,
    pub cache_dir: PathBuf,
    pub link: Option<(String, String)>,
    pub keep: Option<Vec<String>>,
    pub tuning: PullTuning,
    pub termination_log: Option<PathBuf>,
    /// `--model-signature`: the model-signing referrer the model was verified under.
    pub model_signature: Option<String>,
}

/// How a pull runs, as opposed to what it pulls.
struct PullTuning {
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
    fn new(
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
        Ok(PullCommand { repository, digest, cache_dir, link, keep, tuning, termination_log, model_signature: None })
    }

    /// `--model-signature DIGEST`: publish only files exactly as that model signature lists them.
    fn with_model_signature(mut self, signature: Option<String>) -> Result<PullCommand> {
        if let Some(digest) = &signature {
            modelpack_operator::cache::digest_hex(digest)?;
        }
        self.model_signature = signature;
        Ok(self)
    }

    /// Runs the pull: [`Exit::Ok`], or the failure's code: refused content (1), a model that
    /// does not fit even after eviction (3: retrying on this node is useless until something else
    /// leaves it), or a registry or disk that failed (4). The termination log gets the outcome
    /// either way, so the controller reads why.
    async fn run(self, args: &RegistryArgs) -> Result<Exit, Failure> {
        use modelpack_operator::cache::{self, PullOutcome};
        let result = self.pull(args).await;
        let store = cache::Store::open(&self.cache_dir).ok();
        let inventory = store.as_ref().and_then(|s| cache::report(s, self.tuning.cache_limit).ok());
        let (outcome, failure) = match result {
            Ok(outcome) => (PullOutcome { cache: inventory, ..outcome }, None),
            Err(failure) => {
                let line = one_line(&failure.error);
                let error = failure.error.downcast_ref::<cache::Error>();
                (PullOutcome { cache: inventory, ..PullOutcome::failed(&self.digest, line, error) }, Some(failure))
            }
        };
        let message = outcome.to_message();
        if let Some(path) = &self.termination_log {
            std::fs::write(path, &message).with_context(|| format!("writing {}", path.display()))?;
        }
        match failure {
            None => {
                println!("{message}");
                Ok(Exit::Ok)
            }
            Some(failure) => Err(failure),
        }
    }

    async fn pull(&self, args: &RegistryArgs) -> Result<modelpack_operator::cache::PullOutcome, Failure> {
        use modelpack_operator::cache::{Progress, PullOptions, Store};
        use std::sync::Arc;
        let registry = args.registry_for(&self.repository).usage()?;
        let mut store = Store::open(&self.cache_dir)?;
        if !self.tuning.durable {
            store = store.without_sync();
        }
        let signed = match &self.model_signature {
            Some(signature) => Some(Arc::new(
                modelpack_operator::verify::model_signing::statement_of(
                    &registry,
                    &self.repository,
                    &self.digest,
                    signature,
                )
                .await?,
            )),
            None => None,
        };
        let options = PullOptions {
            concurrency: self.tuning.concurrency,
            chunk_size: self.tuning.chunk_size,
            mirrors: args.mirror_endpoints(&self.repository, &self.tuning.mirrors).usage()?,
            link: self.link.clone(),
            limits: self.tuning.limits,
            keep: self.keep.clone(),
            cache_limit: self.tuning.cache_limit,
            min_rate: Some(self.tuning.min_rate),
            signed,
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

/// `pull REF --cache-dir DIR …`: the arguments are checked before anything is fetched (exit 2).
pub async fn run(args: PullArgs) -> Result<Exit, Failure> {
    let tuning = PullTuning {
        concurrency: args.concurrency,
        chunk_size: args.chunk_size,
        min_rate: args.min_rate,
        mirrors: args.mirror,
        limits: modelpack_operator::cache::Limits { extract_bytes: args.extract_limit, entries: args.max_entries },
        durable: !args.no_sync,
        cache_limit: args.cache_limit,
    };
    let command = PullCommand::new(
        &args.reference,
        args.cache_dir,
        args.link.as_deref(),
        &args.keep,
        tuning,
        args.termination_log,
    )
    .and_then(|c| c.with_model_signature(args.model_signature))
    .usage()?;
    command.run(&args.registry).await
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
