//! `dsync status`, `observe`, `release` and `handoff`: looking at leases and acting on them
//! from outside the replicas that hold them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dsync::lease::{Observed, Versioned};
use dsync::resource::LeaseKind;
use dsync::resource::LeaseName;
use dsync::store::LeaseKey;
use dsync::store::StoredLease;
use dsync::store::StreamExt;
use dsync::{Dsync, Error, LeaseStore};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};

use crate::duration::human;
use crate::exit::{self, Failure};
use crate::ui::{Interrupts, Ui, holder_phrase};
use crate::{HandoffArgs, Kind, ObserveArgs, Output, ReleaseArgs, StatusArgs};

/// One dsync lease as `status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The Lease object.
    pub key: LeaseKey,
    /// Its name taken apart.
    pub name: LeaseName,
    /// The stored lease.
    pub lease: StoredLease,
}

impl Row {
    /// A row for `lease` of `namespace`, if it is named as dsync names leases.
    pub fn of(namespace: &str, lease: StoredLease) -> Option<Row> {
        let name = LeaseName::parse(&lease.name)?;
        Some(Row {
            key: LeaseKey::new(namespace, lease.name.clone()),
            name,
            lease,
        })
    }

    fn holder(&self) -> Option<&str> {
        self.lease.record.holder()
    }

    fn duration(&self) -> Option<Duration> {
        self.lease.record.declared_duration()
    }

    /// Whether the holder looks expired *by this machine's clock* against the holder's
    /// recorded renewal: the only judgement a one-shot look can make. `None` when nobody holds
    /// it or the record says too little.
    pub fn expired_by_clock(&self, now: SystemTime) -> Option<bool> {
        self.holder()?;
        let renewed = self.lease.record.renew_time?;
        let duration = self.duration()?;
        Some(now.duration_since(renewed).is_ok_and(|age| age > duration))
    }

    /// What a person follows: everything but the renewal times. A renewal by the same holder
    /// changes none of it (it only restarts the expiry clock).
    fn visible(&self) -> impl PartialEq + '_ {
        let r = &self.lease.record;
        (
            self.holder(),
            r.lease_transitions,
            r.lease_duration_seconds,
            r.handed_to(),
            r.requested_handoff(),
            r.strategy.as_deref(),
            r.preferred(),
        )
    }

    fn note(&self) -> String {
        let record = &self.lease.record;
        let mut notes = Vec::new();
        if let Some(to) = record.handed_to() {
            notes.push(format!("handed to {to}"));
        }
        if let Some(to) = record.requested_handoff() {
            notes.push(format!("handoff to {to} requested"));
        }
        if record.coordinated() {
            match record.preferred() {
                Some(p) => notes.push(format!("coordinated, preferred {p}")),
                None => notes.push("coordinated".into()),
            }
        }
        notes.join("; ")
    }

    /// The row as JSON (times RFC 3339, UTC).
    pub fn json(&self, now: SystemTime) -> Value {
        let record = &self.lease.record;
        json!({
            "lease": self.key.name,
            "namespace": self.key.namespace,
            "kind": self.name.kind.as_str(),
            "scope": self.name.scope,
            "name": self.name.name,
            "slot": self.name.slot,
            "holder": self.holder(),
            "fencing_token": record.lease_transitions,
            "acquired": self.holder().and(record.acquire_time).map(timestamp),
            "free_since": if self.holder().is_none() { record.renew_time.map(timestamp) } else { None },
            "renewed": record.renew_time.map(timestamp),
            "renewed_seconds_ago": record.renew_time.and_then(|t| now.duration_since(t).ok()).map(|d| d.as_secs_f64()),
            "lease_duration_seconds": record.lease_duration_seconds,
            "expired_by_local_clock": self.expired_by_clock(now),
            "handed_to": record.handed_to(),
            "handoff_requested": record.requested_handoff(),
            "strategy": record.strategy,
            "preferred_holder": record.preferred(),
            "resource_version": self.lease.resource_version,
        })
    }
}

/// A row is followed by the lease's version ([`Observed`]).
impl Versioned for Row {
    fn version(&self) -> &str {
        &self.lease.resource_version
    }

    fn record(&self) -> &dsync::store::LeaseRecord {
        &self.lease.record
    }
}

