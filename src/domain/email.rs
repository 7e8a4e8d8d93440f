//! Email addresses: trimmed, lowercased, syntactically valid, bounded.

use std::fmt;
use std::str::FromStr;

use crate::error::FieldError;

/// RFC 5321 caps a forward path at 254 characters.
pub const MAX_EMAIL_LEN: usize = 254;

/// A normalised email address (trimmed and lowercased, so matching is case-insensitive).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Parses user input for the body field `field`.
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        let normalised = raw.trim().to_lowercase();
        let invalid = |msg: &str| FieldError::body(field, msg, "value_error.email");
        if normalised.is_empty() {
            return Err(invalid("email must not be empty"));
        }
        if normalised.len() > MAX_EMAIL_LEN {
            return Err(invalid("email must be at most 254 characters"));
        }
        let Some((local, domain)) = normalised.rsplit_once('@') else {
            return Err(invalid("value is not a valid email address"));
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.starts_with('[');
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(invalid("value is not a valid email address"));
        }
        // lettre's parser (already a dependency for sending) holds the RFC grammar.
        lettre::Address::from_str(&normalised)
            .map_err(|_| invalid("value is not a valid email address"))?;
        Ok(Self(normalised))
    }

    /// Wraps a value read back from the store (already normalised when written).
    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address as it may appear in logs: `j***@example.com`.
    pub fn masked(&self) -> String {
        mask_email(&self.0)
    }
}

/// Masks an address for logs: first character of the local part, then `***`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().unwrap_or('*');
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.masked())
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_addresses_are_trimmed_and_lowercased() {
        let email = Email::parse("  Ada.Lovelace@Example.COM ", "email").unwrap();
        assert_eq!(email.as_str(), "ada.lovelace@example.com");
    }

    #[test]
    fn invalid_addresses_are_rejected() {
        let cases = [
            ("", "empty"),
            ("plainaddress", "no at sign"),
            ("@example.com", "no local part"),
            ("ada@", "no domain"),
            ("ada@localhost", "domain without a dot"),
            ("ada@@example.com", "two at signs"),
            ("ada lovelace@example.com", "space in local part"),
            ("ada@exa mple.com", "space in domain"),
            ("ada@.example.com", "leading dot in domain"),
        ];
        for (input, why) in cases {
            assert!(
                Email::parse(input, "email").is_err(),
                "accepted {input:?} ({why})"
            );
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(
            Email::parse(&long, "email").is_err(),
            "accepted an overlong address"
        );
    }

    #[test]
    fn masking_hides_the_local_part() {
        assert_eq!(mask_email("ada@example.com"), "a***@example.com");
        let email = Email::parse("ada@example.com", "email").unwrap();
        assert!(!format!("{email:?}").contains("ada@"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_is_idempotent(raw in ".{0,80}") {
            if let Ok(email) = Email::parse(&raw, "email") {
                let again = Email::parse(email.as_str(), "email").unwrap();
                prop_assert_eq!(again, email);
            }
        }
    }
}
