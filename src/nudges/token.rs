//! Unsubscribe tokens: a link in a nudge mail that turns that one list off without
//! signing in. `base64url(payload) . base64url(HMAC-SHA-256(key, base64url(payload)))`,
//! the payload `v1:<list>:<user id>:<expiry, Unix seconds>`, the key derived from the
//! signing secret with its own label (so no other token of the service verifies here,
//! and this one verifies nowhere else). Checked in constant time; single purpose: it can
//! only turn off the list it names, for the user it names, until it expires.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};

use crate::store::NudgeList;

type HmacSha256 = Hmac<sha2::Sha256>;

/// The label the key is derived with.
const LABEL: &[u8] = b"introgy/unsubscribe-key/v1";
/// How long a link in a mail keeps working: long enough for a mail read weeks later.
pub const TOKEN_TTL: chrono::TimeDelta = chrono::TimeDelta::days(60);
/// Longest token looked at (a real one is about 90 characters).
pub const MAX_TOKEN_CHARS: usize = 512;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub user_id: String,
    pub list: NudgeList,
    pub expires_at: DateTime<Utc>,
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not one of ours: malformed, altered, or signed with another key.
    #[error("this unsubscribe link is not valid")]
    Invalid,
    /// Signed by us for a list this service does not have.
    #[error("this unsubscribe link names a list that does not exist")]
    UnknownList,
    #[error("this unsubscribe link has expired; use the link in a newer mail, or change your preferences in the app")]
    Expired,
}

/// Signs and checks unsubscribe tokens.
pub struct UnsubscribeKey {
    key: [u8; 32],
}

impl UnsubscribeKey {
    /// The key is `HMAC-SHA-256(secret, "introgy/unsubscribe-key/v1")`.
    pub fn from_signing_secret(secret: &SecretString) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(LABEL);
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length")
    }

    /// A token for `list` of `user_id`, valid until `now` + [`TOKEN_TTL`].
    pub fn sign(&self, user_id: &str, list: NudgeList, now: DateTime<Utc>) -> String {
        self.sign_payload(&format!(
            "v1:{}:{user_id}:{}",
            list.as_str(),
            (now + TOKEN_TTL).timestamp()
        ))
    }

    /// Signs any payload (tests build foreign tokens with it).
    #[doc(hidden)]
    pub fn sign_payload(&self, payload: &str) -> String {
        let encoded = URL_SAFE_NO_PAD.encode(payload);
        let mut mac = self.mac();
        mac.update(encoded.as_bytes());
        format!(
            "{encoded}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// What `token` says, if we signed it and it is still valid at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Unsubscribe, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Invalid);
        }
        let (encoded, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac();
        mac.update(encoded.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&tag).map_err(|_| TokenError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(TokenError::Invalid)?;
        let mut parts = payload.splitn(4, ':');
        let (Some("v1"), Some(list), Some(user_id), Some(expiry)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        let list = NudgeList::parse(list).ok_or(TokenError::UnknownList)?;
        let expires_at = expiry
            .parse::<i64>()
            .ok()
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
            .ok_or(TokenError::Invalid)?;
        if user_id.is_empty() {
            return Err(TokenError::Invalid);
        }
        if expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(Unsubscribe {
            user_id: user_id.to_owned(),
            list,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> UnsubscribeKey {
        UnsubscribeKey::from_signing_secret(&SecretString::from(secret.to_owned()))
    }

    #[test]
    fn a_token_says_who_and_which_list_until_it_expires() {
        let (k, now) = (key("s".repeat(64).as_str()), Utc::now());
        let token = k.sign("65f0c0ffee", NudgeList::WeeklySummary, now);
        let said = k.verify(&token, now).unwrap();
        assert_eq!(said.user_id, "65f0c0ffee");
        assert_eq!(said.list, NudgeList::WeeklySummary);
        assert_eq!(
            k.verify(&token, now + TOKEN_TTL + chrono::TimeDelta::seconds(1)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn altered_foreign_and_malformed_tokens_are_refused() {
        let (k, now) = (key("s".repeat(64).as_str()), Utc::now());
        let token = k.sign("u1", NudgeList::LowBattery, now);
        // Another user or list in the payload, the tag kept.
        let (_, tag) = token.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(format!(
            "v1:low_battery:u2:{}",
            (now + TOKEN_TTL).timestamp()
        ));
        assert_eq!(
            k.verify(&format!("{other}.{tag}"), now),
            Err(TokenError::Invalid)
        );
        // Signed under another secret.
        let foreign = key("t".repeat(64).as_str()).sign("u1", NudgeList::LowBattery, now);
        assert_eq!(k.verify(&foreign, now), Err(TokenError::Invalid));
        // A flipped character anywhere.
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            if altered != token {
                assert!(k.verify(&altered, now).is_err(), "position {i}");
            }
        }
        for junk in ["", ".", "abc", "a.b.c", &"x".repeat(600)] {
            assert_eq!(k.verify(junk, now), Err(TokenError::Invalid), "{junk:?}");
        }
        let unknown = k.sign_payload(&format!(
            "v1:marketing:u1:{}",
            (now + TOKEN_TTL).timestamp()
        ));
        assert_eq!(k.verify(&unknown, now), Err(TokenError::UnknownList));
    }
}
