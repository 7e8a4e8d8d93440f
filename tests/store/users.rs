//! `UserStore`: unique addresses, partial profile updates, and the account-wide
//! operations: delete cascades, reset password revokes.

use introgy::domain::OtpPurpose;
use introgy::store::{
    HistoryFilter, IdempotencyKey, NewBatteryEvent, NewUser, OneTimeCode, ProfilePatch,
    RecordOutcome, RefreshToken, Session, StoreError,
};
use serde_json::json;

use crate::{at, store_tests, t0, TestStore};

store_tests!(
    a_second_user_with_the_same_address_is_a_conflict,
    a_profile_update_changes_only_what_it_is_given_and_merges_preferences,
    deleting_a_user_deletes_everything_that_belongs_to_them,
    resetting_a_password_revokes_every_session_and_code,
);

async fn a_second_user_with_the_same_address_is_a_conflict(s: &TestStore) {
    let user = s.user().await;
    let again = s
        .store
        .insert_user(&NewUser {
            id: introgy::auth::new_object_id(),
            email: user.email.clone(),
            hashed_password: "x".into(),
            display_name: None,
            battery_level: 70,
            now: t0(),
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(
        s.store.user_by_email(&user.email).await.unwrap(),
        Some(user)
    );
}

async fn a_profile_update_changes_only_what_it_is_given_and_merges_preferences(s: &TestStore) {
    let user = s.user().await;
    let first = ProfilePatch {
        display_name: Some(Some("Quiet One".into())),
        bio: Some(Some("books".into())),
        introvert_level: Some(Some(8)),
        preferences_set: json!({"theme": "dark", "digest": {"day": "mon"}})
            .as_object()
            .unwrap()
            .clone(),
        ..Default::default()
    };
    s.store
        .update_profile(&user.id, &first, at(1))
        .await
        .unwrap();
    let second = ProfilePatch {
        bio: Some(None),
        onboarding_completed: Some(true),
        onboarding_completed_at: Some(Some(at(2))),
        preferences_set: json!({"lang": "fr"}).as_object().unwrap().clone(),
        preferences_unset: vec!["theme".into()],
        ..Default::default()
    };

    let updated = s
        .store
        .update_profile(&user.id, &second, at(2))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(updated.display_name.as_deref(), Some("Quiet One"));
    assert_eq!(updated.bio, None);
    assert_eq!(updated.introvert_level, Some(8));
    assert!(updated.onboarding_completed);
    assert_eq!(updated.onboarding_completed_at, Some(at(2)));
    assert_eq!(
        serde_json::Value::Object(updated.preferences.clone()),
        json!({"digest": {"day": "mon"}, "lang": "fr"})
    );
    assert_eq!(updated.updated_at, at(2));
    assert_eq!(updated.created_at, t0());
    assert_eq!(s.store.user_by_id(&user.id).await.unwrap(), Some(updated));
    let missing = introgy::auth::new_object_id();
    assert_eq!(
        s.store
            .update_profile(&missing, &second, at(3))
            .await
            .unwrap(),
        None
    );
}

async fn everything_of(s: &TestStore, user_id: &str) -> (Session, RefreshToken) {
    let (session, token) = s.login(user_id, at(86_400)).await;
    for purpose in [OtpPurpose::VerifyEmail, OtpPurpose::ResetPassword] {
        s.store
            .put_code(&OneTimeCode {
                user_id: user_id.to_owned(),
                purpose,
                code_hash: "h".into(),
                signup: None,
                new_email: None,
                created_at: t0(),
                expires_at: at(600),
            })
            .await
            .unwrap();
    }
    let event = NewBatteryEvent {
        id: introgy::auth::new_object_id(),
        interaction: introgy::battery::Interaction::Sleep(introgy::battery::SleepQuality::Good),
        name: None,
        duration_minutes: 480,
        occurred_at: t0(),
        recorded_at: t0(),
        received: std::time::Instant::now(),
        notes: None,
        people_count: None,
        interaction_type: None,
    };
    let key = IdempotencyKey {
        key: "k".into(),
        request_hash: "h".into(),
        not_before: t0() - chrono::Duration::hours(24),
    };
    let outcome = s
        .store
        .record_interaction(user_id, &event, Some(&key))
        .await
        .unwrap();
    assert!(matches!(outcome, RecordOutcome::Recorded(_)));
    (session, token)
}

async fn deleting_a_user_deletes_everything_that_belongs_to_them(s: &TestStore) {
    let user = s.user().await;
    let bystander = s.user().await;
    let (session, token) = everything_of(s, &user.id).await;
    everything_of(s, &bystander.id).await;

    assert!(s.store.delete_user(&user.id).await.unwrap());

    assert_eq!(s.store.user_by_id(&user.id).await.unwrap(), None);
    assert_eq!(s.store.session(&session.id).await.unwrap(), None);
    assert_eq!(
        s.store.refresh_token(&token.token_hash).await.unwrap(),
        None
    );
    assert!(s.store.codes_of(&user.id).await.unwrap().is_empty());
    let history = s
        .store
        .battery_history(&user.id, &HistoryFilter::default(), None, 10)
        .await
        .unwrap();
    assert!(history.is_empty());
    assert_eq!(
        s.count_raw("idempotency_keys").await,
        1,
        "only the bystander's key is left"
    );
    assert_eq!(
        s.count_raw("battery_events").await,
        1,
        "only the bystander's event is left"
    );
    assert_eq!(s.store.codes_of(&bystander.id).await.unwrap().len(), 2);
    assert!(
        !s.store.delete_user(&user.id).await.unwrap(),
        "already gone"
    );
}

async fn resetting_a_password_revokes_every_session_and_code(s: &TestStore) {
    let user = s.user().await;
    let (session, token) = everything_of(s, &user.id).await;

    s.store
        .reset_password(&user.id, "$2b$04$new", at(5))
        .await
        .unwrap();

    let after = s.store.user_by_id(&user.id).await.unwrap().unwrap();
    assert_eq!(after.hashed_password, "$2b$04$new");
    assert!(after.is_verified);
    assert_eq!(after.updated_at, at(5));
    assert_eq!(s.store.session(&session.id).await.unwrap(), None);
    assert_eq!(
        s.store.refresh_token(&token.token_hash).await.unwrap(),
        None
    );
    assert!(s.store.codes_of(&user.id).await.unwrap().is_empty());
    // The battery is the user's, not the session's: it stays.
    assert_eq!(after.battery_level, 100);
}
