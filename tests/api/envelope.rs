//! Every answer in the same envelope (SECURITY.md 31, issue 9 item 8): whatever produced
//! it (a handler, the fallback, the method router, CORS, an extractor, the head limits),
//! it carries the security headers and, when it is an error, the JSON error body. Where
//! hyper itself answers (a request it cannot parse), it answers as docs/decisions.md
//! says. A client's `X-Request-Id` is bounded (issue 8 item 9).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

/// Asserts the headers every response carries.
fn assert_security_headers(what: &str, headers: &reqwest::header::HeaderMap) {
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
    assert_eq!(headers["x-frame-options"], "DENY", "{what}");
    assert!(
        headers.contains_key("content-security-policy"),
        "{what}: no CSP"
    );
    assert!(
        headers.contains_key("x-request-id"),
        "{what}: no request id"
    );
}

/// Asserts an error answer: status, security headers, `no-store`, and `{detail, code}`.
async fn assert_error(what: &str, response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status, "{what}");
    assert_security_headers(what, response.headers());
    assert_eq!(response.headers()["cache-control"], "no-store", "{what}");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{what}: not JSON"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{what}: {body}");
    assert!(body.get("detail").is_some(), "{what}: {body}");
}

#[tokio::test]
async fn every_kind_of_error_answer_has_the_security_headers_and_the_json_envelope() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let token = &user.access_token;
    let client = &app.client;

    let fallback = app.get("/no/such/route").await;
    assert_error("fallback", fallback, StatusCode::NOT_FOUND, "not_found").await;

    let method = client.delete(app.url("/health")).send().await.unwrap();
    assert_eq!(
        method.headers()["allow"],
        "GET,HEAD",
        "405 names what is allowed"
    );
    assert_error(
        "method",
        method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;

    let unauthenticated = app.get("/users/me").await;
    assert_error(
        "no token",
        unauthenticated,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    let media = client
        .post(app.url("/auth/register"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(
        "media type",
        media,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    let large = client
        .post(app.url("/auth/register"))
        .header("content-type", "application/json")
        .body(vec![b' '; 65 * 1024])
        .send()
        .await
        .unwrap();
    assert_error(
        "body limit",
        large,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    let invalid = app.post_json("/auth/register", &Value::Array(vec![])).await;
    assert_error(
        "validation",
        invalid,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    )
    .await;

    // A path segment that is not UTF-8 once percent-decoded names nothing: 404 JSON
    // (it was a text/plain 400 from the path extractor).
    for path in [
        "/social-battery/%FF",
        "/social-battery/%C3%28/activity",
        "/api/social-battery/%FF%FE",
    ] {
        let response = app.get_authed(path, token).await;
        assert_error(path, response, StatusCode::NOT_FOUND, "not_found").await;
    }
    let response = client
        .post(app.url("/social-battery/%FF/record"))
        .bearer_auth(token)
        .json(&serde_json::json!({"type": "set", "level": 5}))
        .send()
        .await
        .unwrap();
    assert_error("record %FF", response, StatusCode::NOT_FOUND, "not_found").await;

    // Request heads within hyper's limits but beyond ours: JSON 414 and 431.
    let long_uri = format!("/health?pad={}", "a".repeat(9 * 1024));
    assert_error(
        "long URI",
        app.get(&long_uri).await,
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
    )
    .await;
    let big_header = client
        .get(app.url("/health"))
        .header("x-padding", "a".repeat(17 * 1024))
        .send()
        .await
        .unwrap();
    assert_error(
        "large header",
        big_header,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    .await;
    let mut many = client.get(app.url("/health"));
    for n in 0..150 {
        many = many.header(format!("x-h{n}"), "1");
    }
    assert_error(
        "many headers",
        many.send().await.unwrap(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    .await;
}

#[tokio::test]
async fn cors_preflights_carry_the_security_headers_too() {
    let app = spawn_app_with(&["--cors-origins", "https://app.example.com"]).await;
    for origin in ["https://app.example.com", "https://evil.example.com"] {
        for path in ["/auth/login", "/no/such/route", "/users/me"] {
            let response = app
                .client
                .request(reqwest::Method::OPTIONS, app.url(path))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .send()
                .await
                .unwrap();
            assert_security_headers(&format!("preflight {origin} {path}"), response.headers());
        }
    }
}

#[tokio::test]
async fn success_answers_and_docs_pages_carry_the_security_headers() {
    let app = spawn_app().await;
    for path in ["/", "/health", "/openapi.json", "/api/health"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_security_headers(path, response.headers());
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
    }
    for path in ["/docs", "/redoc", "/docs/swagger-ui.css"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_security_headers(path, response.headers());
    }
}

/// Sends raw bytes and returns the one answer that comes back (head and, by its
/// `content-length`, body), waiting at most 5 s.
async fn raw_exchange(app: &TestApp, request: &[u8]) -> String {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let complete = |answer: &[u8]| {
        let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        body.len() >= length
    };
    let read = async {
        let mut buffer = [0u8; 4096];
        while !complete(&answer) {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn requests_hyper_cannot_take_get_its_bodiless_answers_as_documented() {
    let app = spawn_app().await;
    // Not HTTP: hyper answers 400 with an empty body and closes (docs/decisions.md).
    let answer = raw_exchange(&app, b"HELLO THERE\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("content-length: 0"),
        "{answer}"
    );

    // A head beyond hyper's 64 KiB buffer: 431 from hyper, empty body.
    let huge = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let answer = raw_exchange(&app, huge.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );

    // More headers than hyper parses (200): 431 from hyper.
    let mut many = String::from("GET /health HTTP/1.1\r\nhost: x\r\n");
    for n in 0..250 {
        many.push_str(&format!("x-h{n}: 1\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_exchange(&app, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // Everything below those limits is ours: JSON, security headers.
    let answer = raw_exchange(
        &app,
        b"GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(
        answer.contains("x-content-type-options: nosniff"),
        "{answer}"
    );
    assert!(answer.ends_with(r#""code":"not_found"}"#), "{answer}");
}

#[tokio::test]
async fn a_client_request_id_is_kept_only_when_short_and_plain() {
    let app = spawn_app().await;
    let id_for = |value: Vec<u8>| {
        let request = app
            .client
            .get(app.url("/health"))
            .header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
            )
            .send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    for kept in ["abc-123", "req_1.2:3", &"a".repeat(64)] {
        assert_eq!(id_for(kept.into()).await, kept);
    }
    for replaced in [
        "a".repeat(65).into_bytes(),
        "a".repeat(8 * 1024).into_bytes(),
        b"has space".to_vec(),
        b"quote\"d".to_vec(),
        "caf\u{e9}".as_bytes().to_vec(),
        b"tab\there".to_vec(),
    ] {
        let id = id_for(replaced.clone()).await;
        assert_eq!(id.len(), 16, "replaced {replaced:?} with {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    // Two ids: neither is believed.
    let response = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "one")
        .header("x-request-id", "two")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 16, "{id}");
}
