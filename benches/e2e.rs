//! End-to-end benchmark: dsync against client-go's `leaderelection` (`LeaseLock`, ReleaseOnCancel)
//! on one real kube-apiserver (the test harness, with an audit log), at the same timing.
//!
//! ```text
//! cargo bench --bench e2e                     # full run, about 5 minutes
//! DSYNC_E2E_QUICK=1 cargo bench --bench e2e   # smoke run: few leases, short windows, 4/3/0.5 s
//! ```
//!
//! Environment: `DSYNC_E2E_TIMING` (`lease/renew/retry` seconds, default `15/10/2`),
//! `DSYNC_E2E_LOAD_LEASES` (default 1000), `DSYNC_E2E_LATENCY_LEASES` (default 100),
//! `DSYNC_E2E_WINDOW` (seconds, default 30), `DSYNC_E2E_CRASHES` (latency rounds, each ending in a
//! kill; default 3), `DSYNC_E2E_VERBOSE` (print every sample). The report is printed and written to
//! `target/e2e/report.md`.
//!
//! Every replica is a process of its own: the Go peer (`benches/peers/clientgo`) or this binary in
//! peer mode (`DSYNC_E2E_PEER=1`). Both speak the same line protocol (see the Go peer's docs), so
//! the driver treats them alike. Per implementation it runs two phases, each in a fresh namespace:
//!
//! 1. **Load**: replica A leads N leases, replica B follows all of them. Over a steady window it
//!    reads each process's CPU time and RSS from `/proc`, the apiserver process's CPU time, and
//!    counts the API requests of each replica from the audit log (by User-Agent and verb).
//! 2. **Latency**: A leads M leases, B and C follow. A stops half of them one by one (graceful
//!    handoff: from A receiving the stop to B or C reporting `elected`), then A is killed with
//!    SIGKILL (crash failover: from the kill to B or C reporting `elected`, per remaining lease).
//!    Repeated for several rounds, each killing at another point of the renewal period. As the
//!    kill's phase moves that figure by up to a retry period, the failover is also measured
//!    from the holder's last renewal to the next holder's acquisition, both as the API server's
//!    audit log records them: the part that only the implementation decides.
//!
//! Event times are Unix-nanosecond wall-clock stamps taken by each process when the event
//! happens; all processes run on one machine and share that clock.
//!
//! Linux only (reads `/proc`).

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;
#[path = "../tests/support/gopeer.rs"]
mod gopeer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

/// Lease duration, renew deadline and retry period, in seconds.
#[derive(Clone, Copy)]
struct Timing(f64, f64, f64);

impl Timing {
    fn parse(s: &str) -> Timing {
        let parts: Vec<f64> = s
            .split('/')
            .map(|p| p.parse().unwrap_or_else(|_| panic!("bad timing {s:?}")))
            .collect();
        assert!(
            parts.len() == 3,
            "timing must be lease/renew/retry seconds, got {s:?}"
        );
        Timing(parts[0], parts[1], parts[2])
    }

