//! [`Machine`]: every decision about one lease, as a pure state machine.
//!
//! The machine is fed what happened ([`on_result`](Machine::on_result) for a store call,
//! [`on_watch`](Machine::on_watch) for a watch event) and asked what to do next
//! ([`next`](Machine::next)) with the current instant and what the lease's owner wants. It
//! answers with a [`Step`]: a store call to make, a time to wait until, or "step down". It does
//! no IO, reads no clock and spawns nothing, so every rule is tested with plain `#[test]`s.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::backoff::{Failure, Pace, Streak};
use super::follow::Observed;
use crate::record::{LeaseRecord, StoredLease, WatchEvent, is_newer};
use crate::store::StoreError;
use crate::timing::Timing;

/// Our own claim on the lease while we hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Fencing token of this term (`leaseTransitions` written when acquiring).
    pub token: i32,
    /// When the write that acquired the lease was started.
    pub acquired_at: Instant,
    /// When the last *successful* write (acquire or renew) was started. Measured from the
    /// start, not the end, so a slow response can only make us step down earlier.
    pub renewed_at: Instant,
}

/// Why a claim ended without a release.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepDownReason {
    /// No renewal succeeded within `renew_deadline`.
    RenewDeadlineExceeded,
    /// Someone else wrote the lease: it names another holder or another term (possibly under
    /// our own identity: another process configured with the same name).
    Superseded {
        /// The new holder, if any.
        holder: Option<String>,
    },
    /// The lease object disappeared.
    LeaseDeleted,
    /// The lease is coordinated (`spec.strategy`) and the API server's election controller
    /// names another preferred holder (`spec.preferredHolder`). Unlike the other reasons the
    /// claim is *kept*: the term ends (cancelled, its work drains while renewals go on), then
    /// the lease is released so that the controller can hand it to `holder`.
    PreferredHolder {
        /// The preferred holder.
        holder: String,
    },
}

/// What the owner of the machine wants of the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Hold it: acquire it when it is free or expired, renew it while held.
    Acquire,
    /// Keep renewing what we hold, but acquire nothing (a term's work is draining).
    Keep,
    /// Give up what we hold (one compare-and-swap write, after any backoff); acquire nothing.
    Release,
}

/// A store call the machine asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `get`.
    Read,
    /// `create` of a lease that does not exist, held by us.
    Create,
    /// `replace` of a free or expired lease, taking it.
    Acquire,
    /// `replace` of our lease, renewing it.
    Renew,
    /// `replace` of our lease, clearing the holder.
    Release,
}

impl Op {
    /// The verb for messages: `read`, `create`, `acquire`, `renew`, `release`.
    pub fn verb(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Create => "create",
            Op::Acquire => "acquire",
            Op::Renew => "renew",
            Op::Release => "release",
        }
    }

    /// Whether the call writes.
    pub fn is_write(self) -> bool {
        self != Op::Read
    }
}

/// The request of a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read the lease.
    Get,
    /// Create the lease with this record.
    Create(LeaseRecord),
    /// Replace the lease with this record if it is still at `version`.
    Replace {
        /// The record to write.
        record: LeaseRecord,
        /// The version the write is based on.
        version: String,
    },
}

/// A store call to make now. Its result goes back to [`Machine::on_result`] with `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Identifies the call; a result for any other call is ignored.
    pub seq: u64,
    /// What the call is for.
    pub op: Op,
    /// What to send.
    pub request: Request,
    /// Give up after this long: never past the renew deadline of a claim, so a hanging call
    /// cannot keep a holder from stepping down in time.
    pub timeout: Duration,
}

/// Why the machine has nothing to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// A call is in flight. `until`: the claim's renew deadline, if we hold one (we step down
    /// then even if the call has not returned).
    InFlight {
        /// When to decide again regardless.
        until: Option<Instant>,
    },
    /// We hold the lease; the next renewal (or the deadline) is at `until`.
    Holding {
        /// When to decide again.
        until: Instant,
    },
    /// The lease is coordinated (`spec.strategy`): the API server's election controller picks
    /// its holder, and has not picked us (or prefers someone else). Nothing is written; a watch
    /// event (the controller naming us) is acted on at once, and the machine decides again at
    /// `until` regardless.
    Coordinated {
        /// The holder the lease names, if any.
        holder: Option<String>,
        /// When to decide again.
        until: Instant,
    },
    /// Someone else holds the lease; it cannot be taken before `until` unless it changes.
    Following {
        /// The holder.
        holder: String,
        /// When it expires by our observation (or a backoff ends, whichever is later).
        until: Instant,
    },
    /// A failed call is backed off: nothing is sent before `until`.
    Backoff {
        /// When the backoff ends (or a holder's deadline comes).
        until: Instant,
    },
    /// The record cannot be interpreted, so nothing is written. It is read again at `until`
    /// (a watch event showing a repair is acted on at once).
    Invalid {
        /// What is wrong.
        reason: String,
        /// When to read it again.
        until: Instant,
    },
    /// Nothing is wanted of the lease.
    Idle,
}

