//! The MongoDB store, with the official `mongodb` driver.
//!
//! Users live in `IntrogyUsers` with the old service's field names (`email`,
//! `hashed_password`, `display_name`, `is_verified`, `created_at`), so accounts written by
//! the Python service log in unchanged. New users get ObjectId `_id`s too.
//!
//! Every operation is correct on a standalone `mongod` as well as on a replica set: no
//! operation needs a multi-document transaction.
//! - Atomic single-document updates with a precondition do what SQLite's single writer
//!   does: counting a code guess (`attempts < 5`), consuming a code (delete by hash),
//!   rotating a refresh token (`rotated_at: null`), the mail budget (a version counter).
//! - Recording an interaction is lock-free: the event is inserted with the user's next
//!   `seq` under a unique `(user_id, seq)` index, which admits exactly one writer per
//!   step; the user document then advances with a `battery_seq` precondition. A writer
//!   that dies between the two steps leaves an event ahead of its user; the next record
//!   for that user rolls the user forward from it before going on, so nothing is lost.
//! - `Idempotency-Key`s are claimed by inserting the key document first (unique `_id`).
//! - Multi-step deletions (reset password, delete account) go in the order that keeps
//!   the account safe if interrupted: the user document changes first, then sessions,
//!   refresh tokens and codes are removed.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{
    BatteryEvent, BatterySummary, HistoryFilter, IdempotencyKey, NewBatteryEvent, NewUser,
    OneTimeCode, ProfilePatch, RecordOutcome, RefreshToken, SendLimits, Session, Store, StoreError,
    StoreResult, User,
};
use super::{MailResult, OutboxMail, OutboxStats, StoreCounts};
use crate::battery::{
    self, BatteryLevel, EnergyImpact, Interaction, InteractionKind, SleepQuality,
};
use crate::domain::OtpPurpose;

/// The old service's users collection.
pub const USERS: &str = "IntrogyUsers";
const SESSIONS: &str = "sessions";
const REFRESH_TOKENS: &str = "refresh_tokens";
const CODES: &str = "one_time_codes";
const MAIL_SENDS: &str = "mail_sends";
const EVENTS: &str = "battery_events";
const IDEMPOTENCY: &str = "idempotency_keys";
const OUTBOX: &str = "mail_outbox";

/// How many times an optimistic write is retried under contention.
const MAX_RETRIES: usize = 200;

/// MongoDB-backed [`Store`].
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    timeout: Duration,
    observer: std::sync::Arc<crate::metrics::StoreObserver>,
}

fn coll(db: &Database, name: &str) -> Collection<Document> {
    db.collection::<Document>(name)
}

fn bdt(at: DateTime<Utc>) -> Bson {
    Bson::DateTime(mongodb::bson::DateTime::from_millis(at.timestamp_millis()))
}

fn to_utc(at: mongodb::bson::DateTime) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(at.timestamp_millis())
        .single()
        .unwrap_or_default()
}

fn get_dt(d: &Document, key: &str) -> Option<DateTime<Utc>> {
    match d.get(key) {
        Some(Bson::DateTime(at)) => Some(to_utc(*at)),
        _ => None,
    }
}

