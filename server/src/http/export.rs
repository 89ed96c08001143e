//! `GET /v1/export`: CSV, GeoJSON or HXL for reports (coordinators: every team; team leads: their own), with a declared
//! purpose that the audit log keeps (see `crate::export`).

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::map::scoped_filter;
use super::{AppState, AuthenticatedDevice};
use crate::access::Permission;
use crate::error::AppError;
use crate::export::{self, Format};
use crate::index::stats::Period;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/export", get(export_view))
}

async fn export_view(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, AppError> {
    let (filter, others) = scoped_filter(
        &device,
        Permission::Export,
        query,
        &["format", "purpose", "period"],
    )?;
    let format = match others.get("format") {
        Some(text) => Format::parse(text).map_err(AppError::BadRequest)?,
        None => {
            return Err(AppError::BadRequest(
                "`format` is required: csv, geojson or hxl".into(),
            ));
        }
    };
    let purpose = export::check_purpose(others.get("purpose").map(String::as_str))
        .map_err(AppError::BadRequest)?;
    let period = match (others.get("period"), format) {
        (Some(text), Format::Hxl) => Period::parse(text).map_err(AppError::BadRequest)?,
        (Some(_), _) => {
            return Err(AppError::BadRequest(
                "`period` applies to format=hxl only (rows by day, week or month)".into(),
            ));
        }
        (None, _) => Period::Month,
    };
    let actor = device.id.to_string();
    let exported = state
        .blocking(move |database| {
            Ok(database
                .write(|conn| export::export(conn, &actor, format, &purpose, &filter, period))?)
        })
        .await?;
    tracing::info!(device = %device.id, format = format.name(), rows = exported.rows, "export");
    let file_name = format!(
        "auxilio-{}.{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        format.file_extension()
    );
    Ok((
        [
            (CONTENT_TYPE, format.content_type().to_string()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        exported.body,
    )
        .into_response())
}
