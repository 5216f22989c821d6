//! `dsync lock` when the API server goes away for good while the command runs: nothing tells
//! the CLI that its lease is lost, so its term must end at its own deadline (the renew
//! deadline) and the command's whole group be stopped then. A test binary of its own, because
//! it kills the API server its harness shares with every test in the binary.
#![cfg(all(feature = "cli", feature = "testing"))]

mod support;

use std::time::{Duration, Instant};

use support::apiserver::Harness;
use support::cli::*;

#[actix_rt::test]
async fn an_api_server_that_is_gone_ends_the_term_and_the_command_group_within_the_renew_deadline()
{
    let cli = Cli::admin().await;
    // Renew deadline 1.5 s (FAST), then --kill-after 1 s: the command and its grandchild
    // ignore SIGTERM.
    let mut holder = cli.spawn(&[
        "lock",
        "outage",
        "--kill-after",
        "1s",
        "--",
        "sh",
        "-c",
        STUBBORN,
    ]);
    let pids = numbers(&holder.stdout_line("pids").await);
    holder.stdout_line("holder").await;

    tokio::task::spawn_blocking(|| Harness::get().kill())
        .await
        .unwrap();
    let gone_at = Instant::now();
    let (status, stderr) = holder.exit(LIMIT).await;
    let stopped_in = gone_at.elapsed();
    assert_eq!(status.code(), Some(LOST), "{stderr}");
    assert!(stderr.contains("lost lock"), "{stderr}");
    assert!(stderr.contains("SIGKILL"), "{stderr}");
    for pid in pids {
        assert!(gone(pid), "process {pid} of the command's group survived");
    }
    // The promise: within the renew deadline (counted from the last renewal, so at most
    // 1.5 s after the server went away) plus --kill-after; slack for a loaded machine.
    assert!(
        stopped_in < Duration::from_millis(1500 + 1000) + Duration::from_secs(3),
        "the group was stopped {stopped_in:?} after the API server went away"
    );
    println!("API server gone: command group stopped {stopped_in:?} later");
}
