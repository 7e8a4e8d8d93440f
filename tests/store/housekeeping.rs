//! `Housekeeping`: the purge removes what has expired and nothing else.

use introgy::domain::OtpPurpose;
use introgy::store::{MailResult, OneTimeCode, OutboxMail};

use crate::{at, store_tests, t0, TestStore};

store_tests!(the_purge_removes_what_expired_and_keeps_the_rest);

async fn the_purge_removes_what_expired_and_keeps_the_rest(s: &TestStore) {
    let user = s.user().await;
    let code = |purpose, expires_at| OneTimeCode {
        user_id: user.id.clone(),
        purpose,
        code_hash: "h".into(),
        attempts: 0,
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
