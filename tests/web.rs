//! The `web` example service end to end.
//!
//! * On the real kube-apiserver: three processes of the example, on a user bound only to the
//!   Role in `deploy/rbac.yaml`; the leader's process is killed (SIGKILL), then the next leader
//!   is stopped gracefully (SIGTERM). Observed over HTTP: exactly one leader at a time, the
//!   leader-only worker runs only there, health and readiness.
//! * In one process on one `MemoryStore`: three instances of the same service code; the
//!   leader is cut off from the store (a crash, as far as the others can tell).
#![cfg(feature = "testing")]

mod support;

#[path = "../examples/web/app.rs"]
mod app;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use app::LeaderInfo;
use dsync::testing::FaultyStore;
use dsync::{Config, Dsync, LeaseKey, MemoryStore};
use k8s_openapi::api::rbac::v1::Role;
use support::apiserver::{Harness, client, namespace};
use support::backend::kube_timing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

/// `GET path` over plain HTTP/1.1: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = get_with_head(addr, path).await;
    (code, body)
}

/// `POST path` (empty body) over plain HTTP/1.1: (status, body).
async fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = request(addr, "POST", path).await;
    (code, body)
}

/// `GET path` over plain HTTP/1.1: (status, status line and headers, body).
async fn get_with_head(addr: SocketAddr, path: &str) -> (u16, String, String) {
    request(addr, "GET", path).await
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response from {addr}{path}: {text:?}"));
    (code, head.to_owned(), body.to_owned())
}

/// The election's lease in namespace `ns` (the default scope).
fn election_lease(ns: &str) -> LeaseKey {
    LeaseKey::new(ns, format!("unscoped.election.{}", app::ELECTION))
}

