//! The OpenAPI document (generated from the handlers' annotations), Swagger UI at
//! `/docs` and ReDoc at `/redoc`, all served from the binary with no internet access.

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{
    Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme,
};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::startup::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Introgy API",
        description = "Backend of Introgy, the introvert's social battery manager: accounts, \
profiles and the social battery.\n\nEvery route is served at the root and, identically, \
under `/api`. Errors are `{\"detail\": ..., \"code\": ...}`; validation errors are 422 with \
`detail` a list of `{loc, msg, type}`.",
    ),
    paths(
        super::meta::root,
        super::meta::health,
        super::meta::live,
        super::meta::ready,
        crate::metrics::scrape_with_token,
        super::auth::register,
        super::auth::send_verification_code,
        super::auth::verify_otp,
        super::auth::login,
        super::auth::reset_password,
        super::auth::refresh_token,
        super::auth::verify_token,
        super::auth::logout,
        super::users::get_me,
        super::users::update_me,
        super::users::delete_me,
        super::users::lookup,
        super::social_battery::get_battery,
        super::social_battery::record,
        super::social_battery::activity,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Accounts, one-time codes, sessions"),
        (name = "users", description = "Your profile, and finding other users"),
        (name = "social-battery", description = "Your social battery and its history"),
        (name = "meta", description = "Service information and health"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new(
                "/auth/login",
                Scopes::new(),
            ))])),
        );
    }
}

const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

/// The ReDoc page; relative URLs make it work at `/redoc` and `/api/redoc` alike.
const REDOC_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Introgy API - ReDoc</title>
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<redoc spec-url="openapi.json"></redoc>
<script src="redoc-assets/redoc.standalone.js"></script>
</body>
</html>
"#;

async fn redoc() -> Html<&'static str> {
    Html(REDOC_HTML)
}

async fn redoc_js() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        REDOC_JS,
    )
}

/// Docs routes for the root (`prefix` = "") or the `/api` mount (`prefix` = "/api").
pub fn router(prefix: &str, doc: utoipa::openapi::OpenApi) -> Router<AppState> {
    let swagger = SwaggerUi::new(format!("{prefix}/docs"))
        .url(format!("{prefix}/openapi.json"), doc)
        .config(
            utoipa_swagger_ui::Config::default()
                .persist_authorization(true)
                .try_it_out_enabled(true),
        );
    Router::new()
        .merge(swagger)
        .route(&format!("{prefix}/redoc"), get(redoc))
        .route(
            &format!("{prefix}/redoc-assets/redoc.standalone.js"),
            get(redoc_js),
        )
}
