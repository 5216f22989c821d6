//! The `dsync` command line against a real kube-apiserver (tests/apiserver): every CLI is a
//! process of its own, as in a shell script or a CronJob. Each test has its own namespace.
//!
//! Commands coordinate through their standard output (a line a child prints is the signal the
//! test waits for) and, for the overlap oracle, a file every guarded command appends to: its
//! lines are in the order the writes happened, so two guarded commands that overlapped would
//! show as two `start` lines in a row.
#![cfg(all(feature = "cli", feature = "testing"))]

mod support;

use std::time::{Duration, Instant};

use dsync::LeaseStore;
use dsync::store::LeaseKey;
use nix::sys::signal::Signal;
use serde_json::Value;
use support::apiserver::{Harness, client};
use support::cli::*;

/// The overlap oracle on the lines guarded commands appended: `start <token> <holder>` and
/// `end <token>`, strictly alternating (no two commands ever ran at once), each end matching
/// its start, tokens strictly increasing. Returns the (token, holder) of each run.
fn check_no_overlap(log: &str) -> Vec<(i64, String)> {
    let mut runs = Vec::new();
    let mut open: Option<(i64, String)> = None;
    for line in log.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match (words.as_slice(), &open) {
            (["start", token, holder], None) => {
                let token: i64 = token.parse().unwrap();
                if let Some((last, _)) = runs.last() {
                    assert!(token > *last, "fencing token {token} after {last}:\n{log}");
                }
                open = Some((token, holder.to_string()));
            }
            (["start", ..], Some(_)) => panic!("two guarded commands ran at once:\n{log}"),
            (["end", token], Some((started, _))) => {
                assert_eq!(token.parse::<i64>().unwrap(), *started, "{log}");
                runs.push(open.take().unwrap());
            }
            _ => panic!("unexpected line {line:?} in:\n{log}"),
        }
    }
    assert!(open.is_none(), "a guarded command never ended:\n{log}");
    runs
}

const GUARDED: &str = r#"echo "start $DSYNC_FENCING_TOKEN $DSYNC_HOLDER" >> "$LOG"; sleep 0.3; echo "end $DSYNC_FENCING_TOKEN" >> "$LOG"; exit 7"#;

