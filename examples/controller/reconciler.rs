//! The controller of the `controller` example: a kube-runtime [`Controller`] that reconciles
//! the ConfigMaps labelled [`SELECTOR`] into a status annotation ([`STATUS_ANNOTATION`]), run
//! by [`start`] for every term of an [`Election`] and stopped when the term ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dsync::fencing::{self, FENCE_ANNOTATION, FenceError};
use dsync::{Election, Term};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

/// The election whose leader runs the controller.
pub const ELECTION: &str = "configmap-controller";

/// The label selector of the ConfigMaps the controller reconciles.
pub const SELECTOR: &str = "dsync.example/reconcile=true";

/// The annotation the controller writes: a JSON [`Status`].
pub const STATUS_ANNOTATION: &str = "dsync.example/status";

/// How often a reconciled ConfigMap is looked at again without a change (kube-runtime's usual
/// safety net against a missed event).
const RESYNC: Duration = Duration::from_secs(300);

/// How soon a failed reconcile is retried.
const RETRY: Duration = Duration::from_secs(5);

/// What the controller writes into [`STATUS_ANNOTATION`]: who reconciled which data, under
/// which term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The identity of the leader that wrote it.
    pub reconciled_by: String,
    /// The fencing token of that leader's term.
    pub fencing_token: i32,
    /// [`digest`] of the data it saw.
    pub digest: String,
    /// How many keys (`data` and `binaryData`) it saw.
    pub keys: usize,
    /// When it wrote it (RFC 3339).
    pub reconciled_at: String,
}

/// Why a reconcile failed (the controller logs it and retries after [`RETRY`]).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The term ended before the write: the controller is shutting down, and a deposed
    /// replica must not write.
    #[error("not writing ConfigMap {name}: the term (fencing token {token}) has ended")]
    TermEnded {
        /// The ConfigMap.
        name: String,
        /// The fencing token of the ended term.
        token: i32,
    },
    /// The term cannot fence a write.
    #[error("cannot fence the write of ConfigMap {name}")]
    Fence {
        /// The ConfigMap.
        name: String,
        /// Why.
        #[source]
        source: FenceError,
    },
    /// The API server refused or failed the write (a 409 when the ConfigMap changed since it
    /// was read: its new version is reconciled next; a 403 from the token fence when this
    /// term has ended).
    #[error("cannot write the status of ConfigMap {name}")]
    Write {
        /// The ConfigMap.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// What a term's controller works with.
pub struct Context {
    /// The ConfigMaps of the namespace, through this replica's client.
    pub api: Api<ConfigMap>,
    /// The term it runs under: its holder names the writer, its fence goes on every write.
    pub term: Term,
}

/// A digest of a ConfigMap's `data` and `binaryData` (64-bit FNV-1a over the sorted keys and
/// their values): stable across processes and builds, so that any replica can tell whether a
/// status describes the data as it is.
pub fn digest(map: &ConfigMap) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        hash = (hash ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    };
    for (key, value) in map.data.iter().flatten() {
        feed(b"d");
        feed(key.as_bytes());
        feed(value.as_bytes());
    }
    for (key, value) in map.binary_data.iter().flatten() {
        feed(b"b");
        feed(key.as_bytes());
        feed(&value.0);
    }
    format!("{hash:016x}")
}

/// The [`Status`] a ConfigMap carries, if it carries a well-formed one.
pub fn status_of(map: &ConfigMap) -> Option<Status> {
    let value = map.annotations().get(STATUS_ANNOTATION)?;
    serde_json::from_str(value).ok()
}

