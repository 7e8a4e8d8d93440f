//! Sessions in `sessions` and their refresh tokens in `refresh_tokens` (which go with
//! their session by `ON DELETE CASCADE`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};

use super::{millis, Fields, Key, SqliteStore};
use crate::store::{RefreshToken, Session, SessionStore, StoreResult};

/// The one `sessions` row → [`Session`] mapping.
pub(super) fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    let f = Fields::new(row, "sessions", Key::Column(0));
    Ok(Session {
        id: f.get(0)?,
        user_id: f.get(1)?,
        created_at: f.time(2)?,
        expires_at: f.time(3)?,
        refreshed_at: f.time(4)?,
    })
}

/// The one `refresh_tokens` row → [`RefreshToken`] mapping; errors name the token by its
/// session.
fn token_from_row(row: &Row<'_>) -> rusqlite::Result<RefreshToken> {
    let f = Fields::new(row, "refresh_tokens", Key::Prefixed("of session ", 1));
    Ok(RefreshToken {
        token_hash: f.get(0)?,
        session_id: f.get(1)?,
        issued_at: f.time(2)?,
        rotated_at: f.time_opt(3)?,
    })
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert_session(&self, session: &Session, first: &RefreshToken) -> StoreResult<()> {
        let (session, first) = (session.clone(), first.clone());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO sessions (id, user_id, created_at, expires_at, refreshed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    session.id,
                    session.user_id,
                    millis(session.created_at),
                    millis(session.expires_at),
                    millis(session.refreshed_at)
                ],
            )?;
            tx.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?1, ?2, ?3)",
                params![first.token_hash, first.session_id, millis(first.issued_at)],
            )?;
            tx.commit()
        })
        .await
    }

    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, user_id, created_at, expires_at, refreshed_at FROM sessions WHERE id = ?1",
            )?
            .query_row([id], session_from_row)
            .optional()
        })
        .await
    }

    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        let token_hash = token_hash.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT token_hash, session_id, issued_at, rotated_at FROM refresh_tokens \
                 WHERE token_hash = ?1",
            )?
            .query_row([token_hash], token_from_row)
            .optional()
        })
        .await
    }

    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let token_hash = token_hash.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE refresh_tokens SET rotated_at = ?2 WHERE token_hash = ?1 AND rotated_at IS NULL",
                params![token_hash, millis(now)],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let token = token.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let touched = tx.execute(
                "UPDATE sessions SET refreshed_at = ?2 WHERE id = ?1",
                params![token.session_id, millis(token.issued_at)],
            )?;
            if touched == 0 {
                // The session was revoked meanwhile: same answer as a foreign-key miss.
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error {
                        code: rusqlite::ffi::ErrorCode::ConstraintViolation,
                        extended_code: rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY,
                    },
                    None,
                ));
            }
            tx.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?1, ?2, ?3)",
                params![token.token_hash, token.session_id, millis(token.issued_at)],
            )?;
            tx.commit()
        })
        .await
    }

    async fn delete_session(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM sessions WHERE id = ?1", [id])
                .map(drop)
        })
        .await
    }

    async fn delete_user_sessions(&self, user_id: &str, except: Option<&str>) -> StoreResult<u64> {
        let (user_id, except) = (user_id.to_owned(), except.map(str::to_owned));
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM sessions WHERE user_id = ?1 AND (?2 IS NULL OR id <> ?2)",
                params![user_id, except],
            )
            .map(|n| n as u64)
        })
        .await
    }
}
