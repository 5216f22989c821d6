//! The line protocol of a peer process: one replica running elections for a set of Leases,
//! driven over stdin and reporting on stdout. The client-go peer (`benches/peers/clientgo`,
//! whose docs are the reference) and the e2e bench's dsync peer (`benches/e2e/peer.rs`) both
//! speak it, so a driver treats them alike.
//!
//! * Command line: [`PeerArgs`] (`--kubeconfig F --namespace NS --identity ID ...`).
//! * Output, one [`Line`] per event: `ready`, `elected <lease> <t>`,
//!   `leader <lease> <identity> <t>`, `stopping <lease> <t>`, `lost <lease> <t>`,
//!   `released <lease> <t>`, `error <message>`. Times are Unix nanoseconds of the wall clock,
//!   which all processes on one machine share.
//! * Input, one [`Command`] per line: `stop <lease>` (release that Lease), `stopall`. End of
//!   input stops everything; the process exits when all is released. SIGKILL is the crash.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wall-clock time as the protocol writes it: nanoseconds since the Unix epoch (negative
/// before it).
pub fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// The wall-clock time of a protocol time stamp (Unix nanoseconds); `None` if it is not one.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let n: i64 = s.parse().ok()?;
    let d = Duration::from_nanos(n.unsigned_abs());
    if n >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

/// One line of a peer's output, or the end of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `ready`: every election has been started.
    Ready,
    /// `elected <lease> <t>`: this peer leads `lease` from `at`.
    Elected {
        /// The Lease's name.
        lease: String,
        /// When the term started.
        at: SystemTime,
    },
    /// `leader <lease> <identity> <t>`: a leader of `lease` was observed (maybe this peer).
    Leader {
        /// The Lease's name.
        lease: String,
        /// The leader's identity.
        id: String,
        /// When it was observed.
        at: SystemTime,
    },
    /// `stopping <lease> <t>`: a `stop` command was received; the release starts now.
    Stopping {
        /// The Lease's name.
        lease: String,
        /// When the command was received.
        at: SystemTime,
    },
    /// `lost <lease> <t>`: this peer no longer leads `lease`.
    Lost {
        /// The Lease's name.
        lease: String,
        /// When the peer learnt it.
        at: SystemTime,
    },
    /// `released <lease> <t>`: the election of `lease` has ended (its Lease released, if held).
    Released {
        /// The Lease's name.
        lease: String,
        /// When it ended.
        at: SystemTime,
    },
    /// `error <message>`: something the peer could not do.
    Error(String),
    /// Not a line a peer writes: the reader's mark for the end of its output (it exited).
    /// [`Line::parse`] never returns it; it is displayed as `exited`.
    Exited,
}

impl Line {
    /// Parses one output line. `None` if it is not a protocol line (or its time is malformed).
    pub fn parse(line: &str) -> Option<Line> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let lease = |l: &&str| l.to_string();
        Some(match f.as_slice() {
            ["ready"] => Line::Ready,
            ["elected", l, t] => Line::Elected {
                lease: lease(l),
                at: parse_time(t)?,
            },
            ["leader", l, id, t] => Line::Leader {
                lease: lease(l),
                id: id.to_string(),
                at: parse_time(t)?,
            },
            ["stopping", l, t] => Line::Stopping {
                lease: lease(l),
                at: parse_time(t)?,
            },
            ["lost", l, t] => Line::Lost {
                lease: lease(l),
                at: parse_time(t)?,
            },
            ["released", l, t] => Line::Released {
                lease: lease(l),
                at: parse_time(t)?,
            },
            ["error", ..] => Line::Error(
                line.trim_start()
                    .strip_prefix("error")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            ),
            _ => return None,
        })
    }
}

/// The line as a peer writes it (without the newline).
impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |at: &SystemTime| unix_nanos(*at);
        match self {
            Line::Ready => write!(f, "ready"),
            Line::Elected { lease, at } => write!(f, "elected {lease} {}", t(at)),
            Line::Leader { lease, id, at } => write!(f, "leader {lease} {id} {}", t(at)),
            Line::Stopping { lease, at } => write!(f, "stopping {lease} {}", t(at)),
            Line::Lost { lease, at } => write!(f, "lost {lease} {}", t(at)),
            Line::Released { lease, at } => write!(f, "released {lease} {}", t(at)),
            Line::Error(message) => write!(f, "error {message}"),
            Line::Exited => write!(f, "exited"),
        }
    }
}

