//! `/social-battery/{user_id}`: the current level, recording interactions, history and
//! its corrections (`PATCH`/`DELETE .../activity/{id}`).
//!
//! A user sees only their own battery: `me` and the caller's own id work, any other id
//! answers 404 whether or not it exists (SECURITY.md 22).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::PartialSchema;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema;
use crate::auth::AuthUser;
use crate::battery::{
    BatteryLevel, BatteryStatus, Channel, EnergyImpact, Interaction, InteractionKind, SleepQuality,
};
use crate::domain::text::{parse_text, Lines};
use crate::domain::timestamp::check_occurred_at;
use crate::error::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors, ValidationErrorBody};
use crate::extract::{parse_json, parse_object, ApiJson, ApiPath, ApiQuery, JsonObject};
use crate::startup::AppState;
use crate::store::{
    BatteryEvent, CorrectedFields, Correction, CorrectionOutcome, HistoryCursor, HistoryFilter,
    IdempotencyKey, NewBatteryEvent, RecordOutcome,
};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_NOTES_CHARS: usize = 2000;
pub const MAX_DURATION_MINUTES: i64 = 7 * 24 * 60;
pub const MAX_PEOPLE_COUNT: i64 = 10_000;
pub const DEFAULT_DURATION_MINUTES: i32 = 60;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;
pub use crate::domain::timestamp::FUTURE_TOLERANCE_SECONDS;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_battery))
        .routes(routes!(record))
        .routes(routes!(activity))
        .routes(routes!(correct, delete_record))
}

/// Other spellings serde accepts, declared in the document (see `docs::finish`).
pub const ALIASES: super::docs::Aliases = &[(
    "RecordRequest",
    &[
        ("energyImpact", "energy_impact"),
        ("sleepQuality", "sleep_quality"),
        ("durationMinutes", "duration_minutes"),
        ("occurredAt", "occurred_at"),
        ("peopleCount", "people_count"),
        ("interactionType", "interaction_type"),
    ],
)];

/// An interaction to record. Which fields apply depends on `type`:
/// `depletion`/`recharge` need `name` and `energy_impact` (1–100); `sleep` needs
/// `sleep_quality`; `set` needs `level` (0–100). Its schema is written out below
/// (one variant per type), since serde reads it as one flat object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    #[serde(rename = "type")]
    pub kind: InteractionKind,
    /// 1–200 characters; required for `depletion` and `recharge`.
    pub name: Option<String>,
    #[serde(
        default,
        alias = "energyImpact",
        deserialize_with = "crate::extract::integer::option"
    )]
    pub energy_impact: Option<i64>,
    #[serde(alias = "sleepQuality")]
    pub sleep_quality: Option<SleepQuality>,
    /// The new level, for `set`.
    #[serde(default, deserialize_with = "crate::extract::integer::option")]
    pub level: Option<i64>,
    /// ≥ 1 (at most a week), default 60.
    #[serde(
        default,
        alias = "durationMinutes",
        deserialize_with = "crate::extract::integer::option"
    )]
    pub duration_minutes: Option<i64>,
    /// RFC 3339; default now; not in the future.
    #[serde(alias = "occurredAt")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// At most 2000 characters.
    pub notes: Option<String>,
    /// 0–10000.
    #[serde(
        default,
        alias = "peopleCount",
        deserialize_with = "crate::extract::integer::option"
    )]
    pub people_count: Option<i64>,
    #[serde(alias = "interactionType")]
    pub interaction_type: Option<Channel>,
}

