//! Free text as people type it (SECURITY.md 34: text is text). One rule for every
//! free-text field (profile bio, avatar URL and timezone, interaction names and notes):
//! trimmed, bounded in characters, and free of control characters: NUL, escape, DEL and
//! the C1 controls never reach a store or a log. One-line fields also refuse tab and line
//! breaks; multi-line fields keep LF and tab, and a CRLF pair becomes LF (what a browser
//! form sends), while a lone CR is refused. Unicode line and paragraph separators
//! (U+2028, U+2029) are refused everywhere: LF is the line break.
//!
//! Display names are shown to other people and have stricter rules
//! ([`DisplayName`](super::DisplayName)).

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::FieldError;

/// Whether a field may hold several lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    One,
    Many,
}

/// Whether `c` may appear in free text of the given kind.
pub fn allowed_in_text(c: char, lines: Lines) -> bool {
    match c {
        '\n' | '\t' => lines == Lines::Many,
        _ => !matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        ),
    }
}

/// Parses a free-text field: CRLF → LF (multi-line only), trimmed, at most `max_chars`
/// characters, no forbidden character. The result may be empty: whether that clears the
/// field or is an error is the caller's rule.
pub fn parse_text(
    raw: &str,
    field: &str,
    max_chars: usize,
    lines: Lines,
) -> Result<String, FieldError> {
    let text = match lines {
        Lines::Many if raw.contains("\r\n") => raw.replace("\r\n", "\n"),
        _ => raw.to_owned(),
    };
    let trimmed = text.trim();
    if trimmed.chars().count() > max_chars {
        return Err(FieldError::body(
            field,
            format!("at most {max_chars} characters"),
            "value_error.too_long",
        ));
    }
    if let Some(bad) = trimmed.chars().find(|c| !allowed_in_text(*c, lines)) {
        return Err(FieldError::body(
            field,
            format!(
                "must not contain control characters (found U+{:04X})",
                bad as u32
            ),
            "value_error.control_character",
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_and_line_breaks_follow_the_field() {
        let cases: &[(&str, Lines, Option<&str>, &str)] = &[
            ("  plain words ", Lines::One, Some("plain words"), "trimmed"),
            (
                "Ünïcødé ✓ 日本",
                Lines::One,
                Some("Ünïcødé ✓ 日本"),
                "any script",
            ),
            ("a\u{0}b", Lines::One, None, "NUL"),
            ("a\u{0}b", Lines::Many, None, "NUL, multi-line too"),
            ("a\u{1b}[31mb", Lines::Many, None, "escape"),
            ("a\u{7f}b", Lines::Many, None, "DEL"),
            ("a\u{85}b", Lines::Many, None, "C1 next line"),
            ("a\u{2028}b", Lines::Many, None, "line separator"),
            ("a\nb", Lines::One, None, "LF in a one-line field"),
            ("a\tb", Lines::One, None, "tab in a one-line field"),
            ("a\nb\tc", Lines::Many, Some("a\nb\tc"), "LF and tab"),
            ("a\r\nb", Lines::Many, Some("a\nb"), "CRLF becomes LF"),
            ("a\rb", Lines::Many, None, "a lone CR"),
        ];
        for (raw, lines, expected, why) in cases {
            let parsed = parse_text(raw, "f", 100, *lines).ok();
            assert_eq!(parsed.as_deref(), *expected, "{why}");
        }
        assert!(parse_text(&"é".repeat(10), "f", 10, Lines::One).is_ok());
        assert!(parse_text(&"é".repeat(11), "f", 10, Lines::One).is_err());
    }
}
