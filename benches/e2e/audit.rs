//! The API server's audit log: what to record, requests per client, and crash takeovers as
//! the server saw them.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub use dsync_harness::audit::{POLICY, audit_counts, file_len};

/// For each of `leases` in `namespace`: from the API server's record of `holder`'s last
/// successful renewal (when it completed) to the next holder's successful acquisition (when it
/// was received), in ms, from the audit log written since `from`. A lease missing either is
/// left out.
pub fn takeovers(
    log: &Path,
    from: u64,
    namespace: &str,
    holder: &str,
    leases: &[String],
) -> Vec<f64> {
    let mut file = std::fs::File::open(log).expect("audit log");
    file.seek(SeekFrom::Start(from)).unwrap();
    let mut buf = String::new();
    file.read_to_string(&mut buf).unwrap();
    let time = |v: &serde_json::Value| -> Option<i128> {
        let t: k8s_openapi::jiff::Timestamp = v.as_str()?.parse().ok()?;
        Some(t.as_nanosecond())
    };
    let mut last_renewal: HashMap<String, i128> = HashMap::new();
    let mut acquired: HashMap<String, i128> = HashMap::new();
    for line in buf.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let ok_update = ev["verb"].as_str() == Some("update")
            && ev["stage"].as_str() == Some("ResponseComplete")
            && ev["responseStatus"]["code"].as_i64() == Some(200)
            && ev["objectRef"]["namespace"].as_str() == Some(namespace);
        let Some(name) = ev["objectRef"]["name"].as_str().filter(|_| ok_update) else {
            continue;
        };
        if ev["userAgent"].as_str() == Some(holder) {
            if let Some(t) = time(&ev["stageTimestamp"]) {
                last_renewal.insert(name.to_owned(), t);
            }
        } else if let Some(t) = time(&ev["requestReceivedTimestamp"]) {
            acquired.entry(name.to_owned()).or_insert(t);
        }
    }
    leases
        .iter()
        .filter_map(|l| Some((acquired.get(l)? - last_renewal.get(l)?) as f64 / 1e6))
        .collect()
}

/// One lease request in the audit log, counted as [`audit_counts`] counts it (a watch when it
/// starts, anything else when it completes).
pub struct Request {
    /// The client's User-Agent (the peer's name).
    pub agent: String,
    pub verb: String,
    /// HTTP status of the answer.
    pub code: i64,
    /// When the server received it (Unix ns).
    pub received: i128,
}

impl Request {
    /// Whether it asked to write a Lease (`create`, `update`, `patch`): what a campaign costs
    /// the API server and etcd, whatever the answer.
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch")
    }
}

/// The requests in `namespace` from audit-log byte `from` on, each with the time the server
/// received it: for counting per time window (by the server's clock, the same machine's).
pub fn requests(log: &Path, from: u64, namespace: &str) -> Vec<Request> {
    let mut file = std::fs::File::open(log).expect("audit log");
    file.seek(SeekFrom::Start(from)).unwrap();
    let mut buf = String::new();
    file.read_to_string(&mut buf).unwrap();
    let mut out = Vec::new();
    for line in buf.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if ev["objectRef"]["namespace"].as_str() != Some(namespace) {
            continue;
        }
        let verb = ev["verb"].as_str().unwrap_or("?");
        let stage = ev["stage"].as_str().unwrap_or("");
        let counted = if verb == "watch" {
            stage == "ResponseStarted"
        } else {
            stage == "ResponseComplete"
        };
        let received = ev["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_nanosecond());
        if let (true, Some(received)) = (counted, received) {
            out.push(Request {
                agent: ev["userAgent"].as_str().unwrap_or("?").to_owned(),
                verb: verb.to_owned(),
                code: ev["responseStatus"]["code"].as_i64().unwrap_or(0),
                received,
            });
        }
    }
    out
}
