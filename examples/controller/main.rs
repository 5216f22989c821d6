//! A kube-runtime `Controller` that runs only while this replica is leader: the most common
//! use of leader election in a Rust operator (kube-rs ships none, kube-rs/kube#485).
//!
//! The controller reconciles the ConfigMaps labelled `dsync.example/reconcile=true` of the
//! namespace into a status annotation, `dsync.example/status`: who reconciled them, under
//! which fencing token, which data (a digest). It starts when this replica is elected
//! (`Election::when_elected`, once per term) and shuts down gracefully when the term ends
//! (`Term::cancelled`); dsync releases the lease only after it has stopped. Every write
//! carries the term's fence (`dsync.io/fence`, `dsync::fencing::merge_patch`), so with the
//! token fence of `deploy/fencing/` bound to these ConfigMaps the API server itself refuses
//! a deposed replica's late write.
//!
//! ```text
//! KUBE_NAMESPACE=default KUBE_POD_NAME=ctl-0 cargo run --example controller   # twice, another KUBE_POD_NAME
//! kubectl create configmap demo --from-literal=k=v && kubectl label configmap demo dsync.example/reconcile=true
//! kubectl get configmap demo -o jsonpath='{.metadata.annotations}'
//! ```
//!
//! Environment: `KUBE_NAMESPACE` (the leases' and the ConfigMaps'), `KUBE_POD_NAME`
//! (identity), `KUBE_CONFIG_PATH` (else the default kubeconfig, else in-cluster; see
//! `dsync::Config::from_env`), `RUST_LOG` (default `info`). The replica needs, in its
//! namespace, the Lease rights of `deploy/rbac.yaml` and `get`, `list`, `watch`, `patch` on
//! ConfigMaps.
//!
//! Ctrl-C or SIGTERM: dsync shuts down: the term is cancelled, the controller finishes the
//! reconciles in flight, and the lease is released, so another replica takes over at once.

mod reconciler;
#[cfg(test)]
mod tests;

use dsync::{Config, Dsync, KubeStore};
use kube::api::Api;

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what Kubernetes sends a pod it stops).
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::from_env()?;
    // One client configuration for both: dsync's (created on dsync's own lease thread) and
    // the controller's (on this thread, where the controller runs).
    let client_config = KubeStore::client_config(&config).await?;
    let client = kube::Client::try_from(client_config.clone())?;
    let dsync = Dsync::connect_with(config.clone(), client_config).await?;
    let election = dsync.election(reconciler::ELECTION)?;
    reconciler::start(&election, Api::namespaced(client, &config.namespace))?;
    tracing::info!(identity = dsync.identity(), lease = %election.lease(), "campaigning");
    shutdown_signal().await?;
    tracing::info!("shutting down: stopping the controller and releasing the lease");
    dsync.shutdown().await?;
    Ok(())
}
