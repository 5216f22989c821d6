//! The `web` example service end to end.
//!
//! * On the real kube-apiserver: three processes of the example, on a user bound only to the
//!   Role in `deploy/rbac.yaml`; the leader's process is killed (SIGKILL), then the next leader
//!   is stopped gracefully (SIGTERM). Observed over HTTP: exactly one leader at a time, the
//!   leader-only worker runs only there, health and readiness.
//!
//! The same service in one process (three instances on one `MemoryStore`) is tested by the
//! example itself: `examples/web/tests.rs`.
#![cfg(feature = "testing")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::Role;
use support::apiserver::{Harness, client, namespace};
use support::backend::kube_timing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

/// The body of the example's `GET /leader`, as a client reads it.
#[derive(Debug, serde::Deserialize)]
struct LeaderInfo {
    leader: Option<String>,
    identity: String,
    is_leader: bool,
    term: Option<String>,
    fencing_token: Option<i32>,
    worker_running: bool,
}

/// `GET path` over plain HTTP/1.1: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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
    (code, body.to_owned())
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

/// The example's binary, next to this test. `cargo test` builds the example only as its own
/// test (`[[example]] test = true`: `examples/web/tests.rs`), so the binary is built here, by
/// the cargo that runs this test, with this test's features (the same build, so only the
/// example is linked). Cargo holds no lock while tests run.
fn example_binary() -> PathBuf {
    let features: Vec<&str> = [
        ("kube", cfg!(feature = "kube")),
        ("metrics", cfg!(feature = "metrics")),
        ("testing", cfg!(feature = "testing")),
        ("cli", cfg!(feature = "cli")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let output = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--example",
            "web",
            "--no-default-features",
            "--features",
        ])
        .arg(features.join(","))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build --example web failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("web"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} not found after cargo build",
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
