//! What an election or a lock is about: `Resource { namespace, scope, name }`, the Lease names
//! derived from it, validation and sanitising; and [`LeaseName`], a Lease name taken apart
//! again.
//!
//! Lease names are `<scope>.election.<name>` and `<scope>.lock.<name>` in `namespace`, exactly as
//! the Go package `tempcke/dsync` names them, so Go dsync, client-go and dsync replicas can share one Lease object.

use std::fmt;
use std::str::FromStr;

pub use crate::names::{MAX_NAME_LEN, MAX_NAMESPACE_LEN, sanitize_name};
use crate::names::{is_dns1123_label, is_dns1123_subdomain};
use crate::record::LeaseKey;

/// Scope used when a resource has none.
pub const DEFAULT_SCOPE: &str = "unscoped";
/// Namespace used when a configuration names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The conventional name of a service's one election (the Go package `tempcke/dsync`'s
/// `MasterTask`): `dsync.election(dsync::MASTER)`. Names are never defaulted to it: an empty
/// name is an error ([`NameError::EmptyName`]).
pub const MASTER: &str = "master";

/// Which kind of lease a resource is used as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseKind {
    /// `<scope>.election.<name>`
    Election,
    /// `<scope>.lock.<name>`
    Lock,
    /// A semaphore's slots: `<scope>.semaphore.<name>.<i>` for `i` in `0..n`, one Lease each
    /// ([`Resource::semaphore_slot_name`]). `<scope>.semaphore.<name>` itself names no Lease.
    Semaphore,
}

impl LeaseKind {
    /// `"election"`, `"lock"` or `"semaphore"`: the infix of its lease names.
    pub fn as_str(self) -> &'static str {
        self.infix()
    }

    fn infix(self) -> &'static str {
        match self {
            LeaseKind::Election => "election",
            LeaseKind::Lock => "lock",
            LeaseKind::Semaphore => "semaphore",
        }
    }
}

impl fmt::Display for LeaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.infix())
    }
}

/// Why a namespace, scope or name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The lease name would be longer than Kubernetes allows.
    #[error("lease name {name:?} is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong {
        /// The offending lease name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The lease name is not a lowercase DNS-1123 subdomain. ([`sanitize_name`] makes one
    /// of any text; the message does not say so, as it also reaches users of the command
    /// line, who have no such function.)
    #[error(
        "lease name {name:?} is not a DNS-1123 subdomain (lowercase a-z, 0-9, '-' and '.', \
         starting and ending with an alphanumeric character)"
    )]
    InvalidName {
        /// The offending lease name.
        name: String,
    },
    /// The namespace is not a DNS-1123 label.
    #[error(
        "namespace {namespace:?} is not a DNS-1123 label (1-{MAX_NAMESPACE_LEN} characters of \
         lowercase a-z, 0-9 and '-', starting and ending with an alphanumeric character)"
    )]
    InvalidNamespace {
        /// The offending namespace.
        namespace: String,
    },
    /// An empty name, given to [`Dsync::election`](crate::Dsync::election),
    /// [`Dsync::lock`](crate::Dsync::lock), in a [`Resource`] or in the text parsed into
    /// one (`"scope/"`): almost always an unset variable. The Go package `tempcke/dsync`
    /// defaulted it to [`MASTER`]; here, ask for that name explicitly.
    #[error("the {kind} name is empty")]
    EmptyName {
        /// `election`, `lock`, or `resource` (validated without a kind).
        kind: &'static str,
    },
    /// The text has more than three `/`-separated parts.
    #[error(
        "{input:?} has more than three '/'-separated parts (expected [[namespace/]scope/]name)"
    )]
    TooManyParts {
        /// The text that was parsed.
        input: String,
    },
}

