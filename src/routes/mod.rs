//! HTTP routes, one module per resource, assembled into one router that serves every
//! route at the root and again under `/api`.

pub mod auth;
pub mod docs;
pub mod meta;
pub mod social_battery;
pub mod users;

use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::startup::AppState;

/// Every resource route (without docs), relative to a mount point.
fn api(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(meta::root))
        .route("/health", get(meta::health))
        .route("/health/live", get(meta::live))
        .route("/health/ready", get(meta::ready))
        .merge(auth::router(state.clone()))
        .merge(users::router())
        .merge(social_battery::router())
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

/// The whole application router (state still to be provided).
pub fn router(state: &AppState) -> Router<AppState> {
    let doc = docs::ApiDoc::openapi();
    Router::new()
        .merge(api(state))
        .nest("/api", api(state))
        .merge(docs::router("", doc.clone()))
        .merge(docs::router("/api", doc))
        // Not under /api: an operations endpoint, answered only with METRICS_TOKEN.
        .route("/metrics", get(crate::metrics::scrape_with_token))
        .fallback(|| async { ApiError::NotFound("Route".into()) })
}