/// The merge patch that reconciles `map` under `term`, or `None` if it is up to date: its
/// status was written under this very term (same holder, same fence) for the data it has now.
/// Anything else (no status, a status of another term or replica, changed data) is rewritten,
/// so a new leader takes every ConfigMap over with its own fence.
///
/// The patch carries the term's fence ([`fencing::merge_patch`]), for the server-side token
/// fence, and the `resourceVersion` it was computed from, so that it fails (409) rather than
/// describe data that changed in between.
pub fn status_patch(
    map: &ConfigMap,
    term: &Term,
    now: &str,
) -> Result<Option<serde_json::Value>, FenceError> {
    let fence = fencing::fence(term)?;
    let digest = digest(map);
    let up_to_date = status_of(map).is_some_and(|s| {
        s.reconciled_by == term.holder()
            && s.fencing_token == term.fencing_token()
            && s.digest == digest
    }) && map.annotations().get(FENCE_ANNOTATION) == Some(&fence);
    if up_to_date {
        return Ok(None);
    }
    let status = Status {
        reconciled_by: term.holder().to_owned(),
        fencing_token: term.fencing_token(),
        digest,
        keys: map.data.as_ref().map_or(0, BTreeMap::len)
            + map.binary_data.as_ref().map_or(0, BTreeMap::len),
        reconciled_at: now.to_owned(),
    };
    let mut patch = fencing::merge_patch(term)?;
    patch["metadata"]["annotations"][STATUS_ANNOTATION] = serde_json::to_string(&status)
        .expect("a Status serialises")
        .into();
    patch["metadata"]["resourceVersion"] = map.resource_version().into();
    Ok(Some(patch))
}

/// The field manager of a replica's writes (who wrote what, in `managedFields`).
pub fn field_manager(identity: &str) -> String {
    format!("dsync-example-controller/{identity}")
}

/// Writes a status patch of [`status_patch`] to the ConfigMap `name`, as `identity`'s field
/// manager. No check of the term here: [`reconcile`] makes it; the token fence on the server,
/// if installed, refuses the patch once its fence is not the current term's.
pub async fn write_status(
    api: &Api<ConfigMap>,
    name: &str,
    identity: &str,
    patch: &serde_json::Value,
) -> Result<ConfigMap, kube::Error> {
    let params = PatchParams {
        field_manager: Some(field_manager(identity)),
        ..Default::default()
    };
    api.patch(name, &params, &Patch::Merge(patch)).await
}

/// Reconciles one ConfigMap: writes its status unless it is up to date.
pub async fn reconcile(map: Arc<ConfigMap>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = map.name_any();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = status_patch(&map, &ctx.term, &now).map_err(|source| ReconcileError::Fence {
        name: name.clone(),
        source,
    })?;
    let Some(patch) = patch else {
        return Ok(Action::requeue(RESYNC));
    };
    // The controller stops starting reconciles when the term ends, but one may have been
    // started just before: self-fencing first (the server's token fence is the second line).
    if !ctx.term.is_active() {
        return Err(ReconcileError::TermEnded {
            name,
            token: ctx.term.fencing_token(),
        });
    }
    write_status(&ctx.api, &name, ctx.term.holder(), &patch)
        .await
        .map_err(|source| ReconcileError::Write {
            name: name.clone(),
            source,
        })?;
    tracing::info!(configmap = %name, token = ctx.term.fencing_token(), "reconciled");
    Ok(Action::requeue(RESYNC))
}

/// What the controller does after a failed reconcile: log it, retry soon.
pub fn error_policy(map: Arc<ConfigMap>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(configmap = %map.name_any(), error = %error, source = ?std::error::Error::source(error), "reconcile failed");
    Action::requeue(RETRY)
}

/// Runs the controller for one term: from now until the term ends, then a graceful shutdown
/// (no new reconciles; those running finish). Returns when the controller has stopped, which
/// is when dsync may release the lease.
pub async fn run(api: Api<ConfigMap>, term: Term) {
    let token = term.fencing_token();
    tracing::info!(token, "elected: the controller starts");
    let ctx = Arc::new(Context {
        api: api.clone(),
        term: term.clone(),
    });
    Controller::new(api, watcher::Config::default().labels(SELECTOR))
        .graceful_shutdown_on(term.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                // Logged by `error_policy`, and retried.
                Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
                // Watch errors: the controller backs off and watches again.
                Err(error) => tracing::warn!(%error, "controller"),
            }
        })
        .await;
    tracing::info!(token, "the term is over: the controller has stopped");
}

/// Runs the controller on this replica for every term of `election`, on `api`'s ConfigMaps.
/// Call it from within an actix System (the controller runs on the calling arbiter).
pub fn start(election: &Election, api: Api<ConfigMap>) -> dsync::Result<()> {
    election.when_elected(move |term| run(api.clone(), term))
}
