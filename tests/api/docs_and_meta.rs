use reqwest::StatusCode;

use crate::helpers::{json_of, spawn_app, spawn_app_in};

#[tokio::test]
async fn root_reports_name_version_and_environment_at_both_mounts() {
    let app = spawn_app().await;
    for path in ["/", "/api"] {
        let body = json_of(app.get(path).await, StatusCode::OK).await;
        assert_eq!(body["name"], "Introgy API", "{path}");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"), "{path}");
        assert_eq!(body["environment"], "development", "{path}");
        assert_eq!(body["status"], "running", "{path}");
    }
}

#[tokio::test]
async fn health_reports_a_connected_store() {
    let app = spawn_app().await;
    for path in ["/health", "/api/health"] {
        let body = json_of(app.get(path).await, StatusCode::OK).await;
        assert_eq!(body["status"], "ok");
        assert_eq!(body["database"], "connected");
        assert_eq!(body["store"], crate::helpers::expected_store());
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }
}

#[tokio::test]
async fn openapi_document_is_3_1_and_lists_every_route_and_both_auth_schemes() {
    let app = spawn_app().await;
    for path in ["/openapi.json", "/api/openapi.json"] {
        let doc = json_of(app.get(path).await, StatusCode::OK).await;
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{path}"
        );
        for route in [
            "/auth/register",
            "/auth/send-verification-code",
            "/auth/verify-otp",
            "/auth/login",
            "/auth/reset-password",
            "/auth/refresh-token",
            "/auth/verify-token",
            "/auth/logout",
            "/health",
        ] {
            assert!(
                doc["paths"][route].is_object(),
                "{route} missing from {path}"
            );
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(
            schemes["oauth2"]["flows"]["password"]["tokenUrl"],
            "/auth/login"
        );
    }
}

#[tokio::test]
async fn swagger_ui_and_redoc_are_served_without_internet() {
    let app = spawn_app().await;
    for prefix in ["", "/api"] {
        let page = app.get(&format!("{prefix}/docs/")).await;
        assert_eq!(page.status(), StatusCode::OK, "{prefix}/docs/");
        let html = page.text().await.unwrap();
        assert!(html.contains("swagger"), "{prefix}/docs/ is not Swagger UI");
        assert!(!html.contains("cdn."), "{prefix}/docs/ loads from a CDN");

        let init = app
            .get(&format!("{prefix}/docs/swagger-initializer.js"))
            .await;
        assert_eq!(init.status(), StatusCode::OK);
        assert!(init
            .text()
            .await
            .unwrap()
            .contains(&format!("{prefix}/openapi.json")));

        let redoc = app.get(&format!("{prefix}/redoc")).await;
        assert_eq!(redoc.status(), StatusCode::OK);
        let html = redoc.text().await.unwrap();
        assert!(html.contains("redoc-assets/redoc.standalone.js"));
        assert!(!html.contains("cdn."));
        let js = app
            .get(&format!("{prefix}/redoc-assets/redoc.standalone.js"))
            .await;
        assert_eq!(js.status(), StatusCode::OK);
        assert!(js.bytes().await.unwrap().len() > 100_000);
    }
    // /docs without the slash leads to the UI.
    let response = app.get("/docs").await;
    assert!(response.status().is_redirection() || response.status() == StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let body = json_of(app.get("/no/such/route").await, StatusCode::NOT_FOUND).await;
    assert_eq!(body["code"], "not_found");
    let response = app.client.delete(app.url("/health")).send().await.unwrap();
    let body = json_of(response, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn every_response_carries_security_headers_and_auth_responses_are_not_stored() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let responses = [
        app.get("/health").await,
        app.get("/nope").await,
        app.login(&user.email, &user.password).await,
        app.login(&user.email, "wrong password!").await,
        app.verify_token(&user.access_token).await,
    ];
    for response in responses {
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["cache-control"], "no-store");
        assert!(headers.contains_key("x-request-id"));
    }
}

#[tokio::test]
async fn cors_allows_the_configured_origin_only() {
    let app = crate::helpers::spawn_app_with(&["--cors-origins", "https://app.example.com"]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn the_development_secret_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = spawn_app_in(dir, &[], false).await;
    let user = first.signup().await;
    assert!(first.dir.path().join("introgy-jwt-secret").exists());
    let dir = first.dir;
    // Same data directory, new process state: the token still verifies.
    let second = spawn_app_in(dir, &[], false).await;
    let response = second.verify_token(&user.access_token).await;
    assert_eq!(response.status(), StatusCode::OK);
}