/// RFC 3339 in UTC, whole seconds.
fn timestamp(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => "-".into(),
    }
}

fn ago(t: Option<SystemTime>, now: SystemTime) -> String {
    match t {
        None => "-".into(),
        Some(t) => match now.duration_since(t) {
            Ok(age) => format!("{} ago", human(age)),
            // The writer's clock is ahead of ours.
            Err(ahead) => format!("in {}", human(ahead.duration())),
        },
    }
}

const COLUMNS: [&str; 10] = [
    "KIND", "SCOPE", "NAME", "SLOT", "HOLDER", "TOKEN", "ACQUIRED", "RENEWED", "DURATION",
    "EXPIRED*",
];

/// The `status` table: one line per lease, columns aligned, and a footnote on how expiry is
/// judged.
pub fn table(rows: &[Row], now: SystemTime) -> String {
    let mut lines: Vec<Vec<String>> = vec![COLUMNS.iter().map(|c| c.to_string()).collect()];
    for row in rows {
        let record = &row.lease.record;
        let mut cells = vec![
            row.name.kind.as_str().to_owned(),
            row.name.scope.clone(),
            row.name.name.clone(),
            row.name
                .slot
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            row.holder().unwrap_or("-").to_owned(),
            record
                .lease_transitions
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            // A free lease's times are its release's: when it became free, not an acquisition.
            match row.holder() {
                Some(_) => ago(record.acquire_time, now),
                None => format!("free since {}", ago(record.renew_time, now)),
            },
            match row.holder() {
                Some(_) => ago(record.renew_time, now),
                None => "-".into(),
            },
            row.duration().map(human).unwrap_or_else(|| "-".into()),
            match row.expired_by_clock(now) {
                None => "-".into(),
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
            },
        ];
        let note = row.note();
        if !note.is_empty() {
            cells.push(note);
        }
        lines.push(cells);
    }
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if i + 1 < line.len() && i < widths.len() {
                text.push_str(&format!("{cell:<width$}", width = widths[i]));
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no dsync leases)\n");
    }
    out.push_str(
        "* judged locally: by this machine's clock against the holder's last renewTime \
         (clock skew shifts it; holders judge from when they saw the lease change)\n",
    );
    out
}

/// Which leases `status` shows.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Only this scope (when given by flag or environment).
    pub scope: Option<String>,
    /// Only this election, lock or semaphore name.
    pub name: Option<String>,
    /// Only this kind of lease.
    pub kind: Option<LeaseKind>,
}

impl Filter {
    fn keeps(&self, row: &Row) -> bool {
        self.scope.as_ref().is_none_or(|s| *s == row.name.scope)
            && self.name.as_ref().is_none_or(|n| *n == row.name.name)
            && self.kind.is_none_or(|k| k == row.name.kind)
    }
}

/// The rows of `leases` that `filter` keeps, ordered by kind, scope, name, slot.
pub fn rows(namespace: &str, leases: Vec<StoredLease>, filter: &Filter) -> Vec<Row> {
    let mut rows: Vec<Row> = leases
        .into_iter()
        .filter_map(|l| Row::of(namespace, l))
        .filter(|r| filter.keeps(r))
        .collect();
    rows.sort_by(|a, b| {
        (
            kind_order(a.name.kind),
            &a.name.scope,
            &a.name.name,
            a.name.slot,
        )
            .cmp(&(
                kind_order(b.name.kind),
                &b.name.scope,
                &b.name.name,
                b.name.slot,
            ))
    });
    rows
}

fn kind_order(kind: LeaseKind) -> u8 {
    match kind {
        LeaseKind::Election => 0,
        LeaseKind::Lock => 1,
        LeaseKind::Semaphore => 2,
    }
}

