//! The `dsync` command never lets its command outlive the lease, on a real kube-apiserver
//! (tests/apiserver), each CLI a process of its own: signals that would kill (or suspend)
//! dsync end the command's whole process group first, a closed terminal does, dsync's own
//! death by SIGKILL does (its watchdog), and with the API server out of reach SIGKILL lands a
//! retry period before another holder may take the lease.
//!
//! Each test has a holder whose command leaves a grandchild in its group, and a waiter whose
//! command checks, as it starts, that none of the holder's processes is left
//! ([`CHECKS_GONE`]): the rule is checked at the moment another replica's command starts,
//! not after. Each prints the gaps it measured.
#![cfg(all(feature = "cli", feature = "testing"))]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use support::apiserver::Harness;
use support::cli::*;

/// The holder's command: says which signal it got and exits; its grandchild (`sleep`) is in
/// its group and dies of the signal itself. No core files (SIGQUIT).
const TRAPS: &str = r#"ulimit -c 0; for s in HUP QUIT TERM INT; do trap "echo got $s; exit 0" $s; done; sleep 1000 & echo "pids $$ $!"; wait; wait"#;

/// A waiter for `lock NAME` whose command checks that `pids` are gone as it starts.
fn waiter(cli: &Cli, name: &str, pids: &[i32]) -> Proc {
    let mut cmd = cli.command(&["lock", name, "--", "sh", "-c", CHECKS_GONE]);
    cmd.env(
        "PIDS",
        pids.iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(" "),
    );
    Proc::from(cmd, "waiter")
}

/// The waiter's command started with none of the holder's processes left, after `gone`:
/// returns how long after.
async fn started_after_the_group_was_gone(waiter: &mut Proc, gone: SystemTime) -> f64 {
    let (started, alive) = checked(&waiter.stdout_line("start").await);
    assert_eq!(
        alive, "",
        "the waiter's command started while the holder's processes {alive} ran"
    );
    let gap = gap_ms(gone, started);
    assert!(
        gap > 0.0,
        "the waiter's command started {gap:.1} ms before the holder's group was seen gone"
    );
    gap
}

#[actix_rt::test]
async fn cli_hangup_quit_and_ctrl_z_end_the_group_before_the_lease_is_released() {
    let cli = Cli::admin().await.with_timing(&SLOW);
    for (signal, received) in [
        (Signal::SIGHUP, "got HUP"),
        // (The grandchild, started with `&` by a non-interactive shell, ignores SIGQUIT: it
        // gets SIGKILL after --kill-after, 3 s, before the lease is released.)
        (Signal::SIGQUIT, "got QUIT"),
        // Ctrl-Z: the command is ended with SIGTERM, not suspended under the lease.
        (Signal::SIGTSTP, "got TERM"),
    ] {
        let name = format!("sig-{}", signal.as_str().to_lowercase());
        let mut holder = cli.spawn(&["lock", &name, "--", "sh", "-c", TRAPS]);
        let pids = numbers(&holder.stdout_line("pids").await);
        let mut waiter = waiter(&cli, &name, &pids);
        waiter.stderr_line("waiting for lock").await;

        let sent = SystemTime::now();
        let gone = tokio::spawn(all_gone(pids.clone()));
        holder.signal(signal);
        holder.stdout_line(received).await;
        let (status, stderr) = holder.exit(LIMIT).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{signal}: dsync exits with the command's code: {stderr}"
        );
        let gone = gone.await.unwrap();
        let after = started_after_the_group_was_gone(&mut waiter, gone).await;
        let (status, _) = waiter.exit(LIMIT).await;
        assert_eq!(status.code(), Some(0));
        let handed_over = gap_ms(sent, gone) + after;
        assert!(
            handed_over < 5_000.0,
            "{signal}: the waiter started {handed_over:.0} ms after the signal: by expiry \
             (10 s), not by release"
        );
        println!(
            "{signal}: group gone {:.1} ms after the signal; the next holder's command started \
             {after:.1} ms after that",
            gap_ms(sent, gone)
        );
    }
}

