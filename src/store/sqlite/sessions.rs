//! Sessions in `sessions` and their refresh tokens in `refresh_tokens` (which go with
//! their session by `ON DELETE CASCADE`).

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};

use super::{millis, Fields, Key, SqliteStore};
use crate::store::sessions::SEALED_CHILD_KEPT;
use crate::store::{RefreshToken, Rotation, Session, SessionStore, StoreResult};

const TOKEN_COLUMNS: &str = "token_hash, session_id, issued_at, rotated_at, child_sealed";

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
        child_sealed: f.get(4)?,
    })
}

fn token_where_hash(
    conn: &rusqlite::Connection,
    token_hash: &str,
) -> rusqlite::Result<Option<RefreshToken>> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM refresh_tokens WHERE token_hash = ?1"
    ))?
    .query_row([token_hash], token_from_row)
    .optional()
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert_session(&self, session: &Session, first: &RefreshToken) -> StoreResult<()> {
        let (session, first) = (session.clone(), first.clone());
        self.write(move |conn| {
            let tx = conn.savepoint()?;
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
        self.quick_read(move |conn| {
            conn.prepare_cached(
                "SELECT id, user_id, created_at, expires_at, refreshed_at FROM sessions WHERE id = ?1",
            )?
            .query_row([&id], session_from_row)
            .optional()
        })
        .await
    }

    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        let token_hash = token_hash.to_owned();
        self.quick_read(move |conn| token_where_hash(conn, &token_hash))
            .await
    }

    async fn rotate_refresh_token(
        &self,
        parent_hash: &str,
        child: &RefreshToken,
        child_sealed: &str,
    ) -> StoreResult<Rotation> {
        let (parent_hash, child, child_sealed) = (
            parent_hash.to_owned(),
            child.clone(),
            child_sealed.to_owned(),
        );
        // One transaction on the one writer: the conditional update of the parent is the
        // single winner; the child exists exactly when the parent names it.
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let now = child.issued_at;
            let won = tx.execute(
                "UPDATE refresh_tokens SET rotated_at = ?2, child_sealed = ?3                  WHERE token_hash = ?1 AND rotated_at IS NULL",
                params![parent_hash, millis(now), child_sealed],
            )?;
            if won == 0 {
                return Ok(match token_where_hash(&tx, &parent_hash)? {
                    Some(parent) => Rotation::AlreadyRotated(parent),
                    None => Rotation::Gone,
                });
            }
            let touched = tx.execute(
                "UPDATE sessions SET refreshed_at = ?2 WHERE id = ?1",
                params![child.session_id, millis(now)],
            )?;
            if touched == 0 {
                // The session was revoked meanwhile (rolled back on drop).
                return Ok(Rotation::Gone);
            }
            tx.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?1, ?2, ?3)",
                params![child.token_hash, child.session_id, millis(now)],
            )?;
            tx.execute(
                "UPDATE refresh_tokens SET child_sealed = NULL                  WHERE session_id = ?1 AND child_sealed IS NOT NULL AND rotated_at <= ?2",
                params![child.session_id, millis(now - SEALED_CHILD_KEPT)],
            )?;
            tx.commit()?;
            Ok(Rotation::Rotated)
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
