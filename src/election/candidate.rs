//! A replica's `LeaseCandidate` for a coordinated election (KEP-4355): registered, renewed,
//! answered when the API server's election controller pings it, and deleted when the election
//! stops. See [Coordinated leader election](crate::election#coordinated-leader-election).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::sync::watch;

use crate::config::Config;
use crate::election::Election;
use crate::error::{Error, Result};
use crate::names::is_dns1123_subdomain;
use crate::record::LeaseKey;
use crate::store::{CandidateRecord, LeaseStore, StoreError, StoredCandidate};

/// The strategy the API server's election controller implements: the candidate with the
/// oldest emulation version (then the oldest binary version, then the oldest candidate) leads.
pub const OLDEST_EMULATION_VERSION: &str = "OldestEmulationVersion";

/// How often a candidate re-reads its `LeaseCandidate` to see the controller's pings while it
/// cannot watch it (see [`LeaseStore::candidate_changes`]), and retries a failed write. The
/// controller counts only candidates that answer a ping within 5 s, so this stays well below.
const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// How often a candidate renews without being pinged (client-go: every 5 minutes). The
/// controller forgets a candidate not renewed for 30 minutes, and re-runs the election when
/// one has not renewed for 15.
const DEFAULT_RENEW_EVERY: Duration = Duration::from_secs(5 * 60);

/// A replica's bid in a coordinated election: what its `LeaseCandidate` says. The opt-in for
/// letting the API server's election controller pick this replica ([`Dsync::candidate`]).
///
/// [`Dsync::candidate`]: crate::Dsync::candidate
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Candidacy {
    binary_version: String,
    emulation_version: String,
    strategy: String,
    poll: Duration,
    renew_every: Duration,
}

impl Candidacy {
    /// A candidacy with strategy [`OLDEST_EMULATION_VERSION`]. Both versions are semantic
    /// versions `MAJOR.MINOR.PATCH` (no `v`), with `emulation_version <= binary_version`:
    /// the API server refuses anything else; [`Dsync::candidate`](crate::Dsync::candidate)
    /// checks first and says which is wrong.
    pub fn new(binary_version: impl Into<String>, emulation_version: impl Into<String>) -> Self {
        Candidacy {
            binary_version: binary_version.into(),
            emulation_version: emulation_version.into(),
            strategy: OLDEST_EMULATION_VERSION.to_owned(),
            poll: DEFAULT_POLL,
            renew_every: DEFAULT_RENEW_EVERY,
        }
    }

    /// Another strategy: [`OLDEST_EMULATION_VERSION`] (the only one the API server's
    /// controller implements) or a third-party one, `<prefix>/<name>`, that another
    /// controller elects by.
    pub fn with_strategy(mut self, strategy: impl Into<String>) -> Self {
        self.strategy = strategy.into();
        self
    }

    /// How often the candidate re-reads its object to answer the controller's pings while its
    /// watch on the object is down (or the store has none), and retries a failed write
    /// (default 1 s; must be below 5 s, the time the controller waits for an answer). With a
    /// working watch the candidate reads its object only when it changed.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The binary version.
    pub fn binary_version(&self) -> &str {
        &self.binary_version
    }

    /// The emulation version.
    pub fn emulation_version(&self) -> &str {
        &self.emulation_version
    }

    /// The strategy.
    pub fn strategy(&self) -> &str {
        &self.strategy
    }

    /// Checks what the API server would refuse, with the setting at fault.
    pub fn validate(&self) -> Result<()> {
        let binary = parse_semver(&self.binary_version).ok_or_else(|| Error::InvalidConfig {
            key: "candidacy.binary_version",
            reason: format!(
                "{:?} is not a semantic version MAJOR.MINOR.PATCH",
                self.binary_version
            ),
        })?;
        let emulation =
            parse_semver(&self.emulation_version).ok_or_else(|| Error::InvalidConfig {
                key: "candidacy.emulation_version",
                reason: format!(
                    "{:?} is not a semantic version MAJOR.MINOR.PATCH",
                    self.emulation_version
                ),
            })?;
        if binary < emulation {
            return Err(Error::InvalidConfig {
                key: "candidacy.binary_version",
                reason: format!(
                    "{} is below the emulation version {}",
                    self.binary_version, self.emulation_version
                ),
            });
        }
        let strategy_ok = match self.strategy.split_once('/') {
            None => self.strategy == OLDEST_EMULATION_VERSION,
            Some((prefix, name)) => {
                is_dns1123_subdomain(prefix)
                    && !name.is_empty()
                    && !name.contains('/')
                    && name.len() <= 63
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            }
        };
        if !strategy_ok {
            return Err(Error::InvalidConfig {
                key: "candidacy.strategy",
                reason: format!(
                    "{:?} is neither {OLDEST_EMULATION_VERSION} nor a prefixed name \
                     `<prefix>/<name>`",
                    self.strategy
                ),
            });
        }
        if self.poll.is_zero() || self.poll >= Duration::from_secs(5) {
            return Err(Error::InvalidConfig {
                key: "candidacy.poll_interval",
                reason: format!(
                    "{:?} must be above zero and below 5s (the controller waits 5s for an \
                     answer to its ping)",
                    self.poll
                ),
            });
        }
        Ok(())
    }
}

