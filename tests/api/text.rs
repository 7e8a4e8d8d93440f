//! Text is text (SECURITY.md 34): control characters, bidirectional overrides,
//! undeliverable addresses and absurd instants are refused with a 422 naming the field,
//! on both stores (NUL once reached MongoDB as a 500).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, unique_email, PASSWORD};
use crate::users::put_me;

/// The 422's first `loc`, asserting the status.
async fn refused_at(response: reqwest::Response) -> Value {
    let body = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    body["detail"][0]["loc"].clone()
}

#[tokio::test]
async fn control_characters_are_refused_in_every_profile_field_and_preference() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let mut nested = json!(1);
    for _ in 0..11 {
        nested = json!({ "k": nested });
    }
    let cases = [
        (
            json!({"display_name": "Ada\u{0}"}),
            json!(["body", "display_name"]),
        ),
        (json!({"bio": "quiet\u{0}"}), json!(["body", "bio"])),
        (json!({"bio": "\u{1b}[2Jcleared"}), json!(["body", "bio"])),
        (
            json!({"avatar_url": "https://example.com/a\u{0}.png"}),
            json!(["body", "avatar_url"]),
        ),
        (
            json!({"timezone": "Europe/Berlin\u{0}"}),
            json!(["body", "timezone"]),
        ),
        (
            json!({"preferences": {"the\u{0}me": "dark"}}),
            json!(["body", "preferences", "the\u{0}me"]),
        ),
        (
            json!({"preferences": {"notify": {"e\u{0}mail": true}}}),
            json!(["body", "preferences", "notify", "e\u{0}mail"]),
        ),
        (
            json!({"preferences": {"notify": {"$set": true}}}),
            json!(["body", "preferences", "notify", "$set"]),
        ),
        (
            json!({"preferences": {"theme": "dark\u{0}"}}),
            json!(["body", "preferences", "theme"]),
        ),
        (
            json!({"preferences": {"deep": nested}}),
            json!([
                "body",
                "preferences",
                "deep",
                "k",
                "k",
                "k",
                "k",
                "k",
                "k",
                "k",
                "k",
                "k"
            ]),
        ),
    ];
    for (body, loc) in cases {
        let response = put_me(&app, &user.access_token, &body).await;
        assert_eq!(refused_at(response).await, loc, "{body}");
    }
    let me = json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["preferences"], json!({}), "nothing was stored");
    // Multi-line text keeps its line breaks; a CRLF pair becomes LF.
    let body = json_of(
        put_me(
            &app,
            &user.access_token,
            &json!({"bio": "two\r\nlines\tand a tab", "preferences": {"note": "a\nb"}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["bio"], "two\nlines\tand a tab");
    assert_eq!(body["preferences"]["note"], "a\nb");
}

#[tokio::test]
async fn control_characters_are_refused_in_interactions() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let base = json!({"type": "depletion", "name": "Team meeting", "energy_impact": 10});
    let cases = [
        ("name", json!("Team\u{0}meeting")),
        ("name", json!("Team\nmeeting")),
        ("notes", json!("loud\u{0}")),
        ("notes", json!("\u{7f}")),
        ("notes", json!("a\u{2028}b")),
    ];
    for (field, value) in cases {
        let mut body = base.clone();
        body[field] = value.clone();
        let loc = refused_at(app.record(&user.access_token, &body).await).await;
        assert_eq!(loc, json!(["body", field]), "{field}: {value}");
    }
    let mut body = base.clone();
    body["notes"] = json!("first line\r\nsecond line");
    let record = json_of(
        app.record(&user.access_token, &body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(record["notes"], "first line\nsecond line");
}

#[tokio::test]
async fn display_names_refuse_bidirectional_overrides_and_invisible_characters() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for name in [
        "\u{202E}ecilA",
        "Ada\u{2066}x\u{2069}",
        "Ad\u{200B}a",
        "\u{3164}",
        "\u{200D}",
        "\u{FEFF}Ada",
    ] {
        let loc =
            refused_at(put_me(&app, &user.access_token, &json!({"display_name": name})).await)
                .await;
        assert_eq!(loc, json!(["body", "display_name"]), "{name:?}");
        let response = app
            .post_json(
                "/auth/register",
                &json!({"email": unique_email(), "password": PASSWORD, "display_name": name}),
            )
            .await;
        assert_eq!(
            refused_at(response).await,
            json!(["body", "display_name"]),
            "register with {name:?}"
        );
    }
    for name in ["محمد", "👩\u{200D}💻 Dev", "Zoë"] {
        let body = json_of(
            put_me(&app, &user.access_token, &json!({"display_name": name})).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(body["display_name"], name);
    }
}

#[tokio::test]
async fn addresses_the_mail_transport_cannot_deliver_to_are_refused() {
    let app = spawn_app().await;
    for email in [
        "\"a@b\"@example.com",
        "\"ada\"@example.com",
        "ada@exämple.com",
        "ädä@example.com",
        "ada@[192.0.2.1]",
        "a..da@example.com",
    ] {
        let response = app.register(email, PASSWORD).await;
        assert_eq!(
            refused_at(response).await,
            json!(["body", "email"]),
            "{email}"
        );
    }
    app.settle().await;
    assert!(app.mail.messages().is_empty(), "no mail was queued");
    let email = format!("o'brien+{}@xn--mnchen-3ya.de", introgy::auth::random_hex(4));
    assert_eq!(
        app.register(&email, PASSWORD).await.status(),
        StatusCode::ACCEPTED
    );
    app.wait_for_mails(&email, "verification_code", 1).await;
}

#[tokio::test]
async fn occurred_at_lies_between_2000_and_a_minute_from_now() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let at = |occurred_at: &str| json!({"type": "depletion", "name": "x", "energy_impact": 5, "occurred_at": occurred_at});
    for when in [
        "-262143-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "1999-12-31T23:59:59Z",
        "+262142-12-31T23:59:59Z",
    ] {
        let loc = refused_at(app.record(&user.access_token, &at(when)).await).await;
        assert_eq!(loc, json!(["body", "occurred_at"]), "{when}");
    }
    let record = json_of(
        app.record(&user.access_token, &at("2000-01-01T00:00:00Z"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(record["occurred_at"], "2000-01-01T00:00:00Z");
}
