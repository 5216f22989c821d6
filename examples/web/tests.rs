//! The `web` example's service in one process: three instances on one `MemoryStore`, each
//! cut off from it at will (`FaultyStore`), called through actix-web's test service (no
//! sockets). `tests/web.rs` runs the example's binary as processes on the real API server.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::App;
use actix_web::dev::ServiceResponse;
use actix_web::test::{self, TestRequest};
use dsync::testing::{FaultyStore, within};
use dsync::{Config, Dsync, MemoryStore, Timing};

use crate::app::{ELECTION, LeaderInfo, Service};

const LIMIT: Duration = Duration::from_secs(60);

/// One instance: the service, its store's fault switch, and its HTTP routes as a test service.
/// An instance's routes as actix-web's test service (`test::init_service`) gives them.
trait Routes:
    actix_web::dev::Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>
{
}

impl<T> Routes for T where
    T: actix_web::dev::Service<
            actix_http::Request,
            Response = ServiceResponse,
            Error = actix_web::Error,
        >
{
}

struct Instance<S> {
    service: Service,
    faults: FaultyStore,
    http: S,
}

/// `method path` on an instance's routes: (status, body).
async fn call<S: Routes>(http: &S, request: TestRequest) -> (u16, String) {
    let response = http
        .call(request.to_request())
        .await
        .expect("the route answers");
    let code = response.status().as_u16();
    let body = test::read_body(response).await;
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Every instance's `/leader` until exactly one leads with its worker running and all agree on
/// it; every sample has at most one leader and one running worker. Returns its index.
async fn one_leader<S: Routes>(instances: &[Instance<S>]) -> usize {
    // In one process the elections' own status is the signal: wait until one of these
    // instances leads and every one names it, then check that the HTTP view agrees.
    let ids: Vec<String> = instances
        .iter()
        .map(|i| i.service.dsync.identity().to_owned())
        .collect();
    let mut first = instances[0].service.election.watch_status();
    let holder = within(
        LIMIT,
        "one of the instances is named holder",
        first.wait_for(|s| s.holder.as_ref().is_some_and(|h| ids.contains(h))),
    )
    .await
    .expect("the election runs")
    .holder
    .clone()
    .unwrap();
    let leader = ids.iter().position(|id| *id == holder).unwrap();
    let mut leads = instances[leader].service.election.watch_status();
    within(
        LIMIT,
        "the named holder leads",
        leads.wait_for(|s| s.is_leader()),
    )
    .await
    .expect("the election runs");
    for i in instances {
        let mut status = i.service.election.watch_status();
        within(
            LIMIT,
            "every instance names the leader",
            status.wait_for(|s| s.holder.as_deref() == Some(holder.as_str())),
        )
        .await
        .expect("the election runs");
    }
    let mut infos = Vec::new();
    for i in instances {
        let (code, body) = call(&i.http, TestRequest::get().uri("/leader")).await;
        assert_eq!(code, 200, "{body}");
        infos.push(serde_json::from_str::<LeaderInfo>(&body).unwrap());
    }
    let leaders: Vec<usize> = (0..infos.len()).filter(|i| infos[*i].is_leader).collect();
    assert_eq!(leaders, [leader], "one leader: {infos:#?}");
    let mut worker = instances[leader].service.worker.watch_status();
    within(
        LIMIT,
        "the leader's worker runs",
        worker.wait_for(|s| s.running),
    )
    .await
    .unwrap();
    for (i, instance) in instances.iter().enumerate() {
        assert_eq!(
            instance.service.worker.status().running,
            i == leader,
            "the worker runs only on the leader"
        );
    }
    leader
}

#[actix::test]
async fn three_instances_on_one_memory_store_the_worker_runs_only_on_the_leader() {
    let store = MemoryStore::new();
    let timing = Timing::new(
        Duration::from_secs(2),
        Duration::from_millis(1500),
        Duration::from_millis(500),
    )
    .unwrap();
    let mut instances = Vec::new();
    for i in 0..3 {
        let faults = FaultyStore::new(store.clone());
        let config = Config::default()
            .with_identity(format!("web-{i}"))
            .with_timing(timing);
        let dsync = Dsync::with_config(faults.clone(), config).unwrap();
        let service = Service::start(dsync, Duration::from_secs(1)).unwrap();
        let routes = service.clone();
        let http = test::init_service(App::new().configure(|c| routes.routes(c))).await;
        instances.push(Instance {
            service,
            faults,
            http,
        });
    }
    let first = one_leader(&instances).await;
    assert_eq!(
        instances[first].service.election.lease().name,
        format!("unscoped.election.{ELECTION}")
    );
    check_metrics(&instances, first).await;

    // A rolling update's hook moves leadership to a chosen pod.
    let target = (first + 1) % 3;
    let follower = (first + 2) % 3;
    let handoff = |to: &str| TestRequest::post().uri(&format!("/leader/handoff?to={to}"));
    let (code, body) = call(&instances[follower].http, handoff(&format!("web-{target}"))).await;
    assert_eq!(code, 409, "only the leader hands off: {body}");
    let (code, body) = call(&instances[first].http, handoff("")).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = call(&instances[first].http, handoff(&format!("web-{target}"))).await;
    assert_eq!(code, 200, "{body}");
    let mut status = instances[target].service.election.watch_status();
    within(
        LIMIT,
        "the target leads",
        status.wait_for(|s| s.is_leader()),
    )
    .await
    .unwrap();
    drop(status);
    assert_eq!(one_leader(&instances).await, target);

    // The leader's instance is cut off from the store: a crash, as the others see it.
    let gone = instances.remove(target);
    gone.faults.partition();
    let mut worker = gone.service.worker.watch_status();
    within(
        LIMIT,
        "the cut-off leader stops its worker at its renew deadline",
        worker.wait_for(|s| !s.running),
    )
    .await
    .unwrap();
    let next = one_leader(&instances).await;
    check_metrics(&instances, next).await;
    assert!(instances[next].service.ticks.load(Ordering::Relaxed) < 1000);

    for instance in instances {
        instance.service.shutdown().await.unwrap();
        assert!(!instance.service.worker.status().running);
    }
    gone.faults.heal();
    gone.service.shutdown().await.unwrap();
}

/// `GET /metrics` (feature `metrics`): the leader reports 1, the others 0, under dsync's name
/// and client-go's `leader_election_master_status`.
#[cfg(feature = "metrics")]
async fn check_metrics<S: Routes>(instances: &[Instance<S>], leader: usize) {
    for (i, instance) in instances.iter().enumerate() {
        let lease = instance.service.election.lease();
        let response = instance
            .http
            .call(TestRequest::get().uri("/metrics").to_request())
            .await
            .unwrap();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(content_type, crate::app::METRICS_CONTENT_TYPE);
        let body = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
        let v = u8::from(i == leader);
        for sample in [
            format!(
                "leader_election_master_status{{name=\"{}\"}} {v}\n",
                lease.name
            ),
            format!("dsync_is_leader{{lease=\"{lease}\"}} {v}\n"),
            "# TYPE leader_election_master_status gauge\n".to_owned(),
        ] {
            assert!(
                body.contains(&sample),
                "instance {i}: no {sample:?} in\n{body}"
            );
        }
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}

/// Without the `metrics` feature the service has no `/metrics`.
#[cfg(not(feature = "metrics"))]
async fn check_metrics<S: Routes>(instances: &[Instance<S>], _leader: usize) {
    for instance in instances {
        assert_eq!(
            call(&instance.http, TestRequest::get().uri("/metrics"))
                .await
                .0,
            404
        );
    }
}
