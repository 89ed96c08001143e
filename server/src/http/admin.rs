//! Device management over HTTP for the administrator role: enrol, list, rotate and revoke
//! devices, and add teams (`/v1/admin/...`), plus a device's own token rotation
//! (`POST /v1/token/rotate`).
//!
//! Administrators manage credentials and never see case data (see [`crate::access`]). Every
//! change is audited with the administrator's device as the actor, in the transaction that
//! makes it; a token is in the response body only, never in a log or the audit detail.

use auxilio_core::DeviceId;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{AppState, AuthenticatedDevice, JsonBody};
use crate::access::{self, Permission};
use crate::directory::{self, Device, DirectoryError, Enrolled, Role};
use crate::error::AppError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/teams", post(add_team))
        .route("/v1/admin/devices", get(list_devices).post(enrol_device))
        .route("/v1/admin/devices/{id}/revoke", post(revoke_device))
        .route("/v1/admin/devices/{id}/rotate", post(rotate_device))
        .route("/v1/token/rotate", post(rotate_own_token))
}

impl From<DirectoryError> for AppError {
    fn from(err: DirectoryError) -> Self {
        match err {
            DirectoryError::Sqlite(err) => AppError::internal(err),
            DirectoryError::NoSuchDevice(_) => AppError::NotFound(err.to_string()),
            DirectoryError::TeamExists(_) | DirectoryError::AlreadyRevoked(_) => {
                AppError::Conflict(err.to_string())
            }
            DirectoryError::NoSuchTeam(_) | DirectoryError::BadTeamName(_) => {
                AppError::BadRequest(err.to_string())
            }
        }
    }
}

fn parse_device_id(text: &str) -> Result<DeviceId, AppError> {
    text.parse()
        .map_err(|e| AppError::BadRequest(format!("`{text}` is not a device id: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTeam {
    name: String,
}

async fn add_team(
    State(state): State<AppState>,
    AuthenticatedDevice(admin): AuthenticatedDevice,
    JsonBody(NewTeam { name }): JsonBody<NewTeam>,
) -> Result<Json<serde_json::Value>, AppError> {
    access::require(&admin, Permission::ManageDevices)?;
    let actor = admin.id.to_string();
    let added = name.clone();
    state
        .blocking(move |database| {
            Ok(database.transaction(|conn| directory::add_team_by(conn, &actor, &added))?)
        })
        .await?;
    Ok(Json(serde_json::json!({ "team": name })))
}

async fn list_devices(
    State(state): State<AppState>,
    AuthenticatedDevice(admin): AuthenticatedDevice,
) -> Result<Json<serde_json::Value>, AppError> {
    access::require(&admin, Permission::ManageDevices)?;
    let devices: Vec<Device> = state
        .blocking(|database| Ok(database.read(directory::list_devices)?))
        .await?;
    Ok(Json(serde_json::json!({ "devices": devices })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    team: String,
    role: Role,
    #[serde(default)]
    label: String,
}

async fn enrol_device(
    State(state): State<AppState>,
    AuthenticatedDevice(admin): AuthenticatedDevice,
    JsonBody(NewDevice { team, role, label }): JsonBody<NewDevice>,
) -> Result<Json<Enrolled>, AppError> {
    access::require(&admin, Permission::ManageDevices)?;
    let actor = admin.id.to_string();
    let enrolled = state
        .blocking(move |database| {
            Ok(database
                .transaction(|conn| directory::enroll_by(conn, &actor, &team, role, &label))?)
        })
        .await?;
    tracing::info!(admin = %admin.id, device = %enrolled.device_id, role = %enrolled.role, "device enrolled");
    Ok(Json(enrolled))
}

async fn revoke_device(
    State(state): State<AppState>,
    AuthenticatedDevice(admin): AuthenticatedDevice,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    access::require(&admin, Permission::ManageDevices)?;
    let device = parse_device_id(&id)?;
    let actor = admin.id.to_string();
    state
        .blocking(move |database| {
            Ok(database.transaction(|conn| directory::revoke_by(conn, &actor, device))?)
        })
        .await?;
    tracing::info!(admin = %admin.id, %device, "device revoked");
    Ok(Json(
        serde_json::json!({ "device_id": device, "revoked": true }),
    ))
}

async fn rotate_device(
    State(state): State<AppState>,
    AuthenticatedDevice(admin): AuthenticatedDevice,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    access::require(&admin, Permission::ManageDevices)?;
    let device = parse_device_id(&id)?;
    let actor = admin.id.to_string();
    let token = state
        .blocking(move |database| {
            Ok(database.transaction(|conn| directory::rotate_by(conn, &actor, device))?)
        })
        .await?;
    Ok(Json(
        serde_json::json!({ "device_id": device, "token": token }),
    ))
}

/// Any device, any role: a new token for itself, valid alongside the old one until first used.
async fn rotate_own_token(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
) -> Result<Json<serde_json::Value>, AppError> {
    let id = device.id;
    let token = state
        .blocking(move |database| {
            Ok(database.transaction(|conn| directory::begin_rotation(conn, &device))?)
        })
        .await?;
    Ok(Json(serde_json::json!({ "device_id": id, "token": token })))
}
