//! Hex digests that requests are signed with: HMAC-SHA256 (webhooks, the
//! Pusher protocol's channel authorizations and HTTP API) and MD5 (the
//! Pusher HTTP API's body digest), and a constant-time comparison.

use hmac::{Hmac, Mac};
use md5::Digest as _;
use sha2::Sha256;

/// Hex HMAC-SHA256 of `message` with `secret`.
pub fn hmac_sha256_hex(secret: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(message);
    hex(&mac.finalize().into_bytes())
}

/// Hex MD5 of `body`.
pub fn md5_hex(body: &[u8]) -> String {
    hex(&md5::Md5::digest(body))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `given` equals `expected`, in time that does not depend on
/// where they differ.
pub fn same(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_published_vectors() {
        // RFC 1321 (HMAC-SHA256 is checked through the webhooks' `sign`).
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert!(same("ab", "ab"));
        assert!(!same("ab", "ac") && !same("ab", "a"));
    }
}
