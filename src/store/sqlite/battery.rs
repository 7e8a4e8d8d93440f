//! The battery in SQLite: the level and `battery_seq` on `users`, the history in
//! `battery_events`, running totals per kind in `battery_stats`, and `Idempotency-Key`s
//! in `idempotency_keys`. A record is one transaction on the one writer, so it cannot
//! lose an update (it also adds the event to its insights bucket, `insights.rs`), and it is stamped (`recorded_at`) inside that transaction, so
//! acceptance order and `recorded_at` agree. History is read in timeline order through
//! the `(user_id, occurred_at, seq)` and `(user_id, kind, occurred_at, seq)` indexes.

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::insights::{add_to_bucket, recompute_buckets};
use super::{millis, unreadable, Fields, Key, SqliteStore};
use crate::battery::insights::Entry;
use crate::battery::{self, InteractionKind, KindTotals, Totals};
use crate::store::battery::{stored_level, InteractionColumns};
use crate::store::insights::touched_buckets;
use crate::store::{
    replay_correction, BatteryEvent, BatteryStore, BatterySummary, Correction, CorrectionOutcome,
    HistoryCursor, HistoryFilter, IdempotencyKey, NewBatteryEvent, RecordOutcome, StoreResult,
};

pub(super) const EVENT_COLUMNS: &str = "id, user_id, seq, kind, energy_impact, sleep_quality, \
    target_level, name, energy_delta, level_before, level_after, duration_minutes, occurred_at, \
    recorded_at, notes, people_count, interaction_type";

/// [`Totals`] of a group of `battery_events` rows, by the definitions of `Totals::of`
/// (tests/store checks that they agree with the running totals).
pub(super) const KIND_TOTALS: &str = "COUNT(*), SUM(MAX(energy_delta, 0)), \
    SUM(MAX(-energy_delta, 0)), SUM(level_after)";

/// The one `battery_events` row → [`BatteryEvent`] mapping.
pub(super) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<BatteryEvent> {
    let f = Fields::new(row, "battery_events", Key::Column(0));
    let columns = InteractionColumns {
        kind: f.parse(3)?,
        energy_impact: f.get(4)?,
        sleep_quality: f.parse_opt(5)?,
        target_level: f.get(6)?,
    };
    let level_before: i64 = f.get(9)?;
    let level_after: i64 = f.get(10)?;
    Ok(BatteryEvent {
        id: f.get(0)?,
        user_id: f.get(1)?,
        seq: f.get(2)?,
        interaction: f.check(3, columns.interaction())?,
        name: f.get(7)?,
        energy_delta: f.get(8)?,
        level_before: f.check(9, stored_level(level_before))?,
        level_after: f.check(10, stored_level(level_after))?,
        duration_minutes: f.get(11)?,
        occurred_at: f.time(12)?,
        recorded_at: f.time(13)?,
        notes: f.get(14)?,
        people_count: f.get(15)?,
        interaction_type: f.parse_opt(16)?,
    })
}

/// The one [`BatteryEvent`] → `battery_events` row mapping (insert or replace by id).
pub(super) fn upsert_event(conn: &Connection, event: &BatteryEvent) -> rusqlite::Result<()> {
    let columns = InteractionColumns::from(&event.interaction);
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO battery_events ({EVENT_COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
    ))?
    .execute(params![
        event.id,
        event.user_id,
        event.seq,
        columns.kind.as_str(),
        columns.energy_impact,
        columns.sleep_quality.map(|q| q.as_str()),
        columns.target_level,
        event.name,
        event.energy_delta,
        event.level_before.value(),
        event.level_after.value(),
        event.duration_minutes,
        millis(event.occurred_at),
        millis(event.recorded_at),
        event.notes,
        event.people_count,
        event.interaction_type.map(|c| c.as_str())
    ])
    .map(drop)
}