impl utoipa::PartialSchema for RecordRequest {
    fn schema() -> RefOr<Schema> {
        use schema::{enum_names, null_only, one_of, optional_date_time, optional_integer};
        let kinds = enum_names::<InteractionKind>();
        // Enums by reference, so generated clients get one named type for each.
        let channel: RefOr<Schema> = OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(Ref::from_schema_name(Channel::name()))
            .description(Some("The channel of a social interaction."))
            .into();
        let variant = |types: &[&str], description: &str| {
            let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
            ObjectBuilder::new()
                .description(Some(description))
                .property("type", one_of(&types, false, "The kind of interaction."))
                .required("type")
                .property(
                    "duration_minutes",
                    optional_integer(
                        1,
                        MAX_DURATION_MINUTES,
                        &format!("Minutes, default {DEFAULT_DURATION_MINUTES}."),
                    ),
                )
                .property(
                    "occurred_at",
                    optional_date_time(&format!(
                        "When it happened (RFC 3339); default now; not more than \
                         {FUTURE_TOLERANCE_SECONDS} s in the future."
                    )),
                )
                .property(
                    "notes",
                    schema::text(
                        MAX_NOTES_CHARS,
                        Lines::Many,
                        true,
                        &format!("1–{MAX_NOTES_CHARS} characters after trimming."),
                    ),
                )
                .property(
                    "people_count",
                    optional_integer(0, MAX_PEOPLE_COUNT, "How many people took part."),
                )
                .property("interaction_type", channel.clone())
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        let name = |nullable| {
            schema::text(
                MAX_NAME_CHARS,
                Lines::One,
                nullable,
                &format!("1–{MAX_NAME_CHARS} characters after trimming."),
            )
        };
        let impact = variant(
            &["depletion", "recharge"],
            "A social interaction (drains) or alone time (recharges).",
        )
        .property("name", name(false))
        .required("name")
        .property(
            "energy_impact",
            schema::required_integer(1, 100, "How much energy it took or gave."),
        )
        .required("energy_impact")
        .property("sleep_quality", null_only("Only for `sleep`."))
        .property("level", null_only("Only for `set`."));
        let sleep = variant(&["sleep"], "A night's sleep.")
            .property("name", name(true))
            .property(
                "sleep_quality",
                RefOr::<Schema>::Ref(Ref::from_schema_name(SleepQuality::name())),
            )
            .required("sleep_quality")
            .property(
                "energy_impact",
                null_only("Only for `depletion` and `recharge`."),
            )
            .property("level", null_only("Only for `set`."));
        let set = variant(&["set"], "The user moves the slider.")
            .property("name", name(true))
            .property("level", schema::required_integer(0, 100, "The new level."))
            .required("level")
            .property(
                "energy_impact",
                null_only("Only for `depletion` and `recharge`."),
            )
            .property("sleep_quality", null_only("Only for `sleep`."));
        debug_assert_eq!(kinds.len(), 4, "a variant per interaction type");
        RefOr::T(Schema::OneOf(
            OneOfBuilder::new()
                .item(impact.build())
                .item(sleep.build())
                .item(set.build())
                .description(Some(
                    "An interaction to record; which fields apply depends on `type`.",
                ))
                .build(),
        ))
    }
}

impl ToSchema for RecordRequest {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (name, schema) in [
            (Channel::name(), Channel::schema()),
            (SleepQuality::name(), SleepQuality::schema()),
        ] {
            schemas.push((name.into_owned(), schema));
        }
    }
}

/// The battery right now.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatteryResponse {
    pub user_id: String,
    /// 0–100.
    pub level: i32,
    pub status: BatteryStatus,
    /// `level < 20`.
    pub is_low: bool,
    /// When the level last changed (sign-up time if never).
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

/// The level after an interaction.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatterySnapshot {
    pub level: i32,
    pub status: BatteryStatus,
    pub is_low: bool,
}

impl From<BatteryLevel> for BatterySnapshot {
    fn from(level: BatteryLevel) -> Self {
        Self {
            level: level.value(),
            status: level.status(),
            is_low: level.is_low(),
        }
    }
}

/// A recorded interaction.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityRecord {
    pub id: String,
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: InteractionKind,
    pub name: Option<String>,
    /// The magnitude asked for (`depletion`, `recharge`).
    pub energy_impact: Option<i32>,
    pub sleep_quality: Option<SleepQuality>,
    /// The level asked for (`set`).
    pub level: Option<i32>,
    /// The signed change applied, after clamping to 0–100.
    pub energy_delta: i32,
    pub level_before: i32,
    pub level_after: i32,
    pub duration_minutes: i32,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub occurred_at: DateTime<Utc>,
    /// When the server accepted it (acceptance order and `recorded_at` agree;
    /// `level_before`/`level_after` are the levels at that moment).
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub recorded_at: DateTime<Utc>,
    pub notes: Option<String>,
    pub people_count: Option<i32>,
    pub interaction_type: Option<String>,
}

/// The answer to `record`: the record and the battery after it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordResponse {
    #[serde(flatten)]
    pub record: ActivityRecord,
    pub battery: BatterySnapshot,
}

