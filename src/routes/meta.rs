//! `GET /` and `GET /health`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

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
    /// `ok` or `degraded`.
    pub status: String,
    pub version: String,
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
}

/// Service name, version and environment.
#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 200, description = "Service information", body = RootResponse)))]
pub async fn root(State(state): State<AppState>) -> Json<RootResponse> {
    Json(RootResponse {
        name: "Introgy API".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        environment: state.config.environment.as_str().to_owned(),
        status: "running".to_owned(),
        docs: "/docs".to_owned(),
    })
}

/// Liveness and store connectivity; 503 when the store does not answer.
#[utoipa::path(get, path = "/health", tag = "meta",
    responses(
        (status = 200, description = "Healthy", body = HealthResponse),
        (status = 503, description = "The store is unreachable", body = HealthResponse),
    ))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let connected = match state.store.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "health check: store unreachable");
            false
        }
    };
    let outbox = if connected {
        state.store.outbox_stats().await.ok()
    } else {
        None
    };
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(HealthResponse {
            status: if connected { "ok" } else { "degraded" }.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            database: if connected {
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
        }),
    )
}