/// `MAJOR.MINOR.PATCH[-pre][+build]` as blang/semver's strict `Parse` takes it (numbers
/// without leading zeros), as a comparable triple; the pre-release part is not compared.
fn parse_semver(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['+', '-']).next()?;
    let mut parts = core.split('.');
    let mut number = || -> Option<u64> {
        let p = parts.next()?;
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (p.len() > 1 && p.starts_with('0'))
        {
            return None;
        }
        p.parse().ok()
    };
    let triple = (number()?, number()?, number()?);
    if parts.next().is_some() {
        return None;
    }
    Some(triple)
}

/// What a candidate has done, published by its task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CandidateStatus {
    /// The `LeaseCandidate` exists as this replica last wrote it.
    pub registered: bool,
    /// How many times the candidate was written (created or renewed).
    pub writes: u64,
    /// How many of the controller's pings it answered.
    pub pings_answered: u64,
    /// The last failure to register or renew, until a write succeeds again. A candidate that
    /// cannot register is never silent: this is set and a warning is logged.
    pub error: Option<String>,
    /// The candidate was withdrawn (its object deleted, or the deletion attempted).
    pub withdrawn: bool,
    /// The candidate follows its object through the store's change signal (one watch on
    /// Kubernetes) and reads it only when it changed. `false` until that signal first spoke
    /// (and its news were read), and while it reads its object every poll interval instead:
    /// a watch that failed (no `watch` right on `leasecandidates`), a store without one.
    pub watching: bool,
}

/// A handle on this replica's `LeaseCandidate` for one election. The candidate lives until
/// the election stops (or [`withdraw`](Self::withdraw)); dropping the handle does not
/// withdraw it.
#[derive(Debug, Clone)]
pub struct Candidate {
    key: LeaseKey,
    status: watch::Receiver<CandidateStatus>,
    withdraw: Arc<watch::Sender<bool>>,
}

impl Candidate {
    /// The `LeaseCandidate` object: the election's namespace, and this replica's identity as
    /// its name (the controller writes the name of the candidate it picks as the Lease's
    /// holder, so it must be the identity).
    pub fn key(&self) -> &LeaseKey {
        &self.key
    }

    /// What the candidate has done so far.
    pub fn status(&self) -> CandidateStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes from now on.
    pub fn watch_status(&self) -> watch::Receiver<CandidateStatus> {
        let mut rx = self.status.clone();
        rx.mark_unchanged();
        rx
    }

    /// Waits until the candidate is registered. The error it last met if it stops (is
    /// withdrawn) before that.
    pub async fn registered(&self) -> Result<()> {
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(|s| s.registered || s.withdrawn)
            .await
            .map(|s| s.clone())
            .unwrap_or_else(|_| self.status.borrow().clone());
        if status.registered {
            Ok(())
        } else {
            Err(Error::InvalidState {
                lease: self.key.to_string(),
                reason: format!(
                    "the LeaseCandidate was withdrawn before it registered{}",
                    status.error.map(|e| format!(": {e}")).unwrap_or_default()
                ),
            })
        }
    }

    /// Withdraws the candidacy (deletes the `LeaseCandidate`) while the election runs on, and
    /// waits until that is done. The election itself is not stopped.
    pub async fn withdraw(&self) {
        let _ = self.withdraw.send(true);
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| s.withdrawn).await;
    }
}

