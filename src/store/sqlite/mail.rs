//! The outbox in `mail_outbox` and the mail budget in `mail_sends` (one row per mail
//! sent to an address within the budget's window).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, Row};

use super::{millis, Fields, Key, SqliteStore, Unreadable};
use crate::store::mail::SEND_WINDOW;
use crate::store::{
    MailResult, MailStatus, MailStore, OutboxMail, OutboxStats, SendLimits, StoreResult,
};

const MAIL_COLUMNS: &str =
    "id, recipient, payload, attempts, created_at, next_attempt_at, expires_at";

/// The one `mail_outbox` row → [`OutboxMail`] mapping.
fn mail_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxMail> {
    let f = Fields::new(row, "mail_outbox", Key::Column(0));
    Ok(OutboxMail {
        id: f.get(0)?,
        recipient: f.get(1)?,
        payload: f.get(2)?,
        attempts: f.get(3)?,
        created_at: f.time(4)?,
        next_attempt_at: f.time(5)?,
        expires_at: f.time_opt(6)?,
    })
}

pub(super) fn insert_mail(conn: &Connection, mail: &OutboxMail) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO mail_outbox ({MAIL_COLUMNS}, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        mail.id,
        mail.recipient,
        mail.payload,
        mail.attempts,
        millis(mail.created_at),
        millis(mail.next_attempt_at),
        mail.expires_at.map(millis),
        MailStatus::Pending.as_str()
    ])
    .map(drop)
}

/// Records a mail to `email` if the per-address budget allows it (inside the caller's
/// transaction); `false` otherwise.
pub(super) fn reserve_send(
    conn: &Connection,
    email: &str,
    now: DateTime<Utc>,
    limits: SendLimits,
) -> rusqlite::Result<bool> {
    let now_ms = millis(now);
    conn.execute(
        "DELETE FROM mail_sends WHERE email = ?1 AND sent_at <= ?2",
        params![email, millis(now - SEND_WINDOW)],
    )?;
    let (count, last): (u32, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), MAX(sent_at) FROM mail_sends WHERE email = ?1",
        [email],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let min_interval_ms = limits.min_interval.as_millis() as i64;
    let too_soon = last.is_some_and(|last| now_ms - last < min_interval_ms);
    if count >= limits.per_hour || too_soon {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO mail_sends (email, sent_at) VALUES (?1, ?2)",
        params![email, now_ms],
    )?;
    Ok(true)
}

#[async_trait]
impl MailStore for SqliteStore {
    async fn enqueue_mail(&self, mail: &OutboxMail) -> StoreResult<()> {
        let mail = mail.clone();
        self.write(move |conn| insert_mail(conn, &mail)).await
    }

    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<OutboxMail>> {
        // One statement on the one writer: a due mail is claimed by one caller only.
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let mut claimed = Vec::new();
            let mut unreadable = Vec::new();
            {
                let mut statement = tx.prepare_cached(&format!(
                    "UPDATE mail_outbox SET attempts = attempts + 1, next_attempt_at = ?2 \
                     WHERE id IN (SELECT id FROM mail_outbox WHERE status = ?4 \
                     AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?3) \
                     RETURNING {MAIL_COLUMNS}"
                ))?;
                let rows = statement.query_map(
                    params![
                        millis(now),
                        millis(lease_until),
                        limit,
                        MailStatus::Pending.as_str()
                    ],
                    mail_from_row,
                )?;
                for row in rows {
                    match row {
                        Ok(mail) => claimed.push(mail),
                        Err(e) => match Unreadable::of(e) {
                            Ok(bad) => unreadable.push(bad),
                            Err(e) => return Err(e),
                        },
                    }
                }
            }
            for bad in unreadable {
                tracing::error!(record = bad.record, id = %bad.id, reason = %bad.reason, "outbox: unreadable mail set aside as dead");
                tx.execute(
                    "UPDATE mail_outbox SET status = ?2, last_error = ?3, finished_at = ?4 WHERE id = ?1",
                    params![
                        bad.id,
                        MailStatus::Dead.as_str(),
                        format!("unreadable record: {}", bad.reason),
                        millis(now)
                    ],
                )?;
            }
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    async fn finish_mail(
        &self,
        id: &str,
        result: &MailResult,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (id, result) = (id.to_owned(), result.clone());
        self.write(move |conn| {
            match &result {
                MailResult::Retry { at, error } => conn.execute(
                    "UPDATE mail_outbox SET next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
                    params![id, millis(*at), error],
                ),
                finished => conn.execute(
                    "UPDATE mail_outbox SET status = ?2, last_error = COALESCE(?3, last_error), \
                     finished_at = ?4, payload = '{}' WHERE id = ?1",
                    params![
                        id,
                        finished.status().as_str(),
                        finished.error(),
                        millis(now)
                    ],
                ),
            }
            .map(drop)
        })
        .await
    }

    async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        self.read(|conn| {
            conn.query_row(
                // Two index lookups on (status, ...), not a scan of a week of sent mail.
                "SELECT (SELECT COUNT(*) FROM mail_outbox WHERE status = ?1), \
                        (SELECT COUNT(*) FROM mail_outbox WHERE status = ?2)",
                [MailStatus::Pending.as_str(), MailStatus::Dead.as_str()],
                |r| {
                    Ok(OutboxStats {
                        pending: r.get(0)?,
                        dead: r.get(1)?,
                    })
                },
            )
        })
        .await
    }

    async fn reserve_mail_send(
        &self,
        email: &str,
        now: DateTime<Utc>,
        limits: SendLimits,
    ) -> StoreResult<bool> {
        let email = email.to_owned();
        // Read, decide and insert in one transaction on the one writer.
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            if !reserve_send(&tx, &email, now, limits)? {
                return Ok(false);
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}
