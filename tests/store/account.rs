//! `AccountStore`: devices of a user's sessions, signing one out only if it is the
//! caller's, a password change that signs out the others (or keeps them), and the email
//! switch: its code taken once among parallel callers, a clean refusal when a verified
//! account has the address, an unverified holder giving way.

use introgy::domain::OtpPurpose;
use introgy::store::{EmailChange, OneTimeCode, OtherSessions, User, MAX_LISTED_SESSIONS};

use crate::{at, parallel, store_tests, t0, TestStore};

store_tests!(
    devices_list_only_the_users_live_sessions_most_recently_used_first,
    a_session_is_deleted_only_by_its_owner_and_takes_its_tokens_along,
    changing_the_password_signs_out_every_other_session,
    changing_the_password_can_keep_the_other_sessions,
    changing_the_password_of_a_missing_user_changes_nothing,
    the_email_switch_moves_the_address_and_clears_codes_and_other_sessions,
    parallel_email_switches_with_one_code_have_exactly_one_winner,
    an_email_switch_to_an_address_a_verified_account_has_is_refused_and_spends_the_code,
    an_unverified_account_holding_the_address_gives_way,
    two_users_switching_to_one_address_in_parallel_leave_exactly_one_owner,
    an_email_switch_needs_a_live_code_of_its_own_purpose,
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
    assert_eq!(s.signed_in(&session, &token).await, (false, false));
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
    assert_eq!(s.signed_in(&this, &this_token).await, (true, true));
    assert_eq!(s.signed_in(&that, &that_token).await, (false, false));
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

/// A day from the real now. MongoDB's TTL indexes reap sessions and codes whose
/// `expires_at` has passed on the server's clock, and `t0` is in the past: records these
/// tests rely on must outlive the test by that clock too.
fn live_until() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::days(1)
}

/// Stores a `change_email` code of `user` to `new_email`, live until [`live_until`].
async fn pending_change(s: &TestStore, user: &User, new_email: &str, hash: &str) {
    s.store
        .put_code(&OneTimeCode {
            user_id: user.id.clone(),
            purpose: OtpPurpose::ChangeEmail,
            code_hash: hash.to_owned(),
            signup: None,
            new_email: Some(new_email.to_owned()),
            created_at: t0(),
            expires_at: live_until(),
        })
        .await
        .unwrap();
}

fn fresh_email() -> String {
    format!("new-{}@example.org", introgy::auth::random_hex(6))
}

async fn the_email_switch_moves_the_address_and_clears_codes_and_other_sessions(s: &TestStore) {
    let (user, stranger) = (s.user().await, s.user().await);
    let (this, this_token) = s.login(&user.id, live_until()).await;
    let (that, that_token) = s.login(&user.id, live_until()).await;
    let (strangers, _) = s.login(&stranger.id, live_until()).await;
    let new_email = fresh_email();
    pending_change(s, &user, &new_email, "h-change").await;
    // A reset code mailed to the old address, and the stranger's own code.
    let reset = OneTimeCode {
        user_id: user.id.clone(),
        purpose: OtpPurpose::ResetPassword,
        code_hash: "h-reset".into(),
        signup: None,
        new_email: None,
        created_at: t0(),
        expires_at: live_until(),
    };
    s.store.put_code(&reset).await.unwrap();
    let strangers_code = OneTimeCode {
        user_id: stranger.id.clone(),
        ..reset.clone()
    };
    s.store.put_code(&strangers_code).await.unwrap();

    let change = s
        .store
        .change_email(&user.id, "h-change", &this.id, at(5))
        .await
        .unwrap();
    let EmailChange::Changed {
        user: changed,
        old_email,
    } = change
    else {
        panic!("expected a switch, got {change:?}");
    };
    assert_eq!(old_email, user.email);
    assert_eq!(changed.email, new_email);
    assert_eq!(changed.updated_at, at(5));
    assert_eq!(changed.id, user.id);
    assert!(changed.is_verified, "the code proved the new address");
    assert_eq!(
        s.store.user_by_email(&new_email).await.unwrap().unwrap().id,
        user.id
    );
    assert!(s.store.user_by_email(&user.email).await.unwrap().is_none());
    // Every code of the user is gone, the stranger's stays.
    assert!(s.store.codes_of(&user.id).await.unwrap().is_empty());
    assert_eq!(s.store.codes_of(&stranger.id).await.unwrap().len(), 1);
    // This session stays with its token; the other goes with its token; strangers' stay.
    assert_eq!(s.signed_in(&this, &this_token).await, (true, true));
    assert_eq!(s.signed_in(&that, &that_token).await, (false, false));
    assert!(s.store.session(&strangers.id).await.unwrap().is_some());
}

async fn parallel_email_switches_with_one_code_have_exactly_one_winner(s: &TestStore) {
    let user = s.user().await;
    let (this, _) = s.login(&user.id, live_until()).await;
    let new_email = fresh_email();
    pending_change(s, &user, &new_email, "h-once").await;
    let outcomes = parallel(20, |_| {
        let (store, id, keep) = (s.store.clone(), user.id.clone(), this.id.clone());
        async move {
            store
                .change_email(&id, "h-once", &keep, at(5))
                .await
                .unwrap()
        }
    })
    .await;
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, EmailChange::Changed { .. }))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, EmailChange::Changed { .. } | EmailChange::NoCode)));
    assert_eq!(
        s.store.user_by_id(&user.id).await.unwrap().unwrap().email,
        new_email
    );
}

