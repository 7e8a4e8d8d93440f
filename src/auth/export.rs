//! `GET /users/me/export`: everything the service keeps about a user, streamed (the
//! data-access right that goes with `DELETE /users/me`).
//!
//! Memory does not grow with the history: the profile and the sessions (at most
//! [`MAX_LISTED_SESSIONS`](crate::store::MAX_LISTED_SESSIONS)) are read before the answer
//! starts, so a failure there is an ordinary error status; the history is then read in
//! keyset pages of [`EXPORT_PAGE`] through the battery aggregate's own paging method and
//! each page is written into the body as it arrives. hyper pulls the next page only when
//! the client has taken the previous one. A store failure after the answer has started
//! cannot change its status: the body is cut off without its end (no closing `]}`, no
//! final chunk), so a client never mistakes a broken export for a complete one.
//!
//! CSV: RFC 4180 (comma, CRLF line ends, fields with `,`, `"`, CR or LF quoted, quotes
//! doubled), one header line and one line per interaction, newest first like the JSON.
//! Free text (`name`, `notes`) that starts with `=`, `+`, `-`, `@`, tab or CR gets a
//! leading `'` so a spreadsheet shows it as text instead of running it as a formula
//! (OWASP "CSV injection"); numbers and the service's own names are written as they are.

use axum::body::{Body, Bytes};
use chrono::SecondsFormat;
use serde::Serialize;

use crate::routes::account::SessionItem;
use crate::routes::social_battery::ActivityRecord;
use crate::routes::users::UserProfile;
use crate::startup::AppState;
use crate::store::{BatteryEvent, HistoryCursor, HistoryFilter};

/// History records read per store call.
pub const EXPORT_PAGE: u32 = 500;

/// The two shapes of an export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// `{profile, sessions, history}`.
    #[default]
    Json,
    /// The history, one line per interaction.
    Csv,
}

/// The CSV header.
pub const CSV_HEADER: &str = "id,occurred_at,recorded_at,type,name,energy_impact,sleep_quality,\
level,energy_delta,level_before,level_after,duration_minutes,notes,people_count,\
interaction_type\r\n";

/// The JSON document's head, up to the opening of `history`.
#[derive(Serialize)]
struct Head<'a> {
    profile: &'a UserProfile,
    sessions: &'a [SessionItem],
}

enum Stage {
    Pages {
        after: Option<HistoryCursor>,
        first: bool,
    },
    Done,
}

struct Cursor {
    state: AppState,
    user_id: String,
    format: ExportFormat,
    stage: Stage,
}

/// The response body: `head`, then the history page by page, then the tail.
pub fn body(
    state: AppState,
    user_id: String,
    format: ExportFormat,
    profile: UserProfile,
    sessions: Vec<SessionItem>,
) -> Result<Body, serde_json::Error> {
    let head = match format {
        ExportFormat::Json => {
            // `{"profile":...,"sessions":[...]}` with its closing brace replaced.
            let mut head = serde_json::to_vec(&Head {
                profile: &profile,
                sessions: &sessions,
            })?;
            head.pop();
            head.extend_from_slice(b",\"history\":[");
            head
        }
        ExportFormat::Csv => CSV_HEADER.as_bytes().to_vec(),
    };
    let cursor = Cursor {
        state,
        user_id,
        format,
        stage: Stage::Pages {
            after: None,
            first: true,
        },
    };
    let head =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) });
    let pages = futures_util::stream::try_unfold(cursor, next_chunk);
    Ok(Body::from_stream(futures_util::StreamExt::chain(
        head, pages,
    )))
}

async fn next_chunk(mut cursor: Cursor) -> Result<Option<(Bytes, Cursor)>, std::io::Error> {
    let Stage::Pages { after, first } = cursor.stage else {
        return Ok(None);
    };
    let page = cursor
        .state
        .store
        .battery_history(
            &cursor.user_id,
            &HistoryFilter::default(),
            after,
            EXPORT_PAGE,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "export cut off: the history could not be read");
            std::io::Error::other("the history could not be read")
        })?;
    let Some(last) = page.last() else {
        cursor.stage = Stage::Done;
        let tail: &[u8] = match cursor.format {
            ExportFormat::Json => b"]}",
            ExportFormat::Csv => b"",
        };
        return Ok(Some((Bytes::from_static(tail), cursor)));
    };
    cursor.stage = Stage::Pages {
        after: Some(last.position()),
        first: false,
    };
    let mut out = Vec::with_capacity(page.len() * 320);
    for (i, event) in page.into_iter().enumerate() {
        match cursor.format {
            ExportFormat::Json => {
                if !(first && i == 0) {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, &ActivityRecord::from(event))
                    .map_err(std::io::Error::other)?;
            }
            ExportFormat::Csv => csv_line(&mut out, event),
        }
    }
    Ok(Some((Bytes::from(out), cursor)))
}

/// One CSV line of an interaction.
fn csv_line(out: &mut Vec<u8>, event: BatteryEvent) {
    let record = ActivityRecord::from(event);
    let number = |n: Option<i32>| n.map(|n| n.to_string()).unwrap_or_default();
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let cells = [
        record.id,
        time(record.occurred_at),
        time(record.recorded_at),
        record.kind.as_str().to_owned(),
        record.name.as_deref().map(text_cell).unwrap_or_default(),
        number(record.energy_impact),
        record
            .sleep_quality
            .map(|q| q.as_str().to_owned())
            .unwrap_or_default(),
        number(record.level),
        record.energy_delta.to_string(),
        record.level_before.to_string(),
        record.level_after.to_string(),
        record.duration_minutes.to_string(),
        record.notes.as_deref().map(text_cell).unwrap_or_default(),
        number(record.people_count),
        record.interaction_type.unwrap_or_default(),
    ];
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        quote_into(out, cell);
    }
    out.extend_from_slice(b"\r\n");
}

/// Free text made safe for spreadsheets: a leading formula character is neutralised.
fn text_cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

/// RFC 4180: quoted when it holds a comma, a quote, CR or LF; quotes doubled.
fn quote_into(out: &mut Vec<u8>, cell: &str) {
    if cell.contains([',', '"', '\r', '\n']) {
        out.push(b'"');
        out.extend_from_slice(cell.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(cell.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(cell: &str) -> String {
        let mut out = Vec::new();
        quote_into(&mut out, cell);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn cells_are_quoted_as_rfc_4180_says() {
        assert_eq!(quoted("plain"), "plain");
        assert_eq!(quoted("a,b"), "\"a,b\"");
        assert_eq!(quoted("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quoted("two\nlines"), "\"two\nlines\"");
        assert_eq!(quoted("cr\r"), "\"cr\r\"");
        assert_eq!(quoted(""), "");
    }

    #[test]
    fn free_text_that_a_spreadsheet_would_run_is_shown_as_text() {
        for formula in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(text_cell(formula), format!("'{formula}"));
        }
        assert_eq!(text_cell("Dinner = fun"), "Dinner = fun");
        assert_eq!(text_cell("'quoted"), "'quoted");
    }

    #[test]
    fn the_header_names_one_column_per_cell() {
        assert_eq!(CSV_HEADER.trim_end().split(',').count(), 15);
    }
}