/// A pseudo-terminal: its master, and its slave side opened. Both close-on-exec from the
/// start, or processes the other tests start meanwhile could keep the master open.
fn pseudo_terminal() -> (nix::pty::PtyMaster, std::fs::File) {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    let master =
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).unwrap();
    nix::pty::grantpt(&master).unwrap();
    nix::pty::unlockpt(&master).unwrap();
    let name = nix::pty::ptsname_r(&master).unwrap();
    // std opens files close-on-exec.
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(name)
        .unwrap();
    (master, slave)
}

#[actix_rt::test]
async fn cli_closed_terminal_ends_the_group_before_the_lease_is_released() {
    let cli = Cli::admin().await.with_timing(&SLOW);
    // dsync as the session leader of a pseudo-terminal (as a login shell's job would be, or a
    // command run over ssh): closing the terminal's master side hangs it up.
    let (master, slave) = pseudo_terminal();
    let mut cmd = cli.wrapped(
        &["setsid", "--ctty"],
        &["lock", "tty", "--", "sh", "-c", TRAPS],
    );
    cmd.stdin(Stdio::from(slave));
    let mut holder = Proc::from(cmd, "dsync on a terminal");
    let pids = numbers(&holder.stdout_line("pids").await);
    let mut waiter = waiter(&cli, "tty", &pids);
    waiter.stderr_line("waiting for lock").await;

    let closed = SystemTime::now();
    let gone = tokio::spawn(all_gone(pids.clone()));
    drop(master);
    holder.stdout_line("got HUP").await;
    let (status, stderr) = holder.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let gone = gone.await.unwrap();
    let after = started_after_the_group_was_gone(&mut waiter, gone).await;
    waiter.exit(LIMIT).await;
    println!(
        "terminal closed: group gone {:.1} ms later; the next holder's command started \
         {after:.1} ms after that",
        gap_ms(closed, gone)
    );
}

#[actix_rt::test]
async fn cli_group_dies_with_dsync_even_by_sigkill_before_the_lease_can_expire() {
    // Lease 3 s: the waiter takes the lease by expiry (nobody releases it).
    let cli = Cli::admin().await;
    let (holder, pids) = stubborn(&cli, "killed", "1s").await;
    let mut waiter = waiter(&cli, "killed", &pids);
    waiter.stderr_line("waiting for lock").await;

    let gone = tokio::spawn(all_gone(pids.clone()));
    let killed = SystemTime::now();
    holder.signal(Signal::SIGKILL);
    let gone = gone.await.unwrap();
    let died_in = gap_ms(killed, gone);
    let (status, stderr) = holder.exit(LIMIT).await;
    assert_eq!(status.code(), None, "killed by SIGKILL: {stderr}");
    assert!(
        stderr.contains("dsync watchdog: dsync is gone"),
        "the watchdog says what it did: {stderr}"
    );
    // The lease (3 s) expires, at the earliest, 3 s after its last renewal.
    assert!(
        died_in < 1_000.0,
        "the command's group outlived dsync by {died_in:.1} ms"
    );
    let after = started_after_the_group_was_gone(&mut waiter, gone).await;
    waiter.exit(LIMIT).await;
    println!(
        "dsync SIGKILLed: its command's group gone {died_in:.1} ms later; the next holder's \
         command started {after:.1} ms after that (by expiry)"
    );
}

