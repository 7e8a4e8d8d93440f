//! Insights in SQLite: `battery_buckets`, one row per user and quarter hour with records
//! (columns named by [`COUNTERS`]). A record adds its event to its bucket with one upsert
//! in its own transaction; a correction, an import and migration 0009 recompute buckets
//! from the events with [`bucket_rows_sql`].

use std::collections::BTreeSet;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{Fields, Key, SqliteStore};
use crate::battery::insights::{Entry, StoredBuckets, BUCKET_MILLIS, COUNTERS, COUNTER_COUNT};
use crate::battery::{Channel, InteractionKind, SleepQuality};
use crate::store::battery::stored_level;
use crate::store::insights::{Bucket, InsightStore};
use crate::store::StoreResult;

/// The level and guard columns after the counters.
const LEVEL_COLUMNS: [&str; 6] = [
    "lowest",
    "highest",
    "closing_level",
    "closing_at",
    "closing_seq",
    "last_seq",
];

/// Every column after `user_id`: `bucket`, the counters, the levels.
fn columns() -> String {
    std::iter::once("bucket")
        .chain(COUNTERS)
        .chain(LEVEL_COLUMNS)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stored name behind a counter's suffix (a channel's column name, `untyped`, a
/// kind or a sleep quality), as an SQL condition on an event row.
fn condition(suffix: &str) -> String {
    if suffix == "untyped" {
        return "interaction_type IS NULL".into();
    }
    if let Some(c) = Channel::ALL
        .into_iter()
        .find(|c| c.as_str().replace('-', "_") == suffix)
    {
        return format!("interaction_type IS '{}'", c.as_str());
    }
    if let Some(q) = SleepQuality::ALL.into_iter().find(|q| q.as_str() == suffix) {
        return format!("(kind = 'sleep' AND sleep_quality IS '{}')", q.as_str());
    }
    let kind = InteractionKind::ALL
        .into_iter()
        .find(|k| k.as_str() == suffix)
        .expect("a counter names a channel, a quality or a kind");
    format!("kind = '{}'", kind.as_str())
}

/// The SQL aggregate of one counter over event rows, by the definitions of
/// [`Entry::counters`] (tests/store compares the two).
fn counter_sql(name: &str) -> String {
    match name {
        "count" => "COUNT(*)".into(),
        "drained" => "SUM(MAX(-energy_delta, 0))".into(),
        "recharged" => "SUM(MAX(energy_delta, 0))".into(),
        _ => {
            let (prefix, suffix) = name.split_at(2);
            let cond = condition(suffix);
            match prefix {
                "n_" => format!("SUM({cond})"),
                "d_" => format!("SUM(CASE WHEN {cond} THEN MAX(-energy_delta, 0) ELSE 0 END)"),
                _ => format!("SUM(CASE WHEN {cond} THEN energy_delta ELSE 0 END)"),
            }
        }
    }
}

/// `INSERT` of the buckets of the events matching `condition` (an SQL condition on
/// `battery_events`), recomputed from them. Migration 0009 holds this text with the
/// condition `1` (a unit test keeps them the same).
pub(super) fn bucket_rows_sql(condition: &str) -> String {
    let counters: Vec<String> = COUNTERS.iter().map(|c| counter_sql(c)).collect();
    format!(
        "INSERT INTO battery_buckets (user_id, {columns}) \
         SELECT user_id, bucket, {counters}, MIN(level_after), MAX(level_after), \
         MAX(CASE WHEN rn = 1 THEN level_after END), MAX(CASE WHEN rn = 1 THEN occurred_at END), \
         MAX(CASE WHEN rn = 1 THEN seq END), MAX(seq) \
         FROM (SELECT *, occurred_at / {BUCKET_MILLIS} AS bucket, ROW_NUMBER() OVER \
         (PARTITION BY user_id, occurred_at / {BUCKET_MILLIS} ORDER BY occurred_at DESC, seq DESC) AS rn \
         FROM battery_events WHERE {condition}) GROUP BY user_id, bucket",
        columns = columns(),
        counters = counters.join(", "),
    )
}

/// The upsert that adds one event's bucket to the stored one (built once).
static ADD_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let placeholders: Vec<String> = (1..=2 + COUNTER_COUNT + LEVEL_COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect();
    let mut updates: Vec<String> = COUNTERS
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    let later = "(excluded.closing_at, excluded.closing_seq) > (closing_at, closing_seq)";
    updates.extend([
        "lowest = MIN(lowest, excluded.lowest)".to_owned(),
        "highest = MAX(highest, excluded.highest)".to_owned(),
        format!(
            "closing_level = CASE WHEN {later} THEN excluded.closing_level ELSE closing_level END"
        ),
        format!("closing_at = CASE WHEN {later} THEN excluded.closing_at ELSE closing_at END"),
        format!("closing_seq = CASE WHEN {later} THEN excluded.closing_seq ELSE closing_seq END"),
        "last_seq = MAX(last_seq, excluded.last_seq)".to_owned(),
    ]);
    format!(
        "INSERT INTO battery_buckets (user_id, {}) VALUES ({}) \
         ON CONFLICT (user_id, bucket) DO UPDATE SET {}",
        columns(),
        placeholders.join(", "),
        updates.join(", ")
    )
});