/// `GET /metrics` (feature `metrics`): Prometheus text; the leader at `addrs[leader]` reports
/// 1, the others 0, under dsync's name and under client-go's `leader_election_master_status`.
#[cfg(feature = "metrics")]
async fn check_metrics(addrs: &[SocketAddr], leader: usize, lease: &LeaseKey) {
    for (i, addr) in addrs.iter().enumerate() {
        let (code, head, body) = get_with_head(*addr, "/metrics").await;
        assert_eq!(code, 200, "{body}");
        let content_type = format!("content-type: {}", app::METRICS_CONTENT_TYPE);
        assert!(head.to_ascii_lowercase().contains(&content_type), "{head}");
        let v = u8::from(i == leader);
        for sample in [
            format!(
                "leader_election_master_status{{name=\"{}\"}} {v}\n",
                lease.name
            ),
            format!("dsync_is_leader{{lease=\"{lease}\"}} {v}\n"),
            "# TYPE leader_election_master_status gauge\n".to_owned(),
        ] {
            assert!(body.contains(&sample), "{addr}: no {sample:?} in\n{body}");
        }
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}

/// Without the `metrics` feature the service has no `/metrics`.
#[cfg(not(feature = "metrics"))]
async fn check_metrics(addrs: &[SocketAddr], _leader: usize, _lease: &LeaseKey) {
    for addr in addrs {
        assert_eq!(get(*addr, "/metrics").await.0, 404);
    }
}

async fn leader_info(addr: SocketAddr) -> LeaderInfo {
    let (code, body) = get(addr, "/leader").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `/leader` on `addrs` (the service's only signal to another process) until exactly one
/// leads with its worker running, and returns its index. Every sample must show at most one
/// leader and at most one running worker.
async fn one_leader(addrs: &[SocketAddr]) -> usize {
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut infos = Vec::new();
        for a in addrs {
            infos.push(leader_info(*a).await);
        }
        let leaders: Vec<usize> = (0..infos.len()).filter(|i| infos[*i].is_leader).collect();
        let workers: Vec<usize> = (0..infos.len())
            .filter(|i| infos[*i].worker_running)
            .collect();
        assert!(leaders.len() <= 1, "two leaders: {infos:#?}");
        assert!(workers.len() <= 1, "two workers running: {infos:#?}");
        if let ([l], [w]) = (&leaders[..], &workers[..])
            && l == w
        {
            let me = &infos[*l];
            assert!(me.fencing_token.is_some() && me.term.is_some(), "{me:?}");
            // Followers agree on who leads once they have seen it.
            if infos
                .iter()
                .all(|i| i.leader.as_deref() == Some(me.identity.as_str()))
            {
                return *l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no single leader within {LIMIT:?}: {infos:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The example binary, built by `cargo test` (which builds examples) next to this test.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("web"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build --example web` (`cargo test` does)",
        bin.display()
    );
    bin
}

struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_replica(bin: &PathBuf, kubeconfig: &std::path::Path, ns: &str, name: &str) -> Replica {
    spawn_replica_with(bin, ("KUBE_CONFIG_PATH", kubeconfig), ns, name)
}

/// A replica of the example that finds its kubeconfig through `variable`.
fn spawn_replica_with(
    bin: &PathBuf,
    (variable, kubeconfig): (&str, &std::path::Path),
    ns: &str,
    name: &str,
) -> Replica {
    let mut child = Command::new(bin)
        .env_remove("KUBE_CONFIG_PATH")
        .env_remove("KUBECONFIG")
        .env(variable, kubeconfig)
        .env("KUBE_NAMESPACE", ns)
        .env("KUBE_POD_NAME", name)
        .env("DSYNC_STORE", "kube")
        .env("DSYNC_TIMING", "2,1.5,0.5")
        .env("LISTEN", "127.0.0.1:0")
        .env("HEALTH_TOLERANCE", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("{name} exited before listening"))
        .unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Replica { child, addr }
}

/// The Role of deploy/rbac.yaml, as shipped.
fn deploy_role() -> Role {
    support::rbac::shipped_role("rbac.yaml")
}

#[actix::test]
async fn three_processes_on_the_deploy_role_one_leader_and_its_worker_through_kill_and_sigterm() {
    let ready = Harness::get().ready();
    let ns = namespace().await;
    // Bind the shipped Role, unchanged, to a user that has no rights otherwise.
    let admin = client(&ready.admin).await;
    support::rbac::bind_to_norights(admin, &ns, &deploy_role(), "test-leases").await;

    let bin = example_binary();
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| spawn_replica(&bin, &ready.norights, &ns, &format!("web-{i}")))
        .collect();
    let addrs = |r: &[Replica]| r.iter().map(|r| r.addr).collect::<Vec<_>>();
    let first = one_leader(&addrs(&replicas)).await;
    assert_eq!(
        leader_info(replicas[first].addr).await.identity,
        format!("web-{first}"),
        "the identity comes from KUBE_POD_NAME (the downward API in deploy/)"
    );
    for r in &replicas {
        assert_eq!(get(r.addr, "/healthz").await.0, 200);
        assert_eq!(get(r.addr, "/readyz").await.0, 200);
    }
    let t = kube_timing();

    // SIGKILL the leader: another takes over after the lease duration, its worker starts.
    let killed = Instant::now();
    let mut leader = replicas.remove(first);
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    let second = one_leader(&addrs(&replicas)).await;
    let took = killed.elapsed();
    assert!(
        took <= t.lease_duration() * 3,
        "failover after a kill took {took:?}"
    );

    // SIGTERM the new leader: it stops HTTP, stops its worker, releases; the last one takes
    // over without waiting for expiry; the process exits cleanly.
    let mut leader = replicas.remove(second);
    let stopped = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &leader.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = leader.child.wait().unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");
    one_leader(&addrs(&replicas)).await;
    let took = stopped.elapsed();
    assert!(
        took < t.lease_duration(),
        "handoff after SIGTERM took {took:?}: the lease was not released"
    );
}

/// Without `KUBE_CONFIG_PATH`, `Dsync::from_env` takes the default kubeconfig (`$KUBECONFIG`),
/// as kube's `Config::infer` does before it tries the in-cluster service account.
#[actix::test]
async fn without_kube_config_path_the_default_kubeconfig_is_used() {
    let ready = Harness::get().ready();
    let ns = namespace().await;
    let bin = example_binary();
    let replica = spawn_replica_with(&bin, ("KUBECONFIG", &ready.admin), &ns, "web-env");
    let leader = one_leader(&[replica.addr]).await;
    assert_eq!(leader, 0);
    assert_eq!(leader_info(replica.addr).await.identity, "web-env");
}

#[actix::test]
async fn three_instances_on_one_memory_store_the_worker_runs_only_on_the_leader() {
    let store = MemoryStore::new();
    let mut instances = Vec::new();
    for i in 0..3 {
        let faults = FaultyStore::new(store.clone());
        let dsync = Dsync::with_config(
            faults.clone(),
            Config::default()
                .with_identity(format!("web-{i}"))
                .with_timing(kube_timing()),
        )
        .unwrap();
        let service = app::Service::start(dsync, Duration::from_secs(1)).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = service.serve(listener).unwrap();
        let handle = server.handle();
        actix::spawn(server);
        instances.push((service, faults, handle, addr));
    }
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.3).collect();
    let first = one_leader(&addrs).await;
    let lease = election_lease("default");
    assert_eq!(instances[first].0.election.lease(), lease);
    check_metrics(&addrs, first, &lease).await;

    // A rolling update's hook moves leadership to a chosen pod.
    let target = (first + 1) % 3;
    let follower = (first + 2) % 3;
    let (code, body) = post(addrs[follower], &format!("/leader/handoff?to=web-{target}")).await;
    assert_eq!(code, 409, "only the leader hands off: {body}");
    let (code, body) = post(addrs[first], "/leader/handoff?to=").await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(addrs[first], &format!("/leader/handoff?to=web-{target}")).await;
    assert_eq!(code, 200, "{body}");
    let mut status = instances[target].0.election.watch_status();
    tokio::time::timeout(LIMIT, status.wait_for(|s| s.is_leader()))
        .await
        .expect("the target leads")
        .unwrap();
    drop(status);
    assert_eq!(one_leader(&addrs).await, target);
    let first = target;

    // Kill the leader's instance: cut off from the store, HTTP gone.
    let (service, faults, handle, _) = instances.remove(first);
    faults.partition();
    handle.stop(false).await;
    let mut status = service.worker.watch_status();
    tokio::time::timeout(LIMIT, status.wait_for(|s| !s.running))
        .await
        .expect("the cut-off leader stops its worker at its renew deadline")
        .unwrap();
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.3).collect();
    let next = one_leader(&addrs).await;
    check_metrics(&addrs, next, &lease).await;
    assert!(
        instances[next]
            .0
            .ticks
            .load(std::sync::atomic::Ordering::Relaxed)
            < 1000
    );

    for (service, _, handle, _) in instances {
        handle.stop(true).await;
        service.shutdown().await.unwrap();
        assert!(!service.worker.status().running);
    }
    faults.heal();
    service.shutdown().await.unwrap();
}
