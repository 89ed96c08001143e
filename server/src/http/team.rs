//! A team lead's review of its own team's devices: `GET /v1/team/devices` (no tokens;
//! `?awaiting=true` for those awaiting approval) and `POST /v1/team/devices/{id}/approve`.
//!
//! A device an administrator enrolled or rotated over HTTP awaits approval before it reads or
//! writes case data ([`crate::directory`]): the team lead, enrolled only on the server's command
//! line and so another person than the administrator, is the second pair of eyes. Who may
//! approve is [`Permission::ApproveDevices`] in [`crate::access`]'s table; a device of another
//! team answers 404, like a missing one. The approval and its audit row commit together.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::admin::parse_device_id;
use super::{AppState, AuthenticatedDevice};
use crate::access::{self, Permission};
use crate::directory::{self, DirectoryError};
use crate::error::AppError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/team/devices", get(list_team_devices))
        .route("/v1/team/devices/{id}/approve", post(approve_device))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamDevicesQuery {
    #[serde(default)]
    awaiting: bool,
}

async fn list_team_devices(
    State(state): State<AppState>,
    AuthenticatedDevice(lead): AuthenticatedDevice,
    query: Result<Query<TeamDevicesQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    access::require(&lead, Permission::ApproveDevices)?;
    let Query(TeamDevicesQuery { awaiting }) = query.map_err(|e| {
        AppError::BadRequest(format!(
            "{}; the one parameter is awaiting (true or false)",
            e.body_text()
        ))
    })?;
    let team = lead.team.clone();
    let devices = state
        .blocking(move |database| {
            Ok(database.read(|conn| directory::list_team_devices(conn, &team, awaiting))?)
        })
        .await?;
    Ok(Json(
        serde_json::json!({ "team": lead.team, "devices": devices }),
    ))
}

async fn approve_device(
    State(state): State<AppState>,
    AuthenticatedDevice(lead): AuthenticatedDevice,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    access::require(&lead, Permission::ApproveDevices)?;
    let device = parse_device_id(&id)?;
    let approver = lead.clone();
    let was_awaiting = state
        .blocking(move |database| {
            database.write(|tx| {
                let found = directory::find_device(tx, device)?
                    .filter(|found| approver.may_see_team(&found.team))
                    .ok_or(DirectoryError::NoSuchDevice(device))?;
                Ok(directory::approve_by(
                    tx,
                    &approver.id.to_string(),
                    found.id,
                )?)
            })
        })
        .await?;
    tracing::info!(lead = %lead.id, %device, was_awaiting, "device approved");
    Ok(Json(serde_json::json!({
        "device_id": device, "approved": true, "was_awaiting": was_awaiting,
    })))
}
