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
//! - Recording an interaction is lock-free (see `battery.rs`).
//! - Multi-step deletions (reset password, delete account) go in the order that keeps
//!   the account safe if interrupted: the user document changes first, then sessions,
//!   refresh tokens and codes are removed.
//!
//! This file owns the client, the indexes, error mapping and decoding; each collection's
//! typed document (`UserDoc`, `EventDoc`, ...) and its queries live in the file of its
//! aggregate. Documents are written through `Collection<TypedDoc>` and read as raw BSON
//! decoded into the same types, so a document that does not decode is reported as
//! [`StoreError::Corrupt`] naming its collection and `_id`.

mod account;
mod battery;
mod caller;
mod codes;
mod housekeeping;
mod insights;
mod limits;
mod mail;
mod migration;
mod nudges;
mod sessions;
mod topology;
mod users;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use mongodb::bson::{doc, oid::ObjectId, Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::de::DeserializeOwned;

use super::{OpenMode, StoreError, StoreResult};
pub use topology::{MultiWrite, ServerFeatures, Topology};

/// The old service's users collection.
pub const USERS: &str = "IntrogyUsers";
const SESSIONS: &str = "sessions";
const REFRESH_TOKENS: &str = "refresh_tokens";
const CODES: &str = "one_time_codes";
const MAIL_SENDS: &str = "mail_sends";
const EVENTS: &str = "battery_events";
const IDEMPOTENCY: &str = "idempotency_keys";
const OUTBOX: &str = "mail_outbox";
const LIMITS: &str = "limits";
const NUDGE_CLAIMS: &str = "nudge_claims";
const BUCKETS: &str = "battery_buckets";
/// One document per one-off data migration done (its `_id` names it).
const META: &str = "introgy_meta";

/// How many times an optimistic write is retried under contention.
const MAX_RETRIES: usize = 200;

/// MongoDB-backed [`Store`](super::Store).
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    timeout: Duration,
    observer: std::sync::Arc<crate::metrics::StoreObserver>,
    /// What the server can do (`topology.rs`), asked once.
    features: std::sync::Arc<tokio::sync::OnceCell<ServerFeatures>>,
    /// `false` with `MONGO_TRANSACTIONS=off`: flows run as ordered writes even where the
    /// server has transactions.
    allow_transactions: bool,
}

/// The write of a [`MongoStore::bulk_write`] that failed (and stopped the rest).
#[derive(Debug)]
struct FailedWrite {
    index: usize,
    /// A unique index refused it.
    duplicate: bool,
    message: String,
}

/// A document after an update of [`MongoStore::upsert_with_pipeline`].
struct Updated<D> {
    doc: D,
    /// `false`: the document as read after the update, which later updates may have
    /// changed too (SecantusDB's answer to a lost creation race).
    own: bool,
}

/// A time as stored: a BSON date (milliseconds).
fn bdt(at: DateTime<Utc>) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_millis(at.timestamp_millis())
}

/// A stored BSON date back; `Err` for one outside chrono's range.
fn utc(at: mongodb::bson::DateTime) -> Result<DateTime<Utc>, String> {
    Utc.timestamp_millis_opt(at.timestamp_millis())
        .single()
        .ok_or_else(|| format!("{} ms is not a time", at.timestamp_millis()))
}

/// How a document is named in errors: its `_id`, except where the `_id` is an address
/// (masked) or a token hash (named by its session).
fn name_of(collection: &'static str, raw: &RawDocument) -> String {
    let field = |key: &str| match raw.get(key) {
        Ok(Some(RawBsonRef::ObjectId(oid))) => oid.to_hex(),
        Ok(Some(RawBsonRef::String(s))) => s.to_owned(),
        Ok(Some(other)) => format!("({:?})", other.element_type()),
        _ => "(none)".to_owned(),
    };
    match collection {
        MAIL_SENDS => crate::domain::mask_email(&field("_id")),
        REFRESH_TOKENS => format!("of session {}", field("session_id")),
        _ => field("_id"),
    }
}

/// A user's `_id`: an ObjectId when the id is one (always, for ours and the old
/// service's), else the string as stored.
fn user_key(id: &str) -> Bson {
    match ObjectId::parse_str(id) {
        Ok(oid) => Bson::ObjectId(oid),
        Err(_) => Bson::String(id.to_owned()),
    }
}

fn user_filter(id: &str) -> Document {
    doc! { "_id": user_key(id) }
}

/// Decodes a document of `collection` into its typed form.
fn decode<T: DeserializeOwned>(collection: &'static str, raw: &RawDocument) -> StoreResult<T> {
    mongodb::bson::from_slice(raw.as_bytes())
        .map_err(|e| StoreError::corrupt(collection, name_of(collection, raw), e))
}

