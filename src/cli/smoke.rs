//! `introgy smoke <BASE_URL>`: drives a running deployment end to end over HTTP and
//! reports each step; exits non-zero if any step fails.
//!
//! `BASE_URL` may be `https://api.introgy.app`, `http://127.0.0.1:8000/api` or just
//! `host:port` (then `http://` is assumed). If the deployment cannot be reached at all,
//! smoke says so in one line and stops (the other steps would only repeat it).
//!
//! Steps: health (waiting up to `--wait-seconds` for a just-restarted service, and
//! following a redirect to HTTPS for the rest), docs (Swagger UI, ReDoc, OpenAPI),
//! register and login, and with `--email`/`--password` of a verified test account the
//! battery round trip (login, verify-token, read the battery, record a `set` to the
//! current level, see it in the history, log out).
//!
//! Smoke leaves no account behind (`docs/deploy.md`):
//! - with a test account, "register" re-registers that account's own address: 202, and
//!   nothing is created (its mailbox gets the usual "someone tried to sign up" notice);
//! - without one, but with the store's settings (`DATABASE_URL`/`MONGO_URI`, e.g. from
//!   `--env-file /etc/introgy/introgy.env` on the server), it registers a throwaway
//!   address at a reserved domain, checks that its login is refused as unverified, and
//!   deletes that account through the store;
//! - with neither, it registers nothing and checks that login refuses an unknown address.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::store::Store;

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

#[derive(Debug, clap::Args)]
pub struct SmokeArgs {
    /// The deployment, e.g. https://api.introgy.app, http://127.0.0.1:8000/api or
    /// 127.0.0.1:8000.
    pub base_url: String,
    /// A verified test account for the battery round trip.
    #[arg(long, env = "INTROGY_SMOKE_EMAIL")]
    pub email: Option<String>,
    /// Its password.
    #[arg(long, env = "INTROGY_SMOKE_PASSWORD", value_parser = secret, hide_env_values = true)]
    pub password: Option<SecretString>,
    /// Domain for the throwaway registration (a reserved domain: nobody gets the mail).
    #[arg(long, default_value = "example.com")]
    pub register_domain: String,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 15)]
    pub timeout_seconds: u64,
    /// Keep retrying the first step this long while the service is unreachable or not
    /// healthy yet (just after a restart).
    #[arg(long, default_value_t = 0)]
    pub wait_seconds: u64,
    /// Connect to this IP address instead of looking the URL's host name up (like curl
    /// --resolve): tests a site through the local nginx before DNS points at it.
    #[arg(long, value_name = "IP")]
    pub connect_to: Option<std::net::IpAddr>,
    /// The store, to delete the throwaway account afterwards (see above).
    #[arg(long, env = "DATABASE_URL", value_parser = secret, hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// MongoDB connection string (the old service's name for the store setting).
    #[arg(long, env = "MONGO_URI", value_parser = secret, hide_env_values = true)]
    pub mongo_uri: Option<SecretString>,
    /// MongoDB database name when the URL has none.
    #[arg(long, env = "MONGO_DB", default_value = "introgy")]
    pub mongo_db: String,
}

/// How a step ended.
enum Outcome {
    Passed(Value),
    Failed,
    /// Nothing answered: the remaining steps are not tried.
    Unreachable,
}

struct Smoke {
    client: reqwest::Client,
    base: String,
    failures: usize,
    unreachable: bool,
}

/// Whether an error means "nothing answered" (connection refused, DNS, timeout), as
/// opposed to a wrong answer.
fn is_unreachable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<reqwest::Error>())
        .any(|e| e.is_connect() || e.is_timeout())
}

