//! Passwords as users choose them: 8 characters at least, 72 bytes at most (bcrypt
//! silently ignores anything past 72 bytes), no composition rules, and not one of the
//! most common passwords (SECURITY.md 12).

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::error::FieldError;

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 72;

/// The most common passwords of eight characters or more (from public breach corpora).
pub const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password12",
    "password123",
    "password1234",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "12345678",
    "123456789",
    "1234567890",
    "12341234",
    "11111111",
    "00000000",
    "88888888",
    "87654321",
    "1q2w3e4r",
    "1q2w3e4r5t",
    "qwertyui",
    "qwertyuiop",
    "qwerty123",
    "qwerty12",
    "1qaz2wsx",
    "zaq12wsx",
    "asdfghjk",
    "asdfghjkl",
    "iloveyou",
    "iloveyou1",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "welcome123",
    "abc12345",
    "abcd1234",
    "superman",
    "trustno1",
    "starwars",
    "whatever",
    "jennifer",
    "michelle",
    "computer",
    "corvette",
    "mercedes",
    "internet",
    "letmein1",
    "letmein123",
    "changeme",
    "changeme123",
    "monkey123",
    "dragon123",
    "liverpool",
    "chocolate",
    "butterfly",
    "password!",
    "qwerty1234",
    "123123123",
    "123qweasd",
    "q1w2e3r4",
    "q1w2e3r4t5",
    "admin123",
    "administrator",
    "introgy123",
    "introgy1",
];

/// A password that passed the policy; never printed.
pub struct Password(SecretString);

impl Password {
    /// Applies the policy to the body field `field`.
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        if raw.chars().count() < MIN_PASSWORD_CHARS {
            return Err(FieldError::body(
                field,
                format!("password must be at least {MIN_PASSWORD_CHARS} characters"),
                "value_error.password.too_short",
            ));
        }
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(FieldError::body(
                field,
                format!("password must be at most {MAX_PASSWORD_BYTES} bytes"),
                "value_error.password.too_long",
            ));
        }
        let lowered = raw.to_lowercase();
        if COMMON_PASSWORDS.contains(&lowered.as_str()) {
            return Err(FieldError::body(
                field,
                "this password is too common; choose another",
                "value_error.password.common",
            ));
        }
        Ok(Self(SecretString::from(raw)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        let cases: &[(&str, bool, &str)] = &[
            ("correct horse", true, "long enough, no composition rules"),
            ("abcdefgh", true, "exactly eight characters"),
            ("abcdefg", false, "seven characters"),
            ("ñññññññ", false, "seven characters even though more bytes"),
            ("password", false, "common"),
            ("PassWord123", false, "common, any case"),
            (&"a".repeat(72), true, "72 bytes"),
            (
                &"a".repeat(73),
                false,
                "73 bytes would be truncated by bcrypt",
            ),
            (&"é".repeat(37), false, "74 bytes in 37 characters"),
        ];
        for (input, ok, why) in cases {
            assert_eq!(Password::parse(input, "password").is_ok(), *ok, "{why}");
        }
    }

    #[test]
    fn debug_never_prints_the_password() {
        let password = Password::parse("correct horse battery", "password").unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }
}
