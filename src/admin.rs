//! Operator actions on the leases in a store, for tools such as a command line: list them,
//! force-release one, ask a leader to hand its election over. The entry points are on
//! [`Dsync`](crate::Dsync) ([`stored_leases`](crate::Dsync::stored_leases),
//! [`force_release`](crate::Dsync::force_release),
//! [`request_handoff`](crate::Dsync::request_handoff)); this module holds their store logic
//! and what they return.
//!
//! They start no lease actor and take part in no election: each is a read, and at most one
//! compare-and-swap write per attempt, of records built by the lease machine's own rules
//! (`released`, `with_handoff_request`). A write that meets a concurrent one (a holder
//! renewing) re-reads and decides again, [`ATTEMPTS`] times at most. Every store call is
//! bounded by the renew deadline, as the lease actors' and observers' calls are.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::lease::{force_released, released, with_handoff_request};
use crate::record::{LeaseKey, LeaseRecord, StoredLease};
use crate::store::{LeaseStore, StoreError, StoreResult};

/// How many times a write that met a concurrent one is tried (each after a fresh read).
pub const ATTEMPTS: usize = 5;

/// What [`Dsync::force_release`](crate::Dsync::force_release) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForceReleased {
    /// The lease.
    pub lease: LeaseKey,
    /// Who held it and lost it; `None`: nobody held it, and nothing was written.
    pub previous_holder: Option<String>,
    /// The fencing token of the term that was ended (the lease's `leaseTransitions`; when
    /// nobody held it, the token of the last term). The next holder's token is higher.
    pub fencing_token: i32,
}

/// What [`Dsync::request_handoff`](crate::Dsync::request_handoff) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandoffRequested {
    /// The election's lease.
    pub lease: LeaseKey,
    /// Who leads it and is asked to hand it over (`== to`: nothing was written).
    pub holder: String,
    /// The identity it is to be handed to.
    pub to: String,
}

/// A store and the limit of each of its calls.
pub(crate) struct Admin {
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) call_timeout: Duration,
    /// The lease duration a force release declares when the record declares none.
    pub(crate) lease_duration: Duration,
}

/// What to do with the lease as read.
enum Decision<T> {
    /// Write this record on the version read, then answer `T`.
    Write(LeaseRecord, T),
    /// Write nothing, answer `T`.
    Done(T),
}

impl Admin {
    /// Every lease of `namespace`, sorted by name.
    pub(crate) async fn list(&self, namespace: &str) -> Result<Vec<StoredLease>> {
        let operation = format!("list leases in namespace {namespace}");
        self.timed(&operation, self.store.list(namespace))
            .await
            .map_err(|e| Error::from_store(operation, e))
    }

    /// See [`Dsync::force_release`](crate::Dsync::force_release).
    /// `now`: free at once ([`released`]), for a holder known to be dead; otherwise free after
    /// the holder's lease duration for dsync candidates ([`force_released`]).
    pub(crate) async fn force_release(&self, key: &LeaseKey, now: bool) -> Result<ForceReleased> {
        self.rewrite(key, "force-release", |lease| {
            let record = &lease.record;
            let answer = ForceReleased {
                lease: key.clone(),
                previous_holder: record.holder().map(str::to_owned),
                fencing_token: record.token(),
            };
            let at = SystemTime::now();
            Ok(match record.holder() {
                Some(_) if now => Decision::Write(released(record, at), answer),
                Some(_) => Decision::Write(force_released(record, self.lease_duration, at), answer),
                None => Decision::Done(answer),
            })
        })
        .await
    }

    /// See [`Dsync::request_handoff`](crate::Dsync::request_handoff).
    pub(crate) async fn request_handoff(
        &self,
        key: &LeaseKey,
        to: &str,
    ) -> Result<HandoffRequested> {
        self.rewrite(key, "request a handoff of", |lease| {
            let record = &lease.record;
            let Some(holder) = record.holder() else {
                return Err(Error::NoLeader {
                    lease: key.to_string(),
                });
            };
            if record.coordinated() {
                return Err(Error::InvalidState {
                    lease: key.to_string(),
                    reason: "the lease is coordinated (spec.strategy is set): the API server's \
                             election controller picks its holder, and dsync leaders do not \
                             honour handoff requests on it"
                        .into(),
                });
            }
            let answer = HandoffRequested {
                lease: key.clone(),
                holder: holder.to_owned(),
                to: to.to_owned(),
            };
            Ok(if holder == to {
                Decision::Done(answer)
            } else {
                Decision::Write(with_handoff_request(record, to), answer)
            })
        })
        .await
    }

    /// Read, decide, compare-and-swap; on a conflict read again, [`ATTEMPTS`] times at most.
    async fn rewrite<T>(
        &self,
        key: &LeaseKey,
        verb: &str,
        decide: impl Fn(&StoredLease) -> Result<Decision<T>>,
    ) -> Result<T> {
        let operation = format!("{verb} lease {key}");
        let failed = |e: StoreError| Error::from_store(operation.clone(), e);
        for _ in 0..ATTEMPTS {
            let lease = self
                .timed(&format!("read lease {key}"), self.store.get(key))
                .await
                .map_err(failed)?;
            let (record, answer) = match decide(&lease)? {
                Decision::Done(answer) => return Ok(answer),
                Decision::Write(record, answer) => (record, answer),
            };
            let write = self.store.replace(key, record, &lease.resource_version);
            match self.timed(&format!("write lease {key}"), write).await {
                Ok(_) => return Ok(answer),
                Err(StoreError::Conflict { .. }) => {
                    tracing::debug!(lease = %key, "{verb}: conflict; reading again");
                }
                Err(e) => return Err(failed(e)),
            }
        }
        Err(Error::Store {
            operation: format!(
                "{operation}: each of {ATTEMPTS} attempts met a concurrent write (the lease \
                 changed between our read and our write)"
            ),
            source: StoreError::Conflict {
                lease: key.to_string(),
            },
        })
    }

    /// `call` under the call timeout.
    async fn timed<T>(
        &self,
        operation: &str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout {
                operation: operation.to_owned(),
                after: self.call_timeout,
            }),
        }
    }
}