impl Waiting {
    /// When the machine should be asked again (besides on any event).
    pub fn until(&self) -> Option<Instant> {
        match self {
            Waiting::InFlight { until } => *until,
            Waiting::Holding { until }
            | Waiting::Following { until, .. }
            | Waiting::Coordinated { until, .. }
            | Waiting::Backoff { until }
            | Waiting::Invalid { until, .. } => Some(*until),
            Waiting::Idle => None,
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make this store call, then report its result.
    Call(Call),
    /// Nothing to do now.
    Wait(Waiting),
    /// Our claim is over (it is already dropped): end the term before anything else, then ask
    /// again. For [`StepDownReason::PreferredHolder`] the claim is kept until the term's work
    /// has drained and the lease is released (asked once per claim).
    StepDown(StepDownReason),
}

/// What a store call's result meant.
#[derive(Debug)]
pub enum Outcome {
    /// Read (or found missing); the observation is current.
    Read,
    /// A create or acquire succeeded: we hold the lease with this fencing token.
    Acquired {
        /// The new term's fencing token.
        token: i32,
    },
    /// A renewal was written: the claim's deadline moved.
    Renewed,
    /// A renewal was answered without a new version: nothing was written, so the claim is
    /// *not* extended (others did not see a change either); retried after a retry period.
    Unchanged,
    /// The release was written: we hold nothing.
    Released,
    /// A write lost its compare-and-swap: the lease is re-read before deciding again.
    Conflict,
    /// A failure that retrying may fix (timeout, unavailable); retried after a backoff.
    Retry {
        /// The failed call.
        op: Op,
        /// What it failed with.
        error: StoreError,
    },
    /// A definite answer (forbidden, invalid, missing namespace); backed off all the same.
    Failed {
        /// The failed call.
        op: Op,
        /// What it failed with.
        error: StoreError,
    },
}

#[derive(Debug, Clone)]
struct InFlight {
    seq: u64,
    op: Op,
    started: Instant,
    /// The version a replace is based on.
    base: Option<String>,
    /// A read made because the watch stayed behind too long (see `behind`): if it fails, we
    /// wait for the watch again instead of reading until it succeeds.
    confirming: bool,
    /// For an acquisition (create or acquire): the term its record starts, to recognise the
    /// write if its answer is lost (see [`Machine::unsure`]).
    writes: Option<Written>,
}

/// The term an acquisition writes: its fencing token and `acquireTime` (to the microsecond, as
/// the API server keeps it). A twin with our identity that took the lease from the same
/// record would write the same token, never the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    token: i32,
    acquired_micros: Option<u128>,
    /// When the write was sent: a claim it made counts from then.
    started: Instant,
}

impl Written {
    fn of(record: &LeaseRecord, started: Instant) -> Self {
        Written {
            token: record.token(),
            acquired_micros: micros(record.acquire_time),
            started,
        }
    }

    /// Whether `record` is the one this write put there (and nothing has been written since
    /// that changed the term).
    fn is(&self, record: &LeaseRecord, identity: &str) -> bool {
        record.holder() == Some(identity)
            && record.token() == self.token
            && micros(record.acquire_time) == self.acquired_micros
    }
}

fn micros(time: Option<SystemTime>) -> Option<u128> {
    time.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_micros())
}

/// What we are to the lease: what only a holder has lives in [`Role::Holder`], what only a
/// candidate has in [`Role::Candidate`], so that taking or ending a claim is one assignment
/// and leaves nothing of the other role behind.
#[derive(Debug, Clone)]
enum Role {
    /// We hold no claim.
    Candidate {
        /// The API server's election controller has just named us the holder of a coordinated
        /// lease (we saw its holder change to us), so the record may be taken at once even
        /// when `reclaim` is off (see `observe` and `expiry`).
        assigned: bool,
    },
    /// We hold the lease.
    Holder {
        /// Our claim.
        claim: Claim,
        /// The claim has been told to yield to a preferred holder (asked once per claim).
        yielding: bool,
    },
}

impl Role {
    /// A candidate that nobody has assigned the lease to.
    const CANDIDATE: Role = Role::Candidate { assigned: false };

    /// A holder of `claim`, not yet asked to yield.
    fn holder(claim: Claim) -> Role {
        Role::Holder {
            claim,
            yielding: false,
        }
    }

    fn claim(&self) -> Option<&Claim> {
        match self {
            Role::Holder { claim, .. } => Some(claim),
            Role::Candidate { .. } => None,
        }
    }
}

/// Every decision about one lease: see [`crate::lease`] for the rules it keeps.
///
/// Fed what happened ([`on_result`](Machine::on_result) for a store call,
/// [`on_watch`](Machine::on_watch) for a watch event) and asked what to do next
/// ([`next`](Machine::next)) with the current instant and what its owner wants, it answers with
/// a [`Step`]: a store call to make, a time to wait until, or "step down". It does no IO, reads
/// no clock and spawns nothing.
#[derive(Debug, Clone)]
pub struct Machine {
    identity: Arc<str>,
    timing: Timing,
    observed: Option<Observed>,
    /// Holder or candidate, with what only that role has.
    role: Role,
    in_flight: Option<InFlight>,
    seq: u64,
    /// The observation may be out of date (after a conflict, a watch error, a failed read):
    /// read before deciding anything but stepping down.
    stale: bool,
    /// Someone asked for one fresh read ([`refresh`](Machine::refresh)).
    refresh: bool,
    /// An invalid record is read again at this instant.
    recheck: Option<Instant>,
    /// Why the observed record cannot be interpreted, as of the last decision.
    invalid: Option<String>,
    /// Consecutive failed calls, and the backoff they earn (rule `write-backoff`).
    streak: Streak,
    /// When the current streak of failed calls began (what tells an outage from a blip).
    failing_since: Option<Instant>,
    /// Consecutive conflicts: the first is re-read and retried at once, later ones back off.
    conflicts: u32,
    /// No call before this instant.
    retry_after: Option<Instant>,
    /// Whether a record naming us while we hold no claim may be taken at once, as left by an
    /// earlier process of ours (true for a fresh machine). False once another process with our
    /// identity has superseded us, or after we abandoned a claim whose work may still run:
    /// then such a record is judged by expiry like anyone else's.
    reclaim: bool,
    /// Whom our next release hands the lease to (a handoff), if anyone.
    successor: Option<Arc<str>>,
    /// Since when we know the watch is behind ([`watch_behind`](Machine::watch_behind)): a
    /// record that looks unchanged may have changed unseen, so we take no lease on its
    /// strength until the watch catches up, or (after a lease duration) we read it.
    behind: Option<Instant>,
    /// Since when a lease we would take has waited for the watch to catch up (see `behind`):
    /// a lease duration on, we read it ourselves.
    blocked_since: Option<Instant>,
    /// When the last successful read was sent: while the watch is behind, a read sent after
    /// the lease expired (by our observation) confirms that it did, so it may be taken.
    read_at: Option<Instant>,
    /// The highest fencing token seen on this lease (any record observed, any token handed
    /// out), across deletes, restores and actor restarts: the next acquisition writes more
    /// (rule `token-never-back`).
    floor: Option<i32>,
    /// The process-wide mark of tokens of leases the process has forgotten by name
    /// (`TokenFloors::mark`): the next acquisition writes more. Unlike `floor` it does not
    /// mean that this lease was seen (a lease missing at first look is not taken for one
    /// deleted while held).
    base: Option<i32>,
    /// A lease that was held when we last saw it and has since disappeared (deleted by an
    /// administrator, or lost in a restore) expires at this instant, as the held record would
    /// have: its holder may still be live (rule `deleted-held-waits`). Kept across restarts.
    vanished: Option<Instant>,
    /// The token of our latest claim: a record naming us with it is our own late write, not a
    /// twin's.
    last_token: Option<i32>,
    /// Something the owner should report (a twin, versions going backwards), taken once.
    alerts: Vec<Alert>,
    /// Our pod's name, written on the Lease with each acquisition (`dsync.io/holder-pod`).
    holder_pod: Option<Arc<str>>,
    /// An acquisition whose answer never came (a timeout, a dropped connection): it may have
    /// landed. The next read tells (rule `lost-reply-recognised`): if the lease shows our
    /// write, we hold it (a term if its deadline allows, else only to release it); otherwise
    /// it did not land. Until that read, the machine reads even if nobody wants the lease,
    /// so that a write nobody waits for any more is released, not left to expire.
    unsure: Option<Written>,
}

