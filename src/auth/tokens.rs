//! Access tokens: JWT, HS512 only, with `kid`, and key rotation (SECURITY.md 15–16).
//!
//! The `kid` of a secret is derived from the secret itself (a truncated SHA-256 under a
//! fixed label), so operators rotate by moving the old value to
//! `JWT_PREVIOUS_SECRET_KEYS` and setting a new `JWT_SECRET_KEY`: tokens signed with the
//! old key keep verifying until it is removed from the list.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const ISSUER: &str = "introgy";
pub const AUDIENCE: &str = "introgy-api";
pub const ACCESS_TYPE: &str = "access";
/// How far `iat` and `nbf` may lie ahead of the verifier's clock (clock skew between
/// instances); a token "issued" or "valid" later than that is refused.
pub const FUTURE_LEEWAY_SECONDS: i64 = 10;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// User id.
    pub sub: String,
    /// Session id; checked against the store on every request.
    pub sid: String,
    pub exp: i64,
    pub iat: i64,
    /// Not before; our tokens do not carry it, but one that does is honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub iss: String,
    pub aud: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl AccessClaims {
    pub fn expires_at(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.exp, 0).single().unwrap_or_default()
    }
}

/// Why a token was refused. Every reason answers the same 401; the reason is logged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token or unsupported algorithm")]
    Malformed,
    #[error("unknown key id")]
    UnknownKey,
    #[error("invalid signature or claims: {0}")]
    Invalid(String),
    #[error("not an access token")]
    WrongType,
    #[error("issued in the future or not valid yet")]
    NotYetValid,
}

/// Signing key plus every key still accepted for verification.
pub struct JwtKeys {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(current: &SecretString, previous: &[SecretString]) -> Self {
        let kid = kid_for(current.expose_secret().as_bytes());
        let mut decoding = HashMap::new();
        for secret in std::iter::once(current).chain(previous) {
            let bytes = secret.expose_secret().as_bytes();
            decoding.insert(kid_for(bytes), DecodingKey::from_secret(bytes));
        }
        let mut validation = Validation::new(Algorithm::HS512);
        validation.leeway = 0;
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "aud", "iss"]);
        Self {
            kid,
            encoding: EncodingKey::from_secret(current.expose_secret().as_bytes()),
            decoding,
            validation,
        }
    }

    /// The key id new tokens are signed with.
    pub fn current_kid(&self) -> &str {
        &self.kid
    }

    pub fn issue(
        &self,
        user_id: &str,
        session_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::HS512);
        header.kid = Some(self.kid.clone());
        let claims = AccessClaims {
            sub: user_id.to_owned(),
            sid: session_id.to_owned(),
            exp: expires_at.timestamp(),
            iat: now.timestamp(),
            nbf: None,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            kind: ACCESS_TYPE.to_owned(),
        };
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }

    /// Verifies a token at `now` (the service's clock).
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS512 {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.decoding.get(&kid).ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if data.claims.kind != ACCESS_TYPE {
            return Err(TokenError::WrongType);
        }
        let latest = now.timestamp() + FUTURE_LEEWAY_SECONDS;
        if data.claims.iat > latest || data.claims.nbf.is_some_and(|nbf| nbf > latest) {
            return Err(TokenError::NotYetValid);
        }
        Ok(data.claims)
    }
}

