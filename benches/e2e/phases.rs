//! The phases run per implementation, each in fresh namespaces: load (a leader and a
//! follower over a steady window: CPU, RSS, API requests), latency (graceful handoff and
//! crash failover), mass handoff (a leader of every lease told to stop all at once, as on
//! SIGTERM in a rolling update), outage (the API server killed and started again) and
//! persistent 503 (every lease request refused for a while, then answered again).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use dsync_harness::apiserver;
use dsync_harness::protocol::{Command, PeerTiming, unix_nanos};

use crate::audit::{audit_counts, file_len, takeovers};
use crate::procs::{Impl, Run};
use crate::sample::{proc_cpu, proc_rss_mib};

/// What the load phase measured.
pub struct LoadResult {
    /// Leases the leader held when the window began and no longer held at its end.
    pub leases_lost: usize,
    /// Elections, the same Leases for leader and follower.
    pub leases: usize,
    /// The window's length, s.
    pub window: f64,
    /// CPU of the leader, the follower (cores, over the window).
    pub leader_cpu: f64,
    pub follower_cpu: f64,
    /// Resident memory of the leader, the follower (MiB, at the window's end).
    pub leader_rss: f64,
    pub follower_rss: f64,
    /// CPU of the apiserver+etcd process (cores).
    pub apiserver_cpu: f64,
    /// API requests per minute per election of the leader, the follower.
    pub leader_rpm: f64,
    pub follower_rpm: f64,
    /// The follower's requests in the window other than its watch (a replica's one shared
    /// watch, which kube's watcher reopens every few minutes: per replica, not per election).
    pub follower_lease_requests: u64,
    /// Requests by (user agent, verb, response code), as text.
    pub verbs: String,
}

/// What the latency phase measured (ms, sorted).
pub struct LatencyResult {
    /// From the leader receiving `stop` to another peer's `elected`.
    pub handoff: Vec<f64>,
    /// From the SIGKILL to another peer's `elected`.
    pub crash: Vec<f64>,
    /// Crash failover measured from the holder's last renewal (as the API server saw it)
    /// instead of from the kill: what the library controls, whatever the kill's phase.
    pub takeover: Vec<f64>,
}

/// What the mass-handoff phase measured.
pub struct MassResult {
    /// Elections, all led by the stopped peer.
    pub leases: usize,
    /// Per lease, from `stopall` to the survivor's `elected` (ms, sorted); only leases taken.
    pub taken: Vec<f64>,
    /// Leases the survivor had not taken when the phase gave up (3 lease durations).
    pub not_taken: usize,
    /// API requests in the phase's namespace from `stopall` to the end: all, and 429s.
    pub requests: u64,
    pub too_many: u64,
}

/// Mass handoff: A leads `leases`, B follows them all; A is told `stopall` (what both peers
/// do on SIGTERM: cancel every election, release every lease); measured until B leads them all.
pub fn mass_phase(
    run: &mut Run,
    imp: Impl,
    ready: &apiserver::Ready,
    audit: &Path,
    leases: usize,
    timing: PeerTiming,
) -> MassResult {
    let ns = lead_and_follow(run, imp, ready, "mass handoff", "mass", leases);
    run.pass(timing.retry_period * 2);
    let names: Vec<String> = run.state.leads[&0].iter().cloned().collect();
    run.state.elected_at.clear();
    let from = file_len(audit);
    let stopped_at = unix_nanos(SystemTime::now());
    run.peers[0].send(&Command::StopAll);
    let taken_by_b = |s: &crate::procs::State| {
        names
            .iter()
            .all(|l| s.elected_at.get(l).is_some_and(|(p, _)| *p == 1))
    };
    run.wait_until(timing.lease_duration * 3, taken_by_b);
    let mut taken: Vec<f64> = names
        .iter()
        .filter_map(|l| match run.state.elected_at.get(l) {
            Some((1, at)) => Some((at - stopped_at) as f64 / 1e6),
            _ => None,
        })
        .collect();
    taken.sort_by(f64::total_cmp);
    let not_taken = leases - taken.len();
    let to = file_len(audit);
    run.finish();
    let counts = audit_counts(audit, from, to, &ns);
    let requests = counts.values().sum();
    let too_many = counts
        .iter()
        .filter(|((_, _, code), _)| *code == 429)
        .map(|(_, n)| n)
        .sum();
    MassResult {
        leases,
        taken,
        not_taken,
        requests,
        too_many,
    }
}

