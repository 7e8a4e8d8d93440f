//! `BatteryStore`: parallel records lose no update, the level is the replay of the
//! history, the running totals agree with the history, and idempotency keys hold.

use chrono::TimeZone;
use introgy::battery::{
    self, BatteryLevel, Channel, EnergyImpact, Interaction, InteractionKind, SleepQuality, Totals,
    INITIAL_LEVEL,
};
use introgy::store::{
    HistoryCursor, HistoryFilter, IdempotencyKey, NewBatteryEvent, RecordOutcome,
};

use crate::{at, parallel, store_tests, t0, TestStore};

store_tests!(
    parallel_records_get_contiguous_seqs_and_the_level_is_the_replay_of_the_history,
    the_running_totals_agree_with_the_history_they_summarise,
    a_repeated_key_replays_the_first_event_and_changes_nothing,
    a_key_reused_with_another_body_changes_nothing,
    parallel_requests_with_one_key_record_one_event,
    an_expired_key_records_again,
    recording_for_a_missing_user_changes_nothing,
    history_is_a_timeline_paged_by_occurred_at_then_seq,
    parallel_records_are_stamped_in_acceptance_order,
    records_from_a_stale_position_lose_no_update,
);

fn interaction(i: usize) -> Interaction {
    let impact = EnergyImpact::new(1 + (i as i64 * 7) % 40).unwrap();
    match i % 4 {
        0 => Interaction::Depletion(impact),
        1 => Interaction::Recharge(impact),
        2 => {
            Interaction::Sleep([SleepQuality::Good, SleepQuality::Medium, SleepQuality::Bad][i % 3])
        }
        _ => Interaction::Set(BatteryLevel::try_from((i as i64 * 13) % 101).unwrap()),
    }
}

pub(crate) fn event(i: usize) -> NewBatteryEvent {
    NewBatteryEvent {
        id: introgy::auth::new_object_id(),
        interaction: interaction(i),
        name: Some(format!("event {i}")),
        duration_minutes: 30,
        occurred_at: at(i as i64),
        recorded_at: at(i as i64),
        received: std::time::Instant::now(),
        notes: None,
        people_count: Some(2),
        interaction_type: Some(Channel::InPerson),
    }
}

fn key(name: &str, body: &str) -> IdempotencyKey {
    IdempotencyKey {
        key: name.to_owned(),
        request_hash: introgy::auth::sha256_hex(body),
        not_before: t0() - chrono::Duration::hours(24),
    }
}

fn recorded(outcome: RecordOutcome) -> introgy::store::BatteryEvent {
    match outcome {
        RecordOutcome::Recorded(event) => event,
        other => panic!("expected Recorded, got {other:?}"),
    }
}

const N: usize = 30;

async fn parallel_records_get_contiguous_seqs_and_the_level_is_the_replay_of_the_history(
    s: &TestStore,
) {
    let user = s.user().await;

    let outcomes = parallel(N, |i| {
        let (store, id) = (s.store.clone(), user.id.clone());
        async move {
            store
                .record_interaction(&id, &event(i), None)
                .await
                .unwrap()
        }
    })
    .await;
    let mut events: Vec<_> = outcomes.into_iter().map(recorded).collect();
    events.sort_by_key(|e| e.seq);

    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=N as i64).collect::<Vec<_>>(), "contiguous seqs");
    let mut level = INITIAL_LEVEL;
    for e in &events {
        assert_eq!(
            e.level_before,
            level,
            "event {} starts where {} ended",
            e.seq,
            e.seq - 1
        );
        assert_eq!(battery::apply(level, &e.interaction), e.applied());
        level = e.level_after;
    }
    assert_writers_were_told_the_truth(s, &user.id, &events).await;
}

