//! The peers as child processes: spawning them (dsync in peer mode, or the client-go peer),
//! sending them commands, and following what their protocol lines say.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dsync_harness::protocol::{self, Leases, Line, PeerArgs, PeerTiming, unix_nanos};

/// The implementation a peer runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Impl {
    Dsync,
    ClientGo,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Dsync => "dsync",
            Impl::ClientGo => "client-go",
        }
    }
}

/// A running peer process.
pub struct Peer {
    /// Its identity, also its User-Agent (how the audit log names it).
    pub name: String,
    pub child: Child,
    stdin: Option<ChildStdin>,
}

impl Peer {
    pub fn send(&mut self, command: &protocol::Command) {
        let stdin = self.stdin.as_mut().expect("peer stdin open");
        writeln!(stdin, "{command}").expect("peer accepts commands");
        stdin.flush().unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// What the driver knows from the peers' events.
#[derive(Default)]
pub struct State {
    pub ready: HashSet<usize>,
    pub exited: HashSet<usize>,
    /// Leases each peer currently leads.
    pub leads: HashMap<usize, HashSet<String>>,
    /// Leases for which each peer has observed some leader.
    pub sees_leader: HashMap<usize, HashSet<String>>,
    /// First `elected` after `since` per lease, by any peer: (peer, Unix ns).
    pub elected_at: HashMap<String, (usize, i128)>,
    /// When each lease's `stop` was received (Unix ns).
    pub stopping_at: HashMap<String, i128>,
    /// How many terms each peer has lost (`lost` lines), whether or not it won the lease back.
    pub terms_lost: HashMap<usize, usize>,
}

/// The peers of one phase and their events, all on one channel.
pub struct Run {
    rx: mpsc::Receiver<(usize, Line)>,
    tx: mpsc::Sender<(usize, Line)>,
    pub peers: Vec<Peer>,
    pub state: State,
    /// The client-go peer's executable.
    clientgo: PathBuf,
    kubeconfig: PathBuf,
    timing: PeerTiming,
}

impl Run {
    pub fn new(clientgo: PathBuf, kubeconfig: PathBuf, timing: PeerTiming) -> Run {
        let (tx, rx) = mpsc::channel();
        Run {
            rx,
            tx,
            peers: Vec::new(),
            state: State::default(),
            clientgo,
            kubeconfig,
            timing,
        }
    }

    /// Starts peer `name` of `imp` for leases `<prefix>0 .. <prefix>{count-1}` in `namespace`;
    /// its events come as those of the next index of [`Run::peers`].
    pub fn spawn(&mut self, imp: Impl, namespace: &str, name: &str, prefix: &str, count: usize) {
        let index = self.peers.len();
        let identity = format!("{}-{name}", imp.name());
        let args = PeerArgs {
            kubeconfig: self.kubeconfig.clone(),
            namespace: namespace.into(),
            identity: identity.clone(),
            user_agent: identity.clone(),
            leases: Leases::Prefix {
                prefix: prefix.into(),
                count,
            },
            timing: self.timing,
        };
        let mut command = match imp {
            Impl::ClientGo => Command::new(&self.clientgo),
            Impl::Dsync => {
                // An older build of this bench speaks the same peer protocol.
                let peer = std::env::var_os("DSYNC_E2E_DSYNC_PEER")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| std::env::current_exe().unwrap());
                let mut c = Command::new(peer);
                c.env("DSYNC_E2E_PEER", "1");
                c
            }
        };
        let mut child = command
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {} peer: {e}", imp.name()));
        let stdout = child.stdout.take().unwrap();
        let tx = self.tx.clone();
        let peer_name = identity.clone();
        protocol::read_lines(stdout, move |line| {
            if let Line::Error(_) = &line {
                eprintln!("peer {peer_name}: {line}");
            }
            tx.send((index, line)).is_ok()
        });
        self.peers.push(Peer {
            name: identity,
            stdin: child.stdin.take(),
            child,
        });
    }

    fn apply(&mut self, peer: usize, line: Line) {
        let s = &mut self.state;
        match line {
            Line::Ready => {
                s.ready.insert(peer);
            }
            Line::Exited => {
                s.exited.insert(peer);
                s.leads.remove(&peer);
            }
            Line::Elected { lease, at } => {
                s.leads.entry(peer).or_default().insert(lease.clone());
                s.elected_at.entry(lease).or_insert((peer, unix_nanos(at)));
            }
            Line::Lost { lease, .. } => {
                *s.terms_lost.entry(peer).or_default() += 1;
                s.leads.entry(peer).or_default().remove(&lease);
            }
            Line::Leader { lease, .. } => {
                s.sees_leader.entry(peer).or_default().insert(lease);
            }
            Line::Stopping { lease, at } => {
                s.stopping_at.insert(lease, unix_nanos(at));
            }
            Line::Released { .. } | Line::Error(_) => {}
        }
    }

    /// Processes events until `done` holds; panics with `what` after `limit`.
    pub fn until(&mut self, what: &str, limit: Duration, done: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(&self.state) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((peer, event)) => self.apply(peer, event),
                Err(_) => panic!("e2e: timed out after {limit:?} waiting for {what}"),
            }
        }
    }

    /// Like [`until`](Self::until), but a result rather than an abort: whether `done` came
    /// true within `limit` (a benchmark reports what did not happen).
    pub fn wait_until(&mut self, limit: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !done(&self.state) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((peer, event)) => self.apply(peer, event),
                Err(_) => return done(&self.state),
            }
        }
        true
    }

    /// Processes whatever events arrive during `d`.
    pub fn pass(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok((peer, event)) = self.rx.recv_timeout(left) {
                self.apply(peer, event);
            }
        }
    }

    /// Graceful end of all peers (stdin closed: stop everything, release, exit).
    pub fn finish(&mut self) {
        for p in &mut self.peers {
            p.stdin = None;
        }
        let all: HashSet<usize> = (0..self.peers.len()).collect();
        self.until("peers to exit", Duration::from_secs(60), |s| {
            all.is_subset(&s.exited)
        });
        for p in &mut self.peers {
            let _ = p.child.wait();
        }
        self.peers.clear();
        self.state = State::default();
    }
}
