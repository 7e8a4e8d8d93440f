//! `UserStore::sign_up` and `complete_verification` (SECURITY.md 25): each registration
//! attempt keeps its own code bound to its own password, later attempts never replace an
//! earlier one's code, at most three wait at once, one guess budget for all of them, and
//! entering a code puts exactly its attempt in force and discards the others.

use std::time::Duration;

use introgy::domain::OtpPurpose;
use introgy::store::{
    NewUser, OneTimeCode, SendLimits, SignupAttempt, SignupChoice, SignupOutcome, User,
};

use crate::codes::{mail_to, queued_payloads};
use crate::{at, parallel, store_tests, TestStore};

store_tests!(
    a_first_attempt_creates_an_unverified_account_with_its_code_and_mail,
    later_attempts_join_the_earlier_ones_and_never_replace_them,
    at_most_three_attempts_wait_at_once,
    an_attempt_refused_by_the_mail_budget_leaves_nothing_behind,
    a_verified_account_only_gets_the_notice,
    every_attempt_spends_one_guess_budget,
    a_spent_guess_budget_gives_way_to_a_fresh_attempt,
    each_code_puts_exactly_its_own_attempt_in_force_in_either_order,
    parallel_codes_of_two_attempts_have_one_winner,
    parallel_first_attempts_of_one_address_create_one_account,
    an_attempt_prepared_for_another_account_changes_nothing,
    an_attempts_code_never_changes_a_verified_accounts_password,
);

const LIMITS: SendLimits = SendLimits {
    min_interval: Duration::from_secs(60),
    per_hour: 5,
};

/// An attempt at `seconds` after t0 for `email`, bound to `user_id` (the existing
/// account's, or a new one), with password hash `pw` and mails named after `tag`.
fn attempt(email: &str, user_id: &str, existing: bool, pw: &str, seconds: i64) -> SignupAttempt {
    let now = at(seconds);
    let choice = SignupChoice {
        password_hash: hash_of(pw),
        display_name: Some(format!("name of {pw}")),
    };
    SignupAttempt {
        user: NewUser {
            id: user_id.to_owned(),
            email: email.to_owned(),
            hashed_password: hash_of(pw),
            display_name: choice.display_name.clone(),
            battery_level: 70,
            now,
        },
        existing,
        code: OneTimeCode {
            user_id: user_id.to_owned(),
            purpose: OtpPurpose::VerifyEmail,
            code_hash: format!("code of {pw}"),
            signup: Some(choice),
            new_email: None,
            created_at: now,
            expires_at: now + chrono::Duration::seconds(600),
        },
        first_mail: mail_to(email, &format!("first {pw}")),
        repeat_mail: mail_to(email, &format!("repeat {pw}")),
        notice_mail: mail_to(email, &format!("notice {pw}")),
        limits: LIMITS,
        max_pending: 3,
        max_attempts: 5,
    }
}

/// A stand-in for the bcrypt hash of `pw`, shaped like one: a string starting with `$`
/// is a field path inside a MongoDB pipeline unless written as a literal.
fn hash_of(pw: &str) -> String {
    format!("$2b$04${pw}")
}

fn new_email() -> String {
    format!("signup-{}@example.com", introgy::auth::random_hex(6))
}

/// Registers `email` afresh with password hash `pw`; returns the new account's id.
async fn first(s: &TestStore, email: &str, pw: &str) -> String {
    let id = introgy::auth::new_object_id();
    assert_eq!(
        s.store
            .sign_up(&attempt(email, &id, false, pw, 0))
            .await
            .unwrap(),
        SignupOutcome::Created
    );
    id
}

async fn again(s: &TestStore, email: &str, id: &str, pw: &str, seconds: i64) -> SignupOutcome {
    s.store
        .sign_up(&attempt(email, id, true, pw, seconds))
        .await
        .unwrap()
}

async fn live_hashes(s: &TestStore, id: &str) -> Vec<String> {
    s.store
        .codes_of(id)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|c| c.codes)
        .map(|c| c.code_hash)
        .collect()
}

async fn user(s: &TestStore, id: &str) -> User {
    s.store.user_by_id(id).await.unwrap().expect("the account")
}

async fn a_first_attempt_creates_an_unverified_account_with_its_code_and_mail(s: &TestStore) {
    let email = new_email();
    let id = first(s, &email, "pw-a").await;

    let account = user(s, &id).await;
    assert_eq!(account.email, email);
    assert!(!account.is_verified);
    assert_eq!(account.hashed_password, hash_of("pw-a"));
    assert_eq!(live_hashes(s, &id).await, ["code of pw-a"]);
    assert_eq!(queued_payloads(s).await, ["first pw-a"]);
}

