//! The user resource as clients see it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::User;

/// A user's own profile (`GET /users/me`, and the `user` of every token response).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserProfile {
    pub id: String,
    pub email: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub bio: Option<String>,
    pub timezone: Option<String>,
    /// 1–10.
    pub introvert_level: Option<i32>,
    pub is_verified: bool,
    pub onboarding_completed: bool,
    #[serde(serialize_with = "crate::domain::timestamp::serialize_opt")]
    pub onboarding_completed_at: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub preferences: serde_json::Map<String, serde_json::Value>,
    /// Current social battery level, 0–100.
    pub social_battery_level: i32,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl From<User> for UserProfile {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            email: user.email,
            display_name: user.display_name,
            avatar_url: user.avatar_url,
            bio: user.bio,
            timezone: user.timezone,
            introvert_level: user.introvert_level,
            is_verified: user.is_verified,
            onboarding_completed: user.onboarding_completed,
            onboarding_completed_at: user.onboarding_completed_at,
            preferences: user.preferences,
            social_battery_level: user.battery_level,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Deserializer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema;
use crate::auth::confirm::confirm_password;
use crate::auth::AuthUser;
use crate::domain::preferences::check_preferences;
use crate::domain::text::{parse_text, Lines};
use crate::domain::{DisplayName, Email};
use crate::error::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors, ValidationErrorBody};
use crate::extract::{parse_json, ApiJson, ApiQuery};
use crate::limits::ClientIp;
use crate::startup::AppState;
use crate::store::ProfilePatch;

/// Largest `preferences` object after merging (serialised JSON).
pub const MAX_PREFERENCES_BYTES: usize = 16 * 1024;
pub const MAX_AVATAR_URL_CHARS: usize = 2048;
pub const MAX_BIO_CHARS: usize = 500;
pub const MAX_TIMEZONE_CHARS: usize = 64;
pub use crate::domain::preferences::MAX_PREFERENCE_KEY_CHARS;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_me, update_me))
        .merge(super::docs::rate_limited(
            OpenApiRouter::new().routes(routes!(delete_me)),
            "Too many password checks: this account's failed-password budget (shared with \
             login) or this client's auth budget is spent",
        ))
        .merge(super::docs::rate_limited(
            OpenApiRouter::new().routes(routes!(lookup)),
            "More than 30 lookups in a minute by this caller",
        ))
}

/// `null` → `Some(None)` (clear), absent → `None` (leave alone).
fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Other spellings serde accepts, declared in the document (see `docs::finish`).
pub const ALIASES: super::docs::Aliases = &[(
    "UpdateProfileRequest",
    &[
        ("displayName", "display_name"),
        ("avatarUrl", "avatar_url"),
        ("introvertLevel", "introvert_level"),
        ("onboardingCompleted", "onboarding_completed"),
    ],
)];

/// A partial profile update: only the fields present change; `null` clears a field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    #[serde(default, alias = "displayName", deserialize_with = "nullable")]
    #[schema(schema_with = schema::display_name)]
    pub display_name: Option<Option<String>>,
    #[serde(default, alias = "avatarUrl", deserialize_with = "nullable")]
    #[schema(schema_with = avatar_url_schema)]
    pub avatar_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = bio_schema)]
    pub bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = timezone_schema)]
    pub timezone: Option<Option<String>>,
    #[serde(
        default,
        alias = "introvertLevel",
        deserialize_with = "crate::extract::integer::nullable"
    )]
    #[schema(schema_with = schema::introvert_level)]
    pub introvert_level: Option<Option<i64>>,
    /// `true` sets `onboarding_completed_at` (once); `false` clears it.
    #[serde(default, alias = "onboardingCompleted")]
    pub onboarding_completed: Option<bool>,
    #[serde(default)]
    #[schema(schema_with = preferences_schema)]
    pub preferences: Option<serde_json::Map<String, serde_json::Value>>,
}

fn avatar_url_schema() -> utoipa::openapi::schema::Object {
    schema::avatar_url(MAX_AVATAR_URL_CHARS)
}

fn bio_schema() -> utoipa::openapi::schema::Object {
    schema::bio(MAX_BIO_CHARS)
}

fn timezone_schema() -> utoipa::openapi::schema::Object {
    schema::timezone(MAX_TIMEZONE_CHARS)
}

fn preferences_schema() -> utoipa::openapi::schema::Object {
    schema::preferences(MAX_PREFERENCE_KEY_CHARS, MAX_PREFERENCES_BYTES)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccountRequest {
    /// The current password, to confirm.
    pub password: String,
}

/// What `/users/lookup` reveals about another user.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicUser {
    pub id: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    /// The exact address (matched case-insensitively), at most 254 characters.
    #[param(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
}

/// The caller's profile.
#[utoipa::path(get, path = "/users/me", tag = "users",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The profile", body = UserProfile),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ))]
pub async fn get_me(auth: AuthUser) -> ApiResult<Json<UserProfile>> {
    Ok(Json(auth.user.into()))
}