/// `dsync status`.
pub async fn status(
    dsync: &Dsync,
    store: &Arc<dyn LeaseStore>,
    args: &StatusArgs,
    scope_given: bool,
    mut interrupts: Interrupts,
) -> Result<i32, Failure> {
    let namespace = dsync.config().namespace.clone();
    let filter = Filter {
        scope: scope_given.then(|| dsync.config().scope.clone()),
        name: args.name.clone(),
        kind: None,
    };
    // The store's watch starts with a list of its own (and lists again after every
    // reconnect), so a change between our list and the watch is not missed: the replay of
    // what we already printed is recognised by its version and skipped.
    let mut changes = args.watch.then(|| store.watch(&namespace));
    let listed = store
        .list(&namespace)
        .await
        .map_err(|e| store_failure(&format!("list leases in namespace {namespace}"), e))?;
    let now = SystemTime::now();
    let rows = rows(&namespace, listed, &filter);
    match args.output {
        Output::Table => print!("{}", table(&rows, now)),
        Output::Json if args.watch => {
            for row in &rows {
                println!("{}", json!({"event": "listed", "lease": row.json(now)}));
            }
        }
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "namespace": namespace,
                "expired_judged_by": "this machine's clock against the holder's renewTime",
                "leases": rows.iter().map(|r| r.json(now)).collect::<Vec<_>>(),
            }))
            .expect("JSON values serialise")
        ),
    }
    let Some(changes) = changes.as_mut() else {
        return Ok(exit::OK);
    };
    let mut follow = Follow::new(rows);
    let watched = Watched {
        namespace: &namespace,
        filter: &filter,
        output: args.output,
        what: "status --watch",
        give_up: None,
    };
    follow.follow(changes, watched, &mut interrupts).await
}

/// What a [`Follow`] prints, and when it gives up on a failing watch (`None`: never; each
/// error is printed as it happens, the watch retries by itself).
struct Watched<'a> {
    namespace: &'a str,
    filter: &'a Filter,
    output: Output,
    what: &'a str,
    give_up: Option<crate::GiveUp>,
}

/// What `status --watch` knows: every lease shown, followed by [`Observed`] from the instant
/// this process saw its current version (expiry is judged from that, by this observer, as
/// holders judge it), and whether its expiry has been reported.
struct Follow {
    known: BTreeMap<String, (Observed<Row>, bool)>,
    /// What was last printed of each lease (without its time): a change that shows the same
    /// (a field the line does not show, e.g. a cleared handoff request) prints nothing, so a
    /// lease never shows twice in a row alike.
    printed: BTreeMap<String, String>,
}