/// A named election or lock: the `Resource` of the Go package `tempcke/dsync`.
///
/// An empty `scope` means [`DEFAULT_SCOPE`]; an empty `namespace` means "the namespace of the
/// [`Config`](crate::Config)" when handed to [`Dsync`](crate::Dsync), and
/// [`DEFAULT_NAMESPACE`] when a lease key is built directly. An empty `name` is an error
/// ([`NameError::EmptyName`]) wherever a resource is validated: by
/// [`validate`](Self::validate), by parsing, and by [`Dsync`](crate::Dsync).
///
/// `Display` and `FromStr` round-trip `namespace/scope/name` (`scope/name` without namespace,
/// `name` alone without either, `namespace//name` with a namespace but no scope):
///
/// ```
/// use dsync::Resource;
/// let r: Resource = "prod//reports".parse()?;
/// assert_eq!(r, Resource::new("prod", "", "reports"));
/// assert_eq!(r.to_string(), "prod//reports");
/// assert_eq!(r.election_name(), "unscoped.election.reports");
/// assert!("prod/reports/".parse::<Resource>().is_err()); // empty name
/// # Ok::<(), dsync::resource::NameError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    /// Kubernetes namespace of the lease (a DNS-1123 label); empty: the configured default.
    pub namespace: String,
    /// Prefix that keeps services sharing a namespace apart, usually the service's name.
    pub scope: String,
    /// The election or lock name.
    pub name: String,
}

impl Resource {
    /// A resource from its three parts.
    pub fn new(
        namespace: impl Into<String>,
        scope: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Resource {
            namespace: namespace.into(),
            scope: scope.into(),
            name: name.into(),
        }
    }

    /// The scope, or [`DEFAULT_SCOPE`] when empty.
    pub fn effective_scope(&self) -> &str {
        non_empty_or(&self.scope, DEFAULT_SCOPE)
    }

    /// The namespace, or [`DEFAULT_NAMESPACE`] when empty.
    pub fn effective_namespace(&self) -> &str {
        non_empty_or(&self.namespace, DEFAULT_NAMESPACE)
    }

    /// The Lease name used for `kind`: `<scope>.<kind>.<name>`.
    pub fn lease_name(&self, kind: LeaseKind) -> String {
        format!("{}.{}.{}", self.effective_scope(), kind.infix(), self.name)
    }

    /// `<scope>.election.<name>`.
    pub fn election_name(&self) -> String {
        self.lease_name(LeaseKind::Election)
    }

    /// `<scope>.lock.<name>`.
    pub fn lock_name(&self) -> String {
        self.lease_name(LeaseKind::Lock)
    }

    /// `<scope>.semaphore.<name>.<slot>`: the Lease of slot `slot` of the semaphore.
    pub fn semaphore_slot_name(&self, slot: usize) -> String {
        format!("{}.{slot}", self.lease_name(LeaseKind::Semaphore))
    }

    /// Namespace and Lease name of slot `slot` of the semaphore.
    pub fn semaphore_slot_key(&self, slot: usize) -> LeaseKey {
        LeaseKey::new(self.effective_namespace(), self.semaphore_slot_name(slot))
    }

    /// Checks that the resource can be a semaphore of `permits` slots: the name is not empty,
    /// the namespace is a DNS-1123 label, and every slot's Lease name
    /// `<scope>.semaphore.<name>.<i>`, `i` in `0..permits`, is a DNS-1123 subdomain of at most
    /// 253 characters. (The names differ only in the decimal suffix, a valid DNS label
    /// whatever its value: slot 0 stands for validity, the last slot, the longest name, for
    /// length; both are checked.) `permits == 0` checks slot 0 only.
    pub fn validate_semaphore(&self, permits: usize) -> Result<(), NameError> {
        // The prefix (name, namespace, characters) as for any kind, then each extreme slot.
        self.check(LeaseKind::Semaphore, "semaphore")?;
        for slot in [0, permits.saturating_sub(1)] {
            check_lease_name(self.semaphore_slot_name(slot))?;
        }
        Ok(())
    }

    /// Namespace and Lease name used for `kind`.
    pub fn lease_key(&self, kind: LeaseKind) -> LeaseKey {
        LeaseKey::new(self.effective_namespace(), self.lease_name(kind))
    }

    /// Checks that the name is not empty, that the namespace is a DNS-1123 label, and that the
    /// lease names of *both* kinds are DNS-1123 subdomains of at most 253 characters (the
    /// election's is the longer). Use [`validate_for`](Self::validate_for) when the resource
    /// is used as one kind only.
    pub fn validate(&self) -> Result<(), NameError> {
        self.check(LeaseKind::Election, "resource")
    }