fn check_text(
    errors: &mut FieldErrors,
    field: &str,
    value: Option<Option<String>>,
    max_chars: usize,
    lines: Lines,
) -> Option<Option<String>> {
    let value = value?;
    let Some(raw) = value else {
        return Some(None);
    };
    errors
        .check(parse_text(&raw, field, max_chars, lines))
        .map(|text| (!text.is_empty()).then_some(text))
}

fn valid_timezone(tz: &str) -> bool {
    !tz.is_empty()
        && tz.len() <= MAX_TIMEZONE_CHARS
        && tz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
        && !tz.starts_with('/')
        && !tz.ends_with('/')
}

/// Update the caller's profile (partial). `email` and `id` cannot be changed here (the
/// address changes through `POST /users/me/email`, with a code to the new address).
#[utoipa::path(put, path = "/users/me", tag = "users", request_body = UpdateProfileRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The updated profile", body = UserProfile),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn update_me(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<Json<UserProfile>> {
    if let Some(object) = body.as_object() {
        let immutable: Vec<FieldError> = ["email", "id", "_id"]
            .into_iter()
            .filter(|field| object.contains_key(*field))
            .map(|field| {
                let msg = if field == "email" {
                    "email cannot be changed here; use POST /users/me/email".to_owned()
                } else {
                    format!("{field} cannot be changed")
                };
                FieldError::body(field, msg, "value_error.immutable")
            })
            .collect();
        if !immutable.is_empty() {
            return Err(ApiError::Validation(immutable));
        }
    }
    let req: UpdateProfileRequest = parse_json(body.to_string().as_bytes())?;
    let mut errors = FieldErrors::default();
    let mut patch = ProfilePatch {
        display_name: match req.display_name {
            Some(Some(raw)) => errors
                .check(DisplayName::parse(&raw, "display_name"))
                .map(|n| Some(n.into_inner())),
            Some(None) => Some(None),
            None => None,
        },
        bio: check_text(&mut errors, "bio", req.bio, MAX_BIO_CHARS, Lines::Many),
        avatar_url: check_text(
            &mut errors,
            "avatar_url",
            req.avatar_url,
            MAX_AVATAR_URL_CHARS,
            Lines::One,
        ),
        timezone: check_text(
            &mut errors,
            "timezone",
            req.timezone,
            MAX_TIMEZONE_CHARS,
            Lines::One,
        ),
        onboarding_completed: req.onboarding_completed,
        ..ProfilePatch::default()
    };
    if let Some(Some(url)) = &patch.avatar_url {
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.contains(char::is_whitespace)
        {
            errors.push(FieldError::body(
                "avatar_url",
                "must be an http(s) URL",
                "value_error.url",
            ));
        }
    }
    if let Some(Some(tz)) = &patch.timezone {
        // The format (what the schema's pattern states), then the zone database: insights
        // count days in this zone.
        if !valid_timezone(tz) || !crate::battery::insights::is_iana_zone(tz) {
            errors.push(FieldError::body(
                "timezone",
                "must be an IANA time zone name such as Europe/Berlin",
                "value_error.timezone",
            ));
        }
    }
    patch.introvert_level = match req.introvert_level {
        Some(Some(level)) if (1..=10).contains(&level) => Some(Some(level as i32)),
        Some(Some(_)) => {
            errors.push(FieldError::body(
                "introvert_level",
                "must be between 1 and 10",
                "value_error.range",
            ));
            None
        }
        Some(None) => Some(None),
        None => None,
    };
    let user = &auth.user;
    if let Some(preferences) = req.preferences {
        // Keys and values at any depth; a patch with problems is merged here only to
        // report its size too, and never stored.
        check_preferences(&preferences)
            .into_iter()
            .for_each(|e| errors.push(e));
        let mut merged = user.preferences.clone();
        for (key, value) in preferences {
            if value.is_null() {
                merged.remove(&key);
                patch.preferences_unset.push(key);
            } else {
                merged.insert(key.clone(), value.clone());
                patch.preferences_set.insert(key, value);
            }
        }
        let size = serde_json::Value::Object(merged).to_string().len();
        if size > MAX_PREFERENCES_BYTES {
            errors.push(FieldError::body(
                "preferences",
                format!("preferences would be {size} bytes; the limit is {MAX_PREFERENCES_BYTES}"),
                "value_error.too_large",
            ));
        }
    }
    errors.finish()?;
    let now = state.clock.now();
    patch.onboarding_completed_at = match patch.onboarding_completed {
        Some(true) if !user.onboarding_completed => Some(Some(now)),
        Some(false) => Some(None),
        _ => None,
    };
    let updated = state
        .store
        .update_profile(&auth.user_id, &patch, now)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "Could not validate credentials"))?;
    Ok(Json(updated.into()))
}