/// Reads a peer's output (its stdout) on a thread of its own: hands each protocol line to
/// `each` (other lines, such as log chatter, are skipped), then [`Line::Exited`] when the output
/// ends. Stops early when `each` returns `false`.
pub fn read_lines(
    output: impl Read + Send + 'static,
    mut each: impl FnMut(Line) -> bool + Send + 'static,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if let Some(parsed) = Line::parse(&line)
                && !each(parsed)
            {
                return;
            }
        }
        each(Line::Exited);
    });
}

/// One command line on a peer's stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `stop <lease>`: end that election, releasing the Lease if held.
    Stop(String),
    /// `stopall`: end every election.
    StopAll,
}

impl Command {
    /// Parses one command line; `None` if it is not a command (a blank line is not either).
    pub fn parse(line: &str) -> Option<Command> {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["stop", lease] => Some(Command::Stop(lease.to_string())),
            ["stopall"] => Some(Command::StopAll),
            _ => None,
        }
    }
}

/// The command as the driver writes it (without the newline).
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Stop(lease) => write!(f, "stop {lease}"),
            Command::StopAll => write!(f, "stopall"),
        }
    }
}

/// The election timing of a peer, as client-go names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerTiming {
    /// `--lease-duration`: how long a Lease is valid after its holder's last renewal.
    pub lease_duration: Duration,
    /// `--renew-deadline`: how long a leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// `--retry-period`: the interval between attempts (renewals, acquisitions).
    pub retry_period: Duration,
}

impl PeerTiming {
    /// A timing from its three durations.
    pub fn new(lease_duration: Duration, renew_deadline: Duration, retry_period: Duration) -> Self {
        PeerTiming {
            lease_duration,
            renew_deadline,
            retry_period,
        }
    }
}

/// The Leases a peer runs elections for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leases {
    /// `--leases a,b,c`: these names.
    Names(Vec<String>),
    /// `--lease-prefix p --count n`: `p0` .. `p{n-1}`.
    Prefix {
        /// The names' common prefix.
        prefix: String,
        /// How many.
        count: usize,
    },
}

impl Leases {
    /// The Lease names, in order.
    pub fn names(&self) -> Vec<String> {
        match self {
            Leases::Names(names) => names.clone(),
            Leases::Prefix { prefix, count } => {
                (0..*count).map(|i| format!("{prefix}{i}")).collect()
            }
        }
    }
}

/// A peer's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerArgs {
    /// `--kubeconfig`: the kubeconfig file of the peer's client.
    pub kubeconfig: PathBuf,
    /// `--namespace`: the namespace of the Leases.
    pub namespace: String,
    /// `--identity`: the holder identity, unique per process.
    pub identity: String,
    /// `--user-agent`: the client's User-Agent (how the API server's audit log names it).
    pub user_agent: String,
    /// `--leases`, or `--lease-prefix` with `--count`.
    pub leases: Leases,
    /// `--lease-duration`, `--renew-deadline`, `--retry-period`.
    pub timing: PeerTiming,
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn parse_millis(name: &str, s: &str) -> Result<Duration, String> {
    s.strip_suffix("ms")
        .and_then(|n| n.parse().ok())
        .map(Duration::from_millis)
        .ok_or_else(|| format!("--{name} {s:?}: expected milliseconds such as 500ms"))
}