    /// Checks that the resource can be used as `kind`: the name is not empty, the namespace is
    /// a DNS-1123 label, and that kind's lease name is a DNS-1123 subdomain of at most 253
    /// characters. A lock's lease name is four characters shorter than an election's, so a
    /// name can be valid for a lock and too long for an election.
    pub fn validate_for(&self, kind: LeaseKind) -> Result<(), NameError> {
        let what = match kind {
            LeaseKind::Election => "election",
            LeaseKind::Lock => "lock",
            LeaseKind::Semaphore => "semaphore",
        };
        self.check(kind, what)
    }

    fn check(&self, kind: LeaseKind, what: &'static str) -> Result<(), NameError> {
        if self.name.is_empty() {
            return Err(NameError::EmptyName { kind: what });
        }
        let ns = self.effective_namespace();
        if !is_dns1123_label(ns) {
            return Err(NameError::InvalidNamespace {
                namespace: ns.to_owned(),
            });
        }
        check_lease_name(self.lease_name(kind))
    }
}

/// A Lease object name: a DNS-1123 subdomain of at most [`MAX_NAME_LEN`] characters.
fn check_lease_name(name: String) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: name.len(),
            name,
        });
    }
    if !is_dns1123_subdomain(&name) {
        return Err(NameError::InvalidName { name });
    }
    Ok(())
}

fn non_empty_or<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() { default } else { value }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.namespace.is_empty(), self.scope.is_empty()) {
            (true, true) => f.write_str(&self.name),
            (true, false) => write!(f, "{}/{}", self.scope, self.name),
            // The Go package dropped the namespace here; we keep it with an empty scope.
            (false, _) => write!(f, "{}/{}/{}", self.namespace, self.scope, self.name),
        }
    }
}

impl FromStr for Resource {
    type Err = NameError;

    /// Parses `[[namespace/]scope/]name` and validates the result
    /// ([`validate`](Resource::validate)): an empty name is an error, as everywhere.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let resource = match parts.as_slice() {
            [name] => Resource::new("", "", *name),
            [scope, name] => Resource::new("", *scope, *name),
            [ns, scope, name] => Resource::new(*ns, *scope, *name),
            _ => {
                return Err(NameError::TooManyParts {
                    input: s.to_owned(),
                });
            }
        };
        resource.validate()?;
        Ok(resource)
    }
}

/// A Lease name dsync uses, taken apart: `<scope>.election.<name>`, `<scope>.lock.<name>`,
/// `<scope>.semaphore.<name>.<slot>`.
///
/// Scopes and names may contain dots, so a Lease name whose labels hold two of the infixes
/// (`a.lock.b.election.c`: scope `a.lock.b` or name `b.election.c`?) could come from two
/// resources. [`parse`](Self::parse) takes a name apart only when exactly one reading is
/// possible; `Display` gives the Lease name again.
///
/// ```
/// use dsync::Resource;
/// use dsync::resource::LeaseKind;
/// use dsync::resource::LeaseName;
/// let parsed = LeaseName::parse("billing.semaphore.pool.3").unwrap();
/// assert_eq!(parsed.kind, LeaseKind::Semaphore);
/// assert_eq!((parsed.scope.as_str(), parsed.name.as_str(), parsed.slot), ("billing", "pool", Some(3)));
/// assert_eq!(parsed.to_string(), "billing.semaphore.pool.3");
/// assert_eq!(
///     LeaseName::parse("unscoped.election.master").unwrap().resource("prod"),
///     Resource::new("prod", "unscoped", "master")
/// );
/// assert_eq!(LeaseName::parse("kube-scheduler"), None); // not one of dsync's
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseName {
    /// The scope ([`DEFAULT_SCOPE`] for a resource that had none).
    pub scope: String,
    /// Election, lock or semaphore slot.
    pub kind: LeaseKind,
    /// The election, lock or semaphore name.
    pub name: String,
    /// The slot of a semaphore's Lease; `None` for an election or a lock.
    pub slot: Option<usize>,
}

