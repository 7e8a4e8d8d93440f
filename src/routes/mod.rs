//! HTTP routes, one module per resource. One list of routes (utoipa-axum's
//! `OpenApiRouter` + `routes!`) yields both the router and the OpenAPI document, so the
//! two cannot drift; every route is served at the root and again under `/api`.

pub mod auth;
pub mod docs;
pub mod meta;
pub mod schema;
pub mod social_battery;
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
        .merge(auth::router(state.clone()))
        .merge(users::router())
        .merge(social_battery::router())
}

/// The API's routes and the OpenAPI document that describes exactly them.
pub fn api_with_document(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = api(state).split_for_parts();
    docs::declare_common_responses(&mut doc);
    let router = router.method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    (router, doc)
}

/// The whole application router (state still to be provided).
pub fn router(state: &AppState) -> Router<AppState> {
    let (api, doc) = api_with_document(state);
    let aliases = [auth::ALIASES, users::ALIASES, social_battery::ALIASES];
    let document = axum::body::Bytes::from(docs::finish(&doc, &aliases).to_string());
    Router::new()
        .merge(api.clone())
        .nest("/api", api)
        .merge(docs::router("", document.clone()))
        .merge(docs::router("/api", document))
        .fallback(|| async { ApiError::NotFound("Route".into()) })
}