#[actix_rt::test]
async fn contending_locks_never_overlap_tokens_increase_and_exit_codes_pass_through() {
    let cli = Cli::admin().await;
    let log = scratch("log");
    let mut procs = Vec::new();
    for _ in 0..4 {
        let mut cmd = cli.command(&["lock", "race", "--quiet", "--", "sh", "-c", GUARDED]);
        cmd.env("LOG", &log);
        procs.push(cmd.spawn().unwrap());
    }
    for mut child in procs {
        let status = tokio::time::timeout(LIMIT, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            status.code(),
            Some(7),
            "the command's exit code passes through"
        );
    }
    let runs = check_no_overlap(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(runs.len(), 4, "every process ran its command once");
    let mut holders: Vec<&String> = runs.iter().map(|(_, h)| h).collect();
    holders.sort();
    holders.dedup();
    assert_eq!(
        holders.len(),
        4,
        "each process holds as its own identity: {runs:?}"
    );

    // The same on a semaphore of one permit, which is a lock by other leases.
    let log = scratch("log");
    let mut procs = Vec::new();
    for _ in 0..3 {
        let mut cmd = cli.command(&[
            "lock", "one", "-n", "1", "--quiet", "--", "sh", "-c", GUARDED,
        ]);
        cmd.env("LOG", &log);
        procs.push(cmd.spawn().unwrap());
    }
    for mut child in procs {
        let status = tokio::time::timeout(LIMIT, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(7));
    }
    assert_eq!(
        check_no_overlap(&std::fs::read_to_string(&log).unwrap()).len(),
        3
    );
}

#[actix_rt::test]
async fn a_lost_lock_stops_the_command_and_its_grandchildren_and_exits_with_the_lost_code() {
    let cli = Cli::admin().await;
    let (mut holder, pids) = stubborn(&cli, "nightly", "1s").await;
    let about = holder.stdout_line("holder").await;
    let identity = about.split_whitespace().nth(1).unwrap().to_owned();
    let first_token: i32 = about.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(about.ends_with("lease unscoped.lock.nightly"), "{about}");

    // An operator takes the lock away; the CLI learns it from the API server.
    let released = cli.run(&["release", "nightly", "--force"]).await;
    assert_eq!(released.code, Some(0), "{released:?}");
    assert!(
        released.stdout.contains(&format!("held by {identity}")),
        "release says who held it: {released:?}"
    );
    let took_away = Instant::now();
    // Renew deadline (1.5 s) + --kill-after (1 s) is the promise; the limit only bounds the test.
    let (status, stderr) = holder.exit(Duration::from_secs(20)).await;
    let stopped_in = took_away.elapsed();
    assert_eq!(status.code(), Some(LOST), "{stderr}");
    // The promise, with slack for a loaded machine: detected within the renew deadline at
    // worst (here the watch sees it at once), then --kill-after.
    assert!(
        stopped_in < Duration::from_millis(1500 + 1000) + Duration::from_secs(3),
        "the group was stopped {stopped_in:?} after the lock was taken away"
    );
    assert!(stderr.contains("lost lock"), "{stderr}");
    assert!(
        stderr.contains("SIGKILL"),
        "the group ignored SIGTERM: {stderr}"
    );
    for pid in pids {
        assert!(gone(pid), "process {pid} of the command's group survived");
    }
    println!("lost lock: command group gone {stopped_in:?} after the forced release");

    // The lock is free again: the next command gets it at once, with a higher token.
    let next = cli
        .run(&[
            "lock",
            "nightly",
            "--try",
            "--",
            "sh",
            "-c",
            "echo token $DSYNC_FENCING_TOKEN",
        ])
        .await;
    assert_eq!(next.code, Some(0), "{next:?}");
    let token = last_number(&next.stdout);
    assert!(
        token > first_token,
        "force-released, then acquired again: {next:?}"
    );
}

#[actix_rt::test]
async fn sigterm_reaches_the_command_and_the_lock_is_released_after_it_exits() {
    // A long lease: a waiter that got the lock by expiry would wait 10 s; by release, at once.
    let cli = Cli::admin().await.with_timing(&SLOW);
    let log = scratch("log");
    let first = r#"trap 'echo "end first" >> "$LOG"; exit 0' TERM; echo ready; while :; do sleep 0.05; done"#;
    let mut cmd = cli.command(&["lock", "shared", "--", "sh", "-c", first]);
    cmd.env("LOG", &log);
    let mut a = Proc::from(cmd, "a");
    a.stdout_line("ready").await;

    let second = r#"echo "start second $DSYNC_FENCING_TOKEN" >> "$LOG"; echo done"#;
    let mut cmd = cli.command(&["lock", "shared", "--", "sh", "-c", second]);
    cmd.env("LOG", &log);
    let mut b = Proc::from(cmd, "b");
    let waiting = b.stderr_line("waiting for lock").await;
    assert!(
        waiting.contains("free in ~"),
        "says when it frees by this observer: {waiting}"
    );

    a.signal(Signal::SIGTERM);
    let (status, _) = a.exit(LIMIT).await;
    let released = Instant::now();
    assert_eq!(
        status.code(),
        Some(0),
        "dsync exits with the command's code"
    );
    b.stdout_line("done").await;
    let handed_over_in = released.elapsed();
    let (status, _) = b.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[0], "end first",
        "the first command ended before the second began: {log}"
    );
    assert!(lines[1].starts_with("start second"), "{log}");
    assert!(
        handed_over_in < Duration::from_secs(5),
        "the waiter got the lock {handed_over_in:?} after the holder exited: by expiry (10 s), \
         not by release"
    );
    println!("SIGTERM handover: waiter ran {handed_over_in:?} after the holder exited");
}

