//! Email addresses: trimmed, lowercased, bounded, and deliverable (SECURITY.md 34): an
//! address is accepted only if the mail transport can address it.
//!
//! The reference is lettre, which builds every message: the address must parse as a
//! lettre `Mailbox` that is exactly the address (so quoted local parts such as
//! `"a@b"@example.com`, which lettre reads differently, are out). On top of that the
//! address is ASCII (a non-ASCII address needs SMTPUTF8, which relays may refuse; an
//! internationalised domain is accepted in its `xn--` form), the local part is a
//! dot-atom (RFC 5322: no quotes, no leading, trailing or doubled dots, at most 64
//! characters), and the domain is a host name with at least two labels (no IP literals,
//! no `localhost`). So an accepted address contains exactly one `@`.

use std::fmt;
use std::str::FromStr;

use crate::error::FieldError;

/// RFC 5321 caps a forward path at 254 characters.
pub const MAX_EMAIL_LEN: usize = 254;
/// RFC 5321 caps a local part at 64 characters.
pub const MAX_LOCAL_PART_LEN: usize = 64;

/// A normalised email address (trimmed and lowercased, so matching is case-insensitive).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// RFC 5322 `atext`: what a dot-atom local part is made of, besides dots.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-".contains(&b)
}

fn is_dot_atom(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_LOCAL_PART_LEN
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

fn is_host_name(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether lettre, which builds every message, reads `address` as exactly that mailbox.
fn lettre_addresses_it(address: &str) -> bool {
    lettre::message::Mailbox::from_str(address)
        .is_ok_and(|mailbox| mailbox.name.is_none() && mailbox.email.to_string() == address)
}

impl Email {
    /// Parses user input for the body field `field`.
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        let invalid = |msg: &str| FieldError::body(field, msg, "value_error.email");
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(invalid("email must not be empty"));
        }
        if trimmed.len() > MAX_EMAIL_LEN {
            return Err(invalid("email must be at most 254 characters"));
        }
        if !trimmed.is_ascii() {
            return Err(invalid(
                "email must be ASCII (write an internationalised domain in its xn-- form)",
            ));
        }
        let normalised = trimmed.to_ascii_lowercase();
        let Some((local, domain)) = normalised.split_once('@') else {
            return Err(invalid("value is not a valid email address"));
        };
        if !is_dot_atom(local) || !is_host_name(domain) || !lettre_addresses_it(&normalised) {
            return Err(invalid("value is not a valid email address"));
        }
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

/// Masks an address for logs: the first character of the local part, then `***`, then
/// the domain. The domain is what follows the *last* `@`, so nothing of the local part
/// leaks, whatever the stored value looks like (a legacy record, a quoted local part).
pub fn mask_email(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let first = local
                .chars()
                .next()
                .filter(char::is_ascii_alphanumeric)
                .unwrap_or('*');
            let domain: String = domain
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(MAX_EMAIL_LEN)
                .collect();
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
            ("\"ada\"@example.com", "quoted local part"),
            ("\"a@b\"@example.com", "quoted local part with an at sign"),
            ("\"a b\"@example.com", "quoted local part with a space"),
            (".ada@example.com", "leading dot in local part"),
            ("ada.@example.com", "trailing dot in local part"),
            ("a..da@example.com", "doubled dot in local part"),
            ("ada@[192.0.2.1]", "IP literal"),
            ("ada@192.0.2.1", "bare IP"),
            ("ada@-example.com", "label starting with a hyphen"),
            ("ada@exa_mple.com", "underscore in domain"),
            ("ada@example..com", "empty label"),
            ("ada\u{0}@example.com", "NUL"),
            ("ada@example.com\u{0}", "NUL in domain"),
            ("ada\n@example.com", "line break"),
            ("ädä@example.com", "non-ASCII local part"),
            ("ada@exämple.com", "non-ASCII domain"),
            ("Ada Lovelace <ada@example.com>", "a mailbox with a name"),
            ("<ada@example.com>", "angle brackets"),
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
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(
            Email::parse(&long_local, "email").is_err(),
            "65-character local part"
        );
    }

    #[test]
    fn deliverable_addresses_are_accepted() {
        for input in [
            "ada@example.com",
            "ada.lovelace+introgy@mail.example.co.uk",
            "o'brien@example.ie",
            "a!#$%&'*/=?^_`{|}~-z@example.com",
            "ada@xn--mnchen-3ya.de",
            "ada@123.example.com",
        ] {
            let email = Email::parse(input, "email").unwrap_or_else(|e| panic!("{input}: {e:?}"));
            assert!(lettre_addresses_it(email.as_str()), "{input}");
        }
    }

    #[test]
    fn masking_hides_the_local_part() {
        assert_eq!(mask_email("ada@example.com"), "a***@example.com");
        let email = Email::parse("ada@example.com", "email").unwrap();
        assert!(!format!("{email:?}").contains("ada@"));
        // Whatever a stored value looks like, nothing before the last @ is shown.
        assert_eq!(mask_email("\"a@secret\"@example.com"), "****@example.com");
        assert_eq!(mask_email("secret@part@example.com"), "s***@example.com");
        assert_eq!(mask_email("no-at-sign"), "***");
        assert_eq!(mask_email("a@exa\nmple.com"), "a***@example.com");
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
