//! `GET /social-battery/{user_id}/insights?period=week|month`: per-day figures in the
//! user's time zone, patterns, and this period against the previous one, composed from
//! the stored quarter-hour buckets (`battery::insights`), so a period costs the same
//! however long the history is.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::social_battery::own_battery;
use crate::auth::AuthUser;
use crate::battery::insights::{compose, Insights, Period, Window, Zone};
use crate::error::{ApiError, ApiResult, ErrorBody, FieldError, ValidationErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(insights))
}

/// Query of `GET .../insights` (parsed by hand, so a bad value answers our 422; this
/// type is its documentation).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InsightsQuery {
    /// `week`: the 7 local days ending today; `month`: the 30. Default `week`.
    #[param(value_type = Option<Period>)]
    pub period: Option<String>,
}

/// Insights over the last week or month in the profile's time zone (UTC when it has
/// none, or when it is not a zone of the IANA database): per local day the record count,
/// closing, lowest and highest level, drained and recharged totals and counts by type
/// and `interaction_type`; this period's most draining interaction types and average
/// recharge per sleep quality; this period's totals against the previous one's.
#[utoipa::path(get, path = "/social-battery/{user_id}/insights", tag = "social-battery",
    params(("user_id" = String, Path, description = "`me` or your own user id"), InsightsQuery),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "Insights over the period", body = Insights),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "Not your battery", body = ErrorBody),
        (status = 422, description = "Invalid query", body = ValidationErrorBody),
    ))]
pub async fn insights(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(user_id): ApiPath<String>,
    query: Result<ApiQuery<HashMap<String, String>>, ApiError>,
) -> ApiResult<Json<Insights>> {
    own_battery(&auth, &user_id)?;
    let ApiQuery(query) = query?;
    let period = match query.get("period").map(|raw| raw.parse::<Period>()) {
        None => Period::Week,
        Some(Ok(period)) => period,
        Some(Err(_)) => {
            return Err(ApiError::Validation(vec![FieldError::query(
                "period",
                "must be week or month",
                "value_error",
            )]))
        }
    };
    let zone = Zone::of_profile(auth.user.timezone.as_deref());
    let window = Window::new(period, zone.tz, state.clock.now());
    let stored = state
        .store
        .battery_buckets(&auth.user_id, window.from_bucket, window.to_bucket)
        .await?;
    Ok(Json(compose(&window, &zone, &stored)))
}
