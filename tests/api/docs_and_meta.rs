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
async fn swagger_ui_and_redoc_are_served_from_the_binary_and_contact_no_other_host() {
    let app = spawn_app().await;
    for prefix in ["", "/api"] {
        // The page itself, at /docs: no redirect.
        let page = app.get(&format!("{prefix}/docs")).await;
        assert_eq!(page.status(), StatusCode::OK, "{prefix}/docs");
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
        ] {
            assert!(
                csp.contains(directive),
                "{prefix}/docs CSP lacks {directive}: {csp}"
            );
        }
        let html = page.text().await.unwrap();
        for asset in [
            "swagger-ui.css",
            "swagger-ui-bundle.js",
            "swagger-initializer.js",
        ] {
            let url = format!("{prefix}/docs/{asset}");
            assert!(
                html.contains(&format!("\"{url}\"")),
                "{prefix}/docs lacks {url}"
            );
            let response = app.get(&url).await;
            assert_eq!(response.status(), StatusCode::OK, "{url}");
        }
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{html}"
        );

        let init = app
            .get(&format!("{prefix}/docs/swagger-initializer.js"))
            .await
            .text()
            .await
            .unwrap();
        assert!(
            init.contains(&format!("\"{prefix}/openapi.json\"")),
            "{init}"
        );
        // Without this, Swagger UI sends the document's URL to validator.swagger.io.
        assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");

        let redoc = app.get(&format!("{prefix}/redoc")).await;
        assert_eq!(redoc.status(), StatusCode::OK);
        assert!(redoc.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("img-src 'self' data:"));
        let html = redoc.text().await.unwrap();
        assert!(
            html.contains(&format!("spec-url=\"{prefix}/openapi.json\"")),
            "{html}"
        );
        let js = app
            .get(&format!("{prefix}/redoc-assets/redoc.standalone.js"))
            .await;
        assert_eq!(js.status(), StatusCode::OK);
        let js = js.text().await.unwrap();
        assert!(js.len() > 100_000);
        assert!(
            !js.contains("cdn.redoc.ly"),
            "ReDoc still loads its logo from the CDN"
        );
    }
}

#[tokio::test]
async fn a_trailing_slash_is_tolerated_everywhere() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for (with_slash, without) in [
        ("/api/", "/api"),
        ("/health/", "/health"),
        ("/api/health/", "/api/health"),
        ("/docs/", "/docs"),
        ("/api/redoc/", "/api/redoc"),
        ("/users/me/", "/users/me"),
        (
            "/social-battery/me/activity/",
            "/social-battery/me/activity",
        ),
    ] {
        let a = app.get_authed(with_slash, &user.access_token).await;
        let b = app.get_authed(without, &user.access_token).await;
        assert_eq!(a.status(), StatusCode::OK, "{with_slash}");
        assert_eq!(b.status(), StatusCode::OK, "{without}");
        assert_eq!(a.text().await.unwrap().len(), b.text().await.unwrap().len());
    }
    // POST too, body and all; and several slashes count as one.
    let response = app
        .client
        .post(app.url("/auth/login//"))
        .json(&serde_json::json!({"email": user.email, "password": user.password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A path that starts with two slashes is not a way to another host.
    let response = app.get("//example.com/").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.headers().get("location").is_none());
}

#[tokio::test]
async fn the_served_document_matches_the_committed_snapshot() {
    let app = spawn_app().await;
    let served = json_of(app.get("/openapi.json").await, StatusCode::OK).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("INTROGY_UPDATE_OPENAPI").is_some() {
        let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(&path, pretty).unwrap();
        return;
    }
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("openapi.json is committed"))
            .expect("openapi.json is JSON");
    let differences = crate::helpers::json_differences(&committed, &served, "", 10);
    assert!(
        differences.is_empty(),
        "the served OpenAPI document differs from openapi.json at:\n  {}\nIf the API change \
         is intended, run `INTROGY_UPDATE_OPENAPI=1 cargo test --test api snapshot` and \
         commit openapi.json.",
        differences.join("\n  ")
    );
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

/// The operations of the document, with their method and path.
fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            all.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    all
}

