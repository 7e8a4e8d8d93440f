//! JSON Schema for request fields, built from the same limits the parsers use, so that
//! a request valid by the document is accepted and one invalid by it is refused.
//!
//! Text rules are written as patterns over exactly what the parsers do: they trim with
//! `str::trim` (Unicode `White_Space`, spelt out below because `\s` differs between
//! regex engines), count characters (code points, as JSON Schema does) and refuse
//! control characters (`Cc`) where they say so. Rules a schema cannot state (a password's
//! 72-byte bcrypt bound, the common-password list, "not in the future") are in the
//! descriptions.

use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

use crate::domain::text::Lines;
use crate::domain::{
    MAX_DISPLAY_NAME_CHARS, MAX_EMAIL_LEN, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS,
};

/// What `str::trim` removes (Rust's `char::is_whitespace`), as a character-class body.
pub const WHITESPACE: &str =
    r"\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";
/// Control characters (`char::is_control`), as a character-class body.
pub const CONTROL: &str = r"\u0000-\u001F\u007F-\u009F";
/// Control characters other than tab and newline (allowed in multi-line text).
const CONTROL_BUT_TAB_NEWLINE: &str = r"\u0000-\u0008\u000B-\u001F\u007F-\u009F";
/// Unicode line and paragraph separators, refused in all free text (LF is the line break).
const LINE_SEPARATORS: &str = r"\u2028\u2029";

/// What free text of the given kind refuses (`domain::text::allowed_in_text`), as a
/// character-class body.
fn text_refused(lines: Lines) -> String {
    match lines {
        Lines::One => format!("{CONTROL}{LINE_SEPARATORS}"),
        Lines::Many => format!("{CONTROL_BUT_TAB_NEWLINE}{LINE_SEPARATORS}"),
    }
}

/// What a display name refuses, as a character-class body (`domain::DisplayName`): every
/// refused character but the unassigned code points, which are too many to list (the
/// description says so). Characters outside the BMP are written literally: JSON carries
/// them, and every regex dialect reads a literal character the same way.
fn display_name_refused() -> String {
    let mut class = String::new();
    let mut push = |from: char, to: char| {
        for c in [from, to] {
            if (c as u32) < 0x10000 {
                class.push_str(&format!("\\u{:04X}", c as u32));
            } else {
                class.push(c);
            }
            if from == to {
                break;
            }
            if c == from {
                class.push('-');
            }
        }
    };
    let mut run: Option<(char, char)> = None;
    for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
        if crate::domain::display_name::refused_with_pattern(c) {
            run = match run {
                Some((from, to)) if to as u32 + 1 == c as u32 => Some((from, c)),
                Some((from, to)) => {
                    push(from, to);
                    Some((c, c))
                }
                None => Some((c, c)),
            };
        }
    }
    if let Some((from, to)) = run {
        push(from, to);
    }
    class
}

fn string(nullable: bool) -> ObjectBuilder {
    let schema_type = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::new(Type::String)
    };
    ObjectBuilder::new().schema_type(schema_type)
}

fn integer(nullable: bool, min: i64, max: i64) -> ObjectBuilder {
    let schema_type = if nullable {
        SchemaType::from_iter([Type::Integer, Type::Null])
    } else {
        SchemaType::new(Type::Integer)
    };
    ObjectBuilder::new()
        .schema_type(schema_type)
        .minimum(Some(min))
        .maximum(Some(max))
}

/// A pattern for "after trimming, 1 to `max` characters, none of `refused`" (or empty,
/// when `empty_ok`): optional whitespace, a first and a last character that are neither
/// whitespace nor refused, at most `max - 2` others between them, optional whitespace.
/// With `crlf`, a CR LF pair inside counts as one character (the parser turns it into
/// LF before counting), while a lone CR stays refused.
pub fn trimmed_pattern(max: usize, refused: &str, empty_ok: bool, crlf: bool) -> String {
    let edge = format!("[^{WHITESPACE}{refused}]");
    let inner = match (refused.is_empty(), crlf) {
        (true, _) => r"[\s\S]".to_owned(),
        (false, false) => format!("[^{refused}]"),
        (false, true) => format!("(?:\\r\\n|[^{refused}])"),
    };
    let core = if max >= 2 {
        format!("{edge}(?:{inner}{{0,{}}}{edge})?", max - 2)
    } else {
        edge
    };
    let optional = if empty_ok { "?" } else { "" };
    format!("^[{WHITESPACE}]*(?:{core}){optional}[{WHITESPACE}]*$")
}

/// A free-text field (`domain::text::parse_text`): trimmed, 1..=`max` characters, no
/// control characters (multi-line text keeps tab and LF, and CR LF counts as LF).
pub fn text(max: usize, lines: Lines, nullable: bool, description: &str) -> Object {
    string(nullable)
        .pattern(Some(trimmed_pattern(
            max,
            &text_refused(lines),
            false,
            lines == Lines::Many,
        )))
        .description(Some(description))
        .build()
}

