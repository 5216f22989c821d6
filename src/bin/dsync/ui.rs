//! What `dsync` tells people on stderr, and the signals they send it.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use dsync::observe::Observation;
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::GiveUp;
use crate::duration::human;
use crate::exit::{self, Failure};

/// Messages on stderr: `dsync: ...`, silenced by `--quiet` (errors never are).
#[derive(Debug, Clone)]
pub struct Ui {
    quiet: bool,
    tty: bool,
    sink: Sink,
}

/// Where messages go.
#[derive(Debug, Clone)]
enum Sink {
    Stderr,
    /// Collected, for tests.
    #[cfg(test)]
    Memory(std::sync::Arc<std::sync::Mutex<Vec<String>>>),
}

impl Ui {
    /// A UI; stderr decides whether progress lines repeat.
    pub fn new(quiet: bool) -> Self {
        Ui {
            quiet,
            tty: std::io::stderr().is_terminal(),
            sink: Sink::Stderr,
        }
    }

    /// A UI that collects its lines, as if stderr were a terminal (`tty`) or not.
    #[cfg(test)]
    fn collecting(tty: bool) -> (Self, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let lines = std::sync::Arc::default();
        let ui = Ui {
            quiet: false,
            tty,
            sink: Sink::Memory(std::sync::Arc::clone(&lines)),
        };
        (ui, lines)
    }

    /// Whether progress is shown at all.
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// Whether stderr is a terminal (then waiting prints a line every few seconds).
    pub fn tty(&self) -> bool {
        self.tty
    }

    /// An informational line.
    pub fn info(&self, message: &str) {
        if !self.quiet {
            self.line(message);
        }
    }

    /// A warning: something went wrong that does not change the outcome.
    pub fn warn(&self, message: &str) {
        if !self.quiet {
            self.line(&format!("warning: {message}"));
        }
    }

    /// An error: always printed.
    pub fn error(&self, message: &str) {
        self.line(&format!("error: {message}"));
    }

    fn line(&self, message: &str) {
        match &self.sink {
            Sink::Stderr => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "dsync: {message}");
            }
            #[cfg(test)]
            Sink::Memory(lines) => lines.lock().unwrap().push(format!("dsync: {message}")),
        }
    }
}

/// "held by pod-b (free in ~12s by this observer)": what an observer knows about the holder.
pub fn holder_phrase(observation: &Observation, now: Instant) -> String {
    let free_in = match (observation.changed_at, observation.lease_duration) {
        (Some(changed), Some(duration)) => {
            Some((changed + duration).saturating_duration_since(now))
        }
        _ => None,
    };
    describe_holder(
        observation.holder.as_deref(),
        observation.fencing_token,
        observation.expired,
        free_in,
    )
}

/// The words of [`holder_phrase`]; `free_in` is judged from when this process saw the lease
/// change, never from the holder's clock.
pub fn describe_holder(
    holder: Option<&str>,
    token: Option<i32>,
    expired: bool,
    free_in: Option<Duration>,
) -> String {
    let Some(holder) = holder else {
        return "free".into();
    };
    let token = token.map(|t| format!(", token {t}")).unwrap_or_default();
    if expired {
        return format!("held by {holder}{token} (looks expired to this observer)");
    }
    match free_in {
        Some(left) => format!(
            "held by {holder}{token} (free in ~{} by this observer, unless renewed)",
            human(round_up(left))
        ),
        None => format!("held by {holder}{token}"),
    }
}

fn round_up(d: Duration) -> Duration {
    if d.subsec_nanos() == 0 || d < Duration::from_secs(1) {
        d
    } else {
        Duration::from_secs(d.as_secs() + 1)
    }
}

/// Prints why we wait while `waiting` runs: once when the holder changes, and on a terminal
/// also every few seconds. Ends when dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long the lease may name this process's identity while it still waits before that is
/// reported (as another process of the same identity holding it): our own grant lands faster.
const TWIN_AFTER: Duration = Duration::from_secs(1);

