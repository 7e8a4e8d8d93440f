//! One-time codes: six CSPRNG digits, stored only as HMAC-SHA-256 over
//! purpose + user + code under a server key, compared in constant time (SECURITY.md 1).
//!
//! The HMAC key is derived from the current JWT signing secret under a fixed label, so
//! there is no extra secret to manage; rotating the signing secret invalidates the codes
//! outstanding at that moment (they live ten minutes at most).

use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::{OtpCode, OtpPurpose};

type HmacSha256 = Hmac<Sha256>;

/// Wrong guesses allowed per code before it dies (Kratos `max_submissions`).
pub const MAX_CODE_ATTEMPTS: u32 = 5;

pub struct OtpHasher {
    key: [u8; 32],
}

impl OtpHasher {
    pub fn from_signing_secret(secret: &SecretString) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(b"introgy/otp-key/v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    /// A fresh code: uniform over 000000–999999.
    pub fn generate(&self) -> OtpCode {
        let n: u32 = rand::rngs::OsRng.gen_range(0..1_000_000);
        OtpCode::from_generated(format!("{n:06}"))
    }

    /// The keyed hash stored for a code.
    pub fn hash(&self, purpose: OtpPurpose, user_id: &str, code: &OtpCode) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("32-byte key");
        // Length-prefix each part so no two (purpose, user, code) triples collide.
        for part in [purpose.as_str(), user_id, code.as_str()] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The index of the stored hash equal to `candidate` (the hash of a submitted code),
    /// comparing every one in constant time without stopping at a match, so the time
    /// does not tell which one matched or whether any did.
    pub fn find<'a>(stored: impl Iterator<Item = &'a str>, candidate: &str) -> Option<usize> {
        let mut found = None;
        for (i, hash) in stored.enumerate() {
            if bool::from(hash.as_bytes().ct_eq(candidate.as_bytes())) {
                found = Some(i);
            }
        }
        found
    }

    /// Constant-time comparison of a stored hash with the hash of a submitted code.
    pub fn matches(
        &self,
        stored_hash: &str,
        purpose: OtpPurpose,
        user_id: &str,
        code: &OtpCode,
    ) -> bool {
        let candidate = self.hash(purpose, user_id, code);
        stored_hash.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> OtpHasher {
        OtpHasher::from_signing_secret(&SecretString::from("k".repeat(64)))
    }

    #[test]
    fn generated_codes_are_six_digits_and_vary() {
        let hasher = hasher();
        let codes: std::collections::HashSet<String> = (0..50)
            .map(|_| hasher.generate().as_str().to_owned())
            .collect();
        assert!(codes.iter().all(|c| OtpCode::parse(c).is_some()));
        assert!(codes.len() > 40, "codes repeat too often: {}", codes.len());
    }

    #[test]
    fn the_hash_binds_purpose_user_and_code() {
        let hasher = hasher();
        let code = OtpCode::parse("012345").unwrap();
        let stored = hasher.hash(OtpPurpose::VerifyEmail, "user-1", &code);
        assert!(hasher.matches(&stored, OtpPurpose::VerifyEmail, "user-1", &code));
        assert!(!hasher.matches(&stored, OtpPurpose::ResetPassword, "user-1", &code));
        assert!(!hasher.matches(&stored, OtpPurpose::VerifyEmail, "user-2", &code));
        assert!(!hasher.matches(
            &stored,
            OtpPurpose::VerifyEmail,
            "user-1",
            &OtpCode::parse("012346").unwrap()
        ));
        assert!(!stored.contains("012345"));
    }

    #[test]
    fn find_picks_the_matching_stored_hash() {
        let hasher = hasher();
        let code = |c: &str| OtpCode::parse(c).unwrap();
        let stored: Vec<String> = ["111111", "222222", "333333"]
            .iter()
            .map(|c| hasher.hash(OtpPurpose::VerifyEmail, "u", &code(c)))
            .collect();
        let candidate = hasher.hash(OtpPurpose::VerifyEmail, "u", &code("222222"));
        assert_eq!(
            OtpHasher::find(stored.iter().map(String::as_str), &candidate),
            Some(1)
        );
        let other = hasher.hash(OtpPurpose::VerifyEmail, "u", &code("444444"));
        assert_eq!(
            OtpHasher::find(stored.iter().map(String::as_str), &other),
            None
        );
        assert_eq!(OtpHasher::find(std::iter::empty(), &other), None);
    }

    #[test]
    fn the_hash_is_keyed() {
        let other = OtpHasher::from_signing_secret(&SecretString::from("j".repeat(64)));
        let code = OtpCode::parse("123456").unwrap();
        assert_ne!(
            hasher().hash(OtpPurpose::VerifyEmail, "u", &code),
            other.hash(OtpPurpose::VerifyEmail, "u", &code)
        );
    }
}