impl LeaseName {
    /// Takes `lease_name` apart; `None` for a name dsync would not produce: not a valid Lease
    /// object name, no `election`/`lock`/`semaphore` label between a scope and a name, a
    /// semaphore Lease without a decimal slot (`0`, `1`, ..., no leading zeros), or a name
    /// with more than one possible reading.
    pub fn parse(lease_name: &str) -> Option<LeaseName> {
        if lease_name.len() > MAX_NAME_LEN || !is_dns1123_subdomain(lease_name) {
            return None;
        }
        let labels: Vec<&str> = lease_name.split('.').collect();
        let mut found = None;
        // The infix is neither the first label (the scope is not empty) nor the last.
        for i in 1..labels.len().saturating_sub(1) {
            let kind = match labels[i] {
                "election" => LeaseKind::Election,
                "lock" => LeaseKind::Lock,
                "semaphore" => LeaseKind::Semaphore,
                _ => continue,
            };
            let rest = &labels[i + 1..];
            let (name, slot) = match kind {
                LeaseKind::Semaphore => match rest.split_last() {
                    Some((slot, name)) if !name.is_empty() => match parse_slot(slot) {
                        Some(slot) => (name.join("."), Some(slot)),
                        None => continue,
                    },
                    _ => continue,
                },
                _ => (rest.join("."), None),
            };
            let reading = LeaseName {
                scope: labels[..i].join("."),
                kind,
                name,
                slot,
            };
            if found.replace(reading).is_some() {
                return None; // two readings: ambiguous
            }
        }
        found
    }

    /// The resource in `namespace` whose Lease (or semaphore slot Lease) this is.
    pub fn resource(&self, namespace: &str) -> Resource {
        Resource::new(namespace, &*self.scope, &*self.name)
    }
}

/// A slot number as [`Resource::semaphore_slot_name`] writes it: decimal, no sign, no leading
/// zero.
fn parse_slot(label: &str) -> Option<usize> {
    let canonical = !label.is_empty()
        && label.bytes().all(|b| b.is_ascii_digit())
        && (label == "0" || !label.starts_with('0'));
    if canonical { label.parse().ok() } else { None }
}