impl From<BatteryEvent> for ActivityRecord {
    fn from(event: BatteryEvent) -> Self {
        let (energy_impact, sleep_quality, level) = match event.interaction {
            Interaction::Depletion(i) | Interaction::Recharge(i) => (Some(i.value()), None, None),
            Interaction::Sleep(q) => (None, Some(q), None),
            Interaction::Set(l) => (None, None, Some(l.value())),
        };
        Self {
            id: event.id,
            user_id: event.user_id,
            kind: event.interaction.kind(),
            name: event.name,
            energy_impact,
            sleep_quality,
            level,
            energy_delta: event.energy_delta,
            level_before: event.level_before.value(),
            level_after: event.level_after.value(),
            duration_minutes: event.duration_minutes,
            occurred_at: event.occurred_at,
            recorded_at: event.recorded_at,
            notes: event.notes,
            people_count: event.people_count,
            interaction_type: event.interaction_type.map(|c| c.as_str().to_owned()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryResponse {
    pub count: i64,
    pub recharge_count: i64,
    pub depletion_count: i64,
    pub total_recharged: i64,
    pub total_depleted: i64,
    /// Mean level after each matching interaction, one decimal; `null` when none match.
    pub average_level: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityPage {
    /// Newest first by `occurred_at`; interactions that occurred at the same instant
    /// newest accepted first.
    pub items: Vec<ActivityRecord>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// Totals over everything the filter matches (not only this page).
    pub summary: SummaryResponse,
}

/// Query of `GET .../activity` (parsed by hand in the handler, to report every bad
/// parameter at once; this type is its documentation).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    #[param(schema_with = limit_schema)]
    pub limit: Option<u32>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Only interactions that occurred at or after this instant (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    pub from: Option<String>,
    /// Only interactions that occurred at or before this instant (RFC 3339); not
    /// before `from`.
    #[param(value_type = Option<DateTime<Utc>>)]
    pub to: Option<String>,
    /// Only interactions of this type.
    #[serde(rename = "type")]
    #[param(value_type = Option<InteractionKind>)]
    pub kind: Option<String>,
}

fn limit_schema() -> utoipa::openapi::schema::Object {
    schema::integer_param(
        1,
        MAX_PAGE_SIZE.into(),
        DEFAULT_PAGE_SIZE.into(),
        "Items per page.",
    )
}

/// `me` or the caller's own id; anything else is somebody else's and answers 404.
pub(super) fn own_battery(auth: &AuthUser, user_id: &str) -> ApiResult<()> {
    if user_id == "me" || user_id == auth.user_id {
        Ok(())
    } else {
        Err(ApiError::NotFound("Social battery".into()))
    }
}

/// The current battery: level, status, `is_low`. O(1): never replays history.
#[utoipa::path(get, path = "/social-battery/{user_id}", tag = "social-battery",
    params(("user_id" = String, Path, description = "`me` or your own user id")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The battery", body = BatteryResponse),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "Not your battery", body = ErrorBody),
    ))]
pub async fn get_battery(
    auth: AuthUser,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<Json<BatteryResponse>> {
    own_battery(&auth, &user_id)?;
    let user = auth.user;
    let level = BatteryLevel::clamped(user.battery_level.into());
    Ok(Json(BatteryResponse {
        user_id: user.id,
        level: level.value(),
        status: level.status(),
        is_low: level.is_low(),
        updated_at: user.battery_updated_at.unwrap_or(user.created_at),
    }))
}

fn check_chars(
    errors: &mut FieldErrors,
    field: &str,
    value: Option<String>,
    max: usize,
    lines: Lines,
) -> Option<String> {
    let text = errors.check(parse_text(&value?, field, max, lines))?;
    if text.is_empty() {
        errors.push(FieldError::body(
            field,
            format!("must be 1–{max} characters"),
            "value_error.length",
        ));
        return None;
    }
    Some(text)
}

fn absent_for(errors: &mut FieldErrors, kind: InteractionKind, field: &str, present: bool) {
    if present {
        errors.push(FieldError::body(
            field,
            format!("not allowed for type {}", kind.as_str()),
            "value_error.not_allowed",
        ));
    }
}

/// Validates a record request into a new event; `now` is the clock's reading at
/// `received`.
fn parse_record(
    req: RecordRequest,
    now: DateTime<Utc>,
    received: std::time::Instant,
) -> ApiResult<NewBatteryEvent> {
    let mut errors = FieldErrors::default();
    let kind = req.kind;
    let impact = match (kind, req.energy_impact) {
        (InteractionKind::Depletion | InteractionKind::Recharge, Some(v)) => {
            let parsed = EnergyImpact::new(v);
            if parsed.is_none() {
                errors.push(FieldError::body(
                    "energy_impact",
                    "must be between 1 and 100",
                    "value_error.range",
                ));
            }
            parsed
        }
        (InteractionKind::Depletion | InteractionKind::Recharge, None) => {
            errors.push(FieldError::body(
                "energy_impact",
                "required for depletion and recharge",
                "missing",
            ));
            None
        }
        (_, present) => {
            absent_for(&mut errors, kind, "energy_impact", present.is_some());
            None
        }
    };
    let quality = match (kind, req.sleep_quality) {
        (InteractionKind::Sleep, None) => {
            errors.push(FieldError::body(
                "sleep_quality",
                "required for sleep",
                "missing",
            ));
            None
        }
        (InteractionKind::Sleep, quality) => quality,
        (_, present) => {
            absent_for(&mut errors, kind, "sleep_quality", present.is_some());
            None
        }
    };
    let target = match (kind, req.level) {
        (InteractionKind::Set, Some(v)) => match BatteryLevel::try_from(v) {
            Ok(level) => Some(level),
            Err(e) => {
                errors.push(FieldError::body(
                    "level",
                    e.to_string(),
                    "value_error.range",
                ));
                None
            }
        },
        (InteractionKind::Set, None) => {
            errors.push(FieldError::body("level", "required for set", "missing"));
            None
        }
        (_, present) => {
            absent_for(&mut errors, kind, "level", present.is_some());
            None
        }
    };
    let name_required = matches!(kind, InteractionKind::Depletion | InteractionKind::Recharge);
    if name_required && req.name.is_none() {
        errors.push(FieldError::body(
            "name",
            "required for depletion and recharge",
            "missing",
        ));
    }
    let name = check_chars(&mut errors, "name", req.name, MAX_NAME_CHARS, Lines::One);
    let notes = check_chars(
        &mut errors,
        "notes",
        req.notes,
        MAX_NOTES_CHARS,
        Lines::Many,
    );
    let duration_minutes = match req.duration_minutes {
        None => DEFAULT_DURATION_MINUTES,
        Some(v) if (1..=MAX_DURATION_MINUTES).contains(&v) => v as i32,
        Some(_) => {
            errors.push(FieldError::body(
                "duration_minutes",
                format!("must be between 1 and {MAX_DURATION_MINUTES}"),
                "value_error.range",
            ));
            0
        }
    };
    let people_count = match req.people_count {
        None => None,
        Some(v) if (0..=MAX_PEOPLE_COUNT).contains(&v) => Some(v as i32),
        Some(_) => {
            errors.push(FieldError::body(
                "people_count",
                format!("must be between 0 and {MAX_PEOPLE_COUNT}"),
                "value_error.range",
            ));
            None
        }
    };
    // Stores keep milliseconds; so does the response, so a replay answers identically.
    let occurred_at = req.occurred_at.unwrap_or(now).trunc_subsecs(3);
    errors.check(check_occurred_at(occurred_at, now, "occurred_at"));
    errors.finish()?;
    let interaction = match (kind, impact, quality, target) {
        (InteractionKind::Depletion, Some(i), _, _) => Interaction::Depletion(i),
        (InteractionKind::Recharge, Some(i), _, _) => Interaction::Recharge(i),
        (InteractionKind::Sleep, _, Some(q), _) => Interaction::Sleep(q),
        (InteractionKind::Set, _, _, Some(l)) => Interaction::Set(l),
        _ => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "validated record lost its data"
            )))
        }
    };
    Ok(NewBatteryEvent {
        id: crate::auth::new_object_id(),
        interaction,
        name,
        duration_minutes,
        occurred_at,
        recorded_at: now,
        received,
        notes,
        people_count,
        interaction_type: req.interaction_type,
    })
}