/// Starts the candidate task of `election` on the lease thread `arbiter`, where the store's
/// client lives (a Kubernetes client's connections belong to the runtime that made them: a
/// task elsewhere could be handed one that dies with dsync's thread, and fail to withdraw).
/// `companions` tracks it, so that a shutdown waits for its withdrawal.
pub(crate) fn start(
    store: Arc<dyn LeaseStore>,
    config: &Config,
    election: &Election,
    candidacy: Candidacy,
    arbiter: &actix::ArbiterHandle,
    companions: &tokio_util::task::TaskTracker,
) -> Result<Candidate> {
    candidacy.validate()?;
    if !is_dns1123_subdomain(&config.identity) {
        return Err(Error::InvalidConfig {
            key: "identity",
            reason: format!(
                "{:?} cannot name a LeaseCandidate (a DNS-1123 subdomain is needed: the \
                 election controller names the candidate it picks as the Lease's holder)",
                config.identity
            ),
        });
    }
    let lease = election.lease();
    let key = LeaseKey::new(lease.namespace.clone(), config.identity.clone());
    let (status_tx, status) = watch::channel(CandidateStatus::default());
    let (withdraw_tx, withdraw_rx) = watch::channel(false);
    let task = Task {
        store,
        call_limit: config.timing.renew_deadline(),
        key: key.clone(),
        spec: CandidateRecord {
            lease_name: lease.name.clone(),
            binary_version: candidacy.binary_version.clone(),
            emulation_version: candidacy.emulation_version.clone(),
            strategy: candidacy.strategy.clone(),
            renew_time: None,
            ping_time: None,
        },
        candidacy,
        status: status_tx,
    };
    let run = companions.track_future(task.run(election.watch_status(), withdraw_rx));
    if !arbiter.spawn(run) {
        return Err(Error::Stopped {
            what: "dsync's lease thread".into(),
        });
    }
    Ok(Candidate {
        key,
        status,
        withdraw: Arc::new(withdraw_tx),
    })
}

struct Task {
    store: Arc<dyn LeaseStore>,
    /// The limit on each store call (the renew deadline, as for operator actions): a call
    /// that hangs (a black-holed connection) must not keep a shutdown waiting for the
    /// candidate's withdrawal.
    call_limit: Duration,
    key: LeaseKey,
    spec: CandidateRecord,
    candidacy: Candidacy,
    status: watch::Sender<CandidateStatus>,
}

