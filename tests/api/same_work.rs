//! SECURITY.md 29, deterministically: for `register`, `verify-otp`, `reset-password`,
//! `login` and `send-verification-code`, an address with an account and one without do
//! the same store operations, in the same order, and the same hashing. (The time this
//! takes is measured by `cargo bench --bench timing`.)
//!
//! Each flow runs under `introgy::metrics::store_operations_of`, which lists the store
//! operations the request's own task performed, as the store's choke point names them
//! (the store method on SQLite, the driver command on MongoDB).

use std::net::{IpAddr, Ipv4Addr};

use introgy::auth::service;
use introgy::domain::{Email, OtpPurpose, Password};
use introgy::limits::ClientIp;
use introgy::metrics::{store_operations_of, StoreOperation};

use crate::helpers::{spawn_app_with, unique_email, TestApp};

/// Each call from its own client, so no per-client budget tells the cases apart.
fn client(n: u8) -> ClientIp {
    ClientIp(IpAddr::V4(Ipv4Addr::new(198, 51, 100, n)))
}

fn email(raw: &str) -> Email {
    Email::parse(raw, "email").unwrap()
}

/// The store operations and password hashes/verifications of `work`.
async fn work_of<F, T>(app: &TestApp, work: F) -> (Vec<StoreOperation>, u64, u64)
where
    F: std::future::Future<Output = T>,
{
    let (hashes, checks) = (app.state.hasher.hashes(), app.state.hasher.verifications());
    let (_, operations) = store_operations_of(work).await;
    (
        operations,
        app.state.hasher.hashes() - hashes,
        app.state.hasher.verifications() - checks,
    )
}

fn names(work: &(Vec<StoreOperation>, u64, u64)) -> Vec<&'static str> {
    work.0.iter().map(|op| op.name).collect()
}

async fn app() -> TestApp {
    spawn_app_with(&[]).await
}

#[tokio::test]
async fn register_does_the_same_work_for_new_unverified_and_verified_addresses() {
    let app = app().await;
    let verified = app.stored_account(true).await.email;
    let unverified = app.stored_account(false).await.email;
    let register = |address: String, n: u8| {
        let state = app.state.clone();
        async move {
            service::register(
                &state,
                client(n),
                email(&address),
                Password::parse("another good password", "password").unwrap(),
                None,
            )
            .await
            .unwrap()
        }
    };

    let new = work_of(&app, register(unique_email(), 1)).await;
    let known = work_of(&app, register(verified, 2)).await;
    let pending = work_of(&app, register(unverified, 3)).await;

    assert!(new.0.iter().any(|op| op.write), "{:?}", new.0);
    assert_eq!(names(&known), names(&new), "verified vs new");
    assert_eq!(names(&pending), names(&new), "unverified vs new");
    assert_eq!((known.1, known.2), (new.1, new.2), "hashing differs");
    assert_eq!(new.1, 1, "one bcrypt hash each");
}

#[tokio::test]
async fn verify_otp_does_the_same_work_for_known_and_unknown_addresses() {
    let app = app().await;
    let known = app.stored_account(true).await.email;
    let with_code = app.stored_account(false).await.email;
    let with_code_id = app
        .state
        .store
        .user_by_email(&with_code)
        .await
        .unwrap()
        .unwrap()
        .id;
    app.state
        .store
        .put_code(&introgy::store::OneTimeCode {
            user_id: with_code_id,
            purpose: OtpPurpose::VerifyEmail,
            code_hash: "not the hash of 000000".into(),
            signup: None,
            new_email: None,
            created_at: app.state.clock.now(),
            expires_at: app.state.clock.now() + chrono::Duration::minutes(10),
        })
        .await
        .unwrap();
    let verify = |address: String| {
        let state = app.state.clone();
        async move {
            assert!(
                service::verify_email(&state, &device(), email(&address), "000000")
                    .await
                    .is_err()
            );
        }
    };

    let unknown = work_of(&app, verify(unique_email())).await;
    let without = work_of(&app, verify(known)).await;
    let with = work_of(&app, verify(with_code)).await;

    assert!(
        unknown.0.iter().any(|op| op.write),
        "the guess is counted: {:?}",
        unknown.0
    );
    assert_eq!(
        names(&without),
        names(&unknown),
        "known, no code, vs unknown"
    );
    assert_eq!(
        names(&with),
        names(&unknown),
        "known with a code vs unknown"
    );
}

#[tokio::test]
async fn reset_password_does_the_same_work_for_known_and_unknown_addresses() {
    let app = app().await;
    let known = app.stored_account(true).await.email;
    let reset = |address: String| {
        let state = app.state.clone();
        async move {
            assert!(service::reset_password(
                &state,
                email(&address),
                "000000",
                Password::parse("a brand new password", "new_password").unwrap(),
            )
            .await
            .is_err());
        }
    };

    let unknown = work_of(&app, reset(unique_email())).await;
    let existing = work_of(&app, reset(known)).await;

    assert!(unknown.0.iter().any(|op| op.write), "{:?}", unknown.0);
    assert_eq!(names(&existing), names(&unknown));
    assert_eq!((existing.1, existing.2), (unknown.1, unknown.2));
}

#[tokio::test]
async fn login_does_the_same_work_for_known_and_unknown_addresses() {
    let app = app().await;
    let known = app.stored_account(true).await.email;
    let login = |address: String| {
        let state = app.state.clone();
        async move {
            assert!(
                service::login(&state, &device(), &address, "not the password")
                    .await
                    .is_err()
            );
        }
    };

    let unknown = work_of(&app, login(unique_email())).await;
    let existing = work_of(&app, login(known)).await;

    assert_eq!(names(&existing), names(&unknown));
    assert_eq!(
        (existing.2, unknown.2),
        (1, 1),
        "one bcrypt verification each"
    );
}

#[tokio::test]
async fn send_verification_code_answers_before_any_store_work_for_every_address() {
    let app = app().await;
    let known = app.stored_account(true).await.email;
    let request = |address: String, n: u8| {
        let state = app.state.clone();
        async move {
            service::request_code(
                &state,
                client(n),
                email(&address),
                introgy::domain::RequestablePurpose::ResetPassword,
            )
        }
    };

    let unknown = work_of(&app, request(unique_email(), 1)).await;
    let existing = work_of(&app, request(known.clone(), 2)).await;

    // The request itself does nothing that differs: the store work runs after the answer.
    assert_eq!(names(&unknown), Vec::<&str>::new());
    assert_eq!(names(&existing), Vec::<&str>::new());
    assert_eq!((existing.1, existing.2), (unknown.1, unknown.2));
    app.wait_for_mails(&known, "reset_code", 1).await;
}

/// The device of a request from the test client (no User-Agent).
fn device() -> introgy::auth::device::Device {
    introgy::auth::device::Device::new(None, std::net::Ipv4Addr::LOCALHOST.into())
}
