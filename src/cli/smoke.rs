//! `introgy smoke <BASE_URL>`: drives a running deployment end to end over HTTP and
//! reports each step; exits non-zero if any step fails.
//!
//! Steps: health, docs (Swagger UI, ReDoc, OpenAPI), register (a throwaway address at a
//! reserved domain: 202), login (that unverified account: 403 after the password check),
//! and, with `--email`/`--password` of a verified test account, the battery round trip
//! (login, verify-token, read the battery, record a `set` to the current level, see it in
//! the history, log out). Without credentials the round trip is reported as skipped.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

#[derive(Debug, clap::Args)]
pub struct SmokeArgs {
    /// The deployment, e.g. https://api.introgy.app or http://127.0.0.1:8000/api.
    pub base_url: String,
    /// A verified test account for the battery round trip.
    #[arg(long, env = "INTROGY_SMOKE_EMAIL")]
    pub email: Option<String>,
    /// Its password.
    #[arg(long, env = "INTROGY_SMOKE_PASSWORD", value_parser = |s: &str| Ok::<_, std::convert::Infallible>(SecretString::from(s)), hide_env_values = true)]
    pub password: Option<SecretString>,
    /// Domain for the throwaway registration (a reserved domain: nobody gets the mail).
    #[arg(long, default_value = "example.com")]
    pub register_domain: String,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 15)]
    pub timeout_seconds: u64,
}

struct Smoke {
    client: reqwest::Client,
    base: String,
    failures: usize,
}

impl Smoke {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn step<F, Fut>(&mut self, name: &str, f: F) -> Option<Value>
    where
        F: FnOnce(reqwest::Client, String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Value>>,
    {
        let started = Instant::now();
        match f(self.client.clone(), self.base.clone()).await {
            Ok(value) => {
                println!("ok    {name:<28} {:>6} ms", started.elapsed().as_millis());
                Some(value)
            }
            Err(e) => {
                println!("FAIL  {name:<28} {e:#}");
                self.failures += 1;
                None
            }
        }
    }
}

async fn expect_json(response: reqwest::Response, status: u16) -> anyhow::Result<Value> {
    let got = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    ensure!(
        got == status,
        "expected {status}, got {got}: {}",
        body.chars().take(300).collect::<String>()
    );
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub async fn run(args: SmokeArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_seconds))
        .build()
        .context("Failed to build the HTTP client")?;
    let mut smoke = Smoke {
        client,
        base: args.base_url.trim_end_matches('/').to_owned(),
        failures: 0,
    };
    println!("smoke test of {}", smoke.base);

    smoke
        .step("health", |c, base| async move {
            let body = expect_json(c.get(format!("{base}/health")).send().await?, 200).await?;
            ensure!(
                body["database"] == "connected",
                "database is {}",
                body["database"]
            );
            Ok(body)
        })
        .await;
    for (name, path, needle) in [
        ("docs (Swagger UI)", "/docs/", "swagger"),
        ("redoc", "/redoc", "redoc"),
        ("openapi.json", "/openapi.json", "\"openapi\""),
    ] {
        let url = smoke.url(path);
        smoke
            .step(name, |c, _| async move {
                let response = c.get(&url).send().await?;
                ensure!(
                    response.status().is_success(),
                    "{url} answered {}",
                    response.status()
                );
                let text = response.text().await?;
                ensure!(
                    text.to_lowercase().contains(needle),
                    "{url} does not look right"
                );
                Ok(Value::Null)
            })
            .await;
    }

    let throwaway = format!(
        "smoke-{}@{}",
        crate::auth::random_hex(6),
        args.register_domain
    );
    let throwaway_password = format!("smoke {}", crate::auth::random_hex(8));
    let (email, password) = (throwaway.clone(), throwaway_password.clone());
    smoke
        .step("register", |c, base| async move {
            let response = c
                .post(format!("{base}/auth/register"))
                .json(&json!({"email": email, "password": password}))
                .send()
                .await?;
            expect_json(response, 202).await
        })
        .await;
    let (email, password) = (throwaway, throwaway_password);
    smoke
        .step("login (unverified)", |c, base| async move {
            let response = c
                .post(format!("{base}/auth/login"))
                .json(&json!({"email": email, "password": password}))
                .send()
                .await?;
            let body = expect_json(response, 403).await?;
            ensure!(
                body["code"] == "email_not_verified",
                "unexpected answer {body}"
            );
            Ok(body)
        })
        .await;

    match (args.email, args.password) {
        (Some(email), Some(password)) => battery_round_trip(&mut smoke, email, password).await,
        _ => println!("skip  battery round trip         (no --email/--password of a test account)"),
    }

    ensure!(smoke.failures == 0, "{} step(s) failed", smoke.failures);
    println!("all steps passed");
    Ok(())
}

async fn battery_round_trip(smoke: &mut Smoke, email: String, password: SecretString) {
    let password = password.expose_secret().to_owned();
    let Some(tokens) = smoke
        .step("login", |c, base| async move {
            let response = c
                .post(format!("{base}/auth/login"))
                .json(&json!({"email": email, "password": password}))
                .send()
                .await?;
            expect_json(response, 200).await
        })
        .await
    else {
        return;
    };
    let token = tokens["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let t = token.clone();
    smoke
        .step("verify-token", |c, base| async move {
            expect_json(
                c.get(format!("{base}/auth/verify-token"))
                    .bearer_auth(t)
                    .send()
                    .await?,
                200,
            )
            .await
        })
        .await;
    let t = token.clone();
    let Some(battery) = smoke
        .step("read battery", |c, base| async move {
            expect_json(
                c.get(format!("{base}/social-battery/me"))
                    .bearer_auth(t)
                    .send()
                    .await?,
                200,
            )
            .await
        })
        .await
    else {
        return;
    };
    let level = battery["level"].as_i64().unwrap_or(50);
    let t = token.clone();
    let Some(record) = smoke
        .step("record (set, same level)", |c, base| async move {
            let response = c
                .post(format!("{base}/social-battery/me/record"))
                .bearer_auth(t)
                .header(
                    "Idempotency-Key",
                    format!("smoke-{}", crate::auth::random_hex(8)),
                )
                .json(&json!({"type": "set", "level": level, "notes": "introgy smoke"}))
                .send()
                .await?;
            let body = expect_json(response, 201).await?;
            ensure!(body["level_after"] == level, "level moved: {body}");
            Ok(body)
        })
        .await
    else {
        return;
    };
    let (t, id) = (token.clone(), record["id"].clone());
    smoke
        .step("history shows it", |c, base| async move {
            let page = expect_json(
                c.get(format!("{base}/social-battery/me/activity?limit=5"))
                    .bearer_auth(t)
                    .send()
                    .await?,
                200,
            )
            .await?;
            ensure!(
                page["items"][0]["id"] == id,
                "newest item is not the recorded one"
            );
            Ok(page)
        })
        .await;
    smoke
        .step("logout", |c, base| async move {
            let response = c
                .post(format!("{base}/auth/logout"))
                .bearer_auth(token)
                .send()
                .await?;
            ensure!(
                response.status().as_u16() == 204,
                "logout answered {}",
                response.status()
            );
            Ok(Value::Null)
        })
        .await;
}