async fn parallel_records_are_stamped_in_acceptance_order(s: &TestStore) {
    let user = s.user().await;
    // Requests read the clock when they arrive, here in the opposite order of `i`; the
    // store stamps each record when it takes its place, so the two orders agree anyway.
    let outcomes = parallel(N, |i| {
        let (store, id) = (s.store.clone(), user.id.clone());
        let mut event = event(i);
        event.recorded_at = at((N - i) as i64);
        async move { store.record_interaction(&id, &event, None).await.unwrap() }
    })
    .await;
    let mut events: Vec<_> = outcomes.into_iter().map(recorded).collect();
    events.sort_by_key(|e| e.seq);
    for pair in events.windows(2) {
        assert!(
            pair[0].recorded_at <= pair[1].recorded_at,
            "seq {} was stamped {} but seq {} {}",
            pair[0].seq,
            pair[0].recorded_at,
            pair[1].seq,
            pair[1].recorded_at
        );
    }
    // Never earlier than the clock's reading when the request arrived.
    assert!(events.iter().all(|e| e.recorded_at >= at(1)));
    // And the history stores the stamps the writers were told.
    let mut history = s
        .store
        .battery_history(&user.id, &HistoryFilter::default(), None, 100)
        .await
        .unwrap();
    history.sort_by_key(|e| e.seq);
    assert_eq!(history, events);
}

