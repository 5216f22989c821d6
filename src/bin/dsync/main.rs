//! `dsync`: leases from the command line. Run a command under a lock, a semaphore permit or
//! only while leader, and see, release or hand over what is held.
//!
//! ```text
//! dsync lock nightly-report -- ./report.sh           # one at a time across every pod
//! dsync lock exports -n 3 --timeout 1m -- ./export    # at most three at a time
//! dsync run controller -- ./controller                # only while leader, again at each term
//! dsync status                                        # every dsync lease in the namespace
//! dsync release nightly-report --force                # an operator's escape hatch
//! dsync handoff controller --to pod-b                 # ask the leader to hand over
//! dsync observe controller                            # follow leader changes
//! ```
//!
//! # Layout
//! - `main.rs`: flags, configuration, dispatch, exit.
//! - `guard.rs`: `lock` and `run`: wait for a lease, run the command while it is held.
//! - `child.rs`: the command in its own process group; stopping the whole group.
//! - `watchdog.rs`: a process of dsync's own that kills the command's group if dsync dies
//!   (`dsync __watchdog`; `dsync __start` in `child.rs` starts the command once it is armed).
//! - `inspect.rs`: `status`, `observe`, `release`, `handoff`.
//! - `ui.rs`: messages on stderr, progress while waiting.
//! - `exit.rs`: exit codes; `duration.rs`: `5s`, `500ms`, `2m`.
#![forbid(unsafe_code)]

mod child;
mod duration;
mod exit;
mod guard;
mod inspect;
mod ui;
mod watchdog;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dsync::config::{ENV_CONFIG_PATH, ENV_NAMESPACE, ENV_POD_NAME, ENV_SCOPE};
use dsync::{Config, Dsync, KubeStore, LeaseStore, Timing};
use nix::sys::signal::Signal;

use crate::exit::Failure;
use crate::ui::Ui;

/// Leases on Kubernetes from the command line: run a command under a lock or only while
/// leader, and see who holds what.
#[derive(Debug, Parser)]
#[command(name = "dsync", version)]
#[command(after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

