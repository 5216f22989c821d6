//! The API server's audit log: what to record, and requests per client as the server saw them.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::apiserver::Harness;

/// The audit policy: Lease requests at `Metadata` level (no `RequestReceived` stage), nothing
/// else.
pub const POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
     - level: Metadata\n  resources:\n  - group: coordination.k8s.io\n    resources: [leases]\n\
     - level: None\n";

/// The log's length in bytes (0 before it exists): an offset to count from.
pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Requests per (user agent, verb, response code) in one namespace, from audit-log bytes
/// `from..to`.
pub fn audit_counts(
    log: &Path,
    from: u64,
    to: u64,
    namespace: &str,
) -> BTreeMap<(String, String, i64), u64> {
    let mut file = std::fs::File::open(log).expect("audit log");
    file.seek(SeekFrom::Start(from)).unwrap();
    let mut buf = String::new();
    file.take(to - from).read_to_string(&mut buf).unwrap();
    count(&buf, namespace, |_| true)
}

/// Requests per (user agent, verb, response code) in one namespace that the server received
/// at or after `since`, from the whole log. (The server writes an entry a while after the
/// request: a byte offset taken at `since` may precede entries of requests received before.)
pub fn audit_counts_since(
    log: &Path,
    namespace: &str,
    since: SystemTime,
) -> BTreeMap<(String, String, i64), u64> {
    let since = k8s_openapi::jiff::Timestamp::try_from(since).expect("a time after 1970");
    let buf = std::fs::read_to_string(log).expect("audit log");
    count(&buf, namespace, |ev| {
        ev["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .is_some_and(|t| t >= since)
    })
}

fn count(
    buf: &str,
    namespace: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> BTreeMap<(String, String, i64), u64> {
    let mut counts = BTreeMap::new();
    for line in buf.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if ev["objectRef"]["namespace"].as_str() != Some(namespace) || !keep(&ev) {
            continue;
        }
        let verb = ev["verb"].as_str().unwrap_or("?").to_owned();
        let stage = ev["stage"].as_str().unwrap_or("");
        // A watch is counted when it starts; everything else when it completes.
        let counted = if verb == "watch" {
            stage == "ResponseStarted"
        } else {
            stage == "ResponseComplete"
        };
        if counted {
            let agent = ev["userAgent"].as_str().unwrap_or("?").to_owned();
            let code = ev["responseStatus"]["code"].as_i64().unwrap_or(0);
            *counts.entry((agent, verb, code)).or_insert(0) += 1;
        }
    }
    counts
}

/// A harness of its own with an audit log ([`POLICY`]) in its data directory: the log's path.
pub fn launch_audited() -> (Harness, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "dsync-audit-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let log = dir.join("audit.log");
    let harness = Harness::launch(vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", log.display()),
    ]);
    (harness, log)
}
