//! `SessionStore`: one winner among parallel rotations, tokens go with their session.

use introgy::store::{RefreshToken, Session, StoreError};

use crate::{at, parallel, store_tests, TestStore};

store_tests!(
    parallel_rotations_of_one_refresh_token_have_exactly_one_winner,
    a_token_cannot_be_added_to_a_revoked_session,
    deleting_a_session_deletes_its_refresh_tokens,
    deleting_a_users_other_sessions_keeps_the_current_one,
    the_caller_is_a_session_with_its_user_and_battery_position,
);

async fn login(s: &TestStore, user_id: &str) -> (Session, RefreshToken) {
    s.login(user_id, at(86_400)).await
}

async fn parallel_rotations_of_one_refresh_token_have_exactly_one_winner(s: &TestStore) {
    let user = s.user().await;
    let (session, token) = login(s, &user.id).await;

    let results = parallel(20, |_| {
        let (store, hash) = (s.store.clone(), token.token_hash.clone());
        async move { store.mark_refresh_rotated(&hash, at(5)).await.unwrap() }
    })
    .await;

    assert_eq!(results.iter().filter(|won| **won).count(), 1, "{results:?}");
    let stored = s
        .store
        .refresh_token(&token.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.rotated_at, Some(at(5)));
    assert_eq!(stored.session_id, session.id);
}

async fn a_token_cannot_be_added_to_a_revoked_session(s: &TestStore) {
    let user = s.user().await;
    let (session, _) = login(s, &user.id).await;
    let child = RefreshToken {
        token_hash: introgy::auth::random_hex(32),
        session_id: session.id.clone(),
        issued_at: at(10),
        rotated_at: None,
    };
    s.store.insert_refresh_token(&child).await.unwrap();
    assert_eq!(
        s.store
            .session(&session.id)
            .await
            .unwrap()
            .unwrap()
            .refreshed_at,
        at(10)
    );

    s.store.delete_session(&session.id).await.unwrap();
    let late = RefreshToken {
        token_hash: introgy::auth::random_hex(32),
        ..child
    };
    let result = s.store.insert_refresh_token(&late).await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
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
