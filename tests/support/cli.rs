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

/// Short lease timing for most tests: lease 3 s, renew deadline 1.5 s, retry 0.5 s (so
/// `--kill-after` may be up to 1 s: lease - renew deadline - retry).
pub const FAST: [&str; 6] = [
    "--lease-duration",
    "3s",
    "--renew-deadline",
    "1500ms",
    "--retry-period",
    "500ms",
];

/// A lease long enough that a waiter that got it by expiry would wait 10 s; by release, it
/// gets it at once (renew deadline 6 s, retry 1 s: `--kill-after` defaults to 3 s).
pub const SLOW: [&str; 6] = [
    "--lease-duration",
    "10s",
    "--renew-deadline",
    "6s",
    "--retry-period",
    "1s",
];

/// `args` with the lease timing after the subcommand, for the subcommands that hold leases
/// (`lock`, `run`: only they take timing flags); other subcommands as given.
fn with_timing(args: &[&str], timing: &[String]) -> Vec<String> {
    // The subcommand: the first word that is neither a flag nor a global flag's value.
    let mut at = None;
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "--namespace" | "--scope" | "--kubeconfig" => i += 2,
            a if a.starts_with('-') => i += 1,
            _ => {
                at = Some(i);
                break;
            }
        }
    }
    let at = at.filter(|at| args[*at] == "lock" || args[*at] == "run");
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if let Some(at) = at {
        // Before any `--` (the command's own arguments).
        if out[..at].iter().all(|a| a != "--") {
            for (i, flag) in timing.iter().enumerate() {
                out.insert(at + 1 + i, flag.clone());
            }
        }
    }
    out
}

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
        self.wrapped(&[], args)
    }

    /// `dsync ARGS` started by `wrapper` (e.g. `["setsid", "--ctty"]`): `wrapper[0]` is run
    /// with the rest of `wrapper`, dsync's path, the timing and `args`.
    pub fn wrapped(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let dsync = env!("CARGO_BIN_EXE_dsync");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(dsync),
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(dsync);
                cmd
            }
        };
        cmd.env_remove("KUBECONFIG")
            .env_remove("KUBE_POD_NAME")
            .env_remove("KUBE_LEASE_SCOPE")
            .env_remove("RUST_LOG")
            .env("KUBE_CONFIG_PATH", &self.kubeconfig)
            .env("KUBE_NAMESPACE", &self.ns)
            .args(with_timing(args, &self.timing))
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
    /// Every stdout line up to and including the first containing `needle`.
    pub async fn stdout_until(&mut self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(LIMIT, async {
            while let Some(line) = self.out.next_line().await.unwrap() {
                let done = line.contains(needle);
                seen.push(line);
                if done {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            found == Ok(true),
            "dsync {:?} printed no {needle:?} within {LIMIT:?}: {seen:?}",
            self.args
        );
        seen
    }

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

/// A scratch file for the guarded commands of one test, under cargo's `target/tmp` (so runs
/// do not pile up directories in the system's temp dir; `cargo clean` removes them).
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dsync-cli-{}", uuid::Uuid::new_v4().simple()));
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

/// Waits (polling every millisecond, up to [`LIMIT`]) until every process in `pids` is
/// [`gone`], and returns when that was seen (wall clock, to compare with `date +%s%N` in a
/// command).
pub async fn all_gone(pids: Vec<i32>) -> std::time::SystemTime {
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        loop {
            if pids.iter().all(|&pid| gone(pid)) {
                return std::time::SystemTime::now();
            }
            assert!(
                started.elapsed() < LIMIT,
                "processes {pids:?} still run after {LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    })
    .await
    .unwrap()
}

/// A command that checks, as it starts, that none of the processes in `$PIDS` is left (a
/// zombie counts as gone), and prints `start <wall clock ns> alive:<those left>`.
pub const CHECKS_GONE: &str = r#"alive=""; for p in $PIDS; do s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -c1); case "$s" in ""|Z|X) ;; *) alive="$alive $p";; esac; done; echo "start $(date +%s%N) alive:$alive""#;

/// What a [`CHECKS_GONE`] command printed: when it started, and which processes were left.
pub fn checked(line: &str) -> (std::time::SystemTime, String) {
    let rest = line.strip_prefix("start ").expect("a CHECKS_GONE line");
    let (nanos, alive) = rest.split_once(" alive:").unwrap();
    let nanos: u64 = nanos.parse().unwrap();
    (
        std::time::UNIX_EPOCH + Duration::from_nanos(nanos),
        alive.trim().to_owned(),
    )
}

/// `later - earlier`, signed, in milliseconds (for printing measured gaps).
pub fn gap_ms(earlier: std::time::SystemTime, later: std::time::SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

/// A copy of `kubeconfig` whose clusters point at `server` instead.
pub fn kubeconfig_for(kubeconfig: &Path, server: &str) -> PathBuf {
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    for cluster in doc["clusters"].as_sequence_mut().unwrap() {
        cluster["cluster"]["server"] = server.into();
    }
    let path = scratch("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    path
}

/// A kubeconfig of `kubeconfig`'s user for an API server that is not there (a local port
/// nothing listens on: connections are refused).
pub fn unreachable(kubeconfig: &Path) -> PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    kubeconfig_for(kubeconfig, &format!("https://127.0.0.1:{port}"))
}

/// A TCP proxy in front of the API server, for the replicas given its kubeconfig: `cut()`
/// partitions them from the server (every connection, open or new, goes silent: nothing is
/// forwarded and nothing is closed, as when the network drops packets); `refuse()` closes
/// every connection and refuses new ones (as when the server is down).
pub struct Proxy {
    pub port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    refuse: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let (refuse, refuse_rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (client, _) = listener.accept().await.unwrap();
                if *refuse_rx.borrow() {
                    drop(client);
                    continue;
                }
                if *cut_rx.borrow() {
                    held.push(client); // silent: accepted, never answered
                    continue;
                }
                let upstream = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port))
                    .await
                    .unwrap();
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pump(cr, uw, cut_rx.clone(), refuse_rx.clone()));
                tokio::spawn(pump(ur, cw, cut_rx.clone(), refuse_rx.clone()));
            }
        });
        Proxy {
            port,
            cut,
            refuse,
            accept,
        }
    }

    pub fn refuse(&self) {
        self.refuse.send_replace(true);
    }

    /// A copy of `kubeconfig` that goes through the proxy.
    pub fn kubeconfig(&self, kubeconfig: &Path) -> PathBuf {
        kubeconfig_for(kubeconfig, &format!("https://127.0.0.1:{}", self.port))
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn until_set(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// Copies `from` to `to` until the proxy is cut (then holds both open and silent) or refuses
/// (then closes both).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
    mut refuse: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            () = until_set(&mut refuse) => return,
            () = until_set(&mut cut) => break,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
    // Cut: both ends stay open, and nothing more goes through.
    let _held = (from, to);
    std::future::pending::<()>().await;
}
