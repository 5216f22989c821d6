//! The command a lease guards: started in a process group of its own, so that a lost lease, a
//! forwarded signal or the end of the command stops *everything* it started (its children and
//! theirs), not only the process dsync forked. The lease is given up only after that group is
//! empty.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep, sleep_until};

use crate::exit;
use crate::watchdog::{Watchdog, WatchdogError};

/// How often an emptied-out group is checked for stragglers: nothing signals "the last
/// process of a group exited" to a process that is not their parent.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// What was wrong with the command itself.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program does not exist (exit code 127, as a shell).
    #[error("cannot run {program:?}: command not found")]
    NotFound {
        /// The program.
        program: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The program exists but cannot be executed (exit code 126, as a shell).
    #[error("cannot run {program:?}")]
    CannotExecute {
        /// The program.
        program: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The watchdog that kills the group if dsync dies could not be started: the command is
    /// not run without it.
    #[error("not running the command without a watchdog")]
    Watchdog(#[source] WatchdogError),
}

impl SpawnError {
    /// The shell's exit code for it.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => exit::NOT_FOUND,
            SpawnError::CannotExecute { .. } => exit::CANNOT_EXECUTE,
            SpawnError::Watchdog(_) => exit::DSYNC_FAILED,
        }
    }
}

/// A running command, leader of its own process group.
#[derive(Debug)]
pub struct Child {
    process: tokio::process::Child,
    group: Pid,
    /// Set once the direct child has been waited for.
    status: Option<ExitStatus>,
    /// Kills the group if dsync dies; disarmed by [`finish`](Self::finish).
    watchdog: Option<Watchdog>,
}

impl Child {
    /// Starts `command` (program and arguments) with `env` added to dsync's environment, in a
    /// new process group whose id is the child's pid, guarded by a [`Watchdog`] that kills
    /// the group if dsync dies. Standard input, output and error are dsync's.
    pub fn spawn(command: &[OsString], env: &[(String, String)]) -> Result<Child, SpawnError> {
        let (program, args) = command
            .split_first()
            .expect("clap requires a command after `--`");
        let mut watchdog = Watchdog::start().map_err(SpawnError::Watchdog)?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            // If dsync itself dies, the group is killed rather than left running unguarded.
            .kill_on_drop(true);
        let process = cmd.spawn().map_err(|source| {
            let program = program.to_string_lossy().into_owned();
            if source.kind() == io::ErrorKind::NotFound {
                SpawnError::NotFound { program, source }
            } else {
                SpawnError::CannotExecute { program, source }
            }
        })?;
        let pid = process
            .id()
            .expect("a child that was just spawned has a pid");
        let group = Pid::from_raw(pid as i32);
        if let Err(e) = watchdog.arm(group.as_raw()) {
            // Unguarded: it must not run. (Dropping `process` reaps it in the background.)
            let _ = killpg(group, Signal::SIGKILL);
            return Err(SpawnError::Watchdog(e));
        }
        Ok(Child {
            process,
            group,
            status: None,
            watchdog: Some(watchdog),
        })
    }

    /// Once the group has been stopped (see [`stop`](Self::stop) and
    /// [`stop_leftovers`](Self::stop_leftovers)): the watchdog is told to exit without
    /// killing anything.
    pub async fn finish(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm().await;
        }
    }

    /// The process group id (the child's pid).
    pub fn group(&self) -> i32 {
        self.group.as_raw()
    }

    /// Waits for the direct child to exit (cancel-safe; returns at once once it has).
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = match self.process.wait().await {
            Ok(status) => status,
            // Only fails if the child was already reaped, which nothing else does.
            Err(e) => panic!("waiting for the command failed: {e}"),
        };
        self.status = Some(status);
        status
    }

    /// Sends `signal` to every process of the group. A group that is already empty is fine.
    pub fn signal(&self, signal: Signal) {
        match killpg(self.group, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(group = self.group.as_raw(), %signal, "cannot signal the command's process group: {e}")
            }
        }
    }

    /// Whether any process of the group is left. Members that exited and became ours to
    /// reap (see [`become_subreaper`]) are reaped first, so they do not count.
    pub fn group_alive(&self) -> bool {
        self.reap_group();
        match killpg(self.group, None) {
            Ok(()) => true,
            Err(Errno::ESRCH) => false,
            // EPERM: a process we may not signal is in it; it is alive.
            Err(_) => true,
        }
    }

    /// Ends the group: `signal` now (if any; `None` when it was already sent, e.g. forwarded),
    /// SIGKILL to whatever is left at `kill_at`; returns once the direct child has exited and
    /// the group is empty, or SIGKILL was sent and the child has exited.
    pub async fn stop(&mut self, signal: Option<Signal>, kill_at: Instant) -> ExitStatus {
        if let Some(signal) = signal {
            self.signal(signal);
        }
        let killed = tokio::select! {
            _ = self.drain() => false,
            _ = sleep_until(kill_at) => true,
        };
        if killed {
            tracing::warn!(
                group = self.group.as_raw(),
                "the command's process group did not exit in time: SIGKILL"
            );
            self.signal(Signal::SIGKILL);
        }
        let status = self.wait().await;
        if killed {
            // SIGKILL cannot be ignored; what is left are zombies of orphans that their new
            // parent reaps. Give that a moment, but do not wait on it forever.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.drain()).await;
        }
        status
    }

    /// Reaps the group's exited members that are our children (orphans of the command, since
    /// dsync is their subreaper). Only once the direct child has been waited for: until then
    /// tokio reaps it, and a `waitpid` on the group could take its status away.
    fn reap_group(&self) {
        if self.status.is_none() {
            return;
        }
        let group = Pid::from_raw(-self.group.as_raw());
        while let Ok(status) = waitpid(group, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }

    /// Waits until the direct child has exited and no process of its group is left.
    async fn drain(&mut self) {
        self.wait().await;
        while self.group_alive() {
            sleep(GROUP_POLL).await;
        }
    }

    /// After the direct child exited by itself: stops whatever it left running in its group
    /// (with `signal`, then SIGKILL after `kill_after`), because the lease may only be given up
    /// once nothing it guarded runs. Returns at once if the group is empty.
    pub async fn stop_leftovers(&mut self, signal: Signal, kill_after: Duration) {
        self.wait().await;
        if !self.group_alive() {
            return;
        }
        tracing::info!(
            group = self.group.as_raw(),
            "the command exited but left processes in its group: stopping them"
        );
        self.stop(Some(signal), Instant::now() + kill_after).await;
    }
}

/// Makes dsync the parent of the orphans its commands leave (Linux; elsewhere a no-op):
/// without it they go to init, and where init does not reap them (dsync as a container's
/// PID 1, a minimal init) their zombies would keep the command's process group "alive".
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::debug!("cannot become a child subreaper: {e}");
    }
}

/// The exit code a shell would report for `status`: the code, or 128 + the signal number.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => exit::DSYNC_FAILED,
    }
}
