//! Instants a client supplies (SECURITY.md 34: timestamps have a sane range). An
//! interaction's `occurred_at` lies between [`EARLIEST`] (2000-01-01T00:00:00Z: nothing
//! the service records happened before it, and every store orders and filters it
//! correctly) and [`FUTURE_TOLERANCE_SECONDS`] after the server's clock (client clock
//! skew). The activity filters `from` and `to` are RFC 3339 with a four-digit year, so
//! they cannot leave 0000–9999 by construction.

use chrono::{DateTime, Duration, TimeZone, Utc};

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

#[cfg(test)]
mod tests {
    use super::*;

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
