//! A Go peer from `benches/peers/` as a child process, driven over its line protocol: the
//! client-go `leaderelection` + `LeaseLock` peer (`clientgo`). See `benches/peers/clientgo/main.go`
//! for the protocol; times on its lines are Unix nanoseconds of the wall clock every process on
//! this machine shares.
#![allow(dead_code)] // each test binary uses part of the support code

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dsync::Timing;
use tokio::sync::mpsc;

/// Builds the Go peers once per test process (the script skips the build when its stamp
/// matches) and returns their directory. Fails, never skips, if they cannot be built.
pub fn peer_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        super::apiserver::run_build_script(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/build.sh"),
            "Go >= 1.26 and the Go module proxy",
        )
    })
    .clone()
}

/// One line of a peer's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Ready,
    Elected {
        lease: String,
        at: SystemTime,
    },
    Leader {
        lease: String,
        id: String,
        at: SystemTime,
    },
    Stopping {
        lease: String,
        at: SystemTime,
    },
    Lost {
        lease: String,
        at: SystemTime,
    },
    Released {
        lease: String,
        at: SystemTime,
    },
    Error(String),
    /// The process closed its stdout (exited).
    Exited,
}

fn unix_nanos(s: &str) -> SystemTime {
    let n: u64 = s.parse().unwrap_or_else(|_| panic!("bad time {s:?}"));
    UNIX_EPOCH + Duration::from_nanos(n)
}

fn parse(line: &str) -> Option<Line> {
    let f: Vec<&str> = line.split_whitespace().collect();
    Some(match f.as_slice() {
        ["ready"] => Line::Ready,
        ["elected", l, t] => Line::Elected {
            lease: l.to_string(),
            at: unix_nanos(t),
        },
        ["leader", l, id, t] => Line::Leader {
            lease: l.to_string(),
            id: id.to_string(),
            at: unix_nanos(t),
        },
        ["stopping", l, t] => Line::Stopping {
            lease: l.to_string(),
            at: unix_nanos(t),
        },
        ["lost", l, t] => Line::Lost {
            lease: l.to_string(),
            at: unix_nanos(t),
        },
        ["released", l, t] => Line::Released {
            lease: l.to_string(),
            at: unix_nanos(t),
        },
        ["error", ..] => Line::Error(line.to_owned()),
        _ => return None,
    })
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A running Go peer. Killed (SIGKILL) when dropped.
pub struct GoPeer {
    pub identity: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::UnboundedReceiver<Line>,
    /// Every line received so far, in order.
    pub history: Vec<Line>,
}

impl GoPeer {
    /// Starts the client-go peer campaigning for `leases` in `namespace`, as `identity`, with
    /// `timing`, and waits for it to be ready.
    pub async fn client_go(
        kubeconfig: &std::path::Path,
        namespace: &str,
        identity: &str,
        leases: &[&str],
        timing: Timing,
    ) -> GoPeer {
        let bin = peer_dir().join("clientgo-peer");
        let mut child = Command::new(&bin)
            .args(["--kubeconfig", &kubeconfig.display().to_string()])
            .args(["--namespace", namespace, "--identity", identity])
            .args(["--user-agent", identity, "--leases", &leases.join(",")])
            .args(["--lease-duration", &go_duration(timing.lease_duration())])
            .args(["--renew-deadline", &go_duration(timing.renew_deadline())])
            .args(["--retry-period", &go_duration(timing.retry_period())])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // client-go's klog chatter; failures come as `error` lines on stdout.
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(parsed) = parse(&line)
                    && tx.send(parsed).is_err()
                {
                    return;
                }
            }
            let _ = tx.send(Line::Exited);
        });
        let mut peer = GoPeer {
            identity: identity.to_owned(),
            stdin: child.stdin.take(),
            child,
            rx,
            history: Vec::new(),
        };
        peer.expect(Duration::from_secs(30), "ready", |l| *l == Line::Ready)
            .await;
        peer
    }

    /// Waits (up to `limit`) for a line matching `want`, recording every line on the way.
    /// Panics on an `error` line, on exit, or on timeout.
    pub async fn expect(
        &mut self,
        limit: Duration,
        what: &str,
        want: impl Fn(&Line) -> bool,
    ) -> Line {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "Go peer {}: no {what} within {limit:?}; lines so far: {:#?}",
                        self.identity, self.history
                    )
                })
                .unwrap_or(Line::Exited);
            self.history.push(line.clone());
            if want(&line) {
                return line;
            }
            match line {
                Line::Error(e) => panic!("Go peer {}: {e}", self.identity),
                Line::Exited => panic!("Go peer {} exited waiting for {what}", self.identity),
                _ => {}
            }
        }
    }

    /// Records whatever lines have arrived, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            if let Line::Error(e) = &line {
                panic!("Go peer {}: {e}", self.identity);
            }
            self.history.push(line);
        }
    }

    /// Sends one command line (`stop <lease>`, `stopall`).
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("write to the Go peer");
        stdin.flush().expect("flush to the Go peer");
    }

    /// SIGKILL: a crash, nothing released. Returns the wall time of the kill.
    pub fn kill(&mut self) -> SystemTime {
        let at = SystemTime::now();
        let _ = self.child.kill();
        let _ = self.child.wait();
        at
    }

    /// The peer's terms on `lease` from its lines so far: (start, end), the end `None` while it
    /// still leads. A term ends when its context is cancelled (`stopping`, graceful) or when it
    /// stops leading (`lost`), whichever comes first; `killed_at` ends an open term.
    pub fn terms(
        &self,
        lease: &str,
        killed_at: Option<SystemTime>,
    ) -> Vec<(SystemTime, Option<SystemTime>)> {
        let mut terms: Vec<(SystemTime, Option<SystemTime>)> = Vec::new();
        for line in &self.history {
            match line {
                Line::Elected { lease: l, at } if l == lease => terms.push((*at, None)),
                Line::Stopping { lease: l, at } | Line::Lost { lease: l, at } if l == lease => {
                    if let Some(open) = terms.last_mut().filter(|t| t.1.is_none()) {
                        open.1 = Some(*at);
                    }
                }
                _ => {}
            }
        }
        if let (Some(open), Some(k)) = (terms.last_mut(), killed_at)
            && open.1.is_none()
        {
            open.1 = Some(k);
        }
        terms
    }
}

impl Drop for GoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
