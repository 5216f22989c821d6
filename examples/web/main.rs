//! An actix-web service whose replicas elect a leader that runs a background actor.
//!
//! ```text
//! cargo run --example web                      # in-process MemoryStore, one replica
//! cargo run --example web --features metrics   # the same, with GET /metrics
//! KUBE_NAMESPACE=default KUBE_POD_NAME=web-0 cargo run --example web   # on Kubernetes (or with KUBE_CONFIG_PATH)
//! ```
//!
//! Environment: `KUBE_NAMESPACE`, `KUBE_POD_NAME` (identity), `KUBE_CONFIG_PATH` (see
//! `dsync::Config::from_env`); `DSYNC_STORE=memory|kube` (default: kube inside a cluster or with
//! `KUBE_CONFIG_PATH`, memory otherwise); `DSYNC_TIMING=lease,renew,retry` in seconds (default
//! 15,10,2); `LISTEN` (default `0.0.0.0:8080`); `HEALTH_TOLERANCE` seconds (default 20).
//!
//! Endpoints: `GET /leader` (who leads, this replica's term and fencing token, whether the
//! leader-only worker runs here), `GET /healthz`, `GET /readyz`, and with the `metrics`
//! feature `GET /metrics` (Prometheus: dsync's metrics and client-go's
//! `leader_election_master_status{name=...}`; see `dsync::metrics`). See `deploy/` for
//! manifests.
//!
//! Shutdown (SIGINT/SIGTERM): stop taking HTTP requests, then cancel the term, wait for the
//! worker to stop and release the lease (so another replica takes over at once), then exit.

mod app;
#[cfg(test)]
mod tests;

use std::net::TcpListener;
use std::time::Duration;

use dsync::{Config, Dsync, MemoryStore, Timing};

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn timing() -> Result<Timing, Box<dyn std::error::Error>> {
    let Some(spec) = env("DSYNC_TIMING") else {
        return Ok(Timing::default());
    };
    let parts: Vec<f64> = spec
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("DSYNC_TIMING={spec:?}: {e}"))?;
    let [lease, renew, retry] = parts[..] else {
        return Err(format!("DSYNC_TIMING={spec:?}: expected lease,renew,retry").into());
    };
    Ok(Timing::from_secs_f64(lease, renew, retry)?)
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr) // stdout carries the "listening on" line
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::from_env()?.with_timing(timing()?);
    let in_cluster = env("KUBERNETES_SERVICE_HOST").is_some() || env("KUBE_CONFIG_PATH").is_some();
    let store =
        env("DSYNC_STORE").unwrap_or_else(|| if in_cluster { "kube" } else { "memory" }.into());
    // Started once, here: not in the HttpServer factory, which runs per worker.
    let dsync = match store.as_str() {
        "memory" => Dsync::with_config(MemoryStore::new(), config)?,
        // The Kubernetes client is created on dsync's own lease thread.
        "kube" => Dsync::connect(config).await?,
        other => return Err(format!("DSYNC_STORE={other:?}: expected memory or kube").into()),
    };
    let tolerance =
        Duration::from_secs_f64(env("HEALTH_TOLERANCE").map_or(Ok(20.0), |v| v.parse())?);
    let service = app::Service::start(dsync, tolerance)?;
    let listen = env("LISTEN").unwrap_or_else(|| "0.0.0.0:8080".into());
    let listener = TcpListener::bind(&listen)?;
    tracing::info!(address = %listener.local_addr()?, store, "listening");
    println!("listening on {}", listener.local_addr()?);
    // Runs until SIGINT/SIGTERM, then finishes the requests in flight.
    service.serve(listener)?.await?;
    tracing::info!("HTTP stopped; releasing leadership");
    service.shutdown().await?;
    tracing::info!("bye");
    Ok(())
}