#[actix_rt::test]
async fn cli_kill_deadline_lands_a_retry_period_before_another_holder_when_the_api_server_is_cut() {
    // The default timing (15 s / 10 s / 2 s) and the default --kill-after (3 s).
    let cli = Cli::admin().await.with_timing(&[]);
    let proxy = Proxy::start(Harness::get().ready().port).await;
    let cut_off = cli.as_user(&proxy.kubeconfig(&cli.kubeconfig));
    let mut holder = cut_off.spawn(&["lock", "deadline", "--", "sh", "-c", STUBBORN]);
    let pids = numbers(&holder.stdout_line("pids").await);
    holder.stdout_line("holder").await;
    let mut waiter = waiter(&cli, "deadline", &pids);
    waiter.stderr_line("waiting for lock").await;

    // The holder can no longer reach the API server; the waiter can.
    let gone = tokio::spawn(all_gone(pids.clone()));
    let cut = Instant::now();
    let cut_at = SystemTime::now();
    proxy.cut();
    let gone = gone.await.unwrap();
    let (status, stderr) = holder.exit(LIMIT).await;
    assert_eq!(status.code(), Some(LOST), "{stderr}");
    assert!(
        stderr.contains("SIGKILL"),
        "the command ignores SIGTERM: {stderr}"
    );
    let margin = started_after_the_group_was_gone(&mut waiter, gone).await;
    waiter.exit(LIMIT).await;
    // The promise: SIGKILL at the latest at last renewal + renew deadline (10 s) + 3 s, the
    // other holder at the earliest at last renewal + lease duration (15 s): a retry period
    // (2 s) apart. Half of it, for a loaded machine's scheduling.
    assert!(
        margin >= 1_000.0,
        "the next holder's command started only {margin:.0} ms after the group was gone"
    );
    println!(
        "API server cut: group gone {:.0} ms after the cut (renew deadline 10 s + kill-after \
         3 s, from the last renewal); the next holder's command started {margin:.0} ms after \
         that (lease 15 s); test took {:?}",
        gap_ms(cut_at, gone),
        cut.elapsed()
    );
}

#[actix_rt::test]
async fn cli_kill_after_beyond_the_lease_margin_is_refused() {
    let cli = Cli::admin().await.with_timing(&[]);
    let refused = cli
        .run(&["lock", "x", "--kill-after", "4s", "--", "true"])
        .await;
    assert_eq!(refused.code, Some(USAGE), "{refused:?}");
    assert!(
        refused.stderr.contains("--kill-after 4s") && refused.stderr.contains("at most 3s"),
        "names the flag and the bound: {refused:?}"
    );
    let refused = cli
        .run(&["run", "x", "--kill-after", "4s", "--", "true"])
        .await;
    assert_eq!(refused.code, Some(USAGE), "{refused:?}");
    let fits = cli
        .run(&["lock", "x", "--kill-after", "3s", "--", "true"])
        .await;
    assert_eq!(fits.code, Some(0), "{fits:?}");
}

/// How long after its start a CLI told a failure on stderr, and what it printed before
/// exiting.
async fn told_and_gave_up(mut proc: Proc, needle: &str) -> (Duration, Duration, String) {
    let started = Instant::now();
    let line = proc.stderr_line(needle).await;
    let told = started.elapsed();
    let (status, rest) = proc.exit(LIMIT).await;
    let gave_up = started.elapsed();
    assert_eq!(status.code(), Some(DSYNC_FAILED), "{line}\n{rest}");
    (told, gave_up, format!("{line}\n{rest}"))
}

#[actix_rt::test]
async fn cli_errors_are_told_once_each_and_run_and_observe_give_up_after_the_bound() {
    // The default timing: the failure must be told within the renew deadline (10 s).
    let cli = Cli::admin().await.with_timing(&[]);
    let ready = Harness::get().ready();
    let forbidden = cli.as_user(&ready.norights);
    let away = cli.as_user(&unreachable(&ready.admin));
    for (who, user, needle) in [
        ("forbidden", &forbidden, "forbidden to get"),
        ("unreachable", &away, "store unavailable"),
    ] {
        for args in [
            &["run", "e", "--give-up-after", "3s", "--", "true"][..],
            &["observe", "e", "--give-up-after", "3s"],
        ] {
            let (told, gave_up, stderr) = told_and_gave_up(user.spawn(args), needle).await;
            assert!(
                told < Duration::from_secs(10),
                "{who} {args:?}: told after {told:?}: {stderr}"
            );
            assert!(
                gave_up >= Duration::from_secs(3),
                "{who} {args:?}: gave up after {gave_up:?}, before --give-up-after: {stderr}"
            );
            // Every retry fails the same way: one line, however many retries.
            let told_lines: Vec<&str> = stderr.lines().filter(|l| l.contains(needle)).collect();
            assert_eq!(
                told_lines.len(),
                2,
                "{who} {args:?}: told once, then the reason to exit: {stderr}"
            );
            assert!(
                told_lines[0].starts_with("dsync: error: ")
                    && told_lines[0].contains("(retrying; giving up after 3s)"),
                "{who} {args:?}: {stderr}"
            );
            assert!(
                told_lines[1].contains("kept failing for 3s (--give-up-after)"),
                "{who} {args:?}: says why it exits: {stderr}"
            );
            println!(
                "{who} {args:?}: told after {told:?}, gave up after {gave_up:?}: {}",
                told_lines[0]
            );
        }
    }
}

