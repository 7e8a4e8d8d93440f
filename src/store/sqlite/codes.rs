//! One-time codes: one row per challenge `(user_id, purpose)` in `code_challenges` (the
//! shared guess count) and one row per code in `one_time_codes` (going with its challenge
//! by `ON DELETE CASCADE`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{mail::insert_mail, mail::reserve_send, millis, Fields, Key, SqliteStore};
use crate::domain::OtpPurpose;
use crate::store::{
    Admission, CodeChallenge, CodeStore, OneTimeCode, OutboxMail, SendLimits, SignupChoice,
    StoreResult,
};

const CODE_COLUMNS: &str =
    "user_id, purpose, code_hash, password_hash, display_name, created_at, expires_at, new_email";

/// The one `one_time_codes` row → [`OneTimeCode`] mapping.
fn code_from_row(row: &Row<'_>) -> rusqlite::Result<OneTimeCode> {
    let f = Fields::new(row, "one_time_codes", Key::Columns(0, 1));
    let password_hash: Option<String> = f.get(3)?;
    Ok(OneTimeCode {
        user_id: f.get(0)?,
        purpose: f.parse(1)?,
        code_hash: f.get(2)?,
        signup: match password_hash {
            Some(password_hash) => Some(SignupChoice {
                password_hash,
                display_name: f.get(4)?,
            }),
            None => None,
        },
        new_email: f.get(7)?,
        created_at: f.time(5)?,
        expires_at: f.time(6)?,
    })
}

fn insert_code(conn: &Connection, code: &OneTimeCode) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO one_time_codes ({CODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        code.user_id,
        code.purpose.as_str(),
        code.code_hash,
        code.signup.as_ref().map(|s| &s.password_hash),
        code.signup.as_ref().and_then(|s| s.display_name.as_ref()),
        millis(code.created_at),
        millis(code.expires_at),
        code.new_email
    ])
    .map(drop)
}

/// Replaces the challenge of `(user, purpose)` (inside the caller's transaction).
fn replace_challenge(
    conn: &Connection,
    user_id: &str,
    purpose: OtpPurpose,
    attempts: u32,
    codes: &[OneTimeCode],
) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM code_challenges WHERE user_id = ?1 AND purpose = ?2",
        params![user_id, purpose.as_str()],
    )?;
    conn.execute(
        "INSERT INTO code_challenges (user_id, purpose, attempts) VALUES (?1, ?2, ?3)",
        params![user_id, purpose.as_str(), attempts],
    )?;
    for code in codes {
        insert_code(conn, code)?;
    }
    Ok(())
}

/// The live codes of `(user, purpose)`, oldest first.
fn live_codes(
    conn: &Connection,
    user_id: &str,
    purpose: OtpPurpose,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<OneTimeCode>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {CODE_COLUMNS} FROM one_time_codes \
         WHERE user_id = ?1 AND purpose = ?2 AND expires_at > ?3 ORDER BY created_at, code_hash"
    ))?;
    let rows = statement.query_map(
        params![user_id, purpose.as_str(), millis(now)],
        code_from_row,
    )?;
    rows.collect()
}

