//! The store conformance suite: every promise written on a store trait, driven through
//! the traits (not over HTTP), on both backends.
//!
//! Each test body is an `async fn(&TestStore)` and `store_tests!` makes two tests of it:
//! `<name>::sqlite` on a fresh temporary SQLite file, and `<name>::mongodb` on a fresh
//! MongoDB database at `INTROGY_TEST_MONGO_URL`. The MongoDB half is marked ignored, so a
//! plain `cargo test` runs the SQLite half and lists the MongoDB half as ignored (never a
//! silent pass); `scripts/test` starts a server and runs both with `--include-ignored`.

mod account;
mod battery;
mod codes;
mod corrections;
mod corrupt;
mod housekeeping;
mod insights;
mod limits;
mod mail;
mod nudges;
mod sessions;
mod signup;
mod users;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use introgy::store::mongo::MongoStore;
use introgy::store::sqlite::SqliteStore;
use introgy::store::{NewUser, RefreshToken, Session, Store, User};
use mongodb::bson::{doc, oid::ObjectId, Bson};

/// Makes a `sqlite` and a `mongodb` test of each named `async fn(&TestStore)`.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(&crate::TestStore::sqlite().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "needs INTROGY_TEST_MONGO_URL; scripts/test runs it with --include-ignored"]
            async fn mongodb() {
                super::$name(&crate::TestStore::mongodb().await).await
            }
        }
    )*};
}
pub(crate) use store_tests;

/// SecantusDB can deadlock on concurrent DDL (docs/mongodb.md): one store at a time
/// creates its indexes.
static MONGO_SETUP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh store of one backend, and a way around it to write bad records.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    backend: Raw,
    _dir: tempfile::TempDir,
}

enum Raw {
    Sqlite(std::path::PathBuf),
    Mongo(mongodb::Database),
}

