//! The battery aggregate: a user's level (on the user record, with its running totals)
//! and the history of interactions that moved it.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};

use super::StoreResult;
use crate::battery::{
    Applied, BatteryLevel, Channel, EnergyImpact, Interaction, InteractionKind, SleepQuality,
};

/// An interaction to record, before the store applies it to the current level.
#[derive(Debug, Clone)]
pub struct NewBatteryEvent {
    pub id: String,
    pub interaction: Interaction,
    pub name: Option<String>,
    pub duration_minutes: i32,
    pub occurred_at: DateTime<Utc>,
    /// The service's clock when the request arrived, read at `received`. The store
    /// stamps the record later, in the step that orders it (see [`Self::stamp`]).
    pub recorded_at: DateTime<Utc>,
    pub received: std::time::Instant,
    pub notes: Option<String>,
    pub people_count: Option<i32>,
    pub interaction_type: Option<Channel>,
}

impl NewBatteryEvent {
    /// The record's `recorded_at`, taken in the step that orders the write (inside the
    /// SQLite writer; on MongoDB after reading the position the insert claims): the
    /// service's clock now (its reading at arrival plus the monotonic time since), never
    /// earlier than the previous record's, so acceptance order and `recorded_at` agree.
    /// Whole milliseconds, as stored.
    pub fn stamp(&self, previous: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let elapsed = chrono::TimeDelta::from_std(self.received.elapsed())
            .unwrap_or(chrono::TimeDelta::zero());
        let now = (self.recorded_at + elapsed).trunc_subsecs(3);
        previous.map_or(now, |previous| now.max(previous))
    }

    /// The event as recorded: `applied` to the level at step `seq` of `user_id`'s
    /// history, accepted at `recorded_at` (from [`Self::stamp`]).
    pub fn recorded(
        self,
        user_id: &str,
        seq: i64,
        applied: Applied,
        recorded_at: DateTime<Utc>,
    ) -> BatteryEvent {
        BatteryEvent {
            id: self.id,
            user_id: user_id.to_owned(),
            seq,
            interaction: self.interaction,
            name: self.name,
            energy_delta: applied.energy_delta,
            level_before: applied.level_before,
            level_after: applied.level_after,
            duration_minutes: self.duration_minutes,
            occurred_at: self.occurred_at,
            recorded_at,
            notes: self.notes,
            people_count: self.people_count,
            interaction_type: self.interaction_type,
        }
    }
}

/// A recorded interaction: what was asked and what it did to the level.
#[derive(Debug, Clone, PartialEq)]
pub struct BatteryEvent {
    pub id: String,
    pub user_id: String,
    /// Acceptance order within the user's history (1, 2, 3, ...).
    pub seq: i64,
    pub interaction: Interaction,
    pub name: Option<String>,
    pub energy_delta: i32,
    pub level_before: BatteryLevel,
    pub level_after: BatteryLevel,
    pub duration_minutes: i32,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub notes: Option<String>,
    pub people_count: Option<i32>,
    pub interaction_type: Option<Channel>,
}

impl BatteryEvent {
    /// Where this event stands in the timeline (the keyset of a history page).
    pub fn position(&self) -> HistoryCursor {
        HistoryCursor {
            occurred_at: self.occurred_at,
            seq: self.seq,
        }
    }

    /// What applying it did (for totals and roll-forward).
    pub fn applied(&self) -> Applied {
        Applied {
            level_before: self.level_before,
            level_after: self.level_after,
            energy_delta: self.energy_delta,
        }
    }
}

/// How an [`Interaction`] is stored by both backends: its kind and the one input that
/// kind has, each in its own column/field (so history can be filtered by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InteractionColumns {
    pub kind: InteractionKind,
    pub energy_impact: Option<i32>,
    pub sleep_quality: Option<SleepQuality>,
    pub target_level: Option<i32>,
}

impl From<&Interaction> for InteractionColumns {
    fn from(interaction: &Interaction) -> Self {
        let mut columns = Self {
            kind: interaction.kind(),
            energy_impact: None,
            sleep_quality: None,
            target_level: None,
        };
        match interaction {
            Interaction::Depletion(i) | Interaction::Recharge(i) => {
                columns.energy_impact = Some(i.value())
            }
            Interaction::Sleep(q) => columns.sleep_quality = Some(*q),
            Interaction::Set(level) => columns.target_level = Some(level.value()),
        }
        columns
    }
}

impl InteractionColumns {
    /// The interaction back; `Err` says what is missing or out of range.
    pub fn interaction(self) -> Result<Interaction, String> {
        let impact = || {
            let raw = self
                .energy_impact
                .ok_or_else(|| format!("{} without energy_impact", self.kind.as_str()))?;
            EnergyImpact::new(raw.into()).ok_or_else(|| format!("energy_impact {raw} not in 1–100"))
        };
        Ok(match self.kind {
            InteractionKind::Depletion => Interaction::Depletion(impact()?),
            InteractionKind::Recharge => Interaction::Recharge(impact()?),
            InteractionKind::Sleep => {
                Interaction::Sleep(self.sleep_quality.ok_or("sleep without sleep_quality")?)
            }
            InteractionKind::Set => {
                let raw = self.target_level.ok_or("set without target_level")?;
                Interaction::Set(BatteryLevel::try_from(i64::from(raw)).map_err(|e| e.to_string())?)
            }
        })
    }
}

