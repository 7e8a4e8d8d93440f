//! HTTP routes, one module per resource. One list of routes (utoipa-axum's
//! `OpenApiRouter` + `routes!`) yields both the router and the OpenAPI document, so the
//! two cannot drift; every route is served at the root and again under `/api`.

pub mod account;
pub mod auth;
pub mod docs;
pub mod insights;
pub mod meta;
pub mod schema;
pub mod social_battery;
pub mod unsubscribe;
pub mod users;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::startup::AppState;

/// Every resource route with its documentation, relative to a mount point.
fn api(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .routes(routes!(meta::root))
        .routes(routes!(meta::health))
        .routes(routes!(meta::live))
        .routes(routes!(meta::ready))
        .merge(auth::router(state.clone()))
        .merge(users::router())
        .merge(account::router())
        .merge(social_battery::router())
        .merge(insights::router())
        .merge(unsubscribe::router())
}

/// Routes served at the root only, not under `/api`.
fn root_only() -> OpenApiRouter<AppState> {
    // An operations endpoint, answered only with METRICS_TOKEN.
    OpenApiRouter::new().routes(routes!(crate::metrics::scrape_with_token))
}

/// The whole application router (state still to be provided), and the OpenAPI document
/// that describes exactly its routes.
pub fn router(state: &AppState) -> Router<AppState> {
    let (api, mut doc) = api(state).split_for_parts();
    let (root_only, root_only_doc) = root_only().split_for_parts();
    doc.merge(root_only_doc);
    docs::declare_common_responses(&mut doc);
    let aliases = [
        auth::ALIASES,
        account::ALIASES,
        users::ALIASES,
        social_battery::ALIASES,
    ];
    let document = axum::body::Bytes::from(docs::finish(&doc, &aliases).to_string());
    let api = api.method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    Router::new()
        .merge(api.clone())
        .nest("/api", api)
        .merge(root_only.method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed }))
        .merge(docs::router("", document.clone()))
        .merge(docs::router("/api", document))
        .fallback(|| async { ApiError::NotFound("Route".into()) })
}