/// A waiter makes no request while its watch runs; when the API server goes away the
/// library retries its shared watch's list quietly and reads the lease itself only when the
/// holder looks expired and no list came within a lease duration: that read's failure is
/// the first the CLI can tell (about two lease durations; the library has no public view
/// of its watch's failures).
#[actix_rt::test]
async fn cli_a_waiting_lock_tells_an_api_server_that_went_away_within_two_lease_durations() {
    let cli = Cli::admin().await.with_timing(&[]);
    let mut holder = cli.spawn(&["lock", "away", "--", "sh", "-c", "echo held; sleep 1000"]);
    holder.stdout_line("held").await;
    let proxy = Proxy::start(Harness::get().ready().port).await;
    let cut_off = cli.as_user(&proxy.kubeconfig(&cli.kubeconfig));
    let mut waiter = cut_off.spawn(&["lock", "away", "--give-up-after", "3s", "--", "true"]);
    waiter.stderr_line("waiting for lock").await;
    proxy.refuse();
    let (told, gave_up, stderr) = told_and_gave_up(waiter, "(retrying; giving up after 3s)").await;
    assert!(
        told < Duration::from_secs(2 * 15 + 10),
        "told after {told:?}: {stderr}"
    );
    assert!(
        stderr.contains("kept failing for 3s (--give-up-after)"),
        "{stderr}"
    );
    println!("a waiting lock, API server gone: told after {told:?}, gave up after {gave_up:?}");
    holder.signal(Signal::SIGTERM);
    holder.exit(LIMIT).await;
}

/// `dsync __start -- CMD`, the first process of a command's group, started as dsync starts
/// it (a process group of its own, here by `bash -m`, whose job it is): the pid, once it has
/// stopped itself to wait for dsync's go.
async fn stopped_starter(marker: &std::path::Path) -> (tokio::process::Child, i32) {
    let script = format!(
        "set -m; '{}' __start -- sh -c 'echo ran > {}' & echo $!; exec sleep 1000",
        env!("CARGO_BIN_EXE_dsync"),
        marker.display()
    );
    let mut parent = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = lines(parent.stdout.take().unwrap());
    let pid: i32 = out.next_line().await.unwrap().unwrap().parse().unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .trim_start()
        .starts_with('T')
    {
        assert!(started.elapsed() < LIMIT, "dsync __start never stopped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (parent, pid)
}

#[actix_rt::test]
async fn cli_group_dies_with_dsync_even_before_the_watchdog_knows_the_group() {
    // Continued (as dsync does once the watchdog is armed), the first process becomes CMD.
    let ran = scratch("ran");
    let (_parent, pid) = stopped_starter(&ran).await;
    assert!(!ran.exists(), "the command ran before it was continued");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGCONT).unwrap();
    all_gone(vec![pid]).await;
    assert!(ran.exists(), "continued, it becomes the command");

    // Its parent (dsync) dies before continuing it: the command never runs.
    let never = scratch("ran");
    let (mut parent, pid) = stopped_starter(&never).await;
    parent.start_kill().unwrap();
    parent.wait().await.unwrap();
    let died = Instant::now();
    all_gone(vec![pid]).await;
    assert!(!never.exists(), "the command ran after its dsync died");
    println!(
        "dsync died before its command's group was guarded: the waiting process was gone \
         {:?} later, the command never ran",
        died.elapsed()
    );
}