/// A value to write directly into a record.
pub enum RawValue {
    Int(i64),
    Text(&'static str),
}

impl TestStore {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path, Duration::from_secs(10))
            .await
            .expect("open SQLite");
        Self {
            store: Arc::new(store),
            backend: Raw::Sqlite(path),
            _dir: dir,
        }
    }

    pub async fn mongodb() -> Self {
        Self::mongodb_with_transactions(true).await
    }

    /// [`mongodb`](Self::mongodb); `false` is `MONGO_TRANSACTIONS=off`.
    pub async fn mongodb_with_transactions(transactions: bool) -> Self {
        let url = mongo_url();
        let name = format!("introgy_store_{}", introgy::auth::random_hex(8));
        let store = {
            let _guard = MONGO_SETUP.lock().await;
            MongoStore::connect_with(&url, &name, Duration::from_secs(10), transactions)
                .await
                .expect("connect to MongoDB")
        };
        let db = mongodb::Client::with_uri_str(&url)
            .await
            .expect("test MongoDB client")
            .database(&name);
        Self {
            store: Arc::new(store),
            backend: Raw::Mongo(db),
            _dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Another handle on this MongoDB database, with its own client: what a second
    /// instance of the service has.
    pub async fn another_instance(&self) -> Arc<dyn Store> {
        let name = self.mongo().name().to_owned();
        let _guard = MONGO_SETUP.lock().await;
        Arc::new(
            MongoStore::connect(&mongo_url(), &name, Duration::from_secs(10))
                .await
                .expect("connect to MongoDB"),
        )
    }

    pub fn is_mongo(&self) -> bool {
        matches!(self.backend, Raw::Mongo(_))
    }

    /// The MongoDB database (MongoDB-only tests).
    pub fn mongo(&self) -> &mongodb::Database {
        match &self.backend {
            Raw::Mongo(db) => db,
            Raw::Sqlite(_) => panic!("a MongoDB-only test on SQLite"),
        }
    }

    /// The name a backend gives a record kind in errors (MongoDB keeps the old
    /// service's `IntrogyUsers`).
    pub fn record_name(&self, table: &'static str) -> &'static str {
        match (&self.backend, table) {
            (Raw::Mongo(_), "users") => "IntrogyUsers",
            _ => table,
        }
    }

    /// Writes `field = value` into the record of `table` whose key is `id`, bypassing
    /// the store (as a bad migration or a hand edit would).
    pub async fn write_raw(&self, table: &'static str, id: &str, field: &str, value: RawValue) {
        match &self.backend {
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open the test database");
                let key = if table == "refresh_tokens" {
                    "token_hash"
                } else {
                    "id"
                };
                let value = match value {
                    RawValue::Int(n) => rusqlite::types::Value::Integer(n),
                    RawValue::Text(s) => rusqlite::types::Value::Text(s.to_owned()),
                };
                let changed = conn
                    .execute(
                        &format!("UPDATE {table} SET {field} = ?1 WHERE {key} = ?2"),
                        rusqlite::params![value, id],
                    )
                    .expect("raw update");
                assert_eq!(changed, 1, "no {table} row {id}");
            }
            Raw::Mongo(db) => {
                let value = match value {
                    RawValue::Int(n) => Bson::Int64(n),
                    RawValue::Text(s) => Bson::String(s.to_owned()),
                };
                let key = match ObjectId::parse_str(id) {
                    Ok(oid) if table == "users" => Bson::ObjectId(oid),
                    _ => Bson::String(id.to_owned()),
                };
                let changed = db
                    .collection::<mongodb::bson::Document>(self.record_name(table))
                    .update_one(doc! { "_id": key }, doc! { "$set": { field: value } })
                    .await
                    .expect("raw update");
                assert_eq!(changed.matched_count, 1, "no {table} document {id}");
            }
        }
    }

    /// Reads one text field of a record directly.
    pub async fn read_raw_text(&self, table: &'static str, id: &str, field: &str) -> String {
        match &self.backend {
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open the test database");
                conn.query_row(
                    &format!("SELECT {field} FROM {table} WHERE id = ?1"),
                    [id],
                    |r| r.get(0),
                )
                .expect("raw read")
            }
            Raw::Mongo(db) => db
                .collection::<mongodb::bson::Document>(self.record_name(table))
                .find_one(doc! { "_id": id })
                .await
                .expect("raw read")
                .expect("the document exists")
                .get_str(field)
                .expect("a text field")
                .to_owned(),
        }
    }

    /// How many records `table` holds.
    pub async fn count_raw(&self, table: &'static str) -> u64 {
        match &self.backend {
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open the test database");
                conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                    .expect("raw count")
            }
            Raw::Mongo(db) => db
                .collection::<mongodb::bson::Document>(self.record_name(table))
                .count_documents(doc! {})
                .await
                .expect("raw count"),
        }
    }

    /// A new session of `user_id` until `expires_at`, with its first refresh token.
    pub async fn login(&self, user_id: &str, expires_at: DateTime<Utc>) -> (Session, RefreshToken) {
        let session = Session {
            id: introgy::auth::random_hex(16),
            user_id: user_id.to_owned(),
            created_at: t0(),
            expires_at,
            refreshed_at: t0(),
        };
        let token = RefreshToken {
            token_hash: introgy::auth::random_hex(32),
            session_id: session.id.clone(),
            issued_at: t0(),
            rotated_at: None,
            child_sealed: None,
        };
        self.store
            .insert_session(&session, &token)
            .await
            .expect("insert session");
        (session, token)
    }

    /// Whether `session` and its refresh `token` are still stored: `(session, token)`.
    pub async fn signed_in(&self, session: &Session, token: &RefreshToken) -> (bool, bool) {
        let session = self.store.session(&session.id).await.expect("read session");
        let token = self
            .store
            .refresh_token(&token.token_hash)
            .await
            .expect("read refresh token");
        (session.is_some(), token.is_some())
    }

    /// A fresh user at the initial battery level.
    pub async fn user(&self) -> User {
        self.store
            .insert_user(&NewUser {
                id: introgy::auth::new_object_id(),
                email: format!("user-{}@example.com", introgy::auth::random_hex(6)),
                hashed_password: "$2b$04$hash".into(),
                display_name: None,
                battery_level: introgy::battery::INITIAL_LEVEL.value(),
                now: t0(),
            })
            .await
            .expect("insert user")
    }
}

fn mongo_url() -> String {
    std::env::var("INTROGY_TEST_MONGO_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect(
            "the MongoDB half of the store suite needs INTROGY_TEST_MONGO_URL; run scripts/test",
        )
}

/// A fixed "now" for the suite (whole milliseconds, as both stores keep).
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// `t0` plus `seconds`.
pub fn at(seconds: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(seconds)
}

/// Runs `n` copies of `task(i)` at once and collects their results in order.
pub async fn parallel<T, F, Fut>(n: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let work = task(i);
            tokio::spawn(async move {
                // Line everyone up first, so the calls really overlap.
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for handle in handles {
        out.push(handle.await.expect("task panicked"));
    }
    out
}