/// What an `Idempotency-Key` is bound to: the request as parsed, so JSON key order,
/// whitespace, field aliases (`energyImpact`), number spellings (`5.0`), time-zone offsets
/// and text the parser trims never make a retry look like another request. Defaults are
/// applied (`duration_minutes` 60 is the same request as none) except `occurred_at`,
/// whose default is the moment of each attempt.
#[derive(Serialize)]
struct Fingerprint<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    energy_impact: Option<i32>,
    sleep_quality: Option<&'a str>,
    level: Option<i32>,
    name: Option<&'a str>,
    duration_minutes: i32,
    /// Unix milliseconds, when the request gave it.
    occurred_at: Option<i64>,
    notes: Option<&'a str>,
    people_count: Option<i32>,
    interaction_type: Option<&'a str>,
}

/// SHA-256 of the canonical request: a struct's fields serialise in a fixed order.
fn fingerprint(event: &NewBatteryEvent, occurred_at_given: bool) -> ApiResult<String> {
    let (energy_impact, sleep_quality, level) = match event.interaction {
        Interaction::Depletion(i) | Interaction::Recharge(i) => (Some(i.value()), None, None),
        Interaction::Sleep(q) => (None, Some(q.as_str()), None),
        Interaction::Set(l) => (None, None, Some(l.value())),
    };
    let canonical = serde_json::to_string(&Fingerprint {
        kind: event.interaction.kind().as_str(),
        energy_impact,
        sleep_quality,
        level,
        name: event.name.as_deref(),
        duration_minutes: event.duration_minutes,
        occurred_at: occurred_at_given.then(|| event.occurred_at.timestamp_millis()),
        notes: event.notes.as_deref(),
        people_count: event.people_count,
        interaction_type: event.interaction_type.map(|c| c.as_str()),
    })
    .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(crate::auth::sha256_hex(&format!("record/v2:{canonical}")))
}