/// Adds one recorded event to its bucket (in the record's transaction).
pub(super) fn add_to_bucket(
    conn: &Connection,
    user_id: &str,
    entry: &Entry,
) -> rusqlite::Result<()> {
    let bucket = Bucket::of(entry);
    let mut values: Vec<rusqlite::types::Value> =
        vec![user_id.to_owned().into(), bucket.bucket.into()];
    values.extend(bucket.counters.iter().map(|c| (*c).into()));
    values.extend([
        i64::from(bucket.lowest).into(),
        i64::from(bucket.highest).into(),
        i64::from(bucket.closing_level).into(),
        bucket.closing_at.into(),
        bucket.closing_seq.into(),
        bucket.last_seq.into(),
    ]);
    conn.prepare_cached(&ADD_SQL)?
        .execute(rusqlite::params_from_iter(values))
        .map(drop)
}

/// Recomputes `buckets` of `user_id` from the events (a correction's touched buckets).
pub(super) fn recompute_buckets(
    conn: &Connection,
    user_id: &str,
    buckets: &BTreeSet<i64>,
) -> rusqlite::Result<()> {
    let delete = "DELETE FROM battery_buckets WHERE user_id = ?1 AND bucket = ?2";
    let insert = bucket_rows_sql(&format!(
        "user_id = ?1 AND occurred_at >= ?2 * {BUCKET_MILLIS} AND occurred_at < (?2 + 1) * {BUCKET_MILLIS}"
    ));
    for bucket in buckets {
        conn.prepare_cached(delete)?
            .execute(params![user_id, bucket])?;
        conn.prepare_cached(&insert)?
            .execute(params![user_id, bucket])?;
    }
    Ok(())
}

/// Recomputes every bucket of `user_id` (an imported history).
pub(super) fn recompute_user(conn: &Connection, user_id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM battery_buckets WHERE user_id = ?1", [user_id])?;
    conn.execute(&bucket_rows_sql("user_id = ?1"), [user_id])
        .map(drop)
}

fn bucket_from_row(row: &Row<'_>, user_id: &str) -> rusqlite::Result<Bucket> {
    let f = Fields::new(row, "battery_buckets", Key::Text(user_id));
    let mut counters = [0; COUNTER_COUNT];
    for (i, c) in counters.iter_mut().enumerate() {
        *c = f.get(1 + i)?;
    }
    let at = 1 + COUNTER_COUNT;
    let level = |index: usize| -> rusqlite::Result<i32> {
        let raw: i64 = f.get(index)?;
        f.check(index, stored_level(raw).map(|l| l.value()))
    };
    Ok(Bucket {
        bucket: f.get(0)?,
        counters,
        lowest: level(at)?,
        highest: level(at + 1)?,
        closing_level: level(at + 2)?,
        closing_at: f.get(at + 3)?,
        closing_seq: f.get(at + 4)?,
        last_seq: f.get(at + 5)?,
    })
}