/// The public identifier of a secret: 16 hex digits of SHA-256 under a fixed label.
pub fn kid_for(secret: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"introgy/jwt-kid/v1:");
    hasher.update(secret);
    hex::encode(&hasher.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use chrono::Duration;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&SecretString::from(secret), &[])
    }

    fn b64(value: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    #[test]
    fn issued_tokens_verify_and_carry_every_claim() {
        let keys = keys("a".repeat(64).as_str());
        let now = Utc::now();
        let token = keys
            .issue("u1", "s1", now, now + Duration::minutes(15))
            .unwrap();
        let claims = keys.verify(&token, now).unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.sid, "s1");
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.aud, AUDIENCE);
        assert_eq!(claims.kind, "access");
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS512);
        assert_eq!(header.kid.as_deref(), Some(keys.current_kid()));
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_rejected() {
        let keys = keys("a".repeat(64).as_str());
        let now = Utc::now();
        let token = keys
            .issue("u1", "s1", now, now + Duration::minutes(15))
            .unwrap();

        let mut tampered = token.clone().into_bytes();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        assert!(keys
            .verify(&String::from_utf8(tampered).unwrap(), now)
            .is_err());

        let expired = keys
            .issue(
                "u1",
                "s1",
                now - Duration::hours(2),
                now - Duration::hours(1),
            )
            .unwrap();
        assert!(matches!(
            keys.verify(&expired, now),
            Err(TokenError::Invalid(_))
        ));

        let other = JwtKeys::new(&SecretString::from("b".repeat(64)), &[]);
        let foreign = other
            .issue("u1", "s1", now, now + Duration::minutes(5))
            .unwrap();
        assert_eq!(keys.verify(&foreign, now), Err(TokenError::UnknownKey));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_rejected() {
        let keys = keys("a".repeat(64).as_str());
        let now = Utc::now().timestamp();
        let claims = serde_json::json!({"sub":"u1","sid":"s1","exp":now+600,"iat":now,
            "iss":ISSUER,"aud":AUDIENCE,"type":"access"});
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg":"none","typ":"JWT","kid":keys.current_kid()})),
            b64(&claims)
        );
        assert!(keys.verify(&none, Utc::now()).is_err());

        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.current_kid().to_owned());
        let hs256 = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret("a".repeat(64).as_bytes()),
        )
        .unwrap();
        assert_eq!(keys.verify(&hs256, Utc::now()), Err(TokenError::Malformed));
    }

    #[test]
    fn wrong_audience_and_wrong_type_are_rejected() {
        let secret = "a".repeat(64);
        let keys = keys(&secret);
        let now = Utc::now().timestamp();
        let mut header = Header::new(Algorithm::HS512);
        header.kid = Some(keys.current_kid().to_owned());
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let wrong_aud = sign(
            serde_json::json!({"sub":"u1","sid":"s1","exp":now+600,"iat":now,
            "iss":ISSUER,"aud":"someone-else","type":"access"}),
        );
        assert!(matches!(
            keys.verify(&wrong_aud, Utc::now()),
            Err(TokenError::Invalid(_))
        ));
        let refresh_typed = sign(
            serde_json::json!({"sub":"u1","sid":"s1","exp":now+600,"iat":now,
            "iss":ISSUER,"aud":AUDIENCE,"type":"refresh"}),
        );
        assert_eq!(
            keys.verify(&refresh_typed, Utc::now()),
            Err(TokenError::WrongType)
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_the_old_key_is_removed() {
        let old = SecretString::from("o".repeat(64));
        let new = SecretString::from("n".repeat(64));
        let now = Utc::now();
        let before = JwtKeys::new(&old, &[]);
        let token = before
            .issue("u1", "s1", now, now + Duration::minutes(5))
            .unwrap();
        let during = JwtKeys::new(&new, std::slice::from_ref(&old));
        assert!(during.verify(&token, now).is_ok());
        assert_ne!(during.current_kid(), before.current_kid());
        let after = JwtKeys::new(&new, &[]);
        assert_eq!(after.verify(&token, now), Err(TokenError::UnknownKey));
    }

    #[test]
    fn tokens_issued_or_valid_in_the_future_are_rejected() {
        let secret = "a".repeat(64);
        let keys = keys(&secret);
        let now = Utc::now();
        let mut header = Header::new(Algorithm::HS512);
        header.kid = Some(keys.current_kid().to_owned());
        let sign = |iat: i64, nbf: Option<i64>| {
            let mut claims = serde_json::json!({"sub":"u1","sid":"s1","exp":now.timestamp()+7200,
                "iat":iat,"iss":ISSUER,"aud":AUDIENCE,"type":"access"});
            if let Some(nbf) = nbf {
                claims["nbf"] = nbf.into();
            }
            jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let t = now.timestamp();
        assert!(keys.verify(&sign(t, None), now).is_ok());
        assert!(
            keys.verify(&sign(t + FUTURE_LEEWAY_SECONDS, None), now)
                .is_ok(),
            "within the leeway"
        );
        assert!(keys.verify(&sign(t, Some(t)), now).is_ok());
        assert_eq!(
            keys.verify(&sign(t + FUTURE_LEEWAY_SECONDS + 1, None), now),
            Err(TokenError::NotYetValid),
            "iat in the future"
        );
        assert_eq!(
            keys.verify(&sign(t + 3600, None), now),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            keys.verify(&sign(t, Some(t + 3600)), now),
            Err(TokenError::NotYetValid),
            "nbf in the future"
        );
        // Valid again once the clock has caught up.
        assert!(keys
            .verify(&sign(t + 3600, None), now + chrono::Duration::seconds(3600))
            .is_ok());
    }
}