/// The `Idempotency-Key` header, checked (1–255 visible ASCII characters).
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::validation(FieldError {
            loc: vec!["header".into(), "Idempotency-Key".into()],
            msg: format!("1–{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            kind: "value_error".into(),
        })
    };
    let key = raw.to_str().map_err(|_| invalid())?.trim();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// Record an interaction. Honours `Idempotency-Key`: the same key and body within 24 h
/// returns the first response and changes nothing; the same key with another body is 422.
#[utoipa::path(post, path = "/social-battery/{user_id}/record", tag = "social-battery",
    params(
        ("user_id" = String, Path, description = "`me` or your own user id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Makes retries safe: the same key and body within 24 h answer the first response again (1–255 visible ASCII characters)"),
    ),
    request_body = RecordRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 201, description = "Recorded (or replayed)", body = RecordResponse),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "Not your battery", body = ErrorBody),
        (status = 422, description = "Invalid input, or a reused idempotency key", body = ValidationErrorBody),
    ))]
pub async fn record(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(user_id): ApiPath<String>,
    headers: HeaderMap,
    body: JsonObject,
) -> ApiResult<Response> {
    own_battery(&auth, &user_id)?;
    let (now, received) = (state.clock.now(), std::time::Instant::now());
    let key = idempotency_key(&headers)?;
    let req: RecordRequest = parse_object(&body)?;
    let occurred_at_given = req.occurred_at.is_some();
    let event = parse_record(req, now, received)?;
    let key = match key {
        Some(key) => Some(IdempotencyKey {
            key,
            request_hash: fingerprint(&event, occurred_at_given)?,
            not_before: now - Duration::hours(IDEMPOTENCY_WINDOW_HOURS),
        }),
        None => None,
    };
    let (event, replayed) = match state
        .store
        .record_interaction_at(&auth.user_id, auth.battery, &event, key.as_ref())
        .await?
    {
        RecordOutcome::Recorded(event) => {
            crate::nudges::after_record(&state, &event);
            (event, false)
        }
        RecordOutcome::Replayed(event) => (event, true),
        RecordOutcome::KeyReused => return Err(key_reused()),
        RecordOutcome::UserMissing => return Err(ApiError::NotFound("Social battery".into())),
    };
    let battery = BatterySnapshot::from(event.level_after);
    let mut response = (
        StatusCode::CREATED,
        Json(RecordResponse {
            record: event.into(),
            battery,
        }),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A page's `next_cursor`: the last item's place in the timeline, `v2:<occurred_at in
/// Unix ms>:<seq>`, base64url (opaque to clients).
fn encode_cursor(at: HistoryCursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "v2:{}:{}",
        at.occurred_at.timestamp_millis(),
        at.seq
    ))
}

/// A cursor back, or the message for a client that sent something else. `v1` cursors
/// (pages in acceptance order, before the timeline was ordered by `occurred_at`) are
/// refused with their own message: the order they continue no longer exists.
fn decode_cursor(raw: &str) -> Result<HistoryCursor, &'static str> {
    const FOREIGN: &str = "not a cursor from this API";
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw.trim())
        .map_err(|_| FOREIGN)?;
    let text = String::from_utf8(bytes).map_err(|_| FOREIGN)?;
    if text.starts_with("v1:") {
        return Err("this cursor is from an earlier version of the history order; load the first page again");
    }
    let (at, seq) = text
        .strip_prefix("v2:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or(FOREIGN)?;
    let occurred_at = at
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or(FOREIGN)?;
    let seq = seq
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq > 0)
        .ok_or(FOREIGN)?;
    Ok(HistoryCursor { occurred_at, seq })
}