/// Something the machine noticed that its owner should report (log and count); the machine
/// has already acted on it. Taken with [`Machine::take_alerts`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Alert {
    /// A record naming us changed while we held no claim on it, under a token that is not
    /// ours: another live process carries our identity (rule `one-identity`). We do not take
    /// it while it lives.
    Twin {
        /// Its fencing token.
        token: i32,
    },
    /// A read answered with a version older than one we had already seen, though it was sent
    /// after we saw it: the store went back in time (an etcd restore). The read is taken as
    /// the truth; fencing tokens still never go back (rule `restore-resync`).
    VersionsWentBack {
        /// The version we had seen.
        seen: String,
        /// The older version the store answered with.
        now: String,
    },
}

impl Machine {
    /// A machine that knows nothing yet. (The identity is shared: a replica's machines all
    /// carry the same one.)
    pub fn new(identity: impl Into<Arc<str>>, timing: Timing) -> Self {
        let identity: Arc<str> = identity.into();
        let identity_seed = seed_of(&[identity.as_bytes()]);
        Machine {
            identity,
            timing,
            observed: None,
            role: Role::CANDIDATE,
            in_flight: None,
            seq: 0,
            stale: true,
            refresh: false,
            recheck: None,
            invalid: None,
            streak: Streak::seeded(identity_seed),
            failing_since: None,
            conflicts: 0,
            retry_after: None,
            reclaim: true,
            successor: None,
            behind: None,
            blocked_since: None,
            read_at: None,
            floor: None,
            base: None,
            vanished: None,
            last_token: None,
            alerts: Vec::new(),
            holder_pod: None,
            unsure: None,
        }
    }

    /// This machine, its retry jitter seeded by `lease` as well as by the identity, so that
    /// a replica's leases do not retry in step (rule `write-backoff`).
    #[must_use]
    pub fn with_jitter_for(mut self, lease: &str) -> Self {
        self.streak = Streak::seeded(seed_of(&[self.identity.as_bytes(), lease.as_bytes()]));
        self
    }

    /// This machine, writing `pod` as the holder's pod with each acquisition (see
    /// [`LeaseRecord::holder_pod`]).
    #[must_use]
    pub fn with_holder_pod(mut self, pod: Option<Arc<str>>) -> Self {
        self.holder_pod = pod;
        self
    }

    /// The highest fencing token seen on this lease, if any: the next acquisition writes a
    /// higher one, whatever the record then says (rule `token-never-back`).
    pub fn token_floor(&self) -> Option<i32> {
        self.floor
    }

    /// Raises the token floor to `token` (what other machines of this process have seen of
    /// the lease, across handles and deletes). Never lowers it.
    pub fn raise_floor(&mut self, token: i32) {
        self.floor = Some(self.floor.map_or(token, |f| f.max(token)));
    }

    /// Raises the base of the next token to above `token` (the process's mark of forgotten
    /// leases) without counting the lease as seen. Never lowers it.
    pub fn raise_base(&mut self, token: i32) {
        self.base = self.base.max(Some(token));
    }