/// Decodes a document and turns it into a record; errors of either step name it.
fn read<D, T>(
    collection: &'static str,
    raw: &RawDocument,
    into: impl FnOnce(D) -> Result<T, String>,
) -> StoreResult<T>
where
    D: DeserializeOwned,
{
    into(decode(collection, raw)?)
        .map_err(|reason| StoreError::corrupt(collection, name_of(collection, raw), reason))
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

/// A write that may have reached the server and whose result never came back: it may
/// or may not have been applied, so it must not be answered with a 503 ("not applied,
/// safe to retry"). An opaque 500; the log says why.
fn unknown_outcome(cause: anyhow::Error) -> StoreError {
    StoreError::Other(cause.context(
        "MongoDB write outcome unknown: it may have been applied (a retry with the same Idempotency-Key is safe)",
    ))
}

/// [`map_err`] for a write: only an error that proves the write was not sent (no server
/// could be selected, or the driver says no write was performed) is `Unavailable`; a
/// network error after sending is [`unknown_outcome`]. On a replica set the driver has
/// already retried such a write once, and the server recognises the retry (retryable
/// writes), so what is left unknown here is a retry that failed too.
fn write_error(err: mongodb::error::Error) -> StoreError {
    let not_sent = matches!(err.kind.as_ref(), ErrorKind::ServerSelection { .. })
        || err.contains_label(mongodb::error::NO_WRITES_PERFORMED);
    let in_flight = matches!(
        err.kind.as_ref(),
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
    ) || err.contains_label("RetryableWriteError");
    if in_flight && !not_sent && !is_duplicate(&err) {
        unknown_outcome(err.into())
    } else {
        map_err(err)
    }
}

impl MongoStore {
    /// Connects and creates the indexes before serving ([`OpenMode::Create`]).
    pub async fn connect(url: &str, default_db: &str, timeout: Duration) -> anyhow::Result<Self> {
        Self::connect_with(url, default_db, timeout, true).await
    }

    /// [`connect`](Self::connect); `allow_transactions: false` runs every flow of
    /// several writes as ordered writes even where the server has transactions
    /// (`MONGO_TRANSACTIONS=off`).
    pub async fn connect_with(
        url: &str,
        default_db: &str,
        timeout: Duration,
        allow_transactions: bool,
    ) -> anyhow::Result<Self> {
        Self::open_with(
            url,
            default_db,
            timeout,
            OpenMode::Create,
            allow_transactions,
        )
        .await
    }

    /// Connects; with [`OpenMode::Populated`] only when the database already holds the
    /// users collection, and without creating or changing anything (no indexes, no
    /// normalised addresses): a migration's source, `introgy check`.
    pub async fn open(
        url: &str,
        default_db: &str,
        timeout: Duration,
        mode: OpenMode,
    ) -> anyhow::Result<Self> {
        Self::open_with(url, default_db, timeout, mode, true).await
    }

    /// [`open`](Self::open) with the `MONGO_TRANSACTIONS` choice.
    pub async fn open_with(
        url: &str,
        default_db: &str,
        timeout: Duration,
        mode: OpenMode,
        allow_transactions: bool,
    ) -> anyhow::Result<Self> {
        let store = Self::client(url, default_db, timeout, allow_transactions).await?;
        if mode == OpenMode::Populated {
            let names = store
                .run(store.db.list_collection_names())
                .await
                .with_context(|| format!("MongoDB database {} does not answer", store.db.name()))?;
            anyhow::ensure!(
                names.iter().any(|n| n == USERS),
                "the MongoDB database {} holds no {USERS} collection: is the database name right? (`introgy init` creates a new one)",
                store.db.name()
            );
            return Ok(store);
        }
        store.prepare().await;
        Ok(store)
    }

    /// The client and database handle; nothing is sent yet.
    async fn client(
        url: &str,
        default_db: &str,
        timeout: Duration,
        allow_transactions: bool,
    ) -> anyhow::Result<Self> {
        let mut options = ClientOptions::parse(url)
            .await
            .context("Failed to parse the MongoDB connection string")?;
        options.app_name = Some("introgy".into());
        // "Not sent" must be known within the store timeout: a write that finds no
        // server fails here, unapplied, and answers 503 (see `run`).
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        // Every command the driver sends is a round trip of the request it serves
        // (metrics.rs counts them per route). The callback runs on the sending task.
        options.command_event_handler = Some(EventHandler::callback(|event: CommandEvent| {
            if matches!(event, CommandEvent::Started(_)) {
                crate::metrics::count_round_trip();
            }
        }));
        crate::metrics::metrics().count_round_trips_from_now();
        let db_name = options
            .default_database
            .clone()
            .unwrap_or_else(|| default_db.to_owned());
        let client =
            Client::with_options(options).context("Failed to create the MongoDB client")?;
        Ok(Self {
            db: client.database(&db_name),
            timeout,
            observer: std::sync::Arc::new(crate::metrics::StoreObserver::new("mongodb")),
            features: std::sync::Arc::default(),
            allow_transactions,
        })
    }

    /// Creates the indexes and learns the topology before serving. A server that is
    /// down now does not stop the service: requests answer 503 until it is back, and the
    /// indexes are created in the background as soon as it answers.
    async fn prepare(&self) {
        let (store, timeout, db_name) = (self, self.timeout, self.db.name().to_owned());
        let ready = async {
            store.ensure_indexes().await?;
            let writes = store.multi_write().await?;
            anyhow::Ok(writes)
        };
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(writes)) => tracing::info!(
                database = %db_name,
                multi_document_writes = %writes,
                "MongoDB indexes are in place; flows of several writes run as {writes}"
            ),
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
    }

    /// A collection for writes of typed documents.
    fn typed<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.db.collection::<T>(name)
    }

    /// A collection for filters, updates and raw reads.
    fn c(&self, name: &str) -> Collection<Document> {
        self.db.collection::<Document>(name)
    }

    /// A collection whose reads come back undecoded (see [`decode`]).
    fn raw(&self, name: &str) -> Collection<RawDocumentBuf> {
        self.db.collection::<RawDocumentBuf>(name)
    }

    /// Every document of a cursor, read with `into`; the whole read is one bounded call.
    async fn read_all<D, T>(
        &self,
        collection: &'static str,
        mut cursor: mongodb::Cursor<RawDocumentBuf>,
        into: impl Fn(D) -> Result<T, String>,
    ) -> StoreResult<Vec<T>>
    where
        D: DeserializeOwned,
    {
        let records = self
            .run(async {
                let mut out = Vec::new();
                while cursor.advance().await? {
                    out.push(read(collection, cursor.current(), &into));
                }
                Ok(out)
            })
            .await?;
        records.into_iter().collect()
    }

    /// Applies a pipeline `update` to the document `id` of `collection` (created if
    /// absent) and returns the document as it is after: one round trip, atomic.
    ///
    /// Two first updates of one `_id` can both try to create it. MongoDB retries the
    /// loser itself (or reports a duplicate key, and it runs again here). SecantusDB
    /// applies it but answers with no document: then the document is read, and the
    /// answer says it is no longer this update's own ([`Updated::own`] is false) so the
    /// caller can decide on the strict side.
    async fn upsert_with_pipeline<D: DeserializeOwned>(
        &self,
        collection: &'static str,
        id: &str,
        update: Vec<Document>,
    ) -> StoreResult<Updated<D>> {
        for _ in 0..MAX_RETRIES {
            let result = self
                .run(
                    self.raw(collection)
                        .find_one_and_update(doc! { "_id": id }, update.clone())
                        .upsert(true)
                        .return_document(ReturnDocument::After),
                )
                .await;
            let (raw, own) = match result {
                Ok(Some(raw)) => (raw, true),
                Ok(None) => {
                    let raw = self
                        .run(self.raw(collection).find_one(doc! { "_id": id }))
                        .await?
                        .ok_or_else(|| {
                            StoreError::corrupt(collection, id, "an upsert left no document")
                        })?;
                    (raw, false)
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            };
            return Ok(Updated {
                doc: decode(collection, &raw)?,
                own,
            });
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "{collection}: contention on one document"
        )))
    }

    /// Bounds a driver call and maps its error. A read is bounded by the store timeout
    /// (+1 s) and answers 503 past it. A write is never turned into a 503 once it may
    /// have reached the server, because the server may apply it: not sent (no server
    /// selected within the store timeout) is 503; an error after it may have been sent,
    /// or no answer within twice the timeout, is "outcome unknown" (see
    /// [`write_error`] and docs/mongodb.md).
    async fn run<T>(
        &self,
        fut: impl std::future::IntoFuture<Output = Result<T, mongodb::error::Error>>,
    ) -> StoreResult<T> {
        // The driver action's type names the command and whether it writes (metrics.rs).
        let (operation, write) = crate::metrics::mongo_operation(std::any::type_name_of_val(&fut));
        self.run_named(operation, write, fut).await
    }

    /// One ordered `bulkWrite` command across collections (MongoDB 8.0+; see
    /// [`ServerFeatures::client_bulk_write`]): one round trip. A write that fails stops
    /// the ones after it and is reported by its index. Done, it answers how many
    /// documents its updates matched or created (an upsert counts one either way).
    async fn bulk_write(
        &self,
        writes: Vec<mongodb::options::WriteModel>,
    ) -> StoreResult<Result<i64, FailedWrite>> {
        let client = self.db.client().clone();
        self.run_named("bulk_write", true, async move {
            let error = match client.bulk_write(writes).await {
                Ok(done) => return Ok(Ok(done.matched_count + done.upserted_count)),
                Err(error) => error,
            };
            let failed = match error.kind.as_ref() {
                ErrorKind::BulkWrite(bulk) if bulk.write_concern_errors.is_empty() => bulk
                    .write_errors
                    .iter()
                    .min_by_key(|(index, _)| **index)
                    .map(|(index, e)| FailedWrite {
                        index: *index,
                        duplicate: e.code == 11000,
                        message: e.message.clone(),
                    }),
                _ => None,
            };
            failed.map(Err).ok_or(error)
        })
        .await
    }

    /// A namespace of this store's database.
    fn namespace(&self, collection: &str) -> mongodb::Namespace {
        mongodb::Namespace::new(self.db.name(), collection)
    }

    /// [`run`](Self::run) for work that is not one driver action (a transaction, a
    /// bulk write whose errors are read here), named for the metrics.
    async fn run_named<T>(
        &self,
        operation: &'static str,
        write: bool,
        fut: impl std::future::IntoFuture<Output = Result<T, mongodb::error::Error>>,
    ) -> StoreResult<T> {
        let started = std::time::Instant::now();
        let bound = if write {
            self.timeout * 2
        } else {
            self.timeout
        } + Duration::from_secs(1);
        let result = match tokio::time::timeout(bound, fut).await {
            Ok(result) if write => result.map_err(write_error),
            Ok(result) => result.map_err(map_err),
            Err(_) if write => Err(unknown_outcome(anyhow::anyhow!(
                "MongoDB did not answer a write within {bound:?}"
            ))),
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
                    match self.multi_write().await {
                        Ok(writes) => tracing::info!(
                            multi_document_writes = %writes,
                            "MongoDB indexes are in place; flows of several writes run as {writes}"
                        ),
                        Err(e) => tracing::info!(error = %e, "MongoDB indexes are in place"),
                    }
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
            // The purge of accounts never verified.
            (
                USERS,
                index(doc! { "is_verified": 1, "created_at": 1 }, false, None),
            ),
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
            // The timeline: history pages, with and without a type, and time windows.
            (
                EVENTS,
                index(
                    doc! { "user_id": 1, "occurred_at": -1, "seq": -1 },
                    false,
                    None,
                ),
            ),
            (
                EVENTS,
                index(
                    doc! { "user_id": 1, "kind": 1, "occurred_at": -1, "seq": -1 },
                    false,
                    None,
                ),
            ),
            (IDEMPOTENCY, index(doc! { "user_id": 1 }, false, None)),
            // Insights: a period's buckets and the last one before it.
            (
                BUCKETS,
                index(doc! { "user_id": 1, "bucket": 1 }, true, None),
            ),
            (
                OUTBOX,
                index(doc! { "status": 1, "next_attempt_at": 1 }, false, None),
            ),
            (
                IDEMPOTENCY,
                index(doc! { "created_at": 1 }, false, Some(86_400)),
            ),
            (LIMITS, index(doc! { "expires_at": 1 }, false, Some(0))),
            (
                NUDGE_CLAIMS,
                index(doc! { "expires_at": 1 }, false, Some(0)),
            ),
        ];
        for (collection, model) in plan {
            self.c(collection)
                .create_index(model)
                .await
                .with_context(|| format!("Failed to create an index on {collection}"))?;
        }
        self.backfill_buckets()
            .await
            .context("Failed to fill the insights buckets of existing histories")
    }

    /// The old service may have stored addresses with capitals or spaces; this store
    /// matches exact lowercased addresses, so such documents are normalised once. A
    /// document whose normalised address is taken by another is left alone and logged.
    async fn normalise_legacy_emails(&self) -> anyhow::Result<()> {
        let users = self.c(USERS);
        let mut cursor = users
            .find(doc! { "email": { "$regex": "[A-Z]|^\\s|\\s$" } })
            .projection(doc! { "email": 1 })
            .await?;
        let mut found = Vec::new();
        while cursor.advance().await? {
            found.push(cursor.deserialize_current()?);
        }
        for d in found {
            let (Ok(email), Some(id)) = (d.get_str("email"), d.get("_id").cloned()) else {
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
}