#[actix_rt::test]
async fn try_and_timeout_exit_with_the_timeout_code_and_name_the_holder() {
    let cli = Cli::admin().await;
    let hold = r#"trap 'exit 0' TERM; echo "holder $DSYNC_HOLDER slot ${DSYNC_SLOT:-none}"; while :; do sleep 0.05; done"#;
    let mut a = cli.spawn(&["lock", "busy", "--", "sh", "-c", hold]);
    let line = a.stdout_line("holder").await;
    let identity = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(line.ends_with("slot none"));

    let tried = cli.run(&["lock", "busy", "--try", "--", "true"]).await;
    assert_eq!(tried.code, Some(TIMEOUT), "{tried:?}");
    assert!(
        tried.stderr.contains(&identity),
        "names the holder: {tried:?}"
    );
    let waited = cli
        .run(&["lock", "busy", "--timeout", "1s", "--", "true"])
        .await;
    assert_eq!(waited.code, Some(TIMEOUT), "{waited:?}");
    assert!(
        waited.stderr.contains("not granted within 1s"),
        "{waited:?}"
    );

    // Semaphores: two permits, two holders, each with its slot; the third is refused.
    let mut p1 = cli.spawn(&["lock", "pool", "-n", "2", "--", "sh", "-c", hold]);
    let mut p2 = cli.spawn(&["lock", "pool", "-n", "2", "--", "sh", "-c", hold]);
    let mut slots = vec![
        p1.stdout_line("holder")
            .await
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned(),
        p2.stdout_line("holder")
            .await
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned(),
    ];
    slots.sort();
    assert_eq!(slots, ["0", "1"]);
    let third = cli
        .run(&["lock", "pool", "-n", "2", "--try", "--", "true"])
        .await;
    assert_eq!(third.code, Some(TIMEOUT), "{third:?}");

    for p in [a, p1, p2] {
        p.signal(Signal::SIGTERM);
        let (status, stderr) = p.exit(LIMIT).await;
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
}

#[actix_rt::test]
async fn bad_input_gets_usage_errors_and_missing_rights_the_permission_code() {
    let cli = Cli::admin().await;
    for args in [
        &["lock", "x"][..],
        &["lock", "x", "--kill-after", "5x", "--", "true"],
        &["lock", "x", "--signal", "NOPE", "--", "true"],
        &["lock", "x", "--try", "--timeout", "1s", "--", "true"],
        &["frobnicate"],
    ] {
        let done = cli.run(args).await;
        assert_eq!(done.code, Some(USAGE), "{args:?}: {done:?}");
        assert!(
            done.stderr.starts_with("error:") && done.stderr.contains("--help"),
            "clap's usage error: {args:?}: {done:?}"
        );
    }
    let bad_name = cli.run(&["lock", "Not A Name", "--", "true"]).await;
    assert_eq!(bad_name.code, Some(USAGE), "{bad_name:?}");
    let bad_timing = cli
        .as_user(&cli.kubeconfig)
        .with_timing(&[])
        .run(&[
            "lock",
            "x",
            "--lease-duration",
            "1s",
            "--renew-deadline",
            "2s",
            "--",
            "true",
        ])
        .await;
    assert_eq!(bad_timing.code, Some(USAGE), "{bad_timing:?}");
    assert!(
        bad_timing.stderr.contains("--renew-deadline"),
        "{bad_timing:?}"
    );
    assert!(bad_timing.stderr.contains("renew"), "{bad_timing:?}");
    let missing = cli.run(&["lock", "x", "--", "/no/such/program"]).await;
    assert_eq!(missing.code, Some(127), "{missing:?}");

    // No rights at all: the typed error names the verb RBAC denied.
    let ready = Harness::get().ready();
    let nobody = cli.as_user(&ready.norights);
    let denied = nobody.run(&["lock", "x", "--", "true"]).await;
    assert_eq!(denied.code, Some(DSYNC_FAILED), "{denied:?}");
    assert!(denied.stderr.contains("forbidden to get"), "{denied:?}");
    let denied = nobody.run(&["status"]).await;
    assert_eq!(denied.code, Some(DSYNC_FAILED), "{denied:?}");
    assert!(denied.stderr.contains("forbidden to list"), "{denied:?}");

    // Read-only rights (deploy/observer-rbac.yaml): status works, release is refused.
    support::rbac::bind_to_norights(
        client(&ready.admin).await,
        &cli.ns,
        &support::rbac::shipped_role("observer-rbac.yaml"),
        "cli-observer",
    )
    .await;
    let mut holder = cli.spawn(&[
        "lock",
        "x",
        "--",
        "sh",
        "-c",
        "trap 'exit 0' TERM; echo held; while :; do sleep 0.05; done",
    ]);
    holder.stdout_line("held").await;
    let status = nobody.run(&["status"]).await;
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(status.stdout.contains("lock"), "{status:?}");
    let refused = cli.run(&["release", "x"]).await;
    assert_eq!(refused.code, Some(USAGE), "without --force: {refused:?}");
    assert!(refused.stderr.contains("--force"), "{refused:?}");
    let denied = nobody.run(&["release", "x", "--force"]).await;
    assert_eq!(denied.code, Some(DSYNC_FAILED), "{denied:?}");
    assert!(denied.stderr.contains("forbidden to update"), "{denied:?}");
    holder.signal(Signal::SIGTERM);
    let (status, stderr) = holder.exit(LIMIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "the lock was never taken away: {stderr}"
    );
}

#[actix_rt::test]
async fn status_shows_elections_locks_and_semaphore_slots_as_table_and_json() {
    let cli = Cli::admin().await;
    let a = support::backend::kube_replica(cli.store().await, &cli.ns, "pod-a");
    let election = a.election("master").unwrap();
    let term = election.elected().await.unwrap();
    let lock = a.lock("nightly").unwrap();
    lock.lock().await.unwrap();
    let pool = a.semaphore("exports", 2).unwrap();
    let permit = pool.acquire().await.unwrap();
    // A lease that is not dsync's is left out.
    let other = LeaseKey::new(&cli.ns, "kube-controller-manager");
    cli.store()
        .await
        .create(&other, Default::default())
        .await
        .unwrap();

    let json = cli.run(&["status", "-o", "json"]).await;
    assert_eq!(json.code, Some(0), "{json:?}");
    let doc: Value = serde_json::from_str(&json.stdout).unwrap();
    let leases = doc["leases"].as_array().unwrap();
    let found: Vec<(String, String, Value)> = leases
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_owned(),
                l["name"].as_str().unwrap().to_owned(),
                l["holder"].clone(),
            )
        })
        .collect();
    assert!(
        found.contains(&("election".into(), "master".into(), "pod-a".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("lock".into(), "nightly".into(), "pod-a".into())),
        "{found:?}"
    );
    assert!(
        leases.iter().any(|l| l["kind"] == "semaphore"
            && l["slot"] == permit.slot()
            && l["holder"] == "pod-a"
            && l["fencing_token"] == permit.fencing_token()),
        "{leases:?}"
    );
    assert!(!json.stdout.contains("kube-controller-manager"), "{json:?}");
    let master = leases.iter().find(|l| l["kind"] == "election").unwrap();
    assert_eq!(master["fencing_token"], term.fencing_token());
    assert_eq!(master["expired_by_local_clock"], false);
    assert_eq!(master["lease_duration_seconds"], 2);

    let table = cli.run(&["status"]).await;
    assert_eq!(table.code, Some(0), "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("KIND") && lines[0].contains("HOLDER"),
        "{table:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("lock") && l.contains("nightly") && l.contains("pod-a")),
        "{table:?}"
    );
    assert!(table.stdout.contains("judged locally"), "{table:?}");
    let one = cli.run(&["status", "nightly"]).await;
    assert_eq!(
        one.stdout.lines().filter(|l| l.contains("pod-a")).count(),
        1,
        "{one:?}"
    );

    // --watch: the listed state, then each change as it happens.
    let mut watch = cli.spawn(&["status", "--watch", "-o", "json"]);
    watch.stdout_line("\"listed\"").await;
    lock.unlock().await.unwrap();
    let asked = Instant::now();
    // (The semaphore may still be giving back a second slot its acquire took meanwhile.)
    let change = loop {
        let line = watch.stdout_line("\"changed\"").await;
        let change: Value = serde_json::from_str(&line).unwrap();
        if change["lease"]["kind"] == "lock" {
            break change;
        }
    };
    println!(
        "status --watch printed a change {:?} after the unlock returned",
        asked.elapsed()
    );
    assert_eq!(change["lease"]["name"], "nightly", "{change}");
    assert_eq!(change["lease"]["holder"], Value::Null, "{change}");
    watch.signal(Signal::SIGINT);
    let (status, _) = watch.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0));

    // release: a semaphore slot by --slot (its holder's term ends), and a name that is both
    // a lock and an election only with --kind.
    let slot = permit.slot().to_string();
    let released = cli
        .run(&["release", "exports", "--slot", &slot, "--force"])
        .await;
    assert_eq!(released.code, Some(0), "{released:?}");
    assert!(released.stdout.contains("held by pod-a"), "{released:?}");
    tokio::time::timeout(LIMIT, permit.term().cancelled())
        .await
        .expect("the permit's holder sees its slot taken away");
    let twin = a.election("nightly").unwrap();
    twin.elected().await.unwrap();
    let lock_term = lock.lock().await.unwrap();
    let ambiguous = cli.run(&["release", "nightly", "--force"]).await;
    assert_eq!(ambiguous.code, Some(USAGE), "{ambiguous:?}");
    assert!(ambiguous.stderr.contains("--kind"), "{ambiguous:?}");
    let released = cli
        .run(&["release", "nightly", "--kind", "lock", "--force"])
        .await;
    assert_eq!(released.code, Some(0), "{released:?}");
    tokio::time::timeout(LIMIT, lock_term.cancelled())
        .await
        .expect("the lock's holder sees it taken away");
    assert!(
        twin.is_leader(),
        "the election of the same name was left alone"
    );
    let missing = cli.run(&["release", "no-such-thing", "--force"]).await;
    assert_eq!(missing.code, Some(DSYNC_FAILED), "{missing:?}");
    assert!(
        missing.stderr.contains("no lock or election"),
        "{missing:?}"
    );

    drop((permit, term));
    a.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn signals_and_leftovers_end_the_whole_group_before_the_lock_is_released() {
    let cli = Cli::admin().await;
    // SIGTERM forwarded to a group that ignores it: SIGKILL after --kill-after; the command
    // died of it (137), and only then is the lock released.
    let (stubborn, pids) = stubborn(&cli, "group", "500ms").await;
    stubborn.signal(Signal::SIGTERM);
    let (status, stderr) = stubborn.exit(LIMIT).await;
    assert_eq!(status.code(), Some(128 + 9), "{stderr}");
    assert!(stderr.contains("SIGKILL"), "{stderr}");
    for pid in pids {
        assert!(gone(pid), "process {pid} of the command's group survived");
    }
    let next = cli.run(&["lock", "group", "--try", "--", "true"]).await;
    assert_eq!(
        next.code,
        Some(0),
        "released after the group was gone: {next:?}"
    );

    // A command that exits at once but leaves a process in its group: that process is
    // stopped before the lock is released.
    let leaves = cli
        .run(&[
            "lock",
            "group",
            "--",
            "sh",
            "-c",
            "sleep 1000 & echo \"left $!\"",
        ])
        .await;
    assert_eq!(leaves.code, Some(0), "{leaves:?}");
    let left = last_number(&leaves.stdout);
    assert!(
        gone(left),
        "the command's leftover {left} survived the release"
    );
    assert!(leaves.stderr.contains("released"), "{leaves:?}");
}

