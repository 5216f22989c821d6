//! A conformance suite for [`LeaseStore`] implementations: the rules dsync relies on, which
//! [`MemoryStore`](crate::MemoryStore) and `KubeStore` obey (the Kubernetes API server's
//! semantics for `Lease` objects).
//!
//! Run it from a test of your own store:
//!
//! ```
//! use dsync::MemoryStore;
//! use dsync::testing::conformance::{Rule, Suite};
//!
//! # dsync::testing::run_paused(async {
//! let report = Suite::new(MemoryStore::new()).run().await.expect("MemoryStore conforms");
//! // MemoryStore cannot delete leases, so the rule about deletions is not checked.
//! assert_eq!(report.skipped, vec![Rule::WatchSeesDeletions]);
//! # });
//! ```
//!
//! Every rule ([`Rule::ALL`]) can also be checked on its own ([`Suite::check`]). Failures are
//! returned, never panicked: a [`RuleViolation`] names the rule and says what the store did.
//! The suite writes leases with fresh names (`conformance-<run>-<n>-<rule>`) in the namespaces
//! it is given; it needs a tokio runtime with timers (paused time is fine for an in-process
//! store).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};

use crate::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError, StoredLease, WatchEvent};

/// One rule of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// `get` of a missing lease fails with [`StoreError::NotFound`] naming `namespace/name`.
    GetMissingIsNotFound,
    /// `create` returns the record as written with a version, and `get` returns the same.
    CreateRoundTrips,
    /// `create` of an existing lease fails with [`StoreError::AlreadyExists`] and changes
    /// nothing.
    CreateExistingIsAlreadyExists,
    /// `replace` is a compare-and-swap on the version: on the current version it writes and
    /// returns a new version; on a stale one it fails with [`StoreError::Conflict`] and changes
    /// nothing.
    ReplaceIsCompareAndSwap,
    /// `replace` of a missing lease fails with [`StoreError::NotFound`] and writes nothing,
    /// or creates the lease with the record given, as the Kubernetes API server does (Leases
    /// allow create-on-update, even with a `resourceVersion` precondition). Nothing else.
    ReplaceMissingIsNotFoundOrCreates,
    /// Every write gives a new version; versions that are decimal integers (as the API
    /// server's are) increase with every write, across leases.
    VersionsIncrease,
    /// A `replace` that changes nothing is not a write: it succeeds and keeps the version.
    NoOpReplaceKeepsTheVersion,
    /// A watch of a namespace delivers every write to its leases, in order, and nothing from
    /// other namespaces.
    WatchSeesWritesInOrder,
    /// A watch delivers [`WatchEvent::Deleted`] when a lease is deleted. Needs a way to delete
    /// ([`Suite::with_delete`]); skipped without one.
    WatchSeesDeletions,
    /// Records the API server would reject are rejected with [`StoreError::Invalid`] naming
    /// the field, on `create` and on `replace`, and nothing is written: a name that is not a
    /// DNS-1123 subdomain, `leaseDurationSeconds <= 0`, `leaseTransitions < 0`.
    ValidatesLikeTheApiServer,
    /// `list` of a namespace with no leases (one nobody ever wrote in) is empty; otherwise it
    /// gives every lease of that namespace, sorted by name, each with the record and version
    /// its last write returned, and none of another namespace; a `replace` shows in the next
    /// `list`.
    ListIsTheNamespaceSortedByName,
}