const AFTER_HELP: &str = "\
Exit codes:
  (the command's)  lock, run: the command's own exit code (128+N if killed by signal N)
  2                bad flags or arguments, naming the flag (also a --kill-after the lease
                   timing cannot fit); release without --force
  75               the lock or permit was not granted in time (--timeout, --try; lock
                   --conflict-exit-code N exits N instead, e.g. 0 for a cron job);
                   handoff: the new leader did not take over within --timeout
  76               the lease was lost while the command ran (its process group was stopped)
  78               configuration, permission (RBAC) or API server error; run, observe and a
                   waiting lock: the API server kept failing for --give-up-after; the
                   command's watchdog could not be started
  126, 127         the command could not be executed / was not found

Signals (lock, run):
  SIGINT, SIGTERM, SIGHUP, SIGQUIT  forwarded to the command's process group
  SIGTSTP (Ctrl-Z)                  sent to the group as SIGTERM (never suspended under a lease)
  then SIGKILL after --kill-after; the lease is released once the group has exited. If dsync
  itself dies (even by SIGKILL), a watchdog process SIGKILLs the group at once.

Environment (read by dsync; a flag given wins):
  KUBE_NAMESPACE       namespace of the leases (--namespace; default: default)
  KUBE_LEASE_SCOPE     scope prefixed to lease names (--scope; default: unscoped)
  KUBE_POD_NAME        base of the holder identity (lock, run --identity); also written on
                       the Lease as the holder's pod, for the server-side holder fence
  KUBE_CONFIG_PATH     kubeconfig file (--kubeconfig); else KUBECONFIG, ~/.kube/config,
                       then the in-cluster service account
  KUBECONFIG           the kubeconfig files, as kubectl reads them
  RUST_LOG             what dsync logs on stderr, e.g. RUST_LOG=dsync=debug (default:
                       nothing); plain text when stderr is not a terminal

Environment of CMD (lock, run), set by dsync:
  DSYNC_LEASE          the Lease's name
  DSYNC_NAMESPACE      its namespace
  DSYNC_HOLDER         the holder identity
  DSYNC_FENCING_TOKEN  the term's fencing token: pass it to writes that must be fenced
  DSYNC_SLOT           the semaphore slot (lock -n)";

/// Where the leases are; every subcommand takes these.
#[derive(Debug, Args)]
struct Global {
    /// Namespace of the leases [env: KUBE_NAMESPACE; default: default]
    #[arg(long, global = true, value_name = "NS")]
    namespace: Option<String>,
    /// Scope prefixed to lease names [env: KUBE_LEASE_SCOPE; default: unscoped]
    #[arg(long, global = true)]
    scope: Option<String>,
    /// Kubeconfig file [env: KUBE_CONFIG_PATH; default: $KUBECONFIG, ~/.kube/config, in-cluster]
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Print nothing on stderr but errors
    #[arg(short, long, global = true)]
    quiet: bool,
}

/// Who holds, and the lease timing: only `lock` and `run` hold leases.
#[derive(Debug, Args, Default)]
struct HoldArgs {
    /// Holder identity, taken as given. Default: KUBE_POD_NAME (else the host name) and a random
    /// suffix, new for every process, so two commands never take each other's lease for their
    /// own (`status` shows it; `handoff --to` names it)
    #[arg(long, value_name = "ID")]
    identity: Option<String>,
    /// How long others wait after the holder's last renewal (whole seconds) [default: 15s]
    #[arg(long, value_parser = duration::parse, value_name = "DUR")]
    lease_duration: Option<Duration>,
    /// The holder gives the lease up if it could not renew for this long [default: 10s]
    #[arg(long, value_parser = duration::parse, value_name = "DUR")]
    renew_deadline: Option<Duration>,
    /// Pause between attempts to acquire or renew [default: 2s]
    #[arg(long, value_parser = duration::parse, value_name = "DUR")]
    retry_period: Option<Duration>,
}

/// The command to run: after `--`, or one shell string with `-c` (as flock's `-c`).
#[derive(Debug, Args)]
struct CommandArgs {
    /// Run this string with `sh -c` (instead of CMD after `--`)
    #[arg(
        short = 'c',
        long = "command",
        value_name = "STRING",
        conflicts_with = "command"
    )]
    shell: Option<String>,
    /// The command and its arguments
    #[arg(last = true, required_unless_present = "shell", value_name = "CMD")]
    command: Vec<OsString>,
}

