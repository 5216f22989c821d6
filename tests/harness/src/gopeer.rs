//! A Go peer from `benches/peers/` as a child process, driven over its line protocol (see
//! [`crate::protocol`] and `benches/peers/clientgo/main.go`): the client-go `leaderelection` +
//! `LeaseLock` peer (`clientgo`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::apiserver::{repo, run_build_script};
use crate::protocol::{Leases, PeerArgs, read_lines};
pub use crate::protocol::{Line, PeerTiming};

/// Builds the Go peers once per test process (the script skips the build when its stamp
/// matches) and returns their directory. Fails, never skips, if they cannot be built.
pub fn peer_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        run_build_script(
            &repo().join("benches/peers/build.sh"),
            "Go >= 1.26 and the Go module proxy",
        )
    })
    .clone()
}

/// The client-go peer's executable (built by [`peer_dir`] if needed).
pub fn clientgo_bin() -> PathBuf {
    peer_dir().join("clientgo-peer")
}

/// A running Go peer. Killed (SIGKILL) when dropped.
pub struct GoPeer {
    /// Its holder identity (and User-Agent).
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
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        leases: &[&str],
        timing: PeerTiming,
    ) -> GoPeer {
        let args = PeerArgs {
            kubeconfig: kubeconfig.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            user_agent: identity.to_owned(),
            leases: Leases::Names(leases.iter().map(|l| l.to_string()).collect()),
            timing,
        };
        Self::start(identity, args.to_args()).await
    }

    /// Starts the client-go peer in coordinated mode (KEP-4355) for `lease`: it registers a
    /// `LeaseCandidate` named `identity` with these versions (strategy
    /// `OldestEmulationVersion`) and leads only when the API server's election controller
    /// assigns it the lease. The kubeconfig's user needs `leasecandidates` rights.
    pub async fn client_go_coordinated(
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        lease: &str,
        timing: PeerTiming,
        binary_version: &str,
        emulation_version: &str,
    ) -> GoPeer {
        let mut args = PeerArgs {
            kubeconfig: kubeconfig.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            user_agent: identity.to_owned(),
            leases: Leases::Names(vec![lease.to_owned()]),
            timing,
        }
        .to_args();
        args.extend([
            "--coordinated".to_owned(),
            "--binary-version".to_owned(),
            binary_version.to_owned(),
            "--emulation-version".to_owned(),
            emulation_version.to_owned(),
        ]);
        Self::start(identity, args).await
    }

    async fn start(identity: &str, args: Vec<String>) -> GoPeer {
        let bin = clientgo_bin();
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // client-go's klog chatter; failures come as `error` lines on stdout.
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::unbounded_channel();
        read_lines(stdout, move |line| tx.send(line).is_ok());
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
                Line::Error(_) => panic!("Go peer {}: {line}", self.identity),
                Line::Exited => panic!("Go peer {} exited waiting for {what}", self.identity),
                _ => {}
            }
        }
    }

    /// Records whatever lines have arrived, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            if let Line::Error(_) = &line {
                panic!("Go peer {}: {line}", self.identity);
            }
            self.history.push(line);
        }
    }

    /// Sends one command line (`stop <lease>`, `stopall`: a [`crate::protocol::Command`] as
    /// text).
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