impl Task {
    async fn run(
        self,
        mut election: watch::Receiver<crate::election::ElectionStatus>,
        mut withdraw: watch::Receiver<bool>,
    ) {
        let mut last: Option<StoredCandidate> = None;
        let mut next_renewal = tokio::time::Instant::now();
        // Every `Candidate` handle dropped: the candidacy runs on with the election (only an
        // explicit `withdraw` or the election's end withdraws it).
        let mut handles = true;
        // The controller's pings are changes to the object: the candidate reads it again when
        // the store says it changed, and on a timer (`poll`) only while that signal cannot be
        // trusted (a failed watch, a store without one) or the last read or write failed.
        // Trusted from the start: the signal's first word (a watch's initial list) comes
        // after it was opened, so a ping written before is read then.
        let mut changes = self.store.candidate_changes(&self.key);
        let (mut open, mut trusted, mut heard) = (true, true, false);
        let mut read = true;
        let mut last_read = tokio::time::Instant::now();
        loop {
            if election.borrow().stopped || (handles && *withdraw.borrow()) {
                break;
            }
            if read {
                last_read = tokio::time::Instant::now();
                match self.step(&mut last, &mut next_renewal).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(candidate = %self.key, lease = %self.spec.lease_name,
                            error = %e, "LeaseCandidate not registered or renewed");
                        last = None;
                        self.status.send_modify(|s| {
                            s.registered = false;
                            s.error = Some(e.to_string());
                        });
                    }
                }
            }
            let watching = open && trusted && heard;
            self.status
                .send_if_modified(|s| std::mem::replace(&mut s.watching, watching) != watching);
            read = true;
            let next_read = if trusted && last.is_some() {
                next_renewal
            } else {
                last_read + self.candidacy.poll
            };
            tokio::select! {
                changed = election.wait_for(|s| s.stopped) => {
                    let _ = changed;
                    break;
                }
                asked = withdraw.wait_for(|w| *w), if handles => match asked {
                    Ok(_) => break,
                    Err(_) => handles = false,
                },
                change = changes.next(), if open => match change {
                    Some(Ok(version)) => {
                        tracing::trace!(candidate = %self.key, ?version, "LeaseCandidate changed");
                        (trusted, heard) = (true, true);
                        // Our own write coming back: nothing new to read.
                        read = version.is_none()
                            || last.as_ref().map(|c| &c.resource_version) != version.as_ref();
                    }
                    Some(Err(e)) => {
                        if trusted {
                            tracing::debug!(candidate = %self.key, error = %e,
                                "LeaseCandidate changes not seen; reading it every {:?}",
                                self.candidacy.poll);
                        }
                        trusted = false;
                        read = false;
                    }
                    None => {
                        open = false;
                        trusted = false;
                        read = false;
                    }
                },
                _ = tokio::time::sleep_until(next_read) => {}
            }
        }
        // The election stopped (or its actor is gone): the candidacy ends with it, so that
        // the controller does not pick a replica that no longer campaigns.
        match self
            .bounded("delete", self.store.delete_candidate(&self.key))
            .await
        {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(candidate = %self.key, error = %e,
                    "LeaseCandidate not deleted; the API server deletes it 30 minutes after its last renewal");
                self.status.send_modify(|s| s.error = Some(e.to_string()));
            }
        }
        self.status.send_modify(|s| {
            s.registered = false;
            s.watching = false;
            s.withdrawn = true;
        });
    }

    /// Reads the candidate; creates it if missing, renews it if pinged or due.
    async fn step(
        &self,
        last: &mut Option<StoredCandidate>,
        next_renewal: &mut tokio::time::Instant,
    ) -> std::result::Result<(), StoreError> {
        let current = match self
            .bounded("get", self.store.get_candidate(&self.key))
            .await
        {
            Ok(c) => c,
            Err(StoreError::NotFound { .. }) => {
                let mut record = self.spec.clone();
                record.renew_time = Some(SystemTime::now());
                let created = self
                    .bounded("create", self.store.create_candidate(&self.key, record))
                    .await?;
                self.wrote(false);
                *next_renewal = tokio::time::Instant::now() + self.candidacy.renew_every;
                *last = Some(created);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if current.record.lease_name != self.spec.lease_name {
            // One identity, one LeaseCandidate per namespace: the controller names the
            // candidate as the holder, so two elections of one replica in one namespace
            // cannot both be coordinated.
            return Err(StoreError::Invalid {
                lease: format!("leasecandidate {}", self.key),
                message: format!(
                    "the LeaseCandidate is for lease {:?}, not {:?} (one coordinated election \
                     per identity and namespace)",
                    current.record.lease_name, self.spec.lease_name
                ),
            });
        }
        let pinged = current.record.pinged();
        let ours = current.record.binary_version == self.spec.binary_version
            && current.record.emulation_version == self.spec.emulation_version
            && current.record.strategy == self.spec.strategy;
        if pinged || !ours || last.is_none() || tokio::time::Instant::now() >= *next_renewal {
            let mut record = self.spec.clone();
            record.ping_time = current.record.ping_time;
            record.renew_time = Some(SystemTime::now());
            let renewed = self
                .bounded(
                    "update",
                    self.store
                        .replace_candidate(&self.key, record, &current.resource_version),
                )
                .await?;
            self.wrote(pinged);
            *next_renewal = tokio::time::Instant::now() + self.candidacy.renew_every;
            *last = Some(renewed);
        }
        Ok(())
    }

    /// `call`, failed with [`StoreError::Timeout`] if it takes longer than the call limit.
    async fn bounded<T>(
        &self,
        verb: &str,
        call: impl std::future::Future<Output = std::result::Result<T, StoreError>>,
    ) -> std::result::Result<T, StoreError> {
        tokio::time::timeout(self.call_limit, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Timeout {
                    operation: format!("{verb} leasecandidate {}", self.key),
                    after: self.call_limit,
                })
            })
    }

    fn wrote(&self, answered_ping: bool) {
        self.status.send_modify(|s| {
            s.registered = true;
            s.writes += 1;
            s.pings_answered += u64::from(answered_ping);
            s.error = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_strict_semver() {
        assert_eq!(parse_semver("1.36.0"), Some((1, 36, 0)));
        assert_eq!(parse_semver("1.36.0-alpha.1+abc"), Some((1, 36, 0)));
        for bad in ["1.36", "v1.36.0", "1.36.0.1", "01.2.3", "", "a.b.c"] {
            assert_eq!(parse_semver(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_candidacy_is_validated_with_the_setting_at_fault() {
        assert!(Candidacy::new("1.36.0", "1.35.0").validate().is_ok());
        assert!(
            Candidacy::new("1.36.0", "1.36.0")
                .with_strategy("example.com/mine")
                .validate()
                .is_ok()
        );
        let key = |c: Candidacy| match c.validate() {
            Err(Error::InvalidConfig { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            key(Candidacy::new("1.36", "1.35.0")),
            "candidacy.binary_version"
        );
        assert_eq!(
            key(Candidacy::new("1.36.0", "v1")),
            "candidacy.emulation_version"
        );
        assert_eq!(
            key(Candidacy::new("1.35.0", "1.36.0")),
            "candidacy.binary_version"
        );
        assert_eq!(
            key(Candidacy::new("1.36.0", "1.36.0").with_strategy("Newest")),
            "candidacy.strategy"
        );
        assert_eq!(
            key(Candidacy::new("1.36.0", "1.36.0").with_poll_interval(Duration::from_secs(5))),
            "candidacy.poll_interval"
        );
    }
}