impl CommandArgs {
    /// The argv to run: `sh -c STRING`, or CMD as given.
    fn argv(&self) -> Vec<OsString> {
        match &self.shell {
            Some(script) => vec!["sh".into(), "-c".into(), script.into()],
            None => self.command.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait for a lock (or a semaphore permit with -n), run CMD while holding it, release it
    /// when CMD and everything it started have exited, and exit with CMD's exit code.
    Lock(LockArgs),
    /// Campaign for an election; run CMD during each term, stop it when the term ends, and
    /// campaign again.
    Run(RunArgs),
    /// Every dsync lease in the namespace (or those named NAME): kind, holder, fencing token,
    /// acquisition, renewal and expiry. Needs only get, list and watch on leases.
    Status(StatusArgs),
    /// Clear the holder of a lease (compare-and-swap), e.g. after a holder was lost for good.
    Release(ReleaseArgs),
    /// Ask the current leader of an election to hand it to another identity, and wait until
    /// that identity leads.
    Handoff(HandoffArgs),
    /// Follow an election (or a lock, or a semaphore's slots) and print every change of
    /// holder.
    Observe(ObserveArgs),
    /// (internal) The watchdog of a command's process group: reads the group id on stdin and
    /// SIGKILLs the group when stdin closes without `done` (dsync died).
    #[command(name = watchdog::SUBCOMMAND, hide = true)]
    Watchdog,
    /// (internal) The first process of a command's group: waits, stopped, until the watchdog
    /// guards the group, then becomes CMD.
    #[command(name = child::START_SUBCOMMAND, hide = true)]
    Start {
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
}

/// How the command's process group is stopped when the lease is lost.
#[derive(Debug, Args, Clone)]
struct StopArgs {
    /// Signal for CMD's process group when the lease is lost or the term ends
    #[arg(long, value_parser = parse_signal, default_value = "SIGTERM", value_name = "SIG")]
    signal: Signal,
    /// Send SIGKILL to the group if it has not exited this long after the first signal (or
    /// after the term's end, if dsync noticed it late). At most lease duration - renew
    /// deadline - retry period, so that SIGKILL lands a retry period before anyone else may
    /// take the lease. [default: 5s, or that bound if shorter: 3s at the default timing]
    #[arg(long, value_parser = duration::parse, value_name = "DUR")]
    kill_after: Option<Duration>,
}

/// [`StopArgs`] checked against the lease timing.
#[derive(Debug, Clone)]
pub struct Stop {
    /// The signal the group gets when the lease is lost or the term ends.
    pub signal: Signal,
    /// SIGKILL follows this long after the signal (or after the term's end).
    pub kill_after: Duration,
}

/// `--kill-after` when none is given, unless the timing needs it shorter.
const DEFAULT_KILL_AFTER: Duration = Duration::from_secs(5);

/// The longest `--kill-after` the timing allows: the holder steps down at the renew deadline
/// (counted from its last successful renewal), others may take the lease a lease duration
/// after it, and SIGKILL must land a retry period before that. `None`: no time at all.
fn kill_after_bound(timing: &Timing) -> Option<Duration> {
    timing
        .lease_duration()
        .checked_sub(timing.renew_deadline())?
        .checked_sub(timing.retry_period())
}

impl StopArgs {
    /// The stop rules for `timing`: `--kill-after` within [`kill_after_bound`] (a usage error
    /// otherwise), by default the shorter of [`DEFAULT_KILL_AFTER`] and the bound.
    fn check(&self, timing: &Timing) -> Result<Stop, Failure> {
        let shown = |d: Duration| duration::exact(d);
        let why = || {
            format!(
                "lease duration {} - renew deadline {} - retry period {}",
                shown(timing.lease_duration()),
                shown(timing.renew_deadline()),
                shown(timing.retry_period())
            )
        };
        let Some(bound) = kill_after_bound(timing) else {
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "this lease timing leaves no time to stop the command before another holder \
                     may take the lease ({} is negative): lengthen --lease-duration or shorten \
                     --renew-deadline or --retry-period",
                    why()
                ),
            ));
        };
        let kill_after = match self.kill_after {
            None => DEFAULT_KILL_AFTER.min(bound),
            Some(given) if given > bound => {
                return Err(Failure::new(
                    exit::USAGE,
                    format!(
                        "--kill-after {} is too long for this lease timing: at most {} ({}), so \
                         that SIGKILL lands a retry period before another holder may take the \
                         lease",
                        shown(given),
                        shown(bound),
                        why()
                    ),
                ));
            }
            Some(given) => given,
        };
        Ok(Stop {
            signal: self.signal,
            kill_after,
        })
    }
}

/// When `run`, `observe` and a waiting `lock` give up on an API server that keeps failing.
#[derive(Debug, Args, Clone)]
struct GiveUpArgs {
    /// Exit (code 78) once calls to the API server have failed for this long without a
    /// success in between (forbidden, unreachable, timing out); each distinct failure is
    /// printed on stderr when it first happens. `never`: keep trying
    #[arg(long, value_parser = parse_give_up, default_value = "60s", value_name = "DUR")]
    give_up_after: GiveUp,
}