impl PeerArgs {
    /// The command-line arguments (every flag given; durations in milliseconds, as Go's
    /// `time.ParseDuration` reads them).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--kubeconfig".to_owned(),
            self.kubeconfig.display().to_string(),
            "--namespace".into(),
            self.namespace.clone(),
            "--identity".into(),
            self.identity.clone(),
            "--user-agent".into(),
            self.user_agent.clone(),
        ];
        match &self.leases {
            Leases::Names(names) => args.extend(["--leases".into(), names.join(",")]),
            Leases::Prefix { prefix, count } => args.extend([
                "--lease-prefix".into(),
                prefix.clone(),
                "--count".into(),
                count.to_string(),
            ]),
        }
        args.extend([
            "--lease-duration".into(),
            go_duration(self.timing.lease_duration),
            "--renew-deadline".into(),
            go_duration(self.timing.renew_deadline),
            "--retry-period".into(),
            go_duration(self.timing.retry_period),
        ]);
        args
    }

    /// Parses what [`PeerArgs::to_args`] writes (`--flag value` pairs, every one given, in any
    /// order), without the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<PeerArgs, String> {
        let mut flags = std::collections::HashMap::new();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected a --flag, got {flag:?}"))?
                .to_owned();
            let value = args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            flags.insert(name, value);
        }
        let mut take = |name: &str| {
            flags
                .remove(name)
                .ok_or_else(|| format!("--{name} is required"))
        };
        let leases = match take("leases") {
            Ok(names) => Leases::Names(names.split(',').map(str::to_owned).collect()),
            Err(_) => Leases::Prefix {
                prefix: take("lease-prefix")?,
                count: take("count")?
                    .parse()
                    .map_err(|e| format!("--count: {e}"))?,
            },
        };
        let parsed = PeerArgs {
            kubeconfig: take("kubeconfig")?.into(),
            namespace: take("namespace")?,
            identity: take("identity")?,
            user_agent: take("user-agent")?,
            leases,
            timing: PeerTiming {
                lease_duration: parse_millis("lease-duration", &take("lease-duration")?)?,
                renew_deadline: parse_millis("renew-deadline", &take("renew-deadline")?)?,
                retry_period: parse_millis("retry-period", &take("retry-period")?)?,
            },
        };
        match flags.keys().next() {
            Some(unknown) => Err(format!("unknown flag --{unknown}")),
            None => Ok(parsed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let lease = "bench.election.x0".to_owned();
        for line in [
            Line::Ready,
            Line::Elected {
                lease: lease.clone(),
                at,
            },
            Line::Leader {
                lease: lease.clone(),
                id: "go-1".into(),
                at,
            },
            Line::Stopping {
                lease: lease.clone(),
                at,
            },
            Line::Lost {
                lease: lease.clone(),
                at,
            },
            Line::Released { lease, at },
            Line::Error("election x: boom".into()),
        ] {
            assert_eq!(Line::parse(&line.to_string()), Some(line));
        }
        assert_eq!(
            Line::parse("elected x 1700000000123456789").map(|l| l.to_string()),
            Some("elected x 1700000000123456789".to_owned())
        );
        assert_eq!(Line::parse("elected x soon"), None);
        assert_eq!(Line::parse("exited"), None);
        assert_eq!(Line::parse("I0101 klog chatter"), None);
    }

    #[test]
    fn commands_round_trip() {
        for c in [Command::Stop("a".into()), Command::StopAll] {
            assert_eq!(Command::parse(&c.to_string()), Some(c));
        }
        assert_eq!(Command::parse(""), None);
        assert_eq!(Command::parse("stop"), None);
    }

    #[test]
    fn args_round_trip() {
        let timing = PeerTiming::new(
            Duration::from_secs(4),
            Duration::from_secs(3),
            Duration::from_millis(500),
        );
        for leases in [
            Leases::Names(vec!["a".into(), "b".into()]),
            Leases::Prefix {
                prefix: "lat".into(),
                count: 3,
            },
        ] {
            let args = PeerArgs {
                kubeconfig: "/tmp/k".into(),
                namespace: "ns".into(),
                identity: "dsync-a".into(),
                user_agent: "dsync-a".into(),
                leases,
                timing,
            };
            assert_eq!(PeerArgs::parse(args.to_args()), Ok(args));
        }
        let args = PeerArgs::parse(
            "--kubeconfig k --namespace n --identity i --user-agent u --lease-prefix p --count 2 \
             --lease-duration 4000ms --renew-deadline 3000ms --retry-period 500ms"
                .split(' ')
                .map(str::to_owned),
        )
        .unwrap();
        assert_eq!(args.leases.names(), ["p0", "p1"]);
        assert!(PeerArgs::parse(["--namespace".to_owned()]).is_err());
    }
}
