//! `LimitStore`: a rate admits its burst and no more, a window holds its limit and frees
//! slots as they leave it or are given back, under parallel callers; on MongoDB, two
//! store handles (two instances of the service) share one budget.

use std::time::Duration;

use chrono::TimeDelta;
use introgy::store::{Budget, LimitKey, Rate, Window};

use crate::{at, parallel, store_tests, t0, TestStore};

store_tests!(
    a_rate_admits_its_burst_then_refuses_with_the_wait,
    parallel_checks_of_one_rate_admit_exactly_the_burst,
    keys_and_budgets_have_their_own_rates,
    a_window_holds_its_limit_until_its_oldest_slot_leaves_it,
    parallel_slot_takers_never_exceed_the_window,
    a_slot_given_back_is_free_again_and_giving_it_twice_frees_no_more,
    spent_windows_are_forgotten,
);

fn key(name: &str) -> LimitKey {
    LimitKey::derive("introgy/test", &[name.as_bytes()])
}

const TEN_IN_FIFTEEN_MINUTES: Window = Window {
    limit: 10,
    window: TimeDelta::minutes(15),
};

async fn a_rate_admits_its_burst_then_refuses_with_the_wait(s: &TestStore) {
    // Five a minute: a burst of five, then one every 12 s.
    let rate = Rate::per_minute(5);
    for n in 0..5 {
        let taken = s
            .store
            .take_rate(Budget::AuthClient, key("a"), rate, t0())
            .await;
        assert!(taken.unwrap().is_ok(), "request {n} of the burst");
    }
    let refused = s
        .store
        .take_rate(Budget::AuthClient, key("a"), rate, t0())
        .await
        .unwrap()
        .expect_err("the sixth request");
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(12),
        "{refused:?}"
    );
}