/// How often a terminal is reminded that we still wait.
const REMIND_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Follows `changes` (an observer of the lease waited for) and describes `what`
    /// (`lock "nightly"`).
    pub fn follow(
        ui: &Ui,
        what: String,
        own: &str,
        mut changes: watch::Receiver<Observation>,
    ) -> Progress {
        let ui = ui.clone();
        let own = own.to_owned();
        let started = tokio::time::Instant::now();
        let task = tokio::task::spawn_local(async move {
            if ui.quiet() {
                return;
            }
            let mut said: Option<Option<String>> = None;
            let mut remind =
                tokio::time::interval_at(tokio::time::Instant::now() + REMIND_EVERY, REMIND_EVERY);
            loop {
                let observation = changes.borrow_and_update().clone();
                // The lease naming this process's identity is, almost always, our own grant
                // landing (this task ends with the wait, and "acquired" follows): it is said
                // only if it lasts, as another process of the same identity holding it.
                let ours = observation.holder.as_deref() == Some(own.as_str());
                let twin = tokio::time::sleep(if ours { TWIN_AFTER } else { Duration::ZERO });
                if observation.synced && !ours && said.as_ref() != Some(&observation.holder) {
                    ui.info(&format!(
                        "waiting for {what}: {}",
                        holder_phrase(&observation, Instant::now())
                    ));
                    said = Some(observation.holder.clone());
                }
                tokio::select! {
                    _ = twin, if ours && observation.synced && said.as_ref() != Some(&observation.holder) => {
                        ui.info(&format!(
                            "waiting for {what}: {} (this identity, in another process)",
                            holder_phrase(&observation, Instant::now())
                        ));
                        said = Some(observation.holder.clone());
                    }
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = remind.tick(), if ui.tty() => {
                        let observation = changes.borrow().clone();
                        ui.info(&format!(
                            "still waiting for {what} after {}: {}",
                            human(started.elapsed()),
                            holder_phrase(&observation, Instant::now())
                        ));
                    }
                }
            }
        });
        Progress { task }
    }

    /// Prints `describe()` every few seconds on a terminal while it says something (no
    /// observer to follow; `None`: nothing to wait for right now).
    pub fn remind(ui: &Ui, describe: impl Fn() -> Option<String> + 'static) -> Progress {
        let ui = ui.clone();
        let started = tokio::time::Instant::now();
        let task = tokio::task::spawn_local(async move {
            if ui.quiet() || !ui.tty() {
                return;
            }
            let mut remind =
                tokio::time::interval_at(tokio::time::Instant::now() + REMIND_EVERY, REMIND_EVERY);
            loop {
                remind.tick().await;
                if let Some(what) = describe() {
                    ui.info(&format!(
                        "still waiting after {}: {what}",
                        human(started.elapsed()),
                    ));
                }
            }
        });
        Progress { task }
    }
}

/// The signal the command's group gets when dsync receives `received`: the same, except
/// SIGTSTP (Ctrl-Z), which becomes SIGTERM: a suspended command would keep the lease held
/// without working, and dsync does not let itself be suspended while it holds one.
pub fn forwarded(received: Signal) -> Signal {
    match received {
        Signal::SIGTSTP => Signal::SIGTERM,
        other => other,
    }
}

/// The signals that end dsync's command (forwarded to its group, see [`forwarded`]) instead
/// of killing, or suspending, dsync at once: SIGINT (Ctrl-C), SIGTERM, SIGHUP (a closed
/// terminal, an ended ssh session), SIGQUIT (Ctrl-\\) and SIGTSTP (Ctrl-Z).
pub const HANDLED: [Signal; 5] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGTSTP,
];

/// The [`HANDLED`] signals sent to dsync, published so that every part that runs a command
/// can forward them to it. Each signal received bumps the channel, even the same one twice.
#[derive(Debug, Clone)]
pub struct Interrupts {
    rx: watch::Receiver<Option<Signal>>,
}

