//! dsync's test and benchmark harness (dev-only, never published).
//!
//! * [`apiserver`]: the real kube-apiserver (with embedded etcd), built from source by
//!   `tests/apiserver/build.sh` and started as a child process.
//! * [`protocol`]: the line protocol every peer process speaks, the client-go peer
//!   (`benches/peers/clientgo`) and the e2e bench's dsync peer alike: its output lines, its
//!   commands, its command-line flags.
//! * [`gopeer`]: a Go peer as a child process, driven over that protocol.
//! * [`audit`]: the API server's audit log, to count requests as the server saw them.
//!
//! It does not depend on dsync (dsync depends on it, as a dev-dependency).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod audit;
pub mod gopeer;
pub mod protocol;
