//! Safety rule `cli-group-dies-with-dsync` (README "Safety rules" 13).
//!
//! The watchdog: the command's process group must not outlive dsync, even when dsync dies by
//! SIGKILL (which runs no code of dsync's: no `kill_on_drop`, no signal handler).
//!
//! Before the command starts, dsync starts itself again as `dsync __watchdog`, which leaves
//! dsync's session and process group (`setsid`: signals for dsync's terminal or group do not
//! reach it) and reads its standard input, a pipe whose write end only dsync holds (opened
//! close-on-exec, so the command does not inherit it). dsync writes the command's process
//! group id on it as soon as the command has started. When dsync dies the kernel closes the
//! write end: the watchdog reads end-of-file and SIGKILLs the group at once. When dsync has
//! stopped the group itself it writes `done`, and the watchdog exits without killing
//! anything; it also exits by itself once the group is empty.
//!
//! The command cannot run before the watchdog guards its group: the group's first process
//! waits, stopped, until dsync has written the group id (see [`Child::spawn`]).
//!
//! [`Child::spawn`]: crate::child::Child::spawn

use std::io::{self, BufRead, Write};
use std::process::{ChildStdin, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The hidden subcommand dsync starts the watchdog with.
pub const SUBCOMMAND: &str = "__watchdog";

/// What dsync writes when it has stopped the group itself.
const DONE: &str = "done";

/// How often the watchdog checks whether the group is empty (then it has nothing to guard).
const GROUP_POLL: Duration = Duration::from_millis(100);

/// Why the watchdog could not be started or armed.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// dsync could not start itself again.
    #[error("cannot start dsync's watchdog process ({program})")]
    Start {
        /// The program started (dsync's own executable).
        program: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The watchdog is gone before it could be told the group.
    #[error("cannot arm dsync's watchdog for process group {group}")]
    Arm {
        /// The command's process group.
        group: i32,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// dsync's side of a running watchdog. Dropping it without [`disarm`](Self::disarm) is what
/// dsync's death looks like: the group is SIGKILLed.
#[derive(Debug)]
pub struct Watchdog {
    process: std::process::Child,
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog process (before the command: it must be ready when the command is).
    pub fn start() -> Result<Watchdog, WatchdogError> {
        let program = own_executable();
        let process = std::process::Command::new(&program)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| WatchdogError::Start {
                program: program.display().to_string(),
                source,
            })?;
        let mut watchdog = Watchdog {
            process,
            pipe: None,
        };
        watchdog.pipe = watchdog.process.stdin.take();
        Ok(watchdog)
    }

    /// Tells the watchdog the command's process group: from now on dsync's death kills it.
    pub fn arm(&mut self, group: i32) -> Result<(), WatchdogError> {
        let pipe = self.pipe.as_mut().expect("armed once, before disarm");
        writeln!(pipe, "{group}").map_err(|source| WatchdogError::Arm { group, source })
    }

    /// Tells the watchdog that dsync has ended the group itself; it exits without killing
    /// anything. Waits (briefly) for it to exit, so that no zombie is left.
    pub async fn disarm(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            // A watchdog that is gone already has nothing left to do.
            let _ = writeln!(pipe, "{DONE}");
        }
        for _ in 0..100 {
            match self.process.try_wait() {
                Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
                Ok(Some(_)) | Err(_) => return,
            }
        }
        tracing::warn!(
            pid = self.process.id(),
            "dsync's watchdog did not exit when told"
        );
    }
}

/// dsync's own executable: `/proc/self/exe` on Linux, which works even if the file was
/// replaced or deleted since dsync started (an upgrade under a running dsync).
pub fn own_executable() -> std::path::PathBuf {
    if cfg!(target_os = "linux") {
        "/proc/self/exe".into()
    } else {
        std::env::current_exe().unwrap_or_else(|_| "dsync".into())
    }
}

/// The watchdog process (`dsync __watchdog`): returns its exit code.
pub fn main() -> i32 {
    // Out of dsync's session and group: a hangup of dsync's terminal, Ctrl-C or Ctrl-\ there,
    // or a signal for dsync's whole group must not take the watchdog with it. (It is not a
    // group leader, being dsync's child in dsync's group, so this cannot fail.)
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("dsync watchdog: cannot leave dsync's session: {e}");
    }
    let mut input = io::stdin().lock();
    let mut line = String::new();
    let group = match input.read_line(&mut line) {
        Ok(0) | Err(_) => return 0, // dsync went away before starting a command
        Ok(_) => match line.trim().parse::<i32>() {
            Ok(group) if group > 1 => Pid::from_raw(group),
            _ => {
                eprintln!("dsync watchdog: not a process group: {line:?}");
                return 2;
            }
        },
    };
    // A group that empties by itself needs no watchdog.
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(GROUP_POLL);
            if killpg(group, None) == Err(Errno::ESRCH) {
                std::process::exit(0);
            }
        }
    });
    line.clear();
    match input.read_line(&mut line) {
        Ok(_) if line.trim() == DONE => 0,
        // End of file (dsync died: the kernel closed its end), or anything else: nobody
        // guards the group any more.
        _ => match killpg(group, Signal::SIGKILL) {
            Ok(()) => {
                eprintln!(
                    "dsync watchdog: dsync is gone: sent SIGKILL to the command's process group {group}"
                );
                0
            }
            Err(Errno::ESRCH) => 0,
            Err(e) => {
                eprintln!("dsync watchdog: dsync is gone: cannot kill process group {group}: {e}");
                1
            }
        },
    }
}