fn query_error(field: &str, msg: impl Into<String>) -> FieldError {
    FieldError::query(field, msg, "value_error")
}

/// History as a timeline: newest first by when each interaction occurred (`occurred_at`;
/// ties newest accepted first), with cursor pagination, filters on `occurred_at` and
/// `type`, and a summary over everything the filter matches. `level_before` and
/// `level_after` are the levels when the server accepted each interaction.
#[utoipa::path(get, path = "/social-battery/{user_id}/activity", tag = "social-battery",
    params(("user_id" = String, Path, description = "`me` or your own user id"), ActivityQuery),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "A page of history", body = ActivityPage),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "Not your battery", body = ErrorBody),
        (status = 422, description = "Invalid query", body = ValidationErrorBody),
    ))]
pub async fn activity(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(user_id): ApiPath<String>,
    query: Result<ApiQuery<HashMap<String, String>>, ApiError>,
) -> ApiResult<Json<ActivityPage>> {
    own_battery(&auth, &user_id)?;
    let ApiQuery(query) = query?;
    let mut errors = FieldErrors::default();
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                errors.push(query_error(
                    "limit",
                    format!("must be an integer between 1 and {MAX_PAGE_SIZE}"),
                ));
                DEFAULT_PAGE_SIZE
            }
        },
    };
    let after = match query.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(raw) => match decode_cursor(raw) {
            Ok(cursor) => Some(cursor),
            Err(message) => {
                errors.push(query_error("cursor", message));
                None
            }
        },
    };
    let mut instant = |field: &str| -> Option<DateTime<Utc>> {
        let raw = query.get(field)?;
        match DateTime::parse_from_rfc3339(raw) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errors.push(query_error(
                    field,
                    "must be an RFC 3339 date-time, e.g. 2026-01-31T08:00:00Z",
                ));
                None
            }
        }
    };
    let from = instant("from");
    let to = instant("to");
    let kind = match query.get("type") {
        None => None,
        Some(raw) => {
            let kind = InteractionKind::parse(raw);
            if kind.is_none() {
                errors.push(query_error(
                    "type",
                    "must be depletion, recharge, sleep or set",
                ));
            }
            kind
        }
    };
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            errors.push(query_error("from", "must not be after `to`"));
        }
    }
    errors.finish()?;
    let filter = HistoryFilter { from, to, kind };
    let (mut events, summary) = state
        .store
        .battery_page(&auth.user_id, &filter, after, limit + 1)
        .await?;
    let next_cursor = if events.len() > limit as usize {
        events.truncate(limit as usize);
        events.last().map(|e| encode_cursor(e.position()))
    } else {
        None
    };
    Ok(Json(ActivityPage {
        items: events.into_iter().map(ActivityRecord::from).collect(),
        next_cursor,
        summary: SummaryResponse {
            count: summary.count,
            recharge_count: summary.recharge_count,
            depletion_count: summary.depletion_count,
            total_recharged: summary.total_recharged,
            total_depleted: summary.total_depleted,
            average_level: summary.average_level,
        },
    }))
}

/// The body of a `PATCH`: any fields of a `record` request (camelCase aliases as there);
/// `null` clears a field. The record that results must be valid as a whole (this type is
/// the documentation; the handler lays the body over the record and parses that).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "documentation of the PATCH body; the handler parses a RecordRequest"
)]
pub struct RecordPatch {
    #[serde(rename = "type")]
    kind: Option<InteractionKind>,
    /// 1–200 characters after trimming; required for `depletion` and `recharge`.
    #[schema(max_length = 200)]
    name: Option<String>,
    /// 1–100, for `depletion` and `recharge`.
    #[schema(minimum = 1, maximum = 100)]
    energy_impact: Option<i64>,
    /// For `sleep`.
    sleep_quality: Option<SleepQuality>,
    /// 0–100, for `set`.
    #[schema(minimum = 0, maximum = 100)]
    level: Option<i64>,
    /// 1–10080.
    #[schema(minimum = 1, maximum = 10080)]
    duration_minutes: Option<i64>,
    /// RFC 3339; not in the future.
    occurred_at: Option<DateTime<Utc>>,
    /// At most 2000 characters.
    #[schema(max_length = 2000)]
    notes: Option<String>,
    /// 0–10000.
    #[schema(minimum = 0, maximum = 10000)]
    people_count: Option<i64>,
    interaction_type: Option<Channel>,
}