async fn later_attempts_join_the_earlier_ones_and_never_replace_them(s: &TestStore) {
    let email = new_email();
    let id = first(s, &email, "pw-a").await;

    assert_eq!(
        again(s, &email, &id, "pw-b", 61).await,
        SignupOutcome::AttemptAdded
    );

    assert_eq!(live_hashes(s, &id).await, ["code of pw-a", "code of pw-b"]);
    assert_eq!(
        user(s, &id).await.hashed_password,
        hash_of("pw-a"),
        "an attempt changes no password by itself"
    );
    assert_eq!(queued_payloads(s).await, ["first pw-a", "repeat pw-b"]);
}

async fn at_most_three_attempts_wait_at_once(s: &TestStore) {
    let email = new_email();
    let id = first(s, &email, "pw-a").await;
    assert_eq!(
        again(s, &email, &id, "pw-b", 61).await,
        SignupOutcome::AttemptAdded
    );
    assert_eq!(
        again(s, &email, &id, "pw-c", 122).await,
        SignupOutcome::AttemptAdded
    );

    assert_eq!(
        again(s, &email, &id, "pw-d", 183).await,
        SignupOutcome::TooManyPending
    );
    assert_eq!(
        live_hashes(s, &id).await,
        ["code of pw-a", "code of pw-b", "code of pw-c"]
    );
    // Once the first has expired, there is room again (and the expired one is gone).
    assert_eq!(
        again(s, &email, &id, "pw-e", 601).await,
        SignupOutcome::AttemptAdded
    );
    assert_eq!(
        live_hashes(s, &id).await,
        ["code of pw-b", "code of pw-c", "code of pw-e"]
    );
}

async fn an_attempt_refused_by_the_mail_budget_leaves_nothing_behind(s: &TestStore) {
    let email = new_email();
    let id = first(s, &email, "pw-a").await;
    let unknown = new_email();
    s.store
        .reserve_mail_send(&unknown, at(0), LIMITS)
        .await
        .unwrap();

    // Inside the cooldown, for the known address and for a new one.
    assert_eq!(
        again(s, &email, &id, "pw-b", 30).await,
        SignupOutcome::MailRefused
    );
    let other = introgy::auth::new_object_id();
    assert_eq!(
        s.store
            .sign_up(&attempt(&unknown, &other, false, "pw-x", 30))
            .await
            .unwrap(),
        SignupOutcome::MailRefused
    );

    assert_eq!(live_hashes(s, &id).await, ["code of pw-a"]);
    assert_eq!(user(s, &id).await.hashed_password, hash_of("pw-a"));
    assert_eq!(s.store.user_by_email(&unknown).await.unwrap(), None);
    assert_eq!(queued_payloads(s).await, ["first pw-a"]);
}

async fn a_verified_account_only_gets_the_notice(s: &TestStore) {
    let verified = s.user().await;
    s.store.mark_verified(&verified.id, at(0)).await.unwrap();

    let outcome = again(s, &verified.email, &verified.id, "pw-b", 0).await;

    assert_eq!(outcome, SignupOutcome::Notified);
    let after = user(s, &verified.id).await;
    assert_eq!(after.hashed_password, verified.hashed_password);
    assert!(after.is_verified);
    assert!(s.store.codes_of(&verified.id).await.unwrap().is_empty());
    assert_eq!(queued_payloads(s).await, ["notice pw-b"]);
}

async fn every_attempt_spends_one_guess_budget(s: &TestStore) {
    let email = new_email();
    let id = first(s, &email, "pw-a").await;
    for n in 0..3 {
        s.store
            .take_code_attempt(&id, OtpPurpose::VerifyEmail, 5, at(10 + n))
            .await
            .unwrap()
            .expect("a guess left");
    }
    // A later attempt joins the count: it does not get five guesses of its own.
    assert_eq!(
        again(s, &email, &id, "pw-b", 61).await,
        SignupOutcome::AttemptAdded
    );

    let fourth = s
        .store
        .take_code_attempt(&id, OtpPurpose::VerifyEmail, 5, at(62))
        .await
        .unwrap()
        .expect("a guess left");
    assert_eq!(fourth.attempts, 4);
    assert_eq!(fourth.codes.len(), 2);
    s.store
        .take_code_attempt(&id, OtpPurpose::VerifyEmail, 5, at(63))
        .await
        .unwrap()
        .expect("the fifth guess");
    assert_eq!(
        s.store
            .take_code_attempt(&id, OtpPurpose::VerifyEmail, 5, at(64))
            .await
            .unwrap(),
        None,
        "five guesses in all, for both codes"
    );
}

