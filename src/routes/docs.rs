//! The OpenAPI document's frame (info, security schemes, tags, the responses every
//! operation shares), Swagger UI at `/docs` and ReDoc at `/redoc`, all served from the
//! binary. The docs pages contact no other host: Swagger UI's online validator is off,
//! ReDoc's CDN logo is removed, and their Content-Security-Policy (see `startup`) allows
//! only this origin.

use std::sync::{Arc, LazyLock};

use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{
    Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Header, Ref, RefOr, Response as DocResponse};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::startup::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Introgy API",
        description = "Backend of Introgy, the introvert's social battery manager: accounts, \
profiles and the social battery.\n\n\
Every route is served at the root and, identically, under `/api`. A trailing slash is \
tolerated (`/users/me/` is `/users/me`).\n\n\
Errors are `{\"detail\": ..., \"code\": ...}`; validation errors are 422 with `detail` a \
list of `{loc, msg, type}` (FastAPI's shape): `loc` names the part (`body`, `query`, \
`header`) and the field, `type` is a stable machine code, `msg` is a sentence an app can \
show. Request bodies are JSON objects of at most 64 KiB (413 beyond, 415 for another \
media type). A method a path does not have answers 405 with `Allow`; an unknown path 404. \
503 means nothing was done and the request may be retried.",
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Accounts, one-time codes, sessions"),
        (name = "users", description = "Your profile, and finding other users"),
        (name = "social-battery", description = "Your social battery and its history"),
        (name = "nudges", description = "Opt-in mails (preferences.notifications) and their unsubscribe link"),
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

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn error_response(description: &str, schema: &str) -> DocResponse {
    DocResponse::builder()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build()
}

fn component(name: &str) -> RefOr<DocResponse> {
    RefOr::Ref(Ref::from_response_name(name))
}

/// Declares, on every operation, the answers that middleware and extractors give rather
/// than the handler: 503 (store timeout or request timeout) everywhere; 413, 415 and 422
/// wherever there is a request body; 401 wherever a token is required. An answer a
/// handler declares itself is kept.
pub fn declare_common_responses(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    let shared = [
        (
            "ServiceUnavailable",
            "The store did not answer in time, or the request took longer than \
             `REQUEST_TIMEOUT_SECONDS`; nothing was done, retry later",
            "ErrorBody",
        ),
        (
            "PayloadTooLarge",
            "The request body exceeds 64 KiB",
            "ErrorBody",
        ),
        (
            "UnsupportedMediaType",
            "The body is not `application/json`",
            "ErrorBody",
        ),
        ("ValidationError", "Invalid input", "ValidationErrorBody"),
        (
            "Unauthorized",
            "Missing, invalid, expired or revoked token",
            "ErrorBody",
        ),
    ];
    for (name, description, schema) in shared {
        components.responses.insert(
            name.to_owned(),
            RefOr::T(error_response(description, schema)),
        );
    }
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            let mut add = |status: &str, name: &str| {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| component(name));
            };
            add("503", "ServiceUnavailable");
            if operation.request_body.is_some() {
                add("413", "PayloadTooLarge");
                add("415", "UnsupportedMediaType");
                add("422", "ValidationError");
            }
            if operation.security.is_some() {
                add("401", "Unauthorized");
            }
        }
    }
}

/// Declares 429 with `Retry-After` on every operation of `router`; used where the rate
/// limit is attached, so the document says what the router does.
pub fn rate_limited<S>(mut router: OpenApiRouter<S>, why: &str) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let retry_after = Header::builder()
        .schema(Object::with_type(Type::Integer))
        .description(Some("Seconds to wait before trying again"))
        .build();
    let response = DocResponse::builder()
        .description(why)
        .header("Retry-After", retry_after)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    for item in router.get_openapi_mut().paths.paths.values_mut() {
        for operation in operations_mut(item) {
            operation
                .responses
                .responses
                .insert("429".to_owned(), RefOr::T(response.clone()));
        }
    }
    router
}

/// Field names serde also accepts for a request schema (camelCase spellings old
/// clients send, PRODUCT.md §5): `(schema, [(alias, field)])`.
pub type Aliases = &'static [(&'static str, &'static [(&'static str, &'static str)])];

/// The served document: the generated one, plus what utoipa's derive cannot say.
///
/// - Aliases become properties of their own (`deprecated`, pointing at the field), and
///   the object says that a field and its alias are not sent together (serde refuses
///   that as a duplicate); a required field is satisfied by either spelling.
/// - A new password is not one of the common passwords (refused in any case; the
///   schema lists them in lower case).
/// - JSON login takes `email` or `username` (either one, as a string).
/// - A 422 `loc` holds field names and list indexes.
pub fn finish(doc: &utoipa::openapi::OpenApi, aliases: &[Aliases]) -> serde_json::Value {
    use serde_json::{json, Value};
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serialises");
    let schemas = &mut doc["components"]["schemas"];
    for (name, field) in super::schema::NEW_PASSWORD_FIELDS {
        if let Some(password) = schemas.pointer_mut(&format!("/{name}/properties/{field}")) {
            password["not"] = json!({"enum": crate::domain::COMMON_PASSWORDS});
        }
    }
    for (name, pairs) in aliases.iter().flat_map(|a| a.iter()) {
        let schema = &mut schemas[*name];
        let objects: Vec<&mut Value> = match schema.get_mut("oneOf") {
            Some(Value::Array(variants)) => variants.iter_mut().collect(),
            _ => vec![schema],
        };
        for object in objects {
            declare_aliases(object, pairs);
        }
    }
    if let Some(login) = schemas.get_mut("LoginJson") {
        // Inside `allOf`, so that client generators keep one model with every field.
        login["allOf"] = json!([{"anyOf": [
            {"required": ["email"], "properties": {"email": {"type": "string"}}},
            {"required": ["username"], "properties": {"username": {"type": "string"}}},
        ]}]);
    }
    if let Some(loc) = schemas.pointer_mut("/FieldError/properties/loc") {
        loc["items"] = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    }
    doc
}

