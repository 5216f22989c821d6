//! dsync's own test support. What a user of dsync would need (the fault-injecting store, the
//! term log and its checks, paused-time helpers) is the public test kit, `dsync::testing`
//! (feature `testing`); what is here is dsync-internal, one job per module:
//!
//! * `backend`: one test body, two stores (`Env`, `on_both_stores!`);
//! * `kubefault`: fault injection in a kube client's HTTP stack;
//! * `rbac`: binding a shipped Role to the harness's user without rights;
//! * `fencing`: installing the policies of `deploy/fencing/` and waiting for their effect;
//! * `cli` (feature `cli`): the `dsync` command as a process, its output line by line;
//! * `apiserver` (the real kube-apiserver harness, one per test binary) and `gopeer` (Go
//!   client-go peers for the interop tests, on the line protocol the e2e bench also speaks)
//!   come from the dev-only crate `dsync-harness` in `tests/harness`, which the benches share.
#![allow(dead_code)] // each test binary uses a different part

pub mod backend;
#[cfg(feature = "cli")]
pub mod cli;
pub mod fencing;
pub mod kubefault;
pub mod rbac;
#[allow(unused_imports)] // not every test binary uses both
pub use dsync_harness::{apiserver, audit, gopeer};

/// How many elections and locks (semaphore slots counted as locks) `d` runs, not counting
/// actors still stopping: from [`dsync::Dsync::leases`].
pub fn running(d: &dsync::Dsync) -> (usize, usize) {
    let live = d.leases().into_iter().filter(|e| !e.stopping);
    let (elections, locks): (Vec<_>, Vec<_>) =
        live.partition(|e| e.kind == dsync::resource::LeaseKind::Election);
    (elections.len(), locks.len())
}