#[tokio::test]
async fn every_answer_that_middleware_gives_is_declared() {
    let app = spawn_app().await;
    let doc = json_of(app.get("/openapi.json").await, StatusCode::OK).await;
    let rate_limited = [
        "post /auth/register",
        "post /auth/send-verification-code",
        "post /auth/send-otp",
        "post /auth/verify-otp",
        "post /auth/login",
        "post /auth/reset-password",
        "post /auth/refresh-token",
        "get /users/lookup",
        "delete /users/me",
        "post /auth/change-password",
        "get /users/me/export",
        "post /users/me/email",
        "post /users/me/email/confirm",
    ];
    let resolve = |response: &serde_json::Value| match response["$ref"].as_str() {
        Some(reference) => doc
            .pointer(reference.trim_start_matches('#'))
            .unwrap()
            .clone(),
        None => response.clone(),
    };
    for (method, path, operation) in operations(&doc) {
        let responses = &operation["responses"];
        let declared = |status: &str| responses.get(status).map(resolve);
        assert!(declared("503").is_some(), "{method} {path}: 503");
        if operation.get("requestBody").is_some() {
            for status in ["413", "415", "422"] {
                assert!(declared(status).is_some(), "{method} {path}: {status}");
            }
        }
        if operation.get("security").is_some() {
            assert!(declared("401").is_some(), "{method} {path}: 401");
        }
        match declared("429") {
            Some(too_many) => {
                assert!(
                    rate_limited.contains(&format!("{method} {path}").as_str()),
                    "{method} {path}: 429"
                );
                assert_eq!(
                    too_many["headers"]["Retry-After"]["schema"]["type"], "integer",
                    "{method} {path}: Retry-After"
                );
            }
            None => assert!(
                !rate_limited.contains(&format!("{method} {path}").as_str()),
                "{method} {path}: no 429"
            ),
        }
    }
    let lookup = &doc["paths"]["/users/lookup"]["get"]["parameters"][0];
    assert_eq!(lookup["name"], "email");
    assert_eq!(lookup["in"], "query");
    assert_eq!(lookup["required"], true);
}

#[tokio::test]
async fn every_field_the_server_accepts_is_declared_and_no_other() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let doc = json_of(app.get("/openapi.json").await, StatusCode::OK).await;
    let probed = [
        ("POST", "/auth/register"),
        ("POST", "/auth/send-verification-code"),
        ("POST", "/auth/send-otp"),
        ("POST", "/auth/verify-otp"),
        ("POST", "/auth/login"),
        ("POST", "/auth/reset-password"),
        ("POST", "/auth/refresh-token"),
        ("POST", "/auth/logout"),
        ("PUT", "/users/me"),
        ("DELETE", "/users/me"),
        ("POST", "/auth/change-password"),
        ("POST", "/users/me/email"),
        ("POST", "/users/me/email/confirm"),
        ("POST", "/social-battery/{user_id}/record"),
    ];
    for (method, path) in probed {
        // What serde accepts, as the 422 for an unknown field lists it.
        let url = app.url(&path.replace("{user_id}", "me"));
        let response = app
            .client
            .request(method.parse().unwrap(), url)
            .bearer_auth(&user.access_token)
            .json(&serde_json::json!({"zz_probe": 1}))
            .send()
            .await
            .unwrap();
        let body = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        let entry = &body["detail"][0];
        assert_eq!(entry["type"], "extra_forbidden", "{method} {path}: {body}");
        let msg = entry["msg"].as_str().unwrap();
        let mut accepted: Vec<&str> = msg
            .split_once("expected one of: ")
            .unwrap_or_else(|| panic!("{method} {path}: {msg}"))
            .1
            .split(", ")
            .collect();
        accepted.sort_unstable();

        // What the document declares for the JSON body.
        let operation = &doc["paths"][path][method.to_lowercase()];
        let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
        let text = schema.to_string();
        let name = text
            .split("#/components/schemas/")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("{method} {path}: no schema in {schema}"));
        let component = &doc["components"]["schemas"][name];
        let variants = match component.get("oneOf") {
            Some(variants) => variants.as_array().unwrap().clone(),
            None => vec![component.clone()],
        };
        let mut declared: Vec<String> = variants
            .iter()
            .flat_map(|v| v["properties"].as_object().unwrap().keys().cloned())
            .collect();
        declared.sort_unstable();
        declared.dedup();
        assert_eq!(accepted, declared, "{method} {path} ({name})");
    }
}
