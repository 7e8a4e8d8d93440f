//! Account-enumeration timing benchmark: `cargo bench --bench timing` (SECURITY.md 29).
//!
//! For `register`, `verify-otp`, `reset-password`, `login` and `send-verification-code`
//! it sends 500 requests naming an address that has an account and 500 naming one that
//! has none, interleaved in a random order (pair by pair, so drift in the machine's load
//! hits both classes alike), to the real server over HTTP, and prints per route the
//! probability that a request of the "known" class is slower than one of the "unknown"
//! class (the AUC, or Mann-Whitney U / n²): 0.5 means the times cannot be told apart; the
//! target is 0.45–0.55. With 500 samples each the AUC of two identical distributions has
//! a standard error of about 0.018, so ±0.036 is the 95% band of pure chance.
//!
//! Every known-class request names its own account, so no per-address budget (failed
//! logins, mail budget, code guesses) ever changes what a request does:
//! - `register`: a verified account (the notice is queued) vs a new address (an account
//!   is created, the code queued);
//! - `verify-otp` / `reset-password`: an account with a live code of that purpose, sent a
//!   wrong code, vs an address without an account;
//! - `login`: a verified account with a wrong password vs an unknown address;
//! - `send-verification-code` (`reset_password`): a verified account vs an unknown address.
//!
//! bcrypt runs at cost 4 here: both classes hash alike, and a cheap hash makes any
//! difference in the rest of the work easier to see, not harder. `BENCH_SAMPLES` sets the
//! samples per class (default 500); `BENCH_DATABASE_URL` another store (e.g. a
//! `mongodb://` URL; default a fresh SQLite file).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use introgy::config::{Config, ConfigArgs};
use introgy::domain::OtpPurpose;
use introgy::email::MemoryTransport;
use introgy::startup::{AppState, Application};
use introgy::store::{NewUser, OneTimeCode};
use rand::seq::SliceRandom;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

const PASSWORD: &str = "correct horse battery staple";
/// Not the password of any bench account.
const WRONG_PASSWORD: &str = "not the password at all";
const WARM_UP: usize = 50;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The probability that a sample of `a` is larger than one of `b` (ties count half).
fn auc(a: &[f64], b: &[f64]) -> f64 {
    let mut wins = 0.0;
    for x in a {
        for y in b {
            if x > y {
                wins += 1.0;
            } else if x == y {
                wins += 0.5;
            }
        }
    }
    wins / (a.len() * b.len()) as f64
}

fn median_ms(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2] * 1e3
}

/// A route and the body of its `n`-th request of each class.
struct Route {
    name: &'static str,
    path: &'static str,
    expected: u16,
    known: Box<dyn Fn(usize) -> Value>,
    unknown: Box<dyn Fn(usize) -> Value>,
}