fn get_str(d: &Document, key: &str) -> Option<String> {
    match d.get(key) {
        Some(Bson::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn get_int(d: &Document, key: &str) -> Option<i64> {
    match d.get(key) {
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        Some(Bson::Int64(n)) => Some(*n),
        Some(Bson::Double(n)) => Some(*n as i64),
        _ => None,
    }
}

fn get_bool(d: &Document, key: &str) -> bool {
    matches!(d.get(key), Some(Bson::Boolean(true)))
}

fn opt_str(value: &Option<String>) -> Bson {
    value.clone().map_or(Bson::Null, Bson::String)
}

/// `_id` filter for a user: ObjectId when the id is one (always, for ours and the old
/// service's), else the string as stored.
fn user_filter(id: &str) -> Document {
    match ObjectId::parse_str(id) {
        Ok(oid) => doc! { "_id": oid },
        Err(_) => doc! { "_id": id },
    }
}

fn id_string(d: &Document) -> Option<String> {
    match d.get("_id") {
        Some(Bson::ObjectId(oid)) => Some(oid.to_hex()),
        Some(Bson::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn is_duplicate(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|e| e.code == 11000)),
        _ => false,
    }
}

fn map_err(err: mongodb::error::Error) -> StoreError {
    if is_duplicate(&err) {
        return StoreError::Conflict("duplicate key".into());
    }
    let unavailable = matches!(
        err.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    ) || err.contains_label("RetryableWriteError")
        || err.contains_label("TransientTransactionError");
    if unavailable {
        StoreError::Unavailable(err.into())
    } else {
        StoreError::Other(err.into())
    }
}

fn user_from_doc(d: &Document) -> Option<User> {
    let id = id_string(d)?;
    let email = get_str(d, "email")?;
    let created_at = get_dt(d, "created_at").unwrap_or_default();
    let preferences = match d.get("preferences") {
        Some(Bson::Document(p)) => match Bson::Document(p.clone()).into_relaxed_extjson() {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
        _ => serde_json::Map::new(),
    };
    let level = get_int(d, "battery_level")
        .or_else(|| get_int(d, "social_battery_level"))
        .unwrap_or(i64::from(battery::INITIAL_LEVEL.value()));
    Some(User {
        id,
        email,
        hashed_password: get_str(d, "hashed_password").unwrap_or_default(),
        display_name: get_str(d, "display_name"),
        avatar_url: get_str(d, "avatar_url"),
        bio: get_str(d, "bio"),
        timezone: get_str(d, "timezone"),
        introvert_level: get_int(d, "introvert_level").map(|n| n as i32),
        is_verified: get_bool(d, "is_verified"),
        onboarding_completed: get_bool(d, "onboarding_completed"),
        onboarding_completed_at: get_dt(d, "onboarding_completed_at"),
        preferences,
        battery_level: BatteryLevel::clamped(level).value(),
        battery_updated_at: get_dt(d, "battery_updated_at"),
        created_at,
        updated_at: get_dt(d, "updated_at").unwrap_or(created_at),
    })
}

fn session_from_doc(d: &Document) -> Option<Session> {
    Some(Session {
        id: get_str(d, "_id")?,
        user_id: get_str(d, "user_id")?,
        created_at: get_dt(d, "created_at")?,
        expires_at: get_dt(d, "expires_at")?,
        refreshed_at: get_dt(d, "refreshed_at")?,
    })
}

fn purpose_str(purpose: OtpPurpose) -> &'static str {
    purpose.as_str()
}

fn code_from_doc(d: &Document) -> Option<OneTimeCode> {
    Some(OneTimeCode {
        user_id: get_str(d, "user_id")?,
        purpose: match get_str(d, "purpose")?.as_str() {
            "reset_password" => OtpPurpose::ResetPassword,
            _ => OtpPurpose::VerifyEmail,
        },
        code_hash: get_str(d, "code_hash")?,
        attempts: get_int(d, "attempts").unwrap_or(0) as u32,
        created_at: get_dt(d, "created_at")?,
        expires_at: get_dt(d, "expires_at")?,
    })
}

fn event_doc(
    user_id: &str,
    seq: i64,
    event: &NewBatteryEvent,
    applied: &battery::Applied,
) -> Document {
    let (impact, quality, target) = match event.interaction {
        Interaction::Depletion(i) | Interaction::Recharge(i) => {
            (Bson::Int32(i.value()), Bson::Null, Bson::Null)
        }
        Interaction::Sleep(q) => (Bson::Null, Bson::String(q.as_str().into()), Bson::Null),
        Interaction::Set(l) => (Bson::Null, Bson::Null, Bson::Int32(l.value())),
    };
    doc! {
        "_id": &event.id,
        "user_id": user_id,
        "seq": seq,
        "kind": event.interaction.kind().as_str(),
        "energy_impact": impact,
        "sleep_quality": quality,
        "target_level": target,
        "name": opt_str(&event.name),
        "energy_delta": applied.energy_delta,
        "level_before": applied.level_before.value(),
        "level_after": applied.level_after.value(),
        "duration_minutes": event.duration_minutes,
        "occurred_at": bdt(event.occurred_at),
        "recorded_at": bdt(event.recorded_at),
        "notes": opt_str(&event.notes),
        "people_count": event.people_count.map_or(Bson::Null, Bson::Int32),
        "interaction_type": opt_str(&event.interaction_type),
    }
}

fn event_from_doc(d: &Document) -> Option<BatteryEvent> {
    let impact =
        EnergyImpact::new(get_int(d, "energy_impact").unwrap_or(1)).unwrap_or(EnergyImpact::MIN);
    let interaction = match get_str(d, "kind")?.as_str() {
        "depletion" => Interaction::Depletion(impact),
        "recharge" => Interaction::Recharge(impact),
        "sleep" => Interaction::Sleep(match get_str(d, "sleep_quality").as_deref() {
            Some("good") => SleepQuality::Good,
            Some("bad") => SleepQuality::Bad,
            _ => SleepQuality::Medium,
        }),
        _ => Interaction::Set(BatteryLevel::clamped(
            get_int(d, "target_level").unwrap_or(0),
        )),
    };
    Some(BatteryEvent {
        id: get_str(d, "_id")?,
        user_id: get_str(d, "user_id")?,
        seq: get_int(d, "seq")?,
        interaction,
        name: get_str(d, "name"),
        energy_delta: get_int(d, "energy_delta")? as i32,
        level_before: BatteryLevel::clamped(get_int(d, "level_before")?),
        level_after: BatteryLevel::clamped(get_int(d, "level_after")?),
        duration_minutes: get_int(d, "duration_minutes").unwrap_or(60) as i32,
        occurred_at: get_dt(d, "occurred_at")?,
        recorded_at: get_dt(d, "recorded_at")?,
        notes: get_str(d, "notes"),
        people_count: get_int(d, "people_count").map(|n| n as i32),
        interaction_type: get_str(d, "interaction_type"),
    })
}

/// The update that moves a user from `seq - 1` to `seq` by `event`.
fn advance_update(seq: i64, kind: &str, delta: i32, level_after: i32, at: Bson) -> Document {
    doc! {
        "$set": { "battery_level": level_after, "battery_seq": seq, "battery_updated_at": at },
        "$inc": {
            format!("battery_stats.{kind}.count"): 1_i64,
            format!("battery_stats.{kind}.total_positive"): i64::from(delta.max(0)),
            format!("battery_stats.{kind}.total_negative"): i64::from((-delta).max(0)),
            format!("battery_stats.{kind}.level_sum"): i64::from(level_after),
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

fn history_filter(user_id: &str, filter: &HistoryFilter) -> Document {
    let mut query = doc! { "user_id": user_id };
    if let Some(kind) = filter.kind {
        query.insert("kind", kind.as_str());
    }
    let mut range = Document::new();
    if let Some(from) = filter.from {
        range.insert("$gte", bdt(from));
    }
    if let Some(to) = filter.to {
        range.insert("$lte", bdt(to));
    }
    if !range.is_empty() {
        query.insert("occurred_at", range);
    }
    query
}

fn mail_doc(mail: &OutboxMail) -> Document {
    doc! {
        "_id": &mail.id,
        "recipient": &mail.recipient,
        "payload": &mail.payload,
        "status": "pending",
        "attempts": i64::from(mail.attempts),
        "created_at": bdt(mail.created_at),
        "next_attempt_at": bdt(mail.next_attempt_at),
        "expires_at": mail.expires_at.map_or(Bson::Null, bdt),
    }
}

fn mail_from_doc(d: &Document) -> Option<OutboxMail> {
    Some(OutboxMail {
        id: get_str(d, "_id")?,
        recipient: get_str(d, "recipient")?,
        payload: get_str(d, "payload")?,
        attempts: get_int(d, "attempts").unwrap_or(0) as u32,
        created_at: get_dt(d, "created_at")?,
        next_attempt_at: get_dt(d, "next_attempt_at")?,
        expires_at: get_dt(d, "expires_at"),
    })
}

fn code_doc(code: &OneTimeCode) -> Document {
    doc! {
        "_id": format!("{}:{}", code.user_id, purpose_str(code.purpose)),
        "user_id": &code.user_id,
        "purpose": purpose_str(code.purpose),
        "code_hash": &code.code_hash,
        "attempts": 0_i64,
        "created_at": bdt(code.created_at),
        "expires_at": bdt(code.expires_at),
    }
}

async fn collect(
    mut cursor: mongodb::Cursor<Document>,
) -> Result<Vec<Document>, mongodb::error::Error> {
    let mut out = Vec::new();
    while cursor.advance().await? {
        out.push(cursor.deserialize_current()?);
    }
    Ok(out)
}

impl MongoStore {
    /// Connects and creates the indexes before serving. A server that is down now does
    /// not stop the service: requests answer 503 until it is back, and the indexes are
    /// created in the background as soon as it answers.
    pub async fn connect(url: &str, default_db: &str, timeout: Duration) -> anyhow::Result<Self> {
        let mut options = ClientOptions::parse(url)
            .await
            .context("Failed to parse the MongoDB connection string")?;
        options.app_name = Some("introgy".into());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        let db_name = options
            .default_database
            .clone()
            .unwrap_or_else(|| default_db.to_owned());
        let client =
            Client::with_options(options).context("Failed to create the MongoDB client")?;
        let store = Self {
            db: client.database(&db_name),
            timeout,
            observer: std::sync::Arc::new(crate::metrics::StoreObserver::new("mongodb")),
        };
        match tokio::time::timeout(timeout, store.ensure_indexes()).await {
            Ok(Ok(())) => tracing::info!(database = %db_name, "MongoDB indexes are in place"),
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "MongoDB not ready; creating indexes in the background");
                let background = store.clone();
                tokio::spawn(async move { background.ensure_indexes_until_done().await });
            }
            Err(_) => {
                tracing::warn!("MongoDB did not answer; creating indexes in the background");
                let background = store.clone();
                tokio::spawn(async move { background.ensure_indexes_until_done().await });
            }
        }
        Ok(store)
    }

    fn c(&self, name: &str) -> Collection<Document> {
        coll(&self.db, name)
    }

    /// Bounds a driver call by the store timeout and maps its error.
    async fn run<T>(
        &self,
        fut: impl std::future::IntoFuture<Output = Result<T, mongodb::error::Error>>,
    ) -> StoreResult<T> {
        // The driver action's type names the command and whether it writes (metrics.rs).
        let (operation, write) = crate::metrics::mongo_operation(std::any::type_name_of_val(&fut));
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.timeout + Duration::from_secs(1), fut).await {
            Ok(result) => result.map_err(map_err),
            Err(_) => Err(StoreError::Unavailable(anyhow::anyhow!(
                "MongoDB did not answer within {:?}",
                self.timeout
            ))),
        };
        self.observer
            .record(operation, write, started.elapsed(), result.as_ref().err());
        result
    }

    async fn ensure_indexes_until_done(&self) {
        let mut delay = Duration::from_millis(500);
        loop {
            match self.ensure_indexes().await {
                Ok(()) => {
                    tracing::info!("MongoDB indexes are in place");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "MongoDB indexes not created yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Normalises legacy emails, then creates every index (idempotent).
    pub async fn ensure_indexes(&self) -> anyhow::Result<()> {
        self.normalise_legacy_emails().await?;
        let index = |keys: Document, unique: bool, ttl: Option<u64>| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .unique(unique.then_some(true))
                        .expire_after(ttl.map(Duration::from_secs))
                        .build(),
                )
                .build()
        };
        let plan: Vec<(&str, IndexModel)> = vec![
            (USERS, index(doc! { "email": 1 }, true, None)),
            (SESSIONS, index(doc! { "user_id": 1 }, false, None)),
            (SESSIONS, index(doc! { "expires_at": 1 }, false, Some(0))),
            (REFRESH_TOKENS, index(doc! { "session_id": 1 }, false, None)),
            (REFRESH_TOKENS, index(doc! { "user_id": 1 }, false, None)),
            (
                REFRESH_TOKENS,
                index(doc! { "expires_at": 1 }, false, Some(0)),
            ),
            (CODES, index(doc! { "user_id": 1 }, false, None)),
            (CODES, index(doc! { "expires_at": 1 }, false, Some(0))),
            (MAIL_SENDS, index(doc! { "expires_at": 1 }, false, Some(0))),
            (EVENTS, index(doc! { "user_id": 1, "seq": -1 }, true, None)),
            (
                EVENTS,
                index(doc! { "user_id": 1, "kind": 1, "seq": -1 }, false, None),
            ),
            (
                EVENTS,
                index(doc! { "user_id": 1, "occurred_at": 1 }, false, None),
            ),
            (IDEMPOTENCY, index(doc! { "user_id": 1 }, false, None)),
            (
                OUTBOX,
                index(doc! { "status": 1, "next_attempt_at": 1 }, false, None),
            ),
            (
                IDEMPOTENCY,
                index(doc! { "created_at": 1 }, false, Some(86_400)),
            ),
        ];
        for (collection, model) in plan {
            self.c(collection)
                .create_index(model)
                .await
                .with_context(|| format!("Failed to create an index on {collection}"))?;
        }
        Ok(())
    }

    /// The old service may have stored addresses with capitals or spaces; this store
    /// matches exact lowercased addresses, so such documents are normalised once. A
    /// document whose normalised address is taken by another is left alone and logged.
    async fn normalise_legacy_emails(&self) -> anyhow::Result<()> {
        let users = self.c(USERS);
        let cursor = users
            .find(doc! { "email": { "$regex": "[A-Z]|^\\s|\\s$" } })
            .projection(doc! { "email": 1 })
            .await?;
        for d in collect(cursor).await? {
            let (Some(email), Some(id)) = (get_str(&d, "email"), d.get("_id").cloned()) else {
                continue;
            };
            let normalised = email.trim().to_lowercase();
            match users
                .update_one(
                    doc! { "_id": id.clone() },
                    doc! { "$set": { "email": &normalised } },
                )
                .await
            {
                Ok(_) => tracing::info!(user = %id, "normalised a legacy email address"),
                Err(e) if is_duplicate(&e) => tracing::error!(
                    user = %id,
                    "two accounts share an address that differs only in case; left unchanged, merge them by hand"
                ),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Moves a user whose battery is stuck at `seq` forward by the event at `seq + 1`
    /// (its writer stopped between inserting the event and updating the user).
    async fn roll_forward(&self, user_id: &str, seq: i64) -> StoreResult<()> {
        let next = self
            .run(
                self.c(EVENTS)
                    .find_one(doc! { "user_id": user_id, "seq": seq + 1 }),
            )
            .await?;
        let Some(event) = next.as_ref().and_then(event_from_doc) else {
            return Ok(());
        };
        let update = advance_update(
            event.seq,
            event.interaction.kind().as_str(),
            event.energy_delta,
            event.level_after.value(),
            bdt(event.recorded_at),
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
        let keys = self.c(IDEMPOTENCY);
        let claim_id = format!("{user_id}:{}", key.key);
        for _ in 0..MAX_RETRIES {
            let claim = doc! {
                "_id": &claim_id, "user_id": user_id, "request_hash": &key.request_hash,
                "event_id": event_id, "created_at": bdt(now),
            };
            match keys.insert_one(claim).await {
                Ok(_) => return Ok(Ok(())),
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(map_err(e)),
            }
            let Some(existing) = self.run(keys.find_one(doc! { "_id": &claim_id })).await? else {
                continue;
            };
            let created = existing.get("created_at").cloned().unwrap_or(Bson::Null);
            if get_dt(&existing, "created_at").is_none_or(|at| at < key.not_before) {
                // Expired: take it over, if nobody else did.
                let taken = self
                    .run(keys.update_one(
                        doc! { "_id": &claim_id, "created_at": created },
                        doc! { "$set": { "request_hash": &key.request_hash, "event_id": event_id, "created_at": bdt(now) } },
                    ))
                    .await?;
                if taken.matched_count == 1 {
                    return Ok(Ok(()));
                }
                continue;
            }
            if get_str(&existing, "request_hash").as_deref() != Some(key.request_hash.as_str()) {
                return Ok(Err(RecordOutcome::KeyReused));
            }
            let original_id = get_str(&existing, "event_id").unwrap_or_default();
            // The first request may still be writing its event: wait for it briefly.
            for _ in 0..40 {
                if let Some(original) = self
                    .run(self.c(EVENTS).find_one(doc! { "_id": &original_id }))
                    .await?
                {
                    if let Some(event) = event_from_doc(&original) {
                        return Ok(Err(RecordOutcome::Replayed(event)));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Its writer is gone without an event: take the claim over.
            let taken = self
                .run(keys.update_one(
                    doc! { "_id": &claim_id, "event_id": &original_id },
                    doc! { "$set": { "event_id": event_id, "created_at": bdt(now) } },
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
}

#[async_trait]
impl Store for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    fn observer(&self) -> Option<&crate::metrics::StoreObserver> {
        Some(&self.observer)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run(self.db.run_command(doc! { "ping": 1 }))
            .await
            .map(drop)
    }

    #[tracing::instrument(skip_all)]
    async fn insert_user(&self, user: &NewUser) -> StoreResult<User> {
        let id = match ObjectId::parse_str(&user.id) {
            Ok(oid) => Bson::ObjectId(oid),
            Err(_) => Bson::String(user.id.clone()),
        };
        let document = doc! {
            "_id": id,
            "email": &user.email,
            "hashed_password": &user.hashed_password,
            "display_name": opt_str(&user.display_name),
            "is_verified": false,
            "created_at": bdt(user.now),
            "updated_at": bdt(user.now),
            "onboarding_completed": false,
            "preferences": {},
            "battery_level": user.battery_level,
            "battery_seq": 0_i64,
        };
        self.run(self.c(USERS).insert_one(document.clone())).await?;
        user_from_doc(&document)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unreadable user document")))
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        Ok(self
            .run(self.c(USERS).find_one(user_filter(id)))
            .await?
            .as_ref()
            .and_then(user_from_doc))
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        Ok(self
            .run(self.c(USERS).find_one(doc! { "email": email }))
            .await?
            .as_ref()
            .and_then(user_from_doc))
    }

    async fn set_password_hash(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.run(self.c(USERS).update_one(
            user_filter(user_id),
            doc! { "$set": { "hashed_password": hash, "updated_at": bdt(now) } },
        ))
        .await
        .map(drop)
    }

    async fn mark_verified(&self, user_id: &str, now: DateTime<Utc>) -> StoreResult<()> {
        self.run(self.c(USERS).update_one(
            user_filter(user_id),
            doc! { "$set": { "is_verified": true, "updated_at": bdt(now) } },
        ))
        .await
        .map(drop)
    }

    #[tracing::instrument(skip_all)]
    async fn reset_password(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.run(self.c(USERS).update_one(
            user_filter(user_id),
            doc! { "$set": { "hashed_password": hash, "is_verified": true, "updated_at": bdt(now) } },
        ))
        .await?;
        self.run(self.c(SESSIONS).delete_many(doc! { "user_id": user_id }))
            .await?;
        self.run(
            self.c(REFRESH_TOKENS)
                .delete_many(doc! { "user_id": user_id }),
        )
        .await?;
        self.run(self.c(CODES).delete_many(doc! { "user_id": user_id }))
            .await?;
        Ok(())
    }

    async fn put_code(&self, code: &OneTimeCode) -> StoreResult<()> {
        let document = code_doc(code);
        let id = document.get("_id").cloned().unwrap_or(Bson::Null);
        self.run(
            self.c(CODES)
                .replace_one(doc! { "_id": id }, document)
                .upsert(true),
        )
        .await
        .map(drop)
    }

    async fn put_code_and_mail(&self, code: &OneTimeCode, mail: &OutboxMail) -> StoreResult<()> {
        // Code first: an interruption between the two writes loses a mail (the user asks
        // again), never mails a code that does not exist.
        self.put_code(code).await?;
        self.enqueue_mail(mail).await
    }

    async fn enqueue_mail(&self, mail: &OutboxMail) -> StoreResult<()> {
        self.run(self.c(OUTBOX).insert_one(mail_doc(mail)))
            .await
            .map(drop)
    }

    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<OutboxMail>> {
        let mut claimed = Vec::new();
        for _ in 0..limit {
            let next = self
                .run(
                    self.c(OUTBOX)
                        .find_one_and_update(
                            doc! { "status": "pending", "next_attempt_at": { "$lte": bdt(now) } },
                            doc! { "$set": { "next_attempt_at": bdt(lease_until) }, "$inc": { "attempts": 1_i64 } },
                        )
                        .sort(doc! { "next_attempt_at": 1 })
                        .return_document(ReturnDocument::After),
                )
                .await?;
            match next.as_ref().and_then(mail_from_doc) {
                Some(mail) => claimed.push(mail),
                None => break,
            }
        }
        Ok(claimed)
    }

    async fn finish_mail(
        &self,
        id: &str,
        result: &MailResult,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let update = match result {
            MailResult::Retry { at, error } => {
                doc! { "$set": { "next_attempt_at": bdt(*at), "last_error": error } }
            }
            MailResult::Sent => {
                doc! { "$set": { "status": "sent", "finished_at": bdt(now), "payload": "{}" } }
            }
            MailResult::Expired => {
                doc! { "$set": { "status": "expired", "finished_at": bdt(now), "payload": "{}" } }
            }
            MailResult::Dead { error } => doc! {
                "$set": { "status": "dead", "finished_at": bdt(now), "payload": "{}", "last_error": error }
            },
        };
        self.run(self.c(OUTBOX).update_one(doc! { "_id": id }, update))
            .await
            .map(drop)
    }

    async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        Ok(OutboxStats {
            pending: self
                .run(self.c(OUTBOX).count_documents(doc! { "status": "pending" }))
                .await?,
            dead: self
                .run(self.c(OUTBOX).count_documents(doc! { "status": "dead" }))
                .await?,
        })
    }

    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<OneTimeCode>> {
        let id = format!("{user_id}:{}", purpose_str(purpose));
        let updated = self
            .run(
                self.c(CODES)
                    .find_one_and_update(
                        doc! { "_id": id, "attempts": { "$lt": i64::from(max_attempts) }, "expires_at": { "$gt": bdt(now) } },
                        doc! { "$inc": { "attempts": 1_i64 } },
                    )
                    .return_document(ReturnDocument::After),
            )
            .await?;
        Ok(updated.as_ref().and_then(code_from_doc))
    }

    async fn consume_code(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        code_hash: &str,
    ) -> StoreResult<bool> {
        let id = format!("{user_id}:{}", purpose_str(purpose));
        let deleted = self
            .run(
                self.c(CODES)
                    .delete_one(doc! { "_id": id, "code_hash": code_hash }),
            )
            .await?;
        Ok(deleted.deleted_count == 1)
    }

    async fn reserve_mail_send(
        &self,
        email: &str,
        now: DateTime<Utc>,
        limits: SendLimits,
    ) -> StoreResult<bool> {
        let sends = self.c(MAIL_SENDS);
        let now_ms = now.timestamp_millis();
        let min_interval = limits.min_interval.as_millis() as i64;
        for _ in 0..MAX_RETRIES {
            let existing = self.run(sends.find_one(doc! { "_id": email })).await?;
            let version = existing.as_ref().and_then(|d| get_int(d, "v")).unwrap_or(0);
            let mut times: Vec<i64> = existing
                .as_ref()
                .and_then(|d| d.get_array("times").ok())
                .map(|a| a.iter().filter_map(Bson::as_i64).collect())
                .unwrap_or_default();
            times.retain(|t| *t > now_ms - 3_600_000);
            let too_soon = times
                .iter()
                .max()
                .is_some_and(|last| now_ms - last < min_interval);
            if times.len() as u32 >= limits.per_hour || too_soon {
                return Ok(false);
            }
            times.push(now_ms);
            let expires = now + chrono::Duration::hours(1);
            let fields = doc! { "times": times, "v": version + 1, "expires_at": bdt(expires) };
            if existing.is_none() {
                let mut document = fields;
                document.insert("_id", email);
                match sends.insert_one(document).await {
                    Ok(_) => return Ok(true),
                    Err(e) if is_duplicate(&e) => continue,
                    Err(e) => return Err(map_err(e)),
                }
            }
            let updated = self
                .run(sends.update_one(doc! { "_id": email, "v": version }, doc! { "$set": fields }))
                .await?;
            if updated.matched_count == 1 {
                return Ok(true);
            }
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "mail budget contention"
        )))
    }

    async fn insert_session(&self, session: &Session, first: &RefreshToken) -> StoreResult<()> {
        self.run(self.c(SESSIONS).insert_one(doc! {
            "_id": &session.id,
            "user_id": &session.user_id,
            "created_at": bdt(session.created_at),
            "expires_at": bdt(session.expires_at),
            "refreshed_at": bdt(session.refreshed_at),
        }))
        .await?;
        self.run(self.c(REFRESH_TOKENS).insert_one(doc! {
            "_id": &first.token_hash,
            "session_id": &session.id,
            "user_id": &session.user_id,
            "issued_at": bdt(first.issued_at),
            "rotated_at": Bson::Null,
            "expires_at": bdt(session.expires_at),
        }))
        .await
        .map(drop)
    }

    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        Ok(self
            .run(self.c(SESSIONS).find_one(doc! { "_id": id }))
            .await?
            .as_ref()
            .and_then(session_from_doc))
    }

    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        let found = self
            .run(self.c(REFRESH_TOKENS).find_one(doc! { "_id": token_hash }))
            .await?;
        Ok(found.and_then(|d| {
            Some(RefreshToken {
                token_hash: get_str(&d, "_id")?,
                session_id: get_str(&d, "session_id")?,
                issued_at: get_dt(&d, "issued_at")?,
                rotated_at: get_dt(&d, "rotated_at"),
            })
        }))
    }

    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let updated = self
            .run(self.c(REFRESH_TOKENS).update_one(
                doc! { "_id": token_hash, "rotated_at": Bson::Null },
                doc! { "$set": { "rotated_at": bdt(now) } },
            ))
            .await?;
        Ok(updated.modified_count == 1)
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let session = self
            .run(self.c(SESSIONS).find_one_and_update(
                doc! { "_id": &token.session_id },
                doc! { "$set": { "refreshed_at": bdt(token.issued_at) } },
            ))
            .await?
            .and_then(|d| session_from_doc(&d))
            .ok_or_else(|| StoreError::Conflict("session is gone".into()))?;
        self.run(self.c(REFRESH_TOKENS).insert_one(doc! {
            "_id": &token.token_hash,
            "session_id": &session.id,
            "user_id": &session.user_id,
            "issued_at": bdt(token.issued_at),
            "rotated_at": Bson::Null,
            "expires_at": bdt(session.expires_at),
        }))
        .await
        .map(drop)
    }

    async fn delete_session(&self, id: &str) -> StoreResult<()> {
        self.run(self.c(SESSIONS).delete_one(doc! { "_id": id }))
            .await?;
        self.run(
            self.c(REFRESH_TOKENS)
                .delete_many(doc! { "session_id": id }),
        )
        .await
        .map(drop)
    }

    async fn delete_user_sessions(&self, user_id: &str, except: Option<&str>) -> StoreResult<u64> {
        let mut filter = doc! { "user_id": user_id };
        let mut token_filter = doc! { "user_id": user_id };
        if let Some(keep) = except {
            filter.insert("_id", doc! { "$ne": keep });
            token_filter.insert("session_id", doc! { "$ne": keep });
        }
        let deleted = self.run(self.c(SESSIONS).delete_many(filter)).await?;
        self.run(self.c(REFRESH_TOKENS).delete_many(token_filter))
            .await?;
        Ok(deleted.deleted_count)
    }

    #[tracing::instrument(skip_all)]
    async fn update_profile(
        &self,
        user_id: &str,
        patch: &ProfilePatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        let mut set = doc! { "updated_at": bdt(now) };
        let mut unset = Document::new();
        let mut text = |field: &str, value: &Option<Option<String>>| {
            if let Some(v) = value {
                set.insert(field, opt_str(v));
            }
        };
        text("display_name", &patch.display_name);
        text("avatar_url", &patch.avatar_url);
        text("bio", &patch.bio);
        text("timezone", &patch.timezone);
        if let Some(v) = patch.introvert_level {
            set.insert("introvert_level", v.map_or(Bson::Null, Bson::Int32));
        }
        if let Some(v) = patch.onboarding_completed {
            set.insert("onboarding_completed", v);
        }
        if let Some(v) = patch.onboarding_completed_at {
            set.insert("onboarding_completed_at", v.map_or(Bson::Null, bdt));
        }
        for (key, value) in &patch.preferences_set {
            let value = mongodb::bson::to_bson(value).map_err(|e| StoreError::Other(e.into()))?;
            set.insert(format!("preferences.{key}"), value);
        }
        for key in &patch.preferences_unset {
            unset.insert(format!("preferences.{key}"), "");
        }
        let mut update = doc! { "$set": set };
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        let updated = self
            .run(
                self.c(USERS)
                    .find_one_and_update(user_filter(user_id), update)
                    .return_document(ReturnDocument::After),
            )
            .await?;
        Ok(updated.as_ref().and_then(user_from_doc))
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<bool> {
        let deleted = self
            .run(self.c(USERS).delete_one(user_filter(user_id)))
            .await?;
        for collection in [SESSIONS, REFRESH_TOKENS, CODES, EVENTS, IDEMPOTENCY] {
            self.run(self.c(collection).delete_many(doc! { "user_id": user_id }))
                .await?;
        }
        Ok(deleted.deleted_count == 1)
    }

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
        let release_claim = || async {
            if let Some(key) = key {
                let claim_id = format!("{user_id}:{}", key.key);
                self.run(
                    self.c(IDEMPOTENCY)
                        .delete_one(doc! { "_id": claim_id, "event_id": &event.id }),
                )
                .await
                .map(drop)
            } else {
                Ok(())
            }
        };
        for _ in 0..MAX_RETRIES {
            let user = self
                .run(
                    self.c(USERS)
                        .find_one(user_filter(user_id))
                        .projection(doc! {
                            "battery_level": 1, "social_battery_level": 1, "battery_seq": 1,
                        }),
                )
                .await?;
            let Some(user) = user else {
                release_claim().await?;
                return Ok(RecordOutcome::UserMissing);
            };
            let level = get_int(&user, "battery_level")
                .or_else(|| get_int(&user, "social_battery_level"))
                .unwrap_or(i64::from(battery::INITIAL_LEVEL.value()));
            let seq = get_int(&user, "battery_seq").unwrap_or(0);
            let applied = battery::apply(BatteryLevel::clamped(level), &event.interaction);
            let next = seq + 1;
            match self
                .c(EVENTS)
                .insert_one(event_doc(user_id, next, event, &applied))
                .await
            {
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => {
                    // Another writer holds this step; make sure it is not stuck, then retry.
                    self.roll_forward(user_id, seq).await?;
                    continue;
                }
                Err(e) => {
                    let _ = release_claim().await;
                    return Err(map_err(e));
                }
            }
            let kind = event.interaction.kind().as_str();
            // If this matches nothing, a concurrent writer already rolled us forward.
            self.run(self.c(USERS).update_one(
                at_seq(user_id, seq),
                advance_update(
                    next,
                    kind,
                    applied.energy_delta,
                    applied.level_after.value(),
                    bdt(event.recorded_at),
                ),
            ))
            .await?;
            return Ok(RecordOutcome::Recorded(BatteryEvent {
                id: event.id.clone(),
                user_id: user_id.to_owned(),
                seq: next,
                interaction: event.interaction,
                name: event.name.clone(),
                energy_delta: applied.energy_delta,
                level_before: applied.level_before,
                level_after: applied.level_after,
                duration_minutes: event.duration_minutes,
                occurred_at: event.occurred_at,
                recorded_at: event.recorded_at,
                notes: event.notes.clone(),
                people_count: event.people_count,
                interaction_type: event.interaction_type.clone(),
            }));
        }
        let _ = release_claim().await;
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "battery write contention"
        )))
    }

    async fn battery_history(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
        before_seq: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        let mut query = history_filter(user_id, filter);
        if let Some(before) = before_seq {
            query.insert("seq", doc! { "$lt": before });
        }
        let cursor = self
            .run(
                self.c(EVENTS)
                    .find(query)
                    .sort(doc! { "seq": -1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        let documents = self.run(collect(cursor)).await?;
        Ok(documents.iter().filter_map(event_from_doc).collect())
    }

    async fn battery_summary(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
    ) -> StoreResult<BatterySummary> {
        let (count, recharge, depletion, positive, negative, level_sum) = if filter.from.is_none()
            && filter.to.is_none()
        {
            // Running totals on the user document: O(1).
            let user = self
                .run(
                    self.c(USERS)
                        .find_one(user_filter(user_id))
                        .projection(doc! { "battery_stats": 1 }),
                )
                .await?;
            let stats = user
                .as_ref()
                .and_then(|d| d.get_document("battery_stats").ok().cloned())
                .unwrap_or_default();
            let of = |kind: InteractionKind, field: &str| {
                stats
                    .get_document(kind.as_str())
                    .ok()
                    .and_then(|d| get_int(d, field))
                    .unwrap_or(0)
            };
            let kinds: Vec<InteractionKind> = match filter.kind {
                Some(kind) => vec![kind],
                None => InteractionKind::ALL.to_vec(),
            };
            let sum = |field: &str| kinds.iter().map(|k| of(*k, field)).sum::<i64>();
            let count_of = |kind: InteractionKind| {
                if kinds.contains(&kind) {
                    of(kind, "count")
                } else {
                    0
                }
            };
            (
                sum("count"),
                count_of(InteractionKind::Recharge),
                count_of(InteractionKind::Depletion),
                sum("total_positive"),
                sum("total_negative"),
                sum("level_sum"),
            )
        } else {
            let pipeline = vec![
                doc! { "$match": history_filter(user_id, filter) },
                doc! { "$group": {
                    "_id": Bson::Null,
                    "count": { "$sum": 1 },
                    "recharge": { "$sum": { "$cond": [{ "$eq": ["$kind", "recharge"] }, 1, 0] } },
                    "depletion": { "$sum": { "$cond": [{ "$eq": ["$kind", "depletion"] }, 1, 0] } },
                    "positive": { "$sum": { "$max": ["$energy_delta", 0] } },
                    "negative": { "$sum": { "$max": [{ "$multiply": ["$energy_delta", -1] }, 0] } },
                    "level_sum": { "$sum": "$level_after" },
                } },
            ];
            let cursor = self.run(self.c(EVENTS).aggregate(pipeline)).await?;
            let rows = self.run(collect(cursor)).await?;
            let row = rows.into_iter().next().unwrap_or_default();
            let n = |f: &str| get_int(&row, f).unwrap_or(0);
            (
                n("count"),
                n("recharge"),
                n("depletion"),
                n("positive"),
                n("negative"),
                n("level_sum"),
            )
        };
        Ok(BatterySummary {
            count,
            recharge_count: recharge,
            depletion_count: depletion,
            total_recharged: positive,
            total_depleted: negative,
            average_level: (count > 0)
                .then(|| (level_sum as f64 / count as f64 * 10.0).round() / 10.0),
        })
    }

    async fn export_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<User>> {
        // Ids are ObjectIds (ours and the old service's) and sort as such.
        let filter = match after.map(ObjectId::parse_str) {
            Some(Ok(oid)) => doc! { "_id": { "$gt": oid } },
            Some(Err(_)) => doc! { "_id": { "$gt": after.unwrap_or_default() } },
            None => doc! {},
        };
        let cursor = self
            .run(
                self.c(USERS)
                    .find(filter)
                    .sort(doc! { "_id": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        Ok(self
            .run(collect(cursor))
            .await?
            .iter()
            .filter_map(user_from_doc)
            .collect())
    }

    async fn import_user(&self, user: &User) -> StoreResult<()> {
        let preferences =
            mongodb::bson::to_bson(&serde_json::Value::Object(user.preferences.clone()))
                .map_err(|e| StoreError::Other(e.into()))?;
        let fields = doc! {
            "email": &user.email,
            "hashed_password": &user.hashed_password,
            "display_name": opt_str(&user.display_name),
            "avatar_url": opt_str(&user.avatar_url),
            "bio": opt_str(&user.bio),
            "timezone": opt_str(&user.timezone),
            "introvert_level": user.introvert_level.map_or(Bson::Null, Bson::Int32),
            "is_verified": user.is_verified,
            "onboarding_completed": user.onboarding_completed,
            "onboarding_completed_at": user.onboarding_completed_at.map_or(Bson::Null, bdt),
            "preferences": preferences,
            "battery_level": user.battery_level,
            "battery_updated_at": user.battery_updated_at.map_or(Bson::Null, bdt),
            "created_at": bdt(user.created_at),
            "updated_at": bdt(user.updated_at),
        };
        self.run(
            self.c(USERS)
                .update_one(user_filter(&user.id), doc! { "$set": fields })
                .upsert(true),
        )
        .await
        .map(drop)
    }

    async fn export_events(
        &self,
        user_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        let cursor = self
            .run(
                self.c(EVENTS)
                    .find(doc! { "user_id": user_id, "seq": { "$gt": after_seq } })
                    .sort(doc! { "seq": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        Ok(self
            .run(collect(cursor))
            .await?
            .iter()
            .filter_map(event_from_doc)
            .collect())
    }

    async fn import_events(&self, events: &[BatteryEvent]) -> StoreResult<()> {
        for event in events {
            let new = NewBatteryEvent {
                id: event.id.clone(),
                interaction: event.interaction,
                name: event.name.clone(),
                duration_minutes: event.duration_minutes,
                occurred_at: event.occurred_at,
                recorded_at: event.recorded_at,
                notes: event.notes.clone(),
                people_count: event.people_count,
                interaction_type: event.interaction_type.clone(),
            };
            let applied = battery::Applied {
                level_before: event.level_before,
                level_after: event.level_after,
                energy_delta: event.energy_delta,
            };
            let document = event_doc(&event.user_id, event.seq, &new, &applied);
            self.run(
                self.c(EVENTS)
                    .replace_one(doc! { "_id": &event.id }, document)
                    .upsert(true),
            )
            .await?;
        }
        Ok(())
    }

    async fn finish_battery_import(
        &self,
        user_id: &str,
        level: i32,
        seq: i64,
        updated_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        let pipeline = vec![
            doc! { "$match": { "user_id": user_id } },
            doc! { "$group": {
                "_id": "$kind",
                "count": { "$sum": 1 },
                "total_positive": { "$sum": { "$max": ["$energy_delta", 0] } },
                "total_negative": { "$sum": { "$max": [{ "$multiply": ["$energy_delta", -1] }, 0] } },
                "level_sum": { "$sum": "$level_after" },
            } },
        ];
        let cursor = self.run(self.c(EVENTS).aggregate(pipeline)).await?;
        let mut stats = Document::new();
        for row in self.run(collect(cursor)).await? {
            let Some(kind) = get_str(&row, "_id") else {
                continue;
            };
            let n = |f: &str| get_int(&row, f).unwrap_or(0);
            stats.insert(
                kind,
                doc! {
                    "count": n("count"), "total_positive": n("total_positive"),
                    "total_negative": n("total_negative"), "level_sum": n("level_sum"),
                },
            );
        }
        self.run(self.c(USERS).update_one(
            user_filter(user_id),
            doc! { "$set": {
                "battery_level": level, "battery_seq": seq,
                "battery_updated_at": updated_at.map_or(Bson::Null, bdt), "battery_stats": stats,
            } },
        ))
        .await
        .map(drop)
    }

    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<OneTimeCode>> {
        let cursor = self
            .run(self.c(CODES).find(doc! { "user_id": user_id }))
            .await?;
        Ok(self
            .run(collect(cursor))
            .await?
            .iter()
            .filter_map(code_from_doc)
            .collect())
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        Ok(StoreCounts {
            users: self.run(self.c(USERS).count_documents(doc! {})).await?,
            battery_events: self.run(self.c(EVENTS).count_documents(doc! {})).await?,
        })
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        // TTL indexes do this on MongoDB; doing it here too keeps servers without a TTL
        // monitor tidy.
        let mut removed = 0;
        for collection in [CODES, SESSIONS, REFRESH_TOKENS, MAIL_SENDS] {
            removed += self
                .run(
                    self.c(collection)
                        .delete_many(doc! { "expires_at": { "$lte": bdt(now) } }),
                )
                .await?
                .deleted_count;
        }
        removed += self
            .run(self.c(OUTBOX).delete_many(doc! {
                "status": { "$in": ["sent", "expired"] },
                "finished_at": { "$lte": bdt(now - chrono::Duration::days(7)) },
            }))
            .await?
            .deleted_count;
        removed += self
            .run(self.c(IDEMPOTENCY).delete_many(doc! {
                "created_at": { "$lte": bdt(now - chrono::Duration::hours(24)) }
            }))
            .await?
            .deleted_count;
        Ok(removed)
    }
}
