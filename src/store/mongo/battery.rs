//! The battery in MongoDB: the level, `battery_seq` and running totals
//! (`battery_stats.<kind>`) on the user document, the history in `battery_events`
//! ([`EventDoc`]), and `Idempotency-Key`s in `idempotency_keys` ([`KeyDoc`]).
//!
//! Recording is lock-free: the event is inserted with the user's next `seq` under a
//! unique `(user_id, seq)` index, which admits exactly one writer per step; the user
//! document then advances with a `battery_seq` precondition. A writer that dies between
//! the two steps leaves an event ahead of its user; the next record for that user rolls
//! the user forward from it before going on, so nothing is lost. Keys are claimed by
//! inserting the key document first (unique `_id`), so parallel requests with one key
//! record one event.
//!
//! Corrections take part in the same protocol through `battery_version` on the user: a
//! correction advances it together with the new level and running totals (precondition:
//! the `battery_seq` and `battery_version` it read), and a record advances the user only
//! from the `(battery_seq, battery_version)` its event was computed against (each event
//! keeps that `version`). A record that raced a correction finds the version moved, so
//! its event is computed again from the corrected level before the user advances: no
//! update is lost and none is applied to a stale level. The later records' new levels are
//! written after the user document moved (their plan, `battery_replay`, is on it), by the
//! correction itself or, if it stopped half-way, by the next correction of that user;
//! every event write is conditional on an older `version`, so a late writer never
//! overwrites a newer replay. An event is stamped (`recorded_at`) after reading the position its
//! insert claims, never earlier than the previous event's, so acceptance order and
//! `recorded_at` agree. History is read in timeline order (`occurred_at`, then `seq`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{InsertOneModel, UpdateModifications, UpdateOneModel, WriteModel};
use serde::{Deserialize, Serialize};

use super::users::level_of;
use super::{bdt, decode, read, user_filter, utc, MongoStore};
use super::{EVENTS, IDEMPOTENCY, MAX_RETRIES, USERS};
use crate::battery::insights::{bucket_of, Entry};
use crate::battery::{
    self, Applied, BatteryLevel, Channel, InteractionKind, KindTotals, SleepQuality, Totals,
};
use crate::store::battery::{stored_level, InteractionColumns};
use crate::store::{
    replay_correction, BatteryEvent, BatteryPosition, BatteryStore, BatterySummary, Correction,
    CorrectionOutcome, HistoryCursor, HistoryFilter, IdempotencyKey, NewBatteryEvent,
    RecordOutcome, StoreError, StoreResult,
};

/// A document of `battery_events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EventDoc {
    #[serde(rename = "_id")]
    id: String,
    user_id: String,
    seq: i64,
    kind: InteractionKind,
    energy_impact: Option<i32>,
    sleep_quality: Option<SleepQuality>,
    target_level: Option<i32>,
    name: Option<String>,
    energy_delta: i32,
    level_before: i32,
    level_after: i32,
    duration_minutes: i32,
    occurred_at: mongodb::bson::DateTime,
    recorded_at: mongodb::bson::DateTime,
    notes: Option<String>,
    people_count: Option<i32>,
    interaction_type: Option<Channel>,
    /// The user's `battery_version` the levels were computed against (absent: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
    /// Set when a roll-forward computed the levels again: the event's own writer may have
    /// added it to its insights bucket with the old ones, so the bucket is recomputed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relevelled: Option<bool>,
}

impl EventDoc {
    /// This document, its levels computed against the user's `battery_version` `version`.
    fn versioned(mut self, version: i64) -> Self {
        self.version = Some(version);
        self
    }

    /// The one [`BatteryEvent`] → document mapping.
    pub(super) fn of(event: &BatteryEvent) -> Self {
        let columns = InteractionColumns::from(&event.interaction);
        Self {
            id: event.id.clone(),
            user_id: event.user_id.clone(),
            seq: event.seq,
            kind: columns.kind,
            energy_impact: columns.energy_impact,
            sleep_quality: columns.sleep_quality,
            target_level: columns.target_level,
            name: event.name.clone(),
            energy_delta: event.energy_delta,
            level_before: event.level_before.value(),
            level_after: event.level_after.value(),
            duration_minutes: event.duration_minutes,
            occurred_at: bdt(event.occurred_at),
            recorded_at: bdt(event.recorded_at),
            notes: event.notes.clone(),
            people_count: event.people_count,
            interaction_type: event.interaction_type,
            version: None,
            relevelled: None,
        }
    }

