//! Instants a client supplies (SECURITY.md 34: timestamps have a sane range). An
//! interaction's `occurred_at` lies between [`EARLIEST`] (2000-01-01T00:00:00Z: nothing
//! the service records happened before it, and every store orders and filters it
//! correctly) and [`FUTURE_TOLERANCE_SECONDS`] after the server's clock (client clock
//! skew). The activity filters `from` and `to` are RFC 3339 with a four-digit year, so
//! they cannot leave 0000–9999 by construction.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

use crate::error::FieldError;

/// `occurred_at` may lead the server clock by this much (client clock skew).
pub const FUTURE_TOLERANCE_SECONDS: i64 = 60;
/// The earliest year an `occurred_at` may have.
pub const EARLIEST_YEAR: i32 = 2000;

/// The earliest instant accepted from a client: 2000-01-01T00:00:00Z.
pub fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(EARLIEST_YEAR, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date")
}

/// Checks when something happened, as a client says, against the server's `now`.
pub fn check_occurred_at(
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    field: &str,
) -> Result<DateTime<Utc>, FieldError> {
    if at > now + Duration::seconds(FUTURE_TOLERANCE_SECONDS) {
        return Err(FieldError::body(
            field,
            "must not be in the future",
            "value_error.future",
        ));
    }
    if at < earliest() {
        return Err(FieldError::body(
            field,
            format!("must not be before {EARLIEST_YEAR}-01-01T00:00:00Z"),
            "value_error.too_old",
        ));
    }
    Ok(at)
}

/// Serializes an instant exactly as chrono's `Serialize` does (RFC 3339, `Z`, the
/// fraction as 0, 3, 6 or 9 digits), written straight into a stack buffer. A history page
/// serializes 100 instants; chrono's writer goes through `fmt` one character at a time
/// and was a tenth of the page's CPU time in the profile (issue 15). A property test
/// below holds the two outputs equal.
pub fn serialize<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let year = at.year();
    if !(0..=9999).contains(&year) {
        // Years outside four digits (never stored: see EARLIEST_YEAR) keep chrono's form.
        return serde::Serialize::serialize(at, s);
    }
    let (sec, nano) = (at.second(), at.nanosecond());
    // A leap second is a nanosecond count of a billion or more, shown as second 60.
    let (sec, nano) = if nano >= 1_000_000_000 {
        (sec + 1, nano - 1_000_000_000)
    } else {
        (sec, nano)
    };
    let mut out = [0u8; 32];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        out[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    let year = year as u32;
    push(&[
        b'0' + (year / 1000) as u8,
        b'0' + (year / 100 % 10) as u8,
        b'0' + (year / 10 % 10) as u8,
        b'0' + (year % 10) as u8,
    ]);
    for (sep, value) in [
        (b'-', at.month()),
        (b'-', at.day()),
        (b'T', at.hour()),
        (b':', at.minute()),
        (b':', sec),
    ] {
        push(&[sep, b'0' + (value / 10) as u8, b'0' + (value % 10) as u8]);
    }
    let (fraction, digits) = if nano == 0 {
        (0, 0)
    } else if nano % 1_000_000 == 0 {
        (nano / 1_000_000, 3)
    } else if nano % 1_000 == 0 {
        (nano / 1_000, 6)
    } else {
        (nano, 9)
    };
    if digits > 0 {
        let mut f = [b'.'; 10];
        let mut v = fraction;
        for i in (1..=digits).rev() {
            f[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        push(&f[..=digits]);
    }
    push(b"Z");
    // Only ASCII digits and separators were written.
    s.serialize_str(std::str::from_utf8(&out[..len]).expect("ASCII"))
}

/// [`serialize`] for an optional instant.
pub fn serialize_opt<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Fast(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    proptest::proptest! {
        #[test]
        fn the_fast_form_is_chronos_form(
            secs in -62_135_596_800i64..253_402_300_799,
            nano in 0u32..1_000_000_000,
            round in 0u32..3,
        ) {
            // Fractions of every width: whole milliseconds, microseconds, nanoseconds.
            let nano = match round { 0 => nano / 1_000_000 * 1_000_000, 1 => nano / 1_000 * 1_000, _ => nano };
            let at = DateTime::from_timestamp(secs, nano).unwrap();
            proptest::prop_assert_eq!(
                serde_json::to_string(&Fast(at)).unwrap(),
                serde_json::to_string(&at).unwrap()
            );
        }
    }

    #[test]
    fn whole_seconds_leap_seconds_and_distant_years_match_chrono() {
        let whole = Utc.with_ymd_and_hms(2026, 12, 1, 1, 2, 3).unwrap();
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        let far = Utc.with_ymd_and_hms(12345, 1, 1, 0, 0, 0).unwrap();
        for at in [whole, leap, far, earliest()] {
            assert_eq!(
                serde_json::to_string(&Fast(at)).unwrap(),
                serde_json::to_string(&at).unwrap()
            );
        }
    }

    #[test]
    fn occurred_at_lies_between_2000_and_a_minute_from_now() {
        let now = Utc::now();
        let ok = [
            now,
            now + Duration::seconds(60),
            earliest(),
            now - Duration::days(3650),
        ];
        for at in ok {
            assert!(check_occurred_at(at, now, "occurred_at").is_ok(), "{at}");
        }
        let refused = [
            now + Duration::seconds(61),
            earliest() - Duration::milliseconds(1),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
        ];
        for at in refused {
            assert!(check_occurred_at(at, now, "occurred_at").is_err(), "{at}");
        }
    }
}
