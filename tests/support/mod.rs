//! dsync's own test support. What a user of dsync would need (the fault-injecting store, the
//! term log and its checks, paused-time helpers) is the public test kit, `dsync::testing`
//! (feature `testing`); what is here is dsync-internal, one job per module:
//!
//! * `apiserver`: the real kube-apiserver harness (tests/apiserver), one per test binary;
//! * `backend`: one test body, two stores (`Env`, `on_both_stores!`);
//! * `gopeer`: Go client-go / dsync peers for the interop tests;
//! * `kubefault`: fault injection in a kube client's HTTP stack.
#![allow(dead_code)] // each test binary uses a different part

pub mod apiserver;
pub mod backend;
pub mod gopeer;
pub mod kubefault;
