//! Exit codes of the `dsync` command. The command's own code passes through; dsync's own
//! outcomes use codes from BSD's `sysexits.h` range, which programs rarely use themselves.

/// Everything went as asked (or the command exited with 0).
pub const OK: i32 = 0;
/// Bad flags or arguments (clap's usage error; also `release` without `--force`).
pub const USAGE: i32 = 2;
/// The lock (or a permit) was not granted in time: `--timeout` ran out, or `--try` found it
/// held. Also `handoff` when the new leader did not take over within `--timeout`.
pub const TIMEOUT: i32 = 75;
/// The lease was lost while the command ran; the command's process group was stopped.
pub const LOST: i32 = 76;
/// dsync could not do its part: configuration (kubeconfig, namespace, timing), permissions
/// (RBAC denied a verb) or the API server (unreachable, failing). The message says which.
pub const DSYNC_FAILED: i32 = 78;
/// The command exists but could not be executed (as a shell reports it).
pub const CANNOT_EXECUTE: i32 = 126;
/// The command was not found (as a shell reports it).
pub const NOT_FOUND: i32 = 127;

/// The exit code for a signal dsync received and acted on before any command ran.
pub fn signalled(signal: nix::sys::signal::Signal) -> i32 {
    128 + signal as i32
}

/// An error of dsync itself, with the exit code it ends the process with.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: i32,
    /// What to print on stderr (after `dsync: `).
    pub message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<dsync::Error> for Failure {
    fn from(error: dsync::Error) -> Self {
        let code = match &error {
            dsync::Error::Timeout { .. }
            | dsync::Error::AlreadyLocked { .. }
            | dsync::Error::NoFreeSlot { .. } => TIMEOUT,
            dsync::Error::LockLost { .. } => LOST,
            dsync::Error::BadResourceName { .. } | dsync::Error::BadPermitCount { .. } => USAGE,
            _ => DSYNC_FAILED,
        };
        Failure::new(code, chain(&error))
    }
}

/// An error and its sources, `: `-separated, as one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_outside_what_signals_use() {
        let codes = [
            OK,
            USAGE,
            TIMEOUT,
            LOST,
            DSYNC_FAILED,
            CANNOT_EXECUTE,
            NOT_FOUND,
        ];
        for (i, a) in codes.iter().enumerate() {
            for b in &codes[i + 1..] {
                assert_ne!(a, b);
            }
            assert!(*a < 128, "{a} would read as a signal");
        }
    }

    #[test]
    fn errors_map_to_their_codes_with_their_causes() {
        let timeout = dsync::Error::Timeout {
            operation: "lock".into(),
            after: std::time::Duration::from_secs(1),
        };
        assert_eq!(Failure::from(timeout).code, TIMEOUT);
        let config = dsync::Error::InvalidConfig {
            key: "KUBE_NAMESPACE",
            reason: "bad".into(),
        };
        let failure = Failure::from(config);
        assert_eq!(failure.code, DSYNC_FAILED);
        assert!(
            failure.message.contains("KUBE_NAMESPACE"),
            "{}",
            failure.message
        );
    }
}