/// Traps SIGTERM before it says it leads: a signal sent on that line finds the trap set.
const LEADER: &str = r#"trap 'echo "$DSYNC_HOLDER stops"; exit 0' TERM; echo "$DSYNC_HOLDER leads with $DSYNC_FENCING_TOKEN"; while :; do sleep 0.05; done"#;

#[actix_rt::test]
async fn run_follows_terms_and_handoff_moves_the_command_to_another_pod() {
    let cli = Cli::admin().await;
    let mut a = cli.spawn(&[
        "run",
        "--identity",
        "pod-a",
        "work",
        "--",
        "sh",
        "-c",
        LEADER,
    ]);
    let first: i32 = last_number(&a.stdout_line("pod-a leads").await);
    let mut b = cli.spawn(&[
        "run",
        "--identity",
        "pod-b",
        "work",
        "--",
        "sh",
        "-c",
        LEADER,
    ]);
    b.stderr_line("campaigning").await;
    let mut observe = cli.spawn(&["observe", "work", "-o", "json"]);
    let seen: Value = serde_json::from_str(&observe.stdout_line("holder").await).unwrap();
    assert_eq!(seen["holder"], "pod-a");

    let handed = cli.run(&["handoff", "work", "--to", "pod-b"]).await;
    assert_eq!(handed.code, Some(0), "{handed:?}");
    assert!(handed.stdout.contains("pod-b leads"), "{handed:?}");
    a.stdout_line("pod-a stops").await;
    let second: i32 = last_number(&b.stdout_line("pod-b leads").await);
    assert!(second > first);
    loop {
        let seen: Value = serde_json::from_str(&observe.stdout_line("holder").await).unwrap();
        if seen["holder"] == "pod-b" {
            break;
        }
    }

    // pod-b stops (SIGTERM): its command stops, it releases, pod-a leads again at once.
    b.signal(Signal::SIGTERM);
    b.stdout_line("pod-b stops").await;
    let (status, stderr) = b.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let third: i32 = last_number(&a.stdout_line("pod-a leads").await);
    assert!(third > second);
    // SIGINT is forwarded as SIGINT: the command does not trap it and dies of it (130).
    a.signal(Signal::SIGINT);
    let (status, stderr) = a.exit(LIMIT).await;
    assert_eq!(status.code(), Some(130), "{stderr}");
    observe.signal(Signal::SIGTERM);
    observe.exit(LIMIT).await;

    // --once: the command's exit code passes through; a term that ends first is code 76.
    let once = cli
        .run(&["run", "batch", "--once", "--", "sh", "-c", "exit 3"])
        .await;
    assert_eq!(once.code, Some(3), "{once:?}");
    let mut once = cli.spawn(&[
        "run",
        "--identity",
        "pod-c",
        "batch",
        "--once",
        "--",
        "sh",
        "-c",
        LEADER,
    ]);
    once.stdout_line("pod-c leads").await;
    let released = cli
        .run(&["release", "batch", "--kind", "election", "--force"])
        .await;
    assert_eq!(released.code, Some(0), "{released:?}");
    once.stdout_line("pod-c stops").await;
    let (status, stderr) = once.exit(LIMIT).await;
    assert_eq!(status.code(), Some(LOST), "{stderr}");

    // A handoff to an identity that never takes over: the leader still hands over (and
    // campaigns again after the successor's grace); the CLI gives up after --timeout.
    let mut solo = cli.spawn(&[
        "run",
        "--identity",
        "pod-c",
        "solo",
        "--",
        "sh",
        "-c",
        LEADER,
    ]);
    let before: i32 = last_number(&solo.stdout_line("pod-c leads").await);
    let waited = cli
        .run(&["handoff", "solo", "--to", "pod-z", "--timeout", "1s"])
        .await;
    assert_eq!(waited.code, Some(TIMEOUT), "{waited:?}");
    assert!(waited.stderr.contains("pod-z does not lead"), "{waited:?}");
    solo.stdout_line("pod-c stops").await;
    let after: i32 = last_number(&solo.stdout_line("pod-c leads").await);
    assert!(after > before);
    solo.signal(Signal::SIGTERM);
    let (status, stderr) = solo.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Handing off an election nobody leads is refused with the reason.
    let nobody = cli
        .run(&["handoff", "nobody-runs-this", "--to", "pod-b"])
        .await;
    assert_eq!(nobody.code, Some(DSYNC_FAILED), "{nobody:?}");
}