#[async_trait]
impl InsightStore for SqliteStore {
    async fn battery_buckets(
        &self,
        user_id: &str,
        from: i64,
        to: i64,
    ) -> StoreResult<StoredBuckets> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let carried: Option<i32> = conn
                .prepare_cached(
                    "SELECT closing_level FROM battery_buckets WHERE user_id = ?1 AND bucket < ?2 \
                     ORDER BY bucket DESC LIMIT 1",
                )?
                .query_row(params![user_id, from], |row| {
                    let f = Fields::new(row, "battery_buckets", Key::Text(&user_id));
                    let raw: i64 = f.get(0)?;
                    f.check(0, stored_level(raw).map(|l| l.value()))
                })
                .optional()?;
            let buckets = conn
                .prepare_cached(&format!(
                    "SELECT {} FROM battery_buckets WHERE user_id = ?1 AND bucket >= ?2 AND bucket < ?3 \
                     ORDER BY bucket",
                    columns()
                ))?
                .query_map(params![user_id, from, to], |row| bucket_from_row(row, &user_id))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(StoredBuckets { carried, buckets })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> String {
        sql.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// A database at migration 8 with two users' events; migration 0009 gives it the
    /// buckets that the history recomputed from scratch has.
    #[test]
    fn migration_0009_fills_the_buckets_of_existing_histories() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &super::super::MIGRATIONS[..8] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 8).unwrap();
        let base = 1_780_000_000_000_i64;
        for (u, user) in ["a", "b"].into_iter().enumerate() {
            conn.execute(
                "INSERT INTO users (id, email, hashed_password, created_at, updated_at) \
                 VALUES (?1, ?1 || '@example.com', 'x', 0, 0)",
                [user],
            )
            .unwrap();
            let mut level = 70_i64;
            for seq in 1..=40_i64 {
                let (kind, delta) = match seq % 4 {
                    0 => ("depletion", -(seq % 30) - 1),
                    1 => ("recharge", seq % 17 + 1),
                    2 => ("sleep", [50, 10, -5][(seq as usize / 2) % 3]),
                    _ => ("set", 0),
                };
                let after = (level + delta).clamp(0, 100);
                let quality = (kind == "sleep").then_some(match delta {
                    50 => "good",
                    10 => "medium",
                    _ => "bad",
                });
                let channel = ["call", "video"].get(seq as usize % 3).copied();
                conn.execute(
                    "INSERT INTO battery_events (id, user_id, seq, kind, energy_impact, sleep_quality, \
                     target_level, energy_delta, level_before, level_after, duration_minutes, \
                     occurred_at, recorded_at, interaction_type) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 60, ?11, ?11, ?12)",
                    params![
                        format!("{user}-{seq}"),
                        user,
                        seq,
                        kind,
                        matches!(kind, "depletion" | "recharge").then_some(delta.abs()),
                        quality,
                        (kind == "set").then_some(after),
                        after - level,
                        level,
                        after,
                        // Out of order in time, several per quarter hour, ties included.
                        base + (u as i64 + 1) * ((seq * 7_919) % 23) * 4 * 60_000,
                        channel,
                    ],
                )
                .unwrap();
                level = after;
            }
        }
        super::super::migrate(&mut conn).unwrap();
        for user in ["a", "b"] {
            let events: Vec<crate::store::BatteryEvent> = conn
                .prepare(&format!(
                    "SELECT {} FROM battery_events WHERE user_id = ?1",
                    super::super::battery::EVENT_COLUMNS
                ))
                .unwrap()
                .query_map([user], super::super::battery::event_from_row)
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let entries: Vec<Entry> = events.iter().map(Entry::from).collect();
            let stored: Vec<Bucket> = conn
                .prepare(&format!(
                    "SELECT {} FROM battery_buckets WHERE user_id = ?1 ORDER BY bucket",
                    columns()
                ))
                .unwrap()
                .query_map([user], |row| bucket_from_row(row, user))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(stored, Bucket::all_of(&entries), "user {user}");
            assert!(stored.len() > 5 && stored.len() < 40);
        }
    }

    #[test]
    fn migration_0009_fills_buckets_with_the_recompute_sql() {
        let migration = words(include_str!("../migrations/0009_battery_buckets.sql"));
        let backfill = words(&bucket_rows_sql("1"));
        assert!(
            migration.contains(&format!("{backfill};")),
            "migration 0009 must end with:\n{backfill};"
        );
    }
}
