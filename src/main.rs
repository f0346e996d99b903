use std::path::{Path, PathBuf};

use anyhow::Context;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod cli;
use cli::RegistryArgs;

/// Kubernetes operator for CNCF ModelPack artifacts: resolve, verify and pre-pull models onto nodes.
#[derive(Parser, Debug)]
#[command(name = "modelpack-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig or in-cluster config.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions (YAML) for Model, ModelDeployment and ModelPolicy.
    Crd(CrdArgs),
    /// Pull a ModelPack by digest into a node cache (what the per-node Jobs run).
    Pull(PullArgs),
    /// Resolve a reference and print the ModelPack's metadata and files.
    Inspect(InspectArgs),
    /// Verify the signature of a ModelPack (notation, cosign or OpenSSF model signing).
    Verify(VerifyArgs),
    /// Evaluate ModelPolicy rules on a ModelPack (exit 0: every Enforce rule passes, 1: one fails,
    /// 2: usage error or a policy that does not compile).
    Check(CheckArgs),
    /// Collect cache entries no deployment keeps; with --unlink, forget one deployment first (what
    /// a deleted ModelDeployment's cleanup Jobs run).
    Gc(GcArgs),
    /// Re-hash every blob and model file of a node cache; remove what no longer matches, with every
    /// model built from it. Exit 0: clean; 1: something was removed; 2: the scrub failed.
    Scrub(ScrubArgs),
}

#[derive(clap::Args, Debug)]
struct GcArgs {
    #[arg(long, value_name = "DIR")]
    cache_dir: PathBuf,
    /// Remove `deployments/<NS>/<NAME>` before collecting.
    #[arg(long, value_name = "deployments/NS/NAME")]
    unlink: Option<String>,
    /// The cache's budget, for the capacity reported.
    #[arg(long, value_name = "SIZE|PERCENT%")]
    cache_limit: Option<modelpack_operator::cache::CacheLimit>,
    /// Also write the JSON result here (a pod's termination message).
    #[arg(long, value_name = "FILE")]
    termination_log: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ScrubArgs {
    #[arg(long, value_name = "DIR")]
    cache_dir: PathBuf,
    /// Most bytes read a second (a quantity: 50Mi). Default: no bound.
    #[arg(long, value_name = "BYTES", value_parser = parse_rate)]
    rate: Option<u64>,
    /// The cache's budget, for the capacity reported.
    #[arg(long, value_name = "SIZE|PERCENT%")]
    cache_limit: Option<modelpack_operator::cache::CacheLimit>,
    /// Also write the JSON result here (a pod's termination message).
    #[arg(long, value_name = "FILE")]
    termination_log: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespace the pull Jobs run in.
    #[arg(long, env = "POD_NAMESPACE", default_value = "modelpack-system")]
    jobs_namespace: String,
    /// The node cache directory (a hostPath on every node).
    #[arg(long, default_value = "/var/lib/modelpack")]
    cache_dir: PathBuf,
    /// Image the pull Jobs run (this operator's image).
    #[arg(long, default_value = concat!("modelpack-operator:", env!("CARGO_PKG_VERSION")))]
    puller_image: String,
    /// Reconcile objects of this namespace only (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where `/metrics` is served (Prometheus / OpenMetrics text).
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_bind_address: std::net::SocketAddr,
    /// Where `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_probe_bind_address: std::net::SocketAddr,
    /// Reconcile only while holding the leader Lease (so replicas never reconcile at once).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: the Jobs namespace).
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    leader_election_identity: Option<String>,
    /// Bound every deployment's nodes to nodes with this label (repeatable): selections are
    /// intersected with it and pull Jobs carry it as their nodeSelector. Default: every node.
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = modelpack_operator::controller::parse_label)]
    node_selector: Vec<(String, String)>,
    /// A taint deployments may tolerate (repeatable); a deployment tolerating anything else is
    /// Stalled (TolerationNotAllowed) and pulls nothing. Default: any toleration.
    #[arg(long = "allowed-toleration", value_name = "KEY[=VALUE][:EFFECT]")]
    allowed_toleration: Vec<modelpack_operator::controller::AllowedToleration>,
    /// Restrict tolerations to --allowed-toleration even when none is given (then none is allowed).
    #[arg(long)]
    restrict_tolerations: bool,
    /// Most entries (files, directories, links) one model may create in a node's cache (passed to
    /// every pull Job).
    #[arg(long, value_name = "N", default_value_t = modelpack_operator::cache::DEFAULT_MAX_ENTRIES)]
    max_entries: u64,
    /// How much of each node's cache filesystem the cache may use: a quantity (500Gi) or a
    /// percentage (80%); passed to every pull Job, which evicts or fails fast beyond it.
    #[arg(long, value_name = "SIZE|PERCENT%", default_value = "80%")]
    cache_limit: modelpack_operator::cache::CacheLimit,
    /// How often every node holding models is scrubbed (re-hashed); 0 disables.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_interval)]
    scrub_interval: std::time::Duration,
    /// Most bytes a second a scrub reads from a node's disk (a quantity: 64Mi).
    #[arg(long, value_name = "BYTES", default_value = "64Mi", value_parser = parse_rate)]
    scrub_rate: u64,
    /// Pull Jobs fetch from URL before REGISTRY itself (repeatable, in order; passed to every pull
    /// Job): a pull-through cache or a node-local P2P engine, so the registry sees one download
    /// per cluster. Only what the pull Jobs fetch goes through mirrors, never the operator's own
    /// resolution and verification.
    #[arg(long, value_name = "REGISTRY=URL", value_parser = modelpack_operator::registry::Mirror::parse)]
    mirror: Vec<modelpack_operator::registry::Mirror>,
    /// Most reconciles of one kind (Models, ModelDeployments) running at once.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrent: u16,
    /// The uid (and gid) the pull, scrub and cleanup Jobs run as (runAsNonRoot). Default: uid 0 of
    /// the image, since a hostPath the kubelet creates belongs to root; a non-root uid needs the
    /// cache directory to belong to it on every node. Every capability is dropped either way.
    #[arg(long, value_name = "UID", value_parser = clap::value_parser!(u32).range(1..))]
    job_run_as_user: Option<u32>,
}