/// Runs until SIGTERM; appends `start <token> <holder>` when it starts and `end <token>`
/// when it stops, for [`check_no_overlap`].
const LOGS_ITS_TERM: &str = r#"trap 'echo "end $DSYNC_FENCING_TOKEN" >> "$LOG"; exit 0' TERM; echo "start $DSYNC_FENCING_TOKEN $DSYNC_HOLDER" >> "$LOG"; echo "$DSYNC_HOLDER started"; while :; do sleep 0.05; done"#;

#[actix_rt::test]
async fn cli_run_holds_as_a_new_identity_per_process() {
    let cli = Cli::admin().await;
    let log = scratch("log");
    let mut cmd = cli.command(&["run", "ids", "--", "sh", "-c", LOGS_ITS_TERM]);
    cmd.env("LOG", &log);
    let mut a = Proc::from(cmd, "a");
    let first = a.stdout_line("started").await;
    let mut cmd = cli.command(&["run", "ids", "--", "sh", "-c", LOGS_ITS_TERM]);
    cmd.env("LOG", &log);
    let mut b = Proc::from(cmd, "b");
    b.stderr_line("campaigning").await;
    a.signal(Signal::SIGTERM);
    let (status, stderr) = a.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let second = b.stdout_line("started").await;
    b.signal(Signal::SIGTERM);
    b.exit(LIMIT).await;
    let (first, second) = (
        first.split_whitespace().next().unwrap(),
        second.split_whitespace().next().unwrap(),
    );
    assert_ne!(first, second, "two processes, two identities");
    let host = first.rsplit_once('-').unwrap().0;
    assert_eq!(
        second.rsplit_once('-').unwrap().0,
        host,
        "the host name (or KUBE_POD_NAME) and a random suffix: {first}, {second}"
    );
    let runs = check_no_overlap(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(runs.len(), 2);
}

/// [`LOGS_ITS_TERM`], taking half a second to stop (within FAST's `--kill-after`, 1 s): a
/// second command started as soon as the first one is told to stop would show as an overlap.
const SLOW_TO_STOP: &str = r#"trap 'sleep 0.5; echo "end $DSYNC_FENCING_TOKEN" >> "$LOG"; exit 0' TERM; echo "start $DSYNC_FENCING_TOKEN $DSYNC_HOLDER" >> "$LOG"; echo "$DSYNC_HOLDER started"; while :; do sleep 0.05; done"#;

#[actix_rt::test]
async fn cli_one_identity_twice_never_runs_two_commands_at_once() {
    let cli = Cli::admin().await;
    for sub in ["run", "lock"] {
        let log = scratch("log");
        let spawn = |who: &str| {
            let mut cmd = cli.command(&[
                sub,
                "--identity",
                "twin",
                "twins",
                "--",
                "sh",
                "-c",
                SLOW_TO_STOP,
            ]);
            cmd.env("LOG", &log);
            Proc::from(cmd, who)
        };
        let mut a = spawn("a");
        a.stdout_line("twin started").await;
        let mut b = spawn("b");
        // b is up once it says what it does (waits or campaigns); then both run for three
        // lease durations (3 s each), the window in which b could take a's lease for its own.
        b.stderr_line("twins").await;
        let window = tokio::time::timeout(Duration::from_secs(9), b.stdout_line("twin started"));
        let b_started = window.await.is_ok();
        for p in [a, b] {
            p.signal(Signal::SIGTERM);
            p.exit(LIMIT).await;
        }
        let log = std::fs::read_to_string(&log).unwrap();
        let runs = check_no_overlap(&log);
        println!("{sub}: one identity twice: {runs:?} (second started in the window: {b_started})");
    }
}

/// Rule `operator-release-grace`: `release --force` writes the lease free with the holder's
/// full lease duration (dsync candidates leave it alone that long: the holder may be cut off
/// and still working); `--force --now` frees it at once; `--now` alone is a usage error.
#[actix_rt::test]
async fn operator_release_grace_release_force_leaves_a_grace_and_now_frees_at_once() {
    let cli = Cli::admin().await;
    let store = cli.store().await;
    let key = LeaseKey::new(&cli.ns, "unscoped.lock.graced");
    for (flags, declared) in [(&["--force"][..], 3), (&["--force", "--now"][..], 1)] {
        let mut holder = cli.spawn(&["lock", "graced", "--", "sh", "-c", "echo held; sleep 30"]);
        holder.stdout_line("held").await;
        let mut args = vec!["release", "graced"];
        args.extend_from_slice(flags);
        let released = cli.run(&args).await;
        assert_eq!(released.code, Some(0), "{released:?}");
        let record = store.get(&key).await.unwrap().record;
        assert_eq!(record.holder(), None, "{flags:?}");
        assert_eq!(
            record.lease_duration_seconds,
            Some(declared),
            "{flags:?}: {released:?}"
        );
        let (status, stderr) = holder.exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(LOST), "{stderr}");
    }
    let usage = cli.run(&["release", "graced", "--now"]).await;
    assert_eq!(usage.code, Some(2), "{usage:?}");
}

