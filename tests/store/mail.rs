//! `MailStore`: no mail claimed twice in parallel, leases expire, finishing erases the
//! payload, and the per-address budget holds under parallel reservations.

use std::collections::HashSet;
use std::time::Duration;

use introgy::store::{MailResult, OutboxMail, OutboxStats, SendLimits};

use crate::{at, parallel, store_tests, t0, TestStore};

store_tests!(
    parallel_claimers_never_claim_one_mail_twice,
    a_claimed_mail_is_claimable_again_when_its_lease_ends,
    finishing_a_mail_erases_its_payload_and_it_is_never_claimed_again,
    a_retry_waits_for_its_time_and_counts_its_tries,
    the_outbox_counts_pending_and_dead_mail,
    parallel_reservations_never_exceed_the_hourly_budget,
    reservations_keep_the_minimum_interval_per_address,
);

fn mail(n: usize) -> OutboxMail {
    OutboxMail {
        id: introgy::auth::new_object_id(),
        recipient: format!("to-{n}@example.com"),
        payload: format!(r#"{{"kind":"verification_code","n":{n}}}"#),
        attempts: 0,
        created_at: t0(),
        next_attempt_at: t0(),
        expires_at: None,
    }
}

async fn parallel_claimers_never_claim_one_mail_twice(s: &TestStore) {
    let queued: Vec<OutboxMail> = (0..30).map(mail).collect();
    for m in &queued {
        s.store.enqueue_mail(m).await.unwrap();
    }

    let batches = parallel(6, |_| {
        let store = s.store.clone();
        async move { store.claim_mail(at(1), at(61), 10).await.unwrap() }
    })
    .await;

    let claimed: Vec<&OutboxMail> = batches.iter().flatten().collect();
    let ids: HashSet<&str> = claimed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), claimed.len(), "a mail was claimed twice");
    assert_eq!(ids.len(), queued.len(), "every due mail was claimed");
    assert!(claimed
        .iter()
        .all(|m| m.attempts == 1 && m.next_attempt_at == at(61)));
}

async fn a_claimed_mail_is_claimable_again_when_its_lease_ends(s: &TestStore) {
    let m = mail(0);
    s.store.enqueue_mail(&m).await.unwrap();
    assert_eq!(
        s.store.claim_mail(at(1), at(61), 10).await.unwrap().len(),
        1
    );

    // Its worker vanished: nobody may take it before the lease ends...
    assert!(s
        .store
        .claim_mail(at(30), at(90), 10)
        .await
        .unwrap()
        .is_empty());
    // ...and anybody may after.
    let again = s.store.claim_mail(at(61), at(121), 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].attempts),
        (m.id.as_str(), 2)
    );
    assert_eq!(again[0].payload, m.payload);
}

async fn finishing_a_mail_erases_its_payload_and_it_is_never_claimed_again(s: &TestStore) {
    for (n, result) in [
        MailResult::Sent,
        MailResult::Expired,
        MailResult::Dead {
            error: "550 no such user".into(),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let m = mail(n);
        s.store.enqueue_mail(&m).await.unwrap();
        let claimed = s.store.claim_mail(at(1), at(61), 10).await.unwrap();
        assert_eq!(claimed.len(), 1);

        s.store.finish_mail(&m.id, &result, at(2)).await.unwrap();

        assert_eq!(
            s.read_raw_text("mail_outbox", &m.id, "payload").await,
            "{}",
            "{result:?}"
        );
        assert_eq!(
            s.read_raw_text("mail_outbox", &m.id, "status").await,
            result.status().as_str()
        );
        assert!(s
            .store
            .claim_mail(at(10_000), at(10_060), 10)
            .await
            .unwrap()
            .is_empty());
    }
}

async fn a_retry_waits_for_its_time_and_counts_its_tries(s: &TestStore) {
    let m = mail(0);
    s.store.enqueue_mail(&m).await.unwrap();
    s.store.claim_mail(at(1), at(61), 10).await.unwrap();
    s.store
        .finish_mail(
            &m.id,
            &MailResult::Retry {
                at: at(20),
                error: "421 busy".into(),
            },
            at(2),
        )
        .await
        .unwrap();

    assert!(s
        .store
        .claim_mail(at(19), at(79), 10)
        .await
        .unwrap()
        .is_empty());
    let again = s.store.claim_mail(at(20), at(80), 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
}

async fn the_outbox_counts_pending_and_dead_mail(s: &TestStore) {
    let (a, b, c) = (mail(0), mail(1), mail(2));
    for m in [&a, &b, &c] {
        s.store.enqueue_mail(m).await.unwrap();
    }
    s.store
        .finish_mail(&a.id, &MailResult::Sent, at(1))
        .await
        .unwrap();
    s.store
        .finish_mail(
            &b.id,
            &MailResult::Dead {
                error: "refused".into(),
            },
            at(1),
        )
        .await
        .unwrap();
    assert_eq!(
        s.store.outbox_stats().await.unwrap(),
        OutboxStats {
            pending: 1,
            dead: 1
        }
    );
}

async fn parallel_reservations_never_exceed_the_hourly_budget(s: &TestStore) {
    let limits = SendLimits {
        min_interval: Duration::ZERO,
        per_hour: 5,
    };

    let results = parallel(20, |_| {
        let store = s.store.clone();
        async move {
            store
                .reserve_mail_send("budget@example.com", at(0), limits)
                .await
                .unwrap()
        }
    })
    .await;

    assert_eq!(results.iter().filter(|ok| **ok).count(), 5, "{results:?}");
    // Another address has its own budget; an hour later the first has one again.
    assert!(s
        .store
        .reserve_mail_send("other@example.com", at(30), limits)
        .await
        .unwrap());
    assert!(s
        .store
        .reserve_mail_send("budget@example.com", at(3_700), limits)
        .await
        .unwrap());
}

async fn reservations_keep_the_minimum_interval_per_address(s: &TestStore) {
    let limits = SendLimits {
        min_interval: Duration::from_secs(60),
        per_hour: 5,
    };
    let email = "interval@example.com";
    assert!(s
        .store
        .reserve_mail_send(email, at(0), limits)
        .await
        .unwrap());
    assert!(!s
        .store
        .reserve_mail_send(email, at(59), limits)
        .await
        .unwrap());
    assert!(s
        .store
        .reserve_mail_send(email, at(60), limits)
        .await
        .unwrap());
}
