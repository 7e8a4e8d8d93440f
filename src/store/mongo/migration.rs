//! Export and import for `introgy migrate`, through the same typed documents as the
//! rest of the store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::{doc, oid::ObjectId};

use super::battery::{stats_document, EventDoc};
use super::users::UserDoc;
use super::{bdt, user_filter, MongoStore, BUCKETS, EVENTS, USERS};
use crate::store::{BatteryEvent, MigrationStore, StoreCounts, StoreError, StoreResult, User};

#[async_trait]
impl MigrationStore for MongoStore {
    async fn export_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<User>> {
        // Ids are ObjectIds (ours and the old service's) and sort as such.
        let filter = match after.map(ObjectId::parse_str) {
            Some(Ok(oid)) => doc! { "_id": { "$gt": oid } },
            Some(Err(_)) => doc! { "_id": { "$gt": after.unwrap_or_default() } },
            None => doc! {},
        };
        let cursor = self
            .run(
                self.raw(USERS)
                    .find(filter)
                    .sort(doc! { "_id": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        self.read_all(USERS, cursor, UserDoc::into_user).await
    }

    async fn import_user(&self, user: &User) -> StoreResult<()> {
        // Every field but `_id` and the battery's step and totals (set by
        // `finish_battery_import`).
        let mut fields = mongodb::bson::to_document(&UserDoc::of(user)?)
            .map_err(|e| StoreError::Other(e.into()))?;
        fields.remove("_id");
        self.run(
            self.c(USERS)
                .update_one(user_filter(&user.id), doc! { "$set": fields })
                .upsert(true),
        )
        .await
        .map(drop)
    }

    async fn export_events(
        &self,
        user_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        let cursor = self
            .run(
                self.raw(EVENTS)
                    .find(doc! { "user_id": user_id, "seq": { "$gt": after_seq } })
                    .sort(doc! { "seq": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        self.read_all(EVENTS, cursor, EventDoc::into_event).await
    }

    async fn import_events(&self, events: &[BatteryEvent]) -> StoreResult<()> {
        let collection = self.typed::<EventDoc>(EVENTS);
        for event in events {
            self.run(
                collection
                    .replace_one(doc! { "_id": &event.id }, EventDoc::of(event))
                    .upsert(true),
            )
            .await?;
        }
        Ok(())
    }

    async fn finish_battery_import(
        &self,
        user_id: &str,
        level: i32,
        seq: i64,
        updated_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        let totals = self.aggregate_totals(doc! { "user_id": user_id }).await?;
        self.run(self.c(USERS).update_one(
            user_filter(user_id),
            doc! { "$set": {
                "battery_level": level, "battery_seq": seq,
                "battery_updated_at": updated_at.map(bdt), "battery_stats": stats_document(&totals),
            } },
        ))
        .await?;
        // Insights buckets from the imported history (a second run starts over).
        self.run(self.c(BUCKETS).delete_many(doc! { "user_id": user_id }))
            .await?;
        self.fill_user_buckets(user_id).await
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        Ok(StoreCounts {
            users: self.run(self.c(USERS).count_documents(doc! {})).await?,
            battery_events: self.run(self.c(EVENTS).count_documents(doc! {})).await?,
        })
    }
}
