//! `AccountStore`: devices of a user's sessions, signing one out only if it is the
//! caller's, and a password change that signs out the others (or keeps them).

use introgy::store::{OtherSessions, MAX_LISTED_SESSIONS};

use crate::{at, store_tests, TestStore};

store_tests!(
    devices_list_only_the_users_live_sessions_most_recently_used_first,
    a_session_is_deleted_only_by_its_owner_and_takes_its_tokens_along,
    changing_the_password_signs_out_every_other_session,
    changing_the_password_can_keep_the_other_sessions,
    changing_the_password_of_a_missing_user_changes_nothing,
);

async fn devices_list_only_the_users_live_sessions_most_recently_used_first(s: &TestStore) {
    let (user, other) = (s.user().await, s.user().await);
    let (old, _) = s.login(&user.id, at(1_000)).await;
    let (recent, recent_token) = s.login(&user.id, at(1_000)).await;
    let (expired, _) = s.login(&user.id, at(50)).await;
    let (_, _) = s.login(&other.id, at(1_000)).await;
    assert!(s
        .store
        .set_session_device(&recent.id, "Firefox on Linux", "203.0.113.0/24")
        .await
        .unwrap());
    assert!(!s
        .store
        .set_session_device("0".repeat(32).as_str(), "x", "y")
        .await
        .unwrap());
    // `recent` refreshes later than `old`.
    let child = introgy::store::RefreshToken {
        token_hash: introgy::auth::random_hex(32),
        session_id: recent.id.clone(),
        issued_at: at(60),
        rotated_at: None,
        child_sealed: None,
    };
    let rotated = s
        .store
        .rotate_refresh_token(&recent_token.token_hash, &child, "sealed")
        .await
        .unwrap();
    assert_eq!(rotated, introgy::store::Rotation::Rotated);

    let devices = s
        .store
        .user_devices(&user.id, at(100), MAX_LISTED_SESSIONS)
        .await
        .unwrap();
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [recent.id.as_str(), old.id.as_str()],
        "expired {}",
        expired.id
    );
    assert_eq!(devices[0].client.as_deref(), Some("Firefox on Linux"));
    assert_eq!(devices[0].ip.as_deref(), Some("203.0.113.0/24"));
    assert_eq!(devices[0].last_used_at, at(60));
    assert_eq!(devices[1].client, None);
    assert_eq!(devices[1].last_used_at, devices[1].created_at);
    let one = s.store.user_devices(&user.id, at(100), 1).await.unwrap();
    assert_eq!(one.len(), 1);
}

async fn a_session_is_deleted_only_by_its_owner_and_takes_its_tokens_along(s: &TestStore) {
    let (user, other) = (s.user().await, s.user().await);
    let (session, token) = s.login(&user.id, at(1_000)).await;
    assert!(!s
        .store
        .delete_user_session(&other.id, &session.id)
        .await
        .unwrap());
    assert!(s.store.session(&session.id).await.unwrap().is_some());
    assert!(s
        .store
        .delete_user_session(&user.id, &session.id)
        .await
        .unwrap());
    assert!(s.store.session(&session.id).await.unwrap().is_none());
    assert!(s
        .store
        .refresh_token(&token.token_hash)
        .await
        .unwrap()
        .is_none());
    assert!(!s
        .store
        .delete_user_session(&user.id, &session.id)
        .await
        .unwrap());
}

async fn changing_the_password_signs_out_every_other_session(s: &TestStore) {
    let (user, other) = (s.user().await, s.user().await);
    let (this, this_token) = s.login(&user.id, at(1_000)).await;
    let (that, that_token) = s.login(&user.id, at(1_000)).await;
    let (strangers, _) = s.login(&other.id, at(1_000)).await;
    let others = OtherSessions::SignOut {
        keep: this.id.clone(),
    };
    assert!(s
        .store
        .change_password(&user.id, "$2b$04$new", &others, at(5))
        .await
        .unwrap());
    let stored = s.store.user_by_id(&user.id).await.unwrap().unwrap();
    assert_eq!(stored.hashed_password, "$2b$04$new");
    assert_eq!(stored.updated_at, at(5));
    assert!(s.store.session(&this.id).await.unwrap().is_some());
    assert!(s
        .store
        .refresh_token(&this_token.token_hash)
        .await
        .unwrap()
        .is_some());
    assert!(s.store.session(&that.id).await.unwrap().is_none());
    assert!(s
        .store
        .refresh_token(&that_token.token_hash)
        .await
        .unwrap()
        .is_none());
    assert!(s.store.session(&strangers.id).await.unwrap().is_some());
}

async fn changing_the_password_can_keep_the_other_sessions(s: &TestStore) {
    let user = s.user().await;
    let (this, _) = s.login(&user.id, at(1_000)).await;
    let (that, _) = s.login(&user.id, at(1_000)).await;
    assert!(s
        .store
        .change_password(&user.id, "$2b$04$new", &OtherSessions::Keep, at(5))
        .await
        .unwrap());
    assert!(s.store.session(&this.id).await.unwrap().is_some());
    assert!(s.store.session(&that.id).await.unwrap().is_some());
}

async fn changing_the_password_of_a_missing_user_changes_nothing(s: &TestStore) {
    let missing = introgy::auth::new_object_id();
    assert!(!s
        .store
        .change_password(&missing, "$2b$04$new", &OtherSessions::Keep, at(5))
        .await
        .unwrap());
    assert!(s.store.user_by_id(&missing).await.unwrap().is_none());
}
