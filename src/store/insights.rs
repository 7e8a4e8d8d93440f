//! Insights' storage: per user, the quarter-hour [`Bucket`]s of the battery history,
//! kept by every write of the history (record, correction, import) in the step that
//! writes it, so a period is read from at most 96 buckets a day whatever the history's
//! length.

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::{BatteryEvent, StoreResult};
use crate::battery::insights::{bucket_of, Entry, StoredBuckets};

pub use crate::battery::insights::Bucket;

impl From<&BatteryEvent> for Entry {
    fn from(event: &BatteryEvent) -> Self {
        let columns = super::battery::InteractionColumns::from(&event.interaction);
        Entry {
            seq: event.seq,
            occurred_at: event.occurred_at,
            kind: columns.kind,
            sleep_quality: columns.sleep_quality,
            interaction_type: event.interaction_type,
            energy_delta: event.energy_delta,
            level_after: event.level_after.value(),
        }
    }
}

/// The buckets a correction changes: the corrected record's old and new ones, and
/// those of the replayed records whose levels changed (`old` and `new` in step).
pub fn touched_buckets<'a>(
    target: &BatteryEvent,
    old: impl IntoIterator<Item = &'a BatteryEvent>,
    new: &'a [BatteryEvent],
) -> BTreeSet<i64> {
    let mut touched = BTreeSet::from([bucket_of(target.occurred_at)]);
    let mut new_by_id: std::collections::HashMap<&str, &BatteryEvent> =
        new.iter().map(|e| (e.id.as_str(), e)).collect();
    for event in old {
        match new_by_id.remove(event.id.as_str()) {
            Some(now) if now == event => {}
            Some(now) => {
                touched.insert(bucket_of(event.occurred_at));
                touched.insert(bucket_of(now.occurred_at));
            }
            None => {
                touched.insert(bucket_of(event.occurred_at));
            }
        }
    }
    touched.extend(new_by_id.values().map(|e| bucket_of(e.occurred_at)));
    touched
}

/// Reading the buckets.
#[async_trait]
pub trait InsightStore: Send + Sync {
    /// `user_id`'s buckets `from..to`, ascending, and the closing level of the last bucket
    /// before `from` (two indexed range reads; the cost is the number of buckets in the
    /// range, never the history's length).
    async fn battery_buckets(
        &self,
        user_id: &str,
        from: i64,
        to: i64,
    ) -> StoreResult<StoredBuckets>;
}