fn declare_aliases(object: &mut serde_json::Value, pairs: &[(&str, &str)]) {
    use serde_json::{json, Value};
    let mut either = Vec::new();
    let mut not_both = Vec::new();
    for (alias, field) in pairs {
        let Some(field_schema) = object["properties"].get(*field).cloned() else {
            continue;
        };
        let mut alias_schema = field_schema;
        alias_schema["deprecated"] = Value::Bool(true);
        alias_schema["description"] = Value::String(format!(
            "Another spelling of `{field}`, for older clients; send one or the other."
        ));
        object["properties"][*alias] = alias_schema;
        if let Some(required) = object.get_mut("required").and_then(Value::as_array_mut) {
            if let Some(at) = required.iter().position(|r| r == field) {
                required.remove(at);
                either.push(json!({"anyOf": [{"required": [field]}, {"required": [alias]}]}));
            }
        }
        not_both.push(json!({"required": [field, alias]}));
    }
    if object
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        object.as_object_mut().map(|o| o.remove("required"));
    }
    if !either.is_empty() {
        object["allOf"] = Value::Array(either);
    }
    // One `not` over all pairs (rather than one per pair) keeps the schema small for
    // generators that reason about complements.
    if !not_both.is_empty() {
        object["not"] = json!({"anyOf": not_both});
    }
}

const REDOC_JS: &str = include_str!("../../assets/redoc/redoc.standalone.js");

/// The sidebar's "API docs by Redocly" logo is an `<img>` loaded from Redocly's CDN;
/// ReDoc has no option to turn it off, so the served bundle points it at an empty
/// inline image (the element hides itself when the image does not render).
const REDOC_CDN_LOGO: &str = "https://cdn.redoc.ly/redoc/logo-mini.svg";

static REDOC_JS_OFFLINE: LazyLock<String> =
    LazyLock::new(|| REDOC_JS.replace(REDOC_CDN_LOGO, "data:,"));

async fn redoc_js() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        REDOC_JS_OFFLINE.as_str(),
    )
}

/// The ReDoc page. URLs are absolute (with the mount prefix) so the page works at
/// `/redoc` and `/redoc/` alike.
fn redoc_html(prefix: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Introgy API - ReDoc</title>
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<redoc spec-url="{prefix}/openapi.json"></redoc>
<script src="{prefix}/redoc-assets/redoc.standalone.js"></script>
</body>
</html>
"#
    )
}

/// The Swagger UI page, served at `/docs` itself (no redirect to `/docs/`); assets come
/// from `/docs/...` by absolute URLs.
fn swagger_html(prefix: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Introgy API - Swagger UI</title>
<link rel="stylesheet" href="{prefix}/docs/swagger-ui.css">
<link rel="stylesheet" href="{prefix}/docs/index.css">
<link rel="icon" type="image/png" href="{prefix}/docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{prefix}/docs/swagger-ui-bundle.js"></script>
<script src="{prefix}/docs/swagger-ui-standalone-preset.js"></script>
<script src="{prefix}/docs/swagger-initializer.js"></script>
</body>
</html>
"#
    )
}

fn swagger_asset(tail: &str, config: Arc<utoipa_swagger_ui::Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve(tail, config) {
        Ok(Some(file)) => (
            [
                (header::CONTENT_TYPE, file.content_type),
                (header::CACHE_CONTROL, "public, max-age=86400".to_owned()),
            ],
            file.bytes.into_owned(),
        )
            .into_response(),
        Ok(None) => crate::error::ApiError::NotFound("Route".into()).into_response(),
        Err(e) => crate::error::ApiError::Internal(anyhow::anyhow!(
            "Failed to serve Swagger UI file {tail}: {e}"
        ))
        .into_response(),
    }
}

/// Docs routes for the root (`prefix` = "") or the `/api` mount (`prefix` = "/api").
pub fn router(prefix: &str, document: axum::body::Bytes) -> Router<AppState> {
    let config = Arc::new(
        utoipa_swagger_ui::Config::new([format!("{prefix}/openapi.json")])
            // Without this Swagger UI sends the document's URL to validator.swagger.io
            // and shows the answer as a badge.
            .validator_url("none")
            .persist_authorization(true)
            .try_it_out_enabled(true),
    );
    let swagger = Html(swagger_html(prefix));
    let redoc = Html(redoc_html(prefix));
    Router::new()
        .route(
            &format!("{prefix}/openapi.json"),
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) }),
        )
        .route(
            &format!("{prefix}/docs"),
            get(move || async move { swagger }),
        )
        .route(
            &format!("{prefix}/docs/{{*file}}"),
            get(move |Path(file): Path<String>| async move { swagger_asset(&file, config) }),
        )
        .route(
            &format!("{prefix}/redoc"),
            get(move || async move { redoc }),
        )
        .route(
            &format!("{prefix}/redoc-assets/redoc.standalone.js"),
            get(redoc_js),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn the_served_redoc_bundle_loads_nothing_from_the_cdn() {
        assert!(REDOC_JS.contains(REDOC_CDN_LOGO), "the patch point moved");
        assert!(!REDOC_JS_OFFLINE.contains("cdn.redoc.ly"));
    }

    #[test]
    fn not_found_is_the_status_for_a_missing_swagger_file() {
        let config = Arc::new(utoipa_swagger_ui::Config::new(["/openapi.json"]));
        assert_eq!(
            swagger_asset("no-such-file.js", config).status(),
            StatusCode::NOT_FOUND
        );
    }
}