async fn an_email_switch_to_an_address_a_verified_account_has_is_refused_and_spends_the_code(
    s: &TestStore,
) {
    let (user, owner) = (s.user().await, s.user().await);
    s.store.mark_verified(&owner.id, t0()).await.unwrap();
    let (this, _) = s.login(&user.id, live_until()).await;
    let (that, _) = s.login(&user.id, live_until()).await;
    pending_change(s, &user, &owner.email, "h-taken").await;

    let change = s
        .store
        .change_email(&user.id, "h-taken", &this.id, at(5))
        .await
        .unwrap();
    assert_eq!(change, EmailChange::Taken);
    // Nothing changed but the code, which is spent.
    let stored = s.store.user_by_id(&user.id).await.unwrap().unwrap();
    assert_eq!(stored.email, user.email);
    assert_eq!(stored.updated_at, user.updated_at);
    assert_eq!(
        s.store
            .user_by_email(&owner.email)
            .await
            .unwrap()
            .unwrap()
            .id,
        owner.id
    );
    assert!(s.store.session(&that.id).await.unwrap().is_some());
    assert!(s.store.codes_of(&user.id).await.unwrap().is_empty());
    let again = s
        .store
        .change_email(&user.id, "h-taken", &this.id, at(6))
        .await
        .unwrap();
    assert_eq!(again, EmailChange::NoCode);
}

async fn an_unverified_account_holding_the_address_gives_way(s: &TestStore) {
    let (user, squatter) = (s.user().await, s.user().await);
    let (this, _) = s.login(&user.id, live_until()).await;
    let squatters_code = OneTimeCode {
        user_id: squatter.id.clone(),
        purpose: OtpPurpose::VerifyEmail,
        code_hash: "h-squat".into(),
        signup: None,
        new_email: None,
        created_at: t0(),
        expires_at: live_until(),
    };
    s.store.put_code(&squatters_code).await.unwrap();
    pending_change(s, &user, &squatter.email, "h-claim").await;

    let change = s
        .store
        .change_email(&user.id, "h-claim", &this.id, at(5))
        .await
        .unwrap();
    assert!(matches!(change, EmailChange::Changed { .. }), "{change:?}");
    assert!(s.store.user_by_id(&squatter.id).await.unwrap().is_none());
    assert!(s.store.codes_of(&squatter.id).await.unwrap().is_empty());
    assert_eq!(
        s.store
            .user_by_email(&squatter.email)
            .await
            .unwrap()
            .unwrap()
            .id,
        user.id
    );
}

async fn two_users_switching_to_one_address_in_parallel_leave_exactly_one_owner(s: &TestStore) {
    let wanted = fresh_email();
    let mut users = Vec::new();
    for i in 0..6 {
        let user = s.user().await;
        let (session, _) = s.login(&user.id, live_until()).await;
        pending_change(s, &user, &wanted, &format!("h-race-{i}")).await;
        users.push((user, session));
    }
    let outcomes = parallel(users.len(), |i| {
        let store = s.store.clone();
        let (id, keep) = (users[i].0.id.clone(), users[i].1.id.clone());
        async move {
            store
                .change_email(&id, &format!("h-race-{i}"), &keep, at(5))
                .await
        }
    })
    .await;
    let mut winners = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(EmailChange::Changed { .. }) => winners.push(i),
            // The others are refused cleanly (the winner was not verified, so the
            // refusal comes from the unique index, never from a deleted winner).
            Ok(EmailChange::Taken) => {}
            other => panic!("user {i}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let owner = s.store.user_by_email(&wanted).await.unwrap().unwrap();
    assert_eq!(owner.id, users[winners[0]].0.id);
    for (i, (user, _)) in users.iter().enumerate() {
        let stored = s.store.user_by_id(&user.id).await.unwrap();
        let stored = stored.unwrap_or_else(|| panic!("user {i} was deleted"));
        if i != winners[0] {
            assert_eq!(stored.email, user.email, "user {i}");
        }
    }
}

async fn an_email_switch_needs_a_live_code_of_its_own_purpose(s: &TestStore) {
    let user = s.user().await;
    let (this, _) = s.login(&user.id, live_until()).await;
    let new_email = fresh_email();
    // A reset code with that hash is not an email change's code.
    s.store
        .put_code(&OneTimeCode {
            user_id: user.id.clone(),
            purpose: OtpPurpose::ResetPassword,
            code_hash: "h-other".into(),
            signup: None,
            new_email: Some(new_email.clone()),
            created_at: t0(),
            expires_at: live_until(),
        })
        .await
        .unwrap();
    let change = s
        .store
        .change_email(&user.id, "h-other", &this.id, at(5))
        .await
        .unwrap();
    assert_eq!(change, EmailChange::NoCode);
    // An expired code does not switch either.
    pending_change(s, &user, &new_email, "h-late").await;
    let late = s
        .store
        .change_email(
            &user.id,
            "h-late",
            &this.id,
            live_until() + chrono::Duration::days(1),
        )
        .await
        .unwrap();
    assert_eq!(late, EmailChange::NoCode);
    assert_eq!(
        s.store.user_by_id(&user.id).await.unwrap().unwrap().email,
        user.email
    );
}
