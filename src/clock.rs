//! The service's notion of "now". Always the system clock in a running service; tests
//! move it forward (`advance`) to see codes, cooldowns, grace windows and sessions
//! expire without waiting and without reaching into the database.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};

#[derive(Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now, to the millisecond (what the stores keep).
    pub fn now(&self) -> DateTime<Utc> {
        (Utc::now() + Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed)))
            .trunc_subsecs(3)
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_clone() {
        let clock = Clock::default();
        let copy = clock.clone();
        let before = copy.now();
        clock.advance(Duration::hours(2));
        assert!(copy.now() - before >= Duration::hours(2));
        assert_eq!(copy.now().timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