/// `--give-up-after`: a duration, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiveUp(pub Option<Duration>);

fn parse_give_up(input: &str) -> Result<GiveUp, String> {
    if input.trim().eq_ignore_ascii_case("never") {
        return Ok(GiveUp(None));
    }
    duration::parse(input).map(|d| GiveUp(Some(d)))
}

#[derive(Debug, Args)]
struct LockArgs {
    /// The lock: lease `<scope>.lock.NAME` (or `<scope>.semaphore.NAME.<i>` with -n)
    name: String,
    /// Give up waiting after this long (exit code 75)
    #[arg(long, value_parser = duration::parse, value_name = "DUR", conflicts_with = "try_")]
    timeout: Option<Duration>,
    /// Do not wait: exit with code 75 if the lock is held
    #[arg(long = "try", id = "try_")]
    try_: bool,
    /// A semaphore of N permits instead of a lock: at most N holders at once
    #[arg(short = 'n', long = "permits", value_name = "N")]
    permits: Option<usize>,
    /// Exit with N (instead of 75) when the lock or permit was not granted in time
    /// (--try, --timeout), as flock's -E: 0 lets a cron job skip a run quietly
    #[arg(short = 'E', long, value_name = "N", value_parser = clap::value_parser!(u8))]
    conflict_exit_code: Option<u8>,
    #[command(flatten)]
    hold: HoldArgs,
    #[command(flatten)]
    stop: StopArgs,
    #[command(flatten)]
    give_up: GiveUpArgs,
    #[command(flatten)]
    command: CommandArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The election: lease `<scope>.election.ELECTION`
    election: String,
    /// Exit after the first term (with code 76 if the term ended before CMD did)
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    hold: HoldArgs,
    #[command(flatten)]
    stop: StopArgs,
    #[command(flatten)]
    give_up: GiveUpArgs,
    #[command(flatten)]
    command: CommandArgs,
}

/// Output formats of `status` and `observe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Columns for people
    Table,
    /// One JSON document (`status`) or one JSON object per line (`--watch`, `observe`)
    Json,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Only the leases of this election, lock or semaphore (in the scope)
    name: Option<String>,
    /// After the current state, print every change until interrupted
    #[arg(short, long)]
    watch: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

/// Which kind of lease a name means, for `release` and `observe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// `<scope>.election.NAME`
    Election,
    /// `<scope>.lock.NAME`
    Lock,
    /// `<scope>.semaphore.NAME.<slot>` (with --slot)
    Semaphore,
}

#[derive(Debug, Args)]
struct ReleaseArgs {
    /// The lease's name (as for `lock`, `run`, or a semaphore with --slot)
    name: String,
    /// Which kind of lease NAME is (default: the one that exists, lock or election)
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// The semaphore slot to release (implies --kind semaphore)
    #[arg(long, value_name = "I")]
    slot: Option<usize>,
    /// Really clear the holder. dsync candidates still leave the lease alone for the holder's
    /// lease duration (its process may be cut off and still working until its renew
    /// deadline); client-go peers do not wait
    #[arg(long)]
    force: bool,
    /// With --force: free the lease at once, for a holder known to be dead (its pod is gone);
    /// a live holder would still be working while the next one starts
    #[arg(long, requires = "force")]
    now: bool,
}

#[derive(Debug, Args)]
struct HandoffArgs {
    /// The election
    election: String,
    /// Identity of the replica that should lead (its holder identity, as `status` shows it)
    #[arg(long, value_name = "ID")]
    to: String,
    /// How long to wait for the new leader (exit code 75 when it runs out)
    #[arg(long, value_parser = duration::parse, default_value = "60s", value_name = "DUR")]
    timeout: Duration,
    /// Only ask; do not wait
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, Args)]
struct ObserveArgs {
    /// The election (or lock, with --lock) to follow
    name: String,
    /// Follow a lock instead of an election
    #[arg(long, conflicts_with = "semaphore")]
    lock: bool,
    /// Follow a semaphore instead: each of its slots (a line per slot holder change)
    #[arg(long)]
    semaphore: bool,
    /// Output format: a line per change, or one JSON object per line
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    give_up: GiveUpArgs,
}

