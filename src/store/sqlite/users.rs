//! Users and profiles in the `users` table. Deleting a user removes everything of theirs
//! by `ON DELETE CASCADE`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::codes::{add_code, code_with_hash, consume};
use super::mail::{insert_mail, reserve_send};
use super::{millis, Fields, Key, SqliteStore};
use crate::domain::OtpPurpose;
use crate::store::{
    NewUser, ProfilePatch, ProfileValue, SignupAttempt, SignupOutcome, StoreResult, User, UserStore,
};

pub(super) const USER_COLUMNS: &str = "id, email, hashed_password, display_name, avatar_url, \
    bio, timezone, introvert_level, is_verified, onboarding_completed, onboarding_completed_at, \
    preferences, battery_level, created_at, updated_at, battery_updated_at";

/// The one `users` row → [`User`] mapping (columns in [`USER_COLUMNS`] order).
pub(super) fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let f = Fields::new(row, "users", Key::Column(0));
    let preferences: String = f.get(11)?;
    let preferences = f.check(11, preferences_from_text(&preferences))?;
    let battery_level: i64 = f.get(12)?;
    let battery_level = f.check(12, crate::store::battery::stored_level(battery_level))?;
    Ok(User {
        id: f.get(0)?,
        email: f.get(1)?,
        hashed_password: f.get(2)?,
        display_name: f.get(3)?,
        avatar_url: f.get(4)?,
        bio: f.get(5)?,
        timezone: f.get(6)?,
        introvert_level: f.get(7)?,
        is_verified: f.get(8)?,
        onboarding_completed: f.get(9)?,
        onboarding_completed_at: f.time_opt(10)?,
        preferences,
        battery_level: battery_level.value(),
        created_at: f.time(13)?,
        updated_at: f.time(14)?,
        battery_updated_at: f.time_opt(15)?,
    })
}

/// The `preferences` column: a JSON object.
fn preferences_from_text(raw: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(raw) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn preferences_to_text(preferences: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::to_string(preferences).expect("a JSON map serialises")
}

/// Inserts or replaces a user by id, battery position included (used by import).
pub(super) fn upsert_user(conn: &Connection, user: &User) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO users ({USER_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
             ON CONFLICT (id) DO UPDATE SET email = excluded.email, \
             hashed_password = excluded.hashed_password, display_name = excluded.display_name, \
             avatar_url = excluded.avatar_url, bio = excluded.bio, timezone = excluded.timezone, \
             introvert_level = excluded.introvert_level, is_verified = excluded.is_verified, \
             onboarding_completed = excluded.onboarding_completed, \
             onboarding_completed_at = excluded.onboarding_completed_at, \
             preferences = excluded.preferences, battery_level = excluded.battery_level, \
             created_at = excluded.created_at, updated_at = excluded.updated_at, \
             battery_updated_at = excluded.battery_updated_at"
        ),
        params![
            user.id,
            user.email,
            user.hashed_password,
            user.display_name,
            user.avatar_url,
            user.bio,
            user.timezone,
            user.introvert_level,
            user.is_verified,
            user.onboarding_completed,
            user.onboarding_completed_at.map(millis),
            preferences_to_text(&user.preferences),
            user.battery_level,
            millis(user.created_at),
            millis(user.updated_at),
            user.battery_updated_at.map(millis)
        ],
    )
    .map(drop)
}

fn user_where(conn: &Connection, column: &str, value: &str) -> rusqlite::Result<Option<User>> {
    conn.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE {column} = ?1"
    ))?
    .query_row([value], user_from_row)
    .optional()
}