async fn the_running_totals_agree_with_the_history_they_summarise(s: &TestStore) {
    let user = s.user().await;
    parallel(N, |i| {
        let (store, id) = (s.store.clone(), user.id.clone());
        async move {
            store
                .record_interaction(&id, &event(i), None)
                .await
                .unwrap()
        }
    })
    .await;
    let history = s
        .store
        .battery_history(&user.id, &HistoryFilter::default(), None, 100)
        .await
        .unwrap();
    let everything = HistoryFilter {
        from: Some(chrono::Utc.timestamp_millis_opt(0).unwrap()),
        to: Some(at(86_400)),
        kind: None,
    };

    for kind in [None].into_iter().chain(InteractionKind::ALL.map(Some)) {
        let matching: Vec<_> = history
            .iter()
            .filter(|e| kind.is_none_or(|k| e.interaction.kind() == k))
            .collect();
        let expected = matching
            .iter()
            .fold(Totals::default(), |sum, e| sum + Totals::of(&e.applied()));
        let count_of = |k| {
            matching
                .iter()
                .filter(|e| e.interaction.kind() == k)
                .count() as i64
        };
        // Without a time filter: the running totals (O(1)).
        let running = s
            .store
            .battery_summary(
                &user.id,
                &HistoryFilter {
                    kind,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        // With one: aggregated from the events. Both must say the same.
        let aggregated = s
            .store
            .battery_summary(
                &user.id,
                &HistoryFilter {
                    kind,
                    ..everything.clone()
                },
            )
            .await
            .unwrap();
        assert_eq!(running, aggregated, "kind {kind:?}");
        assert_eq!(running.count, expected.count, "kind {kind:?}");
        assert_eq!(
            running.total_recharged, expected.total_positive,
            "kind {kind:?}"
        );
        assert_eq!(
            running.total_depleted, expected.total_negative,
            "kind {kind:?}"
        );
        assert_eq!(
            running.average_level,
            expected.average_level(),
            "kind {kind:?}"
        );
        assert_eq!(running.recharge_count, count_of(InteractionKind::Recharge));
        assert_eq!(
            running.depletion_count,
            count_of(InteractionKind::Depletion)
        );
    }
}

async fn a_repeated_key_replays_the_first_event_and_changes_nothing(s: &TestStore) {
    let user = s.user().await;
    let first = recorded(
        s.store
            .record_interaction(&user.id, &event(0), Some(&key("k1", "body")))
            .await
            .unwrap(),
    );

    let again = s
        .store
        .record_interaction(&user.id, &event(0), Some(&key("k1", "body")))
        .await
        .unwrap();

    assert_eq!(again, RecordOutcome::Replayed(first.clone()));
    let user_now = s.store.user_by_id(&user.id).await.unwrap().unwrap();
    assert_eq!(user_now.battery_level, first.level_after.value());
    assert_eq!(s.count_raw("battery_events").await, 1);
}

async fn a_key_reused_with_another_body_changes_nothing(s: &TestStore) {
    let user = s.user().await;
    s.store
        .record_interaction(&user.id, &event(0), Some(&key("k1", "body")))
        .await
        .unwrap();

    let reused = s
        .store
        .record_interaction(&user.id, &event(1), Some(&key("k1", "other body")))
        .await
        .unwrap();

    assert_eq!(reused, RecordOutcome::KeyReused);
    assert_eq!(s.count_raw("battery_events").await, 1);
}

async fn parallel_requests_with_one_key_record_one_event(s: &TestStore) {
    let user = s.user().await;

    let outcomes = parallel(10, |_| {
        let (store, id) = (s.store.clone(), user.id.clone());
        async move {
            // Each retry has its own event id, as each request would.
            store
                .record_interaction(&id, &event(0), Some(&key("same", "body")))
                .await
                .unwrap()
        }
    })
    .await;

    let recorded: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            RecordOutcome::Recorded(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(recorded.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        match outcome {
            RecordOutcome::Recorded(e) | RecordOutcome::Replayed(e) => assert_eq!(e, &recorded[0]),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(s.count_raw("battery_events").await, 1);
}

async fn an_expired_key_records_again(s: &TestStore) {
    let user = s.user().await;
    s.store
        .record_interaction(&user.id, &event(0), Some(&key("k", "body")))
        .await
        .unwrap();
    let later = IdempotencyKey {
        // A day later: the first use is outside the window.
        not_before: at(1),
        ..key("k", "body")
    };
    let mut next = event(1);
    next.recorded_at = at(86_401);

    let outcome = s
        .store
        .record_interaction(&user.id, &next, Some(&later))
        .await
        .unwrap();

    assert_eq!(recorded(outcome).seq, 2);
}

async fn recording_for_a_missing_user_changes_nothing(s: &TestStore) {
    let missing = introgy::auth::new_object_id();
    let outcome = s
        .store
        .record_interaction(&missing, &event(0), Some(&key("k", "b")))
        .await
        .unwrap();
    assert_eq!(outcome, RecordOutcome::UserMissing);
    assert_eq!(s.count_raw("battery_events").await, 0);
}

/// Seconds after `t0` at which `event(i)` occurred in the timeline test: not in the
/// order they are recorded, with a three-way tie at 3.
const OCCURRED: [i64; 8] = [5, 1, 3, 3, 0, 7, 3, 2];

/// `seq`s of a page.
fn seqs(page: &[introgy::store::BatteryEvent]) -> Vec<i64> {
    page.iter().map(|e| e.seq).collect()
}

async fn history_is_a_timeline_paged_by_occurred_at_then_seq(s: &TestStore) {
    let user = s.user().await;
    for (i, occurred) in OCCURRED.iter().enumerate() {
        let mut event = event(i);
        event.occurred_at = at(*occurred);
        s.store
            .record_interaction(&user.id, &event, None)
            .await
            .unwrap();
    }
    let page = |filter: HistoryFilter, after: Option<HistoryCursor>, limit: u32| {
        let (store, id) = (s.store.clone(), user.id.clone());
        async move {
            store
                .battery_history(&id, &filter, after, limit)
                .await
                .unwrap()
        }
    };
    let all = HistoryFilter::default();
    // Newest occurred_at first; the tie at 3 s newest accepted (seq) first.
    let first = page(all.clone(), None, 3).await;
    assert_eq!(seqs(&first), [6, 1, 7]);
    let second = page(all.clone(), Some(first[2].position()), 3).await;
    assert_eq!(seqs(&second), [4, 3, 8], "a page boundary inside the tie");
    let third = page(all.clone(), Some(second[2].position()), 3).await;
    assert_eq!(seqs(&third), [2, 5]);
    // Levels stay the values at acceptance: replaying in seq order gives them.
    let mut timeline = [first, second, third].concat();
    timeline.sort_by_key(|e| e.seq);
    let mut level = INITIAL_LEVEL;
    for e in &timeline {
        assert_eq!(e.level_before, level);
        level = e.level_after;
    }
    // A type filter pages through the tie too (sleeps: seq 3 and 7, both at 3 s).
    let sleeps = HistoryFilter {
        kind: Some(InteractionKind::Sleep),
        ..Default::default()
    };
    let one = page(sleeps.clone(), None, 1).await;
    assert_eq!(seqs(&one), [7]);
    let two = page(sleeps.clone(), Some(one[0].position()), 1).await;
    assert_eq!(seqs(&two), [3]);
    assert!(page(sleeps, Some(two[0].position()), 1).await.is_empty());
    // `from`/`to` filter occurred_at, inclusive, and combine with a cursor.
    let window = HistoryFilter {
        from: Some(at(2)),
        to: Some(at(3)),
        kind: None,
    };
    assert_eq!(seqs(&page(window, None, 10).await), [7, 4, 3, 8]);
    let until_3 = HistoryFilter {
        to: Some(at(3)),
        ..Default::default()
    };
    let after_seq_4 = HistoryCursor {
        occurred_at: at(3),
        seq: 4,
    };
    assert_eq!(
        seqs(&page(until_3, Some(after_seq_4), 10).await),
        [3, 8, 2, 5]
    );
    let from_2 = HistoryFilter {
        from: Some(at(2)),
        ..Default::default()
    };
    assert_eq!(
        seqs(&page(from_2.clone(), None, 10).await),
        [6, 1, 7, 4, 3, 8]
    );
    assert_eq!(seqs(&page(from_2, Some(after_seq_4), 10).await), [3, 8]);
    // The summary of a window counts the same events.
    let window = HistoryFilter {
        from: Some(at(2)),
        to: Some(at(3)),
        kind: None,
    };
    assert_eq!(
        s.store
            .battery_summary(&user.id, &window)
            .await
            .unwrap()
            .count,
        4
    );
    // The activity route's one call for both says what the two calls say.
    let depletions_from_2 = HistoryFilter {
        from: Some(at(2)),
        kind: Some(InteractionKind::Depletion),
        ..Default::default()
    };
    for (filter, after) in [
        (HistoryFilter::default(), None),
        (window, None),
        (depletions_from_2, Some(after_seq_4)),
    ] {
        let (events, summary) = s
            .store
            .battery_page(&user.id, &filter, after, 3)
            .await
            .unwrap();
        assert_eq!(seqs(&events), seqs(&page(filter.clone(), after, 3).await));
        assert_eq!(
            summary,
            s.store.battery_summary(&user.id, &filter).await.unwrap()
        );
    }
}

/// Few: every writer but one retries from the stored position.
const STALE_WRITERS: usize = 12;

/// Writers that all start from one stale position (what their authenticated reads saw)
/// still get contiguous seqs and the level of the replayed history, with or without keys.
async fn records_from_a_stale_position_lose_no_update(s: &TestStore) {
    let user = s.user().await;
    let seen = s
        .store
        .caller(&s.login(&user.id, at(86_400)).await.0.id, &user.id)
        .await
        .unwrap()
        .expect("the caller")
        .battery;
    assert_eq!((seen.level, seen.seq), (INITIAL_LEVEL, 0));
    let outcomes = parallel(STALE_WRITERS, |i| {
        let (store, id) = (s.store.clone(), user.id.clone());
        async move {
            let key = (i % 2 == 0).then(|| key(&format!("stale-{i}"), "body"));
            store
                .record_interaction_at(&id, seen, &event(i), key.as_ref())
                .await
                .unwrap()
        }
    })
    .await;
    let mut events: Vec<_> = outcomes.into_iter().map(recorded).collect();
    events.sort_by_key(|e| e.seq);
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=STALE_WRITERS as i64).collect::<Vec<_>>(),
        "contiguous seqs"
    );
    assert_writers_were_told_the_truth(s, &user.id, &events).await;
}

/// `events` (sorted by seq) are what the writers were told: the user's level is their
/// replay from the initial level, and the stored history is exactly them (the history is
/// a timeline by occurred_at; the steps are the acceptance order).
async fn assert_writers_were_told_the_truth(
    s: &TestStore,
    user_id: &str,
    events: &[introgy::store::BatteryEvent],
) {
    let replayed = battery::replay(INITIAL_LEVEL, events.iter().map(|e| &e.interaction));
    let user_now = s.store.user_by_id(user_id).await.unwrap().unwrap();
    assert_eq!(user_now.battery_level, replayed.value());
    let mut history = s
        .store
        .battery_history(user_id, &HistoryFilter::default(), None, 100)
        .await
        .unwrap();
    history.sort_by_key(|e| e.seq);
    assert_eq!(history, events);
    crate::insights::assert_buckets(s, user_id).await;
}