/// The current instant on the library's clock. (Tokio's clock, so that tests can pause it; its
/// instants are the standard library's.)
fn local_now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Follow {
    fn new(rows: Vec<Row>) -> Self {
        let now = local_now();
        Follow {
            known: rows
                .into_iter()
                .map(|r| {
                    (
                        r.key.name.clone(),
                        (Observed::update(None, Some(r), now), false),
                    )
                })
                .collect(),
            printed: BTreeMap::new(),
        }
    }

    /// Prints every change `changes` brings (and every expiry by this observer) until
    /// interrupted, or until the watch has failed for `give_up` without a success.
    async fn follow(
        &mut self,
        changes: &mut (
                 impl futures::Stream<Item = Result<dsync::store::WatchEvent, dsync::StoreError>> + Unpin
             ),
        watched: Watched<'_>,
        interrupts: &mut Interrupts,
    ) -> Result<i32, Failure> {
        let mut failing_since: Option<Instant> = None;
        loop {
            let expiry = self.next_expiry();
            tokio::select! {
                event = changes.next() => match event {
                    None => return Err(Failure::new(exit::DSYNC_FAILED, "the watch on leases ended")),
                    Some(Err(e)) => {
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        if let Some(crate::GiveUp(Some(limit))) = watched.give_up
                            && since.elapsed() >= limit
                        {
                            return Err(Failure::new(
                                exit::DSYNC_FAILED,
                                format!("{}: {}", watched.what, exit::chain(&e)),
                            ));
                        }
                        // The watch retries by itself; say so once per error.
                        eprintln!("dsync: warning: {}; retrying", exit::chain(&e));
                    }
                    Some(Ok(event)) => {
                        failing_since = None;
                        for line in self.apply(watched.namespace, event, watched.filter, watched.output) {
                            println!("{line}");
                        }
                    }
                },
                _ = sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    for line in self.expire(watched.output) {
                        println!("{line}");
                    }
                }
                _ = interrupts.recv() => return Ok(exit::OK),
            }
        }
    }

    /// `line` unless it says what was last printed of `lease` (its time aside).
    fn once(
        printed: &mut BTreeMap<String, String>,
        lease: &str,
        line: String,
        output: Output,
    ) -> Option<String> {
        let shown = match output {
            // The time is the first word; JSON lines compare as the lease's visible fields do.
            Output::Table => line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest),
            Output::Json => return Some(line),
        };
        if printed.get(lease).map(String::as_str) == Some(shown) {
            return None;
        }
        printed.insert(lease.to_owned(), shown.to_owned());
        Some(line)
    }

    fn apply(
        &mut self,
        namespace: &str,
        event: dsync::store::WatchEvent,
        filter: &Filter,
        output: Output,
    ) -> Vec<String> {
        let now = SystemTime::now();
        match event {
            dsync::store::WatchEvent::Applied(lease) => {
                let Some(row) = Row::of(namespace, lease).filter(|r| filter.keeps(r)) else {
                    return Vec::new();
                };
                let mut lines = Vec::new();
                let previous = self.known.get(&row.key.name).map(|(o, _)| o);
                match previous.and_then(|o| o.lease.as_ref()) {
                    // The watch's replay of what we listed.
                    Some(old) if !dsync::record::is_newer(row.version(), Some(old.version())) => {
                        return lines;
                    }
                    // A renewal: nothing to print, but expiry counts from now again.
                    Some(old) if old.visible() == row.visible() => {}
                    _ => {
                        let line = change_line("changed", &row, now, output);
                        lines.extend(Self::once(&mut self.printed, &row.key.name, line, output));
                    }
                }
                let name = row.key.name.clone();
                let observed = Observed::update(previous, Some(row), local_now());
                self.known.insert(name, (observed, false));
                lines
            }
            dsync::store::WatchEvent::Deleted { name } => {
                match self.known.remove(&name).and_then(|(o, _)| o.lease) {
                    Some(row) => {
                        let line = change_line("deleted", &row, now, output);
                        Self::once(&mut self.printed, &name, line, output)
                            .into_iter()
                            .collect()
                    }
                    None => Vec::new(),
                }
            }
        }
    }

    /// When the next held lease would expire by this observer, if any.
    /// (A lease that declares no duration is never judged expired: this observer has no
    /// timing of its own to assume.)
    fn next_expiry(&self) -> Option<Instant> {
        self.known
            .values()
            .filter(|(_, reported)| !reported)
            .filter_map(|(observed, _)| observed.expiry(None))
            .min()
            .map(Instant::from_std)
    }

    fn expire(&mut self, output: Output) -> Vec<String> {
        let now = local_now();
        let wall = SystemTime::now();
        let mut expired = Vec::new();
        for (observed, reported) in self.known.values_mut() {
            if !*reported
                && observed.expiry(None).is_some_and(|at| at <= now)
                && let Some(row) = &observed.lease
            {
                *reported = true;
                expired.push((
                    row.key.name.clone(),
                    change_line("expired", row, wall, output),
                ));
            }
        }
        expired
            .into_iter()
            .filter_map(|(name, line)| Self::once(&mut self.printed, &name, line, output))
            .collect()
    }
}

fn change_line(event: &str, row: &Row, now: SystemTime, output: Output) -> String {
    match output {
        Output::Json => json!({"event": event, "lease": row.json(now)}).to_string(),
        Output::Table => {
            let what = match row.name.slot {
                Some(slot) => format!(
                    "{} {}/{}[{slot}]",
                    row.name.kind, row.name.scope, row.name.name
                ),
                None => format!("{} {}/{}", row.name.kind, row.name.scope, row.name.name),
            };
            let state = match (event, row.holder()) {
                ("deleted", _) => "deleted".to_owned(),
                ("expired", Some(h)) => format!(
                    "{h} looks expired to this observer (no change for {})",
                    row.duration().map(human).unwrap_or_default()
                ),
                (_, Some(h)) => format!("holder {h} token {}", row.lease.record.token()),
                (_, None) => match row.lease.record.handed_to() {
                    Some(to) => format!("free, handed to {to}"),
                    None => "free".to_owned(),
                },
            };
            format!("{} {what} {state}", timestamp(now))
        }
    }
}

fn store_failure(what: &str, e: dsync::StoreError) -> Failure {
    let error = Error::from_store(what, e);
    Failure::from(error)
}