/// Delete the caller's account and all its data (sessions, codes, battery history).
/// Needs the current password.
#[utoipa::path(delete, path = "/users/me", tag = "users", request_body = DeleteAccountRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Wrong password", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn delete_me(
    State(state): State<AppState>,
    auth: AuthUser,
    client: ClientIp,
    ApiJson(req): ApiJson<DeleteAccountRequest>,
) -> ApiResult<StatusCode> {
    let user = auth.user;
    confirm_password(&state, &user, client, &req.password).await?;
    state.store.delete_user(&user.id).await?;
    tracing::info!(user_id = %user.id, "account deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Find another (verified) user by exact email. Rate limited per caller.
#[utoipa::path(get, path = "/users/lookup", tag = "users", params(LookupQuery),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "Found", body = PublicUser),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "Missing or invalid email", body = ValidationErrorBody),
    ))]
pub async fn lookup(
    State(state): State<AppState>,
    auth: AuthUser,
    query: Result<ApiQuery<LookupQuery>, ApiError>,
) -> ApiResult<Json<PublicUser>> {
    state.limits.check_lookup(&auth.user_id).await?;
    let ApiQuery(query) = query?;
    let email = Email::parse(&query.email, "email").map_err(|mut e| {
        e.loc[0] = "query".into();
        ApiError::validation(e)
    })?;
    let user = state
        .store
        .verified_user_by_email(email.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound("User".into()))?;
    Ok(Json(PublicUser {
        id: user.id,
        display_name: user.display_name,
        avatar_url: user.avatar_url,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `update_me` accepts for one text field (`None`: a 422).
    fn handler_accepts(field: &str, raw: &str) -> bool {
        let max = match field {
            "bio" => MAX_BIO_CHARS,
            "avatar_url" => MAX_AVATAR_URL_CHARS,
            _ => MAX_TIMEZONE_CHARS,
        };
        let mut errors = FieldErrors::default();
        let checked = check_text(
            &mut errors,
            field,
            Some(Some(raw.into())),
            max,
            if field == "bio" {
                Lines::Many
            } else {
                Lines::One
            },
        );
        match (errors.finish(), checked) {
            (Ok(()), Some(Some(value))) => match field {
                "avatar_url" => {
                    (value.starts_with("https://") || value.starts_with("http://"))
                        && !value.contains(char::is_whitespace)
                }
                "timezone" => valid_timezone(&value),
                _ => true,
            },
            (Ok(()), _) => true,
            (Err(_), _) => false,
        }
    }

    /// The schemas' patterns, compiled once (the length bounds make them large).
    static PATTERNS: std::sync::LazyLock<[regex::Regex; 3]> = std::sync::LazyLock::new(|| {
        [bio_schema(), avatar_url_schema(), timezone_schema()]
            .map(|object| regex::Regex::new(&object.pattern.unwrap()).unwrap())
    });

    fn schema_accepts(field: &str, raw: &str) -> bool {
        let at = match field {
            "bio" => 0,
            "avatar_url" => 1,
            _ => 2,
        };
        PATTERNS[at].is_match(raw)
    }

    proptest! {
        #[test]
        fn profile_text_patterns_say_what_update_me_accepts(
            field in prop::sample::select(vec!["bio", "avatar_url", "timezone"]),
            prefix in prop::sample::select(vec!["", " ", "http://", "https://", "\u{a0}https://", "HTTP://"]),
            body in "[a-zA-Z0-9/_+.:é日 \t\n\r\u{0}\u{1f}\u{7f}\u{85}\u{9f}\u{a0}\u{2028}\u{3000}\u{feff}-]{0,12}",
        ) {
            let raw = format!("{prefix}{body}");
            prop_assert_eq!(schema_accepts(field, &raw), handler_accepts(field, &raw), "{} {:?}", field, raw);
        }
    }

    #[test]
    fn profile_text_patterns_hold_at_the_length_limits() {
        let cases = [
            (
                "avatar_url",
                format!("https://{}", "a".repeat(MAX_AVATAR_URL_CHARS - 8)),
            ),
            (
                "avatar_url",
                format!("https://{}", "a".repeat(MAX_AVATAR_URL_CHARS - 7)),
            ),
            (
                "avatar_url",
                format!(" http://{} ", "a".repeat(MAX_AVATAR_URL_CHARS - 7)),
            ),
            (
                "avatar_url",
                format!("http://{}", "a".repeat(MAX_AVATAR_URL_CHARS - 6)),
            ),
            ("bio", "b".repeat(MAX_BIO_CHARS)),
            ("bio", format!("\n{}\n", "b".repeat(MAX_BIO_CHARS))),
            ("bio", "b".repeat(MAX_BIO_CHARS + 1)),
            ("timezone", "A".repeat(MAX_TIMEZONE_CHARS)),
            ("timezone", "A".repeat(MAX_TIMEZONE_CHARS + 1)),
            ("timezone", "Europe/Berlin/".into()),
        ];
        for (field, raw) in cases {
            assert_eq!(
                schema_accepts(field, &raw),
                handler_accepts(field, &raw),
                "{field} of {} characters",
                raw.chars().count()
            );
        }
    }
}
