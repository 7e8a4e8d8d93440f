//! Sealing short secrets that must be stored for a while and read back (a one-time code
//! in a queued mail, the child of a rotated refresh token during its grace window):
//! ChaCha20-Poly1305 under a key derived from the signing secret and a purpose label, so
//! a database dump alone reveals nothing and a value sealed for one purpose does not open
//! for another. Optional associated data binds a sealed value to the record it belongs to.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

const NONCE_BYTES: usize = 12;

/// Seals and opens values under one derived key.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// The key is `HMAC-SHA-256(secret, label)`.
    pub fn new(secret: &SecretString, label: &str) -> Self {
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
                .expect("HMAC accepts keys of any length");
        mac.update(label.as_bytes());
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// `plain` sealed with a random nonce, bound to `aad`: base64url of nonce and
    /// ciphertext.
    pub fn seal(&self, plain: &str, aad: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad,
                },
            )
            .expect("sealing a short value cannot fail");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// The value sealed with [`seal`](Self::seal) under the same key and `aad`; `None`
    /// for anything else (another key, another `aad`, a changed byte).
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Option<String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed)
            .ok()?;
        if bytes.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, body) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secret: &str, label: &str) -> Sealer {
        Sealer::new(&SecretString::from(secret.to_owned()), label)
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_label_and_binding() {
        let one = sealer(&"k".repeat(64), "introgy/a/v1");
        let sealed = one.seal("123456", b"record-1");
        assert!(!sealed.contains("123456"));
        assert_eq!(one.open(&sealed, b"record-1").as_deref(), Some("123456"));
        assert_eq!(one.open(&sealed, b"record-2"), None, "another record");
        assert_eq!(
            sealer(&"k".repeat(64), "introgy/b/v1").open(&sealed, b"record-1"),
            None,
            "another purpose"
        );
        assert_eq!(
            sealer(&"j".repeat(64), "introgy/a/v1").open(&sealed, b"record-1"),
            None,
            "another secret"
        );
        assert_eq!(one.open("not base64!", b"record-1"), None);
        assert_eq!(one.open("AAAA", b"record-1"), None, "shorter than a nonce");
    }

    #[test]
    fn sealing_twice_gives_two_ciphertexts() {
        let one = sealer(&"k".repeat(64), "introgy/a/v1");
        assert_ne!(one.seal("x", b""), one.seal("x", b""));
    }
}