fn parse_signal(input: &str) -> Result<Signal, String> {
    let upper = input.trim().to_ascii_uppercase();
    if let Ok(number) = upper.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| format!("{input:?} is not a signal number"));
    }
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("{input:?} is not a signal name (e.g. TERM, INT, HUP, SIGUSR1)"))
}

impl Global {
    /// The library's configuration: flags first, then the environment, then defaults; the
    /// identity and timing of `hold` (defaults for the subcommands that hold nothing). A bad
    /// flag value is a usage error naming the flag (exit 2); a bad environment value names
    /// the variable (exit 78, configuration).
    fn config(&self, hold: &HoldArgs) -> Result<Config, Failure> {
        let flags: [(&str, &str, Option<String>); 4] = [
            (ENV_NAMESPACE, "--namespace", self.namespace.clone()),
            (ENV_SCOPE, "--scope", self.scope.clone()),
            (
                ENV_CONFIG_PATH,
                "--kubeconfig",
                self.kubeconfig
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            ),
            (ENV_POD_NAME, "--identity", hold.identity.clone()),
        ];
        let identity = hold.identity();
        let config = Config::from_lookup(|key| {
            if key == ENV_POD_NAME {
                return Some(identity.clone());
            }
            flags
                .iter()
                .find(|(k, _, _)| *k == key)
                .and_then(|(_, _, v)| v.clone())
                .or_else(|| std::env::var(key).ok())
        })
        .map_err(|e| match &e {
            dsync::Error::InvalidConfig { key, reason } => {
                match flags.iter().find(|(k, _, v)| k == key && v.is_some()) {
                    Some((_, flag, _)) => {
                        Failure::new(exit::USAGE, format!("invalid value for {flag}: {reason}"))
                    }
                    None => Failure::from(e),
                }
            }
            _ => Failure::from(e),
        })?;
        let mut config = config.with_timing(hold.timing()?);
        // The identity came in under KUBE_POD_NAME's key; the pod is the real variable's.
        config.pod_name = std::env::var(ENV_POD_NAME).ok().filter(|p| !p.is_empty());
        Ok(config)
    }
}

impl HoldArgs {
    /// `--identity` as given, else `KUBE_POD_NAME` (or the host name) and a random suffix:
    /// two processes, even in one pod, must never take each other's lease as their own.
    fn identity(&self) -> String {
        if let Some(id) = self.identity.as_ref().filter(|id| !id.is_empty()) {
            return id.clone();
        }
        let base = std::env::var(ENV_POD_NAME)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(host_name);
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        format!("{base}-{suffix}")
    }