    /// The one document → [`BatteryEvent`] mapping.
    pub(super) fn into_event(self) -> Result<BatteryEvent, String> {
        let columns = InteractionColumns {
            kind: self.kind,
            energy_impact: self.energy_impact,
            sleep_quality: self.sleep_quality,
            target_level: self.target_level,
        };
        let level =
            |field: &str, raw: i32| stored_level(raw.into()).map_err(|e| format!("{field}: {e}"));
        Ok(BatteryEvent {
            interaction: columns.interaction()?,
            level_before: level("level_before", self.level_before)?,
            level_after: level("level_after", self.level_after)?,
            occurred_at: utc(self.occurred_at).map_err(|e| format!("occurred_at: {e}"))?,
            recorded_at: utc(self.recorded_at).map_err(|e| format!("recorded_at: {e}"))?,
            id: self.id,
            user_id: self.user_id,
            seq: self.seq,
            name: self.name,
            energy_delta: self.energy_delta,
            duration_minutes: self.duration_minutes,
            notes: self.notes,
            people_count: self.people_count,
            interaction_type: self.interaction_type,
        })
    }
}

/// A document of `idempotency_keys`.
#[derive(Debug, Serialize, Deserialize)]
struct KeyDoc {
    /// `user_id:key`.
    #[serde(rename = "_id")]
    id: String,
    user_id: String,
    request_hash: String,
    event_id: String,
    /// TTL-indexed (a day).
    created_at: mongodb::bson::DateTime,
}

/// The battery fields of a user document (a projection of `UserDoc`).
#[derive(Debug, Deserialize)]
struct PositionDoc {
    battery_level: Option<i32>,
    #[serde(default)]
    social_battery_level: Option<Bson>,
    battery_seq: Option<i64>,
    /// Advanced by every correction (absent: 0).
    #[serde(default)]
    battery_version: Option<i64>,
    /// A correction whose later records are still being replayed.
    #[serde(default)]
    battery_replay: Option<ReplayDoc>,
    /// The running totals (read by corrections only).
    #[serde(default)]
    battery_stats: Option<BTreeMap<String, TotalsDoc>>,
    /// The previous event's `recorded_at`.
    #[serde(default)]
    battery_updated_at: Option<mongodb::bson::DateTime>,
}

impl PositionDoc {
    /// The level at `battery_seq`.
    fn level(&self, user_id: &str) -> StoreResult<BatteryLevel> {
        level_of(self.battery_level, self.social_battery_level.as_ref())
            .map_err(|reason| StoreError::corrupt(USERS, user_id, reason))
    }

    fn seq(&self) -> i64 {
        self.battery_seq.unwrap_or(0)
    }

    fn version(&self) -> i64 {
        self.battery_version.unwrap_or(0)
    }

    /// The running totals as stored.
    fn totals(&self, user_id: &str) -> StoreResult<KindTotals> {
        let mut totals = KindTotals::default();
        for (kind, stored) in self.battery_stats.iter().flatten() {
            let kind: InteractionKind = kind.parse().map_err(|reason| {
                StoreError::corrupt(USERS, user_id, format_args!("battery_stats: {reason}"))
            })?;
            totals.set(
                kind,
                Totals {
                    count: stored.count,
                    total_positive: stored.total_positive,
                    total_negative: stored.total_negative,
                    level_sum: stored.level_sum,
                },
            );
        }
        Ok(totals)
    }
}

/// The fields of the user document a battery write reads.
fn position_fields() -> Document {
    doc! {
        "battery_level": 1, "social_battery_level": 1, "battery_seq": 1,
        "battery_version": 1, "battery_updated_at": 1,
    }
}

/// A correction's plan for the later records, kept on the user document
/// (`battery_replay`) until they are written: replay the events `from_seq..=through_seq`
/// from `start_level`, with `target` replaced by `replacement` or deleted. Everything in
/// it is fixed when the user document moves, so finishing it is idempotent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReplayDoc {
    /// The user's `battery_version` the correction moved to.
    version: i64,
    target: String,
    replacement: Option<EventDoc>,
    from_seq: i64,
    through_seq: i64,
    start_level: i32,
    /// The insights bucket the corrected record was in (absent in plans written before
    /// buckets existed).
    #[serde(default)]
    old_bucket: Option<i64>,
}

/// Matches an event whose levels were computed against a version older than `version`.
fn older_than(id: &str, version: i64) -> Document {
    doc! { "_id": id, "$or": [
        { "version": { "$lt": version } },
        { "version": { "$exists": false } },
    ] }
}

/// The running totals of a user document: `battery_stats.<kind>`.
#[derive(Debug, Deserialize)]
struct StatsDoc {
    #[serde(default)]
    battery_stats: Option<BTreeMap<String, TotalsDoc>>,
}

/// [`Totals`] as stored (in `battery_stats.<kind>` and out of aggregations).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TotalsDoc {
    count: i64,
    total_positive: i64,
    total_negative: i64,
    level_sum: i64,
}

impl From<TotalsDoc> for Totals {
    fn from(d: TotalsDoc) -> Self {
        Totals {
            count: d.count,
            total_positive: d.total_positive,
            total_negative: d.total_negative,
            level_sum: d.level_sum,
        }
    }
}