impl Interrupts {
    /// Takes the [`HANDLED`] signals over from their default.
    pub fn install() -> Result<Interrupts, Failure> {
        let mut streams = Vec::with_capacity(HANDLED.len());
        for handled in HANDLED {
            let stream = signal(SignalKind::from_raw(handled as i32)).map_err(cannot_listen)?;
            streams.push((handled, stream));
        }
        let (tx, rx) = watch::channel(None);
        tokio::task::spawn_local(async move {
            loop {
                let next = streams.iter_mut().map(|(handled, stream)| {
                    let handled = *handled;
                    Box::pin(async move { stream.recv().await.map(|()| handled) })
                });
                let (received, _, _) = futures::future::select_all(next).await;
                let Some(received) = received else {
                    return;
                };
                tracing::debug!(%received, "signal");
                if tx.send(Some(received)).is_err() {
                    return;
                }
            }
        });
        Ok(Interrupts { rx })
    }

    /// The latest signal, if any arrived yet (and marks it seen).
    pub fn latest(&mut self) -> Option<Signal> {
        *self.rx.borrow_and_update()
    }

    /// Waits for the next signal. Cancel-safe.
    pub async fn recv(&mut self) -> Signal {
        loop {
            if self.rx.changed().await.is_err() {
                // The listener is gone (never, while the System runs): nothing will come.
                return std::future::pending().await;
            }
            if let Some(signal) = *self.rx.borrow_and_update() {
                return signal;
            }
        }
    }
}

/// Store failures the library reports (the `last_error` of an election, a lock or an
/// observer, cleared by its next success): each distinct one is told on stderr once while
/// they last, and they end dsync after `--give-up-after`.
#[derive(Debug)]
pub struct Failures {
    ui: Ui,
    what: String,
    give_up: GiveUp,
    /// Since when calls have failed without a success in between.
    since: Option<tokio::time::Instant>,
    /// What was told since then.
    told: Vec<String>,
    last: Option<String>,
}

impl Failures {
    /// Nothing failing yet; `what` names the lease (`election "controller"`).
    pub fn new(ui: &Ui, what: &str, give_up: GiveUp) -> Self {
        Failures {
            ui: ui.clone(),
            what: what.to_owned(),
            give_up,
            since: None,
            told: Vec::new(),
            last: None,
        }
    }

    /// The latest error as of now (`None`: the last call succeeded).
    pub fn update(&mut self, error: Option<&str>) {
        match error {
            None => {
                if self.since.take().is_some() {
                    self.ui
                        .info(&format!("{}: the API server answers again", self.what));
                }
                self.told.clear();
                self.last = None;
            }
            Some(error) => {
                self.since.get_or_insert_with(tokio::time::Instant::now);
                if !self.told.iter().any(|t| t == error) {
                    let bound = match self.give_up.0 {
                        Some(after) => format!("giving up after {}", human(after)),
                        None => "never giving up".into(),
                    };
                    self.ui
                        .error(&format!("{}: {error} (retrying; {bound})", self.what));
                    self.told.push(error.to_owned());
                }
                self.last = Some(error.to_owned());
            }
        }
    }

    /// When to give up, while failing (never with `--give-up-after never`).
    pub fn give_up_at(&self) -> Option<tokio::time::Instant> {
        Some(self.since? + self.give_up.0?)
    }

    /// The failure to exit with when giving up.
    pub fn gave_up(&self) -> Failure {
        Failure::new(
            exit::DSYNC_FAILED,
            format!(
                "{}: the API server kept failing for {} (--give-up-after): {}",
                self.what,
                human(self.give_up.0.unwrap_or_default()),
                self.last.as_deref().unwrap_or("unknown error")
            ),
        )
    }
}

/// Follows `status` (an election's, a lock's or an observer's), tells its store failures
/// (see [`Failures`]) and returns the failure to exit with once they lasted
/// `--give-up-after`; never returns otherwise.
pub fn report_failures<T, F: Fn(&T) -> Option<String>>(
    ui: &Ui,
    what: &str,
    give_up: GiveUp,
    mut status: watch::Receiver<T>,
    last_error: F,
) -> impl Future<Output = Failure> + use<T, F> {
    let mut failures = Failures::new(ui, what, give_up);
    let mut open = true;
    async move {
        loop {
            let error = last_error(&status.borrow_and_update());
            failures.update(error.as_deref());
            let give_up_at = failures.give_up_at();
            tokio::select! {
                changed = status.changed(), if open => open = changed.is_ok(),
                _ = tokio::time::sleep_until(give_up_at.unwrap_or_else(tokio::time::Instant::now)), if give_up_at.is_some() => {
                    return failures.gave_up();
                }
                // Closed and not failing: nothing more will come.
                () = std::future::pending(), if !open && give_up_at.is_none() => {}
            }
        }
    }
}

