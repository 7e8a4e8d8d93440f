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
//! record one event. An event is stamped (`recorded_at`) after reading the position its
//! insert claims, never earlier than the previous event's, so acceptance order and
//! `recorded_at` agree. History is read in timeline order (`occurred_at`, then `seq`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{InsertOneModel, UpdateModifications, UpdateOneModel, WriteModel};
use serde::{Deserialize, Serialize};

use super::users::level_of;
use super::{bdt, decode, read, user_filter, utc, MongoStore};
use super::{EVENTS, IDEMPOTENCY, MAX_RETRIES, USERS};
use crate::battery::{self, Applied, Channel, InteractionKind, KindTotals, SleepQuality, Totals};
use crate::store::battery::{stored_level, InteractionColumns};
use crate::store::{
    BatteryEvent, BatteryPosition, BatteryStore, BatterySummary, HistoryCursor, HistoryFilter,
    IdempotencyKey, NewBatteryEvent, RecordOutcome, StoreError, StoreResult,
};

/// A document of `battery_events`.
#[derive(Debug, Serialize, Deserialize)]
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
}

impl EventDoc {
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
    /// The previous event's `recorded_at`.
    #[serde(default)]
    battery_updated_at: Option<mongodb::bson::DateTime>,
}

/// The running totals of a user document: `battery_stats.<kind>`.
#[derive(Debug, Deserialize)]
struct StatsDoc {
    #[serde(default)]
    battery_stats: Option<BTreeMap<String, TotalsDoc>>,
}

/// [`Totals`] as stored (in `battery_stats.<kind>` and out of aggregations).
#[derive(Debug, Deserialize)]
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

    /// Moves a user whose battery is stuck at `seq` forward by the event at `seq + 1`
    /// (its writer stopped between inserting the event and updating the user).
    async fn roll_forward(&self, user_id: &str, seq: i64) -> StoreResult<()> {
        let next = self
            .run(
                self.raw(EVENTS)
                    .find_one(doc! { "user_id": user_id, "seq": seq + 1 }),
            )
            .await?;
        let Some(raw) = next else {
            return Ok(());
        };
        let event = read(EVENTS, &raw, EventDoc::into_event)?;
        let update = advance_update(
            event.seq,
            event.interaction.kind(),
            &event.applied(),
            event.recorded_at,
        );
        self.run(self.c(USERS).update_one(at_seq(user_id, seq), update))
            .await?;
        Ok(())
    }

    /// Claims an idempotency key for `event_id`; `Err(outcome)` when the request was seen.
    async fn claim_key(
        &self,
        user_id: &str,
        key: &IdempotencyKey,
        event_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), RecordOutcome>> {
        let keys = self.typed::<KeyDoc>(IDEMPOTENCY);
        let claim = Self::key_doc(user_id, key, event_id, now);
        for _ in 0..MAX_RETRIES {
            match self.run(keys.insert_one(&claim)).await {
                Ok(_) => return Ok(Ok(())),
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
            let expired = utc(existing.created_at).map_or(true, |at| at < key.not_before);
            if expired {
                // Expired: take it over, if nobody else did.
                let taken = self
                    .run(keys.replace_one(
                        doc! { "_id": &claim.id, "created_at": existing.created_at },
                        &claim,
                    ))
                    .await?;
                if taken.matched_count == 1 {
                    return Ok(Ok(()));
                }
                continue;
            }
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
                .run(keys.replace_one(
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
            let user = self
                .run(
                    self.raw(USERS)
                        .find_one(user_filter(user_id))
                        .projection(doc! {
                            "battery_level": 1, "social_battery_level": 1, "battery_seq": 1,
                            "battery_updated_at": 1,
                        }),
                )
                .await?;
            let Some(raw) = user else {
                release().await?;
                return Ok(RecordOutcome::UserMissing);
            };
            let position: PositionDoc = decode(USERS, &raw)?;
            let level = level_of(
                position.battery_level,
                position.social_battery_level.as_ref(),
            )
            .map_err(|reason| StoreError::corrupt(USERS, user_id, reason))?;
            let seq = position.battery_seq.unwrap_or(0);
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
                        .insert_one(EventDoc::of(&recorded)),
                )
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => {
                    // Another writer holds this step; make sure it is not stuck, then retry.
                    self.roll_forward(user_id, seq).await?;
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
            // If this matches nothing, a concurrent writer already rolled us forward.
            self.run(self.c(USERS).update_one(
                at_seq(user_id, seq),
                advance_update(
                    recorded.seq,
                    recorded.interaction.kind(),
                    &applied,
                    recorded.recorded_at,
                ),
            ))
            .await?;
            return Ok(RecordOutcome::Recorded(recorded));
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
    /// claims the key (if any), inserts the next step and advances the user, in that
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
        let mut writes: Vec<WriteModel> = Vec::with_capacity(3);
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
                .document(to_document(&EventDoc::of(&recorded))?)
                .build()
                .into(),
        );
        writes.push(
            UpdateOneModel::builder()
                .namespace(self.namespace(USERS))
                .filter(at_seq(user_id, seen.seq))
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
            // If the update matched nothing, a concurrent writer already rolled us
            // forward (see `record_claimed`).
            Ok(Ok(())) => Ok(RecordOutcome::Recorded(recorded)),
            Ok(Err(failed)) if failed.duplicate && failed.index < step => {
                self.record_interaction(user_id, event, key).await
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