    fn args(self) -> Vec<String> {
        vec![
            "--lease-duration".into(),
            format!("{}ms", (self.0 * 1000.0) as u64),
            "--renew-deadline".into(),
            format!("{}ms", (self.1 * 1000.0) as u64),
            "--retry-period".into(),
            format!("{}ms", (self.2 * 1000.0) as u64),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Peer mode: a dsync replica speaking the Go peer's line protocol.
// ---------------------------------------------------------------------------------------------

mod peer {
    use std::collections::HashMap;
    use std::io::Write;
    use std::time::Duration;

    use actix::prelude::*;
    use dsync::{Config, Deposed, Dsync, Elected, LeaderChanged, Timing};

    fn line(s: String) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }

    fn nanos(t: std::time::SystemTime) -> i128 {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128
    }

    fn now() -> i128 {
        nanos(std::time::SystemTime::now())
    }

    struct Printer;
    impl Actor for Printer {
        type Context = Context<Self>;
    }
    impl Handler<Elected> for Printer {
        type Result = ();
        fn handle(&mut self, msg: Elected, _: &mut Context<Self>) {
            // The term's own start instant: when the acquiring write returned.
            let t = nanos(msg.term.started());
            line(format!("elected {} {t}", msg.term.lease().name));
        }
    }
    impl Handler<Deposed> for Printer {
        type Result = ();
        fn handle(&mut self, msg: Deposed, _: &mut Context<Self>) {
            line(format!("lost {} {}", msg.lease.name, now()));
        }
    }
    impl Handler<LeaderChanged> for Printer {
        type Result = ();
        fn handle(&mut self, msg: LeaderChanged, _: &mut Context<Self>) {
            if let Some(leader) = msg.leader {
                line(format!("leader {} {leader} {}", msg.lease.name, now()));
            }
        }
    }

    fn flag<'a>(args: &'a HashMap<String, String>, name: &str) -> &'a str {
        args.get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("peer: --{name} is required"))
    }

    fn millis(s: &str) -> Duration {
        Duration::from_millis(s.trim_end_matches("ms").parse().expect("duration in ms"))
    }

    pub fn main(raw: Vec<String>) {
        let args: HashMap<String, String> = raw
            .chunks(2)
            .filter_map(|kv| {
                Some((
                    kv[0].trim_start_matches("--").to_owned(),
                    kv.get(1)?.clone(),
                ))
            })
            .collect();
        actix::System::new().block_on(async move {
            let kubeconfig = flag(&args, "kubeconfig");
            let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
            let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("kubeconfig");
            let agent = flag(&args, "user-agent");
            cfg.headers.push((
                http::header::USER_AGENT,
                http::HeaderValue::from_str(agent).expect("user agent"),
            ));
            let timing = Timing::new(
                millis(flag(&args, "lease-duration")),
                millis(flag(&args, "renew-deadline")),
                millis(flag(&args, "retry-period")),
            )
            .expect("timing");
            let config = Config::default()
                .with_namespace(flag(&args, "namespace"))
                .with_identity(flag(&args, "identity"))
                .with_scope("bench")
                .with_timing(timing);
            // As `Dsync::from_env` does: the client is made on dsync's own lease thread.
            let dsync = Dsync::connect_with(config, cfg).await.expect("dsync");
            let printer = Printer.start();
            let prefix = flag(&args, "lease-prefix");
            let count: usize = flag(&args, "count").parse().expect("count");
            let mut elections = HashMap::new();
            for i in 0..count {
                let election = dsync.election(&format!("{prefix}{i}")).expect("election");
                election.subscribe(&printer).expect("subscribe");
                elections.insert(election.lease().name, election);
            }
            line("ready".into());

            // Commands arrive on a thread (stdin is blocking) and are handled here.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            std::thread::spawn(move || {
                for l in std::io::stdin().lines() {
                    let Ok(l) = l else { break };
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
            while let Some(command) = rx.recv().await {
                let fields: Vec<&str> = command.split_whitespace().collect();
                match fields.as_slice() {
                    ["stop", lease] => match elections.get(*lease) {
                        Some(election) => {
                            line(format!("stopping {lease} {}", now()));
                            let election = election.clone();
                            let lease = lease.to_string();
                            actix::spawn(async move {
                                let _ = election.stop().await;
                                line(format!("released {lease} {}", now()));
                            });
                        }
                        None => line(format!("error unknown lease {lease:?}")),
                    },
                    ["stopall"] => {
                        let _ = dsync.shutdown().await;
                    }
                    [] => {}
                    _ => line(format!("error unknown command {command:?}")),
                }
            }
            let _ = dsync.shutdown().await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Driver.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Impl {
    Dsync,
    ClientGo,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Dsync => "dsync",
            Impl::ClientGo => "client-go",
        }
    }
}

#[derive(Debug)]
enum Event {
    Ready,
    Elected(String, i128),
    Lost(String),
    Leader(String),
    Stopping(String, i128),
    Released,
    Exited,
}

fn parse(line: &str) -> Option<Event> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let t = |s: &str| s.parse::<i128>().ok();
    Some(match f.as_slice() {
        ["ready"] => Event::Ready,
        ["elected", l, ts] => Event::Elected(l.to_string(), t(ts)?),
        ["lost", l, _] => Event::Lost(l.to_string()),
        ["leader", l, _, _] => Event::Leader(l.to_string()),
        ["stopping", l, ts] => Event::Stopping(l.to_string(), t(ts)?),
        ["released", _, _] => Event::Released,
        _ => return None,
    })
}

struct Peer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Peer {
    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("peer stdin open");
        writeln!(stdin, "{command}").expect("peer accepts commands");
        stdin.flush().unwrap();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// What the driver knows from the peers' events.
#[derive(Default)]
struct State {
    ready: HashSet<usize>,
    exited: HashSet<usize>,
    /// Leases each peer currently leads.
    leads: HashMap<usize, HashSet<String>>,
    /// Leases for which each peer has observed some leader.
    sees_leader: HashMap<usize, HashSet<String>>,
    /// First `elected` after `since` per lease, by any peer: (peer, time).
    elected_at: HashMap<String, (usize, i128)>,
    stopping_at: HashMap<String, i128>,
}

struct Run {
    rx: mpsc::Receiver<(usize, Event)>,
    tx: mpsc::Sender<(usize, Event)>,
    peers: Vec<Peer>,
    state: State,
    peer_dir: PathBuf,
    kubeconfig: PathBuf,
    timing: Timing,
}

impl Run {
    fn spawn(&mut self, imp: Impl, namespace: &str, name: &str, prefix: &str, count: usize) {
        let index = self.peers.len();
        let identity = format!("{}-{name}", imp.name());
        let mut args = vec![
            "--kubeconfig".to_owned(),
            self.kubeconfig.display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--identity".into(),
            identity.clone(),
            "--user-agent".into(),
            identity.clone(),
            "--lease-prefix".into(),
            prefix.into(),
            "--count".into(),
            count.to_string(),
        ];
        args.extend(self.timing.args());
        let mut command = match imp {
            Impl::ClientGo => Command::new(self.peer_dir.join("clientgo-peer")),
            Impl::Dsync => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.env("DSYNC_E2E_PEER", "1");
                c
            }
        };
        let mut child = command
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {} peer: {e}", imp.name()));
        let stdout = child.stdout.take().unwrap();
        let tx = self.tx.clone();
        let peer_name = identity.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("error ") {
                    eprintln!("peer {peer_name}: error {rest}");
                }
                if let Some(event) = parse(&line) {
                    let _ = tx.send((index, event));
                }
            }
            let _ = tx.send((index, Event::Exited));
        });
        self.peers.push(Peer {
            name: identity,
            stdin: child.stdin.take(),
            child,
        });
    }

    fn apply(&mut self, peer: usize, event: Event) {
        let s = &mut self.state;
        match event {
            Event::Ready => {
                s.ready.insert(peer);
            }
            Event::Exited => {
                s.exited.insert(peer);
                s.leads.remove(&peer);
            }
            Event::Elected(lease, t) => {
                s.leads.entry(peer).or_default().insert(lease.clone());
                s.elected_at.entry(lease).or_insert((peer, t));
            }
            Event::Lost(lease) => {
                s.leads.entry(peer).or_default().remove(&lease);
            }
            Event::Leader(lease) => {
                s.sees_leader.entry(peer).or_default().insert(lease);
            }
            Event::Stopping(lease, t) => {
                s.stopping_at.insert(lease, t);
            }
            Event::Released => {}
        }
    }

    /// Processes events until `done` holds; panics with `what` after `limit`.
    fn until(&mut self, what: &str, limit: Duration, done: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(&self.state) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((peer, event)) => self.apply(peer, event),
                Err(_) => panic!("e2e: timed out after {limit:?} waiting for {what}"),
            }
        }
    }

    /// Processes whatever events arrive during `d`.
    fn pass(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok((peer, event)) = self.rx.recv_timeout(left) {
                self.apply(peer, event);
            }
        }
    }

    /// Graceful end of all peers (stdin closed: stop everything, release, exit).
    fn finish(&mut self) {
        for p in &mut self.peers {
            p.stdin = None;
        }
        let all: HashSet<usize> = (0..self.peers.len()).collect();
        self.until("peers to exit", Duration::from_secs(60), |s| {
            all.is_subset(&s.exited)
        });
        for p in &mut self.peers {
            let _ = p.child.wait();
        }
        self.peers.clear();
        self.state = State::default();
    }
}

fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ = 100
}

fn proc_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Requests per (user agent, verb, response code) in one namespace, from audit-log bytes
/// `from..to`.
fn audit_counts(
    log: &Path,
    from: u64,
    to: u64,
    namespace: &str,
) -> BTreeMap<(String, String, i64), u64> {
    let mut file = std::fs::File::open(log).expect("audit log");
    file.seek(SeekFrom::Start(from)).unwrap();
    let mut buf = String::new();
    file.take(to - from).read_to_string(&mut buf).unwrap();
    let mut counts = BTreeMap::new();
    for line in buf.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if ev["objectRef"]["namespace"].as_str() != Some(namespace) {
            continue;
        }
        let verb = ev["verb"].as_str().unwrap_or("?").to_owned();
        let stage = ev["stage"].as_str().unwrap_or("");
        // A watch is counted when it starts; everything else when it completes.
        let counted = if verb == "watch" {
            stage == "ResponseStarted"
        } else {
            stage == "ResponseComplete"
        };
        if counted {
            let agent = ev["userAgent"].as_str().unwrap_or("?").to_owned();
            let code = ev["responseStatus"]["code"].as_i64().unwrap_or(0);
            *counts.entry((agent, verb, code)).or_insert(0) += 1;
        }
    }
    counts
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

struct LoadResult {
    /// Leases the leader held when the window began and no longer held at its end.
    leases_lost: usize,
    leases: usize,
    window: f64,
    leader_cpu: f64,
    follower_cpu: f64,
    leader_rss: f64,
    follower_rss: f64,
    apiserver_cpu: f64,
    leader_rpm: f64,
    follower_rpm: f64,
    verbs: String,
}

