//! `run`: the controllers, against the cluster of the current kubeconfig or in-cluster config.

use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;

use modelpack_operator::exit::Exit;

use super::{Failure, parse_interval, parse_rate};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub async fn run(args: RunArgs) -> Result<Exit, Failure> {
    init_tracing(args.log_format);
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
    runtime::run(client, config).await.map_err(anyhow::Error::from)?;
    tracing::info!("controllers stopped");
    Ok(Exit::Ok)
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
