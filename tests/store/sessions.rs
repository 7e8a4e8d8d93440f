//! `SessionStore`: one winner among parallel rotations (the others see its sealed child,
//! and no second child survives), tokens go with their session, sealed children are
//! erased after the grace window.

use introgy::store::{RefreshToken, Rotation, Session};

use crate::{at, parallel, store_tests, TestStore};

store_tests!(
    parallel_rotations_of_one_refresh_token_have_exactly_one_winner,
    a_token_cannot_be_rotated_into_a_revoked_session,
    rotating_erases_the_sessions_sealed_children_past_the_grace_window,
    deleting_a_session_deletes_its_refresh_tokens,
    deleting_a_users_other_sessions_keeps_the_current_one,
    the_caller_is_a_session_with_its_user_and_battery_position,
);

async fn login(s: &TestStore, user_id: &str) -> (Session, RefreshToken) {
    s.login(user_id, at(86_400)).await
}

fn child_of(session: &Session, seconds: i64) -> RefreshToken {
    RefreshToken {
        token_hash: introgy::auth::random_hex(32),
        session_id: session.id.clone(),
        issued_at: at(seconds),
        rotated_at: None,
        child_sealed: None,
    }
}

async fn parallel_rotations_of_one_refresh_token_have_exactly_one_winner(s: &TestStore) {
    let user = s.user().await;
    let (session, token) = login(s, &user.id).await;
    let children: Vec<RefreshToken> = (0..20).map(|_| child_of(&session, 5)).collect();

    let results = parallel(20, |i| {
        let (store, hash, child) = (
            s.store.clone(),
            token.token_hash.clone(),
            children[i].clone(),
        );
        async move {
            let sealed = format!("sealed {i}");
            store
                .rotate_refresh_token(&hash, &child, &sealed)
                .await
                .unwrap()
        }
    })
    .await;

    let winners: Vec<usize> = (0..20)
        .filter(|&i| results[i] == Rotation::Rotated)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = winners[0];
    let stored = s
        .store
        .refresh_token(&token.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.rotated_at, Some(at(5)));
    assert_eq!(stored.child_sealed, Some(format!("sealed {winner}")));
    for (i, result) in results.iter().enumerate() {
        let kept = s
            .store
            .refresh_token(&children[i].token_hash)
            .await
            .unwrap();
        if i == winner {
            assert_eq!(kept.map(|t| t.session_id), Some(session.id.clone()));
        } else {
            // The losers see the winner's sealed child; their own child is not kept.
            assert_eq!(result, &Rotation::AlreadyRotated(stored.clone()));
            assert_eq!(kept, None, "a second child of one token survived");
        }
    }
    assert_eq!(
        s.store
            .session(&session.id)
            .await
            .unwrap()
            .unwrap()
            .refreshed_at,
        at(5)
    );
}

async fn a_token_cannot_be_rotated_into_a_revoked_session(s: &TestStore) {
    let user = s.user().await;
    let (session, token) = login(s, &user.id).await;
    s.store.delete_session(&session.id).await.unwrap();
    let child = child_of(&session, 10);

    let result = s
        .store
        .rotate_refresh_token(&token.token_hash, &child, "sealed")
        .await
        .unwrap();

    assert_eq!(result, Rotation::Gone);
    assert_eq!(
        s.store.refresh_token(&child.token_hash).await.unwrap(),
        None
    );
}

async fn rotating_erases_the_sessions_sealed_children_past_the_grace_window(s: &TestStore) {
    let user = s.user().await;
    let (session, first) = login(s, &user.id).await;
    let second = child_of(&session, 1);
    s.store
        .rotate_refresh_token(&first.token_hash, &second, "sealed second")
        .await
        .unwrap();
    // Within the window the next rotation keeps the sealed child of the first...
    let third = child_of(&session, 5);
    s.store
        .rotate_refresh_token(&second.token_hash, &third, "sealed third")
        .await
        .unwrap();
    let kept = s.store.refresh_token(&first.token_hash).await.unwrap();
    assert_eq!(kept.unwrap().child_sealed.as_deref(), Some("sealed second"));
    // ...and a rotation after it erases every sealed child older than the window.
    let fourth = child_of(&session, 16);
    s.store
        .rotate_refresh_token(&third.token_hash, &fourth, "sealed fourth")
        .await
        .unwrap();

    let sealed = |hash: String| {
        let store = s.store.clone();
        async move {
            store
                .refresh_token(&hash)
                .await
                .unwrap()
                .unwrap()
                .child_sealed
        }
    };
    assert_eq!(sealed(first.token_hash.clone()).await, None);
    assert_eq!(sealed(second.token_hash.clone()).await, None);
    assert_eq!(
        sealed(third.token_hash.clone()).await.as_deref(),
        Some("sealed fourth")
    );
    assert_eq!(sealed(fourth.token_hash.clone()).await, None);
}

async fn deleting_a_session_deletes_its_refresh_tokens(s: &TestStore) {
    let user = s.user().await;
    let (session, token) = login(s, &user.id).await;
    s.store.delete_session(&session.id).await.unwrap();
    assert_eq!(s.store.session(&session.id).await.unwrap(), None);
    assert_eq!(
        s.store.refresh_token(&token.token_hash).await.unwrap(),
        None
    );
}

async fn deleting_a_users_other_sessions_keeps_the_current_one(s: &TestStore) {
    let user = s.user().await;
    let other_user = s.user().await;
    let (current, current_token) = login(s, &user.id).await;
    let (old, old_token) = login(s, &user.id).await;
    let (others, _) = login(s, &other_user.id).await;

    let removed = s
        .store
        .delete_user_sessions(&user.id, Some(&current.id))
        .await
        .unwrap();

    assert_eq!(removed, 1);
    assert!(s.store.session(&current.id).await.unwrap().is_some());
    assert!(s
        .store
        .refresh_token(&current_token.token_hash)
        .await
        .unwrap()
        .is_some());
    assert_eq!(s.store.session(&old.id).await.unwrap(), None);
    assert_eq!(
        s.store.refresh_token(&old_token.token_hash).await.unwrap(),
        None
    );
    assert!(s.store.session(&others.id).await.unwrap().is_some());
}

/// The authenticated read: the session with its user and battery position, or nothing
/// when the session is unknown, belongs to someone else, or went with its account.
async fn the_caller_is_a_session_with_its_user_and_battery_position(s: &TestStore) {
    let user = s.user().await;
    let other = s.user().await;
    let (session, _) = login(s, &user.id).await;
    let caller = s
        .store
        .caller(&session.id, &user.id)
        .await
        .unwrap()
        .expect("the caller");
    assert_eq!(caller.session, session);
    assert_eq!(
        caller.user,
        s.store.user_by_id(&user.id).await.unwrap().unwrap()
    );
    assert_eq!(
        (caller.battery.level, caller.battery.seq),
        (introgy::battery::INITIAL_LEVEL, 0)
    );
    assert!(s
        .store
        .caller(&session.id, &other.id)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .store
        .caller("no-such-session", &user.id)
        .await
        .unwrap()
        .is_none());
    assert!(s.store.delete_user(&user.id).await.unwrap());
    assert!(s
        .store
        .caller(&session.id, &user.id)
        .await
        .unwrap()
        .is_none());
}