/// Accounts made in the store directly: `count` of them, verified or not, each with a
/// live code of `code` (a hash no submitted code matches) if given.
async fn accounts(
    state: &AppState,
    prefix: &str,
    count: usize,
    verified: bool,
    code: Option<OtpPurpose>,
) -> Vec<String> {
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let now = chrono::Utc::now();
    let mut emails = Vec::with_capacity(count);
    for n in 0..count {
        let id = introgy::auth::new_object_id();
        let email = format!("{prefix}{n}@example.com");
        state
            .store
            .insert_user(&NewUser {
                id: id.clone(),
                email: email.clone(),
                hashed_password: hash.clone(),
                display_name: None,
                battery_level: 70,
                now,
            })
            .await
            .unwrap();
        if verified {
            state.store.mark_verified(&id, now).await.unwrap();
        }
        if let Some(purpose) = code {
            state
                .store
                .put_code(&OneTimeCode {
                    user_id: id,
                    purpose,
                    code_hash: "0".repeat(64),
                    signup: None,
                    new_email: None,
                    created_at: now,
                    expires_at: now + chrono::Duration::minutes(10),
                })
                .await
                .unwrap();
        }
        emails.push(email);
    }
    emails
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let samples: usize = env_or("BENCH_SAMPLES", 500);
        let per_class = samples + WARM_UP;
        let dir = tempfile::tempdir().unwrap();
        let db = std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| {
            format!("sqlite:{}", dir.path().join("timing-bench.db").display())
        });
        let argv = [
            "introgy", "--port", "0", "--database-url", &db, "--bcrypt-cost", "4",
            "--auth-rate-limit-per-minute", "1000000",
            "--jwt-secret-key", "bench-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123",
        ];
        let config = Config::from_args(Args::try_parse_from(argv).unwrap().config).unwrap();
        let app = Application::build_with_transport(config, Arc::new(MemoryTransport::default()))
            .await
            .unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let state = app.state().clone();
        tokio::spawn(app.run_until(std::future::pending()));

        // Unique per run, so that a MongoDB database can be reused.
        let run = introgy::auth::new_object_id();
        let unknown = |route: &'static str| {
            let run = run.clone();
            move |n: usize| format!("nobody-{route}-{run}-{n}@example.com")
        };
        let verified_for_register =
            accounts(&state, &format!("reg-{run}-"), per_class, true, None).await;
        let with_verify_code = accounts(
            &state,
            &format!("otp-{run}-"),
            per_class,
            false,
            Some(OtpPurpose::VerifyEmail),
        )
        .await;
        let with_reset_code = accounts(
            &state,
            &format!("rst-{run}-"),
            per_class,
            true,
            Some(OtpPurpose::ResetPassword),
        )
        .await;
        let for_login = accounts(&state, &format!("log-{run}-"), per_class, true, None).await;
        let for_code = accounts(&state, &format!("snd-{run}-"), per_class, true, None).await;

        let routes = vec![
            Route {
                name: "register",
                path: "/auth/register",
                expected: 202,
                known: Box::new(move |n| json!({"email": verified_for_register[n], "password": PASSWORD})),
                unknown: Box::new({
                    let email = unknown("register");
                    move |n| json!({"email": email(n), "password": PASSWORD})
                }),
            },
            Route {
                name: "verify-otp",
                path: "/auth/verify-otp",
                expected: 400,
                known: Box::new(move |n| json!({"email": with_verify_code[n], "code": "000000"})),
                unknown: Box::new({
                    let email = unknown("verify");
                    move |n| json!({"email": email(n), "code": "000000"})
                }),
            },
            Route {
                name: "reset-password",
                path: "/auth/reset-password",
                expected: 400,
                known: Box::new(move |n| {
                    json!({"email": with_reset_code[n], "code": "000000", "new_password": PASSWORD})
                }),
                unknown: Box::new({
                    let email = unknown("reset");
                    move |n| json!({"email": email(n), "code": "000000", "new_password": PASSWORD})
                }),
            },
            Route {
                name: "login",
                path: "/auth/login",
                expected: 401,
                known: Box::new(move |n| json!({"email": for_login[n], "password": WRONG_PASSWORD})),
                unknown: Box::new({
                    let email = unknown("login");
                    move |n| json!({"email": email(n), "password": WRONG_PASSWORD})
                }),
            },
            Route {
                name: "send-verification-code",
                path: "/auth/send-verification-code",
                expected: 202,
                known: Box::new(move |n| json!({"email": for_code[n], "purpose": "reset_password"})),
                unknown: Box::new({
                    let email = unknown("code");
                    move |n| json!({"email": email(n), "purpose": "reset_password"})
                }),
            },
        ];

        let client = reqwest::Client::new();
        println!(
            "SECURITY.md 29: P(known address slower than unknown), {samples} interleaved samples each \
             (target 0.45-0.55; ±0.036 is the 95% band of chance)"
        );
        for route in &routes {
            let url = format!("{base}{}", route.path);
            let mut order: Vec<bool> = (0..per_class).flat_map(|_| [true, false]).collect();
            // Pairs in a random order each, so neither class always goes first.
            for pair in order.chunks_mut(2) {
                pair.shuffle(&mut rand::thread_rng());
            }
            let (mut known, mut unknown) = (Vec::new(), Vec::new());
            let (mut k, mut u) = (0, 0);
            for is_known in order {
                let body = if is_known {
                    k += 1;
                    (route.known)(k - 1)
                } else {
                    u += 1;
                    (route.unknown)(u - 1)
                };
                let started = Instant::now();
                let response = client.post(&url).json(&body).send().await.expect("request");
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                let elapsed = started.elapsed();
                assert_eq!(status, route.expected, "{} {body}", route.name);
                let sample = if is_known { &mut known } else { &mut unknown };
                sample.push(elapsed.as_secs_f64());
            }
            let (known, unknown) = (&known[WARM_UP..], &unknown[WARM_UP..]);
            println!(
                "{:<24} AUC {:.3}   median known {:>6.2} ms, unknown {:>6.2} ms",
                route.name,
                auc(known, unknown),
                median_ms(known),
                median_ms(unknown),
            );
            // Let the mails and codes queued by this route settle before the next one.
            let deadline = Instant::now() + Duration::from_secs(60);
            while state.store.outbox_stats().await.map(|s| s.pending).unwrap_or(0) > 0
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
}
