//! `/unsubscribe?token=…`: the link in every nudge mail, used without signing in.
//! `GET` only shows a small page with a button (mail scanners and link previews fetch
//! links; fetching must change nothing); `POST` turns the list off. Mail clients that
//! support RFC 8058 POST `List-Unsubscribe=One-Click` to the same URL; the body is not
//! read, the signed token says everything (user, list, expiry: see
//! [`crate::nudges::token`]).

use axum::extract::State;
use axum::response::Html;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody, ValidationErrorBody};
use crate::extract::ApiQuery;
use crate::nudges::{TokenError, Unsubscribe};
use crate::startup::AppState;
use crate::store::NudgeList;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(confirm_page, unsubscribe))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UnsubscribeQuery {
    /// The signed token from the mail's link.
    #[param(max_length = 512)]
    pub token: String,
}

fn check(state: &AppState, token: &str) -> ApiResult<Unsubscribe> {
    state
        .unsubscribe
        .verify(token, state.clock.now())
        .map_err(|e| {
            let code = match e {
                TokenError::Invalid => "invalid_unsubscribe_token",
                TokenError::UnknownList => "unknown_list",
                TokenError::Expired => "expired_unsubscribe_token",
            };
            ApiError::bad_request(code, e.to_string())
        })
}

fn describe(list: NudgeList) -> &'static str {
    match list {
        NudgeList::LowBattery => "low-battery mails",
        NudgeList::WeeklySummary => "weekly summaries",
    }
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n</head>\n<body>\n<h1>{title}</h1>\n{body}\n</body>\n</html>\n"
    ))
}

/// The confirmation page of an unsubscribe link: says which mails it stops and offers
/// the button that does it. Changes nothing.
#[utoipa::path(get, path = "/unsubscribe", tag = "nudges", params(UnsubscribeQuery),
    responses(
        (status = 200, description = "A page with a button that POSTs to this URL", body = String, content_type = "text/html"),
        (status = 400, description = "The token is not valid (altered, foreign, or for an unknown list) or has expired", body = ErrorBody),
        (status = 422, description = "No token", body = ValidationErrorBody),
    ))]
pub async fn confirm_page(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UnsubscribeQuery>,
) -> ApiResult<Html<String>> {
    let said = check(&state, &query.token)?;
    let what = describe(said.list);
    // A verified token is base64url and `.`: nothing in it needs escaping.
    Ok(page(
        &format!("Stop {what}?"),
        &format!(
            "<p>You will get no more {what} from Introgy. You can turn them on again in the \
             app's settings.</p>\n<form method=\"post\" action=\"?token={}\">\n\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n\
             <button type=\"submit\">Unsubscribe</button>\n</form>",
            query.token.trim()
        ),
    ))
}

/// Unsubscribes from the list the token names (RFC 8058 one-click; no sign-in). Mail
/// clients send `List-Unsubscribe=One-Click` as a form; the body, whatever it is, is not
/// read. Doing it twice, or for an account deleted since, answers the same: no more of
/// these mails.
#[utoipa::path(post, path = "/unsubscribe", tag = "nudges", params(UnsubscribeQuery),
    responses(
        (status = 200, description = "Unsubscribed: a page saying so", body = String, content_type = "text/html"),
        (status = 400, description = "The token is not valid (altered, foreign, or for an unknown list) or has expired", body = ErrorBody),
        (status = 422, description = "No token", body = ValidationErrorBody),
    ))]
pub async fn unsubscribe(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UnsubscribeQuery>,
) -> ApiResult<Html<String>> {
    let said = check(&state, &query.token)?;
    let found = state
        .store
        .unsubscribe(&said.user_id, said.list, state.clock.now())
        .await?;
    tracing::info!(
        list = said.list.as_str(),
        found,
        "unsubscribed from a nudge list"
    );
    let what = describe(said.list);
    Ok(page(
        "Unsubscribed",
        &format!(
            "<p>You will get no more {what} from Introgy. You can turn them on again in the \
             app's settings.</p>"
        ),
    ))
}
