//! One-time codes as users type them, and what a code is for.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a one-time code may be used for; a code of one purpose never works for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OtpPurpose {
    #[default]
    VerifyEmail,
    ResetPassword,
    /// Proves a signed-in user's new address (`POST /users/me/email`); the code carries
    /// the address it switches to. Never asked for through `send-verification-code`.
    ChangeEmail,
}

impl OtpPurpose {
    pub const ALL: [OtpPurpose; 3] = [Self::VerifyEmail, Self::ResetPassword, Self::ChangeEmail];

    /// The name in requests and both stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
            Self::ChangeEmail => "change_email",
        }
    }
}

/// The purposes a client may ask a code for by address (`send-verification-code`): an
/// email change's code comes only from `POST /users/me/email`, after the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
#[schema(as = OtpPurpose)]
pub enum RequestablePurpose {
    #[default]
    VerifyEmail,
    ResetPassword,
}

impl From<RequestablePurpose> for OtpPurpose {
    fn from(purpose: RequestablePurpose) -> Self {
        match purpose {
            RequestablePurpose::VerifyEmail => Self::VerifyEmail,
            RequestablePurpose::ResetPassword => Self::ResetPassword,
        }
    }
}

impl std::str::FromStr for OtpPurpose {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == raw)
            .ok_or_else(|| format!("unknown code purpose {raw:?}"))
    }
}

/// Exactly six ASCII digits (leading zeros allowed).
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

impl OtpCode {
    /// `None` for anything that is not six digits; callers answer such input exactly as
    /// they answer a wrong code.
    pub fn parse(raw: &str) -> Option<Self> {
        let trimmed = raw.trim();
        (trimmed.len() == 6 && trimmed.bytes().all(|b| b.is_ascii_digit()))
            .then(|| Self(trimmed.to_owned()))
    }

    /// Wraps a freshly generated code.
    pub fn from_generated(code: String) -> Self {
        debug_assert!(Self::parse(&code).is_some());
        Self(code)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtpCode(******)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_purpose_has_one_name_for_serde_and_the_stores() {
        for purpose in OtpPurpose::ALL {
            assert_eq!(serde_json::to_value(purpose).unwrap(), purpose.as_str());
            assert_eq!(purpose.as_str().parse::<OtpPurpose>(), Ok(purpose));
        }
        assert!("verify".parse::<OtpPurpose>().is_err());
    }

    #[test]
    fn an_email_change_code_cannot_be_asked_for_by_address() {
        let parse = |raw: &str| serde_json::from_value::<RequestablePurpose>(raw.into());
        assert_eq!(
            OtpPurpose::from(parse("reset_password").unwrap()),
            OtpPurpose::ResetPassword
        );
        assert!(parse("change_email").is_err());
    }

    #[test]
    fn only_six_digits_parse() {
        assert!(OtpCode::parse("012345").is_some());
        assert!(OtpCode::parse(" 999999 ").is_some());
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６", "-12345"] {
            assert!(OtpCode::parse(bad).is_none(), "accepted {bad:?}");
        }
    }
}
