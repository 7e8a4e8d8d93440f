//! Display names: what other people see (`/users/lookup`), so what is shown must be what
//! is there (SECURITY.md 34). Trimmed, 1–100 characters, no control characters, no
//! bidirectional overrides or isolates and no invisible characters (Unicode format
//! characters such as zero-width spaces, soft hyphens, byte-order marks and tag
//! characters; the Hangul and Braille blanks; private-use and unassigned code points),
//! and at least one letter, digit, punctuation mark or symbol. The zero-width joiner and
//! non-joiner stay allowed between visible characters: emoji sequences and several
//! scripts (Persian, Indic) need them.

use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::error::FieldError;

pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

const ZERO_WIDTH_NON_JOINER: char = '\u{200C}';
const ZERO_WIDTH_JOINER: char = '\u{200D}';
/// Letters that render as nothing (Hangul fillers) and the blank Braille pattern.
const BLANK_LETTERS: &[char] = &['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}', '\u{2800}'];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

/// Why `c` may not appear in a display name, if it may not.
fn refusal(c: char) -> Option<&'static str> {
    if c == ZERO_WIDTH_JOINER || c == ZERO_WIDTH_NON_JOINER {
        return None;
    }
    if BLANK_LETTERS.contains(&c) {
        return Some("invisible characters");
    }
    match c.general_category() {
        GeneralCategory::Control
        | GeneralCategory::LineSeparator
        | GeneralCategory::ParagraphSeparator => Some("control characters or line breaks"),
        // Bidi embeddings, overrides, isolates and marks are all format characters,
        // as are the zero-width and other invisible ones.
        GeneralCategory::Format => Some("bidirectional controls or invisible characters"),
        GeneralCategory::PrivateUse | GeneralCategory::Unassigned | GeneralCategory::Surrogate => {
            Some("unassigned or private-use characters")
        }
        _ => None,
    }
}

/// Whether `c` is refused for a reason a schema pattern can list: every refusal but the
/// unassigned code points (too many ranges; `routes::schema` builds the pattern from this).
pub fn refused_with_pattern(c: char) -> bool {
    refusal(c).is_some() && c.general_category() != GeneralCategory::Unassigned
}

fn is_visible(c: char) -> bool {
    !BLANK_LETTERS.contains(&c)
        && matches!(
            c.general_category_group(),
            GeneralCategoryGroup::Letter
                | GeneralCategoryGroup::Number
                | GeneralCategoryGroup::Punctuation
                | GeneralCategoryGroup::Symbol
        )
}

impl DisplayName {
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        let invalid = |msg: String| FieldError::body(field, msg, "value_error.display_name");
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(invalid("display name must not be empty".into()));
        }
        if trimmed.chars().count() > MAX_DISPLAY_NAME_CHARS {
            return Err(invalid(format!(
                "display name must be at most {MAX_DISPLAY_NAME_CHARS} characters"
            )));
        }
        if let Some((c, why)) = trimmed.chars().find_map(|c| refusal(c).map(|why| (c, why))) {
            return Err(invalid(format!(
                "display name must not contain {why} (found U+{:04X})",
                c as u32
            )));
        }
        if !trimmed.chars().any(is_visible) {
            return Err(invalid(
                "display name needs at least one visible letter, digit or symbol".into(),
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
        assert!(DisplayName::parse(&"é".repeat(100), "display_name").is_ok());
    }

    #[test]
    fn what_is_shown_is_what_is_there() {
        let refused = [
            ("Ada\u{0}", "NUL"),
            ("Ada\nLovelace", "line break"),
            ("\u{202E}ecilA", "right-to-left override"),
            ("Ada\u{202D}", "left-to-right override"),
            ("Ada\u{2066}x\u{2069}", "isolates"),
            ("Ada\u{200F}", "right-to-left mark"),
            ("Ad\u{200B}a", "zero-width space"),
            ("Ad\u{00AD}a", "soft hyphen"),
            ("\u{FEFF}Ada", "byte-order mark"),
            ("Ada\u{E0041}", "tag character"),
            ("\u{3164}", "Hangul filler alone"),
            ("\u{2800}\u{2800}", "Braille blanks"),
            ("\u{200D}\u{200D}", "only joiners"),
            ("\u{0301}", "only a combining mark"),
            ("Ada\u{E000}", "private use"),
        ];
        for (name, why) in refused {
            assert!(
                DisplayName::parse(name, "display_name").is_err(),
                "accepted {name:?} ({why})"
            );
        }
        let accepted = [
            ("Ada Lovelace", "plain"),
            ("Zoë Ørsted-Ñúñez", "accents"),
            ("محمد", "right-to-left script without overrides"),
            ("山田 太郎", "CJK"),
            ("👩\u{200D}💻 Dev", "emoji ZWJ sequence"),
            ("می\u{200C}خواهم", "Persian with a non-joiner"),
            ("Ada 🎉", "emoji"),
        ];
        for (name, why) in accepted {
            assert!(
                DisplayName::parse(name, "display_name").is_ok(),
                "refused {name:?} ({why})"
            );
        }
    }
}
