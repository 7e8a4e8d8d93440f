//! The authenticated read in one round trip: an aggregation on `sessions` that matches
//! the session and brings its user along with a `$lookup` by the user's `_id` (an
//! uncorrelated sub-pipeline, so the string `user_id` of a session and the ObjectId
//! `_id` of a user need no conversion, and the lookup uses the `_id` index).

use async_trait::async_trait;
use mongodb::bson::{doc, RawDocumentBuf};

use super::sessions::SessionDoc;
use super::users::UserDoc;
use super::{decode, name_of, read, user_filter, MongoStore, SESSIONS, USERS};
use crate::store::battery::stored_level;
use crate::store::{BatteryPosition, Caller, CallerStore, StoreError, StoreResult};

#[async_trait]
impl CallerStore for MongoStore {
    async fn caller(&self, session_id: &str, user_id: &str) -> StoreResult<Option<Caller>> {
        let pipeline = vec![
            doc! { "$match": { "_id": session_id, "user_id": user_id } },
            doc! { "$lookup": {
                "from": USERS,
                "pipeline": [{ "$match": user_filter(user_id) }],
                "as": "user",
            } },
        ];
        let cursor = self
            .run(
                self.c(SESSIONS)
                    .aggregate(pipeline)
                    .with_type::<RawDocumentBuf>(),
            )
            .await?;
        let found = self
            .read_all(SESSIONS, cursor, |raw: RawDocumentBuf| Ok(raw))
            .await?;
        let Some(raw) = found.first() else {
            return Ok(None);
        };
        let session = read(SESSIONS, raw, SessionDoc::into_session)?;
        let user = raw
            .get_array("user")
            .ok()
            .and_then(|users| users.into_iter().next())
            .and_then(|first| first.ok())
            .and_then(|first| first.as_document());
        let Some(user) = user else {
            return Ok(None);
        };
        let document: UserDoc = decode(USERS, user)?;
        let seq = document.battery_seq.unwrap_or(0);
        let corrupt = |reason: String| StoreError::corrupt(USERS, name_of(USERS, user), reason);
        let user = document.into_user().map_err(corrupt)?;
        let level = stored_level(user.battery_level.into()).map_err(corrupt)?;
        let updated_at = user.battery_updated_at;
        Ok(Some(Caller {
            session,
            user,
            battery: BatteryPosition {
                level,
                seq,
                updated_at,
            },
        }))
    }
}