impl Rule {
    /// Every rule, in the order [`Suite::run`] checks them.
    pub const ALL: &'static [Rule] = &[
        Rule::GetMissingIsNotFound,
        Rule::CreateRoundTrips,
        Rule::CreateExistingIsAlreadyExists,
        Rule::ReplaceIsCompareAndSwap,
        Rule::ReplaceMissingIsNotFoundOrCreates,
        Rule::VersionsIncrease,
        Rule::NoOpReplaceKeepsTheVersion,
        Rule::WatchSeesWritesInOrder,
        Rule::WatchSeesDeletions,
        Rule::ValidatesLikeTheApiServer,
        Rule::ListIsTheNamespaceSortedByName,
    ];

    /// A short kebab-case name, used in lease names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Rule::GetMissingIsNotFound => "get-missing",
            Rule::CreateRoundTrips => "create-round-trips",
            Rule::CreateExistingIsAlreadyExists => "create-existing",
            Rule::ReplaceIsCompareAndSwap => "replace-cas",
            Rule::ReplaceMissingIsNotFoundOrCreates => "replace-missing",
            Rule::VersionsIncrease => "versions-increase",
            Rule::NoOpReplaceKeepsTheVersion => "no-op-replace",
            Rule::WatchSeesWritesInOrder => "watch-order",
            Rule::WatchSeesDeletions => "watch-deletions",
            Rule::ValidatesLikeTheApiServer => "validation",
            Rule::ListIsTheNamespaceSortedByName => "list",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule the store broke, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}: {message}")]
pub struct RuleViolation {
    /// The rule.
    pub rule: Rule,
    /// What the store did instead.
    pub message: String,
}

/// Every rule the store broke in a [`Suite::run`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the store broke {} rule(s):\n{}", .0.len(), .0.iter().map(|v| format!("  - {v}")).collect::<Vec<_>>().join("\n"))]
pub struct Violations(pub Vec<RuleViolation>);

/// What a [`Suite::run`] checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The rules checked (all held).
    pub checked: Vec<Rule>,
    /// The rules not checked, for want of something the suite needs (a way to delete).
    pub skipped: Vec<Rule>,
}

type Delete = Box<dyn Fn(LeaseKey) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The conformance suite for one store (see the [module docs](self)).
pub struct Suite<S> {
    store: S,
    namespace: String,
    other_namespace: String,
    event_timeout: Duration,
    delete: Option<Delete>,
    run: String,
    next: AtomicU64,
}

impl<S> fmt::Debug for Suite<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Suite")
            .field("namespace", &self.namespace)
            .field("other_namespace", &self.other_namespace)
            .field("event_timeout", &self.event_timeout)
            .field("delete", &self.delete.is_some())
            .finish_non_exhaustive()
    }
}

type Check<T> = Result<T, RuleViolation>;

