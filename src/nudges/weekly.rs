//! The weekly summary: once the ISO week (UTC, Monday to Sunday) is over, every
//! verified user opted in to `weekly_summary` who recorded something that week gets one
//! mail with the week's level as a chart (see [`super::chart`]) and the numbers:
//! the closing level of each day, drained and recharged totals.
//!
//! [`send_weekly_summaries`] is one pass; [`run`] repeats it every
//! [`SCHEDULER_INTERVAL`] on every instance. Each user's mail is claimed in the store
//! under `(user, ISO week)`, so however many passes and instances run, it is queued once.
//! A pass reads a bounded amount per user (the week's insights buckets, one store call,
//! whatever the history's length).

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::battery::insights::bucket_of;
use crate::domain::Email;
use crate::email::MailKind;
use crate::startup::AppState;
use crate::store::{NudgeClaim, NudgeList, StoreResult};

/// How often the scheduler looks for a finished week to summarise.
pub const SCHEDULER_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Recipients read per store call.
const PAGE: u32 = 200;

/// What a weekly summary says: kept in the outbox and rendered at delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeekSummary {
    /// `2026-W48`.
    pub week: String,
    /// The week's Monday.
    pub monday: NaiveDate,
    /// The level when the week began (`None`: nothing recorded before it).
    pub opening: Option<u8>,
    /// The level at the end of each day, Monday first (`None`: nothing recorded yet).
    pub closes: Vec<Option<u8>>,
    pub interactions: i64,
    pub drained: i64,
    pub recharged: i64,
}

impl WeekSummary {
    /// The chart's points: the opening level, then each day's close.
    pub fn levels(&self) -> Vec<Option<u8>> {
        std::iter::once(self.opening)
            .chain(self.closes.iter().copied())
            .collect()
    }
}

/// The ISO week before the one `now` is in: its Monday 00:00 UTC and its name.
pub fn previous_week(now: DateTime<Utc>) -> (DateTime<Utc>, String) {
    let today = now.date_naive();
    let this_monday = today - TimeDelta::days(i64::from(today.weekday().num_days_from_monday()));
    let monday = this_monday - TimeDelta::days(7);
    let iso = monday.iso_week();
    (
        monday.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
        format!("{}-W{:02}", iso.year(), iso.week()),
    )
}

/// One pass: queues the summary of the week just ended for every opted-in user who has
/// none yet; returns how many were queued.
pub async fn send_weekly_summaries(state: &AppState) -> StoreResult<u32> {
    let now = state.clock.now();
    let (start, week) = previous_week(now);
    let mut queued = 0;
    let mut after: Option<String> = None;
    loop {
        let page = state
            .store
            .nudge_recipients(NudgeList::WeeklySummary, after.as_deref(), PAGE)
            .await?;
        for recipient in &page {
            let Some(summary) = summarise(state, &recipient.user_id, start, &week).await? else {
                continue;
            };
            let claim = NudgeClaim {
                user_id: recipient.user_id.clone(),
                list: NudgeList::WeeklySummary,
                period: week.clone(),
                claimed_at: now,
                // Summaries of a week are sent during the next one only.
                expires_at: start + TimeDelta::days(15),
            };
            let kind = MailKind::WeeklySummary {
                summary,
                unsubscribe_token: state.unsubscribe.sign(
                    &recipient.user_id,
                    NudgeList::WeeklySummary,
                    now,
                ),
            };
            let to = Email::from_trusted(recipient.email.clone());
            let mail = state.outbox.prepare(&to, &kind, None);
            if state.store.claim_nudge(&claim, &mail).await? {
                queued += 1;
                state.outbox.wake();
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after = Some(last.user_id.clone()),
            _ => break,
        }
    }
    if queued > 0 {
        tracing::info!(queued, %week, "weekly summaries queued");
    }
    Ok(queued)
}

/// The summary of the week from `start` for `user_id`, or `None` if they recorded
/// nothing that week.
async fn summarise(
    state: &AppState,
    user_id: &str,
    start: DateTime<Utc>,
    week: &str,
) -> StoreResult<Option<WeekSummary>> {
    // The week's insights buckets and the closing level of the last one before it: one
    // store call, whatever the history's length (UTC days are whole buckets).
    let end = start + TimeDelta::days(7);
    let stored = state
        .store
        .battery_buckets(user_id, bucket_of(start), bucket_of(end))
        .await?;
    if stored.buckets.is_empty() {
        return Ok(None);
    }
    let level = |l: i32| l.clamp(0, 100) as u8;
    let opening = stored.carried.map(level);
    let mut closes = Vec::with_capacity(7);
    let mut close = opening;
    let mut buckets = stored.buckets.iter().peekable();
    for day in 1..=7 {
        let day_end = bucket_of(start + TimeDelta::days(day));
        while let Some(b) = buckets.next_if(|b| b.bucket < day_end) {
            close = Some(level(b.closing_level));
        }
        closes.push(close);
    }
    Ok(Some(WeekSummary {
        week: week.to_owned(),
        monday: start.date_naive(),
        opening,
        closes,
        interactions: stored.buckets.iter().map(|b| b.count()).sum(),
        drained: stored.buckets.iter().map(|b| b.drained()).sum(),
        recharged: stored.buckets.iter().map(|b| b.recharged()).sum(),
    }))
}

/// The scheduler: a pass every [`SCHEDULER_INTERVAL`] (the first one interval after
/// start), on every instance; the store's claims make extra passes harmless. A week is
/// summarised once per process after it ends, or again after a failed pass.
pub async fn run(state: AppState) {
    let mut done: Option<String> = None;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + SCHEDULER_INTERVAL,
        SCHEDULER_INTERVAL,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (_, week) = previous_week(state.clock.now());
        if done.as_deref() == Some(week.as_str()) {
            continue;
        }
        match send_weekly_summaries(&state).await {
            Ok(_) => done = Some(week),
            Err(e) => {
                tracing::warn!(error = %e, "weekly summaries: pass failed; retrying at the next tick")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Weekday;

    #[test]
    fn the_previous_week_is_the_iso_week_before_now() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        // Tuesday 1 December 2026 is in 2026-W49; the week before starts Monday 23 Nov.
        let (start, name) = previous_week(at("2026-12-01T10:00:00Z"));
        assert_eq!(start, at("2026-11-23T00:00:00Z"));
        assert_eq!(name, "2026-W48");
        assert_eq!(start.weekday(), Weekday::Mon);
        // A Monday just after midnight: the week that has just ended.
        let (start, _) = previous_week(at("2026-11-30T00:00:01Z"));
        assert_eq!(start, at("2026-11-23T00:00:00Z"));
        // Across a year: Monday 4 January 2027 is in 2027-W01; the week before is 2026-W53.
        let (_, name) = previous_week(at("2027-01-05T12:00:00Z"));
        assert_eq!(name, "2026-W53");
    }
}