/// A `$group` stage's accumulators computing [`TotalsDoc`] over events, by the
/// definitions of `Totals::of` (tests/store checks they agree with the running totals).
fn totals_group(id: Bson) -> Document {
    doc! {
        "_id": id,
        "count": { "$sum": 1_i64 },
        "total_positive": { "$sum": { "$max": ["$energy_delta", 0_i64] } },
        "total_negative": { "$sum": { "$max": [{ "$multiply": ["$energy_delta", -1_i64] }, 0_i64] } },
        "level_sum": { "$sum": "$level_after" },
    }
}

/// [`TotalsDoc`] of one kind, out of a `$group` by kind.
#[derive(Debug, Deserialize)]
struct KindTotalsRow {
    #[serde(rename = "_id")]
    kind: InteractionKind,
    count: i64,
    total_positive: i64,
    total_negative: i64,
    level_sum: i64,
}

/// `battery_stats` as stored: `{<kind>: {count, total_positive, total_negative,
/// level_sum}}` for each kind that occurred.
pub(super) fn stats_document(totals: &KindTotals) -> Document {
    let mut stats = Document::new();
    for kind in InteractionKind::ALL {
        let t = totals.get(kind);
        if t.count > 0 {
            stats.insert(
                kind.as_str(),
                doc! {
                    "count": t.count, "total_positive": t.total_positive,
                    "total_negative": t.total_negative, "level_sum": t.level_sum,
                },
            );
        }
    }
    stats
}

/// A typed document as BSON (for a bulk write).
fn to_document<T: Serialize>(value: &T) -> StoreResult<Document> {
    mongodb::bson::to_document(value).map_err(|e| StoreError::Other(e.into()))
}

/// The update that moves a user from `seq - 1` to `seq` by an applied interaction.
fn advance_update(
    seq: i64,
    kind: InteractionKind,
    applied: &Applied,
    at: DateTime<Utc>,
) -> Document {
    let kind = kind.as_str();
    let totals = Totals::of(applied);
    doc! {
        "$set": {
            "battery_level": applied.level_after.value(),
            "battery_seq": seq,
            "battery_updated_at": bdt(at),
        },
        "$inc": {
            format!("battery_stats.{kind}.count"): totals.count,
            format!("battery_stats.{kind}.total_positive"): totals.total_positive,
            format!("battery_stats.{kind}.total_negative"): totals.total_negative,
            format!("battery_stats.{kind}.level_sum"): totals.level_sum,
        },
    }
}

/// Matches a user whose battery is at `seq` (a legacy document without the field is at 0).
fn at_seq(user_id: &str, seq: i64) -> Document {
    let mut filter = user_filter(user_id);
    if seq == 0 {
        filter.insert(
            "$or",
            vec![
                Bson::Document(doc! { "battery_seq": 0_i64 }),
                Bson::Document(doc! { "battery_seq": { "$exists": false } }),
            ],
        );
    } else {
        filter.insert("battery_seq", seq);
    }
    filter
}

/// Matches a user whose battery is at `seq` and `version` (absent counts as 0 for both;
/// so does a `null` version, as a typed user document without one may write it).
fn at_position(user_id: &str, seq: i64, version: i64) -> Document {
    let mut filter = at_seq(user_id, seq);
    let version_clause = if version == 0 {
        doc! { "$or": [
            { "battery_version": 0_i64 },
            { "battery_version": { "$exists": false } },
            { "battery_version": Bson::Null },
        ] }
    } else {
        doc! { "battery_version": version }
    };
    match filter.remove("$or") {
        Some(seq_clause) => {
            filter.insert(
                "$and",
                vec![
                    Bson::Document(doc! { "$or": seq_clause }),
                    Bson::Document(version_clause),
                ],
            );
        }
        None => filter.extend(version_clause),
    }
    filter
}

/// The query of a history filter. Each bound on `occurred_at` is a clause of its own
/// under `$and`: MongoDB plans that exactly like one `{$gte, $lte}` range, while
/// SecantusDB (the test server) drops boundary values of a range on a compound index's
/// middle field when written as one (docs/mongodb.md, "Tested against SecantusDB").
pub(super) fn history_filter(user_id: &str, filter: &HistoryFilter) -> Document {
    let mut query = doc! { "user_id": user_id };
    if let Some(kind) = filter.kind {
        query.insert("kind", kind.as_str());
    }
    let mut bounds = Vec::new();
    if let Some(from) = filter.from {
        bounds.push(Bson::Document(
            doc! { "occurred_at": { "$gte": bdt(from) } },
        ));
    }
    if let Some(to) = filter.to {
        bounds.push(Bson::Document(doc! { "occurred_at": { "$lte": bdt(to) } }));
    }
    if !bounds.is_empty() {
        query.insert("$and", bounds);
    }
    query
}