/// An email address as `Email::parse` takes it (trimmed, matched case-insensitively).
pub fn email() -> Object {
    string(false)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
        .max_length(Some(MAX_EMAIL_LEN))
        .description(Some(format!(
            "At most {MAX_EMAIL_LEN} characters; matched case-insensitively."
        )))
        .examples(["ada@example.com"])
        .build()
}

/// Where [`new_password`] is used; `docs::finish` adds the common-password list there
/// (utoipa's schema type has no `not`).
pub const NEW_PASSWORD_FIELDS: &[(&str, &str)] = &[
    ("RegisterRequest", "password"),
    ("ResetPasswordRequest", "new_password"),
];

/// A new password: `Password::parse`.
pub fn new_password() -> Object {
    string(false)
        .min_length(Some(MIN_PASSWORD_CHARS))
        .max_length(Some(MAX_PASSWORD_BYTES))
        .description(Some(format!(
            "{MIN_PASSWORD_CHARS} characters to {MAX_PASSWORD_BYTES} bytes (UTF-8; bcrypt \
             ignores anything longer); very common passwords are refused."
        )))
        .examples(["correct horse battery"])
        .build()
}

/// A one-time code: six digits.
pub fn code() -> Object {
    string(false)
        .pattern(Some("^[0-9]{6}$"))
        .description(Some("The six digits from the mail."))
        .examples(["012345"])
        .build()
}

/// `display_name` (register, profile): `DisplayName::parse`.
pub fn display_name() -> Object {
    string(true)
        .pattern(Some(trimmed_pattern(
            MAX_DISPLAY_NAME_CHARS,
            &display_name_refused(),
            false,
            false,
        )))
        .description(Some(format!(
            "1–{MAX_DISPLAY_NAME_CHARS} characters after trimming surrounding whitespace; \
             no control characters or line breaks, no bidirectional controls or invisible \
             characters (Unicode format characters other than the zero-width joiner and \
             non-joiner, Hangul and Braille blanks), no private-use or unassigned code \
             points (the pattern cannot list the unassigned ones), and at least one letter, \
             digit, punctuation mark or symbol."
        )))
        .examples(["Ada"])
        .build()
}

/// `bio`: up to `max` characters after trimming, tabs and newlines allowed; empty clears.
pub fn bio(max: usize) -> Object {
    string(true)
        .pattern(Some(trimmed_pattern(
            max,
            &text_refused(Lines::Many),
            true,
            true,
        )))
        .description(Some(format!(
            "At most {max} characters after trimming; tabs and newlines allowed (CR LF \
             counts as one newline), other control characters and Unicode line separators \
             not. Empty or `null` clears it."
        )))
        .build()
}

/// `avatar_url`: an http(s) URL without whitespace, `max` characters in all.
pub fn avatar_url(max: usize) -> Object {
    let url_char = format!("[^{WHITESPACE}{CONTROL}]");
    string(true)
        .pattern(Some(format!(
            "^[{WHITESPACE}]*(?:http://{url_char}{{0,{}}}|https://{url_char}{{0,{}}})?[{WHITESPACE}]*$",
            max - "http://".len(),
            max - "https://".len()
        )))
        .description(Some(format!(
            "An http(s) URL, at most {max} characters, no whitespace inside. Empty or \
             `null` clears it."
        )))
        .examples(["https://example.com/ada.png"])
        .build()
}

/// `timezone`: an IANA zone name (the pattern states the format; the handler also
/// looks the name up in the zone database).
pub fn timezone(max: usize) -> Object {
    let edge = "[A-Za-z0-9_+-]";
    string(true)
        .pattern(Some(format!(
            "^[{WHITESPACE}]*(?:{edge}(?:[A-Za-z0-9/_+-]{{0,{}}}{edge})?)?[{WHITESPACE}]*$",
            max - 2
        )))
        .description(Some(format!(
            "An IANA zone name such as `Europe/Berlin`: letters, digits and `/_+-`, at \
             most {max} characters, not starting or ending with `/`, and a zone of the \
             IANA time zone database exactly as it spells it (else 422). Empty or `null` \
             clears it. Insights count days in this zone."
        )))
        .examples(["Europe/Berlin"])
        .build()
}

/// `introvert_level`: 1–10 or `null`.
pub fn introvert_level() -> Object {
    integer(true, 1, 10)
        .description(Some("1–10; `null` clears it."))
        .build()
}