    /// Takes what the machine noticed that its owner should report.
    pub fn take_alerts(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.alerts)
    }

    /// The shared watch is behind (it failed and has not been caught up): from `now` on,
    /// a lease that looks expired, free or missing is not taken on that strength. We wait for
    /// the watch ([`watch_current`](Self::watch_current)), and if it is still behind a lease
    /// duration after we first wanted the lease, read the lease ourselves. (After an API
    /// server outage, the moment it is back, a follower would otherwise race the leader's
    /// first renewal, and lose: a write and a re-read per lease, where one list per replica
    /// brings the news.)
    pub fn watch_behind(&mut self, now: Instant) {
        self.behind.get_or_insert(now);
    }

    /// The shared watch has caught up: what it brought is current.
    pub fn watch_current(&mut self) {
        self.behind = None;
        self.blocked_since = None;
    }

    /// Whether we wait for the shared watch to catch up.
    pub fn is_behind(&self) -> bool {
        self.behind.is_some()
    }

    /// Our holder identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Our timing.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The latest observation.
    pub fn observed(&self) -> Option<&Observed> {
        self.observed.as_ref()
    }

    /// The lease as last observed.
    pub fn lease(&self) -> Option<&StoredLease> {
        self.observed.as_ref().and_then(|o| o.lease.as_ref())
    }

    /// The holder recorded in the latest observation.
    pub fn holder(&self) -> Option<&str> {
        self.lease().and_then(|l| l.record.holder())
    }

    /// Our claim, while we hold the lease.
    pub fn claim(&self) -> Option<&Claim> {
        self.role.claim()
    }

    /// Whether we hold the lease.
    pub fn holding(&self) -> bool {
        self.claim().is_some()
    }

    /// The renew deadline of our claim: we step down then unless a renewal succeeds first.
    pub fn deadline(&self) -> Option<Instant> {
        self.claim()
            .map(|c| c.renewed_at + self.timing.renew_deadline())
    }

    /// Our claim ended without a release (a step-down, an abandoned drain, an actor restart):
    /// we are a candidate again, and a record naming us is ours no more (rule
    /// `one-identity`): it is judged by expiry like anyone else's.
    fn claim_lost(&mut self) {
        self.drop_claim();
        self.reclaim = false;
    }

    /// Drops our claim, if we hold one: we are a candidate nobody has assigned the lease to.
    /// (A candidate stays as it is.)
    fn drop_claim(&mut self) {
        if self.holding() {
            self.role = Role::CANDIDATE;
        }
    }

    /// Whether a call is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether the observation is current: read and not doubted since, nothing in flight.
    pub fn is_fresh(&self) -> bool {
        self.observed.is_some() && !self.stale && !self.refresh && self.in_flight.is_none()
    }

    /// Why the observed record cannot be interpreted, as of the last decision.
    pub fn invalid(&self) -> Option<&str> {
        self.invalid.as_deref()
    }

    /// Consecutive failed calls.
    pub fn failures(&self) -> u32 {
        self.streak.failures()
    }

    /// Asks for one fresh read before the next decision (`try_lock` decides on one).
    pub fn refresh(&mut self) {
        self.refresh = true;
    }

    /// Drops our claim without writing anything: the lease expires for others as after a
    /// crash. For a term whose work did not return in time, so must not be released while
    /// that work may still run; for the same reason, a record naming us is no longer taken
    /// back at once.
    pub fn abandon(&mut self) {
        self.claim_lost();
        self.successor = None;
    }

    /// Makes our next release a handoff to `to` (or a plain release: `None`): the release
    /// names it as the successor, whom other dsync candidates leave the free lease to for one
    /// lease duration. Set before every step from the term lifecycle, which owns the handoff
    /// (rule `handoff-ends-with-its-term`): the machine keeps no successor of its own.
    pub fn hand_off_to(&mut self, to: Option<Arc<str>>) {
        self.successor = to;
    }

    /// Whom our next release hands the lease to, if it is a handoff.
    pub fn successor(&self) -> Option<&str> {
        self.successor.as_deref()
    }

    /// A handoff someone asked for on the lease ([`HANDOFF_REQUEST_ANNOTATION`]) that we, its
    /// holder, should carry out: it names someone else, and no handoff is under way. (One
    /// naming us is a no-op, cleared by our next renewal.)
    ///
    /// [`HANDOFF_REQUEST_ANNOTATION`]: crate::record::HANDOFF_REQUEST_ANNOTATION
    pub fn handoff_requested(&self) -> Option<&str> {
        if self.claim().is_none() || self.successor.is_some() {
            return None;
        }
        let record = &self.lease()?.record;
        if record.coordinated() {
            return None; // the election controller picks the holder of a coordinated lease
        }
        record
            .requested_handoff()
            .filter(|to| *to != &*self.identity)
    }

    /// A record naming us while we hold no claim is judged by expiry, like anyone else's.
    pub fn forbid_reclaim(&mut self) {
        self.reclaim = false;
    }

    /// Takes over a record that names us while we hold no claim, as left by an earlier
    /// process of ours, so that it can be released (a lock's `unlock` does this, as the Go
    /// package's did). Only a record we have seen unchanged for at least a renew deadline: a
    /// process that held it then has stepped down by now (rule `one-identity`; a younger
    /// record may be a live twin's). The claim is only ever released, by compare-and-swap on
    /// the version we saw (no term is handed out for it), so it counts from `now`: if anyone
    /// took the lease meanwhile, the release conflicts and we step down. `false` (nothing
    /// changes) unless the observation is fresh, names us, may be reclaimed and is old enough.
    pub fn adopt(&mut self, now: Instant) -> bool {
        if self.holding() || !self.reclaim || !self.is_fresh() {
            return false;
        }
        let Some(observed) = &self.observed else {
            return false;
        };
        let Some(lease) = &observed.lease else {
            return false;
        };
        if lease.record.holder() != Some(&*self.identity)
            || now < observed.changed_at + self.timing.renew_deadline()
        {
            return false;
        }
        self.role = Role::holder(Claim {
            token: lease.record.token(),
            acquired_at: now,
            renewed_at: now,
        });
        true
    }

    /// Forgets the lease (an actor restart: its calls and timers are gone). Keeps the failure
    /// streak and its backoff, the token floor, when a vanished lease expires, and whether
    /// records naming us may be reclaimed (not if we held a claim: that is a step-down).
    pub fn reset(&mut self) {
        if self.holding() {
            // Our term ended with the restart.
            self.claim_lost();
        }
        self.observed = None;
        self.successor = None;
        self.in_flight = None;
        self.stale = true;
        self.refresh = false;
        self.recheck = None;
        self.invalid = None;
        self.read_at = None;
        self.blocked_since = None;
    }

    /// Decides the next step.
    pub fn next(&mut self, now: Instant, wall_now: SystemTime, want: Want) -> Step {
        // Stepping down needs no IO and is right on any observation, however stale.
        if let Some(reason) = self.claim_ended(now) {
            if let StepDownReason::PreferredHolder { .. } = reason {
                // The term ends; the claim stays (renewed while the work drains, then released).
                if let Role::Holder { yielding, .. } = &mut self.role {
                    *yielding = true;
                }
                return Step::StepDown(reason);
            }
            // Never take our own record back right after stepping down (rule `one-identity`):
            // another live process may carry our identity (taking the lease back at once would
            // flip it between us), and a record our own late write left is ours no more.
            self.claim_lost();
            return Step::StepDown(reason);
        }
        if self.in_flight.is_some() {
            return Step::Wait(Waiting::InFlight {
                until: self.deadline(),
            });
        }
        let holding = self.holding();
        if !(holding || want == Want::Acquire || self.refresh || self.unsure.is_some()) {
            return Step::Wait(Waiting::Idle);
        }
        let recheck_due = self.recheck.is_some_and(|t| now >= t);
        if self.observed.is_none() || self.stale || self.refresh || recheck_due {
            if let Some(until) = self.backed_off(now) {
                // Reads wait for the backoff too; a holder still wakes for its deadline.
                let until = self.deadline().map_or(until, |d| d.min(until));
                return Step::Wait(Waiting::Backoff { until });
            }
            return Step::Call(self.call(now, Op::Read, Request::Get));
        }
        if holding {
            return self.next_holding(now, wall_now, want);
        }
        self.next_not_holding(now, wall_now, want)
    }

    /// Whether our claim is over, and why.
    fn claim_ended(&self, now: Instant) -> Option<StepDownReason> {
        let Role::Holder { claim, yielding } = &self.role else {
            return None;
        };
        if now >= claim.renewed_at + self.timing.renew_deadline() {
            return Some(StepDownReason::RenewDeadlineExceeded);
        }
        let observed = self.observed.as_ref()?;
        let Some(lease) = &observed.lease else {
            return Some(StepDownReason::LeaseDeleted);
        };
        if !is_our_term(&lease.record, &self.identity, claim.token) {
            return Some(StepDownReason::Superseded {
                holder: lease.record.holder().map(str::to_owned),
            });
        }
        if !yielding && let Some(holder) = prefers_another(&lease.record, &self.identity) {
            return Some(StepDownReason::PreferredHolder {
                holder: holder.to_owned(),
            });
        }
        None
    }

    fn next_holding(&mut self, now: Instant, wall_now: SystemTime, want: Want) -> Step {
        self.invalid = None;
        let claim = self.claim().expect("holding");
        let deadline = claim.renewed_at + self.timing.renew_deadline();
        // Built only when a write is decided: a holder is asked far more often than it writes.
        let current = |m: &Machine| {
            let lease = m
                .lease()
                .expect("a claim whose lease is gone has stepped down");
            (lease.record.clone(), lease.resource_version.clone())
        };
        if want == Want::Release {
            if let Some(until) = self.backed_off(now) {
                return Step::Wait(Waiting::Backoff {
                    until: until.min(deadline),
                });
            }
            let (record, version) = current(self);
            let record = match &self.successor {
                Some(to) => handed_off(&record, to, &self.timing, wall_now),
                None => released(&record, wall_now),
            };
            let request = Request::Replace { record, version };
            return Step::Call(self.call(now, Op::Release, request));
        }
        let mut next = claim.renewed_at + self.timing.retry_period();
        if let Some(retry_after) = self.retry_after {
            next = next.max(retry_after);
        }
        if now < next {
            // Wake for the renewal, or at the deadline if retries pushed it past.
            return Step::Wait(Waiting::Holding {
                until: next.min(deadline),
            });
        }
        let (record, version) = current(self);
        let request = Request::Replace {
            record: renewed(record, &self.identity, &self.timing, wall_now),
            version,
        };
        Step::Call(self.call(now, Op::Renew, request))
    }

    fn next_not_holding(&mut self, now: Instant, wall_now: SystemTime, want: Want) -> Step {
        let observed = self.observed.as_ref().expect("read first");
        let expiry = match &observed.lease {
            Some(lease) => match self.expiry(observed, &lease.record) {
                Ok(expiry) => expiry,
                Err(reason) => {
                    let until = *self.recheck.get_or_insert(now + self.timing.retry_period());
                    self.invalid = Some(reason.clone());
                    return Step::Wait(Waiting::Invalid { reason, until });
                }
            },
            // Missing: free, unless it was held when it disappeared (see `observe`).
            None => self.vanished,
        };
        self.invalid = None;
        self.recheck = None;
        if want != Want::Acquire {
            return Step::Wait(Waiting::Idle);
        }
        if let Some(waiting) = self.coordinated(now, expiry) {
            return Step::Wait(waiting);
        }
        let following = |m: &Machine, until| match m.holder() {
            Some(holder) => Waiting::Following {
                holder: holder.to_owned(),
                until,
            },
            None => Waiting::Backoff { until },
        };
        if let Some(until) = expiry
            && now < until
        {
            self.blocked_since = None;
            let until = self.retry_after.map_or(until, |r| r.max(until));
            return Step::Wait(following(self, until));
        }
        if let Some(until) = self.backed_off(now) {
            return Step::Wait(following(self, until));
        }
        if let Some(since) = self.behind
            && self
                .read_at
                .is_none_or(|read| read < expiry.map_or(since, |e| e.max(since)))
        {
            // The watch missed something, and no read since the lease expired (or since we
            // knew) says otherwise: it may have been renewed unseen. Wait for the hub's list
            // (it wakes us), or read it ourselves if none comes in time: a lease duration
            // after we first wanted the lease (counted from then, not from when we learnt the
            // watch was behind, so that the followers and the holders whose terms an outage
            // ended do not all read at the same moment).
            let blocked = *self.blocked_since.get_or_insert(now);
            let until = blocked + self.timing.lease_duration();
            if now < until {
                return Step::Wait(following(self, until));
            }
            let call = self.call(now, Op::Read, Request::Get);
            self.in_flight.as_mut().expect("just made").confirming = true;
            return Step::Call(call);
        }
        self.blocked_since = None;
        // Missing: create it. Free, expired, or naming us and ours to reclaim: take it, as a
        // new term with a new fencing token.
        let floor = self.floor.max(self.base);
        let pod = self.holder_pod.as_deref();
        let (record, request_of) = match self.lease() {
            None => (
                acquired(None, floor, &self.identity, pod, &self.timing, wall_now),
                None,
            ),
            Some(lease) => (
                acquired(
                    Some(&lease.record),
                    floor,
                    &self.identity,
                    pod,
                    &self.timing,
                    wall_now,
                ),
                Some(lease.resource_version.clone()),
            ),
        };
        match request_of {
            None => Step::Call(self.call(now, Op::Create, Request::Create(record))),
            Some(version) => {
                let request = Request::Replace { record, version };
                Step::Call(self.call(now, Op::Acquire, request))
            }
        }
    }

    /// When a lease held by someone expires by local observation; `None` when it is free (or
    /// names us and may be reclaimed). Errors on records no API server would accept.
    fn expiry(&self, observed: &Observed, record: &LeaseRecord) -> Result<Option<Instant>, String> {
        if let Some(t) = record.lease_transitions
            && t < 0
        {
            return Err(format!("spec.leaseTransitions is negative ({t})"));
        }
        let declared = record.declared_duration();
        let Some(holder) = record.holder() else {
            // Free. A holder's release declares one second (dsync's and client-go's) or no
            // duration (the Go package's unlock): free at once. A lease handed to someone else
            // is left to it for the duration the handoff declared (one lease duration): the
            // grace in which a live successor takes it, after which a dead one no longer
            // blocks anybody. Any other free record declaring longer was cleared by someone
            // who is not its holder (a force release, an administrator's edit): its holder
            // may still think it holds it, so it is left for that long, as if it still named
            // the holder (rule `operator-release-grace`). One that was never held (no acquire
            // or renew time: created free) is free at once.
            return Ok(match record.handed_to() {
                Some(successor) if successor == &*self.identity => None,
                Some(_) => {
                    Some(observed.expires_at(declared.unwrap_or(self.timing.lease_duration())))
                }
                // (A record never held, with no times, was created free: free at once.)
                None => declared
                    .filter(|d| *d > Duration::from_secs(1))
                    .filter(|_| record.renew_time.is_some() || record.acquire_time.is_some())
                    .map(|d| observed.expires_at(d)),
            });
        };
        if holder == &*self.identity {
            if matches!(self.role, Role::Candidate { assigned: true }) && record.coordinated() {
                // The election controller has just named us: ours at once.
                return Ok(None);
            }
            if self.reclaim {
                // Left by an earlier process of ours (a restart), or by a live twin with our
                // identity: ours once it has not changed for a renew deadline, since a live
                // holder would have renewed (or stepped down) by then (rule `one-identity`).
                return Ok(Some(observed.expires_at(self.timing.renew_deadline())));
            }
        }
        // A holder that declares no duration gets ours, like a peer with our timing.
        let Some(duration) = record.lease_duration(self.timing.lease_duration()) else {
            let secs = record.lease_duration_seconds.unwrap_or_default();
            return Err(format!(
                "spec.leaseDurationSeconds is {secs}; it must be greater than 0"
            ));
        };
        Ok(Some(observed.expires_at(duration)))
    }

    /// Coordinated leader election (KEP-4355): on a lease with `spec.strategy` the API
    /// server's election controller picks the holder, so we never write our identity into it.
    /// We may only take a record that already names us (the controller assigned us, or it is
    /// ours from before) and prefers nobody else; otherwise we wait. `None`: the usual rules.
    fn coordinated(&self, now: Instant, expiry: Option<Instant>) -> Option<Waiting> {
        let record = &self.lease()?.record;
        if !record.coordinated() {
            return None;
        }
        let holder = record.holder();
        if holder == Some(&*self.identity) && prefers_another(record, &self.identity).is_none() {
            return None; // ours: taken now or at expiry, by the usual rules (see `expiry`)
        }
        // Woken by the watch when the controller writes; decide again a lease duration on.
        let until = match expiry {
            Some(expiry) if expiry > now => expiry,
            _ => now + self.timing.lease_duration(),
        };
        Some(Waiting::Coordinated {
            holder: holder.map(str::to_owned),
            until,
        })
    }

    /// The end of a backoff still running at `now`.
    fn backed_off(&self, now: Instant) -> Option<Instant> {
        self.retry_after.filter(|&t| now < t)
    }

    fn call(&mut self, now: Instant, op: Op, request: Request) -> Call {
        self.seq += 1;
        let base = match &request {
            Request::Replace { version, .. } => Some(version.clone()),
            _ => None,
        };
        let writes = match (&request, op) {
            (Request::Create(record), Op::Create)
            | (Request::Replace { record, .. }, Op::Acquire) => Some(Written::of(record, now)),
            _ => None,
        };
        self.in_flight = Some(InFlight {
            seq: self.seq,
            op,
            started: now,
            base,
            confirming: false,
            writes,
        });
        let limit = self.timing.renew_deadline();
        let timeout = match self.deadline() {
            Some(deadline) => deadline.saturating_duration_since(now).min(limit),
            None => limit,
        };
        Call {
            seq: self.seq,
            op,
            request,
            timeout,
        }
    }

    /// Takes a new observation. Also notes whether the holder just changed to us while we
    /// hold no claim (`assigned`): on a coordinated lease only the election controller writes
    /// that change. Raises the token floor; remembers when a held lease that disappeared
    /// expires (`vanished`); notices a twin.
    fn observe(&mut self, lease: Option<StoredLease>, now: Instant) {
        let names_us =
            |l: Option<&StoredLease>| l.and_then(|l| l.record.holder()) == Some(&*self.identity);
        let before = self.observed.as_ref().map(|o| names_us(o.lease.as_ref()));
        let after = names_us(lease.as_ref());
        if let Role::Candidate { assigned } = &mut self.role {
            *assigned = after && (*assigned || before == Some(false));
        }
        let holding = self.holding();
        match &lease {
            Some(stored) => {
                self.vanished = None;
                let token = stored.record.token();
                self.raise_floor(token);
                let changed = self.observed.as_ref().and_then(Observed::version)
                    != Some(stored.resource_version.as_str());
                if !holding
                    && after
                    && before == Some(true)
                    && changed
                    && self.last_token != Some(token)
                    && !stored.record.coordinated()
                {
                    self.alerts.push(Alert::Twin { token });
                }
            }
            None => match &self.observed {
                // Deleted (or restored away): if it was held, its holder may still be live and
                // think it holds it. It expires as the held record would have if it had been
                // renewed just before the delete: renewals we did not see (reads that failed,
                // a watch that broke or fell silent) may have come after the last change we
                // saw, so that change says nothing about when the holder last renewed. Only
                // our own claim's last renewal is known exactly.
                Some(previous) if previous.holder().is_some() => {
                    let declared = previous
                        .record()
                        .and_then(LeaseRecord::declared_duration)
                        .unwrap_or(self.timing.lease_duration());
                    self.vanished = Some(if holding {
                        previous.expires_at(declared)
                    } else {
                        now + declared
                    });
                }
                // Missing at our first look, though this process has seen the lease (a token
                // floor): it was deleted, and whether it was held we cannot tell. As if it was,
                // seen just now.
                None if self.floor.is_some() && self.vanished.is_none() => {
                    self.vanished = Some(now + self.timing.lease_duration());
                }
                _ => {}
            },
        }
        self.observed = Some(Observed::update(self.observed.as_ref(), lease, now));
    }

    /// Whether `version` is older than what we have observed (a read or write answer that a
    /// watch event has already overtaken): it must not move the observation backwards.
    fn is_older(&self, version: &str) -> bool {
        self.observed.as_ref().is_some_and(|o| o.is_older(version))
    }

    /// Takes the result of call `seq`. `None` if that is not the call in flight (a result
    /// from before a [`reset`](Self::reset)): it is ignored.
    pub fn on_result(
        &mut self,
        now: Instant,
        seq: u64,
        result: Result<StoredLease, StoreError>,
    ) -> Option<Outcome> {
        if self.in_flight.as_ref().map(|c| c.seq) != Some(seq) {
            return None;
        }
        let InFlight {
            op,
            started,
            base,
            confirming,
            writes,
            ..
        } = self.in_flight.take().expect("checked");
        Some(match result {
            Ok(stored) => self.on_success(now, op, started, base, stored),
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => {
                // Someone wrote first: re-read and decide again. A second conflict in a row
                // (a storm, or a peer writing constantly) backs off like any failed write.
                self.stale = true;
                self.conflicts += 1;
                if self.conflicts > 1 {
                    self.retry_after = Some(now + self.timing.retry_period());
                }
                Outcome::Conflict
            }
            // A 404 on create means the namespace is missing: a definite failure (below).
            Err(StoreError::NotFound { .. }) if op != Op::Create => {
                if op == Op::Read {
                    self.read_done(started);
                }
                self.observe(None, now);
                Outcome::Read
            }
            Err(error) => {
                let transient = error.is_transient();
                if transient && let Some(written) = writes {
                    // It may have landed: read (after the backoff) before anything else.
                    self.unsure = Some(written);
                    self.stale = true;
                }
                let failure = Failure {
                    write: op.is_write(),
                    transient,
                    retry_after: error.retry_after(),
                };
                let pace = Pace::lease(&self.timing, self.holding());
                self.retry_after = Some(now + self.streak.after_failure(failure, pace));
                self.failing_since.get_or_insert(now);
                if confirming {
                    // Nothing is lost (what we observed stands): wait for the watch again,
                    // rather than read every retry period while the server is down.
                    self.blocked_since = Some(now);
                } else if op == Op::Read {
                    // Read again (after the backoff) only if someone still needs it.
                    self.stale = true;
                    self.refresh = false;
                }
                if transient {
                    Outcome::Retry { op, error }
                } else {
                    Outcome::Failed { op, error }
                }
            }
        })
    }

    /// A read sent at `started` has answered.
    fn read_done(&mut self, started: Instant) {
        self.stale = false;
        self.refresh = false;
        self.recheck = None;
        // As of when it was sent: the answer may describe any moment since.
        self.read_at = Some(started);
    }

    fn on_success(
        &mut self,
        now: Instant,
        op: Op,
        started: Instant,
        base: Option<String>,
        stored: StoredLease,
    ) -> Outcome {
        if self.streak.after_success(op.is_write()) {
            self.retry_after = None;
            // After an outage longer than a lease, every lease of every replica may be free or
            // expired at once: the takeover waits a random part of a retry period, so that
            // replicas × leases writes come back spread over it rather than in one burst
            // (rule `write-backoff`). A short blip, a release seen through the watch, a crash
            // failover: none of them waits. (Only a read's success is followed by a takeover:
            // a write that worked, an acquisition among them, ends the streak without delay,
            // and nothing a holder then writes, a release above all, may wait for a spread.)
            if let Some(since) = self.failing_since.take()
                && op == Op::Read
                && !self.holding()
                && now.saturating_duration_since(since) >= self.timing.lease_duration()
            {
                let spread = self
                    .streak
                    .uniform(Duration::ZERO, self.timing.retry_period());
                self.retry_after = Some(now + spread);
            }
        }
        let unchanged = base.as_deref() == Some(stored.resource_version.as_str());
        if op.is_write() && !unchanged {
            self.conflicts = 0;
        }
        let token = stored.record.token();
        if !self.is_older(&stored.resource_version) {
            self.observe(Some(stored), now);
        } else if op == Op::Read
            && let Some(observed) = self.observed.as_ref().filter(|o| o.changed_at <= started)
        {
            // Sent after we saw a newer version, the read can only be older if the store went
            // back in time (an etcd restore): what it says now is the truth, as first seen now
            // (rule `restore-resync`). Tokens do not follow it back: the floor stays.
            self.alerts.push(Alert::VersionsWentBack {
                seen: observed.version().unwrap_or_default().to_owned(),
                now: stored.resource_version.clone(),
            });
            self.observed = None;
            self.observe(Some(stored), now);
        }
        match op {
            Op::Read => {
                self.read_done(started);
                self.recognise(now)
            }
            Op::Create | Op::Acquire => {
                self.last_token = Some(token);
                self.raise_floor(token);
                self.role = Role::holder(Claim {
                    token,
                    acquired_at: started,
                    renewed_at: started,
                });
                Outcome::Acquired { token }
            }
            Op::Renew if unchanged => {
                // Nothing was written, so nobody saw a renewal: the claim keeps its deadline.
                self.retry_after = Some(now + self.timing.retry_period());
                Outcome::Unchanged
            }
            Op::Renew => {
                if let Role::Holder { claim, .. } = &mut self.role {
                    claim.renewed_at = started;
                    Outcome::Renewed
                } else {
                    // We stepped down while it was in flight: only the observation counts.
                    Outcome::Read
                }
            }
            Op::Release => {
                self.drop_claim();
                self.successor = None;
                Outcome::Released
            }
        }
    }

    /// After a read, settles an acquisition whose answer was lost (`unsure`): if the lease
    /// shows our write, we hold it from when the write was sent, a new term
    /// ([`Outcome::Acquired`]) if its deadline has not passed, and otherwise a claim that is
    /// only released (no term is handed out for it, as for [`adopt`](Self::adopt)). If it
    /// shows anything else, the write did not land (or was overwritten): forgotten.
    fn recognise(&mut self, now: Instant) -> Outcome {
        let Some(written) = self.unsure.take() else {
            return Outcome::Read;
        };
        let ours = self
            .lease()
            .is_some_and(|lease| written.is(&lease.record, &self.identity));
        if !ours || self.holding() {
            return Outcome::Read;
        }
        self.last_token = Some(written.token);
        self.raise_floor(written.token);
        // Within its renew deadline the claim counts from when the write was sent; past it,
        // no term may start, and the claim (from now, like `adopt`'s) is only released.
        let in_time = now < written.started + self.timing.renew_deadline();
        let from = if in_time { written.started } else { now };
        self.role = Role::holder(Claim {
            token: written.token,
            acquired_at: from,
            renewed_at: from,
        });
        if in_time {
            Outcome::Acquired {
                token: written.token,
            }
        } else {
            Outcome::Read
        }
    }

    /// Takes a watch event. `true` if it changed what we know (the owner should decide
    /// again).
    pub fn on_watch(&mut self, now: Instant, event: Result<WatchEvent, StoreError>) -> bool {
        match event {
            Ok(WatchEvent::Applied(stored)) => {
                let current = self.observed.as_ref().and_then(Observed::version);
                if !is_newer(&stored.resource_version, current) {
                    return false;
                }
                self.observe(Some(stored), now);
                true
            }
            // Doubt: read before deciding again.
            Ok(WatchEvent::Deleted { .. }) | Err(_) => {
                self.stale = true;
                true
            }
        }
    }
}