impl MongoStore {
    /// Totals per kind of the events `filter` matches, aggregated in the database.
    pub(super) async fn aggregate_totals(&self, filter: Document) -> StoreResult<KindTotals> {
        let pipeline = vec![
            doc! { "$match": filter },
            doc! { "$group": totals_group(Bson::String("$kind".into())) },
        ];
        let cursor = self
            .run(
                self.c(EVENTS)
                    .aggregate(pipeline)
                    .with_type::<mongodb::bson::RawDocumentBuf>(),
            )
            .await?;
        let rows: Vec<KindTotalsRow> = self
            .read_all(EVENTS, cursor, |row: KindTotalsRow| Ok(row))
            .await?;
        let mut totals = KindTotals::default();
        for row in rows {
            let stored = TotalsDoc {
                count: row.count,
                total_positive: row.total_positive,
                total_negative: row.total_negative,
                level_sum: row.level_sum,
            };
            totals.set(row.kind, stored.into());
        }
        Ok(totals)
    }

    /// The battery fields of a user document; `None` for a missing user.
    async fn position(&self, user_id: &str) -> StoreResult<Option<PositionDoc>> {
        let raw = self
            .run(
                self.raw(USERS)
                    .find_one(user_filter(user_id))
                    .projection(position_fields()),
            )
            .await?;
        raw.map(|raw| decode(USERS, &raw)).transpose()
    }

    /// Moves a user whose battery is stuck at `seq` forward by the event at `seq + 1`
    /// (its writer stopped between inserting the event and updating the user, or is
    /// computing it again after a correction). The event's levels are computed again
    /// from the user's current position first unless they were computed against it.
    async fn roll_forward(&self, user_id: &str, seq: i64) -> StoreResult<()> {
        match self.position(user_id).await? {
            Some(position) if position.seq() == seq => {
                self.roll_forward_from(user_id, &position).await
            }
            _ => Ok(()),
        }
    }

    /// [`roll_forward`](Self::roll_forward) from a position read before (perhaps stale:
    /// every write below is conditional on it, so a stale one changes nothing).
    async fn roll_forward_from(&self, user_id: &str, position: &PositionDoc) -> StoreResult<()> {
        let seq = position.seq();
        let next = self
            .run(
                self.raw(EVENTS)
                    .find_one(doc! { "user_id": user_id, "seq": seq + 1 }),
            )
            .await?;
        let Some(raw) = next else {
            return Ok(());
        };
        let stored: EventDoc = decode(EVENTS, &raw)?;
        let computed_against = stored.version.unwrap_or(0);
        let mut relevelled = stored.relevelled == Some(true);
        let event = read(EVENTS, &raw, EventDoc::into_event)?;
        let version = position.version();
        let applied = battery::apply(position.level(user_id)?, &event.interaction);
        if computed_against != version || applied != event.applied() {
            self.run(self.c(EVENTS).update_one(
                older_than(&event.id, version),
                doc! { "$set": {
                    "level_before": applied.level_before.value(),
                    "level_after": applied.level_after.value(),
                    "energy_delta": applied.energy_delta,
                    "version": version,
                    "relevelled": true,
                } },
            ))
            .await?;
            relevelled = true;
        }
        // Its insights bucket, before the user advances. Levels computed again: from the
        // events (its writer may have added it with the old ones). Else the same guarded
        // increment its writer sends, which adds it once whoever gets there first, sent
        // with the advance.
        if relevelled {
            self.recompute_buckets(
                user_id,
                &BTreeSet::from([bucket_of(event.occurred_at)]),
                event.seq,
            )
            .await?;
        }
        let update = advance_update(
            event.seq,
            event.interaction.kind(),
            &applied,
            event.recorded_at,
        );
        let at = at_position(user_id, seq, version);
        if relevelled {
            self.run(self.c(USERS).update_one(at, update)).await?;
        } else {
            let entry = Entry {
                energy_delta: applied.energy_delta,
                level_after: applied.level_after.value(),
                ..Entry::from(&event)
            };
            self.add_and_advance(user_id, &entry, at, update).await?;
        }
        Ok(())
    }

