//! Authentication: password hashing, access tokens, one-time codes, sessions, the
//! account flows that combine them, and the [`AuthUser`] extractor that protects routes.

pub mod account;
pub mod confirm;
pub mod dev_secret;
pub mod device;
pub mod email_change;
pub mod export;
pub mod extractor;
pub mod otp;
pub mod password;
pub mod seal;
pub mod service;
pub mod tokens;

pub use extractor::AuthUser;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// `bytes` bytes from the OS CSPRNG, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// `bytes` bytes from the OS CSPRNG, lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// SHA-256 of a high-entropy secret (refresh tokens), lowercase hex. Unkeyed is enough
/// here: a 256-bit random token cannot be found from its hash.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A new record id in MongoDB ObjectId form (4-byte time, 8 random bytes), so ids move
/// between the SQLite and MongoDB stores unchanged.
pub fn new_object_id() -> String {
    let seconds = chrono::Utc::now().timestamp() as u32;
    let mut tail = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut tail);
    format!(
        "{}{}",
        hex::encode(seconds.to_be_bytes()),
        hex::encode(tail)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_look_like_object_ids() {
        let id = new_object_id();
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_object_id());
    }

    #[test]
    fn tokens_are_random_and_url_safe() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, random_token(32));
    }
}
