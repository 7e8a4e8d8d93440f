//! Insights in MongoDB: `battery_buckets`, one document per user and quarter hour with
//! records (`_id` `<user_id>:<bucket>`, fields named by [`COUNTERS`], see
//! docs/mongodb.md "Insights").
//!
//! Keeping them exact without a transaction, in the record path's own terms:
//! - A record adds its event to its bucket with a pipeline update that applies only if
//!   the bucket's `last_seq` is below the event's `seq` ([`increment`]), written after
//!   the event's insert and before the user advances (in the record's one `bulkWrite`,
//!   or with the advance, [`MongoStore::add_and_advance`]),
//!   so a retry, or a roll-forward by another writer, never adds an event twice, and a
//!   writer that stops before the user advanced leaves the bucket to the roll-forward.
//! - Whatever computes an event's levels again (a roll-forward that finds them stale,
//!   marking the event `relevelled`; a correction's replay) recomputes the buckets it
//!   touched from the events ([`MongoStore::recompute_buckets`]). A roll-forward that
//!   finds the levels right sends the writer's own guarded increment.
//!   A recomputed bucket replaces the stored one only if the stored `last_seq` is not
//!   newer than every event the recompute could have missed (`through_seq`, the last
//!   step the writer knows to be final, or the newest event it read); otherwise a record
//!   landed meanwhile and the bucket is read and computed again. Events are inserted
//!   before their bucket update, so a recompute that starts later always sees them.

use std::collections::BTreeSet;

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{UpdateModifications, UpdateOneModel, WriteModel};

use super::{MongoStore, BUCKETS, EVENTS, MAX_RETRIES};
use crate::battery::insights::{
    bucket_of, bucket_start, Entry, StoredBuckets, COUNTERS, COUNTER_COUNT,
};
use crate::store::insights::{Bucket, InsightStore};
use crate::store::{StoreError, StoreResult};

use super::battery::EventDoc;

/// The `_id` of a bucket document.
pub(super) fn bucket_id(user_id: &str, bucket: i64) -> String {
    format!("{user_id}:{bucket}")
}

/// A bucket as stored.
fn bucket_document(user_id: &str, b: &Bucket) -> Document {
    let mut d =
        doc! { "_id": bucket_id(user_id, b.bucket), "user_id": user_id, "bucket": b.bucket };
    for (name, value) in COUNTERS.iter().zip(b.counters) {
        d.insert(*name, value);
    }
    d.insert("lowest", i64::from(b.lowest));
    d.insert("highest", i64::from(b.highest));
    d.insert("closing_level", i64::from(b.closing_level));
    d.insert("closing_at", b.closing_at);
    d.insert("closing_seq", b.closing_seq);
    d.insert("last_seq", b.last_seq);
    d
}

fn int(d: &Document, name: &str) -> Result<i64, String> {
    match d.get(name) {
        Some(Bson::Int64(v)) => Ok(*v),
        Some(Bson::Int32(v)) => Ok(i64::from(*v)),
        other => Err(format!("{name}: not an integer ({other:?})")),
    }
}

fn level(d: &Document, name: &str) -> Result<i32, String> {
    let raw = int(d, name)?;
    crate::store::battery::stored_level(raw)
        .map(|l| l.value())
        .map_err(|e| format!("{name}: {e}"))
}

/// A stored bucket back.
fn bucket_from(d: Document) -> Result<Bucket, String> {
    let mut counters = [0; COUNTER_COUNT];
    for (c, name) in counters.iter_mut().zip(COUNTERS) {
        *c = int(&d, name)?;
    }
    Ok(Bucket {
        bucket: int(&d, "bucket")?,
        counters,
        lowest: level(&d, "lowest")?,
        highest: level(&d, "highest")?,
        closing_level: level(&d, "closing_level")?,
        closing_at: int(&d, "closing_at")?,
        closing_seq: int(&d, "closing_seq")?,
        last_seq: int(&d, "last_seq")?,
    })
}

/// The filter and pipeline update that add `entry` to its bucket once (upsert).
pub(super) fn increment(user_id: &str, entry: &Entry) -> (Document, Vec<Document>) {
    let b = Bucket::of(entry);
    let applies = doc! { "$lt": [{ "$ifNull": ["$last_seq", 0_i64] }, b.last_seq] };
    let later = doc! { "$or": [
        { "$gt": [b.closing_at, { "$ifNull": ["$closing_at", i64::MIN] }] },
        { "$and": [
            { "$eq": [b.closing_at, "$closing_at"] },
            { "$gt": [b.closing_seq, "$closing_seq"] },
        ] },
    ] };
    let mut set = doc! {
        "user_id": { "$literal": user_id },
        "bucket": b.bucket,
    };
    for (name, value) in COUNTERS.iter().zip(b.counters) {
        let field = format!("${name}");
        set.insert(
            *name,
            doc! { "$cond": [&applies, { "$add": [{ "$ifNull": [&field, 0_i64] }, value] }, &field] },
        );
    }
    let level = i64::from(entry.level_after);
    set.insert(
        "lowest",
        doc! { "$cond": [&applies, { "$min": [{ "$ifNull": ["$lowest", level] }, level] }, "$lowest"] },
    );
    set.insert(
        "highest",
        doc! { "$cond": [&applies, { "$max": [{ "$ifNull": ["$highest", level] }, level] }, "$highest"] },
    );
    let closes = doc! { "$and": [&applies, later] };
    for (name, value) in [
        ("closing_level", level),
        ("closing_at", b.closing_at),
        ("closing_seq", b.closing_seq),
    ] {
        set.insert(name, doc! { "$cond": [&closes, value, format!("${name}")] });
    }
    set.insert(
        "last_seq",
        doc! { "$cond": [&applies, b.last_seq, "$last_seq"] },
    );
    (
        doc! { "_id": bucket_id(user_id, b.bucket) },
        vec![doc! { "$set": set }],
    )
}