struct LatencyResult {
    handoff: Vec<f64>,
    crash: Vec<f64>,
    /// Crash failover measured from the holder's last renewal (as the API server saw it)
    /// instead of from the kill: what the library controls, whatever the kill's phase.
    takeover: Vec<f64>,
}

fn new_namespace(ready: &apiserver::Ready) -> String {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(apiserver::namespace_on(ready))
}

fn load_phase(
    run: &mut Run,
    imp: Impl,
    ready: &apiserver::Ready,
    harness_pid: u32,
    audit: &Path,
    leases: usize,
    window: Duration,
) -> LoadResult {
    let ns = new_namespace(ready);
    eprintln!("e2e: {} load: {leases} leases in {ns}", imp.name());
    run.spawn(imp, &ns, "a", "load", leases);
    run.until("A to lead every lease", Duration::from_secs(300), |s| {
        s.leads.get(&0).map_or(0, HashSet::len) == leases
    });
    run.spawn(imp, &ns, "b", "load", leases);
    run.until(
        "B to see A lead every lease",
        Duration::from_secs(300),
        |s| s.sees_leader.get(&1).map_or(0, HashSet::len) == leases,
    );
    run.pass(Duration::from_secs(3));
    let (a, b) = (run.peers[0].pid(), run.peers[1].pid());
    let (cpu_a, cpu_b, cpu_s) = (proc_cpu(a), proc_cpu(b), proc_cpu(harness_pid));
    let offset = file_len(audit);
    let started = Instant::now();
    run.pass(window);
    let elapsed = started.elapsed().as_secs_f64();
    let offset_end = file_len(audit);
    let cpu = |pid: u32, before: Duration| (proc_cpu(pid) - before).as_secs_f64() / elapsed;
    let (leader_cpu, follower_cpu, apiserver_cpu) =
        (cpu(a, cpu_a), cpu(b, cpu_b), cpu(harness_pid, cpu_s));
    let (leader_rss, follower_rss) = (proc_rss_mib(a), proc_rss_mib(b));
    // A leader that loses leases in the steady window is a result, reported below.
    let still_led = run.state.leads.get(&0).map_or(0, HashSet::len);
    let leases_lost = leases.saturating_sub(still_led);
    if leases_lost > 0 {
        eprintln!(
            "e2e: {}: the leader lost {leases_lost} of {leases} leases during the steady window",
            imp.name()
        );
    }
    let counts = audit_counts(audit, offset, offset_end, &ns);
    let per = |agent: &str| -> f64 {
        counts
            .iter()
            .filter(|((a, _, _), _)| a == agent)
            .map(|(_, n)| *n as f64)
            .fold(0.0, |a, b| a + b)
            / leases as f64
            / (elapsed / 60.0)
    };
    let verbs = counts
        .iter()
        .map(|((agent, verb, code), n)| format!("{agent} {verb} → {code}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let result = LoadResult {
        leases,
        leases_lost,
        window: elapsed,
        leader_cpu,
        follower_cpu,
        leader_rss,
        follower_rss,
        apiserver_cpu,
        leader_rpm: per(&run.peers[0].name.clone()),
        follower_rpm: per(&run.peers[1].name.clone()),
        verbs,
    };
    run.finish();
    result
}

fn latency_phase(
    run: &mut Run,
    imp: Impl,
    ready: &apiserver::Ready,
    audit: &Path,
    leases: usize,
    rounds: usize,
    timing: Timing,
) -> LatencyResult {
    let mut result = LatencyResult {
        handoff: Vec::new(),
        crash: Vec::new(),
        takeover: Vec::new(),
    };
    for round in 0..rounds {
        latency_round(run, imp, ready, audit, leases, timing, round, &mut result);
    }
    result.handoff.sort_by(f64::total_cmp);
    result.crash.sort_by(f64::total_cmp);
    result.takeover.sort_by(f64::total_cmp);
    result
}

/// One round: A leads `leases`, B and C follow; A hands half over gracefully, then is killed.
#[allow(clippy::too_many_arguments)] // one round of one phase: each is a knob of it
fn latency_round(
    run: &mut Run,
    imp: Impl,
    ready: &apiserver::Ready,
    audit: &Path,
    leases: usize,
    timing: Timing,
    round: usize,
    result: &mut LatencyResult,
) {
    let ns = new_namespace(ready);
    eprintln!(
        "e2e: {} latency round {round}: {leases} leases in {ns}",
        imp.name()
    );
    let audit_from = file_len(audit);
    run.spawn(imp, &ns, "a", "lat", leases);
    run.until("A to lead every lease", Duration::from_secs(120), |s| {
        s.leads.get(&0).map_or(0, HashSet::len) == leases
    });
    run.spawn(imp, &ns, "b", "lat", leases);
    run.spawn(imp, &ns, "c", "lat", leases);
    run.until(
        "B and C to see A lead every lease",
        Duration::from_secs(120),
        |s| {
            [1, 2]
                .iter()
                .all(|p| s.sees_leader.get(p).map_or(0, HashSet::len) == leases)
        },
    );
    // Let B and C settle into their steady state (client-go: polling phase spread out).
    run.pass(Duration::from_secs_f64(timing.2 * 2.0));
    let mut names: Vec<String> = run.state.leads[&0].iter().cloned().collect();
    names.sort();
    let (graceful, crashed) = names.split_at(leases / 2);
    run.state.elected_at.clear();

    // Graceful handoff, one lease every 100 ms.
    for lease in graceful {
        run.peers[0].send(&format!("stop {lease}"));
        run.pass(Duration::from_millis(100));
    }
    run.until(
        "B or C to take every stopped lease",
        Duration::from_secs_f64(timing.0 * 3.0),
        |s| {
            graceful
                .iter()
                .all(|l| s.elected_at.get(l).is_some_and(|(p, _)| *p != 0))
        },
    );
    let handoff: Vec<f64> = graceful
        .iter()
        .map(|l| (run.state.elected_at[l].1 - run.state.stopping_at[l]) as f64 / 1e6)
        .collect();

    // Crash: SIGKILL A while it leads the other half. The leases of one process renew in
    // phase, so the kill comes at a pseudo-random point of the retry period: each round
    // samples another phase.
    let jitter = (unix_nanos() % 1_000_000_007) as f64 / 1_000_000_007.0;
    run.pass(Duration::from_secs_f64(timing.2 * jitter));
    let holder = run.peers[0].name.clone();
    let killed_at = unix_nanos();
    run.peers[0].child.kill().unwrap();
    run.until(
        "B or C to take every lease of the crashed A",
        Duration::from_secs_f64(timing.0 * 3.0),
        |s| {
            crashed
                .iter()
                .all(|l| s.elected_at.get(l).is_some_and(|(p, _)| *p != 0))
        },
    );
    let crash: Vec<f64> = crashed
        .iter()
        .map(|l| (run.state.elected_at[l].1 - killed_at) as f64 / 1e6)
        .collect();
    run.finish();
    // The audit log is written before each response (blocking mode): complete by now.
    let takeover = takeovers(audit, audit_from, &ns, &holder, crashed);
    if std::env::var_os("DSYNC_E2E_VERBOSE").is_some() {
        eprintln!("e2e: {} handoff ms {handoff:?}", imp.name());
        eprintln!("e2e: {} crash ms {crash:?}", imp.name());
    }
    result.handoff.extend(handoff);
    result.crash.extend(crash);
    result.takeover.extend(takeover);
}

/// For each of `leases` in `namespace`: from the API server's record of `holder`'s last
/// successful renewal (when it completed) to the next holder's successful acquisition (when it
/// was received), in ms, from the audit log written since `from`. A lease missing either is
/// left out.
fn takeovers(log: &Path, from: u64, namespace: &str, holder: &str, leases: &[String]) -> Vec<f64> {
    let mut file = std::fs::File::open(log).expect("audit log");
    file.seek(SeekFrom::Start(from)).unwrap();
    let mut buf = String::new();
    file.read_to_string(&mut buf).unwrap();
    let time = |v: &serde_json::Value| -> Option<i128> {
        let t: k8s_openapi::jiff::Timestamp = v.as_str()?.parse().ok()?;
        Some(t.as_nanosecond())
    };
    let mut last_renewal: HashMap<String, i128> = HashMap::new();
    let mut acquired: HashMap<String, i128> = HashMap::new();
    for line in buf.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let ok_update = ev["verb"].as_str() == Some("update")
            && ev["stage"].as_str() == Some("ResponseComplete")
            && ev["responseStatus"]["code"].as_i64() == Some(200)
            && ev["objectRef"]["namespace"].as_str() == Some(namespace);
        let Some(name) = ev["objectRef"]["name"].as_str().filter(|_| ok_update) else {
            continue;
        };
        if ev["userAgent"].as_str() == Some(holder) {
            if let Some(t) = time(&ev["stageTimestamp"]) {
                last_renewal.insert(name.to_owned(), t);
            }
        } else if let Some(t) = time(&ev["requestReceivedTimestamp"]) {
            acquired.entry(name.to_owned()).or_insert(t);
        }
    }
    leases
        .iter()
        .filter_map(|l| Some((acquired.get(l)? - last_renewal.get(l)?) as f64 / 1e6))
        .collect()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0 / 1024.0);
    format!("{cpus} cores ({model}), {mem_gib:.0} GiB")
}