fn parse_rate(text: &str) -> Result<u64, String> {
    match modelpack_operator::cache::CacheLimit::parse(text).map_err(|e| e.to_string())? {
        modelpack_operator::cache::CacheLimit::Bytes(bytes) => Ok(bytes),
        _ => Err(format!("{text:?}: expected bytes a second (64Mi), not a percentage")),
    }
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    modelpack_operator::api::duration::parse(text).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct CrdArgs {
    /// Write the YAML to FILE (atomically) instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct PullArgs {
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    /// `registry/repository[:tag|@sha256:…]`.
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// `registry/repository[:tag|@sha256:…]`.
    reference: String,
    /// Notary Project trust policy (trustpolicy.json).
    #[arg(long, value_name = "FILE", requires = "notation_certs", conflicts_with = "cosign_key")]
    notation_policy: Option<PathBuf>,
    /// Trust store in notation's layout: `<type>/<store>/*.crt|*.pem`.
    #[arg(long, value_name = "DIR", requires = "notation_policy")]
    notation_certs: Option<PathBuf>,
    /// cosign public key (repeatable: any key may verify).
    #[arg(long, value_name = "FILE")]
    cosign_key: Vec<PathBuf>,
    /// OpenSSF model signing: public key of `model_signing sign key` (repeatable).
    #[arg(long, value_name = "PEM", conflicts_with_all = ["cosign_key", "notation_policy", "model_signing_certs"])]
    model_signing_key: Vec<PathBuf>,
    /// OpenSSF model signing: root certificates of `model_signing sign certificate` (repeatable).
    #[arg(long, value_name = "PEM", conflicts_with_all = ["cosign_key", "notation_policy"])]
    model_signing_certs: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// `registry/repository[:tag|@sha256:…]`.
    reference: String,
    /// ModelPolicy YAML files (`--policy A B` or `--policy A --policy B`; a file may hold several
    /// documents).
    #[arg(long, value_name = "FILE", required = true, num_args = 1..)]
    policy: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => match crd(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Run(args) => {
            init_tracing(args.log_format);
            run_async(run(args))
        }
        Command::Pull(args) => {
            let command = cli::PullCommand::new(
                &args.reference,
                args.cache_dir,
                args.link.as_deref(),
                &args.keep,
                cli::PullTuning {
                    concurrency: args.concurrency,
                    chunk_size: args.chunk_size,
                    min_rate: args.min_rate,
                    mirrors: args.mirror,
                    limits: modelpack_operator::cache::Limits {
                        extract_bytes: args.extract_limit,
                        entries: args.max_entries,
                    },
                    durable: !args.no_sync,
                    cache_limit: args.cache_limit,
                },
                args.termination_log,
            )
            .and_then(|c| c.with_model_signature(args.model_signature));
            match command {
                Ok(command) => match tokio_runtime() {
                    Ok(runtime) => match runtime.block_on(command.run(&args.registry)) {
                        Ok(code) => code,
                        Err(e) => fail(&e),
                    },
                    Err(e) => fail(&e),
                },
                Err(e) => {
                    eprintln!("error: {}", cli::one_line(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Inspect(args) => {
            let json = matches!(args.output, Output::Json);
            run_async(cli::inspect(&args.reference, &args.registry, json))
        }
        Command::Verify(args) => verify(args),
        Command::Check(args) => check(args),
        Command::Gc(args) => match gc(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Scrub(args) => {
            let result = cli::scrub(&args.cache_dir, args.rate, args.cache_limit, args.termination_log.as_deref());
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    fail(&e);
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn verify(args: VerifyArgs) -> ExitCode {
    let with = match (&args.notation_policy, &args.notation_certs) {
        (Some(policy), Some(certs)) => cli::VerifyWith::Notation { policy, certs },
        _ if !args.cosign_key.is_empty() => cli::VerifyWith::Cosign(&args.cosign_key),
        _ if !args.model_signing_key.is_empty() || !args.model_signing_certs.is_empty() => {
            cli::VerifyWith::ModelSigning { keys: &args.model_signing_key, certs: &args.model_signing_certs }
        }
        _ => {
            eprintln!(
                "error: give --cosign-key FILE (repeatable), --notation-policy FILE --notation-certs DIR, or --model-signing-key PEM / --model-signing-certs PEM"
            );
            return ExitCode::from(2);
        }
    };
    let json = matches!(args.output, Output::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    match runtime.block_on(cli::verify(&args.reference, with, &args.registry, json)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail(&e),
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let policies = match cli::check::load(&args.policy) {
        Ok(policies) => policies,
        Err(e) => {
            fail(&e);
            return ExitCode::from(2);
        }
    };
    let json = matches!(args.output, Output::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    match runtime.block_on(cli::check::run(&args.reference, &policies, &args.registry, json)) {
        Ok(cli::check::Verdict::Passed) => ExitCode::SUCCESS,
        Ok(cli::check::Verdict::Failed) => ExitCode::FAILURE,
        Err(e) => fail(&e),
    }
}

fn gc(args: &GcArgs) -> anyhow::Result<()> {
    use modelpack_operator::cache;
    let store = cache::Store::open(&args.cache_dir)?;
    let collected = match &args.unlink {
        Some(link) => {
            let (namespace, name) = cache::parse_link(link)?;
            cache::unlink(&store, &namespace, &name)?
        }
        None => cache::collect(&store, None)?,
    };
    let outcome = cache::GcOutcome { collected, cache: cache::report(&store, args.cache_limit).ok() };
    let message = outcome.to_message();
    if let Some(path) = &args.termination_log {
        std::fs::write(path, &message).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{message}");
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    tracing::info!(
        watch_namespace = args.watch_namespace.as_deref().unwrap_or("*"),
        jobs_namespace = %args.jobs_namespace,
        cache_dir = %args.cache_dir.display(),
        puller_image = %args.puller_image,
        "starting controllers"
    );
    let jobs = modelpack_operator::controller::JobSettings {
        namespace: args.jobs_namespace,
        cache_dir: args.cache_dir.to_string_lossy().into_owned(),
        image: args.puller_image,
        bound: modelpack_operator::controller::NodeBound {
            selector: args.node_selector.into_iter().collect(),
            tolerations: (args.restrict_tolerations || !args.allowed_toleration.is_empty())
                .then_some(args.allowed_toleration),
        },
        max_entries: args.max_entries,
        cache_limit: args.cache_limit,
        scrub_interval: args.scrub_interval,
        scrub_rate: args.scrub_rate,
        mirrors: args.mirror.clone(),
        run_as_user: args.job_run_as_user,
    };
    use modelpack_operator::controller::runtime::{self, LeaderElection, RuntimeConfig};
    // Operators watching different namespaces (one per tenant, or per test) elect separately.
    let lease_name = match &args.watch_namespace {
        Some(ns) => format!("modelpack-operator-{ns}"),
        None => "modelpack-operator".to_owned(),
    };
    let leader_election = args.leader_elect.then(|| LeaderElection {
        namespace: args.leader_election_namespace.clone().unwrap_or_else(|| jobs.namespace.clone()),
        lease_name,
        identity: args.leader_election_identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        }),
    });
    let controllers =
        modelpack_operator::controller::Config { namespace: args.watch_namespace, jobs, concurrent: args.concurrent };
    let config = RuntimeConfig {
        controllers,
        metrics_address: args.metrics_bind_address,
        health_address: args.health_probe_bind_address,
        leader_election,
    };
    runtime::run(client, config).await?;
    tracing::info!("controllers stopped");
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs an async command; failures print one line naming the cause and exit 1.
fn run_async(command: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// One line whatever the error carries (registry or manifest text can hold newlines, escape
/// sequences and megabytes): each cause once, control characters become spaces and the line is cut.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", cli::one_line(e));
    ExitCode::FAILURE
}

fn crd(args: CrdArgs) -> anyhow::Result<()> {
    let yaml = modelpack_operator::api::crds_yaml()?;
    match args.output {
        None => print!("{yaml}"),
        Some(path) => {
            write_atomically(&path, yaml.as_bytes()).with_context(|| format!("writing {}", path.display()))?
        }
    }
    Ok(())
}

/// Writes beside the target and renames, so a reader never sees a partial file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
