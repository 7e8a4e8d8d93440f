//! A user's `preferences`: a JSON object the client owns, stored as is (a MongoDB
//! subdocument, JSON text in SQLite). What the service still insists on, at any depth
//! (SECURITY.md 34): keys are 1–64 characters without control characters, without `.`
//! and without a leading `$` (MongoDB reads those as paths and operators); string values
//! carry no control characters other than tab, LF and CR; objects and arrays nest at most
//! [`MAX_PREFERENCES_DEPTH`] levels below `preferences` (MongoDB refuses documents nested
//! past 100). The 16 KiB limit on the merged object is checked where the merge happens.
//!
//! One key the service reads itself: `notifications`, the mail nudges a user opts in to
//! (see [`crate::nudges`]). When given it is an object (or `null`, which removes it);
//! its `low_battery` and `weekly_summary`, when present, are booleans (absent is off);
//! other keys in it are the client's. Being a top-level key, it is replaced as a whole
//! by the shallow merge: send every list you want on.

use serde_json::{Map, Value};

use crate::error::FieldError;

pub const MAX_PREFERENCE_KEY_CHARS: usize = 64;
/// How deep objects and arrays may nest inside `preferences`.
pub const MAX_PREFERENCES_DEPTH: usize = 10;

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.chars().count() <= MAX_PREFERENCE_KEY_CHARS
        && !key.contains('.')
        && !key.starts_with('$')
        && !key.chars().any(char::is_control)
}

fn valid_string(value: &str) -> bool {
    !value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

fn error(path: &[&str], msg: String, kind: &str) -> FieldError {
    let mut loc: Vec<Value> = vec!["body".into(), "preferences".into()];
    loc.extend(path.iter().map(|k| Value::from(*k)));
    FieldError {
        loc,
        msg,
        kind: kind.to_owned(),
    }
}

/// The preferences key holding the mail nudges a user opts in to.
pub const NOTIFICATIONS: &str = "notifications";
/// The lists under [`NOTIFICATIONS`] (booleans).
pub const NOTIFICATION_LISTS: [&str; 2] = ["low_battery", "weekly_summary"];

/// Every problem in a preferences patch, each located by its path.
pub fn check_preferences(patch: &Map<String, Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut path = Vec::new();
    check_object(patch, &mut path, 1, &mut errors);
    match patch.get(NOTIFICATIONS) {
        None | Some(Value::Null) => {}
        Some(Value::Object(lists)) => {
            for list in NOTIFICATION_LISTS {
                if lists.get(list).is_some_and(|v| !v.is_boolean()) {
                    errors.push(error(
                        &[NOTIFICATIONS, list],
                        "must be true or false".into(),
                        "type_error.bool",
                    ));
                }
            }
        }
        Some(_) => errors.push(error(
            &[NOTIFICATIONS],
            "must be an object such as {\"low_battery\": true, \"weekly_summary\": false}".into(),
            "type_error.dict",
        )),
    }
    errors
}

fn check_object<'a>(
    object: &'a Map<String, Value>,
    path: &mut Vec<&'a str>,
    depth: usize,
    errors: &mut Vec<FieldError>,
) {
    for (key, value) in object {
        path.push(key);
        if valid_key(key) {
            check_value(value, path, depth, errors);
        } else {
            errors.push(error(
                path,
                format!(
                    "preference keys are 1–{MAX_PREFERENCE_KEY_CHARS} characters, without control characters, '.' or a leading '$'"
                ),
                "value_error.key",
            ));
        }
        path.pop();
    }
}

fn check_value<'a>(
    value: &'a Value,
    path: &mut Vec<&'a str>,
    depth: usize,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::String(s) if !valid_string(s) => errors.push(error(
            path,
            "must not contain control characters other than tab and line breaks".into(),
            "value_error.control_character",
        )),
        Value::Object(_) | Value::Array(_) if depth >= MAX_PREFERENCES_DEPTH => errors.push(error(
            path,
            format!("preferences nest at most {MAX_PREFERENCES_DEPTH} levels deep"),
            "value_error.too_deep",
        )),
        Value::Object(object) => check_object(object, path, depth + 1, errors),
        Value::Array(items) => {
            for item in items {
                check_value(item, path, depth + 1, errors);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: Value) -> Vec<FieldError> {
        check_preferences(value.as_object().unwrap())
    }

    /// `value` has exactly one problem, at `preferences.<path>`.
    fn assert_one_error_at(value: &Value, path: &[&str]) {
        let errors = check(value.clone());
        assert_eq!(errors.len(), 1, "{value}: {errors:?}");
        let mut loc: Vec<Value> = vec!["body".into(), "preferences".into()];
        loc.extend(path.iter().map(|k| Value::from(*k)));
        assert_eq!(errors[0].loc, loc, "{value}");
    }

    #[test]
    fn keys_are_checked_at_any_depth() {
        assert!(
            check(json!({"theme": "dark", "notify": {"email": true, "days": ["mon"]}})).is_empty()
        );
        let cases = [
            (json!({"a.b": 1}), vec!["a.b"]),
            (json!({"$where": 1}), vec!["$where"]),
            (json!({"": 1}), vec![""]),
            (json!({"a\u{0}b": 1}), vec!["a\u{0}b"]),
            (json!({"n": {"x\u{0}": 1}}), vec!["n", "x\u{0}"]),
            (
                json!({"n": {"deep": {"$set": 1}}}),
                vec!["n", "deep", "$set"],
            ),
            (json!({"n": [{"a.b": 1}]}), vec!["n", "a.b"]),
        ];
        for (value, path) in cases {
            assert_one_error_at(&value, &path);
        }
        assert!(!check(json!({"k".repeat(65): 1})).is_empty());
        assert!(check(json!({"k".repeat(64): 1})).is_empty());
    }

    #[test]
    fn notifications_is_an_object_of_booleans() {
        assert!(
            check(json!({"notifications": {"low_battery": true, "weekly_summary": false}}))
                .is_empty()
        );
        assert!(check(json!({"notifications": {"push": "daily"}})).is_empty());
        assert!(check(json!({"notifications": null})).is_empty());
        let cases = [
            (json!({"notifications": true}), vec!["notifications"]),
            (
                json!({"notifications": ["low_battery"]}),
                vec!["notifications"],
            ),
            (
                json!({"notifications": {"low_battery": "yes"}}),
                vec!["notifications", "low_battery"],
            ),
            (
                json!({"notifications": {"weekly_summary": 1}}),
                vec!["notifications", "weekly_summary"],
            ),
        ];
        for (value, path) in cases {
            assert_one_error_at(&value, &path);
        }
    }

    #[test]
    fn string_values_carry_no_control_characters() {
        assert!(check(json!({"note": "two\nlines\tand\r\nmore"})).is_empty());
        assert!(!check(json!({"note": "nul\u{0}"})).is_empty());
        assert!(!check(json!({"n": {"deep": ["esc\u{1b}"]}})).is_empty());
    }

    #[test]
    fn nesting_is_bounded() {
        let mut value = json!(1);
        for _ in 0..MAX_PREFERENCES_DEPTH - 1 {
            value = json!({ "k": value });
        }
        assert!(
            check(json!({ "top": value.clone() })).is_empty(),
            "{MAX_PREFERENCES_DEPTH} levels"
        );
        assert_eq!(check(json!({ "top": { "k": value } })).len(), 1);
        let mut deep = json!([]);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        assert_eq!(check(json!({ "top": deep })).len(), 1);
    }
}