fn main() {
    if std::env::var_os("DSYNC_E2E_PEER").is_some() {
        return peer::main(std::env::args().skip(1).collect());
    }
    let quick = env_or("DSYNC_E2E_QUICK", 0u8) == 1;
    let timing = Timing::parse(&env_or(
        "DSYNC_E2E_TIMING",
        if quick { "4/3/0.5" } else { "15/10/2" }.to_owned(),
    ));
    let load_leases = env_or("DSYNC_E2E_LOAD_LEASES", if quick { 20 } else { 1000usize });
    let latency_leases = env_or(
        "DSYNC_E2E_LATENCY_LEASES",
        if quick { 10 } else { 100usize },
    );
    let rounds = env_or("DSYNC_E2E_CRASHES", if quick { 1 } else { 3usize });
    let window = Duration::from_secs(env_or("DSYNC_E2E_WINDOW", if quick { 5 } else { 30u64 }));

    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e");
    std::fs::create_dir_all(&out_dir).unwrap();
    let policy = out_dir.join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  resources:\n  - group: coordination.k8s.io\n    resources: [leases]\n\
         - level: None\n",
    )
    .unwrap();
    let audit = out_dir.join(format!("audit-{}.log", std::process::id()));
    let peer_dir = gopeer::peer_dir();
    let harness = apiserver::Harness::launch(vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", audit.display()),
        "--audit-log-format=json".into(),
        "--audit-log-maxsize=0".into(),
    ]);
    let ready = harness.ready();
    let harness_pid = harness.pid().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut run = Run {
        rx,
        tx,
        peers: Vec::new(),
        state: State::default(),
        peer_dir,
        kubeconfig: ready.leaseuser.clone(),
        timing,
    };

    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push_str(&s);
        report.push('\n');
    };
    let mut loads = Vec::new();
    let mut latencies = Vec::new();
    for imp in [Impl::Dsync, Impl::ClientGo] {
        loads.push((
            imp,
            load_phase(
                &mut run,
                imp,
                &ready,
                harness_pid,
                &audit,
                load_leases,
                window,
            ),
        ));
        latencies.push((
            imp,
            latency_phase(
                &mut run,
                imp,
                &ready,
                &audit,
                latency_leases,
                rounds,
                timing,
            ),
        ));
    }

    line(format!(
        "## End-to-end: dsync vs client-go leaderelection (LeaseLock, ReleaseOnCancel)\n\n\
         Machine: {}. Timing {}/{}/{} s (lease/renew/retry). kube-apiserver v1.36.3 with embedded \
         etcd (tests/apiserver), audit log on; every replica a process of its own, on the \
         `dsync-leaseuser` account.\n",
        machine(),
        timing.0,
        timing.1,
        timing.2
    ));
    line("| | dsync | client-go |\n|---|---|---|".into());
    let row = |label: &str, f: &dyn Fn(&LoadResult) -> String| {
        format!("| {label} | {} | {} |", f(&loads[0].1), f(&loads[1].1))
    };
    let lat = |label: &str, f: &dyn Fn(&LatencyResult) -> String| {
        format!(
            "| {label} | {} | {} |",
            f(&latencies[0].1),
            f(&latencies[1].1)
        )
    };
    line(lat("graceful handoff p50 / p99 (ms)", &|r| {
        format!(
            "{:.0} / {:.0} (n={})",
            percentile(&r.handoff, 0.5),
            percentile(&r.handoff, 0.99),
            r.handoff.len()
        )
    }));
    line(lat("crash failover p50 / p99 (ms)", &|r| {
        format!(
            "{:.0} / {:.0} (n={})",
            percentile(&r.crash, 0.5),
            percentile(&r.crash, 0.99),
            r.crash.len()
        )
    }));
    line(lat(
        "crash failover after the holder's last renewal p50 / p99 (ms)",
        &|r| {
            format!(
                "{:.0} / {:.0} (n={})",
                percentile(&r.takeover, 0.5),
                percentile(&r.takeover, 0.99),
                r.takeover.len()
            )
        },
    ));
    line(row("leases the leader lost in the steady window", &|r| {
        format!("{} of {}", r.leases_lost, r.leases)
    }));
    line(row("leader API requests / min / election", &|r| {
        format!("{:.1}", r.leader_rpm)
    }));
    line(row("follower API requests / min / election", &|r| {
        format!("{:.2}", r.follower_rpm)
    }));
    line(row("leader CPU per 1000 elections (% of a core)", &|r| {
        format!("{:.1}", r.leader_cpu * 100.0 * 1000.0 / r.leases as f64)
    }));
    line(row("follower CPU per 1000 elections (% of a core)", &|r| {
        format!("{:.1}", r.follower_cpu * 100.0 * 1000.0 / r.leases as f64)
    }));
    line(row("leader RSS (MiB, whole process)", &|r| {
        format!("{:.0}", r.leader_rss)
    }));
    line(row("follower RSS (MiB, whole process)", &|r| {
        format!("{:.0}", r.follower_rss)
    }));
    line(row("apiserver+etcd CPU (% of a core)", &|r| {
        format!("{:.1}", r.apiserver_cpu * 100.0)
    }));
    line(format!(
        "\nLoad phase: {} elections, one leader and one follower process, {:.0} s window. \
         Latency phase: {} rounds of {} elections, one leader and two followers; half handed \
         over gracefully (100 ms apart), then the leader killed (SIGKILL) at a random point of \
         its renewal period. A process renews all its leases in phase, so the crash samples of \
         one round are correlated.\n",
        loads[0].1.leases, loads[0].1.window, rounds, latency_leases
    ));
    for (imp, l) in &loads {
        line(format!(
            "- {} requests in the window: {}",
            imp.name(),
            l.verbs
        ));
    }
    let lease_ms = timing.0 * 1000.0;
    let d_lat = &latencies[0].1;
    let d_load = &loads[0].1;
    line(format!(
        "\nTargets (dsync): handoff p50 <= 50 ms: {}; crash p99 <= lease + 100 ms ({:.0} ms): {}; \
         0 follower requests/min: {}.",
        if percentile(&d_lat.handoff, 0.5) <= 50.0 {
            "met"
        } else {
            "NOT met"
        },
        lease_ms + 100.0,
        if percentile(&d_lat.crash, 0.99) <= lease_ms + 100.0 {
            "met"
        } else {
            "NOT met"
        },
        if d_load.follower_rpm == 0.0 {
            "met"
        } else {
            "NOT met"
        },
    ));
    std::fs::write(out_dir.join("report.md"), &report).unwrap();
    eprintln!(
        "e2e: report written to {}",
        out_dir.join("report.md").display()
    );
}
