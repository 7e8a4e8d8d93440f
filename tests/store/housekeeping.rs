//! `Housekeeping`: the purge removes what has expired and nothing else.

use introgy::domain::OtpPurpose;
use introgy::store::{MailResult, OneTimeCode, OutboxMail};

use crate::{at, store_tests, t0, TestStore};

store_tests!(
    the_purge_removes_what_expired_and_keeps_the_rest,
    the_purge_removes_accounts_never_verified_after_a_week,
    the_purge_erases_sealed_refresh_children_after_the_grace_window,
);

async fn the_purge_removes_what_expired_and_keeps_the_rest(s: &TestStore) {
    let user = s.user().await;
    s.store.mark_verified(&user.id, t0()).await.unwrap();
    let code = |purpose, expires_at| OneTimeCode {
        user_id: user.id.clone(),
        purpose,
        code_hash: "h".into(),
        signup: None,
        new_email: None,
        created_at: t0(),
        expires_at,
    };
    s.store
        .put_code(&code(OtpPurpose::VerifyEmail, at(60)))
        .await
        .unwrap();
    s.store
        .put_code(&code(OtpPurpose::ResetPassword, at(86_400 * 30)))
        .await
        .unwrap();
    let (short, _) = s.login(&user.id, at(3_600)).await;
    let (long, _) = s.login(&user.id, at(86_400 * 30)).await;
    let mail = |n: usize| OutboxMail {
        id: introgy::auth::new_object_id(),
        recipient: format!("m{n}@example.com"),
        payload: "{}".into(),
        attempts: 0,
        created_at: t0(),
        next_attempt_at: t0(),
        expires_at: None,
    };
    let (sent, dead, pending) = (mail(0), mail(1), mail(2));
    for m in [&sent, &dead, &pending] {
        s.store.enqueue_mail(m).await.unwrap();
    }
    s.store
        .finish_mail(&sent.id, &MailResult::Sent, at(1))
        .await
        .unwrap();
    s.store
        .finish_mail(&dead.id, &MailResult::Dead { error: "no".into() }, at(1))
        .await
        .unwrap();

    // Eight days on: the short code and session are over, the sent mail is past its week.
    let removed = s.store.purge_expired(at(8 * 86_400)).await.unwrap();

    assert!(removed >= 3, "removed {removed}");
    let codes = s.store.codes_of(&user.id).await.unwrap();
    assert_eq!(
        codes.iter().map(|c| c.purpose).collect::<Vec<_>>(),
        [OtpPurpose::ResetPassword]
    );
    assert_eq!(s.store.session(&short.id).await.unwrap(), None);
    assert!(s.store.session(&long.id).await.unwrap().is_some());
    assert_eq!(
        s.count_raw("mail_outbox").await,
        2,
        "dead and pending mail stay"
    );
    assert_eq!(s.store.outbox_stats().await.unwrap().dead, 1);
}

async fn the_purge_removes_accounts_never_verified_after_a_week(s: &TestStore) {
    let week = 7 * 86_400;
    // Created at t0: a verified account, an unverified one, an unverified one whose
    // newest registration attempt is still live at the purge; and a younger unverified.
    let verified = s.user().await;
    s.store.mark_verified(&verified.id, t0()).await.unwrap();
    let stale = s.user().await;
    let mut stale_code = OneTimeCode {
        user_id: stale.id.clone(),
        purpose: OtpPurpose::VerifyEmail,
        code_hash: "old".into(),
        signup: None,
        new_email: None,
        created_at: t0(),
        expires_at: at(600),
    };
    s.store.put_code(&stale_code).await.unwrap();
    let trying = s.user().await;
    stale_code.user_id = trying.id.clone();
    stale_code.created_at = at(week);
    stale_code.expires_at = at(week + 600);
    s.store.put_code(&stale_code).await.unwrap();
    let young = s
        .store
        .insert_user(&introgy::store::NewUser {
            id: introgy::auth::new_object_id(),
            email: format!("young-{}@example.com", introgy::auth::random_hex(4)),
            hashed_password: "$2b$04$hash".into(),
            display_name: None,
            battery_level: 70,
            now: at(86_400),
        })
        .await
        .unwrap();

    let removed = s.store.purge_expired(at(week + 1)).await.unwrap();

    assert!(removed >= 1, "removed {removed}");
    assert_eq!(s.store.user_by_id(&stale.id).await.unwrap(), None);
    assert!(s.store.codes_of(&stale.id).await.unwrap().is_empty());
    for kept in [&verified, &trying, &young] {
        assert!(
            s.store.user_by_id(&kept.id).await.unwrap().is_some(),
            "{} was purged",
            kept.email
        );
    }
    // Once the live attempt has expired too, that account goes as well.
    s.store.purge_expired(at(week + 601)).await.unwrap();
    assert_eq!(s.store.user_by_id(&trying.id).await.unwrap(), None);
    assert!(s.store.user_by_id(&young.id).await.unwrap().is_some());
}

async fn the_purge_erases_sealed_refresh_children_after_the_grace_window(s: &TestStore) {
    let user = s.user().await;
    let (session, parent) = s.login(&user.id, at(86_400)).await;
    let child = introgy::store::RefreshToken {
        token_hash: introgy::auth::random_hex(32),
        session_id: session.id.clone(),
        issued_at: at(1),
        rotated_at: None,
        child_sealed: None,
    };
    s.store
        .rotate_refresh_token(&parent.token_hash, &child, "sealed")
        .await
        .unwrap();

    s.store.purge_expired(at(5)).await.unwrap();
    let kept = s.store.refresh_token(&parent.token_hash).await.unwrap();
    assert_eq!(kept.unwrap().child_sealed.as_deref(), Some("sealed"));

    s.store.purge_expired(at(12)).await.unwrap();
    let erased = s.store.refresh_token(&parent.token_hash).await.unwrap();
    let erased = erased.unwrap();
    assert_eq!(erased.child_sealed, None);
    assert_eq!(erased.rotated_at, Some(at(1)), "only the sealed child goes");
}