    /// The lease timing the flags give (client-go's 15/10/2 s by default). Values that do
    /// not fit together are a usage error naming the flags (exit 2).
    fn timing(&self) -> Result<Timing, Failure> {
        let default = Timing::default();
        Timing::new(
            self.lease_duration.unwrap_or(default.lease_duration()),
            self.renew_deadline.unwrap_or(default.renew_deadline()),
            self.retry_period.unwrap_or(default.retry_period()),
        )
        .map_err(|e| {
            Failure::new(
                exit::USAGE,
                format!(
                    "--lease-duration, --renew-deadline and --retry-period do not fit together: {}",
                    exit::chain(&e)
                ),
            )
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| dsync::sanitize_name(h.trim()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dsync".into())
}

/// Connects to the API server as `config` says, on this actix System: a replica, and the
/// store it uses (for `status` and `release`, which read leases directly).
async fn connect(config: Config, drain: Duration) -> Result<(Dsync, Arc<dyn LeaseStore>), Failure> {
    let store: Arc<dyn LeaseStore> = Arc::new(KubeStore::from_config(&config).await?);
    let config = config.with_drain_timeout(drain);
    Ok((Dsync::with_config(store.clone(), config)?, store))
}

fn main() {
    let cli = Cli::parse();
    match &cli.command {
        Command::Watchdog => std::process::exit(watchdog::main()),
        Command::Start { command } => std::process::exit(child::start_main(command)),
        _ => {}
    }
    let ui = Ui::new(cli.global.quiet);
    init_tracing();
    child::become_subreaper();
    let code = match actix::System::new().block_on(dispatch(cli, ui.clone())) {
        Ok(code) => code,
        Err(failure) => {
            ui.error(&failure.message);
            failure.code
        }
    };
    std::process::exit(code);
}

/// `RUST_LOG=dsync=debug dsync ...` shows what the library does; silent by default (the
/// variable is named in `--help`).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off"));
    // Colours only for a person at a terminal: a pipe or a log file gets plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn dispatch(cli: Cli, ui: Ui) -> Result<i32, Failure> {
    // Installed first: from here on SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGTSTP are dsync's
    // to act on (forward to the command, release the lease), not the default "die at once"
    // (or, for SIGTSTP, "stop renewing while the command runs on").
    let interrupts = ui::Interrupts::install()?;
    let global = &cli.global;
    match cli.command {
        Command::Lock(args) => {
            if args.permits == Some(0) {
                return Err(Failure::new(exit::USAGE, "-n/--permits must be at least 1"));
            }
            let config = global.config(&args.hold)?;
            let stop = args.stop.check(&args.hold.timing()?)?;
            let (dsync, _) = connect(config, drain_for(&stop)).await?;
            let result = guard::lock(&dsync, &args, &stop, interrupts, &ui).await;
            finish(&dsync, &ui).await;
            // Not granted in time: the code the caller chose (flock's -E), if any.
            match (result, args.conflict_exit_code) {
                (Err(failure), Some(code)) if failure.code == exit::TIMEOUT => {
                    ui.error(&failure.message);
                    Ok(i32::from(code))
                }
                (result, _) => result,
            }
        }
        Command::Run(args) => {
            let config = global.config(&args.hold)?;
            let stop = args.stop.check(&args.hold.timing()?)?;
            let (dsync, _) = connect(config, drain_for(&stop)).await?;
            let result = guard::run(&dsync, &args, &stop, interrupts, &ui).await;
            finish(&dsync, &ui).await;
            result
        }
        Command::Status(args) => {
            let (dsync, store) = inspector(global).await?;
            let scope_given =
                global.scope.is_some() || std::env::var(ENV_SCOPE).is_ok_and(|s| !s.is_empty());
            let result = inspect::status(&dsync, &store, &args, scope_given, interrupts).await;
            finish(&dsync, &ui).await;
            result
        }
        Command::Release(args) => {
            let (dsync, store) = inspector(global).await?;
            let result = inspect::release(&dsync, &store, &args, &ui).await;
            finish(&dsync, &ui).await;
            result
        }
        Command::Handoff(args) => {
            let (dsync, _) = inspector(global).await?;
            let result = inspect::handoff(&dsync, &args, interrupts, &ui).await;
            finish(&dsync, &ui).await;
            result
        }
        Command::Observe(args) => {
            let (dsync, store) = inspector(global).await?;
            let result = inspect::observe(&dsync, &store, &args, interrupts, &ui).await;
            finish(&dsync, &ui).await;
            result
        }
        Command::Watchdog | Command::Start { .. } => {
            unreachable!("dsync's own processes run before any System")
        }
    }
}

/// A replica for the subcommands that hold nothing (`status`, `release`, `handoff`, `observe`).
async fn inspector(global: &Global) -> Result<(Dsync, Arc<dyn LeaseStore>), Failure> {
    connect(
        global.config(&HoldArgs::default())?,
        dsync::config::DEFAULT_DRAIN_TIMEOUT,
    )
    .await
}

/// The library waits this long for the guarded command after a term ends (the work of a
/// `run` term is the command): the signal, `--kill-after`, then SIGKILL and a margin.
fn drain_for(stop: &Stop) -> Duration {
    stop.kill_after + Duration::from_secs(5)
}

async fn finish(dsync: &Dsync, ui: &Ui) {
    if let Err(e) = dsync.shutdown().await {
        ui.warn(&format!("shutting down: {}", exit::chain(&e)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigint"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("SIGUSR1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn lock_needs_a_command_and_takes_try_or_timeout() {
        assert!(Cli::try_parse_from(["dsync", "lock", "x"]).is_err());
        assert!(
            Cli::try_parse_from([
                "dsync",
                "lock",
                "x",
                "--try",
                "--timeout",
                "1s",
                "--",
                "true"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from([
            "dsync",
            "lock",
            "x",
            "-n",
            "3",
            "--kill-after",
            "2s",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let Command::Lock(args) = cli.command else {
            panic!("not lock")
        };
        assert_eq!(args.permits, Some(3));
        assert_eq!(args.stop.kill_after, Some(Duration::from_secs(2)));
        assert_eq!(
            args.command.argv(),
            ["sh", "-c", "exit 3"].map(OsString::from)
        );
    }

    fn lock_args(argv: &[&str]) -> LockArgs {
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Lock(args) = cli.command else {
            panic!("not lock")
        };
        args
    }

    #[test]
    fn flags_win_over_the_environment_and_bad_values_name_the_flag() {
        let cli =
            Cli::try_parse_from(["dsync", "--namespace", "jobs", "--scope", "team", "status"])
                .unwrap();
        let hold = lock_args(&["dsync", "lock", "--identity", "me", "x", "--", "true"]).hold;
        let config = cli.global.config(&hold).unwrap();
        assert_eq!(
            (config.namespace.as_str(), config.scope.as_str()),
            ("jobs", "team")
        );
        assert_eq!(
            config.identity, "me",
            "an explicit identity is taken as given"
        );

        let args = lock_args(&[
            "dsync",
            "lock",
            "x",
            "--lease-duration",
            "5s",
            "--renew-deadline",
            "6s",
            "--",
            "true",
        ]);
        let failure = args.hold.timing().unwrap_err();
        assert_eq!(failure.code, exit::USAGE);
        assert!(
            failure.message.contains("--renew-deadline"),
            "{}",
            failure.message
        );

        let cli =
            Cli::try_parse_from(["dsync", "--namespace", "Not_A_Namespace", "status"]).unwrap();
        let failure = cli.global.config(&HoldArgs::default()).unwrap_err();
        assert_eq!(failure.code, exit::USAGE);
        assert!(
            failure.message.contains("--namespace"),
            "{}",
            failure.message
        );
        assert!(
            !failure.message.contains("KUBE_NAMESPACE"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn identities_differ_per_process_unless_given() {
        let hold = HoldArgs::default();
        assert_ne!(hold.identity(), hold.identity());
        let hold = lock_args(&["dsync", "lock", "--identity", "pod-a", "x", "--", "true"]).hold;
        assert_eq!(hold.identity(), "pod-a");
    }

    #[test]
    fn c_runs_a_shell_string_instead_of_cmd() {
        let args = lock_args(&["dsync", "lock", "x", "-c", "echo hi; exit 3"]);
        assert_eq!(
            args.command.argv(),
            ["sh", "-c", "echo hi; exit 3"].map(OsString::from)
        );
        assert!(Cli::try_parse_from(["dsync", "lock", "x", "-c", "true", "--", "true"]).is_err());
        assert!(
            Cli::try_parse_from(["dsync", "run", "x"]).is_err(),
            "a command is needed"
        );
    }

    fn stop_for(timing: [&str; 3], kill_after: Option<&str>) -> Result<Stop, Failure> {
        let mut argv = vec![
            "dsync",
            "lock",
            "x",
            "--lease-duration",
            timing[0],
            "--renew-deadline",
            timing[1],
            "--retry-period",
            timing[2],
        ];
        if let Some(k) = kill_after {
            argv.extend(["--kill-after", k]);
        }
        argv.extend(["--", "true"]);
        let args = lock_args(&argv);
        args.stop.check(&args.hold.timing().unwrap())
    }

    #[test]
    fn kill_after_lands_sigkill_a_retry_period_before_the_lease_can_be_taken() {
        let secs = Duration::from_secs;
        // The default timing (15/10/2) leaves 3 s: the default (5 s) shrinks to fit.
        let stop = stop_for(["15s", "10s", "2s"], None).unwrap();
        assert_eq!(stop.kill_after, secs(3));
        assert_eq!(
            stop_for(["15s", "10s", "2s"], Some("3s"))
                .unwrap()
                .kill_after,
            secs(3)
        );
        assert_eq!(
            stop_for(["60s", "20s", "5s"], None).unwrap().kill_after,
            secs(5)
        );
        assert_eq!(
            stop_for(["60s", "20s", "5s"], Some("35s"))
                .unwrap()
                .kill_after,
            secs(35)
        );
        let refused = stop_for(["15s", "10s", "2s"], Some("3100ms")).unwrap_err();
        assert_eq!(refused.code, exit::USAGE);
        assert!(
            refused.message.contains("--kill-after 3.1s") && refused.message.contains("at most 3s"),
            "{}",
            refused.message
        );
        // Exactly no room: SIGKILL with the signal.
        let none = stop_for(["2s", "1500ms", "500ms"], None).unwrap();
        assert_eq!(none.kill_after, Duration::ZERO);
        let refused = stop_for(["2s", "1500ms", "800ms"], None).unwrap_err();
        assert_eq!(refused.code, exit::USAGE);
        assert!(refused.message.contains("no time"), "{}", refused.message);
        // The rule itself, for every accepted value: renew + kill-after <= lease - retry.
        for timing in [
            ["15s", "10s", "2s"],
            ["3s", "1500ms", "500ms"],
            ["60s", "20s", "5s"],
        ] {
            let stop = stop_for(timing, None).unwrap();
            let t = [timing[0], timing[1], timing[2]].map(|d| duration::parse(d).unwrap());
            assert!(t[1] + stop.kill_after <= t[0] - t[2], "{timing:?}");
        }
    }

    #[test]
    fn give_up_takes_a_duration_or_never() {
        assert_eq!(parse_give_up("never"), Ok(GiveUp(None)));
        assert_eq!(
            parse_give_up("3s"),
            Ok(GiveUp(Some(Duration::from_secs(3))))
        );
        assert!(parse_give_up("soon").is_err());
        let cli = Cli::try_parse_from(["dsync", "observe", "x"]).unwrap();
        let Command::Observe(args) = cli.command else {
            panic!("not observe")
        };
        assert_eq!(
            args.give_up.give_up_after,
            GiveUp(Some(Duration::from_secs(60)))
        );
    }

    #[test]
    fn help_names_the_log_variable_the_signals_and_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "RUST_LOG",
            "KUBE_NAMESPACE",
            "KUBE_LEASE_SCOPE",
            "KUBE_POD_NAME",
            "KUBE_CONFIG_PATH",
            "KUBECONFIG",
            "DSYNC_FENCING_TOKEN",
            "DSYNC_HOLDER",
            "DSYNC_LEASE",
            "DSYNC_SLOT",
            "--conflict-exit-code",
            "SIGHUP",
            "SIGTSTP",
            "watchdog",
            "--give-up-after",
            "76",
        ] {
            assert!(help.contains(needle), "{needle}: {help}");
        }
    }
}
