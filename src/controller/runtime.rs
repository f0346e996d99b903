//! The operator process around the controllers: `/healthz`, `/readyz` and `/metrics`, leader
//! election on a Lease (only the holder reconciles; the lease is released on SIGTERM so a standby
//! takes over at once), and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

use super::metrics::Metrics;
use super::{Config, Readiness};

/// Who holds the Lease decides who reconciles.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub controllers: Config,
    pub metrics_address: SocketAddr,
    pub health_address: SocketAddr,
    pub leader_election: Option<LeaderElection>,
}

const STANDBY_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {address}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("leader election")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error(
        "the leader-election namespace {namespace:?} does not exist: create it, or name another with \
         --leader-election-namespace (default: the --jobs-namespace)"
    )]
    NoLeaseNamespace { namespace: String },
    #[error("lost the leadership of lease {0}; exiting so that another replica takes over cleanly")]
    LostLeadership(String),
}

/// Serves the endpoints, then runs the controllers (as the leader when elected) until SIGTERM.
pub async fn run(client: Client, config: RuntimeConfig) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    let standby = Arc::new(AtomicBool::new(config.leader_election.is_some()));
    serve(config.metrics_address, "metrics", metrics_router(metrics.clone())).await?;
    serve(config.health_address, "health probes", health_router(readiness.clone(), standby.clone())).await?;

    let Some(election) = config.leader_election else {
        super::run(client, config.controllers, metrics, readiness).await;
        return Ok(());
    };
    let lease = format!("{}/{}", election.namespace, election.lease_name);
    tracing::info!(lease = %lease, identity = %election.identity, "waiting for leadership");
    // The lease manager re-reads a lease held by another replica only once it expires; a standby
    // builds a fresh one every couple of seconds instead, so a lease released on SIGTERM is taken
    // over at once.
    let manager = loop {
        let manager = LeaseManagerBuilder::new(client.clone(), &election.lease_name)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .map_err(|e| lease_error(e, &election.namespace))?;
        tokio::select! {
            acquired = manager.changed() => {
                if acquired.map_err(|e| lease_error(e, &election.namespace))? {
                    break manager;
                }
            }
            _ = tokio::time::sleep(STANDBY_RETRY) => {}
            _ = terminated() => {
                tracing::info!("stopped before becoming the leader");
                return Ok(());
            }
        }
    };
    let (mut leader, task) = manager.watch().await;
    tracing::info!(lease = %lease, identity = %election.identity, "became the leader; starting controllers");
    standby.store(false, Ordering::Release);
    let lost = async {
        loop {
            if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                return;
            }
        }
    };
    tokio::select! {
        _ = super::run(client, config.controllers, metrics, readiness) => {}
        _ = lost => return Err(Error::LostLeadership(lease)),
    }
    // Dropping the receiver makes the lease task release the lease before it ends.
    drop(leader);
    let _ = task.await;
    tracing::info!(lease = %lease, "released the lease");
    Ok(())
}

/// A Lease in a namespace that does not exist is a 404 naming the namespace: one line with the fix,
/// not the API server's Status twice over.
fn lease_error(e: kube_lease_manager::LeaseManagerError, namespace: &str) -> Error {
    use kube_lease_manager::LeaseManagerError::KubeError;
    match &e {
        KubeError(kube::Error::Api(status))
            if status.code == 404 && status.details.as_ref().is_some_and(|d| d.kind == "namespaces") =>
        {
            Error::NoLeaseNamespace { namespace: namespace.to_owned() }
        }
        _ => Error::Lease(e),
    }
}

async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn serve(address: SocketAddr, what: &'static str, router: Router) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| Error::Bind { address, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Bind { address, source })?;
    tracing::info!(endpoint = what, address = %bound, "serving {what}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "{what} server stopped");
        }
    });
    Ok(())
}

fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    metrics.encode(),
                )
            }
        }),
    )
}

/// `/readyz`: a standby replica is ready (it serves its purpose by waiting); the leader once its
/// caches have synced.
fn health_router(readiness: Arc<Readiness>, standby: Arc<AtomicBool>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/readyz",
        get(move || {
            let (readiness, standby) = (readiness.clone(), standby.clone());
            async move {
                if standby.load(Ordering::Acquire) {
                    (StatusCode::OK, "standby")
                } else if readiness.ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }
        }),
    )
}
