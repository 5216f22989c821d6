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
//! kill; default 3), `DSYNC_E2E_VERBOSE` (print every sample), `DSYNC_E2E_DSYNC_PEER` (the binary
//! to run as the dsync peer, default this one: give an older build of this bench to measure an
//! older dsync with today's phases), `DSYNC_E2E_OUTAGE_DOWN_MS` (how long the outage phase keeps
//! the API server killed before starting it again; default a third of the renew deadline),
//! `DSYNC_E2E_FAULT_LEASES` (leases of the persistent-503 phase, default 100, quick 10),
//! `DSYNC_E2E_FAULT_MS` (how long that phase refuses every lease request; default 4/3 of the
//! lease duration: 20 s at 15/10/2). The report is printed and written to
//! `target/e2e/report.md`.
//!
//! Every replica is a process of its own: the Go peer (`benches/peers/clientgo`) or this binary in
//! peer mode (`DSYNC_E2E_PEER=1`, `peer.rs`). Both speak the same line protocol
//! (`dsync_harness::protocol`), so the driver (`procs.rs`) treats them alike. Per implementation it runs five phases, each in a fresh namespace:
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
//! 3. **Mass handoff**: A leads N leases, B follows; A is told to stop them all at once (as on
//!    SIGTERM); from then until B leads every lease, and the requests it took.
//! 4. **Outage**: A leads N leases, B follows; the API server is killed and started again on the
//!    same data; the requests of each replica from its return until 10 s after it is ready.
//! 5. **Persistent 503**: A leads K leases, B follows; then, for longer than the lease duration,
//!    every request on Leases in the phase's namespace is answered `503 Service Unavailable`
//!    with `Retry-After: 1` (the harness's `<data-dir>/fault-503` file, a filter inside the
//!    API server's audit filter, so the refused requests are in the audit log); then the fault
//!    lifts. Reported per replica (holder A, follower B): writes and all requests per lease per
//!    retry period during the fault (what a retry policy asks of an overloaded server); the
//!    requests in the first second and first 5 s after the lift (the herd); leases led when it
//!    lifted, how long until every lease had a leader again, and 429s after the lift.
//!
//! Event times are Unix-nanosecond wall-clock stamps taken by each process when the event
//! happens; all processes run on one machine and share that clock.
//!
//! Linux only (reads `/proc`, `sample.rs`). The audit log is read in `audit.rs`, the phases run
//! in `phases.rs`, the report is made in `report.rs`.

mod audit;
mod peer;
mod phases;
mod procs;
mod report;
mod sample;

use std::path::PathBuf;
use std::time::Duration;

use dsync_harness::protocol::PeerTiming;
use dsync_harness::{apiserver, gopeer};

use crate::phases::{latency_phase, load_phase};
use crate::procs::{Impl, Run};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

/// Lease duration, renew deadline and retry period from `lease/renew/retry` seconds.
fn parse_timing(s: &str) -> PeerTiming {
    let parts: Vec<Duration> = s
        .split('/')
        .map(|p| {
            p.parse()
                .ok()
                .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                .unwrap_or_else(|| panic!("bad timing {s:?}"))
        })
        .collect();
    assert!(
        parts.len() == 3,
        "timing must be lease/renew/retry seconds, got {s:?}"
    );
    PeerTiming::new(parts[0], parts[1], parts[2])
}

fn main() {
    if std::env::var_os("DSYNC_E2E_PEER").is_some() {
        return peer::main(std::env::args().skip(1).collect());
    }
    let quick = env_or("DSYNC_E2E_QUICK", 0u8) == 1;
    let timing = parse_timing(&env_or(
        "DSYNC_E2E_TIMING",
        if quick { "4/3/0.5" } else { "15/10/2" }.to_owned(),
    ));
    let load_leases = env_or("DSYNC_E2E_LOAD_LEASES", if quick { 20 } else { 1000usize });
    let latency_leases = env_or(
        "DSYNC_E2E_LATENCY_LEASES",
        if quick { 10 } else { 100usize },
    );
    let rounds = env_or("DSYNC_E2E_CRASHES", if quick { 1 } else { 3usize });
    let mass_leases = env_or("DSYNC_E2E_MASS_LEASES", if quick { 20 } else { 1000usize });
    let window = Duration::from_secs(env_or("DSYNC_E2E_WINDOW", if quick { 5 } else { 30u64 }));
    // How long the API server stays killed before it is started again (it is away longer:
    // it takes seconds to be ready). A third of the renew deadline by default, so leaders may
    // keep their leases; longer than the lease duration to see followers judge leases expired
    // while the watch is down.
    let outage_down = Duration::from_millis(env_or(
        "DSYNC_E2E_OUTAGE_DOWN_MS",
        timing.renew_deadline.as_millis() as u64 / 3,
    ));

    let fault_leases = env_or("DSYNC_E2E_FAULT_LEASES", if quick { 10 } else { 100usize });
    // Longer than the lease duration, so that a holder's renew deadline passes and every
    // lease expires during the fault: the lift then finds leases without a leader.
    let fault = Duration::from_millis(env_or(
        "DSYNC_E2E_FAULT_MS",
        timing.lease_duration.as_millis() as u64 * 4 / 3,
    ));

    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e");
    std::fs::create_dir_all(&out_dir).unwrap();
    let policy = out_dir.join("audit-policy.yaml");
    std::fs::write(&policy, audit::POLICY).unwrap();
    let audit = out_dir.join(format!("audit-{}.log", std::process::id()));
    let clientgo = gopeer::clientgo_bin();
    let harness = apiserver::Harness::launch(vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", audit.display()),
        "--audit-log-format=json".into(),
        "--audit-log-maxsize=0".into(),
    ]);
    let ready = harness.ready();
    let mut run = Run::new(clientgo, ready.leaseuser.clone(), timing);

    let mut loads = Vec::new();
    let mut latencies = Vec::new();
    let mut masses = Vec::new();
    let mut outages = Vec::new();
    let mut faults = Vec::new();
    for imp in [Impl::Dsync, Impl::ClientGo] {
        loads.push((
            imp,
            load_phase(
                &mut run,
                imp,
                &ready,
                // Asked each time: the outage phase restarts the server (a new process).
                harness.pid().unwrap(),
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
        masses.push((
            imp,
            phases::mass_phase(&mut run, imp, &ready, &audit, mass_leases, timing),
        ));
        outages.push((
            imp,
            phases::outage_phase(
                &mut run,
                imp,
                &harness,
                &ready,
                &audit,
                mass_leases,
                timing,
                outage_down,
            ),
        ));
        faults.push((
            imp,
            phases::persistent_503_phase(
                &mut run,
                imp,
                &ready,
                &audit,
                fault_leases,
                timing,
                fault,
            ),
        ));
    }

    let report = report::render(
        timing,
        &loads,
        &latencies,
        &masses,
        &outages,
        &faults,
        rounds,
        latency_leases,
    );
    std::fs::write(out_dir.join("report.md"), &report).unwrap();
    eprintln!(
        "e2e: report written to {}",
        out_dir.join("report.md").display()
    );
}
