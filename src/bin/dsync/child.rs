//! The command a lease guards: started in a process group of its own, so that a lost lease, a
//! forwarded signal or the end of the command stops *everything* it started (its children and
//! theirs), not only the process dsync forked. The lease is given up only after that group is
//! empty.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg, raise};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep, sleep_until};

use crate::exit;
use crate::watchdog::{self, Watchdog, WatchdogError};

/// The hidden subcommand that starts the command once the watchdog guards its group:
/// `dsync __start -- CMD [ARGS]` (see [`start_main`]).
pub const START_SUBCOMMAND: &str = "__start";

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
    /// dsync could not start the process that becomes the command (`dsync __start`).
    #[error("cannot start the command's process")]
    Start(#[source] io::Error),
}

impl SpawnError {
    /// The shell's exit code for it.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => exit::NOT_FOUND,
            SpawnError::CannotExecute { .. } => exit::CANNOT_EXECUTE,
            SpawnError::Watchdog(_) | SpawnError::Start(_) => exit::DSYNC_FAILED,
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
    ///
    /// The group exists before the command runs: its first process is `dsync __start`, which
    /// stops itself at once; the watchdog is told the group, and only then is the process
    /// continued, to become the command (`exec`, same pid). If dsync dies before that, the
    /// stopped process never runs the command: its group is orphaned with a stopped member,
    /// so the kernel sends it SIGHUP (and it dies), and the watchdog kills it if armed.
    pub fn spawn(command: &[OsString], env: &[(String, String)]) -> Result<Child, SpawnError> {
        let mut watchdog = Watchdog::start().map_err(SpawnError::Watchdog)?;
        let mut cmd = tokio::process::Command::new(watchdog::own_executable());
        cmd.arg(START_SUBCOMMAND)
            .arg("--")
            .args(command)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            // If dsync itself dies, the group is killed rather than left running unguarded.
            .kill_on_drop(true);
        let process = cmd.spawn().map_err(SpawnError::Start)?;
        let pid = process
            .id()
            .expect("a child that was just spawned has a pid");
        let group = Pid::from_raw(pid as i32);
        let armed = stopped(group)
            .map_err(SpawnError::Start)
            .and_then(|()| watchdog.arm(group.as_raw()).map_err(SpawnError::Watchdog))
            .and_then(|()| kill(group, Signal::SIGCONT).map_err(|e| SpawnError::Start(e.into())));
        if let Err(e) = armed {
            // Unguarded: it must not run. (Dropping `process` reaps it in the background.)
            let _ = killpg(group, Signal::SIGKILL);
            return Err(e);
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

/// Waits until `dsync __start` (process `pid`, just spawned) has stopped itself. Its status is
/// left to be collected (`WNOWAIT`): tokio reaps the process when it exits.
fn stopped(pid: Pid) -> io::Result<()> {
    let flags = WaitPidFlag::WSTOPPED | WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::Stopped(..)) => return Ok(()),
            Ok(status) => {
                return Err(io::Error::other(format!(
                    "it ended before it could be guarded: {status:?}"
                )));
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `dsync __start -- CMD [ARGS]`, the first process of the command's group: stops itself
/// until dsync has armed the watchdog and continues it (see [`Child::spawn`]), then becomes
/// the command. Returns only if that fails, with the shell's exit code for it.
pub fn start_main(command: &[OsString]) -> i32 {
    if let Err(e) = raise(Signal::SIGSTOP) {
        eprintln!("dsync: error: cannot wait for the watchdog: {e}");
        return exit::DSYNC_FAILED;
    }
    use std::os::unix::process::CommandExt;
    let (program, args) = command
        .split_first()
        .expect("clap requires a command after `--`");
    let source = std::process::Command::new(program).args(args).exec();
    let program = program.to_string_lossy().into_owned();
    let error = if source.kind() == io::ErrorKind::NotFound {
        SpawnError::NotFound { program, source }
    } else {
        SpawnError::CannotExecute { program, source }
    };
    eprintln!("dsync: error: {}", exit::chain(&error));
    error.exit_code()
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
