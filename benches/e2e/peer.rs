//! Peer mode (`DSYNC_E2E_PEER=1`): this binary as one dsync replica, speaking the peers' line
//! protocol (`dsync_harness::protocol`) as the client-go peer does, so the driver treats both
//! alike.

use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;

use actix::prelude::*;
use dsync::{Config, Deposed, Dsync, Elected, HolderChanged, Timing};
use dsync_harness::protocol::{Command, Line, PeerArgs};

/// Writes one protocol line to stdout, flushed.
fn line(l: Line) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{l}");
    let _ = out.flush();
}

struct Printer;
impl Actor for Printer {
    type Context = Context<Self>;
}
impl Handler<Elected> for Printer {
    type Result = ();
    fn handle(&mut self, msg: Elected, _: &mut Context<Self>) {
        line(Line::Elected {
            lease: msg.term.lease().name.clone(),
            // The term's own start instant: when the acquiring write returned.
            at: msg.term.started(),
        });
    }
}
impl Handler<Deposed> for Printer {
    type Result = ();
    fn handle(&mut self, msg: Deposed, _: &mut Context<Self>) {
        line(Line::Lost {
            lease: msg.lease.name,
            at: SystemTime::now(),
        });
    }
}
impl Handler<HolderChanged> for Printer {
    type Result = ();
    fn handle(&mut self, msg: HolderChanged, _: &mut Context<Self>) {
        if let Some(leader) = msg.holder {
            line(Line::Leader {
                lease: msg.lease.name,
                id: leader,
                at: SystemTime::now(),
            });
        }
    }
}

/// Runs the replica: `raw` is its command line (without the program name), as
/// [`PeerArgs::to_args`] writes it.
pub fn main(raw: Vec<String>) {
    let args = PeerArgs::parse(raw).unwrap_or_else(|e| panic!("peer: {e}"));
    actix::System::new().block_on(async move {
        let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig).expect("kubeconfig");
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kubeconfig");
        cfg.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_str(&args.user_agent).expect("user agent"),
        ));
        let timing = Timing::new(
            args.timing.lease_duration,
            args.timing.renew_deadline,
            args.timing.retry_period,
        )
        .expect("timing");
        let config = Config::default()
            .with_namespace(args.namespace.as_str())
            .with_identity(args.identity.as_str())
            .with_scope("bench")
            .with_timing(timing);
        // As `Dsync::from_env` does: the client is made on dsync's own lease thread.
        let dsync = Dsync::connect_with(config, cfg).await.expect("dsync");
        let printer = Printer.start();
        let mut elections = HashMap::new();
        for name in args.leases.names() {
            let election = dsync.election(&name).expect("election");
            election
                .subscribe(printer.clone().recipient::<Elected>())
                .and_then(|()| election.subscribe(printer.clone().recipient::<Deposed>()))
                .and_then(|()| election.subscribe(printer.clone().recipient::<HolderChanged>()))
                .expect("subscribe");
            elections.insert(election.lease().name, election);
        }
        line(Line::Ready);

        // Commands arrive on a thread (stdin is blocking) and are handled here.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for l in std::io::stdin().lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        while let Some(command) = rx.recv().await {
            match Command::parse(&command) {
                Some(Command::Stop(lease)) => match elections.get(&lease) {
                    Some(election) => {
                        line(Line::Stopping {
                            lease: lease.clone(),
                            at: SystemTime::now(),
                        });
                        let election = election.clone();
                        actix::spawn(async move {
                            let _ = election.stop().await;
                            line(Line::Released {
                                lease,
                                at: SystemTime::now(),
                            });
                        });
                    }
                    None => line(Line::Error(format!("unknown lease {lease:?}"))),
                },
                Some(Command::StopAll) => {
                    let _ = dsync.shutdown().await;
                }
                None if command.trim().is_empty() => {}
                None => line(Line::Error(format!("unknown command {command:?}"))),
            }
        }
        let _ = dsync.shutdown().await;
    });
}