/// `dsync release NAME --force`.
pub async fn release(
    dsync: &Dsync,
    store: &Arc<dyn LeaseStore>,
    args: &ReleaseArgs,
    ui: &Ui,
) -> Result<i32, Failure> {
    let key = resolve(dsync, store, &args.name, args.kind, args.slot).await?;
    if args.force {
        // The library reads, decides and writes (compare-and-swap) in one step.
        let released = if args.now {
            dsync.force_release_now(&key).await?
        } else {
            dsync.force_release(&key).await?
        };
        let when = if args.now {
            "free at once"
        } else {
            "dsync candidates leave it for the holder's lease duration (--now: at once)"
        };
        match released.previous_holder {
            Some(previous) => println!(
                "released lease {key}: it was held by {previous} (fencing token {}); {when}; the next holder gets a higher token",
                released.fencing_token
            ),
            None => ui.info(&format!("lease {key} is not held: nothing to release")),
        }
        return Ok(exit::OK);
    }
    let current = store
        .get(&key)
        .await
        .map_err(|e| store_failure(&format!("read lease {key}"), e))?;
    match current.record.holder() {
        None => {
            ui.info(&format!("lease {key} is not held: nothing to release"));
            Ok(exit::OK)
        }
        Some(holder) => Err(Failure::new(
            exit::USAGE,
            format!(
                "lease {key} is held by {holder} (fencing token {}). Releasing it lets the next \
                 holder in while {holder} may still be working; run again with --force to do it",
                current.record.token()
            ),
        )),
    }
}