/// `dsync ARGS` run without the harness (flags and help only), to its end.
fn offline(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dsync"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn help_lists_the_environment_and_each_subcommand_only_its_own_flags() {
    let top = String::from_utf8(offline(&["--help"]).stdout).unwrap();
    for var in [
        "KUBE_NAMESPACE",
        "KUBE_LEASE_SCOPE",
        "KUBE_POD_NAME",
        "KUBE_CONFIG_PATH",
        "KUBECONFIG",
        "RUST_LOG",
        "DSYNC_LEASE",
        "DSYNC_NAMESPACE",
        "DSYNC_HOLDER",
        "DSYNC_FENCING_TOKEN",
        "DSYNC_SLOT",
    ] {
        assert!(top.contains(var), "--help does not name {var}:\n{top}");
    }
    let help = |sub: &str| String::from_utf8(offline(&[sub, "--help"]).stdout).unwrap();
    // Who holds and how long: only where a lease is held.
    for sub in ["lock", "run"] {
        let text = help(sub);
        for flag in [
            "--identity",
            "--lease-duration",
            "--kill-after",
            "--command",
            "--namespace",
        ] {
            assert!(
                text.contains(flag),
                "dsync {sub} --help has no {flag}:\n{text}"
            );
        }
    }
    assert!(help("lock").contains("--conflict-exit-code"));
    for sub in ["status", "release", "handoff", "observe"] {
        let text = help(sub);
        for flag in [
            "--identity",
            "--lease-duration",
            "--renew-deadline",
            "--retry-period",
            "--kill-after",
            "--conflict-exit-code",
        ] {
            assert!(
                !text.contains(flag),
                "dsync {sub} --help lists {flag}, which does nothing there:\n{text}"
            );
        }
        assert!(text.contains("--namespace"), "{sub}: {text}");
    }
    assert!(help("observe").contains("--semaphore"));
}

