//! Display names: trimmed, 1–100 characters, no control characters.

use crate::error::FieldError;

pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldError::body(
                field,
                "display name must not be empty",
                "value_error.display_name",
            ));
        }
        if trimmed.chars().count() > MAX_DISPLAY_NAME_CHARS {
            return Err(FieldError::body(
                field,
                format!("display name must be at most {MAX_DISPLAY_NAME_CHARS} characters"),
                "value_error.display_name",
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(FieldError::body(
                field,
                "display name must not contain control characters",
                "value_error.display_name",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            DisplayName::parse("  Ada  ", "display_name")
                .unwrap()
                .into_inner(),
            "Ada"
        );
        assert!(DisplayName::parse("   ", "display_name").is_err());
        assert!(DisplayName::parse(&"x".repeat(101), "display_name").is_err());
        assert!(DisplayName::parse("Ada\u{0}", "display_name").is_err());
        assert!(DisplayName::parse(&"é".repeat(100), "display_name").is_ok());
    }
}
