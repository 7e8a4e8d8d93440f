//! Devices (the `client` and `ip` columns of `sessions`), password and email changes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};

use super::codes::{code_with_hash, consume};
use super::users::{user_from_row, USER_COLUMNS};
use super::{millis, Fields, Key, SqliteStore};
use crate::domain::OtpPurpose;
use crate::store::{AccountStore, DeviceSession, EmailChange, OtherSessions, StoreResult};

/// The one `sessions` row → [`DeviceSession`] mapping.
fn device_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceSession> {
    let f = Fields::new(row, "sessions", Key::Column(0));
    Ok(DeviceSession {
        id: f.get(0)?,
        created_at: f.time(1)?,
        last_used_at: f.time(2)?,
        client: f.get(3)?,
        ip: f.get(4)?,
    })
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn set_session_device(
        &self,
        session_id: &str,
        client: &str,
        ip: &str,
    ) -> StoreResult<bool> {
        let (id, client, ip) = (session_id.to_owned(), client.to_owned(), ip.to_owned());
        self.write(move |conn| {
            conn.execute(
                "UPDATE sessions SET client = ?2, ip = ?3 WHERE id = ?1",
                params![id, client, ip],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn user_devices(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<DeviceSession>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, created_at, refreshed_at, client, ip FROM sessions \
                 WHERE user_id = ?1 AND expires_at > ?2 \
                 ORDER BY refreshed_at DESC, id LIMIT ?3",
            )?
            .query_map(params![user_id, millis(now), limit], device_from_row)?
            .collect()
        })
        .await
    }

    async fn delete_user_session(&self, user_id: &str, session_id: &str) -> StoreResult<bool> {
        let (user_id, id) = (user_id.to_owned(), session_id.to_owned());
        // Refresh tokens go with their session (ON DELETE CASCADE).
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM sessions WHERE id = ?1 AND user_id = ?2",
                params![id, user_id],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn change_password(
        &self,
        user_id: &str,
        hash: &str,
        others: &OtherSessions,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let (user_id, hash, others) = (user_id.to_owned(), hash.to_owned(), others.clone());
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let changed = tx.execute(
                "UPDATE users SET hashed_password = ?2, updated_at = ?3 WHERE id = ?1",
                params![user_id, hash, millis(now)],
            )?;
            if let OtherSessions::SignOut { keep } = &others {
                tx.execute(
                    "DELETE FROM sessions WHERE user_id = ?1 AND id <> ?2",
                    params![user_id, keep],
                )?;
            }
            tx.commit()?;
            Ok(changed == 1)
        })
        .await
    }

    async fn change_email(
        &self,
        user_id: &str,
        code_hash: &str,
        keep_session: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<EmailChange> {
        let (user_id, code_hash, keep) = (
            user_id.to_owned(),
            code_hash.to_owned(),
            keep_session.to_owned(),
        );
        let purpose = OtpPurpose::ChangeEmail;
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let code = code_with_hash(&tx, &user_id, purpose, &code_hash)?;
            let Some(new_email) = code
                .filter(|c| c.expires_at > now)
                .and_then(|c| c.new_email)
            else {
                return Ok(EmailChange::NoCode);
            };
            // Spent from here on, whatever follows.
            consume(&tx, &user_id, purpose, &code_hash)?;
            let old_email: Option<String> = tx
                .query_row("SELECT email FROM users WHERE id = ?1", [&user_id], |row| {
                    row.get(0)
                })
                .optional()?;
            let Some(old_email) = old_email else {
                tx.commit()?;
                return Ok(EmailChange::NoCode);
            };
            let holder: Option<(String, bool)> = tx
                .query_row(
                    "SELECT id, is_verified FROM users WHERE email = ?1",
                    [&new_email],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            match holder {
                Some((id, true)) if id != user_id => {
                    tx.commit()?;
                    return Ok(EmailChange::Taken);
                }
                // Never verified: its codes go with it (ON DELETE CASCADE).
                Some((id, false)) if id != user_id => {
                    tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
                }
                _ => {}
            }
            let user = tx
                .prepare_cached(&format!(
                    "UPDATE users SET email = ?2, is_verified = 1, updated_at = ?3 WHERE id = ?1 \
                     RETURNING {USER_COLUMNS}"
                ))?
                .query_row(params![user_id, new_email, millis(now)], user_from_row)?;
            tx.execute("DELETE FROM code_challenges WHERE user_id = ?1", [&user_id])?;
            tx.execute(
                "DELETE FROM sessions WHERE user_id = ?1 AND id <> ?2",
                params![user_id, keep],
            )?;
            tx.commit()?;
            Ok(EmailChange::Changed {
                user: Box::new(user),
                old_email,
            })
        })
        .await
    }
}
