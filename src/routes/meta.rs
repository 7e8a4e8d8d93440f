//! `GET /`, `GET /health` (compatible with the old service, plus build and the reason
//! for `degraded`), and the probes `GET /health/live` and `GET /health/ready`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::WriteHealth;
use crate::startup::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct RootResponse {
    pub name: String,
    pub version: String,
    pub environment: String,
    pub status: String,
    pub docs: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok` or `degraded` (then `reason` says why, and the answer is 503).
    pub status: String,
    pub version: String,
    /// The git commit of the build (`unknown` when built without git).
    pub commit: String,
    /// `connected` or `disconnected`.
    pub database: String,
    /// `sqlite` or `mongodb`.
    pub store: String,
    /// `smtp`, `sendgrid` or `log`.
    pub mail_transport: String,
    /// Mails waiting in the outbox (`null` when the store is down).
    pub outbox_pending: Option<u64>,
    /// Mails given up after their last try.
    pub outbox_dead: Option<u64>,
    pub uptime_seconds: u64,
    /// Why the status is `degraded` (`null` when `ok`).
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LiveResponse {
    /// Always `ok`: the process runs and answers.
    pub status: String,
    pub version: String,
    pub commit: String,
    pub uptime_seconds: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyResponse {
    /// `ready`, or `not_ready` (with 503).
    pub status: String,
    /// `ok` or `unreachable`.
    pub store: String,
    /// `ok`, or `failing` when the latest write failed.
    pub writes: String,
    /// `ok`, or `stuck` when the mail worker has made no progress for too long.
    pub outbox: String,
    /// What is wrong, one entry per failed check.
    pub reasons: Vec<String>,
}

/// Service name, version and environment.
#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 200, description = "Service information", body = RootResponse)))]
pub async fn root(State(state): State<AppState>) -> Json<RootResponse> {
    Json(RootResponse {
        name: "Introgy API".to_owned(),
        version: crate::VERSION.to_owned(),
        environment: state.config.environment.as_str().to_owned(),
        status: "running".to_owned(),
        docs: "/docs".to_owned(),
    })
}

/// What the probes look at, gathered once per call.
struct Checks {
    connected: bool,
    /// The failing write operations, and for how long.
    writes_failing: Option<(Vec<&'static str>, Duration)>,
    outbox_stalled: Option<Duration>,
}

async fn run_checks(state: &AppState) -> Checks {
    let connected = match state.store.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "health check: store unreachable");
            false
        }
    };
    let writes_failing = match state.store.observer().map(|o| o.write_health()) {
        Some(WriteHealth::Failing { operations, for_ }) => Some((operations, for_)),
        _ => None,
    };
    Checks {
        connected,
        writes_failing,
        outbox_stalled: state.outbox.stalled(),
    }
}

impl Checks {
    /// One line per failed check; the mail worker only when `with_outbox` (mail waits
    /// durably while it recovers, so it does not make `/health` degraded).
    fn reasons(&self, with_outbox: bool) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.connected {
            reasons.push("the store does not answer".to_owned());
        }
        if let Some((operations, failing)) = &self.writes_failing {
            reasons.push(format!(
                "writes are failing ({}: the latest attempt failed; failing for {} s)",
                operations.join(", "),
                failing.as_secs()
            ));
        }
        if let Some(stalled) = self.outbox_stalled.filter(|_| with_outbox) {
            reasons.push(format!(
                "the mail worker has made no progress for {} s",
                stalled.as_secs()
            ));
        }
        reasons
    }
}

/// Store connectivity and recent writes, the outbox backlog and the build; 503 and
/// `degraded` when the store does not answer or its latest write failed.
#[utoipa::path(get, path = "/health", tag = "meta",
    responses(
        (status = 200, description = "Healthy", body = HealthResponse),
        (status = 503, description = "The store is unreachable or writes are failing", body = HealthResponse),
    ))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let checks = run_checks(&state).await;
    let outbox = if checks.connected {
        state.store.outbox_stats().await.ok()
    } else {
        None
    };
    let reasons = checks.reasons(false);
    let degraded = !reasons.is_empty();
    let reason = degraded.then(|| reasons.join("; "));
    (
        if degraded {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        },
        Json(HealthResponse {
            status: if degraded { "degraded" } else { "ok" }.to_owned(),
            version: crate::VERSION.to_owned(),
            commit: crate::COMMIT.to_owned(),
            database: if checks.connected {
                "connected"
            } else {
                "disconnected"
            }
            .to_owned(),
            store: state.store.backend().to_owned(),
            mail_transport: state.mailer.transport().name().to_owned(),
            outbox_pending: outbox.map(|o| o.pending),
            outbox_dead: outbox.map(|o| o.dead),
            uptime_seconds: state.started_at.elapsed().as_secs(),
            reason,
        }),
    )
}

/// Liveness: the process runs and serves HTTP. No store call, so a database outage
/// never makes a supervisor restart a healthy process.
#[utoipa::path(get, path = "/health/live", tag = "meta",
    responses((status = 200, description = "The process is up", body = LiveResponse)))]
pub async fn live(State(state): State<AppState>) -> Json<LiveResponse> {
    Json(LiveResponse {
        status: "ok".to_owned(),
        version: crate::VERSION.to_owned(),
        commit: crate::COMMIT.to_owned(),
        uptime_seconds: state.started_at.elapsed().as_secs(),
    })
}

/// Readiness: the store answers, its latest write succeeded, and the mail worker is
/// making progress; 503 otherwise (take the instance out of the load balancer).
#[utoipa::path(get, path = "/health/ready", tag = "meta",
    responses(
        (status = 200, description = "Ready for traffic", body = ReadyResponse),
        (status = 503, description = "Not ready; `reasons` says why", body = ReadyResponse),
    ))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<ReadyResponse>) {
    let checks = run_checks(&state).await;
    let reasons = checks.reasons(true);
    let ready = reasons.is_empty();
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(ReadyResponse {
            status: if ready { "ready" } else { "not_ready" }.to_owned(),
            store: if checks.connected {
                "ok"
            } else {
                "unreachable"
            }
            .to_owned(),
            writes: if checks.writes_failing.is_some() {
                "failing"
            } else {
                "ok"
            }
            .to_owned(),
            outbox: if checks.outbox_stalled.is_some() {
                "stuck"
            } else {
                "ok"
            }
            .to_owned(),
            reasons,
        }),
    )
}
