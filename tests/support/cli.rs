//! The `dsync` command line as a process of its own, for tests/cli.rs and
//! tests/cli_outage.rs: configured for one namespace and harness user, its output read line
//! by line (a line a command prints is the signal a test waits for).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use dsync::KubeStore;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use super::apiserver::{Harness, client, namespace};

/// What any single step may take before the test fails (a bound, not a measurement).
pub const LIMIT: Duration = Duration::from_secs(60);

/// Exit codes the CLI documents.
pub const TIMEOUT: i32 = 75;
pub const LOST: i32 = 76;
pub const DSYNC_FAILED: i32 = 78;
pub const USAGE: i32 = 2;

/// Short lease timing for most tests: lease 2 s, renew deadline 1.5 s, retry 0.5 s.
pub const FAST: [&str; 6] = [
    "--lease-duration",
    "2s",
    "--renew-deadline",
    "1500ms",
    "--retry-period",
    "500ms",
];

/// The CLI, configured for one namespace and one harness user.
pub struct Cli {
    pub ns: String,
    pub kubeconfig: PathBuf,
    pub timing: Vec<String>,
}

impl Cli {
    pub async fn admin() -> Cli {
        Cli {
            ns: namespace().await,
            kubeconfig: Harness::get().ready().admin,
            timing: FAST.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn with_timing(mut self, timing: &[&str]) -> Cli {
        self.timing = timing.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn as_user(&self, kubeconfig: &Path) -> Cli {
        Cli {
            ns: self.ns.clone(),
            kubeconfig: kubeconfig.to_owned(),
            timing: self.timing.clone(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dsync"));
        cmd.env_remove("KUBECONFIG")
            .env_remove("KUBE_POD_NAME")
            .env_remove("KUBE_LEASE_SCOPE")
            .env_remove("RUST_LOG")
            .env("KUBE_CONFIG_PATH", &self.kubeconfig)
            .env("KUBE_NAMESPACE", &self.ns)
            .args(&self.timing)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Starts a long-running CLI process.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        let mut child = self
            .command(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dsync {args:?}: {e}"));
        Proc {
            out: lines(child.stdout.take().unwrap()),
            err: lines(child.stderr.take().unwrap()),
            child,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Runs a CLI process to its end.
    pub async fn run(&self, args: &[&str]) -> Done {
        let output = tokio::time::timeout(LIMIT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("dsync {args:?} did not finish within {LIMIT:?}"))
            .unwrap();
        Done {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub async fn store(&self) -> KubeStore {
        KubeStore::new(client(&self.kubeconfig).await)
    }
}

pub fn lines<R: AsyncRead + Unpin>(r: R) -> Lines<BufReader<R>> {
    BufReader::new(r).lines()
}

/// A finished CLI process.
#[derive(Debug)]
pub struct Done {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A running CLI process and its output.
pub struct Proc {
    pub child: Child,
    pub out: Lines<BufReader<ChildStdout>>,
    pub err: Lines<BufReader<ChildStderr>>,
    pub args: Vec<String>,
}

impl Proc {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    /// The next stdout line that contains `needle` (earlier lines are skipped). If the
    /// process ends first, the panic shows what it printed and how it exited.
    pub async fn stdout_line(&mut self, needle: &str) -> String {
        let mut skipped = Vec::new();
        let found = tokio::time::timeout(LIMIT, async {
            loop {
                match self.out.next_line().await.unwrap() {
                    Some(line) if line.contains(needle) => return Some(line),
                    Some(line) => skipped.push(line),
                    None => return None,
                }
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => {
                let status = tokio::time::timeout(LIMIT, self.child.wait()).await;
                let mut stderr = String::new();
                while let Ok(Ok(Some(line))) =
                    tokio::time::timeout(Duration::from_secs(5), self.err.next_line()).await
                {
                    stderr.push_str(&line);
                    stderr.push('\n');
                }
                panic!(
                    "dsync {:?} ended ({status:?}) before printing {needle:?}; stdout: \
                     {skipped:?}; stderr:\n{stderr}",
                    self.args
                )
            }
            Err(_) => panic!(
                "dsync {:?} printed no {needle:?} within {LIMIT:?}; stdout: {skipped:?}",
                self.args
            ),
        }
    }

    /// The next stderr line that contains `needle`.
    pub async fn stderr_line(&mut self, needle: &str) -> String {
        let args = self.args.clone();
        tokio::time::timeout(LIMIT, async {
            loop {
                match self.err.next_line().await.unwrap() {
                    Some(line) if line.contains(needle) => return line,
                    Some(_) => {}
                    None => panic!("dsync {args:?} closed stderr before printing {needle:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "dsync {:?} printed no {needle:?} within {LIMIT:?}",
                self.args
            )
        })
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// Waits for the process to exit; the rest of its stderr comes with the status.
    pub async fn exit(mut self, limit: Duration) -> (ExitStatus, String) {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("dsync {:?} did not exit within {limit:?}", self.args))
            .unwrap();
        let mut rest = String::new();
        while let Ok(Some(line)) = self.err.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        (status, rest)
    }
}

/// A scratch file for the guarded commands of one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsync-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Whether process `pid` is gone (or only a zombie waiting for its new parent to reap it).
pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // state is the field after the parenthesised command name
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

/// The numbers in a line a command printed, e.g. `pids 12 13` or `pod-a leads with 3`.
pub fn numbers(line: &str) -> Vec<i32> {
    line.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// The last number in a line, e.g. the token of `pod-a leads with 3`.
pub fn last_number(line: &str) -> i32 {
    *numbers(line)
        .last()
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

/// The command ignores SIGTERM and leaves a grandchild that ignores it too: only SIGKILL to
/// the whole group ends them.
pub const STUBBORN: &str = r#"trap '' TERM; sleep 1000 & echo "pids $$ $!"; echo "holder $DSYNC_HOLDER token $DSYNC_FENCING_TOKEN lease $DSYNC_LEASE"; wait; wait"#;

/// `dsync lock NAME --kill-after KILL_AFTER -- sh -c STUBBORN`, once its command runs, and
/// the pids of the command and its grandchild.
pub async fn stubborn(cli: &Cli, name: &str, kill_after: &str) -> (Proc, Vec<i32>) {
    let mut proc = cli.spawn(&[
        "lock",
        name,
        "--kill-after",
        kill_after,
        "--",
        "sh",
        "-c",
        STUBBORN,
    ]);
    let pids = numbers(&proc.stdout_line("pids").await);
    (proc, pids)
}

impl Proc {
    pub fn from(mut cmd: Command, name: &str) -> Proc {
        let mut child = cmd.spawn().unwrap();
        Proc {
            out: lines(child.stdout.take().unwrap()),
            err: lines(child.stderr.take().unwrap()),
            child,
            args: vec![name.to_owned()],
        }
    }
}