async fn parallel_checks_of_one_rate_admit_exactly_the_burst(s: &TestStore) {
    let rate = Rate::per_minute(10);
    // The key's first request alone: two first requests of a key at once may both be
    // refused on SecantusDB (docs/mongodb.md), which is strict but not exact.
    let first = s
        .store
        .take_rate(Budget::AuthClient, key("busy"), rate, t0());
    assert!(first.await.unwrap().is_ok());
    let results = parallel(40, |_| {
        let store = s.store.clone();
        async move {
            store
                .take_rate(Budget::AuthClient, key("busy"), rate, t0())
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 9);
}

async fn keys_and_budgets_have_their_own_rates(s: &TestStore) {
    let rate = Rate::per_minute(1);
    let take = |budget, name| s.store.take_rate(budget, key(name), rate, t0());
    assert!(take(Budget::AuthClient, "a").await.unwrap().is_ok());
    assert!(take(Budget::AuthClient, "a").await.unwrap().is_err());
    assert!(take(Budget::AuthClient, "b").await.unwrap().is_ok());
    assert!(take(Budget::Lookup, "a").await.unwrap().is_ok());
}

async fn a_window_holds_its_limit_until_its_oldest_slot_leaves_it(s: &TestStore) {
    let take = |seconds| {
        s.store.take_slot(
            Budget::FailedLogins,
            key("w"),
            TEN_IN_FIFTEEN_MINUTES,
            at(seconds),
        )
    };
    for n in 0..10 {
        let slot = take(n).await.unwrap().expect("a slot within the limit");
        assert_eq!((slot.budget, slot.taken_at), (Budget::FailedLogins, at(n)));
    }
    let refused = take(60).await.unwrap().expect_err("the eleventh slot");
    // The oldest slot (taken at 0 s) leaves the window at 15 min.
    assert_eq!(refused.retry_after, Duration::from_secs(15 * 60 - 60));
    assert!(
        take(15 * 60 - 1).await.unwrap().is_err(),
        "still inside at 14:59"
    );
    assert!(
        take(15 * 60).await.unwrap().is_ok(),
        "the oldest slot left at 15:00"
    );
    assert!(take(15 * 60).await.unwrap().is_err(), "and only that one");
}

async fn parallel_slot_takers_never_exceed_the_window(s: &TestStore) {
    let results = parallel(40, |_| {
        let store = s.store.clone();
        async move {
            store
                .take_slot(
                    Budget::FailedLogins,
                    key("race"),
                    TEN_IN_FIFTEEN_MINUTES,
                    t0(),
                )
                .await
                .unwrap()
        }
    })
    .await;
    let slots: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    assert_eq!(slots.len(), 10);
    let ids: std::collections::HashSet<u64> = slots.iter().map(|slot| slot.id).collect();
    assert_eq!(ids.len(), 10, "every slot has its own id");
}

async fn a_slot_given_back_is_free_again_and_giving_it_twice_frees_no_more(s: &TestStore) {
    let take = || {
        s.store
            .take_slot(Budget::MailShare, key("g"), TEN_IN_FIFTEEN_MINUTES, t0())
    };
    let mut slots = Vec::new();
    for _ in 0..10 {
        slots.push(take().await.unwrap().unwrap());
    }
    assert!(take().await.unwrap().is_err());
    s.store.give_back_slot(&slots[3]).await.unwrap();
    s.store.give_back_slot(&slots[3]).await.unwrap();
    assert!(take().await.unwrap().is_ok(), "the slot given back");
    assert!(take().await.unwrap().is_err(), "only one slot was freed");
}

async fn spent_windows_are_forgotten(s: &TestStore) {
    for name in ["x", "y", "z"] {
        s.store
            .take_slot(
                Budget::FailedLogins,
                key(name),
                TEN_IN_FIFTEEN_MINUTES,
                t0(),
            )
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        s.store
            .limit_keys(Budget::FailedLogins, t0())
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        s.store.limit_keys(Budget::MailShare, t0()).await.unwrap(),
        0
    );
    assert_eq!(s.store.forget_spent_limits(at(60)).await.unwrap(), 0);
    let later = at(15 * 60 + 1);
    assert_eq!(s.store.forget_spent_limits(later).await.unwrap(), 3);
    assert_eq!(
        s.store
            .limit_keys(Budget::FailedLogins, later)
            .await
            .unwrap(),
        0
    );
}

/// Two handles on one MongoDB database are two instances of the service: a budget
/// spent through one is spent for the other, under parallel callers on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs INTROGY_TEST_MONGO_URL; scripts/test runs it with --include-ignored"]
async fn mongodb_instances_share_every_budget() {
    let first = TestStore::mongodb().await;
    let second = first.another_instance().await;
    let stores = [first.store.clone(), second];

    let rate = Rate::per_minute(10);
    let first = stores[1].take_rate(Budget::AuthClient, key("shared"), rate, t0());
    assert!(first.await.unwrap().is_ok());
    let results = parallel(40, |i| {
        let store = stores[i % 2].clone();
        async move {
            store
                .take_rate(Budget::AuthClient, key("shared"), rate, t0())
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 9, "one rate");

    let results = parallel(40, |i| {
        let store = stores[i % 2].clone();
        async move {
            store
                .take_slot(
                    Budget::FailedLogins,
                    key("shared"),
                    TEN_IN_FIFTEEN_MINUTES,
                    t0(),
                )
                .await
                .unwrap()
        }
    })
    .await;
    let slots: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    assert_eq!(slots.len(), 10, "one window");
    // A slot taken through one instance is given back through the other.
    stores[1].give_back_slot(&slots[0]).await.unwrap();
    let again = stores[0]
        .take_slot(
            Budget::FailedLogins,
            key("shared"),
            TEN_IN_FIFTEEN_MINUTES,
            t0(),
        )
        .await
        .unwrap();
    assert!(again.is_ok());
}

/// The per-address mail budget (`MailStore::reserve_mail_send`) is shared the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs INTROGY_TEST_MONGO_URL; scripts/test runs it with --include-ignored"]
async fn mongodb_instances_share_the_mail_budget_of_an_address() {
    let first = TestStore::mongodb().await;
    let stores = [first.store.clone(), first.another_instance().await];
    let limits = introgy::store::SendLimits {
        min_interval: Duration::ZERO,
        per_hour: 5,
    };
    let results = parallel(20, |i| {
        let store = stores[i % 2].clone();
        async move {
            store
                .reserve_mail_send("shared@example.com", t0(), limits)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(results.iter().filter(|ok| **ok).count(), 5, "{results:?}");
}

/// A `mail_sends` document of an earlier version (bare `times`, a version counter)
/// still counts its sends.
#[tokio::test]
#[ignore = "needs INTROGY_TEST_MONGO_URL; scripts/test runs it with --include-ignored"]
async fn mongodb_mail_budgets_written_by_earlier_versions_still_count() {
    let s = TestStore::mongodb().await;
    let times: Vec<i64> = (0..4).map(|n| at(n * 60).timestamp_millis()).collect();
    s.mongo()
        .collection::<mongodb::bson::Document>("mail_sends")
        .insert_one(mongodb::bson::doc! {
            "_id": "old@example.com",
            "times": times,
            "v": 4_i64,
            "expires_at": mongodb::bson::DateTime::from_millis(at(3_780).timestamp_millis()),
        })
        .await
        .unwrap();
    let limits = introgy::store::SendLimits {
        min_interval: Duration::from_secs(60),
        per_hour: 5,
    };
    let reserve = |seconds| {
        s.store
            .reserve_mail_send("old@example.com", at(seconds), limits)
    };
    assert!(
        !reserve(200).await.unwrap(),
        "a minute after the last old send"
    );
    assert!(reserve(240).await.unwrap(), "the fifth of the hour");
    assert!(!reserve(400).await.unwrap(), "a sixth within the hour");
}