/// `preferences`: an object merged into the stored one.
pub fn preferences(max_key_chars: usize, max_bytes: usize) -> Object {
    let key = string(false)
        .pattern(Some(format!(
            "^[^.${CONTROL}][^.{CONTROL}]{{0,{}}}$",
            max_key_chars - 1
        )))
        .build();
    let list = |what: &str| {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Boolean))
            .description(Some(what))
            .build()
    };
    let notifications = ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property(
            "low_battery",
            list("A mail when a record takes the battery below 20 (at most one a UTC day)."),
        )
        .property(
            "weekly_summary",
            list("A summary of each ISO week (UTC) with a chart of the level, sent after it ends."),
        )
        .description(Some(
            "Mail nudges the user opts in to; absent or `false` is off. Replaced as a whole \
             by the merge, like any top-level key. Each mail has a one-click unsubscribe link.",
        ))
        .build();
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(key))
        .property(crate::domain::preferences::NOTIFICATIONS, notifications)
        .description(Some(format!(
            "Merged shallowly into the stored object; a key set to `null` is removed. Keys, \
             at any depth, are 1–{max_key_chars} characters without `.`, not starting with \
             `$`, without control characters; string values, at any depth, carry no control \
             characters but tab, LF and CR; objects and arrays nest at most {} levels; the \
             merged object is at most {max_bytes} bytes of JSON.",
            crate::domain::preferences::MAX_PREFERENCES_DEPTH
        )))
        .build()
}

/// A nullable integer in a range.
pub fn optional_integer(min: i64, max: i64, description: &str) -> Object {
    integer(true, min, max)
        .description(Some(description))
        .build()
}

/// A required integer in a range.
pub fn required_integer(min: i64, max: i64, description: &str) -> Object {
    integer(false, min, max)
        .description(Some(description))
        .build()
}

/// An integer query parameter with a default.
pub fn integer_param(min: i64, max: i64, default: i64, description: &str) -> Object {
    integer(false, min, max)
        .default(Some(default.into()))
        .description(Some(description))
        .build()
}

/// A value that must be absent or `null` (a field another variant uses).
pub fn null_only(description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Null))
        .description(Some(description))
        .build()
}

/// An RFC 3339 date-time, or `null`.
pub fn optional_date_time(description: &str) -> Object {
    string(true)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some(description))
        .build()
}

/// The names a derived `ToSchema` enum (a `snake_case` string enum) declares.
pub fn enum_names<T: utoipa::PartialSchema>() -> Vec<String> {
    match T::schema() {
        RefOr::T(Schema::Object(object)) => object
            .enum_values
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// A string from a fixed set.
pub fn one_of(values: &[String], nullable: bool, description: &str) -> Object {
    let mut all: Vec<serde_json::Value> = values.iter().map(|v| v.as_str().into()).collect();
    if nullable {
        all.push(serde_json::Value::Null);
    }
    string(nullable)
        .enum_values(Some(all))
        .description(Some(description))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parsers' own notion of "trimmed, 1..=max chars, no control characters".
    fn rust_accepts(raw: &str, max: usize) -> bool {
        let t = raw.trim();
        !t.is_empty() && t.chars().count() <= max && !t.chars().any(char::is_control)
    }

    fn regex_of(pattern: &str) -> regex::Regex {
        regex::Regex::new(pattern).unwrap()
    }

    #[test]
    fn the_trimmed_text_pattern_agrees_with_trim_and_char_counts() {
        let pattern = regex_of(&trimmed_pattern(5, CONTROL, false, false));
        let samples = [
            "",
            " ",
            "a",
            " a ",
            "abcde",
            "abcdef",
            " abcde ",
            "\u{85}abcde\u{3000}",
            "a\u{0}b",
            "\ta\n",
            "a b",
            "\u{feff}",
            "é",
            "ab\u{2028}cd",
            "\u{1680}x",
            "x\u{1f}",
            "日本語",
        ];
        for s in samples {
            assert_eq!(pattern.is_match(s), rust_accepts(s, 5), "{s:?}");
        }
    }
}

#[cfg(test)]
mod display_name_tests {
    use super::*;
    use proptest::prelude::*;

    static PATTERN: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(&display_name().pattern.unwrap()).unwrap());

    proptest! {
        #[test]
        fn the_display_name_pattern_says_what_display_name_parse_accepts(
            raw in "[a-z é\\t\\n\\u{0}\\u{1f}\\u{85}\\u{9f}\\u{a0}\\u{2028}\\u{3000}\\u{feff}]{0,6}",
            repeat in 0usize..30,
        ) {
            // Around the 100-character limit too.
            let raw = raw.repeat(repeat.max(1));
            let schema = PATTERN.is_match(&raw);
            let parser = crate::domain::DisplayName::parse(&raw, "display_name").is_ok();
            prop_assert_eq!(schema, parser, "{:?}", raw);
        }
    }
}