/// The lease `name` means for `release`: as `--kind`/`--slot` say, or the one lock or election
/// lease of that name that exists.
async fn resolve(
    dsync: &Dsync,
    store: &Arc<dyn LeaseStore>,
    name: &str,
    kind: Option<Kind>,
    slot: Option<usize>,
) -> Result<LeaseKey, Failure> {
    let resource = dsync.resource(name);
    let bad_name = |e: dsync::resource::NameError| Failure::new(exit::USAGE, e.to_string());
    let kind = match (kind, slot) {
        (Some(Kind::Semaphore), None) => {
            return Err(Failure::new(exit::USAGE, "--kind semaphore needs --slot I"));
        }
        (Some(Kind::Election | Kind::Lock), Some(_)) => {
            return Err(Failure::new(exit::USAGE, "--slot is for semaphores only"));
        }
        (Some(Kind::Semaphore) | None, Some(slot)) => {
            resource
                .validate_semaphore(slot.saturating_add(1))
                .map_err(bad_name)?;
            return Ok(resource.semaphore_slot_key(slot));
        }
        (Some(Kind::Election), None) => Some(LeaseKind::Election),
        (Some(Kind::Lock), None) => Some(LeaseKind::Lock),
        (None, None) => None,
    };
    if let Some(kind) = kind {
        resource.validate_for(kind).map_err(bad_name)?;
        return Ok(resource.lease_key(kind));
    }
    resource.validate_for(LeaseKind::Lock).map_err(bad_name)?;
    let mut found = Vec::new();
    for kind in [LeaseKind::Lock, LeaseKind::Election] {
        if resource.validate_for(kind).is_err() {
            continue;
        }
        let key = resource.lease_key(kind);
        match store.get(&key).await {
            Ok(_) => found.push(key),
            Err(dsync::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(store_failure(&format!("read lease {key}"), e)),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        // A semaphore has no lease of its own name: one per slot. Say which to name.
        0 if let Some(slots) = semaphore_slots(dsync, store, name).await? => Err(Failure::new(
            exit::USAGE,
            format!(
                "{name:?} is a semaphore: release one of its slots with --slot I ({})",
                slots
                    .iter()
                    .map(|(slot, holder)| match holder {
                        Some(h) => format!("slot {slot} held by {h}"),
                        None => format!("slot {slot} free"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        0 => Err(Failure::new(
            exit::DSYNC_FAILED,
            format!(
                "no lock or election named {name:?} in namespace {} (scope {}); see `dsync status`",
                resource.effective_namespace(),
                resource.effective_scope()
            ),
        )),
        _ => Err(Failure::new(
            exit::USAGE,
            format!("both a lock and an election are named {name:?}: say which with --kind"),
        )),
    }
}

/// The slots of the semaphore `name` (in the configured scope) that have a Lease, with their
/// holders; `None` if it has none.
async fn semaphore_slots(
    dsync: &Dsync,
    store: &Arc<dyn LeaseStore>,
    name: &str,
) -> Result<Option<Vec<(usize, Option<String>)>>, Failure> {
    let config = dsync.config();
    let listed = store
        .list(&config.namespace)
        .await
        .map_err(|e| store_failure(&format!("list leases in namespace {}", config.namespace), e))?;
    let filter = Filter {
        scope: Some(config.scope.clone()),
        name: Some(name.to_owned()),
        kind: Some(LeaseKind::Semaphore),
    };
    let slots: Vec<(usize, Option<String>)> = rows(&config.namespace, listed, &filter)
        .into_iter()
        .filter_map(|r| Some((r.name.slot?, r.holder().map(str::to_owned))))
        .collect();
    Ok((!slots.is_empty()).then_some(slots))
}

/// `dsync handoff ELECTION --to ID`.
pub async fn handoff(
    dsync: &Dsync,
    args: &HandoffArgs,
    mut interrupts: Interrupts,
    ui: &Ui,
) -> Result<i32, Failure> {
    let requested = dsync.request_handoff(&args.election, &args.to).await?;
    if requested.holder == args.to {
        println!("{} already leads election {:?}", args.to, args.election);
        return Ok(exit::OK);
    }
    ui.info(&format!(
        "asked {} to hand election {:?} to {}",
        requested.holder, args.election, args.to
    ));
    if args.no_wait {
        return Ok(exit::OK);
    }
    let observer = dsync.observe(&args.election)?;
    let mut changes = observer.watch();
    let deadline = Instant::now() + args.timeout;
    let outcome = loop {
        let observation = changes.borrow_and_update().clone();
        if observation.holder.as_deref() == Some(args.to.as_str()) {
            println!(
                "{} leads election {:?} now (fencing token {})",
                args.to,
                args.election,
                observation.fencing_token.unwrap_or(0)
            );
            break Ok(exit::OK);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                break Err(Failure::new(exit::DSYNC_FAILED, "the observer stopped"));
            },
            _ = sleep_until(deadline) => {
                let now = std::time::Instant::now();
                break Err(Failure::new(
                    exit::TIMEOUT,
                    format!(
                        "{} does not lead election {:?} after {}: {}",
                        args.to, args.election, human(args.timeout), holder_phrase(&observation, now)
                    ),
                ));
            }
            signal = interrupts.recv() => break Ok(exit::signalled(signal)),
        }
    };
    observer.stop().await;
    outcome
}

/// `dsync observe NAME --semaphore`: every slot's Lease of the semaphore (one per permit),
/// from one list and the namespace's watch: a line per slot now, then a line whenever a
/// slot's holder changes, it expires by this observer, or it is deleted.
async fn observe_semaphore(
    dsync: &Dsync,
    store: &Arc<dyn LeaseStore>,
    args: &ObserveArgs,
    mut interrupts: Interrupts,
    ui: &Ui,
) -> Result<i32, Failure> {
    let config = dsync.config();
    let namespace = config.namespace.clone();
    let filter = Filter {
        scope: Some(config.scope.clone()),
        name: Some(args.name.clone()),
        kind: Some(LeaseKind::Semaphore),
    };
    ui.info(&format!(
        "observing semaphore {:?} (leases {}.semaphore.{}.<slot> in namespace {namespace})",
        args.name, config.scope, args.name
    ));
    let mut changes = store.watch(&namespace);
    let listed = store
        .list(&namespace)
        .await
        .map_err(|e| store_failure(&format!("list leases in namespace {namespace}"), e))?;
    let rows = rows(&namespace, listed, &filter);
    let now = SystemTime::now();
    if rows.is_empty() {
        ui.info(&format!("semaphore {:?} has no slot yet", args.name));
    }
    for row in &rows {
        println!("{}", change_line("listed", row, now, args.output));
    }
    let mut follow = Follow::new(rows);
    let what = format!("observing semaphore {:?}", args.name);
    let watched = Watched {
        namespace: &namespace,
        filter: &filter,
        output: args.output,
        what: &what,
        give_up: Some(args.give_up.give_up_after),
    };
    follow.follow(&mut changes, watched, &mut interrupts).await
}

/// `dsync observe NAME`.
pub async fn observe(
    dsync: &Dsync,
    store: &Arc<dyn LeaseStore>,
    args: &ObserveArgs,
    mut interrupts: Interrupts,
    ui: &Ui,
) -> Result<i32, Failure> {
    if args.semaphore {
        return observe_semaphore(dsync, store, args, interrupts, ui).await;
    }
    let observer = if args.lock {
        dsync.observe_lock(&args.name)?
    } else {
        dsync.observe(&args.name)?
    };
    let what = if args.lock { "lock" } else { "election" };
    ui.info(&format!(
        "observing {what} {:?} ({})",
        args.name,
        observer.lease()
    ));
    let mut changes = observer.watch();
    let failing = crate::ui::report_failures(
        ui,
        &format!("observing {what} {:?}", args.name),
        args.give_up.give_up_after,
        observer.watch(),
        |o| o.last_error.clone(),
    );
    tokio::pin!(failing);
    // Holder, token, expired, exists, failing: a line whenever one of them changes.
    type Shown = (Option<String>, Option<i32>, bool, bool, bool);
    let mut said: Option<Shown> = None;
    loop {
        let o = changes.borrow_and_update().clone();
        let state = (
            o.holder.clone(),
            o.fencing_token,
            o.expired,
            o.exists,
            o.last_error.is_some(),
        );
        if o.synced && said.as_ref() != Some(&state) {
            let now = SystemTime::now();
            let line = match args.output {
                Output::Json => json!({
                    "time": timestamp(now),
                    "lease": o.lease.name,
                    "exists": o.exists,
                    "holder": o.holder,
                    "fencing_token": o.fencing_token,
                    "expired_by_this_observer": o.expired,
                    "error": o.last_error,
                })
                .to_string(),
                Output::Table => {
                    let state = match (&o.holder, o.exists) {
                        (_, false) => "no lease yet".to_owned(),
                        (None, true) => "free".to_owned(),
                        (Some(h), true) if o.expired => {
                            format!(
                                "{h} (token {}) looks expired to this observer",
                                o.fencing_token.unwrap_or(0)
                            )
                        }
                        (Some(h), true) => {
                            format!("held by {h} (token {})", o.fencing_token.unwrap_or(0))
                        }
                    };
                    match &o.last_error {
                        Some(e) => format!("{} {state} (last error: {e})", timestamp(now)),
                        None => format!("{} {state}", timestamp(now)),
                    }
                }
            };
            println!("{line}");
            said = Some(state);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = interrupts.recv() => break,
            failure = &mut failing => {
                observer.stop().await;
                return Err(failure);
            }
        }
    }
    observer.stop().await;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsync::store::LeaseRecord;

    fn lease(name: &str, holder: Option<&str>, renewed_ago: u64, now: SystemTime) -> StoredLease {
        StoredLease {
            name: name.into(),
            record: LeaseRecord {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(15),
                acquire_time: Some(now - Duration::from_secs(100)),
                renew_time: Some(now - Duration::from_secs(renewed_ago)),
                lease_transitions: Some(3),
                ..Default::default()
            },
            resource_version: "7".into(),
            uid: None,
        }
    }

    #[test]
    fn only_dsync_leases_in_kind_order_and_filtered() {
        let now = SystemTime::now();
        let leases = vec![
            lease("unscoped.lock.nightly", Some("pod-b"), 2, now),
            lease("kube-node-lease-thing", Some("node"), 2, now),
            lease("team.semaphore.exports.1", None, 2, now),
            lease("unscoped.election.master", Some("pod-a"), 30, now),
        ];
        let all = Filter {
            scope: None,
            name: None,
            kind: None,
        };
        let shown: Vec<String> = rows("ns", leases.clone(), &all)
            .iter()
            .map(|r| r.key.name.clone())
            .collect();
        assert_eq!(
            shown,
            [
                "unscoped.election.master",
                "unscoped.lock.nightly",
                "team.semaphore.exports.1"
            ]
        );
        let team = Filter {
            scope: Some("team".into()),
            name: None,
            kind: None,
        };
        assert_eq!(rows("ns", leases.clone(), &team).len(), 1);
        let nightly = Filter {
            scope: None,
            name: Some("nightly".into()),
            kind: None,
        };
        assert_eq!(rows("ns", leases, &nightly)[0].name.kind, LeaseKind::Lock);
    }

    #[test]
    fn expiry_by_the_local_clock_and_the_table_says_so() {
        let now = SystemTime::now();
        let leases = vec![
            lease("unscoped.lock.fresh", Some("pod-b"), 2, now),
            lease("unscoped.lock.stale", Some("pod-c"), 30, now),
            lease("unscoped.lock.free", None, 30, now),
        ];
        let rows = rows(
            "ns",
            leases,
            &Filter {
                scope: None,
                name: None,
                kind: None,
            },
        );
        let by_name = |n: &str| rows.iter().find(|r| r.name.name == n).unwrap();
        assert_eq!(by_name("fresh").expired_by_clock(now), Some(false));
        assert_eq!(by_name("stale").expired_by_clock(now), Some(true));
        assert_eq!(by_name("free").expired_by_clock(now), None);
        let text = table(&rows, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("KIND"), "{text}");
        let stale = lines.iter().find(|l| l.contains("stale")).unwrap();
        assert!(
            stale.contains("pod-c") && stale.contains("yes") && stale.contains("30s ago"),
            "{stale}"
        );
        assert!(text.contains("judged locally"), "{text}");
        let json = by_name("stale").json(now);
        assert_eq!(json["kind"], "lock");
        assert_eq!(json["holder"], "pod-c");
        assert_eq!(json["fencing_token"], 3);
        assert_eq!(json["expired_by_local_clock"], true);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_looks_expired_a_lease_duration_after_this_observer_saw_it_change() {
        let now = SystemTime::now();
        // Renewed 1000 s ago by the holder's clock: the table says expired by clock, but the
        // watch judges from when it saw the lease, and it just saw it.
        let listed = lease("unscoped.election.master", Some("pod-a"), 1000, now);
        let filter = Filter {
            scope: None,
            name: None,
            kind: None,
        };
        let mut follow = Follow::new(rows("ns", vec![listed], &filter));
        assert!(follow.expire(Output::Table).is_empty());
        let at = follow.next_expiry().unwrap();
        assert_eq!(at - Instant::now(), Duration::from_secs(15));
        tokio::time::advance(Duration::from_secs(15)).await;
        let lines = follow.expire(Output::Table);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("pod-a looks expired to this observer (no change for 15s)"),
            "{}",
            lines[0]
        );
        assert!(follow.expire(Output::Table).is_empty(), "said once");
        assert_eq!(follow.next_expiry(), None);
    }

    #[test]
    fn watching_prints_changes_not_replays_and_expiry_by_observation() {
        let now = SystemTime::now();
        let listed = lease("unscoped.lock.nightly", Some("pod-b"), 0, now);
        let filter = Filter {
            scope: None,
            name: None,
            kind: None,
        };
        let mut follow = Follow::new(rows("ns", vec![listed.clone()], &filter));
        let replay = dsync::store::WatchEvent::Applied(listed.clone());
        assert!(
            follow
                .apply("ns", replay, &filter, Output::Table)
                .is_empty()
        );
        let mut next = listed.clone();
        next.record.holder_identity = Some("pod-c".into());
        let mut renewed = listed.clone();
        renewed.resource_version = "8".into();
        renewed.record.renew_time = Some(now + Duration::from_secs(1));
        let renewal = dsync::store::WatchEvent::Applied(renewed);
        assert!(
            follow
                .apply("ns", renewal, &filter, Output::Table)
                .is_empty(),
            "a renewal prints nothing"
        );
        next.resource_version = "9".into();
        let lines = follow.apply(
            "ns",
            dsync::store::WatchEvent::Applied(next),
            &filter,
            Output::Table,
        );
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("lock unscoped/nightly holder pod-c token 3"),
            "{}",
            lines[0]
        );
        assert!(follow.next_expiry().is_some());
        let lines = follow.expire(Output::Table);
        assert!(lines.is_empty(), "not yet: {lines:?}");
        let deleted = dsync::store::WatchEvent::Deleted {
            name: "unscoped.lock.nightly".into(),
        };
        let lines = follow.apply("ns", deleted, &filter, Output::Json);
        assert!(lines[0].contains("\"deleted\""), "{}", lines[0]);
        assert_eq!(follow.next_expiry(), None);
    }
}
