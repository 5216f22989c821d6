//! `LeaseCandidate`s (`coordination.k8s.io/v1beta1`) of Kubernetes' coordinated leader
//! election (KEP-4355): a replica's bid for a lease, which the API server's election
//! controller reads to pick the lease's holder. See
//! [Coordinated leader election](crate::election#coordinated-leader-election).

use std::time::SystemTime;

use crate::record::LeaseKey;

/// The spec of a `LeaseCandidate`. Its object name is the candidate's identity: the election
/// controller writes that name into the Lease's `holderIdentity` when it picks the candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CandidateRecord {
    /// The Lease this candidate runs for (`spec.leaseName`, same namespace).
    pub lease_name: String,
    /// `spec.binaryVersion`, a semantic version (e.g. `1.36.0`).
    pub binary_version: String,
    /// `spec.emulationVersion`, a semantic version (e.g. `1.35.0`).
    pub emulation_version: String,
    /// `spec.strategy`, e.g. `OldestEmulationVersion`.
    pub strategy: String,
    /// `spec.renewTime`: when the candidate last said it is alive.
    pub renew_time: Option<SystemTime>,
    /// `spec.pingTime`: when the controller last asked the candidate to renew.
    pub ping_time: Option<SystemTime>,
}

impl CandidateRecord {
    /// Whether the controller pinged the candidate after its last renewal: the candidate must
    /// renew (soon: the controller counts only candidates that answered within 5 s).
    pub fn pinged(&self) -> bool {
        match (self.ping_time, self.renew_time) {
            (Some(ping), Some(renew)) => ping > renew,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// A `LeaseCandidate` as stored, with the version that guards its next write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCandidate {
    /// Namespace and object name (the candidate's identity).
    pub key: LeaseKey,
    /// The spec.
    pub record: CandidateRecord,
    /// The object's `resourceVersion`.
    pub resource_version: String,
}
