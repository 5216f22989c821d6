//! `dsync lock` and `dsync run`: wait for a lease, run the command while it is held, stop the
//! command's whole process group when the lease is lost (or dsync is told to stop), and give
//! the lease up only after that group has exited.
//!
//! Safety rules (README "Safety rules" 13): `cli-kill-deadline` (SIGKILL lands at least a
//! retry period before anyone else may take the lease: it is timed from the term's own end,
//! and `--kill-after` is bounded by lease − renew deadline − retry period) and
//! `cli-group-dies-with-dsync` (the watchdog in `watchdog.rs`).

use std::ffi::OsString;
use std::process::ExitStatus;
use std::sync::Arc;

use dsync::store::LeaseKey;
use dsync::{Dsync, Error, Term};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::child::{self, Child, SpawnError};
use crate::exit::{self, Failure};
use crate::ui::{self, Interrupts, Progress, Ui};
use crate::{LockArgs, RunArgs, Stop};

/// How a command that ran under a lease ended.
#[derive(Debug)]
enum Outcome {
    /// It exited by itself.
    Exited(ExitStatus),
    /// The lease was lost (or the term ended) first; the group was stopped.
    Lost(ExitStatus),
    /// dsync was sent a signal, forwarded it, and the group then exited.
    Interrupted(ExitStatus),
}

impl Outcome {
    fn status(&self) -> ExitStatus {
        match self {
            Outcome::Exited(s) | Outcome::Lost(s) | Outcome::Interrupted(s) => *s,
        }
    }
}

/// The environment a guarded command gets.
fn lease_env(lease: &LeaseKey, term: &Term, slot: Option<usize>) -> Vec<(String, String)> {
    let mut env = vec![
        ("DSYNC_LEASE".to_owned(), lease.name.clone()),
        ("DSYNC_NAMESPACE".to_owned(), lease.namespace.clone()),
        ("DSYNC_HOLDER".to_owned(), term.holder().to_owned()),
        (
            "DSYNC_FENCING_TOKEN".to_owned(),
            term.fencing_token().to_string(),
        ),
    ];
    if let Some(slot) = slot {
        env.push(("DSYNC_SLOT".to_owned(), slot.to_string()));
    }
    env
}

/// When the group gets SIGKILL after the term ended: `kill_after` after the term's own end
/// (its deadline, or when dsync ended it), not after this thread noticed: a late wake-up
/// (a slow or starved thread) must not push SIGKILL towards the moment another holder may
/// take the lease. With `--kill-after` within its bound, SIGKILL lands at the latest at the
/// last renewal + renew deadline + kill-after <= lease duration - retry period.
fn kill_deadline(term: &Term, kill_after: std::time::Duration) -> Instant {
    let now = Instant::now();
    let ended = term.ended_at().map_or(now, Instant::from_std).min(now);
    ended + kill_after
}

/// Runs `child` while `term` lasts. Returns once the child has exited and nothing is left in
/// its process group: by itself; after the term ended (`stop.signal`, then SIGKILL
/// `stop.kill_after` after the term's end); or after dsync was interrupted (the signal
/// forwarded, see [`ui::forwarded`], then SIGKILL after `stop.kill_after`). The group's
/// watchdog is disarmed only then.
async fn supervise(
    child: &mut Child,
    term: &Term,
    interrupts: &mut Interrupts,
    stop: &Stop,
    ui: &Ui,
    ended: &str,
) -> Outcome {
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    let mut lost = false;
    let mut interrupted: Option<Signal> = None;
    if let Some(signal) = interrupts.latest() {
        // Interrupted between the grant and the start of the command.
        child.signal(ui::forwarded(signal));
        interrupted = Some(signal);
        kill_at = Some(Instant::now() + stop.kill_after);
    }
    let status = loop {
        tokio::select! {
            // A signal sent with the same breath as a stop (or a loss) wins: the command gets
            // what the user sent.
            biased;
            status = child.wait() => break status,
            signal = interrupts.recv() => {
                let sent = ui::forwarded(signal);
                ui.info(&format!("{signal}: sending {sent} to the command (process group {})", child.group()));
                child.signal(sent);
                interrupted.get_or_insert(signal);
                kill_at.get_or_insert(Instant::now() + stop.kill_after);
            }
            _ = term.cancelled(), if !lost => {
                lost = true;
                let deadline = kill_deadline(term, stop.kill_after);
                if kill_at.is_none() {
                    ui.error(&format!(
                        "{ended} (fencing token {}) while the command ran: sending {} to its process group {}",
                        term.fencing_token(), stop.signal, child.group()
                    ));
                    child.signal(stop.signal);
                }
                // Already stopping (interrupted): SIGKILL no later than the term's end allows.
                kill_at = Some(kill_at.map_or(deadline, |at| at.min(deadline)));
            }
            _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() && !killed => {
                ui.error(&format!(
                    "the command's process group {} did not exit within {}: SIGKILL",
                    child.group(), crate::duration::human(stop.kill_after)
                ));
                child.signal(Signal::SIGKILL);
                killed = true;
            }
        }
    };
    // The direct child is gone; whatever it left in its group still works under the lease.
    match kill_at {
        Some(at) => {
            child.stop(None, at).await;
        }
        None => child.stop_leftovers(stop.signal, stop.kill_after).await,
    }
    child.finish().await;
    if lost {
        Outcome::Lost(status)
    } else if interrupted.is_some() {
        Outcome::Interrupted(status)
    } else {
        Outcome::Exited(status)
    }
}