/// The events of `buckets` (one `$or` of time ranges, each bound a clause of its own as
/// in `history_filter`).
fn events_of(user_id: &str, buckets: &[i64]) -> Document {
    let ranges: Vec<Bson> = buckets
        .iter()
        .map(|b| {
            Bson::Document(doc! { "$and": [
                { "occurred_at": { "$gte": super::bdt(bucket_start(*b)) } },
                { "occurred_at": { "$lt": super::bdt(bucket_start(*b + 1)) } },
            ] })
        })
        .collect();
    doc! { "user_id": user_id, "$or": ranges }
}

impl MongoStore {
    /// The `bulkWrite` model of [`increment`]: adds `entry` to its bucket once (upsert).
    pub(super) fn bucket_write(&self, user_id: &str, entry: &Entry) -> WriteModel {
        let (filter, update) = increment(user_id, entry);
        UpdateOneModel::builder()
            .namespace(self.namespace(BUCKETS))
            .filter(filter)
            .update(UpdateModifications::Pipeline(update))
            .upsert(true)
            .build()
            .into()
    }

    /// Adds `entry` to its bucket once, then applies `advance` to the user matched by
    /// `at`: one `bulkWrite` where the server has it, else two writes in that order.
    /// Whether the user's update matched.
    pub(super) async fn add_and_advance(
        &self,
        user_id: &str,
        entry: &Entry,
        at: Document,
        advance: Document,
    ) -> StoreResult<bool> {
        if !self.features().await?.client_bulk_write() {
            let (filter, update) = increment(user_id, entry);
            self.run(self.c(BUCKETS).update_one(filter, update).upsert(true))
                .await?;
            let moved = self
                .run(self.c(super::USERS).update_one(at, advance))
                .await?;
            return Ok(moved.matched_count == 1);
        }
        for _ in 0..MAX_RETRIES {
            let writes: Vec<WriteModel> = vec![
                self.bucket_write(user_id, entry),
                UpdateOneModel::builder()
                    .namespace(self.namespace(super::USERS))
                    .filter(at.clone())
                    .update(UpdateModifications::Document(advance.clone()))
                    .build()
                    .into(),
            ];
            match self.bulk_write(writes).await? {
                // The bucket's upsert counts one; the user's update one more if it matched.
                Ok(n) => return Ok(n == 2),
                // Two first upserts of one bucket: the other created it; again.
                Err(failed) if failed.duplicate && failed.index == 0 => continue,
                Err(failed) => {
                    return Err(StoreError::Other(anyhow::anyhow!(
                        "advancing a battery: write {} refused: {}",
                        failed.index,
                        failed.message
                    )))
                }
            }
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "battery bucket contention"
        )))
    }

    /// Recomputes `buckets` of `user_id` from the events; every event up to `through_seq`
    /// is final (see the module's comment). Idempotent.
    pub(super) async fn recompute_buckets(
        &self,
        user_id: &str,
        buckets: &BTreeSet<i64>,
        through_seq: i64,
    ) -> StoreResult<()> {
        let all: Vec<i64> = buckets.iter().copied().collect();
        for chunk in all.chunks(64) {
            let mut pending: Vec<i64> = chunk.to_vec();
            for _ in 0..MAX_RETRIES {
                if pending.is_empty() {
                    break;
                }
                let cursor = self
                    .run(self.raw(EVENTS).find(events_of(user_id, &pending)))
                    .await?;
                let events = self.read_all(EVENTS, cursor, EventDoc::into_event).await?;
                let entries: Vec<Entry> = events.iter().map(Entry::from).collect();
                let computed = Bucket::all_of(&entries);
                let mut again = Vec::new();
                for b in &pending {
                    let found = computed.iter().find(|c| c.bucket == *b);
                    if !self.replace_bucket(user_id, *b, found, through_seq).await? {
                        again.push(*b);
                    }
                }
                pending = again;
            }
            if !pending.is_empty() {
                return Err(StoreError::Unavailable(anyhow::anyhow!(
                    "battery bucket contention"
                )));
            }
        }
        Ok(())
    }

    /// Writes one recomputed bucket (`None`: no events, the bucket goes) unless a newer
    /// record landed in it; `false` means compute it again.
    async fn replace_bucket(
        &self,
        user_id: &str,
        bucket: i64,
        computed: Option<&Bucket>,
        through_seq: i64,
    ) -> StoreResult<bool> {
        let id = bucket_id(user_id, bucket);
        let Some(computed) = computed else {
            let gone = self
                .run(
                    self.c(BUCKETS)
                        .delete_one(doc! { "_id": &id, "last_seq": { "$lte": through_seq } }),
                )
                .await?;
            if gone.deleted_count == 1 {
                return Ok(true);
            }
            let left = self
                .run(self.c(BUCKETS).find_one(doc! { "_id": &id }))
                .await?;
            return Ok(left.is_none());
        };
        let guard = computed.last_seq.max(through_seq);
        let document = bucket_document(user_id, computed);
        let replaced = self
            .run(self.c(BUCKETS).replace_one(
                doc! { "_id": &id, "last_seq": { "$lte": guard } },
                document.clone(),
            ))
            .await?;
        if replaced.matched_count == 1 {
            return Ok(true);
        }
        match self.run(self.c(BUCKETS).insert_one(document)).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Buckets for histories recorded before buckets existed: once per database (a
    /// marker in `introgy_meta`), every user's events in time order, each bucket
    /// written by [`recompute`](Self::recompute_buckets)'s rule, so running it again,
    /// or alongside records, changes nothing that is right.
    pub(super) async fn backfill_buckets(&self) -> anyhow::Result<()> {
        const MARKER: &str = "battery_buckets_v1";
        let meta = self.c(super::META);
        if meta.find_one(doc! { "_id": MARKER }).await?.is_some() {
            return Ok(());
        }
        let users: Vec<Bson> = self.c(EVENTS).distinct("user_id", doc! {}).await?;
        for user in users {
            if let Some(user_id) = user.as_str() {
                self.fill_user_buckets(user_id).await?;
            }
        }
        meta.update_one(
            doc! { "_id": MARKER },
            doc! { "$set": { "at": mongodb::bson::DateTime::now() } },
        )
        .upsert(true)
        .await?;
        Ok(())
    }

    /// Writes the buckets of all of `user_id`'s events (in time order, 256 buckets at a
    /// time), each by the rule of [`recompute`](Self::recompute_buckets).
    pub(super) async fn fill_user_buckets(&self, user_id: &str) -> StoreResult<()> {
        let mut cursor = self
            .run(
                self.raw(EVENTS)
                    .find(doc! { "user_id": user_id })
                    .sort(doc! { "occurred_at": 1, "seq": 1 }),
            )
            .await?;
        let mut current: Option<Bucket> = None;
        let mut written = Vec::new();
        while self.run(cursor.advance()).await? {
            let event = super::read(EVENTS, cursor.current(), EventDoc::into_event)?;
            let entry = Entry::from(&event);
            match &mut current {
                Some(b) if b.bucket == bucket_of(entry.occurred_at) => b.add(&entry),
                _ => {
                    if let Some(done) = current.replace(Bucket::of(&entry)) {
                        written.push(done);
                    }
                }
            }
            if written.len() >= 256 {
                self.write_backfilled(user_id, &mut written).await?;
            }
        }
        written.extend(current);
        self.write_backfilled(user_id, &mut written).await
    }

    async fn write_backfilled(&self, user_id: &str, buckets: &mut Vec<Bucket>) -> StoreResult<()> {
        for b in buckets.drain(..) {
            if !self
                .replace_bucket(user_id, b.bucket, Some(&b), b.last_seq)
                .await?
            {
                // A record landed in it meanwhile: compute it again from the events.
                self.recompute_buckets(user_id, &BTreeSet::from([b.bucket]), b.last_seq)
                    .await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl InsightStore for MongoStore {
    async fn battery_buckets(
        &self,
        user_id: &str,
        from: i64,
        to: i64,
    ) -> StoreResult<StoredBuckets> {
        let buckets = self.raw(BUCKETS);
        let before = self.run(
            buckets
                .find_one(doc! { "user_id": user_id, "bucket": { "$lt": from } })
                .sort(doc! { "bucket": -1 })
                .projection(doc! { "closing_level": 1 }),
        );
        let range = async {
            let cursor = self
                .run(
                    self.raw(BUCKETS)
                        .find(doc! { "user_id": user_id, "$and": [
                            { "bucket": { "$gte": from } },
                            { "bucket": { "$lt": to } },
                        ] })
                        .sort(doc! { "bucket": 1 }),
                )
                .await?;
            self.read_all(BUCKETS, cursor, bucket_from).await
        };
        let (before, buckets) = tokio::try_join!(before, range)?;
        let carried = match before {
            Some(raw) => {
                let d: Document = super::decode(BUCKETS, &raw)?;
                Some(level(&d, "closing_level").map_err(|reason| {
                    StoreError::corrupt(BUCKETS, format!("{user_id}:<{from}"), reason)
                })?)
            }
            None => None,
        };
        Ok(StoredBuckets { carried, buckets })
    }
}
