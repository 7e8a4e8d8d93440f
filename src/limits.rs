//! In-process rate limits (governor, GCRA) for routes that must not be scraped.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::{ApiError, ApiResult};

/// `/users/lookup` calls allowed per caller per minute (SECURITY.md 11).
pub const LOOKUPS_PER_MINUTE: u32 = 30;

pub struct Limits {
    lookup: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

impl Limits {
    pub fn new() -> Self {
        let per_minute = NonZeroU32::new(LOOKUPS_PER_MINUTE).expect("non-zero");
        Self {
            lookup: RateLimiter::dashmap(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
        }
    }

    /// 429 with `Retry-After` once the caller has used up its lookups.
    pub fn check_lookup(&self, user_id: &str) -> ApiResult<()> {
        self.lookup
            .check_key(&user_id.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                ApiError::TooManyRequests {
                    retry_after_secs: wait.as_secs() + 1,
                }
            })
    }

    /// Forgets callers whose budget is full again (keeps memory bounded).
    pub fn retain_recent(&self) {
        self.lookup.retain_recent();
    }
}