/// A stored level back into a [`BatteryLevel`]; out of range is unreadable, not clamped.
pub fn stored_level(raw: i64) -> Result<BatteryLevel, String> {
    BatteryLevel::try_from(raw).map_err(|e| e.to_string())
}

/// Where a user's battery stands: its level after `seq` recorded interactions. A caller
/// that has just read it hands it to [`BatteryStore::record_interaction_at`] so the store
/// need not read it again; a stale one costs a retry, never a wrong level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatteryPosition {
    pub level: BatteryLevel,
    pub seq: i64,
    /// When step `seq` was recorded (none before the first): the next record is stamped
    /// no earlier (see [`NewBatteryEvent::stamp`]).
    pub updated_at: Option<DateTime<Utc>>,
    /// How many corrections moved the level at `seq` (MongoDB's `battery_version`; always
    /// 0 on SQLite, whose writes are serialised): a record from this position advances
    /// the user only if no correction came in between.
    pub version: i64,
}

/// A client's `Idempotency-Key` for one record request.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 of the canonical request body.
    pub request_hash: String,
    /// Keys created before this instant have expired and are ignored.
    pub not_before: DateTime<Utc>,
}

/// What `record_interaction` did.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    Recorded(BatteryEvent),
    /// The same key and body were seen before: the original event, nothing changed.
    Replayed(BatteryEvent),
    /// The key was used before with a different body: nothing changed.
    KeyReused,
    /// The user does not exist (any more).
    UserMissing,
}

/// The fields of a recorded interaction that a correction may change (all but `id`,
/// `seq` and `recorded_at`: a corrected record keeps its place in acceptance order).
#[derive(Debug, Clone, PartialEq)]
pub struct CorrectedFields {
    pub interaction: Interaction,
    pub name: Option<String>,
    pub duration_minutes: i32,
    pub occurred_at: DateTime<Utc>,
    pub notes: Option<String>,
    pub people_count: Option<i32>,
    pub interaction_type: Option<Channel>,
}

impl CorrectedFields {
    /// `event` with these fields and the levels of `applied`.
    pub fn applied_to(&self, event: &BatteryEvent, applied: Applied) -> BatteryEvent {
        BatteryEvent {
            interaction: self.interaction,
            name: self.name.clone(),
            duration_minutes: self.duration_minutes,
            occurred_at: self.occurred_at,
            notes: self.notes.clone(),
            people_count: self.people_count,
            interaction_type: self.interaction_type,
            level_before: applied.level_before,
            level_after: applied.level_after,
            energy_delta: applied.energy_delta,
            ..event.clone()
        }
    }
}

/// A correction of one recorded interaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Correction {
    /// The record becomes these fields (validated as a whole by the caller).
    Replace(CorrectedFields),
    /// The record goes.
    Delete,
}

/// What `correct_interaction` did.
#[derive(Debug, Clone, PartialEq)]
pub enum CorrectionOutcome {
    /// The record as corrected (its later records and the level replayed).
    Corrected(BatteryEvent),
    /// The record is gone (its later records and the level replayed).
    Deleted,
    /// The same key and request were seen before: nothing changed; the record as it is
    /// now (`None` when it no longer exists, as after a replayed delete).
    Replayed(Option<BatteryEvent>),
    /// The key was used before with a different request: nothing changed.
    KeyReused,
    /// No record of that id in this user's history.
    NotFound,
}

/// The replay of a correction: `events` (the corrected record and every later one, in
/// `seq` order, as stored) applied again from the corrected record's `level_before`, with
/// the correction in place of the record. Pure, so both stores compute the same thing.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// Every event of the range that remains, with its new levels.
    pub events: Vec<BatteryEvent>,
    /// The level after the last of them (the new current level).
    pub level: BatteryLevel,
    /// Per kind, the totals of the range as it was stored ...
    pub before: crate::battery::KindTotals,
    /// ... and as replayed (the running totals take out one and put in the other).
    pub after: crate::battery::KindTotals,
}