    /// After a record's own advance of the user matched nothing: either another writer
    /// rolled the user forward over it (the event as stored is the answer), or a
    /// correction moved the level under it (compute it again and advance).
    async fn settle_record(
        &self,
        user_id: &str,
        recorded: &BatteryEvent,
    ) -> StoreResult<RecordOutcome> {
        for _ in 0..MAX_RETRIES {
            let Some(position) = self.position(user_id).await? else {
                // The account was deleted meanwhile, its history with it.
                return Ok(RecordOutcome::UserMissing);
            };
            if position.seq() >= recorded.seq {
                // As stored: the writer that rolled the user forward may have computed
                // it again. Deleted since by a correction: what this writer recorded.
                let raw = self
                    .run(self.raw(EVENTS).find_one(doc! { "_id": &recorded.id }))
                    .await?;
                return Ok(RecordOutcome::Recorded(match raw {
                    Some(raw) => read(EVENTS, &raw, EventDoc::into_event)?,
                    None => recorded.clone(),
                }));
            }
            if position.seq() == recorded.seq - 1 {
                self.roll_forward_from(user_id, &position).await?;
            }
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "battery write contention"
        )))
    }

    /// Writes a correction's later records (see [`ReplayDoc`]) and takes the plan off the
    /// user. Idempotent; each write only replaces what an older version wrote.
    async fn finish_replay(&self, user_id: &str, replay: &ReplayDoc) -> StoreResult<()> {
        let cursor = self
            .run(
                self.raw(EVENTS)
                    .find(doc! { "user_id": user_id, "seq": {
                        "$gte": replay.from_seq, "$lte": replay.through_seq,
                    } })
                    .sort(doc! { "seq": 1 }),
            )
            .await?;
        let events = self.read_all(EVENTS, cursor, EventDoc::into_event).await?;
        let replacement = match &replay.replacement {
            Some(doc) => Some(
                doc.clone()
                    .into_event()
                    .map_err(|reason| StoreError::corrupt(USERS, user_id, reason))?,
            ),
            None => None,
        };
        let mut level = stored_level(replay.start_level.into())
            .map_err(|reason| StoreError::corrupt(USERS, user_id, reason))?;
        // Insights: every bucket of the range, the corrected record's old and new one.
        let mut touched: BTreeSet<i64> = events.iter().map(|e| bucket_of(e.occurred_at)).collect();
        touched.extend(replay.old_bucket);
        touched.extend(replacement.as_ref().map(|e| bucket_of(e.occurred_at)));
        for event in events {
            let base = if event.id == replay.target {
                match &replacement {
                    Some(replacement) => replacement.clone(),
                    None => continue,
                }
            } else {
                event
            };
            let applied = battery::apply(level, &base.interaction);
            level = applied.level_after;
            let new = BatteryEvent {
                level_before: applied.level_before,
                level_after: applied.level_after,
                energy_delta: applied.energy_delta,
                ..base
            };
            self.run(self.typed::<EventDoc>(EVENTS).replace_one(
                older_than(&new.id, replay.version),
                EventDoc::of(&new).versioned(replay.version),
            ))
            .await?;
        }
        if replacement.is_none() {
            self.run(
                self.c(EVENTS)
                    .delete_one(older_than(&replay.target, replay.version)),
            )
            .await?;
        }
        self.recompute_buckets(user_id, &touched, replay.through_seq)
            .await?;
        let mut done = user_filter(user_id);
        done.insert("battery_replay.version", replay.version);
        self.run(
            self.c(USERS)
                .update_one(done, doc! { "$unset": { "battery_replay": "" } }),
        )
        .await?;
        Ok(())
    }

    /// The correction itself, once its key (if any) is claimed.
    async fn correct_claimed(
        &self,
        user_id: &str,
        id: &str,
        correction: &Correction,
    ) -> StoreResult<CorrectionOutcome> {
        for _ in 0..MAX_RETRIES {
            let Some(position) = self.position_with_stats(user_id).await? else {
                return Ok(CorrectionOutcome::NotFound);
            };
            if let Some(replay) = &position.battery_replay {
                // Another correction's later records are still to be written: finish
                // them, so the events read below are final.
                self.finish_replay(user_id, replay).await?;
                continue;
            }
            let target = self
                .run(
                    self.raw(EVENTS)
                        .find_one(doc! { "_id": id, "user_id": user_id }),
                )
                .await?;
            let Some(raw) = target else {
                return Ok(CorrectionOutcome::NotFound);
            };
            let target = read(EVENTS, &raw, EventDoc::into_event)?;
            let (seq, version) = (position.seq(), position.version());
            if target.seq > seq {
                // A record still moving the user forward: settle it first.
                self.roll_forward_from(user_id, &position).await?;
                continue;
            }
            let cursor = self
                .run(
                    self.raw(EVENTS)
                        .find(doc! { "user_id": user_id, "seq": {
                            "$gte": target.seq, "$lte": seq,
                        } })
                        .sort(doc! { "seq": 1 }),
                )
                .await?;
            let events = self.read_all(EVENTS, cursor, EventDoc::into_event).await?;
            if events.first().map(|e| &e.id) != Some(&target.id) {
                continue;
            }
            let replayed = replay_correction(&events, correction);
            let totals = position
                .totals(user_id)?
                .replaced(&replayed.before, &replayed.after);
            let replay = ReplayDoc {
                version: version + 1,
                target: target.id.clone(),
                replacement: match correction {
                    Correction::Delete => None,
                    Correction::Replace(_) => replayed.events.first().map(EventDoc::of),
                },
                from_seq: target.seq,
                through_seq: seq,
                start_level: target.level_before.value(),
                old_bucket: Some(bucket_of(target.occurred_at)),
            };
            let mut filter = at_position(user_id, seq, version);
            filter.insert("battery_replay", doc! { "$exists": false });
            let replay_bson =
                mongodb::bson::to_bson(&replay).map_err(|e| StoreError::Other(e.into()))?;
            let moved = self
                .run(self.c(USERS).update_one(
                    filter,
                    doc! { "$set": {
                        "battery_level": replayed.level.value(),
                        "battery_stats": stats_document(&totals),
                        "battery_version": version + 1,
                        "battery_replay": replay_bson,
                    } },
                ))
                .await?;
            if moved.matched_count == 0 {
                // A record or another correction moved first: read again.
                continue;
            }
            self.finish_replay(user_id, &replay).await?;
            return Ok(match correction {
                Correction::Delete => CorrectionOutcome::Deleted,
                Correction::Replace(_) => CorrectionOutcome::Corrected(
                    replayed
                        .events
                        .into_iter()
                        .next()
                        .expect("a replaced record remains"),
                ),
            });
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "battery correction contention"
        )))
    }

    /// The position with the running totals and any unfinished replay.
    async fn position_with_stats(&self, user_id: &str) -> StoreResult<Option<PositionDoc>> {
        let mut projection = position_fields();
        projection.insert("battery_stats", 1);
        projection.insert("battery_replay", 1);
        let raw = self
            .run(
                self.raw(USERS)
                    .find_one(user_filter(user_id))
                    .projection(projection),
            )
            .await?;
        raw.map(|raw| decode(USERS, &raw)).transpose()
    }

    /// Inserts `claim`, or takes over an expired claim of its key: `None` when it is
    /// this request's now, else the live claim an earlier request holds.
    async fn insert_key_claim(
        &self,
        claim: &KeyDoc,
        not_before: DateTime<Utc>,
    ) -> StoreResult<Option<KeyDoc>> {
        let keys = self.typed::<KeyDoc>(IDEMPOTENCY);
        for _ in 0..MAX_RETRIES {
            match self.run(keys.insert_one(claim)).await {
                Ok(_) => return Ok(None),
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            let Some(raw) = self
                .run(self.raw(IDEMPOTENCY).find_one(doc! { "_id": &claim.id }))
                .await?
            else {
                continue;
            };
            let existing: KeyDoc = decode(IDEMPOTENCY, &raw)?;
            if utc(existing.created_at).map_or(true, |at| at < not_before) {
                // Expired: take it over, if nobody else did.
                let taken = self
                    .run(keys.replace_one(
                        doc! { "_id": &claim.id, "created_at": existing.created_at },
                        claim,
                    ))
                    .await?;
                if taken.matched_count == 1 {
                    return Ok(None);
                }
                continue;
            }
            return Ok(Some(existing));
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "idempotency key contention"
        )))
    }

    /// Claims `key` for a correction of `target`; `Err(outcome)` when the request was seen.
    async fn claim_correction_key(
        &self,
        user_id: &str,
        key: &IdempotencyKey,
        target: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), CorrectionOutcome>> {
        let claim = Self::key_doc(user_id, key, target, now);
        let Some(existing) = self.insert_key_claim(&claim, key.not_before).await? else {
            return Ok(Ok(()));
        };
        if existing.request_hash != key.request_hash {
            return Ok(Err(CorrectionOutcome::KeyReused));
        }
        let now = self.battery_event(user_id, &existing.event_id).await?;
        Ok(Err(CorrectionOutcome::Replayed(now)))
    }

    /// Claims an idempotency key for `event_id`; `Err(outcome)` when the request was seen.
    async fn claim_key(
        &self,
        user_id: &str,
        key: &IdempotencyKey,
        event_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), RecordOutcome>> {
        let claim = Self::key_doc(user_id, key, event_id, now);
        for _ in 0..MAX_RETRIES {
            let Some(existing) = self.insert_key_claim(&claim, key.not_before).await? else {
                return Ok(Ok(()));
            };
            if existing.request_hash != key.request_hash {
                return Ok(Err(RecordOutcome::KeyReused));
            }
            // The first request may still be writing its event: wait for it briefly.
            for _ in 0..40 {
                if let Some(raw) = self
                    .run(
                        self.raw(EVENTS)
                            .find_one(doc! { "_id": &existing.event_id }),
                    )
                    .await?
                {
                    let original = read(EVENTS, &raw, EventDoc::into_event)?;
                    return Ok(Err(RecordOutcome::Replayed(original)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Its writer is gone without an event: take the claim over.
            let taken = self
                .run(self.typed::<KeyDoc>(IDEMPOTENCY).replace_one(
                    doc! { "_id": &claim.id, "event_id": &existing.event_id },
                    &claim,
                ))
                .await?;
            if taken.matched_count == 1 {
                return Ok(Ok(()));
            }
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "idempotency key contention"
        )))
    }

    /// Gives up a key claimed for `event_id` (the record did not happen).
    async fn release_key(
        &self,
        user_id: &str,
        key: &IdempotencyKey,
        event_id: &str,
    ) -> StoreResult<()> {
        self.run(
            self.c(IDEMPOTENCY)
                .delete_one(doc! { "_id": format!("{user_id}:{}", key.key), "event_id": event_id }),
        )
        .await
        .map(drop)
    }
}

impl MongoStore {
    /// The claim of `key` for `event_id`, as stored.
    fn key_doc(user_id: &str, key: &IdempotencyKey, event_id: &str, now: DateTime<Utc>) -> KeyDoc {
        KeyDoc {
            id: format!("{user_id}:{}", key.key),
            user_id: user_id.to_owned(),
            request_hash: key.request_hash.clone(),
            event_id: event_id.to_owned(),
            created_at: bdt(now),
        }
    }

    /// Records `event` once its key (if any) is claimed: reads the user's position,
    /// inserts the next step, advances the user; retries on a taken step.
    async fn record_claimed(
        &self,
        user_id: &str,
        event: &NewBatteryEvent,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<RecordOutcome> {
        let release = || async {
            match key {
                Some(key) => self.release_key(user_id, key, &event.id).await,
                None => Ok(()),
            }
        };
        for _ in 0..MAX_RETRIES {
            let Some(position) = self.position(user_id).await? else {
                release().await?;
                return Ok(RecordOutcome::UserMissing);
            };
            let level = position.level(user_id)?;
            let (seq, version) = (position.seq(), position.version());
            let applied = battery::apply(level, &event.interaction);
            // Stamped after reading the position that the insert below claims: if the
            // insert wins step `seq + 1`, the previous event is the one read here.
            let previous = position.battery_updated_at.and_then(|at| utc(at).ok());
            let recorded_at = event.stamp(previous);
            let recorded = event
                .clone()
                .recorded(user_id, seq + 1, applied, recorded_at);
            match self
                .run(
                    self.typed::<EventDoc>(EVENTS)
                        .insert_one(EventDoc::of(&recorded).versioned(version)),
                )
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => {
                    // Another writer holds this step; make sure it is not stuck, then retry.
                    self.roll_forward_from(user_id, &position).await?;
                    continue;
                }
                Err(e @ StoreError::Unavailable(_)) => {
                    // Not sent: nothing was written, the key is free again.
                    let _ = release().await;
                    return Err(e);
                }
                // Perhaps written: the claimed key stays, so a retry with it finds the
                // event (or, if there is none, takes the claim over).
                Err(e) => return Err(e),
            }
            // The bucket before the user advances: if this stops in between, the
            // roll-forward adds it (once).
            let advanced = self
                .add_and_advance(
                    user_id,
                    &Entry::from(&recorded),
                    at_position(user_id, seq, version),
                    advance_update(
                        recorded.seq,
                        recorded.interaction.kind(),
                        &applied,
                        recorded.recorded_at,
                    ),
                )
                .await?;
            if advanced {
                return Ok(RecordOutcome::Recorded(recorded));
            }
            // Rolled forward by another writer, or a correction moved the level first.
            return self.settle_record(user_id, &recorded).await;
        }
        let _ = release().await;
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "battery write contention"
        )))
    }
}