/// WHERE clause and parameters of a history filter (after `user_id = ?1`).
fn history_conditions(filter: &HistoryFilter) -> (String, Vec<Value>) {
    let mut sql = String::new();
    let mut params = Vec::new();
    if let Some(kind) = filter.kind {
        params.push(Value::Text(kind.as_str().to_owned()));
        sql.push_str(&format!(" AND kind = ?{}", params.len() + 1));
    }
    if let Some(from) = filter.from {
        params.push(Value::Integer(millis(from)));
        sql.push_str(&format!(" AND occurred_at >= ?{}", params.len() + 1));
    }
    if let Some(to) = filter.to {
        params.push(Value::Integer(millis(to)));
        sql.push_str(&format!(" AND occurred_at <= ?{}", params.len() + 1));
    }
    (sql, params)
}

/// The replay of a key seen before, or `None` to go on and record.
fn seen_key(
    conn: &Connection,
    user_id: &str,
    key: &IdempotencyKey,
) -> rusqlite::Result<Option<RecordOutcome>> {
    let seen = live_key(conn, user_id, key)?;
    let Some((hash, event_id)) = seen else {
        return Ok(None);
    };
    if hash != key.request_hash {
        return Ok(Some(RecordOutcome::KeyReused));
    }
    let original = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM battery_events WHERE id = ?1"
        ))?
        .query_row([event_id], event_from_row)
        .optional()?;
    Ok(original.map(RecordOutcome::Replayed))
}

/// One event of `user_id` by id.
fn event_by_id(
    conn: &Connection,
    user_id: &str,
    id: &str,
) -> rusqlite::Result<Option<BatteryEvent>> {
    conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM battery_events WHERE id = ?1 AND user_id = ?2"
    ))?
    .query_row([id, user_id], event_from_row)
    .optional()
}

/// Adds `totals` (possibly negative) to the running totals of `kind`.
fn add_stats(
    conn: &Connection,
    user_id: &str,
    kind: InteractionKind,
    totals: Totals,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO battery_stats (user_id, kind, count, total_positive, total_negative, level_sum) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (user_id, kind) DO UPDATE SET count = count + excluded.count, \
         total_positive = total_positive + excluded.total_positive, \
         total_negative = total_negative + excluded.total_negative, \
         level_sum = level_sum + excluded.level_sum",
    )?
    .execute(params![
        user_id,
        kind.as_str(),
        totals.count,
        totals.total_positive,
        totals.total_negative,
        totals.level_sum
    ])
    .map(drop)
}

/// The request hash and event of `key` if an unexpired request used it.
fn live_key(
    conn: &Connection,
    user_id: &str,
    key: &IdempotencyKey,
) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached(
        "SELECT request_hash, event_id FROM idempotency_keys \
         WHERE user_id = ?1 AND key = ?2 AND created_at >= ?3",
    )?
    .query_row(params![user_id, key.key, millis(key.not_before)], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

/// Remembers `key` for the request it was first used with, bound to `event_id`.
fn remember_key(
    conn: &Connection,
    user_id: &str,
    key: &IdempotencyKey,
    event_id: &str,
    at: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, event_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (user_id, key) DO UPDATE SET \
         request_hash = excluded.request_hash, event_id = excluded.event_id, \
         created_at = excluded.created_at",
    )?
    .execute(params![user_id, key.key, key.request_hash, event_id, at])
    .map(drop)
}

#[async_trait]
impl BatteryStore for SqliteStore {
    async fn battery_event(&self, user_id: &str, id: &str) -> StoreResult<Option<BatteryEvent>> {
        let (user_id, id) = (user_id.to_owned(), id.to_owned());
        self.quick_read(move |conn| event_by_id(conn, &user_id, &id))
            .await
    }