/// `host:port` → `http://host:port`; no trailing slash.
pub fn normalise_base_url(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim().trim_end_matches('/');
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .with_context(|| format!("{raw:?} is not a URL or host:port"))?;
    ensure!(
        matches!(url.scheme(), "http" | "https") && url.host_str().is_some(),
        "{raw:?} is not an http(s) URL or host:port"
    );
    Ok(with_scheme)
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
        match self.try_step(name, f).await {
            Outcome::Passed(value) => Some(value),
            Outcome::Failed | Outcome::Unreachable => None,
        }
    }

    async fn try_step<F, Fut>(&mut self, name: &str, f: F) -> Outcome
    where
        F: FnOnce(reqwest::Client, String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Value>>,
    {
        if self.unreachable {
            return Outcome::Unreachable;
        }
        let started = Instant::now();
        let result = f(self.client.clone(), self.base.clone()).await;
        self.report(name, started, result)
    }

    /// Prints one step's line and counts a failure.
    fn report(&mut self, name: &str, started: Instant, result: anyhow::Result<Value>) -> Outcome {
        match result {
            Ok(value) => {
                println!("ok    {name:<30} {:>6} ms", started.elapsed().as_millis());
                Outcome::Passed(value)
            }
            Err(e) if is_unreachable(&e) => {
                println!("FAIL  {name:<30} cannot reach {}: {e:#}", self.base);
                self.failures += 1;
                self.unreachable = true;
                Outcome::Unreachable
            }
            Err(e) => {
                println!("FAIL  {name:<30} {e:#}");
                self.failures += 1;
                Outcome::Failed
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

/// Opens the store named by the smoke's settings, for deleting the throwaway account.
/// `None` when no store is configured, or when it is an SQLite file that does not exist
/// (opening it would create one).
async fn cleanup_store(args: &SmokeArgs) -> Option<anyhow::Result<std::sync::Arc<dyn Store>>> {
    let url = args
        .database_url
        .clone()
        .or_else(|| args.mongo_uri.clone())
        .filter(|u| !u.expose_secret().trim().is_empty())?;
    let database = match crate::config::parse_database_url(&url, &args.mongo_db) {
        Ok(database) => database,
        Err(e) => return Some(Err(e.into())),
    };
    if let crate::config::DatabaseConfig::Sqlite { path } = &database {
        if !path.exists() {
            return None;
        }
    }
    Some(
        crate::store::open(
            &database,
            Duration::from_secs(args.timeout_seconds),
            crate::store::OpenMode::Existing,
        )
        .await,
    )
}

pub async fn run(args: SmokeArgs) -> anyhow::Result<()> {
    let base = normalise_base_url(&args.base_url)?;
    let mut client = reqwest::Client::builder().timeout(Duration::from_secs(args.timeout_seconds));
    if let Some(ip) = args.connect_to {
        let host = reqwest::Url::parse(&base)?
            .host_str()
            .context("the URL has no host")?
            .to_owned();
        // The port is ignored: the URL's (or its scheme's) port is used.
        client = client.resolve(&host, std::net::SocketAddr::new(ip, 0));
    }
    let client = client.build().context("Failed to build the HTTP client")?;
    let mut smoke = Smoke {
        client,
        base,
        failures: 0,
        unreachable: false,
    };
    println!("smoke test of {}", smoke.base);

    health(&mut smoke, Duration::from_secs(args.wait_seconds)).await;
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

    match (&args.email, &args.password) {
        (Some(email), Some(password)) => {
            register_existing(&mut smoke, email.clone()).await;
            battery_round_trip(&mut smoke, email.clone(), password.clone()).await;
        }
        _ => match cleanup_store(&args).await {
            Some(Ok(store)) => register_and_delete(&mut smoke, &args, store).await,
            Some(Err(e)) => {
                println!(
                    "FAIL  {:<30} cannot open the store to clean up afterwards: {e:#}",
                    "register"
                );
                smoke.failures += 1;
            }
            None => {
                println!(
                    "skip  {:<30} (it would leave an account behind: pass --email/--password of a test account, or run with the store's settings, e.g. --env-file)",
                    "register"
                );
                login_unknown(&mut smoke).await;
            }
        },
    }

    if smoke.unreachable {
        anyhow::bail!("{} is unreachable", smoke.base);
    }
    ensure!(smoke.failures == 0, "{} step(s) failed", smoke.failures);
    println!("all steps passed");
    Ok(())
}

/// `GET /health`, retried until `wait` is over while nothing answers or it is not 200.
/// A redirect (to HTTPS, after certbot) moves the base for every later step.
async fn health(smoke: &mut Smoke, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let started = Instant::now();
        let attempt = async {
            let response = smoke.client.get(smoke.url("/health")).send().await?;
            let final_url = response.url().to_string();
            let body = expect_json(response, 200).await?;
            ensure!(
                body["database"] == "connected",
                "database is {}",
                body["database"]
            );
            Ok::<_, anyhow::Error>((final_url, body))
        }
        .await;
        match attempt {
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                smoke.report("health", started, Err(e));
                return;
            }
            Ok((final_url, body)) => {
                smoke.report("health", started, Ok(body));
                if let Some(moved) = final_url.strip_suffix("/health") {
                    if moved != smoke.base {
                        println!("      (redirected: continuing at {moved})");
                        smoke.base = moved.to_owned();
                    }
                }
                return;
            }
        }
    }
}

async fn register_existing(smoke: &mut Smoke, email: String) {
    smoke
        .step("register (test account)", |c, base| async move {
            // The address exists: 202 as for any address, and nothing is created.
            let response = c
                .post(format!("{base}/auth/register"))
                .json(&json!({"email": email, "password": format!("smoke {}", crate::auth::random_hex(8))}))
                .send()
                .await?;
            expect_json(response, 202).await
        })
        .await;
}

async fn login_unknown(smoke: &mut Smoke) {
    let email = format!("smoke-unknown-{}@example.com", crate::auth::random_hex(6));
    smoke
        .step("login (unknown address)", |c, base| async move {
            let response = c
                .post(format!("{base}/auth/login"))
                .json(&json!({"email": email, "password": format!("smoke {}", crate::auth::random_hex(8))}))
                .send()
                .await?;
            expect_json(response, 401).await
        })
        .await;
}

async fn register_and_delete(
    smoke: &mut Smoke,
    args: &SmokeArgs,
    store: std::sync::Arc<dyn Store>,
) {
    let throwaway = format!(
        "smoke-{}@{}",
        crate::auth::random_hex(6),
        args.register_domain.trim().to_lowercase()
    );
    let throwaway_password = format!("smoke {}", crate::auth::random_hex(8));
    let (email, password) = (throwaway.clone(), throwaway_password.clone());
    let registered = smoke
        .step("register", |c, base| async move {
            let response = c
                .post(format!("{base}/auth/register"))
                .json(&json!({"email": email, "password": password}))
                .send()
                .await?;
            expect_json(response, 202).await
        })
        .await
        .is_some();
    if registered {
        let (email, password) = (throwaway.clone(), throwaway_password);
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
    }
    // Whatever happened above, an account may exist now: delete it if it does.
    let started = Instant::now();
    let cleanup = async {
        match store.user_by_email(&throwaway).await? {
            Some(user) => {
                store.delete_user(&user.id).await?;
                Ok::<_, anyhow::Error>(true)
            }
            None => Ok(false),
        }
    }
    .await;
    match cleanup {
        Ok(true) => println!(
            "ok    {:<30} {:>6} ms",
            "delete the smoke account",
            started.elapsed().as_millis()
        ),
        Ok(false) if !registered => {}
        Ok(false) => {
            println!(
                "FAIL  {:<30} registered, but the store has no such account (is this the deployment's store?)",
                "delete the smoke account"
            );
            smoke.failures += 1;
        }
        Err(e) => {
            println!("FAIL  {:<30} {e:#}", "delete the smoke account");
            smoke.failures += 1;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_without_a_scheme_mean_http() {
        assert_eq!(
            normalise_base_url("127.0.0.1:8000").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            normalise_base_url("api.introgy.app/").unwrap(),
            "http://api.introgy.app"
        );
        assert_eq!(
            normalise_base_url("https://api.introgy.app/api/").unwrap(),
            "https://api.introgy.app/api"
        );
        assert!(normalise_base_url("ftp://x").is_err());
        assert!(normalise_base_url("").is_err());
    }
}