/// `dsync lock`.
pub async fn lock(
    dsync: &Dsync,
    args: &LockArgs,
    stop: &Stop,
    mut interrupts: Interrupts,
    ui: &Ui,
) -> Result<i32, Failure> {
    match args.permits {
        None => lock_one(dsync, args, stop, &mut interrupts, ui).await,
        Some(n) => lock_permit(dsync, args, stop, n, &mut interrupts, ui).await,
    }
}

async fn lock_one(
    dsync: &Dsync,
    args: &LockArgs,
    stop: &Stop,
    interrupts: &mut Interrupts,
    ui: &Ui,
) -> Result<i32, Failure> {
    let lock = dsync.lock(&args.name)?;
    let what = format!("lock {:?}", args.name);
    let term = match lock.try_lock().await {
        Ok(term) => term,
        Err(Error::AlreadyLocked { holder, .. }) if args.try_ => {
            return Err(Failure::new(
                exit::TIMEOUT,
                format!("{what} is held by {holder} (--try: not waiting)"),
            ));
        }
        Err(Error::AlreadyLocked { .. }) => {
            let observer = dsync.observe_lock(&args.name)?;
            let _progress = Progress::follow(ui, what.clone(), dsync.identity(), observer.watch());
            let waited = async {
                match args.timeout {
                    Some(timeout) => lock.lock_timeout(timeout).await,
                    None => lock.lock().await,
                }
            };
            let failing = ui::report_failures(
                ui,
                &what,
                args.give_up.give_up_after,
                lock.watch_status(),
                |s| s.last_error.clone(),
            );
            // Dropping the wait (on a signal) hands a lock granted meanwhile straight back.
            let term = tokio::select! {
                term = waited => term,
                signal = interrupts.recv() => {
                    ui.info(&format!("{signal}: stopped waiting for {what}"));
                    observer.stop().await;
                    return Ok(exit::signalled(signal));
                }
                failure = failing => {
                    observer.stop().await;
                    return Err(failure);
                }
            };
            observer.stop().await;
            match term {
                Ok(term) => term,
                Err(Error::Timeout { after, .. }) => {
                    let holder = lock.holder();
                    return Err(not_granted(
                        &what,
                        after,
                        holder.as_deref().unwrap_or("nobody any more"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let lease = lock.lease();
    guarded(
        Guarded {
            args,
            stop,
            term: &term,
            lease: &lease,
            slot: None,
            what: &what,
        },
        interrupts,
        ui,
        lock.unlock(),
    )
    .await
}

async fn lock_permit(
    dsync: &Dsync,
    args: &LockArgs,
    stop: &Stop,
    permits: usize,
    interrupts: &mut Interrupts,
    ui: &Ui,
) -> Result<i32, Failure> {
    let semaphore = dsync.semaphore(&args.name, permits)?;
    let what = format!("a permit of semaphore {:?} ({permits} permits)", args.name);
    let permit = match semaphore.try_acquire().await {
        Ok(permit) => permit,
        Err(Error::NoFreeSlot { .. }) if args.try_ => {
            return Err(Failure::new(
                exit::TIMEOUT,
                format!(
                    "no free permit of semaphore {:?}: held by {} (--try: not waiting)",
                    args.name,
                    holders(&semaphore.holders())
                ),
            ));
        }
        Err(Error::NoFreeSlot { .. }) => {
            ui.info(&format!(
                "waiting for {what}: held by {}",
                holders(&semaphore.holders())
            ));
            let watched = semaphore.clone();
            let _progress = Progress::remind(ui, move || {
                Some(format!("permits held by {}", holders(&watched.holders())))
            });
            let waited = async {
                match args.timeout {
                    Some(timeout) => semaphore.acquire_timeout(timeout).await,
                    None => semaphore.acquire().await,
                }
            };
            // Every slot is on the same API server: the first one's failures stand for all.
            let slot = semaphore.watch_slot(0).expect("a semaphore has a slot 0");
            let failing = ui::report_failures(ui, &what, args.give_up.give_up_after, slot, |s| {
                s.last_error.clone()
            });
            tokio::select! {
                permit = waited => match permit {
                    Ok(permit) => permit,
                    Err(Error::Timeout { after, .. }) => {
                        return Err(not_granted(&what, after, &holders(&semaphore.holders())));
                    }
                    Err(e) => return Err(e.into()),
                },
                signal = interrupts.recv() => {
                    ui.info(&format!("{signal}: stopped waiting for {what}"));
                    return Ok(exit::signalled(signal));
                }
                failure = failing => return Err(failure),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let term = permit.term().clone();
    let (lease, slot) = (permit.lease(), permit.slot());
    let what = format!("slot {slot} of semaphore {:?}", args.name);
    let guard = Guarded {
        args,
        stop,
        term: &term,
        lease: &lease,
        slot: Some(slot),
        what: &what,
    };
    guarded(guard, interrupts, ui, permit.release()).await
}

/// A lock or a permit, granted: what the command runs under.
struct Guarded<'a> {
    args: &'a LockArgs,
    stop: &'a Stop,
    term: &'a Term,
    lease: &'a LeaseKey,
    slot: Option<usize>,
    what: &'a str,
}

/// Runs the command under a granted lock or permit, then gives it up with `release` (only
/// once the command's group has exited, or the command could not start).
async fn guarded(
    guard: Guarded<'_>,
    interrupts: &mut Interrupts,
    ui: &Ui,
    release: impl Future<Output = dsync::Result<()>>,
) -> Result<i32, Failure> {
    let Guarded {
        args,
        stop,
        term,
        lease,
        slot,
        what,
    } = guard;
    ui.info(&format!(
        "acquired {what} as {} with fencing token {}",
        term.holder(),
        term.fencing_token()
    ));
    let env = lease_env(lease, term, slot);
    let outcome = match Child::spawn(&args.command.argv(), &env) {
        Ok(mut child) => {
            let ended = format!("lost {what}");
            Ok(supervise(&mut child, term, interrupts, stop, ui, &ended).await)
        }
        Err(e) => Err(e),
    };
    match release.await {
        Ok(()) => ui.info(&format!("released {what}")),
        // Lost: nothing of ours to release.
        Err(Error::NotLocked { .. } | Error::NotLockHolder { .. } | Error::LockLost { .. }) => {}
        Err(e) => ui.warn(&format!(
            "could not release {what} (it frees when its lease expires): {}",
            exit::chain(&e)
        )),
    }
    finish_outcome(outcome, ui)
}

/// `--timeout` ran out.
fn not_granted(what: &str, after: std::time::Duration, held_by: &str) -> Failure {
    Failure::new(
        exit::TIMEOUT,
        format!(
            "{what} was not granted within {} (held by {held_by})",
            crate::duration::human(after)
        ),
    )
}

fn holders(holders: &[Option<String>]) -> String {
    let held: Vec<&str> = holders.iter().flatten().map(String::as_str).collect();
    if held.is_empty() {
        "nobody".into()
    } else {
        held.join(", ")
    }
}

/// The exit code of a command that ran (or could not start) under a lock.
fn finish_outcome(outcome: Result<Outcome, SpawnError>, ui: &Ui) -> Result<i32, Failure> {
    match outcome {
        Err(e) => Err(Failure::new(e.exit_code(), exit::chain(&e))),
        Ok(Outcome::Lost(status)) => {
            ui.error(&format!(
                "the lease was lost while the command ran; the command ended with {status}"
            ));
            Ok(exit::LOST)
        }
        Ok(outcome) => Ok(child::exit_code(outcome.status())),
    }
}

/// What the work of one term reports to `run`'s main loop.
#[derive(Debug)]
enum TermReport {
    Ran(Outcome),
    CannotStart(SpawnError),
}

/// `dsync run`.
pub async fn run(
    dsync: &Dsync,
    args: &RunArgs,
    stop: &Stop,
    mut interrupts: Interrupts,
    ui: &Ui,
) -> Result<i32, Failure> {
    let election = dsync.election(&args.election)?;
    let what = format!("election {:?}", args.election);
    let (reports, mut reported) = mpsc::unbounded_channel::<TermReport>();
    let work = Arc::new(TermWork {
        command: args.command.argv(),
        stop: stop.clone(),
        ui: ui.clone(),
        what: what.clone(),
        interrupts: interrupts.clone(),
        lease: election.lease(),
    });
    // The command is the term's guarded work: the library releases the lease (at a stop, a
    // handoff, a preferred holder) only after this future returned, i.e. after the group exited.
    election.when_elected(move |term| {
        let work = work.clone();
        let reports = reports.clone();
        async move {
            let report = work.run_term(term).await;
            let _ = reports.send(report);
        }
    })?;
    ui.info(&format!("campaigning for {what} as {}", dsync.identity()));
    let _progress = {
        let election = election.clone();
        Progress::remind(ui, move || match election.holder() {
            _ if election.is_leader() => None,
            Some(leader) => Some(format!("{leader} leads")),
            None => Some("no leader yet".into()),
        })
    };
    let failing = ui::report_failures(
        ui,
        &what,
        args.give_up.give_up_after,
        election.watch_status(),
        |s| s.last_error.clone(),
    );
    tokio::pin!(failing);
    let code = loop {
        tokio::select! {
            failure = &mut failing => {
                // Stopping ends a running term's command first (as on SIGTERM).
                if let Err(e) = election.stop().await {
                    ui.warn(&format!("stopping {what}: {}", exit::chain(&e)));
                }
                break Err(failure);
            }
            report = reported.recv() => {
                let Some(report) = report else {
                    return Err(Failure::new(exit::DSYNC_FAILED, format!("{what} stopped unexpectedly")));
                };
                match report {
                    TermReport::CannotStart(e) => break Err(Failure::new(e.exit_code(), exit::chain(&e))),
                    TermReport::Ran(Outcome::Exited(status)) => {
                        ui.info(&format!("the command exited ({status}) while leading: stepping down"));
                        break Ok(child::exit_code(status));
                    }
                    TermReport::Ran(Outcome::Interrupted(status)) => break Ok(child::exit_code(status)),
                    TermReport::Ran(Outcome::Lost(status)) => {
                        if args.once {
                            ui.error(&format!("the term ended while the command ran (it ended with {status}); --once: exiting"));
                            break Ok(exit::LOST);
                        }
                        ui.info(&format!("the term ended; the command ended with {status}; campaigning again"));
                    }
                }
            }
            signal = interrupts.recv() => {
                // The running term's work saw the same signal and forwards it; stopping the
                // election waits for that work (the command's group), then releases.
                ui.info(&format!("{signal}: stopping"));
                if let Err(e) = election.stop().await {
                    ui.warn(&format!("stopping {what}: {}", exit::chain(&e)));
                }
                break Ok(match reported.try_recv() {
                    Ok(TermReport::Ran(outcome)) => child::exit_code(outcome.status()),
                    _ => exit::signalled(signal),
                });
            }
        }
    };
    if let Err(e) = election.stop().await
        && !matches!(e, Error::Stopped { .. })
    {
        ui.warn(&format!("stopping {what}: {}", exit::chain(&e)));
    }
    code
}

/// What each term of `run` does: start the command, supervise it for the term.
struct TermWork {
    command: Vec<OsString>,
    stop: Stop,
    ui: Ui,
    what: String,
    interrupts: Interrupts,
    lease: LeaseKey,
}

impl TermWork {
    async fn run_term(&self, term: Term) -> TermReport {
        let mut interrupts = self.interrupts.clone();
        self.ui.info(&format!(
            "elected: leading {} with fencing token {}; starting the command",
            self.what,
            term.fencing_token()
        ));
        let env = lease_env(&self.lease, &term, None);
        match Child::spawn(&self.command, &env) {
            Ok(mut child) => TermReport::Ran(
                supervise(
                    &mut child,
                    &term,
                    &mut interrupts,
                    &self.stop,
                    &self.ui,
                    &format!("the term of {} ended", self.what),
                )
                .await,
            ),
            Err(e) => TermReport::CannotStart(e),
        }
    }
}