/// Whether `record` still describes the term we hold: our identity and our fencing token.
/// (A write of ours whose response was lost shows up as a new version of the same term.)
fn is_our_term(record: &LeaseRecord, identity: &str, token: i32) -> bool {
    record.holder() == Some(identity) && record.token() == token
}

/// The holder `record` prefers (`spec.preferredHolder`) if it is not us.
fn prefers_another<'r>(record: &'r LeaseRecord, identity: &str) -> Option<&'r str> {
    record.preferred().filter(|&p| p != identity)
}

/// The fencing token a record carries (kept for callers of `dsync::lease::token_of`; the
/// rule lives in [`LeaseRecord::token`]).
pub fn token_of(record: &LeaseRecord) -> i32 {
    record.token()
}

/// The record that takes the lease for `identity` (of pod `pod`, if known): the next fencing token is above both the
/// record's (`previous`) and every token this process has seen on the lease (`floor`), so it
/// never goes back, whatever was done to the Lease meanwhile (deleted, edited, restored; rule
/// `token-never-back`). A lease never seen is created with 0.
fn acquired(
    previous: Option<&LeaseRecord>,
    floor: Option<i32>,
    identity: &str,
    pod: Option<&str>,
    timing: &Timing,
    now: SystemTime,
) -> LeaseRecord {
    let next = |t: i32| t.saturating_add(1);
    let transitions = match (previous.map(LeaseRecord::token), floor) {
        (None, None) => 0,
        (Some(t), None) | (None, Some(t)) => next(t),
        (Some(a), Some(b)) => next(a.max(b)),
    };
    LeaseRecord {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(timing.lease_duration_seconds()),
        acquire_time: Some(now),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        strategy: previous.and_then(|p| p.strategy.clone()),
        preferred_holder: previous.and_then(|p| p.preferred_holder.clone()),
        // A new term settles any handoff: the successor has taken it, or nobody waits for it.
        successor: None,
        handoff_request: None,
        holder_pod: pod.map(str::to_owned),
    }
}