#[async_trait]
impl UserStore for SqliteStore {
    #[tracing::instrument(skip_all)]
    async fn insert_user(&self, user: &NewUser) -> StoreResult<User> {
        let user = user.clone();
        self.write(move |conn| {
            conn.query_row(
                &format!(
                    "INSERT INTO users (id, email, hashed_password, display_name, battery_level, \
                     created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING {USER_COLUMNS}"
                ),
                params![
                    user.id,
                    user.email,
                    user.hashed_password,
                    user.display_name,
                    user.battery_level,
                    millis(user.now)
                ],
                user_from_row,
            )
        })
        .await
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        let id = id.to_owned();
        self.quick_read(move |conn| user_where(conn, "id", &id))
            .await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let email = email.to_owned();
        self.quick_read(move |conn| user_where(conn, "email", &email))
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn sign_up(&self, attempt: &SignupAttempt) -> StoreResult<SignupOutcome> {
        let attempt = attempt.clone();
        // One transaction on the one writer, running the same statements whatever the
        // address has, up to the last insert (SECURITY.md 29).
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let now = attempt.user.now;
            if !reserve_send(&tx, &attempt.user.email, now, attempt.limits)? {
                return Ok(SignupOutcome::MailRefused);
            }
            let user = &attempt.user;
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO users (id, email, hashed_password, display_name,                      battery_level, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                )?
                .execute(params![
                    user.id,
                    user.email,
                    user.hashed_password,
                    user.display_name,
                    user.battery_level,
                    millis(now)
                ])?;
            let (id, verified): (String, bool) = tx
                .prepare_cached("SELECT id, is_verified FROM users WHERE email = ?1")?
                .query_row([&user.email], |row| Ok((row.get(0)?, row.get(1)?)))?;
            let created = inserted == 1;
            if id != user.id || created == attempt.existing {
                return Ok(SignupOutcome::Raced);
            }
            let outcome = if verified {
                insert_mail(&tx, &attempt.notice_mail)?;
                SignupOutcome::Notified
            } else if add_code(&tx, &attempt.code, attempt.max_pending, attempt.max_attempts)? {
                if created {
                    insert_mail(&tx, &attempt.first_mail)?;
                    SignupOutcome::Created
                } else {
                    insert_mail(&tx, &attempt.repeat_mail)?;
                    SignupOutcome::AttemptAdded
                }
            } else {
                SignupOutcome::TooManyPending
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn complete_verification(
        &self,
        user_id: &str,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        let (user_id, code_hash) = (user_id.to_owned(), code_hash.to_owned());
        // One transaction: the code goes, its attempt's password comes into force, the
        // address is verified.
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let purpose = OtpPurpose::VerifyEmail;
            let Some(code) = code_with_hash(&tx, &user_id, purpose, &code_hash)? else {
                return Ok(None);
            };
            if !consume(&tx, &user_id, purpose, &code_hash)? {
                return Ok(None);
            }
            // A registration attempt's password only ever replaces the one of an account
            // nobody verified yet (the same rule as on MongoDB, where it matters).
            let applied = match &code.signup {
                Some(choice) => tx.execute(
                    "UPDATE users SET hashed_password = ?2, display_name = ?3, is_verified = 1, \
                     updated_at = ?4 WHERE id = ?1 AND is_verified = 0",
                    params![
                        user_id,
                        choice.password_hash,
                        choice.display_name,
                        millis(now)
                    ],
                )?,
                None => tx.execute(
                    "UPDATE users SET is_verified = 1, updated_at = ?2 WHERE id = ?1 AND is_verified = 0",
                    params![user_id, millis(now)],
                )
                .map(|_| 1)?,
            };
            if applied == 0 {
                tx.commit()?;
                return Ok(None);
            }
            let user = user_where(&tx, "id", &user_id)?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    async fn mark_verified(&self, user_id: &str, now: DateTime<Utc>) -> StoreResult<()> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE users SET is_verified = 1, updated_at = ?2 WHERE id = ?1 AND is_verified = 0",
                params![user_id, millis(now)],
            )
            .map(drop)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn reset_password(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (user_id, hash) = (user_id.to_owned(), hash.to_owned());
        // One transaction: the new password, the revocation of every session (refresh
        // tokens go by cascade) and of every outstanding code.
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            tx.execute(
                "UPDATE users SET hashed_password = ?2, is_verified = 1, updated_at = ?3 WHERE id = ?1",
                params![user_id, hash, millis(now)],
            )?;
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [&user_id])?;
            tx.execute("DELETE FROM code_challenges WHERE user_id = ?1", [&user_id])?;
            tx.commit()
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn update_profile(
        &self,
        user_id: &str,
        patch: &ProfilePatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        let (user_id, patch) = (user_id.to_owned(), patch.clone());
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            // Read the whole row: the merge needs the stored preferences, and a row that
            // cannot be read is reported rather than overwritten.
            let Some(current) = user_where(&tx, "id", &user_id)? else {
                return Ok(None);
            };
            let mut sets: Vec<String> = vec!["updated_at = ?2".into()];
            let mut values: Vec<Value> =
                vec![Value::Text(user_id.clone()), Value::Integer(millis(now))];
            let mut push = |column: &str, value: Value| {
                values.push(value);
                sets.push(format!("{column} = ?{}", values.len()));
            };
            for (column, value) in patch.changes() {
                push(
                    column,
                    match value {
                        ProfileValue::Text(v) => v.map_or(Value::Null, |t| Value::Text(t.into())),
                        ProfileValue::Int(v) => v.map_or(Value::Null, |n| Value::Integer(n.into())),
                        ProfileValue::Bool(v) => Value::Integer(v.into()),
                        ProfileValue::Time(v) => {
                            v.map_or(Value::Null, |t| Value::Integer(millis(t)))
                        }
                    },
                );
            }
            if !patch.preferences_set.is_empty() || !patch.preferences_unset.is_empty() {
                let mut preferences = current.preferences;
                for key in &patch.preferences_unset {
                    preferences.remove(key);
                }
                preferences.extend(patch.preferences_set.clone());
                push(
                    "preferences",
                    Value::Text(preferences_to_text(&preferences)),
                );
            }
            tx.execute(
                &format!("UPDATE users SET {} WHERE id = ?1", sets.join(", ")),
                rusqlite::params_from_iter(values),
            )?;
            let user = user_where(&tx, "id", &user_id)?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<bool> {
        let user_id = user_id.to_owned();
        // Sessions, refresh tokens, codes, history, totals and idempotency keys go by
        // cascade, in the same statement.
        self.write(move |conn| {
            conn.execute("DELETE FROM users WHERE id = ?1", [user_id])
                .map(|n| n == 1)
        })
        .await
    }
}