impl<S: LeaseStore> Suite<S> {
    /// A suite for `store`, writing in the namespaces `default` and `conformance-other`, with
    /// a watch event timeout of 30 s.
    pub fn new(store: S) -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string();
        Suite {
            store,
            namespace: "default".into(),
            other_namespace: "conformance-other".into(),
            event_timeout: Duration::from_secs(30),
            delete: None,
            run: run[..8].to_owned(),
            next: AtomicU64::new(0),
        }
    }

    /// Writes in `namespace`, and in `other` for the rule that a watch sees only its own
    /// namespace. Both must exist (on Kubernetes) and differ.
    #[must_use]
    pub fn with_namespaces(
        mut self,
        namespace: impl Into<String>,
        other: impl Into<String>,
    ) -> Self {
        self.namespace = namespace.into();
        self.other_namespace = other.into();
        self
    }

    /// How long to wait for each expected watch event (default 30 s).
    #[must_use]
    pub fn with_event_timeout(mut self, timeout: Duration) -> Self {
        self.event_timeout = timeout;
        self
    }

    /// How to delete a lease (the [`LeaseStore`] trait has no delete), so that
    /// [`Rule::WatchSeesDeletions`] can be checked.
    #[must_use]
    pub fn with_delete<F, Fut, E>(mut self, delete: F) -> Self
    where
        F: Fn(LeaseKey) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        self.delete = Some(Box::new(move |key| {
            let fut = delete(key);
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        }));
        self
    }

    /// The store under test.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Checks every rule; returns what was checked and skipped, or every violation.
    pub async fn run(&self) -> Result<Report, Violations> {
        let mut report = Report::default();
        let mut violations = Vec::new();
        for &rule in Rule::ALL {
            if rule == Rule::WatchSeesDeletions && self.delete.is_none() {
                report.skipped.push(rule);
                continue;
            }
            match self.check(rule).await {
                Ok(()) => report.checked.push(rule),
                Err(v) => violations.push(v),
            }
        }
        if violations.is_empty() {
            Ok(report)
        } else {
            Err(Violations(violations))
        }
    }

    /// Checks one rule. [`Rule::WatchSeesDeletions`] without [`with_delete`](Self::with_delete)
    /// is a violation ("cannot delete").
    pub async fn check(&self, rule: Rule) -> Result<(), RuleViolation> {
        match rule {
            Rule::GetMissingIsNotFound => self.get_missing(rule).await,
            Rule::CreateRoundTrips => self.create_round_trips(rule).await,
            Rule::CreateExistingIsAlreadyExists => self.create_existing(rule).await,
            Rule::ReplaceIsCompareAndSwap => self.replace_cas(rule).await,
            Rule::ReplaceMissingIsNotFoundOrCreates => self.replace_missing(rule).await,
            Rule::VersionsIncrease => self.versions_increase(rule).await,
            Rule::NoOpReplaceKeepsTheVersion => self.no_op_replace(rule).await,
            Rule::WatchSeesWritesInOrder => self.watch_order(rule).await,
            Rule::WatchSeesDeletions => self.watch_deletions(rule).await,
            Rule::ValidatesLikeTheApiServer => self.validation(rule).await,
            Rule::ListIsTheNamespaceSortedByName => self.list(rule).await,
        }
    }

    fn key(&self, rule: Rule) -> LeaseKey {
        self.key_in(&self.namespace, rule)
    }

    fn key_in(&self, namespace: &str, rule: Rule) -> LeaseKey {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        LeaseKey::new(namespace, format!("conformance-{}-{n}-{rule}", self.run))
    }

    async fn create(&self, rule: Rule, key: &LeaseKey, record: LeaseRecord) -> Check<StoredLease> {
        self.store
            .create(key, record)
            .await
            .map_err(|e| violation(rule, format!("create {key} failed: {e}")))
    }

    async fn replace(
        &self,
        rule: Rule,
        key: &LeaseKey,
        record: LeaseRecord,
        version: &str,
    ) -> Check<StoredLease> {
        self.store.replace(key, record, version).await.map_err(|e| {
            violation(
                rule,
                format!("replace {key} at version {version} failed: {e}"),
            )
        })
    }

    async fn get(&self, rule: Rule, key: &LeaseKey) -> Check<StoredLease> {
        self.store
            .get(key)
            .await
            .map_err(|e| violation(rule, format!("get {key} failed: {e}")))
    }

    /// Expects `key` to be missing.
    async fn expect_missing(&self, rule: Rule, key: &LeaseKey, after: &str) -> Check<()> {
        match self.store.get(key).await {
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => Err(violation(
                rule,
                format!(
                    "{after}, get {key} gave {other:?}, expected NotFound: something was written"
                ),
            )),
        }
    }

    async fn get_missing(&self, rule: Rule) -> Check<()> {
        let key = self.key(rule);
        match self.store.get(&key).await {
            Err(StoreError::NotFound { lease }) if lease == key.to_string() => Ok(()),
            other => Err(violation(
                rule,
                format!(
                    "get of missing {key} gave {other:?}, expected NotFound {{ lease: {:?} }}",
                    key.to_string()
                ),
            )),
        }
    }

    async fn create_round_trips(&self, rule: Rule) -> Check<()> {
        let key = self.key(rule);
        let record = full_record("holder-a", 3);
        let created = self.create(rule, &key, record.clone()).await?;
        if created.name != key.name
            || created.record != record
            || created.resource_version.is_empty()
        {
            return Err(violation(
                rule,
                format!(
                    "create {key} of {record:?} returned {created:?}: expected the same name and record, and a version"
                ),
            ));
        }
        let got = self.get(rule, &key).await?;
        if got != created {
            return Err(violation(
                rule,
                format!("get {key} returned {got:?}, expected what create returned: {created:?}"),
            ));
        }
        Ok(())
    }

    async fn create_existing(&self, rule: Rule) -> Check<()> {
        let key = self.key(rule);
        let first = self.create(rule, &key, held_by("holder-a", 0)).await?;
        match self.store.create(&key, held_by("holder-b", 0)).await {
            Err(StoreError::AlreadyExists { lease }) if lease == key.to_string() => {}
            other => {
                return Err(violation(
                    rule,
                    format!("a second create of {key} gave {other:?}, expected AlreadyExists"),
                ));
            }
        }
        let now = self.get(rule, &key).await?;
        if now != first {
            return Err(violation(
                rule,
                format!("a failed create changed {key}: {first:?} became {now:?}"),
            ));
        }
        Ok(())
    }

    async fn replace_cas(&self, rule: Rule) -> Check<()> {
        let key = self.key(rule);
        let v1 = self.create(rule, &key, held_by("holder-a", 0)).await?;
        let v2 = self
            .replace(rule, &key, held_by("holder-b", 1), &v1.resource_version)
            .await?;
        if v2.resource_version == v1.resource_version || v2.record.holder() != Some("holder-b") {
            return Err(violation(
                rule,
                format!(
                    "replace of {key} on the current version returned {v2:?}: expected holder-b at a new version (was {})",
                    v1.resource_version
                ),
            ));
        }
        match self
            .store
            .replace(&key, held_by("holder-c", 2), &v1.resource_version)
            .await
        {
            Err(StoreError::Conflict { lease }) if lease == key.to_string() => {}
            other => {
                return Err(violation(
                    rule,
                    format!(
                        "replace of {key} on the stale version {} gave {other:?}, expected Conflict",
                        v1.resource_version
                    ),
                ));
            }
        }
        let now = self.get(rule, &key).await?;
        if now != v2 {
            return Err(violation(
                rule,
                format!(
                    "a replace that lost its compare-and-swap changed {key}: {v2:?} became {now:?}"
                ),
            ));
        }
        Ok(())
    }

    async fn replace_missing(&self, rule: Rule) -> Check<()> {
        // A version that exists: the lease it belongs to is another one.
        let other = self
            .create(rule, &self.key(rule), held_by("holder-a", 0))
            .await?;
        let key = self.key(rule);
        let record = held_by("holder-b", 0);
        match self
            .store
            .replace(&key, record.clone(), &other.resource_version)
            .await
        {
            Err(StoreError::NotFound { lease }) if lease == key.to_string() => {
                self.expect_missing(rule, &key, "after a replace of a missing lease")
                    .await
            }
            Ok(created) => {
                let got = self.get(rule, &key).await?;
                if created.name != key.name || created.record != record || got != created {
                    return Err(violation(
                        rule,
                        format!(
                            "replace of missing {key} returned {created:?} and then get returned {got:?}: a create-on-update must create the record given"
                        ),
                    ));
                }
                Ok(())
            }
            other => Err(violation(
                rule,
                format!("replace of missing {key} gave {other:?}, expected NotFound (or a create)"),
            )),
        }
    }

    async fn versions_increase(&self, rule: Rule) -> Check<()> {
        let (a, b) = (self.key(rule), self.key(rule));
        let a1 = self.create(rule, &a, held_by("holder-a", 0)).await?;
        let b1 = self.create(rule, &b, held_by("holder-a", 0)).await?;
        let a2 = self
            .replace(rule, &a, held_by("holder-b", 1), &a1.resource_version)
            .await?;
        let b2 = self
            .replace(rule, &b, held_by("holder-b", 1), &b1.resource_version)
            .await?;
        let versions = [&a1, &b1, &a2, &b2].map(|l| l.resource_version.clone());
        let numeric: Option<Vec<u64>> = versions.iter().map(|v| v.parse().ok()).collect();
        let ok = match numeric {
            Some(n) => n.windows(2).all(|w| w[0] < w[1]),
            None => {
                let mut sorted = versions.to_vec();
                sorted.sort();
                sorted.dedup();
                sorted.len() == versions.len()
            }
        };
        if !ok {
            return Err(violation(
                rule,
                format!(
                    "four writes in a row gave versions {versions:?}: expected distinct versions, increasing when numeric"
                ),
            ));
        }
        Ok(())
    }

    async fn no_op_replace(&self, rule: Rule) -> Check<()> {
        let key = self.key(rule);
        let record = held_by("holder-a", 0);
        let v1 = self.create(rule, &key, record.clone()).await?;
        let same = self
            .replace(rule, &key, record, &v1.resource_version)
            .await?;
        if same != v1 {
            return Err(violation(
                rule,
                format!(
                    "a replace of {key} that changes nothing returned {same:?}, expected the lease unchanged: {v1:?}"
                ),
            ));
        }
        Ok(())
    }

    /// Opens a watch of the suite's namespace and waits until it delivers live events. A store
    /// may replay the leases that exist when the watch starts, in any order (kube's watcher
    /// does, with its initial list): so a sentinel lease is written, its event awaited, then
    /// written again once the watch is delivering, and events are skipped up to that second
    /// write's.
    async fn open_watch(
        &self,
        rule: Rule,
    ) -> Check<(
        BoxStream<'static, Result<WatchEvent, StoreError>>,
        LeaseKey,
        StoredLease,
    )> {
        let mut watch = self.store.watch(&self.namespace);
        let sentinel = self.key(rule);
        let first = self.create(rule, &sentinel, held_by("sentinel", 0)).await?;
        self.skip_to(rule, &mut watch, &first).await?;
        let second = self
            .replace(
                rule,
                &sentinel,
                held_by("sentinel-1", 0),
                &first.resource_version,
            )
            .await?;
        self.skip_to(rule, &mut watch, &second).await?;
        Ok((watch, sentinel, second))
    }

    /// Skips events up to `lease`'s.
    async fn skip_to(
        &self,
        rule: Rule,
        watch: &mut BoxStream<'static, Result<WatchEvent, StoreError>>,
        lease: &StoredLease,
    ) -> Check<()> {
        loop {
            match self.next_event(rule, watch, "the sentinel's event").await? {
                WatchEvent::Applied(seen) if seen == *lease => return Ok(()),
                _ => continue,
            }
        }
    }

    async fn next_event(
        &self,
        rule: Rule,
        watch: &mut BoxStream<'static, Result<WatchEvent, StoreError>>,
        what: &str,
    ) -> Check<WatchEvent> {
        match tokio::time::timeout(self.event_timeout, watch.next()).await {
            Ok(Some(Ok(event))) => Ok(event),
            Ok(Some(Err(e))) => Err(violation(
                rule,
                format!("waiting for {what}, the watch failed: {e}"),
            )),
            Ok(None) => Err(violation(
                rule,
                format!("waiting for {what}, the watch ended"),
            )),
            Err(_) => Err(violation(
                rule,
                format!(
                    "waiting for {what}, the watch delivered nothing for {:?}",
                    self.event_timeout
                ),
            )),
        }
    }

    /// Expects exactly `expected`, in order, from `watch`.
    async fn expect_events(
        &self,
        rule: Rule,
        watch: &mut BoxStream<'static, Result<WatchEvent, StoreError>>,
        expected: &[WatchEvent],
    ) -> Check<()> {
        for (i, want) in expected.iter().enumerate() {
            let got = self
                .next_event(rule, watch, &format!("event {i} ({want:?})"))
                .await?;
            if got != *want {
                return Err(violation(
                    rule,
                    format!(
                        "event {i} of the watch of {} was {got:?}, expected {want:?} (all expected: {expected:?})",
                        self.namespace
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn watch_order(&self, rule: Rule) -> Check<()> {
        let (mut watch, sentinel, s1) = self.open_watch(rule).await?;
        let (a, b) = (self.key(rule), self.key(rule));
        let elsewhere = self.key_in(&self.other_namespace, rule);
        let a1 = self.create(rule, &a, held_by("holder-a", 0)).await?;
        self.create(rule, &elsewhere, held_by("holder-a", 0))
            .await?;
        let a2 = self
            .replace(rule, &a, held_by("holder-b", 1), &a1.resource_version)
            .await?;
        let b1 = self.create(rule, &b, held_by("holder-a", 0)).await?;
        let s2 = self
            .replace(
                rule,
                &sentinel,
                held_by("sentinel-2", 0),
                &s1.resource_version,
            )
            .await?;
        let expected = [a1, a2, b1, s2].map(WatchEvent::Applied);
        self.expect_events(rule, &mut watch, &expected).await
    }

    async fn watch_deletions(&self, rule: Rule) -> Check<()> {
        let Some(delete) = &self.delete else {
            return Err(violation(
                rule,
                "cannot delete: no Suite::with_delete".into(),
            ));
        };
        let (mut watch, sentinel, s1) = self.open_watch(rule).await?;
        let key = self.key(rule);
        let created = self.create(rule, &key, held_by("holder-a", 0)).await?;
        delete(key.clone())
            .await
            .map_err(|e| violation(rule, format!("deleting {key} failed: {e}")))?;
        self.expect_missing(rule, &key, "after a delete").await?;
        let s2 = self
            .replace(
                rule,
                &sentinel,
                held_by("sentinel-2", 0),
                &s1.resource_version,
            )
            .await?;
        let expected = [
            WatchEvent::Applied(created),
            WatchEvent::Deleted {
                name: key.name.clone(),
            },
            WatchEvent::Applied(s2),
        ];
        self.expect_events(rule, &mut watch, &expected).await
    }

    async fn validation(&self, rule: Rule) -> Check<()> {
        let expect_invalid =
            |what: String, got: Result<StoredLease, StoreError>, mentions: &str| match got {
                Err(StoreError::Invalid { message, .. }) if message.contains(mentions) => Ok(()),
                other => Err(violation(
                    rule,
                    format!(
                        "{what} gave {other:?}, expected Invalid with a message naming {mentions:?}"
                    ),
                )),
            };
        let bad_name = LeaseKey::new(&self.namespace, "Bad_Name");
        expect_invalid(
            format!("create {bad_name}"),
            self.store.create(&bad_name, held_by("holder-a", 0)).await,
            "Bad_Name",
        )?;
        self.expect_missing(rule, &bad_name, "after an invalid create")
            .await?;
        let mut bad_records = Vec::new();
        for duration in [0, -1] {
            let mut r = held_by("holder-a", 0);
            r.lease_duration_seconds = Some(duration);
            bad_records.push((r, "leaseDurationSeconds"));
        }
        let mut r = held_by("holder-a", 0);
        r.lease_transitions = Some(-1);
        bad_records.push((r, "leaseTransitions"));
        for (record, field) in &bad_records {
            let key = self.key(rule);
            expect_invalid(
                format!("create {key} with {record:?}"),
                self.store.create(&key, record.clone()).await,
                field,
            )?;
            self.expect_missing(rule, &key, "after an invalid create")
                .await?;
        }
        let key = self.key(rule);
        let good = self.create(rule, &key, held_by("holder-a", 0)).await?;
        for (record, field) in bad_records {
            expect_invalid(
                format!("replace {key} with {record:?}"),
                self.store
                    .replace(&key, record, &good.resource_version)
                    .await,
                field,
            )?;
        }
        let now = self.get(rule, &key).await?;
        if now != good {
            return Err(violation(
                rule,
                format!("invalid replaces changed {key}: {good:?} became {now:?}"),
            ));
        }
        Ok(())
    }

    async fn list_of(&self, rule: Rule, namespace: &str) -> Check<Vec<StoredLease>> {
        self.store
            .list(namespace)
            .await
            .map_err(|e| violation(rule, format!("list of namespace {namespace} failed: {e}")))
    }

    /// The suite's namespace holds other rules' leases (and on a real cluster anybody's):
    /// the listed leases are checked whole for order and namespace, and this rule's own for
    /// their records and versions.
    async fn list(&self, rule: Rule) -> Check<()> {
        // A namespace nobody wrote in (on Kubernetes it need not exist: a list there is empty).
        let empty = {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            format!("conformance-{}-{n}-empty", self.run)
        };
        let listed = self.list_of(rule, &empty).await?;
        if !listed.is_empty() {
            return Err(violation(
                rule,
                format!("list of the unused namespace {empty} gave {listed:?}, expected nothing"),
            ));
        }
        let keys = [self.key(rule), self.key(rule), self.key(rule)];
        let elsewhere = self.key_in(&self.other_namespace, rule);
        self.create(rule, &elsewhere, held_by("holder-z", 0))
            .await?;
        // Created out of name order, with different records.
        let mut ours = Vec::new();
        for (i, key) in [&keys[2], &keys[0], &keys[1]].into_iter().enumerate() {
            let record = if i == 0 {
                full_record("holder-a", 1)
            } else {
                held_by(&format!("holder-{i}"), i as i32)
            };
            ours.push(self.create(rule, key, record).await?);
        }
        ours.sort_by(|a, b| a.name.cmp(&b.name));
        self.expect_listed(rule, &ours, "after three creates")
            .await?;
        let replaced = self
            .replace(
                rule,
                &keys[0],
                held_by("holder-b", 7),
                &ours[0].resource_version,
            )
            .await?;
        ours[0] = replaced;
        self.expect_listed(rule, &ours, "after a replace").await
    }

    /// Lists the suite's namespace: sorted by name, nothing of the other namespace's leases of
    /// this run, and exactly `ours` among this rule's leases.
    async fn expect_listed(&self, rule: Rule, ours: &[StoredLease], after: &str) -> Check<()> {
        let listed = self.list_of(rule, &self.namespace).await?;
        let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
        if names.windows(2).any(|w| w[0] >= w[1]) {
            return Err(violation(
                rule,
                format!(
                    "{after}, list of {} is not sorted by name (or repeats one): {names:?}",
                    self.namespace
                ),
            ));
        }
        let prefix = format!("conformance-{}-", self.run);
        let suffix = format!("-{rule}");
        let mine: Vec<&StoredLease> = listed
            .iter()
            .filter(|l| l.name.starts_with(&prefix) && l.name.ends_with(&suffix))
            .collect();
        let want: Vec<&StoredLease> = ours.iter().collect();
        if mine != want {
            return Err(violation(
                rule,
                format!(
                    "{after}, list of {} gave {mine:?} among this rule's leases, expected exactly {want:?} (another namespace's must not show)",
                    self.namespace
                ),
            ));
        }
        Ok(())
    }
}

fn violation(rule: Rule, message: String) -> RuleViolation {
    RuleViolation { rule, message }
}

fn held_by(holder: &str, transitions: i32) -> LeaseRecord {
    LeaseRecord {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// A record with every field dsync writes, times in whole microseconds (the API's precision).
fn full_record(holder: &str, transitions: i32) -> LeaseRecord {
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1_700_000_000_000_000);
    let acquired = SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
    LeaseRecord {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        acquire_time: Some(acquired),
        renew_time: Some(acquired + Duration::from_millis(2_345)),
        lease_transitions: Some(transitions),
        strategy: None,
        preferred_holder: None,
        // dsync's handoff annotations (on Kubernetes: metadata.annotations) round-trip too.
        successor: Some("next-pod".into()),
        handoff_request: Some("requested-pod".into()),
        holder_pod: Some("holder-pod".into()),
    }
}