#[actix_rt::test]
async fn conflict_exit_code_and_shell_mode_as_flock() {
    let cli = Cli::admin().await;
    let mut holder = cli.spawn(&["lock", "busy", "-c", "echo held; exec sleep 30"]);
    holder.stdout_line("held").await;
    // Busy: the chosen code instead of 75 (0 for a cron job), and the command does not run.
    let skipped = cli
        .run(&[
            "lock",
            "busy",
            "--try",
            "--conflict-exit-code",
            "0",
            "-c",
            "echo ran",
        ])
        .await;
    assert_eq!(skipped.code, Some(0), "{skipped:?}");
    assert!(!skipped.stdout.contains("ran"), "{skipped:?}");
    assert!(skipped.stderr.contains("held by"), "{skipped:?}");
    let timed_out = cli
        .run(&[
            "lock",
            "busy",
            "--timeout",
            "500ms",
            "-E",
            "9",
            "--",
            "true",
        ])
        .await;
    assert_eq!(timed_out.code, Some(9), "{timed_out:?}");
    let plain = cli.run(&["lock", "busy", "--try", "--", "true"]).await;
    assert_eq!(plain.code, Some(TIMEOUT), "{plain:?}");
    // -c: the string runs with sh -c, with dsync's variables, and its exit code passes through.
    let shell = cli
        .run(&["lock", "free", "-c", "echo \"in $DSYNC_LEASE\"; exit 3"])
        .await;
    assert_eq!(shell.code, Some(3), "{shell:?}");
    assert!(shell.stdout.contains("in unscoped.lock.free"), "{shell:?}");
    // A granted lock is not a conflict: the command's own code, even with -E.
    let granted = cli
        .run(&["lock", "free", "--try", "-E", "0", "-c", "exit 4"])
        .await;
    assert_eq!(granted.code, Some(4), "{granted:?}");
    holder.signal(Signal::SIGTERM);
    holder.exit(LIMIT).await;
}

