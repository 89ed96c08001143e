//! `GET /v1/audit`: the audit log for the auditor role, as JSON, JSON lines or CSV, paged by
//! `after` (a row's `seq`) and `limit`. Reading the log is itself audited.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::{AppState, AuthenticatedDevice};
use crate::access::{self, Permission};
use crate::audit;
use crate::error::AppError;

/// The most rows one request returns.
pub const MAX_AUDIT_ROWS: u32 = 10_000;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit", get(read_audit_log))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
    format: Option<String>,
}

async fn read_audit_log(
    State(state): State<AppState>,
    AuthenticatedDevice(auditor): AuthenticatedDevice,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    access::require(&auditor, Permission::ReadAudit)?;
    let Query(query) = query.map_err(|e| {
        AppError::BadRequest(format!(
            "{}; the parameters are after (a seq), limit (1-{MAX_AUDIT_ROWS}) and format (json, jsonl or csv)",
            e.body_text()
        ))
    })?;
    let limit = query.limit.unwrap_or(1000);
    if !(1..=MAX_AUDIT_ROWS).contains(&limit) {
        return Err(AppError::BadRequest(format!(
            "`limit={limit}` must be from 1 to {MAX_AUDIT_ROWS}"
        )));
    }
    let format = query.format.unwrap_or_else(|| "json".into());
    if !["json", "jsonl", "csv"].contains(&format.as_str()) {
        return Err(AppError::BadRequest(format!(
            "`format={format}` must be json, jsonl or csv"
        )));
    }
    let after = query.after;
    let actor = auditor.id.to_string();
    let entries = state
        .blocking(move |database| {
            Ok(database.write(|conn| {
                let entries = audit::entries(conn, after, limit)?;
                audit::record(
                    conn,
                    &actor,
                    "audit.read",
                    serde_json::json!({ "after": after, "rows": entries.len() }),
                )?;
                Ok::<_, rusqlite::Error>(entries)
            })?)
        })
        .await?;
    Ok(match format.as_str() {
        "csv" => (
            [
                (CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    CONTENT_DISPOSITION,
                    "attachment; filename=\"auxilio-audit.csv\"",
                ),
            ],
            audit::to_csv(&entries),
        )
            .into_response(),
        "jsonl" => {
            let mut lines = String::new();
            for entry in &entries {
                lines.push_str(&serde_json::to_string(entry).map_err(AppError::internal)?);
                lines.push('\n');
            }
            ([(CONTENT_TYPE, "application/jsonl")], lines).into_response()
        }
        _ => {
            let next_after = entries.last().map_or(after, |e| e.seq);
            Json(serde_json::json!({
                "entries": entries,
                "count": entries.len(),
                "next_after": next_after,
            }))
            .into_response()
        }
    })
}