/// A record's fields as a `record` request body would give them (nulls left out).
fn request_fields(event: &BatteryEvent) -> serde_json::Map<String, serde_json::Value> {
    let record = ActivityRecord::from(event.clone());
    let mut fields = serde_json::Map::new();
    let mut put = |name: &str, value: serde_json::Value| {
        if !value.is_null() {
            fields.insert(name.to_owned(), value);
        }
    };
    put("type", serde_json::json!(record.kind));
    put("name", serde_json::json!(record.name));
    put("energy_impact", serde_json::json!(record.energy_impact));
    put("sleep_quality", serde_json::json!(record.sleep_quality));
    put("level", serde_json::json!(record.level));
    put(
        "duration_minutes",
        serde_json::json!(record.duration_minutes),
    );
    put(
        "occurred_at",
        serde_json::json!(record
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    put("notes", serde_json::json!(record.notes));
    put("people_count", serde_json::json!(record.people_count));
    put(
        "interaction_type",
        serde_json::json!(record.interaction_type),
    );
    fields
}

/// The fields that only some types take: a patch that changes `type` drops the old
/// type's ones (a `depletion` becoming a `sleep` loses its `energy_impact`).
const TYPE_FIELDS: [&str; 3] = ["energy_impact", "sleep_quality", "level"];

/// `patch` laid over `event`'s fields: the whole record a `PATCH` asks for, to be
/// validated like a `record` request. A field set to `null` is cleared.
fn patched(
    event: &BatteryEvent,
    patch: serde_json::Value,
) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    let serde_json::Value::Object(patch) = patch else {
        return Err(ApiError::validation(FieldError {
            loc: vec!["body".into()],
            msg: "must be a JSON object of record fields".into(),
            kind: "type_error.dict".into(),
        }));
    };
    let mut fields = request_fields(event);
    let aliases = ALIASES[0].1;
    let canonical = |key: &str| -> String {
        aliases
            .iter()
            .find(|(alias, _)| *alias == key)
            .map_or(key, |(_, name)| *name)
            .to_owned()
    };
    let type_changes = patch
        .get("type")
        .is_some_and(|kind| Some(kind) != fields.get("type"));
    if type_changes {
        for field in TYPE_FIELDS {
            fields.remove(field);
        }
    }
    for (key, value) in patch {
        fields.insert(canonical(&key), value);
    }
    Ok(fields)
}

/// What a correction's `Idempotency-Key` is bound to: the method, the record and (for a
/// `PATCH`) the whole record it asks for, canonical as for `record`.
fn correction_fingerprint(id: &str, fields: Option<&NewBatteryEvent>) -> ApiResult<String> {
    Ok(match fields {
        Some(event) => {
            crate::auth::sha256_hex(&format!("patch/v1:{id}:{}", fingerprint(event, true)?))
        }
        None => crate::auth::sha256_hex(&format!("delete/v1:{id}")),
    })
}

fn correction_key(
    headers: &HeaderMap,
    now: DateTime<Utc>,
    id: &str,
    fields: Option<&NewBatteryEvent>,
) -> ApiResult<Option<IdempotencyKey>> {
    Ok(match idempotency_key(headers)? {
        Some(key) => Some(IdempotencyKey {
            key,
            request_hash: correction_fingerprint(id, fields)?,
            not_before: now - Duration::hours(IDEMPOTENCY_WINDOW_HOURS),
        }),
        None => None,
    })
}

fn key_reused() -> ApiError {
    ApiError::validation(FieldError {
        loc: vec!["header".into(), "Idempotency-Key".into()],
        msg: "this key was already used with a different request".into(),
        kind: "value_error.idempotency_key_reused".into(),
    })
}

fn record_not_found() -> ApiError {
    ApiError::NotFound("Activity record".into())
}

/// Correct one of your records. Takes any fields of `record` (a partial update; `null`
/// clears a field; changing `type` drops the old type's own fields) and validates the
/// whole resulting record as `record` does. The record keeps its id, its place in
/// acceptance order and `recorded_at`; it and every later record are applied again from
/// its `level_before` (clamping included), and the level follows. Honours
/// `Idempotency-Key` like `record`.
#[utoipa::path(patch, path = "/social-battery/{user_id}/activity/{id}", tag = "social-battery",
    params(
        ("user_id" = String, Path, description = "`me` or your own user id"),
        ("id" = String, Path, description = "The record's id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Makes retries safe: the same key and request within 24 h answer the record as it is and change nothing (1–255 visible ASCII characters)"),
    ),
    request_body = RecordPatch,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The corrected record", body = ActivityRecord),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "Not your battery, or no such record of yours", body = ErrorBody),
        (status = 422, description = "The corrected record is invalid, or a reused idempotency key", body = ValidationErrorBody),
    ))]
