//! The service of the `web` example: a leader-only background actor, and the HTTP endpoints
//! `/leader`, `POST /leader/handoff?to=<pod>`, `/healthz`, `/readyz` and, with the `metrics`
//! feature, `/metrics`. Its in-process tests are `tests.rs`, next to it; `tests/web.rs` runs
//! the example's binary as processes.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use actix_web::{HttpResponse, HttpServer, web};
use dsync::{Dsync, Election, LeaderOnly, Term};
use serde::Serialize;

/// The election whose leader runs the background work.
pub const ELECTION: &str = "background-jobs";

/// Leader-only background work: here it ticks once per second under its term's fencing
/// token, where a real service would, say, drain a queue or rotate keys.
pub struct Ticker {
    term: Term,
    ticks: Arc<AtomicU64>,
}

impl Actor for Ticker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(token = self.term.fencing_token(), "background work started");
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.ticks.fetch_add(1, Ordering::Relaxed);
        });
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        // Deposed, or shutting down: the term is over before we are stopped.
        tracing::info!(
            token = self.term.fencing_token(),
            term_active = self.term.is_active(),
            "background work stopping"
        );
        Running::Stop
    }
}

/// One replica of the service: its dsync handle, the election and the leader-only worker.
#[derive(Clone)]
pub struct Service {
    pub dsync: Dsync,
    pub election: Election,
    pub worker: LeaderOnly<Ticker>,
    pub ticks: Arc<AtomicU64>,
    /// `/healthz` fails when this leader has not renewed within lease duration + this.
    pub tolerance: Duration,
    /// What `/metrics` serves: dsync's metrics (and the application's own, if it adds any).
    #[cfg(feature = "metrics")]
    pub registry: Arc<prometheus_client::registry::Registry>,
}

impl Service {
    /// Starts the election and the leader-only worker. Call once per process (in `main`),
    /// never in the `HttpServer::new` factory, which runs once per worker thread.
    pub fn start(dsync: Dsync, tolerance: Duration) -> Result<Self, dsync::Error> {
        // Metrics first: they are recorded for the elections and locks created after this.
        #[cfg(feature = "metrics")]
        let (dsync, registry) = {
            let mut registry = prometheus_client::registry::Registry::default();
            let dsync = dsync.with_metrics(dsync::metrics::Metrics::register(&mut registry))?;
            (dsync, Arc::new(registry))
        };
        let election = dsync.election(ELECTION)?;
        let ticks = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        let worker = LeaderOnly::start(&election, move |term| Ticker {
            term,
            ticks: t.clone(),
        })?;
        Ok(Service {
            dsync,
            election,
            worker,
            ticks,
            tolerance,
            #[cfg(feature = "metrics")]
            registry,
        })
    }

    /// The HTTP server on `listener`. Stops (gracefully) on SIGINT/SIGTERM or through its
    /// handle; then call [`Service::shutdown`].
    pub fn serve(&self, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
        let service = self.clone();
        Ok(
            HttpServer::new(move || actix_web::App::new().configure(|c| service.routes(c)))
                .workers(2)
                .shutdown_timeout(5)
                .listen(listener)?
                .run(),
        )
    }

    /// The service's routes and their shared state, for an `App` (the server's workers, or a
    /// test's `actix_web::test::init_service`).
    pub fn routes(&self, config: &mut web::ServiceConfig) {
        config
            .app_data(web::Data::new(self.clone()))
            .route("/leader", web::get().to(leader))
            .route("/leader/handoff", web::post().to(handoff))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz));
        // Without the feature there is no such route: 404.
        #[cfg(feature = "metrics")]
        config.route("/metrics", web::get().to(metrics));
    }

    /// Cancels the term, waits for the leader-only worker to stop, releases the lease.
    pub async fn shutdown(&self) -> Result<(), dsync::Error> {
        self.dsync.shutdown().await
    }
}

/// The body of `GET /leader`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct LeaderInfo {
    /// The leader as this replica last observed it.
    pub leader: Option<String>,
    /// This replica.
    pub identity: String,
    /// Whether this replica leads now.
    pub is_leader: bool,
    /// This replica's term, while it leads.
    pub term: Option<String>,
    pub fencing_token: Option<i32>,
    /// Whether the leader-only worker runs here now.
    pub worker_running: bool,
    /// How many times the leader-only worker ticked in this process.
    pub ticks: u64,
}

async fn leader(service: web::Data<Service>) -> HttpResponse {
    let status = service.election.status();
    let term = status.term.clone().filter(Term::is_active);
    HttpResponse::Ok().json(LeaderInfo {
        leader: status.holder.clone(),
        identity: status.identity.clone(),
        is_leader: status.is_leader(),
        term: term.as_ref().map(|t| t.id().to_string()),
        fencing_token: term.as_ref().map(Term::fencing_token),
        worker_running: service.worker.status().running,
        ticks: service.ticks.load(Ordering::Relaxed),
    })
}

/// The query of `POST /leader/handoff`.
#[derive(Debug, serde::Deserialize)]
pub struct HandoffQuery {
    /// The identity (pod name) to hand leadership to.
    pub to: String,
}

/// `POST /leader/handoff?to=<pod>`: hand leadership to `<pod>` (for a rolling update's
/// preStop hook: move leadership to a pod that is already up to date). Answered once the
/// release naming `<pod>` is written (200); 409 if this replica does not lead (the body
/// names the leader it sees), 400 for a bad identity, 500 if the handoff failed.
async fn handoff(service: web::Data<Service>, query: web::Query<HandoffQuery>) -> HttpResponse {
    match service.election.handoff_to(&query.to).await {
        Ok(()) => HttpResponse::Ok().body(format!("handed off to {}", query.to)),
        Err(err @ dsync::Error::NotLeader { .. }) => HttpResponse::Conflict().body(format!(
            "{err}; the leader is {:?}",
            service.election.holder()
        )),
        Err(err @ dsync::Error::InvalidConfig { .. }) => {
            HttpResponse::BadRequest().body(err.to_string())
        }
        Err(err) => HttpResponse::InternalServerError().body(err.to_string()),
    }
}

/// 500 when this replica holds a term but has not renewed it for longer than the lease
/// duration plus the tolerance (its election is stuck), like client-go's healthz adaptor.
async fn healthz(service: web::Data<Service>) -> HttpResponse {
    match service.election.check_health(service.tolerance) {
        Ok(()) => HttpResponse::Ok().body("ok"),
        Err(err) => HttpResponse::InternalServerError().body(err.to_string()),
    }
}

/// Ready while the election runs, leader or follower: any replica can serve traffic.
async fn readyz(service: web::Data<Service>) -> HttpResponse {
    if service.election.status().stopped {
        HttpResponse::ServiceUnavailable().body("election stopped")
    } else {
        HttpResponse::Ok().body("ready")
    }
}

/// The content type of `/metrics`: prometheus-client writes the OpenMetrics text format
/// (which Prometheus scrapes natively).
#[cfg(feature = "metrics")]
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: the registry in the OpenMetrics text format.
#[cfg(feature = "metrics")]
async fn metrics(service: web::Data<Service>) -> HttpResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &service.registry) {
        Ok(()) => HttpResponse::Ok()
            .content_type(METRICS_CONTENT_TYPE)
            .body(body),
        Err(err) => HttpResponse::InternalServerError().body(err.to_string()),
    }
}