async fn a_spent_guess_budget_gives_way_to_a_fresh_attempt(s: &TestStore) {
    let email = new_email();
    let id = first(s, &email, "pw-a").await;
    for n in 0..5 {
        s.store
            .take_code_attempt(&id, OtpPurpose::VerifyEmail, 5, at(10 + n))
            .await
            .unwrap()
            .expect("a guess left");
    }

    assert_eq!(
        again(s, &email, &id, "pw-b", 61).await,
        SignupOutcome::AttemptAdded
    );

    let taken = s
        .store
        .take_code_attempt(&id, OtpPurpose::VerifyEmail, 5, at(62))
        .await
        .unwrap()
        .expect("the new attempt takes guesses");
    assert_eq!(taken.attempts, 1);
    let hashes: Vec<&str> = taken.codes.iter().map(|c| c.code_hash.as_str()).collect();
    assert_eq!(hashes, ["code of pw-b"], "the dead code is gone");
}

async fn each_code_puts_exactly_its_own_attempt_in_force_in_either_order(s: &TestStore) {
    for (winner, loser) in [("pw-a", "pw-b"), ("pw-b", "pw-a")] {
        let email = new_email();
        let id = first(s, &email, "pw-a").await;
        again(s, &email, &id, "pw-b", 61).await;

        let verified = s
            .store
            .complete_verification(&id, &format!("code of {winner}"), at(70))
            .await
            .unwrap()
            .expect("the code is outstanding");

        assert!(verified.is_verified);
        assert_eq!(verified.hashed_password, hash_of(winner));
        assert_eq!(
            verified.display_name.as_deref(),
            Some(format!("name of {winner}").as_str())
        );
        assert_eq!(verified.updated_at, at(70));
        assert_eq!(user(s, &id).await, verified);
        // The other attempt is gone with it.
        assert!(s.store.codes_of(&id).await.unwrap().is_empty());
        assert_eq!(
            s.store
                .complete_verification(&id, &format!("code of {loser}"), at(71))
                .await
                .unwrap(),
            None
        );
        assert_eq!(user(s, &id).await.hashed_password, hash_of(winner));
    }
}

async fn parallel_codes_of_two_attempts_have_one_winner(s: &TestStore) {
    let email = new_email();
    let id = first(s, &email, "pw-a").await;
    again(s, &email, &id, "pw-b", 61).await;

    let results = parallel(20, |i| {
        let (store, id) = (s.store.clone(), id.clone());
        let hash = if i % 2 == 0 {
            "code of pw-a"
        } else {
            "code of pw-b"
        };
        async move {
            store
                .complete_verification(&id, hash, at(70))
                .await
                .unwrap()
        }
    })
    .await;

    let winners: Vec<&User> = results.iter().flatten().collect();
    assert_eq!(winners.len(), 1, "{} winners", winners.len());
    assert_eq!(
        user(s, &id).await.hashed_password,
        winners[0].hashed_password
    );
}

async fn parallel_first_attempts_of_one_address_create_one_account(s: &TestStore) {
    let email = new_email();

    let outcomes = parallel(8, |n| {
        let store = s.store.clone();
        let attempt = attempt(
            &email,
            &introgy::auth::new_object_id(),
            false,
            &format!("pw-{n}"),
            0,
        );
        async move { store.sign_up(&attempt).await.unwrap() }
    })
    .await;

    let created = outcomes
        .iter()
        .filter(|o| **o == SignupOutcome::Created)
        .count();
    assert_eq!(created, 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, SignupOutcome::Created | SignupOutcome::MailRefused)));
    let account = s.store.user_by_email(&email).await.unwrap().unwrap();
    assert_eq!(live_hashes(s, &account.id).await.len(), 1);
    assert_eq!(queued_payloads(s).await.len(), 1);
}

async fn an_attempt_prepared_for_another_account_changes_nothing(s: &TestStore) {
    let email = new_email();
    let id = first(s, &email, "pw-a").await;
    let stale = introgy::auth::new_object_id();

    // Prepared as if the address were new, after the cooldown.
    let outcome = s
        .store
        .sign_up(&attempt(&email, &stale, false, "pw-b", 61))
        .await
        .unwrap();

    assert_eq!(outcome, SignupOutcome::Raced);
    assert_eq!(live_hashes(s, &id).await, ["code of pw-a"]);
    assert!(s.store.codes_of(&stale).await.unwrap().is_empty());
    assert_eq!(user(s, &id).await.hashed_password, hash_of("pw-a"));
}

/// On MongoDB an attempt can slip in while the owner's code is being redeemed (the steps
/// are not one transaction), leaving a code for an account that is verified by then:
/// that code must do nothing.
async fn an_attempts_code_never_changes_a_verified_accounts_password(s: &TestStore) {
    let email = new_email();
    let id = first(s, &email, "pw-a").await;
    again(s, &email, &id, "pw-b", 61).await;
    s.store.mark_verified(&id, at(70)).await.unwrap();

    let outcome = s
        .store
        .complete_verification(&id, "code of pw-b", at(80))
        .await
        .unwrap();

    assert_eq!(outcome, None);
    assert_eq!(user(s, &id).await.hashed_password, hash_of("pw-a"));
    assert!(user(s, &id).await.is_verified);
}