/// `current` (a copy of the record of our term) renewed. Built from the copy in place: a
/// renewal is the hot path, and the copy already names us.
fn renewed(
    mut current: LeaseRecord,
    identity: &str,
    timing: &Timing,
    now: SystemTime,
) -> LeaseRecord {
    if current.holder_identity.as_deref() != Some(identity) {
        current.holder_identity = Some(identity.to_owned());
    }
    current.lease_duration_seconds = Some(timing.lease_duration_seconds());
    current.renew_time = Some(now);
    current.successor = None;
    // A request to hand the lease to ourselves is carried out by doing nothing: clear it.
    // One naming someone else stays until the handoff's release clears it.
    if current.handoff_request.as_deref() == Some(identity) {
        current.handoff_request = None;
    }
    current
}

/// The record written on release: no holder, transitions kept (so the next token is higher), and
/// a one-second duration as client-go writes, so peers that ignore an empty holder still move on.
/// Also what an operator's [`Dsync::force_release`](crate::Dsync::force_release) writes over
/// somebody else's term: the same free lease as if its holder had let go.
pub(crate) fn released(current: &LeaseRecord, now: SystemTime) -> LeaseRecord {
    LeaseRecord {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(now),
        renew_time: Some(now),
        successor: None,
        handoff_request: None,
        holder_pod: None,
        ..current.clone()
    }
}

