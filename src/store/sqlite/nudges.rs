//! Nudge claims in `nudge_claims` (one row per user, list and period), recipients read
//! from `users.preferences` with SQLite's JSON functions.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;

use super::mail::insert_mail;
use super::{millis, SqliteStore};
use crate::store::{NudgeClaim, NudgeList, NudgeRecipient, NudgeStore, OutboxMail, StoreResult};

#[async_trait]
impl NudgeStore for SqliteStore {
    async fn claim_nudge(&self, claim: &NudgeClaim, mail: &OutboxMail) -> StoreResult<bool> {
        let (claim, mail) = (claim.clone(), mail.clone());
        // One transaction on the one writer: the claim and its mail exist together or
        // not at all, and a second claim finds the first.
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let inserted = tx.execute(
                "INSERT INTO nudge_claims (user_id, list, period, claimed_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![
                    claim.user_id,
                    claim.list.as_str(),
                    claim.period,
                    millis(claim.claimed_at),
                    millis(claim.expires_at)
                ],
            )?;
            if inserted == 0 {
                return Ok(false);
            }
            insert_mail(&tx, &mail)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn nudge_recipients(
        &self,
        list: NudgeList,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<NudgeRecipient>> {
        let path = format!("$.notifications.{}", list.as_str());
        let after = after.unwrap_or("").to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, email FROM users \
                 WHERE id > ?2 AND is_verified = 1 AND json_type(preferences, ?1) = 'true' \
                 ORDER BY id LIMIT ?3",
            )?
            .query_map(params![path, after, limit], |row| {
                Ok(NudgeRecipient {
                    user_id: row.get(0)?,
                    email: row.get(1)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn unsubscribe(
        &self,
        user_id: &str,
        list: NudgeList,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let user_id = user_id.to_owned();
        let (key, path) = (list.as_str(), format!("$.notifications.{}", list.as_str()));
        // One statement: a concurrent profile update of other preferences is not lost.
        self.write(move |conn| {
            conn.execute(
                "UPDATE users SET updated_at = ?4, preferences = CASE \
                   WHEN coalesce(json_type(preferences, '$.notifications'), 'object') = 'object' \
                     THEN json_set(preferences, ?2, json('false')) \
                   ELSE json_set(preferences, '$.notifications', json_object(?3, json('false'))) \
                 END WHERE id = ?1",
                params![user_id, path, key, millis(now)],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn purge_nudge_claims(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM nudge_claims WHERE expires_at <= ?1",
                [millis(now)],
            )
            .map(|n| n as u64)
        })
        .await
    }
}