#[async_trait]
impl BatteryStore for MongoStore {
    #[tracing::instrument(skip_all)]
    async fn record_interaction(
        &self,
        user_id: &str,
        event: &NewBatteryEvent,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<RecordOutcome> {
        if let Some(key) = key {
            if let Err(outcome) = self
                .claim_key(user_id, key, &event.id, event.recorded_at)
                .await?
            {
                return Ok(outcome);
            }
        }
        self.record_claimed(user_id, event, key).await
    }

    /// From a position the caller has just read, on MongoDB 8.0+: one `bulkWrite` that
    /// claims the key (if any), inserts the next step, adds it to its insights bucket
    /// (`insights.rs`) and advances the user, in that
    /// order (so the request costs two round trips with its authenticated read). A
    /// refused write stops the ones after it: a key already claimed goes the way of
    /// [`record_interaction`](BatteryStore::record_interaction) (replay, reuse,
    /// take-over), a step already taken starts over from the stored position.
    #[tracing::instrument(skip_all)]
    async fn record_interaction_at(
        &self,
        user_id: &str,
        seen: BatteryPosition,
        event: &NewBatteryEvent,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<RecordOutcome> {
        if !self.features().await?.client_bulk_write() {
            return self.record_interaction(user_id, event, key).await;
        }
        let applied = battery::apply(seen.level, &event.interaction);
        let recorded_at = event.stamp(seen.updated_at);
        let recorded = event
            .clone()
            .recorded(user_id, seen.seq + 1, applied, recorded_at);
        let mut writes: Vec<WriteModel> = Vec::with_capacity(4);
        if let Some(key) = key {
            let claim = Self::key_doc(user_id, key, &event.id, event.recorded_at);
            writes.push(
                InsertOneModel::builder()
                    .namespace(self.namespace(IDEMPOTENCY))
                    .document(to_document(&claim)?)
                    .build()
                    .into(),
            );
        }
        let step = writes.len();
        writes.push(
            InsertOneModel::builder()
                .namespace(self.namespace(EVENTS))
                .document(to_document(
                    &EventDoc::of(&recorded).versioned(seen.version),
                )?)
                .build()
                .into(),
        );
        // The event's insights bucket, before the user advances (see `insights.rs`).
        writes.push(self.bucket_write(user_id, &Entry::from(&recorded)));
        writes.push(
            UpdateOneModel::builder()
                .namespace(self.namespace(USERS))
                .filter(at_position(user_id, seen.seq, seen.version))
                .update(UpdateModifications::Document(advance_update(
                    recorded.seq,
                    recorded.interaction.kind(),
                    &applied,
                    recorded.recorded_at,
                )))
                .build()
                .into(),
        );
        match self.bulk_write(writes).await {
            // The bucket's upsert counts one; the user's update one more if it matched.
            Ok(Ok(2)) => Ok(RecordOutcome::Recorded(recorded)),
            // The update matched nothing: rolled forward by another writer, or a
            // correction moved the level since `seen` (see `record_claimed`).
            Ok(Ok(_)) => self.settle_record(user_id, &recorded).await,
            Ok(Err(failed)) if failed.duplicate && failed.index < step => {
                self.record_interaction(user_id, event, key).await
            }
            // Two first upserts of one bucket: the event is in, settle it.
            Ok(Err(failed)) if failed.duplicate && failed.index > step => {
                self.settle_record(user_id, &recorded).await
            }
            Ok(Err(failed)) if failed.duplicate => {
                self.roll_forward(user_id, seen.seq).await?;
                self.record_claimed(user_id, event, key).await
            }
            Ok(Err(failed)) => {
                if let Some(key) = key.filter(|_| failed.index >= step) {
                    let _ = self.release_key(user_id, key, &event.id).await;
                }
                Err(StoreError::Other(anyhow::anyhow!(
                    "recording an interaction: write {} refused: {}",
                    failed.index,
                    failed.message
                )))
            }
            Err(e) => {
                if let Some(key) = key {
                    let _ = self.release_key(user_id, key, &event.id).await;
                }
                Err(e)
            }
        }
    }

    async fn battery_event(&self, user_id: &str, id: &str) -> StoreResult<Option<BatteryEvent>> {
        let raw = self
            .run(
                self.raw(EVENTS)
                    .find_one(doc! { "_id": id, "user_id": user_id }),
            )
            .await?;
        raw.map(|raw| read(EVENTS, &raw, EventDoc::into_event))
            .transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn correct_interaction(
        &self,
        user_id: &str,
        id: &str,
        correction: &Correction,
        key: Option<&IdempotencyKey>,
        now: DateTime<Utc>,
    ) -> StoreResult<CorrectionOutcome> {
        if let Some(key) = key {
            if let Err(outcome) = self.claim_correction_key(user_id, key, id, now).await? {
                return Ok(outcome);
            }
        }
        let outcome = self.correct_claimed(user_id, id, correction).await;
        if let (Some(key), Ok(CorrectionOutcome::NotFound) | Err(_)) = (key, &outcome) {
            // Nothing was corrected, or perhaps only part of it: the key is free again,
            // so a retry with it corrects (again) rather than answer a replay of a
            // correction that may not have happened. Applying a correction twice ends
            // in the same state.
            let _ = self.release_key(user_id, key, id).await;
        }
        outcome
    }

    async fn battery_history(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
        after: Option<HistoryCursor>,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        let mut query = history_filter(user_id, filter);
        if let Some(after) = after {
            // An index bound `occurred_at <= t`; the tie at `t` is cut by `seq`.
            let at = bdt(after.occurred_at);
            let mut clauses = match query.remove("$and") {
                Some(Bson::Array(clauses)) => clauses,
                _ => Vec::new(),
            };
            clauses.push(Bson::Document(doc! { "occurred_at": { "$lte": at } }));
            clauses.push(Bson::Document(doc! { "$or": [
                { "occurred_at": { "$lt": at } },
                { "seq": { "$lt": after.seq } },
            ] }));
            query.insert("$and", clauses);
        }
        let cursor = self
            .run(
                self.raw(EVENTS)
                    .find(query)
                    .sort(doc! { "occurred_at": -1, "seq": -1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        self.read_all(EVENTS, cursor, EventDoc::into_event).await
    }

    async fn battery_summary(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
    ) -> StoreResult<BatterySummary> {
        let totals = if filter.from.is_none() && filter.to.is_none() {
            // Running totals on the user document: O(1).
            let user = self
                .run(
                    self.raw(USERS)
                        .find_one(user_filter(user_id))
                        .projection(doc! { "battery_stats": 1 }),
                )
                .await?;
            let mut totals = KindTotals::default();
            if let Some(raw) = user {
                let stats: StatsDoc = decode(USERS, &raw)?;
                for (kind, stored) in stats.battery_stats.unwrap_or_default() {
                    let kind: InteractionKind = kind.parse().map_err(|reason| {
                        StoreError::corrupt(USERS, user_id, format_args!("battery_stats: {reason}"))
                    })?;
                    totals.set(kind, stored.into());
                }
            }
            totals.only(filter.kind)
        } else {
            self.aggregate_totals(history_filter(user_id, filter))
                .await?
        };
        Ok(BatterySummary::of(&totals))
    }
}