/// What an operator's [`Dsync::force_release`](crate::Dsync::force_release) writes over
/// somebody else's term: free (no holder, transitions kept), but declaring the holder's full
/// lease duration (at least two seconds), so dsync candidates leave it alone for that long
/// after they see it, as if it still named the holder: the holder, which may be cut off from
/// the store and still think it holds the lease, has passed its renew deadline by then (rule
/// `operator-release-grace`; see `Machine::expiry`). `fallback`: the duration to declare when
/// the record declares none.
pub(crate) fn force_released(
    current: &LeaseRecord,
    fallback: Duration,
    now: SystemTime,
) -> LeaseRecord {
    let declared = match current.lease_duration_seconds {
        Some(secs) if secs > 1 => secs,
        _ => i32::try_from(fallback.as_secs()).unwrap_or(i32::MAX).max(2),
    };
    LeaseRecord {
        lease_duration_seconds: Some(declared),
        ..released(current, now)
    }
}

/// `current` with a request that its holder hand the lease to `to`
/// ([`HANDOFF_REQUEST_ANNOTATION`](crate::record::HANDOFF_REQUEST_ANNOTATION)), as
/// [`Dsync::request_handoff`](crate::Dsync::request_handoff) writes it; nothing else changes
/// (the holder's term and token stay). A dsync leader carries it out and clears it.
pub(crate) fn with_handoff_request(current: &LeaseRecord, to: &str) -> LeaseRecord {
    LeaseRecord {
        handoff_request: Some(to.to_owned()),
        ..current.clone()
    }
}

/// The record written by a handoff: released (no holder, transitions kept so the successor's
/// token is higher), naming the successor, with a full lease duration: the grace other dsync
/// candidates give the successor before they contend. Any handoff request is settled by it.
fn handed_off(current: &LeaseRecord, to: &str, timing: &Timing, now: SystemTime) -> LeaseRecord {
    LeaseRecord {
        lease_duration_seconds: Some(timing.lease_duration_seconds()),
        successor: Some(to.to_owned()),
        ..released(current, now)
    }
}

/// A seed for the retry jitter from `parts` (a fixed hash: the machine stays deterministic).
fn seed_of(parts: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}
