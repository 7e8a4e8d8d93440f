//! Nudges by mail (issue 14.3), opt-in through `preferences.notifications`:
//! - a low-battery mail when a record takes the level from 20 or more to below 20, at
//!   most one per user per UTC day ([`after_record`]);
//! - a weekly summary of the ISO week (UTC) just ended, with the week's level as an
//!   inline PNG chart ([`weekly`], run by a background task);
//! - an unsubscribe link in both that works without signing in ([`token`]).
//!
//! "At most once" is a claim in the store ([`crate::store::NudgeStore::claim_nudge`]),
//! taken together with queuing the mail, so it holds with several instances on one
//! store and with parallel records. Mail goes through the durable outbox like all mail.

pub mod chart;
pub mod token;
pub mod weekly;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::email::MailKind;
use crate::startup::AppState;
use crate::store::{BatteryEvent, NudgeClaim, NudgeList};

pub use token::{TokenError, Unsubscribe, UnsubscribeKey};

/// The preferences key holding the lists: `{"notifications": {"low_battery": true,
/// "weekly_summary": true}}`.
pub const PREFERENCES_KEY: &str = crate::domain::preferences::NOTIFICATIONS;
/// A record that takes the level from at least this to below it sends the low-battery
/// mail (the `critical` status, `is_low`).
pub const LOW_LEVEL: i32 = 20;

/// Whether `preferences` opt in to `list` (only `true` does; absent is off).
pub fn opted_in(preferences: &Map<String, Value>, list: NudgeList) -> bool {
    preferences
        .get(PREFERENCES_KEY)
        .and_then(|n| n.get(list.as_str()))
        == Some(&Value::Bool(true))
}

/// Whether a record crossed the low line downwards.
pub fn crossed_low(level_before: i32, level_after: i32) -> bool {
    level_before >= LOW_LEVEL && level_after < LOW_LEVEL
}

/// The record path's hook: when `event` took the level below [`LOW_LEVEL`], queue the
/// low-battery mail off the request path (the response does not wait for it).
pub fn after_record(state: &AppState, event: &BatteryEvent) {
    let (before, after) = (i32::from(event.level_before), i32::from(event.level_after));
    if !crossed_low(before, after) {
        return;
    }
    let (state_for_task, user_id) = (state.clone(), event.user_id.clone());
    state.background.spawn(async move {
        if let Err(e) = send_low_battery(&state_for_task, &user_id, after).await {
            tracing::warn!(error = %e, "low-battery mail not queued");
        }
    });
}

/// Queues the low-battery mail for `user_id` if they opted in and got none today (UTC);
/// returns whether one was queued.
pub async fn send_low_battery(
    state: &AppState,
    user_id: &str,
    level: i32,
) -> crate::store::StoreResult<bool> {
    let Some(user) = state.store.user_by_id(user_id).await? else {
        return Ok(false);
    };
    if !user.is_verified || !opted_in(&user.preferences, NudgeList::LowBattery) {
        return Ok(false);
    }
    let now = state.clock.now();
    let day = now.date_naive();
    let claim = NudgeClaim {
        user_id: user.id.clone(),
        list: NudgeList::LowBattery,
        period: day.format("%Y-%m-%d").to_string(),
        claimed_at: now,
        // The next day's mail has its own claim; a day's claim is needed only until the
        // day ends.
        expires_at: day_end(now) + chrono::TimeDelta::days(1),
    };
    let kind = MailKind::LowBattery {
        level: level.clamp(0, 100) as u8,
        unsubscribe_token: state.unsubscribe.sign(&user.id, NudgeList::LowBattery, now),
    };
    let to = crate::domain::Email::from_trusted(user.email.clone());
    let mail = state.outbox.prepare(&to, &kind, None);
    let claimed = state.store.claim_nudge(&claim, &mail).await?;
    if claimed {
        state.outbox.wake();
    }
    Ok(claimed)
}

/// The end of `now`'s UTC day.
fn day_end(now: DateTime<Utc>) -> DateTime<Utc> {
    (now.date_naive() + chrono::TimeDelta::days(1))
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_true_opts_in() {
        let prefs = |v: Value| v.as_object().unwrap().clone();
        assert!(opted_in(
            &prefs(json!({"notifications": {"low_battery": true}})),
            NudgeList::LowBattery
        ));
        for off in [
            json!({}),
            json!({"notifications": {}}),
            json!({"notifications": {"low_battery": false}}),
            json!({"notifications": {"low_battery": "yes"}}),
            json!({"notifications": {"weekly_summary": true}}),
            json!({"notifications": true}),
        ] {
            assert!(
                !opted_in(&prefs(off.clone()), NudgeList::LowBattery),
                "{off}"
            );
        }
    }

    #[test]
    fn only_a_drop_from_20_or_more_to_below_20_crosses() {
        assert!(crossed_low(20, 19));
        assert!(crossed_low(70, 0));
        assert!(!crossed_low(19, 5), "already low");
        assert!(!crossed_low(25, 20), "20 is not low");
        assert!(!crossed_low(10, 30));
    }
}