/// What the outage phase measured.
pub struct OutageResult {
    /// Elections, led by A and followed by B.
    pub leases: usize,
    /// How long the bench waited before starting the API server again (s).
    pub down: f64,
    /// How long it was away, from the kill until it was ready again (s).
    pub away: f64,
    /// Terms the leader lost across the outage (its renew deadline passed), whether or not
    /// it won the lease back.
    pub terms_lost: usize,
    /// Requests in the phase's namespace from the kill until 10 s after the server was ready
    /// again (none while it is down): A's, B's.
    pub leader_requests: u64,
    pub follower_requests: u64,
    /// The same, by (peer, verb, code), as text.
    pub verbs: String,
    /// Leases A led before the outage and not 10 s after it.
    pub leases_lost: usize,
}

/// Outage: A leads `leases`, B follows; the API server is killed (SIGKILL, as a crash) and
/// started again on the same data after `down` (shorter than the renew deadline, so leaders
/// may keep their leases); counts every request of each peer from its return until 10 s after
/// it is ready: what catching up after a lost watch costs.
#[allow(clippy::too_many_arguments)] // one phase: each is a knob of it
pub fn outage_phase(
    run: &mut Run,
    imp: Impl,
    harness: &apiserver::Harness,
    ready: &apiserver::Ready,
    audit: &Path,
    leases: usize,
    timing: PeerTiming,
    down: Duration,
) -> OutageResult {
    let ns = lead_and_follow(run, imp, ready, "outage", "out", leases);
    run.pass(timing.retry_period * 2);
    let led: HashSet<String> = run.state.leads[&0].clone();
    let lost_before = run.state.terms_lost.get(&0).copied().unwrap_or(0);
    // Counted from the kill: a restarting API server answers (and audits) requests for a
    // while before it reports ready, and the burst of a return is in that while.
    let from = file_len(audit);
    let killed = Instant::now();
    harness.kill();
    run.pass(down);
    let back = harness.start_again();
    let away = killed.elapsed();
    if back.port != ready.port {
        eprintln!(
            "e2e: the API server came back on port {} instead of {}: the peers cannot reach it",
            back.port, ready.port
        );
    }
    run.pass(Duration::from_secs(10));
    let to = file_len(audit);
    let still_led = run
        .state
        .leads
        .get(&0)
        .map_or(0, |l| l.intersection(&led).count());
    let terms_lost = run.state.terms_lost.get(&0).copied().unwrap_or(0) - lost_before;
    let (a, b) = (run.peers[0].name.clone(), run.peers[1].name.clone());
    run.finish();
    let counts = audit_counts(audit, from, to, &ns);
    let of = |agent: &str| -> u64 {
        counts
            .iter()
            .filter(|((who, _, _), _)| who == agent)
            .map(|(_, n)| n)
            .sum()
    };
    OutageResult {
        leases,
        down: down.as_secs_f64(),
        away: away.as_secs_f64(),
        terms_lost,
        leader_requests: of(&a),
        follower_requests: of(&b),
        verbs: counts
            .iter()
            .map(|((agent, verb, code), n)| format!("{agent} {verb} → {code}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        leases_lost: leases - still_led,
    }
}

/// In a fresh namespace (returned), peer A (0) campaigns first and leads all `leases`; then
/// B (1) starts and follows them all. `what` names the phase in the log, `prefix` its leases.
fn lead_and_follow(
    run: &mut Run,
    imp: Impl,
    ready: &apiserver::Ready,
    what: &str,
    prefix: &str,
    leases: usize,
) -> String {
    let ns = new_namespace(ready);
    eprintln!("e2e: {} {what}: {leases} leases in {ns}", imp.name());
    run.spawn(imp, &ns, "a", prefix, leases);
    run.until("A to lead every lease", Duration::from_secs(300), |s| {
        s.leads.get(&0).map_or(0, HashSet::len) == leases
    });
    run.spawn(imp, &ns, "b", prefix, leases);
    run.until(
        "B to see A lead every lease",
        Duration::from_secs(300),
        |s| s.sees_leader.get(&1).map_or(0, HashSet::len) == leases,
    );
    ns
}

/// A fresh namespace on the harness.
fn new_namespace(ready: &apiserver::Ready) -> String {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(apiserver::namespace_on(ready))
}

/// Load: A leads `leases`, B follows them all; measured over a steady `window`.
pub fn load_phase(
    run: &mut Run,
    imp: Impl,
    ready: &apiserver::Ready,
    harness_pid: u32,
    audit: &Path,
    leases: usize,
    window: Duration,
) -> LoadResult {
    let ns = lead_and_follow(run, imp, ready, "load", "load", leases);
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
        follower_lease_requests: counts
            .iter()
            .filter(|((a, verb, _), _)| *a == run.peers[1].name && verb != "watch")
            .map(|(_, n)| *n)
            .sum(),
        verbs,
    };
    run.finish();
    result
}

/// Latency: `rounds` rounds of [`latency_round`], their samples together.
pub fn latency_phase(
    run: &mut Run,
    imp: Impl,
    ready: &apiserver::Ready,
    audit: &Path,
    leases: usize,
    rounds: usize,
    timing: PeerTiming,
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
    timing: PeerTiming,
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
    run.pass(timing.retry_period * 2);
    let mut names: Vec<String> = run.state.leads[&0].iter().cloned().collect();
    names.sort();
    let (graceful, crashed) = names.split_at(leases / 2);
    run.state.elected_at.clear();

    // Graceful handoff, one lease every 100 ms.
    for lease in graceful {
        run.peers[0].send(&Command::Stop(lease.clone()));
        run.pass(Duration::from_millis(100));
    }
    run.until(
        "B or C to take every stopped lease",
        timing.lease_duration * 3,
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
    let jitter = (unix_nanos(SystemTime::now()) % 1_000_000_007) as f64 / 1_000_000_007.0;
    run.pass(timing.retry_period.mul_f64(jitter));
    let holder = run.peers[0].name.clone();
    let killed_at = unix_nanos(SystemTime::now());
    run.peers[0].child.kill().unwrap();
    run.until(
        "B or C to take every lease of the crashed A",
        timing.lease_duration * 3,
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

/// Requests of one replica in one window of the persistent-503 phase.
#[derive(Default, Clone, Copy)]
pub struct Tally {
    /// Lease writes (`create`, `update`, `patch`), whatever the answer.
    pub writes: u64,
    /// Every lease request (reads and watches too).
    pub all: u64,
}

/// What the persistent-503 phase measured.
pub struct FaultResult {
    /// Elections, led by A and followed by B.
    pub leases: usize,
    /// The retry period (s): the unit of the per-lease rates.
    pub retry: f64,
    /// How long every lease request in the namespace was answered 503 (s, measured).
    pub fault: f64,
    /// Requests received during the fault: A's (the holder's), B's (the follower's).
    pub during: [Tally; 2],
    /// Requests received in the first second after the fault lifted, and in the first 5 s:
    /// A's, B's.
    pub first_second: [Tally; 2],
    pub first_five: [Tally; 2],
    /// Terms A lost during the fault (its renew deadline passed without a successful renewal).
    pub terms_lost: usize,
    /// Leases some replica still led (by its own account) when the fault lifted.
    pub led_at_lift: usize,
    /// From the lift until every lease had a leader again (ms); `None` if some lease had none
    /// after 3 lease durations.
    pub all_led_after: Option<f64>,
    /// Answers 429 to requests received after the lift, until the phase's end.
    pub too_many_after: u64,
    /// Requests during the fault by (peer, verb, code), as text.
    pub verbs: String,
}

impl FaultResult {
    /// `n` requests during the fault, per lease per retry period.
    pub fn per_lease_per_retry(&self, n: u64) -> f64 {
        n as f64 / self.leases as f64 / (self.fault / self.retry)
    }
}

/// Persistent 503: A leads `leases`, B follows; then for `fault` every request on Leases in the
/// phase's namespace is answered `503` with `Retry-After: 1` (the harness's `fault-503` file,
/// `tests/apiserver/README.md`), as an overloaded API server answers; then the fault lifts.
/// Measures what each replica asks of the refusing server (a retry policy's cost), the burst
/// when it answers again, and how long until every lease has a leader.
pub fn persistent_503_phase(
    run: &mut Run,
    imp: Impl,
    ready: &apiserver::Ready,
    audit: &Path,
    leases: usize,
    timing: PeerTiming,
    fault: Duration,
) -> FaultResult {
    let ns = lead_and_follow(run, imp, ready, "persistent 503", "f503", leases);
    run.pass(timing.retry_period * 2);
    let names: Vec<String> = run.state.leads[&0].iter().cloned().collect();
    let lost_before = run.state.terms_lost.get(&0).copied().unwrap_or(0);
    let from = file_len(audit);
    let control = ready.data_dir.join("fault-503");
    // Written whole and renamed: the server reads the file on each request and must never
    // see it half written (an empty name refuses nothing).
    let tmp = ready.data_dir.join("fault-503.tmp");
    std::fs::write(&tmp, &ns).unwrap();
    let started = unix_nanos(SystemTime::now());
    std::fs::rename(&tmp, &control).unwrap();
    run.pass(fault);
    std::fs::remove_file(&control).unwrap();
    let lifted = unix_nanos(SystemTime::now());
    let led_by_someone = |s: &crate::procs::State| -> usize {
        names
            .iter()
            .filter(|l| s.leads.values().any(|led| led.contains(*l)))
            .count()
    };
    let led_at_lift = led_by_someone(&run.state);
    let terms_lost = run.state.terms_lost.get(&0).copied().unwrap_or(0) - lost_before;
    // Only `elected` after the lift tell when a lease got its leader back.
    run.state.elected_at.clear();
    let all_led = run.wait_until(timing.lease_duration * 3, |s| {
        led_by_someone(s) == names.len()
    });
    let all_led_after = all_led.then(|| {
        names
            .iter()
            .filter_map(|l| run.state.elected_at.get(l))
            .map(|(_, at)| (at - lifted).max(0) as f64 / 1e6)
            .fold(0.0, f64::max)
    });
    // The first 5 s after the lift are counted whatever happened by then.
    let five = Duration::from_secs(5);
    let since_lift = Duration::from_nanos((unix_nanos(SystemTime::now()) - lifted) as u64);
    run.pass(five.saturating_sub(since_lift));
    let (a, b) = (run.peers[0].name.clone(), run.peers[1].name.clone());
    run.finish();
    // The peers' graceful stop (releases) is after the 5 s: counted only in the 429s.
    let requests = crate::audit::requests(audit, from, &ns);
    let tally = |lo: i128, hi: i128| -> [Tally; 2] {
        [&a, &b].map(|agent| {
            let mut t = Tally::default();
            for r in requests
                .iter()
                .filter(|r| &r.agent == agent && (lo..hi).contains(&r.received))
            {
                t.all += 1;
                t.writes += u64::from(r.is_write());
            }
            t
        })
    };
    let second = 1_000_000_000;
    let mut verbs = std::collections::BTreeMap::new();
    for r in requests
        .iter()
        .filter(|r| (started..lifted).contains(&r.received))
    {
        *verbs
            .entry((r.agent.clone(), r.verb.clone(), r.code))
            .or_insert(0u64) += 1;
    }
    FaultResult {
        leases,
        retry: timing.retry_period.as_secs_f64(),
        fault: (lifted - started) as f64 / 1e9,
        during: tally(started, lifted),
        first_second: tally(lifted, lifted + second),
        first_five: tally(lifted, lifted + 5 * second),
        terms_lost,
        led_at_lift,
        all_led_after,
        too_many_after: requests
            .iter()
            .filter(|r| r.received >= lifted && r.code == 429)
            .count() as u64,
        verbs: verbs
            .iter()
            .map(|((agent, verb, code), n)| format!("{agent} {verb} → {code}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}