/// Adds a registration attempt's code to its challenge by the [`Admission`] rule (inside
/// the caller's transaction); `false` when the challenge is full.
pub(super) fn add_code(
    conn: &Connection,
    code: &OneTimeCode,
    max_pending: u32,
    max_attempts: u32,
) -> rusqlite::Result<bool> {
    let now = code.created_at;
    let attempts: Option<u32> = conn
        .query_row(
            "SELECT attempts FROM code_challenges WHERE user_id = ?1 AND purpose = ?2",
            params![code.user_id, code.purpose.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    let live = live_codes(conn, &code.user_id, code.purpose, now)?;
    let hashes: Vec<&str> = live.iter().map(|c| c.code_hash.as_str()).collect();
    match Admission::decide(
        attempts.unwrap_or(0),
        &hashes,
        &code.code_hash,
        max_pending,
        max_attempts,
    ) {
        Admission::Fresh => replace_challenge(
            conn,
            &code.user_id,
            code.purpose,
            0,
            std::slice::from_ref(code),
        )?,
        Admission::Join => {
            // Expired codes of a live challenge go now rather than at the next purge.
            conn.execute(
                "DELETE FROM one_time_codes WHERE user_id = ?1 AND purpose = ?2 AND expires_at <= ?3",
                params![code.user_id, code.purpose.as_str(), millis(now)],
            )?;
            insert_code(conn, code)?;
        }
        Admission::Full => return Ok(false),
    }
    Ok(true)
}

#[async_trait]
impl CodeStore for SqliteStore {
    async fn put_challenge(&self, challenge: &CodeChallenge) -> StoreResult<()> {
        let challenge = challenge.clone();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            replace_challenge(
                &tx,
                &challenge.user_id,
                challenge.purpose,
                challenge.attempts,
                &challenge.codes,
            )?;
            tx.commit()
        })
        .await
    }

    async fn issue_code(
        &self,
        email: &str,
        limits: SendLimits,
        code: &OneTimeCode,
        mail: &OutboxMail,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let (email, code, mail) = (email.to_owned(), code.clone(), mail.clone());
        // One transaction: the budget, the code and its mail exist together or not at all.
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            if !reserve_send(&tx, &email, now, limits)? {
                return Ok(false);
            }
            replace_challenge(
                &tx,
                &code.user_id,
                code.purpose,
                0,
                std::slice::from_ref(&code),
            )?;
            insert_mail(&tx, &mail)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CodeChallenge>> {
        let user_id = user_id.to_owned();
        // On the one writer: the count and the check cannot interleave. Both statements
        // run whether or not anything matches, so an unknown address costs the same.
        self.write(move |conn| {
            let attempts: Option<u32> = conn
                .prepare_cached(
                    "UPDATE code_challenges SET attempts = attempts + 1 \
                     WHERE user_id = ?1 AND purpose = ?2 AND attempts < ?3 AND EXISTS \
                     (SELECT 1 FROM one_time_codes c WHERE c.user_id = ?1 AND c.purpose = ?2 \
                      AND c.expires_at > ?4) \
                     RETURNING attempts",
                )?
                .query_row(
                    params![user_id, purpose.as_str(), max_attempts, millis(now)],
                    |row| row.get(0),
                )
                .optional()?;
            if attempts.is_none() {
                // Nothing was counted, so nothing would be written: write one page anyway
                // (see the `timing_ballast` migration).
                conn.prepare_cached(
                    "UPDATE timing_ballast SET n = (n + 1) % 1000000 WHERE id = 1",
                )?
                .execute([])?;
            }
            let codes = live_codes(conn, &user_id, purpose, now)?;
            Ok(attempts.map(|attempts| CodeChallenge {
                user_id,
                purpose,
                attempts,
                codes,
            }))
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
        self.write(move |conn| consume(conn, &user_id, purpose, &code_hash))
            .await
    }

    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<CodeChallenge>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let challenges: Vec<(String, u32)> = conn
                .prepare_cached(
                    "SELECT purpose, attempts FROM code_challenges WHERE user_id = ?1 ORDER BY purpose",
                )?
                .query_map([&user_id], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::new();
            for (purpose, attempts) in challenges {
                let mut statement = conn.prepare_cached(&format!(
                    "SELECT {CODE_COLUMNS} FROM one_time_codes WHERE user_id = ?1 AND purpose = ?2 \
                     ORDER BY created_at, code_hash"
                ))?;
                let codes = statement
                    .query_map(params![user_id, purpose], code_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let purpose = purpose.parse().map_err(|e| {
                    super::unreadable("code_challenges", format!("{user_id}:{purpose}"), e)
                })?;
                out.push(CodeChallenge {
                    user_id: user_id.clone(),
                    purpose,
                    attempts,
                    codes,
                });
            }
            Ok(out)
        })
        .await
    }
}

/// Deletes the challenge of `(user, purpose)` if it holds `code_hash` (inside the
/// caller's transaction, or alone); `true` if it did.
pub(super) fn consume(
    conn: &Connection,
    user_id: &str,
    purpose: OtpPurpose,
    code_hash: &str,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "DELETE FROM code_challenges WHERE user_id = ?1 AND purpose = ?2 AND EXISTS \
         (SELECT 1 FROM one_time_codes c WHERE c.user_id = ?1 AND c.purpose = ?2 \
          AND c.code_hash = ?3)",
    )?
    .execute(params![user_id, purpose.as_str(), code_hash])
    .map(|n| n == 1)
}

/// The code of `(user, purpose)` with `code_hash`, if outstanding.
pub(super) fn code_with_hash(
    conn: &Connection,
    user_id: &str,
    purpose: OtpPurpose,
    code_hash: &str,
) -> rusqlite::Result<Option<OneTimeCode>> {
    conn.prepare_cached(&format!(
        "SELECT {CODE_COLUMNS} FROM one_time_codes WHERE user_id = ?1 AND purpose = ?2 AND code_hash = ?3"
    ))?
    .query_row(params![user_id, purpose.as_str(), code_hash], code_from_row)
    .optional()
}