    /// One transaction on the one writer: records and other corrections wait for it.
    #[tracing::instrument(skip_all)]
    async fn correct_interaction(
        &self,
        user_id: &str,
        id: &str,
        correction: &Correction,
        key: Option<&IdempotencyKey>,
        now: DateTime<Utc>,
    ) -> StoreResult<CorrectionOutcome> {
        let (user_id, id, correction, key) = (
            user_id.to_owned(),
            id.to_owned(),
            correction.clone(),
            key.cloned(),
        );
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            if let Some(key) = &key {
                if let Some((hash, event_id)) = live_key(&tx, &user_id, key)? {
                    if hash != key.request_hash {
                        return Ok(CorrectionOutcome::KeyReused);
                    }
                    let now = event_by_id(&tx, &user_id, &event_id)?;
                    return Ok(CorrectionOutcome::Replayed(now));
                }
            }
            let Some(target) = event_by_id(&tx, &user_id, &id)? else {
                return Ok(CorrectionOutcome::NotFound);
            };
            // The corrected record and every later one: the primary key's range.
            let events: Vec<BatteryEvent> = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM battery_events \
                     WHERE user_id = ?1 AND seq >= ?2 ORDER BY seq"
                ))?
                .query_map(params![user_id, target.seq], event_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let replayed = replay_correction(&events, &correction);
            if correction == Correction::Delete {
                tx.prepare_cached("DELETE FROM battery_events WHERE id = ?1")?
                    .execute([&target.id])?;
            }
            for (old, new) in events
                .iter()
                .filter(|e| e.id != target.id || correction != Correction::Delete)
                .zip(&replayed.events)
            {
                if old != new {
                    upsert_event(&tx, new)?;
                }
            }
            for kind in InteractionKind::ALL {
                let change = replayed.after.get(kind) - replayed.before.get(kind);
                if change != Totals::default() {
                    add_stats(&tx, &user_id, kind, change)?;
                }
            }
            // The buckets of what moved, recomputed from the events as they now are.
            let touched = touched_buckets(&target, &events, &replayed.events);
            recompute_buckets(&tx, &user_id, &touched)?;
            tx.prepare_cached("UPDATE users SET battery_level = ?2 WHERE id = ?1")?
                .execute(params![user_id, replayed.level.value()])?;
            if let Some(key) = &key {
                remember_key(&tx, &user_id, key, &target.id, millis(now))?;
            }
            tx.commit()?;
            Ok(match correction {
                Correction::Delete => CorrectionOutcome::Deleted,
                Correction::Replace(_) => CorrectionOutcome::Corrected(
                    replayed
                        .events
                        .into_iter()
                        .next()
                        .expect("the corrected record"),
                ),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn record_interaction(
        &self,
        user_id: &str,
        event: &NewBatteryEvent,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<RecordOutcome> {
        let (user_id, event, key) = (user_id.to_owned(), event.clone(), key.cloned());
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            if let Some(key) = &key {
                if let Some(outcome) = seen_key(&tx, &user_id, key)? {
                    return Ok(outcome);
                }
            }
            let current: Option<(i64, i64, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT battery_level, battery_seq, battery_updated_at FROM users WHERE id = ?1",
                )?
                .query_row([&user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((level, seq, previous)) = current else {
                return Ok(RecordOutcome::UserMissing);
            };
            let level = stored_level(level).map_err(|reason| {
                unreadable("users", &user_id, format_args!("battery_level: {reason}"))
            })?;
            let previous = previous.and_then(|ms| Utc.timestamp_millis_opt(ms).single());
            let applied = battery::apply(level, &event.interaction);
            // Stamped here, on the writer, in the transaction that takes step `seq + 1`.
            let recorded_at = event.stamp(previous);
            let recorded = event.recorded(&user_id, seq + 1, applied, recorded_at);
            upsert_event(&tx, &recorded)?;
            tx.prepare_cached(
                "UPDATE users SET battery_level = ?2, battery_seq = ?3, battery_updated_at = ?4 WHERE id = ?1",
            )?
            .execute(params![
                user_id,
                applied.level_after.value(),
                recorded.seq,
                millis(recorded.recorded_at)
            ])?;
            add_stats(
                &tx,
                &user_id,
                recorded.interaction.kind(),
                Totals::of(&applied),
            )?;
            add_to_bucket(&tx, &user_id, &Entry::from(&recorded))?;
            if let Some(key) = &key {
                remember_key(
                    &tx,
                    &user_id,
                    key,
                    &recorded.id,
                    millis(recorded.recorded_at),
                )?;
            }
            tx.commit()?;
            Ok(RecordOutcome::Recorded(recorded))
        })
        .await
    }

    async fn battery_history(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
        after: Option<HistoryCursor>,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        let (user_id, filter) = (user_id.to_owned(), filter.clone());
        self.read(move |conn| history_page(conn, &user_id, &filter, after, limit))
            .await
    }

    async fn battery_summary(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
    ) -> StoreResult<BatterySummary> {
        let (user_id, filter) = (user_id.to_owned(), filter.clone());
        self.read(move |conn| history_summary(conn, &user_id, &filter))
            .await
    }

    /// Both in one read: one connection and one hand-off to a blocking thread instead of
    /// two, and the page and its summary see the same snapshot.
    async fn battery_page(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
        after: Option<HistoryCursor>,
        limit: u32,
    ) -> StoreResult<(Vec<BatteryEvent>, BatterySummary)> {
        let (user_id, filter) = (user_id.to_owned(), filter.clone());
        self.read(move |conn| {
            let page = history_page(conn, &user_id, &filter, after, limit)?;
            Ok((page, history_summary(conn, &user_id, &filter)?))
        })
        .await
    }
}

/// One page of `user_id`'s timeline (see [`BatteryStore::battery_history`]).
fn history_page(
    conn: &Connection,
    user_id: &str,
    filter: &HistoryFilter,
    after: Option<HistoryCursor>,
    limit: u32,
) -> rusqlite::Result<Vec<BatteryEvent>> {
    let (mut conditions, mut values) = history_conditions(filter);
    values.insert(0, Value::Text(user_id.to_owned()));
    if let Some(after) = after {
        values.push(Value::Integer(millis(after.occurred_at)));
        values.push(Value::Integer(after.seq));
        // A row value: one range of the index, not an OR of two.
        conditions.push_str(&format!(
            " AND (occurred_at, seq) < (?{}, ?{})",
            values.len() - 1,
            values.len()
        ));
    }
    values.push(Value::Integer(limit.into()));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM battery_events WHERE user_id = ?1{conditions} \
         ORDER BY occurred_at DESC, seq DESC LIMIT ?{}",
        values.len()
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(rusqlite::params_from_iter(values), event_from_row)?;
    rows.collect()
}

/// The summary of `user_id`'s filtered timeline (see [`BatteryStore::battery_summary`]).
fn history_summary(
    conn: &Connection,
    user_id: &str,
    filter: &HistoryFilter,
) -> rusqlite::Result<BatterySummary> {
    let mut totals = KindTotals::default();
    if filter.from.is_none() && filter.to.is_none() {
        // Running totals: O(1) whatever the history's length.
        let mut statement = conn.prepare_cached(
            "SELECT kind, count, total_positive, total_negative, level_sum \
             FROM battery_stats WHERE user_id = ?1",
        )?;
        let mut rows = statement.query([user_id])?;
        while let Some(row) = rows.next()? {
            let f = Fields::new(row, "battery_stats", Key::Text(user_id));
            let kind: InteractionKind = f.parse(0)?;
            totals.set(kind, stats_from(&f, 1)?);
        }
        totals = totals.only(filter.kind);
    } else {
        // A time range: aggregate the matching events.
        let (conditions, mut values) = history_conditions(filter);
        values.insert(0, Value::Text(user_id.to_owned()));
        let sql = format!(
            "SELECT kind, {KIND_TOTALS} FROM battery_events \
             WHERE user_id = ?1{conditions} GROUP BY kind"
        );
        let mut statement = conn.prepare_cached(&sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(values))?;
        let name = format!("of user {user_id}");
        while let Some(row) = rows.next()? {
            let f = Fields::new(row, "battery_events", Key::Text(&name));
            totals.set(f.parse(0)?, stats_from(&f, 1)?);
        }
    }
    Ok(BatterySummary::of(&totals))
}

/// Four totals columns from `first` on: count, positive, negative, level sum.
fn stats_from(f: &Fields<'_, '_>, first: usize) -> rusqlite::Result<Totals> {
    Ok(Totals {
        count: f.get(first)?,
        total_positive: f.get(first + 1)?,
        total_negative: f.get(first + 2)?,
        level_sum: f.get(first + 3)?,
    })
}