/// Replays `events` (the target first, then every later record, ascending `seq`) with
/// `correction` applied to the first. Cost: the number of events given.
pub fn replay_correction(events: &[BatteryEvent], correction: &Correction) -> Replayed {
    use crate::battery::{KindTotals, Totals};
    let mut before = KindTotals::default();
    let mut after = KindTotals::default();
    let mut out = Vec::with_capacity(events.len());
    let Some(first) = events.first() else {
        return Replayed {
            events: out,
            level: crate::battery::INITIAL_LEVEL,
            before,
            after,
        };
    };
    let mut level = first.level_before;
    for (i, event) in events.iter().enumerate() {
        let kind = event.interaction.kind();
        before.set(kind, before.get(kind) + Totals::of(&event.applied()));
        let corrected = if i == 0 {
            match correction {
                Correction::Delete => continue,
                Correction::Replace(fields) => {
                    let applied = crate::battery::apply(level, &fields.interaction);
                    fields.applied_to(event, applied)
                }
            }
        } else {
            let applied = crate::battery::apply(level, &event.interaction);
            BatteryEvent {
                level_before: applied.level_before,
                level_after: applied.level_after,
                energy_delta: applied.energy_delta,
                ..event.clone()
            }
        };
        let kind = corrected.interaction.kind();
        after.set(kind, after.get(kind) + Totals::of(&corrected.applied()));
        level = corrected.level_after;
        out.push(corrected);
    }
    Replayed {
        events: out,
        level,
        before,
        after,
    }
}

/// A place in the timeline: history is ordered by `occurred_at`, newest first, and
/// events that occurred at the same instant by acceptance order (`seq`), newest first. A
/// page after a cursor holds the events strictly before it in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    pub occurred_at: DateTime<Utc>,
    pub seq: i64,
}

/// Filters of a history query.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub kind: Option<InteractionKind>,
}

/// Totals over a filtered history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatterySummary {
    pub count: i64,
    pub recharge_count: i64,
    pub depletion_count: i64,
    /// Sum of the positive `energy_delta`s.
    pub total_recharged: i64,
    /// Sum of the magnitudes of the negative `energy_delta`s.
    pub total_depleted: i64,
    /// Mean `level_after`; `None` when nothing matched.
    pub average_level: Option<f64>,
}

impl BatterySummary {
    /// The summary of per-kind totals (only the kinds the filter admits).
    pub fn of(totals: &crate::battery::KindTotals) -> Self {
        let all = totals.sum();
        Self {
            count: all.count,
            recharge_count: totals.get(InteractionKind::Recharge).count,
            depletion_count: totals.get(InteractionKind::Depletion).count,
            total_recharged: all.total_positive,
            total_depleted: all.total_negative,
            average_level: all.average_level(),
        }
    }
}

/// The social battery.
#[async_trait]
pub trait BatteryStore: Send + Sync {
    /// Applies an interaction to the user's current level and appends it to the
    /// history, atomically: parallel records never lose an update (their `seq`s are
    /// contiguous and the level is the replay of the history). With a key, a repeat of
    /// the same request within its lifetime changes nothing, and parallel requests with
    /// one key record one event.
    async fn record_interaction(
        &self,
        user_id: &str,
        event: &NewBatteryEvent,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<RecordOutcome>;
    /// [`record_interaction`](Self::record_interaction) for a caller that has just read
    /// the user's battery at `seen` (the authenticated read does): a backend that pays a
    /// round trip per read starts from it; if it is stale, the record starts over from
    /// the stored position.
    async fn record_interaction_at(
        &self,
        user_id: &str,
        seen: BatteryPosition,
        event: &NewBatteryEvent,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<RecordOutcome> {
        let _ = seen;
        self.record_interaction(user_id, event, key).await
    }
    /// One page of the timeline: newest `occurred_at` first, ties newest `seq` first,
    /// starting after `after` (a keyset scan: a page costs the same however long the
    /// history is).
    async fn battery_history(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
        after: Option<HistoryCursor>,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>>;
    /// One record of `user_id`'s history by id (`None` for another user's).
    async fn battery_event(&self, user_id: &str, id: &str) -> StoreResult<Option<BatteryEvent>>;
    /// Corrects (replaces or deletes) one record of `user_id`'s history and replays every
    /// later record from it (clamping included): their `level_before`, `level_after` and
    /// `energy_delta`, the running totals and the current level become what they would
    /// have been. Atomic with respect to records and other corrections of the user (none
    /// is lost, none is applied to a stale level). Costs the number of records from the
    /// corrected one on, whatever came before. With a key, a repeat of the same request
    /// changes nothing (`now` dates the key).
    async fn correct_interaction(
        &self,
        user_id: &str,
        id: &str,
        correction: &Correction,
        key: Option<&IdempotencyKey>,
        now: DateTime<Utc>,
    ) -> StoreResult<CorrectionOutcome>;
    /// Totals over the filtered history; without a time filter from the running
    /// totals, in O(1).
    async fn battery_summary(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
    ) -> StoreResult<BatterySummary>;
    /// A page of the timeline and the summary of the same filter, for
    /// `GET /social-battery/{me}/activity`. By default the two reads run concurrently; a
    /// backend that can answer both from one read (SQLite: one connection, one
    /// snapshot) does.
    async fn battery_page(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
        after: Option<HistoryCursor>,
        limit: u32,
    ) -> StoreResult<(Vec<BatteryEvent>, BatterySummary)> {
        tokio::try_join!(
            self.battery_history(user_id, filter, after, limit),
            self.battery_summary(user_id, filter),
        )
    }
}