pub async fn correct(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((user_id, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<Response> {
    own_battery(&auth, &user_id)?;
    let (now, received) = (state.clock.now(), std::time::Instant::now());
    idempotency_key(&headers)?;
    let existing = state
        .store
        .battery_event(&auth.user_id, &id)
        .await?
        .ok_or_else(record_not_found)?;
    let fields = patched(&existing, body)?;
    let req: RecordRequest = parse_json(serde_json::Value::Object(fields).to_string().as_bytes())?;
    let event = parse_record(req, now, received)?;
    let key = correction_key(&headers, now, &id, Some(&event))?;
    let correction = Correction::Replace(CorrectedFields {
        interaction: event.interaction,
        name: event.name,
        duration_minutes: event.duration_minutes,
        occurred_at: event.occurred_at,
        notes: event.notes,
        people_count: event.people_count,
        interaction_type: event.interaction_type,
    });
    let outcome = state
        .store
        .correct_interaction(&auth.user_id, &id, &correction, key.as_ref(), now)
        .await?;
    let (record, replayed) = match outcome {
        CorrectionOutcome::Corrected(record) => (record, false),
        CorrectionOutcome::Replayed(Some(record)) => (record, true),
        CorrectionOutcome::KeyReused => return Err(key_reused()),
        CorrectionOutcome::Replayed(None)
        | CorrectionOutcome::NotFound
        | CorrectionOutcome::Deleted => return Err(record_not_found()),
    };
    let mut response = Json(ActivityRecord::from(record)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Delete one of your records: every later record is applied again without it (clamping
/// included), and the level follows. Honours `Idempotency-Key`: a repeat answers 204 again.
#[utoipa::path(delete, path = "/social-battery/{user_id}/activity/{id}", tag = "social-battery",
    params(
        ("user_id" = String, Path, description = "`me` or your own user id"),
        ("id" = String, Path, description = "The record's id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Makes retries safe: the same key and request within 24 h answer 204 again and change nothing (1–255 visible ASCII characters)"),
    ),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Deleted (or a replayed delete)"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "Not your battery, or no such record of yours", body = ErrorBody),
        (status = 422, description = "A reused idempotency key", body = ValidationErrorBody),
    ))]
pub async fn delete_record(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((user_id, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    own_battery(&auth, &user_id)?;
    let now = state.clock.now();
    let key = correction_key(&headers, now, &id, None)?;
    let outcome = state
        .store
        .correct_interaction(&auth.user_id, &id, &Correction::Delete, key.as_ref(), now)
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    match outcome {
        CorrectionOutcome::Deleted => {}
        CorrectionOutcome::Replayed(_) => {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        CorrectionOutcome::KeyReused => return Err(key_reused()),
        CorrectionOutcome::NotFound | CorrectionOutcome::Corrected(_) => {
            return Err(record_not_found())
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn name_and_notes_patterns_say_what_record_accepts(
            raw in "[a-z é日\t\n\u{0}\u{85}\u{a0}\u{2028}\u{3000}\u{feff}]{0,8}",
        ) {
            let mut errors = FieldErrors::default();
            let kept = check_chars(&mut errors, "name", Some(raw.clone()), 5, Lines::One);
            let handler = errors.finish().is_ok() && kept.is_some();
            let pattern = schema::text(5, Lines::One, false, "").pattern.unwrap();
            let schema = regex::Regex::new(&pattern).unwrap().is_match(&raw);
            proptest::prop_assert_eq!(schema, handler, "{:?}", raw);
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = HistoryCursor {
            occurred_at: DateTime::from_timestamp_millis(1_767_225_600_123).unwrap(),
            seq: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(at)), Ok(at));
        let zero = encode_cursor(HistoryCursor { seq: 0, ..at });
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        for garbage in [
            "".to_owned(),
            "abc".to_owned(),
            "!!!".to_owned(),
            zero,
            b64("v2:x:1"),
            b64("v2:1"),
            b64("v2:99999999999999999:1"),
        ] {
            assert_eq!(
                decode_cursor(&garbage),
                Err("not a cursor from this API"),
                "{garbage}"
            );
        }
        // Cursors of the acceptance-order history get a message of their own.
        assert!(decode_cursor(&b64("v1:42"))
            .unwrap_err()
            .contains("earlier version"));
    }
}
