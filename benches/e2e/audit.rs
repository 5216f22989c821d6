//! The API server's audit log: what to record, requests per client, and crash takeovers as
//! the server saw them.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

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
    let mut counts = BTreeMap::new();
    for line in buf.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if ev["objectRef"]["namespace"].as_str() != Some(namespace) {
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