#[actix_rt::test]
async fn bad_flag_values_exit_2_naming_the_flag_and_messages_give_no_library_advice() {
    let cli = Cli::admin().await;
    let flag = cli.run(&["--namespace", "Not_A_Namespace", "status"]).await;
    assert_eq!(flag.code, Some(USAGE), "{flag:?}");
    assert!(flag.stderr.contains("--namespace"), "{flag:?}");
    assert!(!flag.stderr.contains("KUBE_NAMESPACE"), "{flag:?}");
    // From the environment it is a configuration error naming the variable.
    let env = cli
        .command(&["status"])
        .env("KUBE_NAMESPACE", "Not_A_Namespace")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&env.stderr);
    assert_eq!(env.status.code(), Some(DSYNC_FAILED), "{stderr}");
    assert!(stderr.contains("KUBE_NAMESPACE"), "{stderr}");
    for name in ["Not A Name", ""] {
        let done = cli.run(&["lock", name, "--", "true"]).await;
        assert_eq!(done.code, Some(USAGE), "{done:?}");
        for advice in ["sanitize_name", "dsync::", "MASTER", "()"] {
            assert!(
                !done.stderr.contains(advice),
                "library advice {advice:?}: {done:?}"
            );
        }
    }
}

#[actix_rt::test]
async fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    let cli = Cli::admin().await;
    let done = cli
        .command(&["status"])
        .env("RUST_LOG", "dsync=debug,kube=debug")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("DEBUG"), "something was logged: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escapes in a pipe: {stderr:?}"
    );
}

#[actix_rt::test]
async fn release_on_a_semaphore_suggests_slot_and_observe_follows_its_slots() {
    let cli = Cli::admin().await;
    let mut observer = cli.spawn(&["observe", "pool", "--semaphore"]);
    let mut holder = cli.spawn(&[
        "lock",
        "pool",
        "-n",
        "2",
        "--identity",
        "sem-a",
        "-c",
        "echo \"held $DSYNC_SLOT\"; exec sleep 30",
    ]);
    let slot = last_number(&holder.stdout_line("held").await);
    let line = observer.stdout_line("sem-a").await;
    assert!(line.contains(&format!("pool[{slot}]")), "{line}");
    let release = cli.run(&["release", "pool", "--force"]).await;
    assert_eq!(release.code, Some(USAGE), "{release:?}");
    assert!(
        release.stderr.contains("--slot") && release.stderr.contains("sem-a"),
        "{release:?}"
    );
    holder.signal(Signal::SIGTERM);
    holder.exit(LIMIT).await;
    let line = observer.stdout_line("free").await;
    assert!(line.contains(&format!("pool[{slot}]")), "{line}");
    observer.signal(Signal::SIGTERM);
    let (status, stderr) = observer.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[actix_rt::test]
async fn status_shows_free_leases_as_free_since_and_a_change_it_cannot_show_not_at_all() {
    let cli = Cli::admin().await;
    let done = cli.run(&["lock", "once", "--", "true"]).await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let status = cli.run(&["status", "once"]).await;
    let row = status
        .stdout
        .lines()
        .find(|l| l.contains("once"))
        .unwrap_or_else(|| panic!("{status:?}"))
        .to_owned();
    assert!(
        row.contains("free since"),
        "a free lease was not acquired: {row}"
    );

    let mut watch = cli.spawn(&["status", "--watch", "edited"]);
    watch.stdout_line("EXPIRED").await; // the table's header: the watch is on
    let mut holder = cli.spawn(&[
        "lock",
        "edited",
        "--identity",
        "edit-a",
        "-c",
        "echo held; exec sleep 30",
    ]);
    holder.stdout_line("held").await;
    watch.stdout_line("holder edit-a").await;
    // A change the line does not show (the declared duration, as an edit would make; the
    // holder's next renewal writes its own back): no line that looks like the last one.
    let store = cli.store().await;
    let key = LeaseKey::new(&cli.ns, "unscoped.lock.edited");
    let current = store.get(&key).await.unwrap();
    let mut record = current.record.clone();
    record.lease_duration_seconds = Some(record.lease_duration_seconds.unwrap_or(3) + 1);
    store
        .replace(&key, record, &current.resource_version)
        .await
        .unwrap();
    holder.signal(Signal::SIGTERM);
    holder.exit(LIMIT).await;
    let lines = watch.stdout_until("free").await;
    let held: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("holder edit-a"))
        .collect();
    assert!(held.is_empty(), "the same holder line again: {lines:?}");
    watch.signal(Signal::SIGTERM);
    watch.exit(LIMIT).await;
}

#[actix_rt::test]
async fn the_waiting_line_never_names_the_waiter_itself() {
    let cli = Cli::admin().await;
    let mut holder = cli.spawn(&["lock", "queue", "-c", "echo held; exec sleep 1"]);
    holder.stdout_line("held").await;
    let waiter = cli
        .run(&[
            "lock",
            "queue",
            "--identity",
            "waiter-b",
            "--timeout",
            "30s",
            "-c",
            "echo got",
        ])
        .await;
    assert_eq!(waiter.code, Some(0), "{waiter:?}");
    assert!(waiter.stdout.contains("got"), "{waiter:?}");
    assert!(waiter.stderr.contains("waiting for"), "{waiter:?}");
    assert!(!waiter.stderr.contains("held by waiter-b"), "{waiter:?}");
    holder.exit(LIMIT).await;
}
