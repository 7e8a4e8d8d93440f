//! One-time codes in `one_time_codes`, one row per `(user_id, purpose)`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::{mail::insert_mail, millis, Fields, Key, SqliteStore};
use crate::domain::OtpPurpose;
use crate::store::{CodeStore, OneTimeCode, OutboxMail, StoreResult};

const CODE_COLUMNS: &str = "user_id, purpose, code_hash, attempts, created_at, expires_at";

/// The one `one_time_codes` row → [`OneTimeCode`] mapping.
fn code_from_row(row: &Row<'_>) -> rusqlite::Result<OneTimeCode> {
    let f = Fields::new(row, "one_time_codes", Key::Columns(0, 1));
    Ok(OneTimeCode {
        user_id: f.get(0)?,
        purpose: f.parse(1)?,
        code_hash: f.get(2)?,
        attempts: f.get(3)?,
        created_at: f.time(4)?,
        expires_at: f.time(5)?,
    })
}

fn upsert_code(conn: &Connection, code: &OneTimeCode) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO one_time_codes ({CODE_COLUMNS}) VALUES (?1, ?2, ?3, 0, ?4, ?5) \
             ON CONFLICT (user_id, purpose) DO UPDATE SET code_hash = excluded.code_hash, \
             attempts = 0, created_at = excluded.created_at, expires_at = excluded.expires_at"
        ),
        params![
            code.user_id,
            code.purpose.as_str(),
            code.code_hash,
            millis(code.created_at),
            millis(code.expires_at)
        ],
    )
    .map(drop)
}

#[async_trait]
impl CodeStore for SqliteStore {
    async fn put_code(&self, code: &OneTimeCode) -> StoreResult<()> {
        let code = code.clone();
        self.write(move |conn| upsert_code(conn, &code)).await
    }

    async fn put_code_and_mail(&self, code: &OneTimeCode, mail: &OutboxMail) -> StoreResult<()> {
        let (code, mail) = (code.clone(), mail.clone());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            upsert_code(&tx, &code)?;
            insert_mail(&tx, &mail)?;
            tx.commit()
        })
        .await
    }

    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<OneTimeCode>> {
        let user_id = user_id.to_owned();
        // One statement on the one writer: the count and the check cannot interleave.
        self.write(move |conn| {
            conn.query_row(
                &format!(
                    "UPDATE one_time_codes SET attempts = attempts + 1 \
                     WHERE user_id = ?1 AND purpose = ?2 AND attempts < ?3 AND expires_at > ?4 \
                     RETURNING {CODE_COLUMNS}"
                ),
                params![user_id, purpose.as_str(), max_attempts, millis(now)],
                code_from_row,
            )
            .optional()
        })
        .await
    }

    async fn consume_code(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        code_hash: &str,
    ) -> StoreResult<bool> {
        let (user_id, code_hash) = (user_id.to_owned(), code_hash.to_owned());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM one_time_codes WHERE user_id = ?1 AND purpose = ?2 AND code_hash = ?3",
                params![user_id, purpose.as_str(), code_hash],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<OneTimeCode>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {CODE_COLUMNS} FROM one_time_codes WHERE user_id = ?1"
            ))?;
            let rows = statement.query_map([user_id], code_from_row)?;
            rows.collect()
        })
        .await
    }
}
