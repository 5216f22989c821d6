//! The report: the table of both implementations side by side, the targets, the machine.

use dsync_harness::protocol::PeerTiming;

use crate::phases::{FaultResult, LatencyResult, LoadResult, MassResult, OutageResult};
use crate::procs::Impl;

/// The value at rank `p` (0..=1) of `sorted`; NaN if it is empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// This machine: cores, CPU model, memory (from `/proc`).
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

/// Prints the markdown report of both implementations (dsync first, then client-go, in `loads`
/// and `latencies`) and returns it.
#[allow(clippy::too_many_arguments)] // one result list per phase, and the knobs they share
pub fn render(
    timing: PeerTiming,
    loads: &[(Impl, LoadResult)],
    latencies: &[(Impl, LatencyResult)],
    masses: &[(Impl, MassResult)],
    outages: &[(Impl, OutageResult)],
    faults: &[(Impl, FaultResult)],
    rounds: usize,
    latency_leases: usize,
) -> String {
    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push_str(&s);
        report.push('\n');
    };
    line(format!(
        "## End-to-end: dsync vs client-go leaderelection (LeaseLock, ReleaseOnCancel)\n\n\
         Machine: {}. Timing {}/{}/{} s (lease/renew/retry). kube-apiserver v1.36.3 with embedded \
         etcd (tests/apiserver), audit log on; every replica a process of its own, on the \
         `dsync-leaseuser` account.\n",
        machine(),
        timing.lease_duration.as_secs_f64(),
        timing.renew_deadline.as_secs_f64(),
        timing.retry_period.as_secs_f64()
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
    let mass = |label: &str, f: &dyn Fn(&MassResult) -> String| {
        format!("| {label} | {} | {} |", f(&masses[0].1), f(&masses[1].1))
    };
    line(mass(
        "mass handoff (stop all, as on SIGTERM): per lease p50 / p99, last (ms)",
        &|r| {
            format!(
                "{:.0} / {:.0}, {:.0} (n={})",
                percentile(&r.taken, 0.5),
                percentile(&r.taken, 0.99),
                r.taken.last().copied().unwrap_or(f64::NAN),
                r.taken.len()
            )
        },
    ));
    line(mass(
        "mass handoff: leases not taken over in 3 lease durations",
        &|r| format!("{} of {}", r.not_taken, r.leases),
    ));
    line(mass("mass handoff: API requests (of them 429)", &|r| {
        format!("{} ({})", r.requests, r.too_many)
    }));
    let outage = |label: &str, f: &dyn Fn(&OutageResult) -> String| {
        format!("| {label} | {} | {} |", f(&outages[0].1), f(&outages[1].1))
    };
    line(outage(
        "API server outage: requests from its return until 10 s after it was ready, leader / follower",
        &|r| format!("{} / {}", r.leader_requests, r.follower_requests),
    ));
    line(outage(
        "API server outage: away from kill to ready (s)",
        &|r| format!("{:.1}", r.away),
    ));
    line(outage(
        "API server outage: leases the leader lost / terms it lost (re-won or not)",
        &|r| format!("{} / {} of {}", r.leases_lost, r.terms_lost, r.leases),
    ));
    let fault = |label: &str, f: &dyn Fn(&FaultResult) -> String| {
        format!("| {label} | {} | {} |", f(&faults[0].1), f(&faults[1].1))
    };
    line(fault(
        "persistent 503: writes / lease / retry period during the fault, holder / follower",
        &|r| {
            format!(
                "{:.2} / {:.2}",
                r.per_lease_per_retry(r.during[0].writes),
                r.per_lease_per_retry(r.during[1].writes)
            )
        },
    ));
    line(fault(
        "persistent 503: all requests / lease / retry period during the fault, holder / follower",
        &|r| {
            format!(
                "{:.2} / {:.2}",
                r.per_lease_per_retry(r.during[0].all),
                r.per_lease_per_retry(r.during[1].all)
            )
        },
    ));
    line(fault(
        "persistent 503: requests in the first 1 s / 5 s after the lift, holder + follower (writes)",
        &|r| {
            let sum =
                |t: &[crate::phases::Tally; 2]| (t[0].all + t[1].all, t[0].writes + t[1].writes);
            let (one, one_w) = sum(&r.first_second);
            let (five, five_w) = sum(&r.first_five);
            format!("{one} ({one_w}) / {five} ({five_w})")
        },
    ));
    line(fault(
        "persistent 503: leases led at the lift; until all led again (ms); 429s after",
        &|r| {
            format!(
                "{} of {}; {}; {}",
                r.led_at_lift,
                r.leases,
                r.all_led_after.map_or_else(
                    || "not in 3 lease durations".into(),
                    |ms| format!("{ms:.0}")
                ),
                r.too_many_after
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
    for (imp, l) in loads {
        line(format!(
            "- {} requests in the window: {}",
            imp.name(),
            l.verbs
        ));
    }
    line(format!(
        "\nMass handoff: {} elections led by one process and followed by another; the leader is \
         told `stopall` (what both peers do on SIGTERM: cancel every election, release every \
         lease); times from then until the follower's `elected` for each lease.",
        masses[0].1.leases
    ));
    line(format!(
        "\nOutage: {} elections led by one process and followed by another; the API server is \
         killed (SIGKILL) and started again on the same data after {:.1} s (it is away longer: \
         the row above counts until it is ready); requests counted from its audit log from its \
         return (it answers before it reports ready) until 10 s after it is ready. An outage longer than the renew deadline (counted from the leader's \
         last renewal) ends the leader's terms by design.",
        outages[0].1.leases, outages[0].1.down
    ));
    for (imp, o) in outages {
        line(format!(
            "- {} requests after the outage: {}",
            imp.name(),
            o.verbs
        ));
    }
    line(format!(
        "\nPersistent 503: {} elections led by one process (the holder) and followed by another; \
         then for {:.1} s every request on Leases in their namespace is answered 503 with \
         `Retry-After: 1` (a filter inside the API server's audit filter: refused requests are \
         audited), then answered again. Requests counted from the audit log by the time the \
         server received them; rates per lease per retry period ({:.1} s).",
        faults[0].1.leases, faults[0].1.fault, faults[0].1.retry
    ));
    for (imp, f) in faults {
        let t = |w: &[crate::phases::Tally; 2]| {
            format!(
                "holder {} ({} writes), follower {} ({} writes)",
                w[0].all, w[0].writes, w[1].all, w[1].writes
            )
        };
        line(format!(
            "- {}: {:.1} s of 503s; the holder lost {} terms. First second after the lift: {}; \
             first 5 s: {}. During the fault: {}",
            imp.name(),
            f.fault,
            f.terms_lost,
            t(&f.first_second),
            t(&f.first_five),
            f.verbs
        ));
    }
    let lease_ms = timing.lease_duration.as_secs_f64() * 1000.0;
    let d_lat = &latencies[0].1;
    let d_load = &loads[0].1;
    let d_mass = &masses[0].1;
    line(format!(
        "\nTargets (dsync): handoff p50 <= 50 ms: {}; crash p99 <= lease + 100 ms ({:.0} ms): {}; \
         0 follower requests/min (besides the replica's one watch): {}; mass handoff of every lease under 1 s with no 429: {}.",
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
        if d_load.follower_lease_requests == 0 {
            "met"
        } else {
            "NOT met"
        },
        if d_mass.not_taken == 0
            && d_mass.too_many == 0
            && d_mass.taken.last().is_some_and(|&ms| ms < 1000.0)
        {
            "met"
        } else {
            "NOT met"
        },
    ));
    report
}