fn cannot_listen(e: std::io::Error) -> Failure {
    Failure::new(
        exit::DSYNC_FAILED,
        format!("cannot listen for signals: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_who_holds_and_when_it_frees_by_this_observer() {
        assert_eq!(describe_holder(None, None, false, None), "free");
        assert_eq!(
            describe_holder(
                Some("pod-b"),
                Some(4),
                false,
                Some(Duration::from_millis(11_200))
            ),
            "held by pod-b, token 4 (free in ~12s by this observer, unless renewed)"
        );
        assert_eq!(
            describe_holder(Some("pod-b"), Some(4), true, Some(Duration::ZERO)),
            "held by pod-b, token 4 (looks expired to this observer)"
        );
        assert_eq!(
            describe_holder(Some("pod-b"), None, false, None),
            "held by pod-b"
        );
    }
    #[actix::test]
    async fn each_distinct_failure_is_told_once_and_gives_up_after_the_bound() {
        tokio::time::pause();
        let (ui, lines) = Ui::collecting(false);
        let (tx, rx) = watch::channel(None::<String>);
        let give_up = GiveUp(Some(Duration::from_secs(10)));
        let reporter = tokio::task::spawn_local(async move {
            report_failures(&ui, "election \"x\"", give_up, rx, Clone::clone).await
        });
        let forbidden = Some("forbidden to get leases".to_owned());
        for _ in 0..5 {
            // Retries with the same answer.
            tx.send_replace(forbidden.clone());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tx.send_replace(Some("get timed out after 5s".into()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send_replace(None); // a success: the count starts over
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send_replace(forbidden.clone());
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!reporter.is_finished(), "gave up before 10 s of failures");
        tx.send_replace(forbidden.clone());
        let failure = tokio::time::timeout(Duration::from_secs(2), reporter)
            .await
            .expect("gives up 10 s after the failures began")
            .unwrap();
        assert_eq!(failure.code, exit::DSYNC_FAILED);
        assert!(
            failure.message.contains("forbidden") && failure.message.contains("10s"),
            "{}",
            failure.message
        );
        let lines = lines.lock().unwrap().clone();
        assert_eq!(
            lines,
            [
                "dsync: error: election \"x\": forbidden to get leases (retrying; giving up after 10s)",
                "dsync: error: election \"x\": get timed out after 5s (retrying; giving up after 10s)",
                "dsync: election \"x\": the API server answers again",
                "dsync: error: election \"x\": forbidden to get leases (retrying; giving up after 10s)",
            ]
        );
    }

    #[test]
    fn ctrl_z_ends_the_command_instead_of_suspending_it() {
        assert_eq!(forwarded(Signal::SIGTSTP), Signal::SIGTERM);
        for same in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            assert_eq!(forwarded(same), same);
        }
    }

    #[actix::test]
    async fn waiting_repeats_every_few_seconds_on_a_terminal_only() {
        tokio::time::pause();
        for tty in [true, false] {
            let (ui, lines) = Ui::collecting(tty);
            let progress = Progress::remind(&ui, || Some("pod-b holds it".into()));
            tokio::time::sleep(REMIND_EVERY * 3 + Duration::from_millis(1)).await;
            drop(progress);
            tokio::time::sleep(REMIND_EVERY * 2).await;
            let lines = lines.lock().unwrap().clone();
            if tty {
                assert_eq!(lines.len(), 3, "{lines:?}");
                assert_eq!(lines[0], "dsync: still waiting after 5s: pod-b holds it");
            } else {
                assert!(lines.is_empty(), "{lines:?}");
            }
        }
    }
}