impl fmt::Display for LeaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.scope, self.kind, self.name)?;
        match self.slot {
            Some(slot) => write!(f, ".{slot}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_round_trip_through_parse() {
        for (scope, name) in [
            ("", MASTER),
            ("billing", "nightly-report"),
            ("svc.v2", "a.b-c"),
            ("s", "0"),
            ("a-1", "x.9"),
        ] {
            let r = Resource::new("ns", scope, name);
            for kind in [LeaseKind::Election, LeaseKind::Lock] {
                let lease = r.lease_name(kind);
                let parsed = LeaseName::parse(&lease).unwrap_or_else(|| panic!("{lease}"));
                assert_eq!(
                    parsed,
                    LeaseName {
                        scope: r.effective_scope().into(),
                        kind,
                        name: name.into(),
                        slot: None
                    }
                );
                assert_eq!(parsed.to_string(), lease);
                assert_eq!(parsed.resource("ns").lease_name(kind), lease);
            }
            for slot in [0, 7, 10, 1023] {
                let lease = r.semaphore_slot_name(slot);
                let parsed = LeaseName::parse(&lease).unwrap_or_else(|| panic!("{lease}"));
                assert_eq!(parsed.kind, LeaseKind::Semaphore);
                assert_eq!(parsed.slot, Some(slot));
                assert_eq!(parsed.name, name);
                assert_eq!(parsed.scope, r.effective_scope());
                assert_eq!(parsed.to_string(), lease);
                assert_eq!(parsed.resource("ns").semaphore_slot_name(slot), lease);
            }
        }
    }

    #[test]
    fn names_dsync_would_not_produce_do_not_parse() {
        for lease in [
            "",
            "kube-scheduler",
            "a.b.c",
            "election.x",             // no scope
            "s.election",             // no name
            "s.lock.",                // not a valid object name
            "S.lock.x",               // nor this
            "s.semaphore.pool",       // no slot
            "s.semaphore.3",          // a slot but no name
            "s.semaphore.pool.x",     // not a number
            "s.semaphore.pool.01",    // not as dsync writes it
            "s.semaphore.pool.-1",    // nor this
            "a.lock.b.election.c",    // two readings
            "s.semaphore.a.lock.b.0", // two readings
            &format!("s.lock.{}", "a".repeat(MAX_NAME_LEN)),
        ] {
            assert_eq!(LeaseName::parse(lease), None, "{lease:?}");
        }
    }

    #[test]
    fn one_reading_is_enough_even_with_two_infix_labels() {
        // `pool.x` cannot be a slot: only the lock reading is left.
        let parsed = LeaseName::parse("a.semaphore.pool.lock.x").unwrap();
        assert_eq!(
            parsed,
            LeaseName {
                scope: "a.semaphore.pool".into(),
                kind: LeaseKind::Lock,
                name: "x".into(),
                slot: None
            }
        );
        // Infix words inside a label are just words.
        let parsed = LeaseName::parse("my-lock.election.lock-holder").unwrap();
        assert_eq!(parsed.scope, "my-lock");
        assert_eq!(parsed.name, "lock-holder");
    }

    #[test]
    fn sanitize_name_matches_the_go_packages_table() {
        for (input, want) in [
            ("Example-Name", "example-name"),
            ("--Invalid@Name!!--", "invalid-name"),
            ("valid-name", "valid-name"),
            ("123--456", "123--456"),
            ("UPPERCASE", "uppercase"),
            ("--dash-at-start", "dash-at-start"),
            ("dash-at-end--", "dash-at-end"),
            ("Bad_Name", "bad-name"),
            ("dots.become.dashes", "dots-become-dashes"),
            ("ÄÖü", ""),
            ("", ""),
        ] {
            assert_eq!(sanitize_name(input), want, "sanitize_name({input:?})");
        }
    }

    #[test]
    fn sanitized_non_empty_names_validate() {
        for input in ["Example-Name", "--Invalid@Name!!--", "a_b", "X"] {
            let r = Resource::new("ns", "scope", sanitize_name(input));
            assert!(r.validate().is_ok(), "{input:?} -> {r}");
        }
    }

    #[test]
    fn lease_names_use_defaults_for_empty_scope_and_namespace() {
        let r = Resource::new("", "", MASTER);
        assert_eq!(r.election_name(), "unscoped.election.master");
        assert_eq!(r.lock_name(), "unscoped.lock.master");
        let r = Resource::new("ns", "svc", "job");
        assert_eq!(r.election_name(), "svc.election.job");
        assert_eq!(r.lock_name(), "svc.lock.job");
        assert_eq!(
            r.lease_key(LeaseKind::Lock),
            LeaseKey::new("ns", "svc.lock.job")
        );
        assert_eq!(
            Resource::new("", "", "x").lease_key(LeaseKind::Election),
            LeaseKey::new("default", "unscoped.election.x")
        );
    }

    #[test]
    fn display_and_from_str_round_trip() {
        for (text, want) in [
            ("a", Resource::new("", "", "a")),
            ("a/b", Resource::new("", "a", "b")),
            ("a/b/c", Resource::new("a", "b", "c")),
            ("a//c", Resource::new("a", "", "c")),
        ] {
            let parsed: Resource = text.parse().unwrap();
            assert_eq!(parsed, want, "parse {text:?}");
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.to_string().parse::<Resource>().unwrap(), parsed);
        }
    }

    #[test]
    fn namespace_without_scope_is_not_dropped() {
        let r = Resource::new("prod", "", "job");
        assert_eq!(r.to_string(), "prod//job");
        assert_ne!(r, Resource::new("", "", "job"));
    }

    #[test]
    fn four_parts_are_rejected() {
        let err = "a/b/c/d".parse::<Resource>().unwrap_err();
        assert_eq!(
            err,
            NameError::TooManyParts {
                input: "a/b/c/d".into()
            }
        );
    }

    #[test]
    fn an_empty_name_is_an_error_everywhere() {
        // Parsing agrees with Dsync::election("") and Dsync::lock(""): no silent default.
        for text in ["", "scope/", "ns/scope/", "ns//"] {
            assert_eq!(
                text.parse::<Resource>(),
                Err(NameError::EmptyName { kind: "resource" }),
                "{text:?}"
            );
        }
        let r = Resource::new("ns", "s", "");
        assert_eq!(r.validate(), Err(NameError::EmptyName { kind: "resource" }));
        assert_eq!(
            r.validate_for(LeaseKind::Lock),
            Err(NameError::EmptyName { kind: "lock" })
        );
    }

    #[test]
    fn a_lock_name_is_checked_as_a_lock_name() {
        // "s.lock." is 7 characters, "s.election." 11: a name of 244 characters fits a lock
        // but not an election, and the error quotes the lease name of the kind checked.
        let r = Resource::new("ns", "s", "a".repeat(MAX_NAME_LEN - 9));
        assert_eq!(r.lock_name().len(), MAX_NAME_LEN - 2);
        assert_eq!(r.validate_for(LeaseKind::Lock), Ok(()));
        assert_eq!(
            r.validate_for(LeaseKind::Election),
            Err(NameError::TooLong {
                name: r.election_name(),
                len: MAX_NAME_LEN + 2
            })
        );
        let bad = Resource::new("ns", "s", "Bad");
        assert_eq!(
            bad.validate_for(LeaseKind::Lock),
            Err(NameError::InvalidName {
                name: "s.lock.Bad".into()
            })
        );
    }

    fn name_error(r: &Resource) -> NameError {
        match r.validate() {
            Err(source) => source,
            Ok(()) => panic!("{r:?}: expected a NameError"),
        }
    }

    #[test]
    fn invalid_names_are_rejected_with_the_reason() {
        for name in [
            "Upper",
            "under_score",
            "-lead",
            "trail-",
            ".lead",
            "trail.",
            "two..dots",
            "sp ace",
            "ü",
        ] {
            let r = Resource::new("ns", "scope", name);
            assert!(
                matches!(name_error(&r), NameError::InvalidName { .. }),
                "{name:?}"
            );
        }
        for scope in ["Scope", "a_b", "-x"] {
            let r = Resource::new("ns", scope, "name");
            assert!(
                matches!(name_error(&r), NameError::InvalidName { .. }),
                "{scope:?}"
            );
        }
    }

    #[test]
    fn dotted_names_are_valid_subdomains() {
        assert!(Resource::new("ns", "svc.v2", "a.b-c").validate().is_ok());
    }

    #[test]
    fn length_limit_is_253_for_the_longest_lease_name() {
        // "s.election." is 11 characters.
        let ok = Resource::new("ns", "s", "a".repeat(MAX_NAME_LEN - 11));
        assert_eq!(ok.election_name().len(), MAX_NAME_LEN);
        assert!(ok.validate().is_ok());
        let long = Resource::new("ns", "s", "a".repeat(MAX_NAME_LEN - 10));
        assert_eq!(
            name_error(&long),
            NameError::TooLong {
                name: long.election_name(),
                len: 254
            }
        );
    }

    #[test]
    fn namespace_is_validated_as_a_label() {
        for ns in ["Prod", "a.b", "-a", "a-", "a_b", &"n".repeat(64)] {
            let r = Resource::new(ns, "s", "n");
            assert_eq!(
                name_error(&r),
                NameError::InvalidNamespace {
                    namespace: ns.to_owned()
                },
                "{ns:?}"
            );
        }
        assert!(Resource::new("n".repeat(63), "s", "n").validate().is_ok());
        // Empty namespace means the default one.
        assert!(Resource::new("", "s", "n").validate().is_ok());
    }

    #[test]
    fn semaphore_slots_are_named_and_validated() {
        let r = Resource::new("ns", "s", "pool");
        assert_eq!(r.semaphore_slot_name(0), "s.semaphore.pool.0");
        assert_eq!(
            r.semaphore_slot_key(12).to_string(),
            "ns/s.semaphore.pool.12"
        );
        assert!(r.validate_semaphore(3).is_ok());
        // "s.semaphore." is 12 characters, ".9" two more: ten slots fit, eleven do not.
        let edge = Resource::new("ns", "s", "a".repeat(MAX_NAME_LEN - 14));
        assert!(edge.validate_semaphore(10).is_ok());
        assert_eq!(
            edge.validate_semaphore(11),
            Err(NameError::TooLong {
                name: edge.semaphore_slot_name(10),
                len: MAX_NAME_LEN + 1
            })
        );
        assert!(matches!(
            Resource::new("ns", "s", "Bad").validate_semaphore(2),
            Err(NameError::InvalidName { .. })
        ));
        assert!(matches!(
            Resource::new("ns", "s", "").validate_semaphore(2),
            Err(NameError::EmptyName { kind: "semaphore" })
        ));
    }

    #[test]
    fn parse_validates() {
        assert!(matches!(
            "ns/scope/Bad_Name".parse::<Resource>(),
            Err(NameError::InvalidName { .. })
        ));
    }
}
