//! Kubernetes object names: the DNS-1123 checks and [`sanitize_name`]. A leaf of the crate: it
//! depends on no other module (the resource, the configuration and the memory store's
//! API-server validation all use it).

/// Maximum length of a Kubernetes object name (DNS-1123 subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// Maximum length of a namespace (DNS-1123 label).
pub const MAX_NAMESPACE_LEN: usize = 63;

/// Makes a valid name out of arbitrary text as well as it can: ASCII letters are lowercased,
/// everything outside `a-z0-9-` becomes `-`, and dashes are trimmed from both ends.
///
/// ```
/// assert_eq!(dsync::sanitize_name("--Invalid@Name!!--"), "invalid-name");
/// ```
pub fn sanitize_name(input: &str) -> String {
    let mapped: String = input
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    mapped.trim_matches('-').to_owned()
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63 characters.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAMESPACE_LEN
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum(c) || c == b'-')
}

/// Dot-separated DNS-1123 labels (the `NamePattern` of the Go package `tempcke/dsync`), at most 253 characters.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && is_alnum(b[0])
                && is_alnum(b[b.len() - 1])
                && b.iter().all(|&c| is_alnum(c) || c == b'-')
        })
}
