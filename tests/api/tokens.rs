//! Access tokens: SECURITY.md 15–17.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, spawn_app_with, SECRET};

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn sign(header: &Header, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn hs512(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::HS512);
    header.kid = Some(kid.to_owned());
    header
}

#[tokio::test]
async fn access_tokens_are_hs512_with_kid_and_every_claim() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let header = jsonwebtoken::decode_header(&user.access_token).unwrap();
    assert_eq!(header.alg, Algorithm::HS512);
    assert_eq!(
        header.kid.as_deref(),
        Some(introgy::auth::tokens::kid_for(SECRET.as_bytes()).as_str())
    );
    let claims = claims_of(&user.access_token);
    assert_eq!(claims["sub"], user.id.as_str());
    assert_eq!(claims["type"], "access");
    assert_eq!(claims["iss"], "introgy");
    assert_eq!(claims["aud"], "introgy-api");
    for claim in ["sid", "exp", "iat"] {
        assert!(!claims[claim].is_null(), "{claim} missing");
    }
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
}

#[tokio::test]
async fn verify_token_returns_the_user_and_the_expiry() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let body = json_of(app.verify_token(&user.access_token).await, StatusCode::OK).await;
    assert_eq!(body["valid"], true);
    assert_eq!(body["user"]["id"], user.id.as_str());
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        expires_at.timestamp(),
        claims_of(&user.access_token)["exp"].as_i64().unwrap()
    );
}

#[tokio::test]
async fn forged_and_foreign_tokens_are_rejected() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let claims = claims_of(&user.access_token);
    let kid = introgy::auth::tokens::kid_for(SECRET.as_bytes());
    let now = chrono::Utc::now().timestamp();
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());

    let mut tampered = user.access_token.clone().into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.kid = Some(kid.clone());
    let mut expired = claims.clone();
    expired["exp"] = json!(now - 60);
    expired["iat"] = json!(now - 960);
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("another-service");
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("someone-else");
    let mut refresh_typed = claims.clone();
    refresh_typed["type"] = json!("refresh");

    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
                b64(&claims)
            ),
            "alg none",
        ),
        (sign(&hs256, &claims, SECRET), "HS256"),
        (String::from_utf8(tampered).unwrap(), "a changed byte"),
        (sign(&hs512(&kid), &expired, SECRET), "past exp"),
        (sign(&hs512(&kid), &wrong_aud, SECRET), "wrong aud"),
        (sign(&hs512(&kid), &wrong_iss, SECRET), "wrong iss"),
        (
            sign(&hs512("0123456789abcdef"), &claims, SECRET),
            "unknown kid",
        ),
        (
            sign(&Header::new(Algorithm::HS512), &claims, SECRET),
            "no kid",
        ),
        (
            sign(
                &hs512(&kid),
                &claims,
                "another secret of sufficient length, 64 bytes or so...........",
            ),
            "wrong key",
        ),
        (sign(&hs512(&kid), &refresh_typed, SECRET), "type refresh"),
        (user.refresh_token.clone(), "a refresh token"),
        ("garbage".to_owned(), "garbage"),
    ];
    // The control: our own signature over the same claims is accepted.
    assert_eq!(
        app.verify_token(&sign(&hs512(&kid), &claims, SECRET))
            .await
            .status(),
        StatusCode::OK
    );
    for (token, why) in cases {
        let response = app.verify_token(&token).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{why} was accepted"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "invalid_token", "{why}");
    }
    // No header, or another scheme.
    assert_eq!(
        app.get("/auth/verify-token").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let basic = app
        .client
        .get(app.url("/auth/verify-token"))
        .header("authorization", format!("Basic {}", user.access_token))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tokens_signed_with_a_previous_key_verify_during_rotation() {
    let old = "previous-signing-secret-0123456789abcdef0123456789abcdef0123456789ab";
    let app = spawn_app_with(&["--jwt-previous-secret-keys", old]).await;
    let user = app.signup().await;
    let claims = claims_of(&user.access_token);
    let old_kid = introgy::auth::tokens::kid_for(old.as_bytes());
    let old_token = sign(&hs512(&old_kid), &claims, old);
    assert_eq!(app.verify_token(&old_token).await.status(), StatusCode::OK);
    // New tokens are signed with the current key.
    let header = jsonwebtoken::decode_header(&user.access_token).unwrap();
    assert_ne!(header.kid.unwrap(), old_kid);
}

#[tokio::test]
async fn refresh_tokens_are_opaque_stored_hashed_and_only_accepted_by_refresh() {
    let app = spawn_app().await;
    let user = app.signup().await;
    assert_eq!(user.refresh_token.split('.').count(), 1, "not a JWT");
    let store = &app.state.store;
    assert!(
        store
            .refresh_token(&user.refresh_token)
            .await
            .unwrap()
            .is_none(),
        "stored in clear"
    );
    let hashed = introgy::auth::sha256_hex(&user.refresh_token);
    assert!(
        store.refresh_token(&hashed).await.unwrap().is_some(),
        "not stored as its SHA-256"
    );
    // An access token is not a refresh token.
    let response = app.refresh(&user.access_token).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // A refresh token is not an access token.
    assert_eq!(
        app.verify_token(&user.refresh_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn tokens_issued_or_valid_in_the_future_are_rejected() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let claims = claims_of(&user.access_token);
    let kid = introgy::auth::tokens::kid_for(SECRET.as_bytes());
    let iat = claims["iat"].as_i64().unwrap();
    let with = |changes: Value| {
        let mut changed = claims.clone();
        for (claim, value) in changes.as_object().unwrap() {
            changed[claim] = value.clone();
        }
        sign(&hs512(&kid), &changed, SECRET)
    };
    // Controls: a few seconds of skew and an `nbf` that has passed are fine.
    for ok in [json!({"iat": iat + 5}), json!({"nbf": iat})] {
        assert_eq!(
            app.verify_token(&with(ok.clone())).await.status(),
            StatusCode::OK,
            "{ok}"
        );
    }
    for future in [
        json!({"iat": iat + 3600}),
        json!({"iat": iat + 3600, "exp": iat + 7200}),
        json!({"nbf": iat + 3600}),
    ] {
        assert_eq!(
            app.verify_token(&with(future.clone())).await.status(),
            StatusCode::UNAUTHORIZED,
            "{future} was accepted"
        );
    }
}
