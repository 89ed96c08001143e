//! Device management over HTTP for the administrator role: enrol, list, rotate and revoke
//! devices, and add teams (`/v1/admin/...`), plus a device's own token rotation
//! (`POST /v1/token/rotate`).
//!
//! Administrators manage credentials and never see case data (see [`crate::access`]). Over HTTP
//! they enrol and rotate `field` phones only ([`access::managed_over_http`]): every other role is
//! enrolled and rotated on the server's own command line, so an administrator's token cannot be
//! turned into case access (403 with a hint naming the command). And since a field phone syncs its
//! team's whole records, health included, a phone they enrol, or whose token they rotate and
//! receive, awaits approval by a team lead of its team (`POST /v1/team/devices/{id}/approve`,
//! [`super::team`]) before it reads or writes case data. Every change is audited with
//! the administrator's device as the actor, in the transaction that makes it; a token is in the
//! response body only, never in a log or the audit detail.
//!
//! A device's own rotation is a compare-and-swap on the token it presented
//! ([`directory::begin_rotation`]) and is limited per device per hour
//! ([`super::ServerConfig::self_rotations_per_hour`]): each one writes an audit row.

use auxilio_core::DeviceId;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use std::time::Instant;

use super::auth::too_many;
use super::{AppState, AuthenticatedDevice, JsonBody, PresentedToken};
use crate::access::{self, Permission};
use crate::directory::{self, Approval, AuthError, Device, DirectoryError, Enrolled, Role};
use crate::error::AppError;
use crate::rate_limit::Client;

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
            DirectoryError::NoSuchTeam(_)
            | DirectoryError::BadTeamName(_)
            | DirectoryError::BadLabel => AppError::BadRequest(err.to_string()),
            DirectoryError::TokenSuperseded => AppError::Unauthorized(AuthError::Invalid),
        }
    }
}

/// Refuses over HTTP what only the server's command line does.
fn require_managed_over_http(role: Role, action: &str) -> Result<(), AppError> {
    if access::managed_over_http(role) {
        return Ok(());
    }
    Err(AppError::CommandLineOnly(format!(
        "{action} a {role} device is done only on the server's command line: over HTTP an administrator enrols and rotates field devices only"
    )))
}

pub(super) fn parse_device_id(text: &str) -> Result<DeviceId, AppError> {
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
            database.write(|tx| Ok(directory::add_team_by(tx, &actor, &added)?))
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
) -> Result<Json<serde_json::Value>, AppError> {
    access::require(&admin, Permission::ManageDevices)?;
    require_managed_over_http(role, "enrolling")?;
    let actor = admin.id.to_string();
    let enrolled: Enrolled = state
        .blocking(move |database| {
            database.write(|tx| {
                Ok(directory::enroll_with(
                    tx,
                    &actor,
                    &team,
                    role,
                    &label,
                    Approval::AwaitingTeamLead,
                )?)
            })
        })
        .await?;
    tracing::info!(admin = %admin.id, device = %enrolled.device_id, role = %enrolled.role, "device enrolled, awaiting approval");
    let mut answer = serde_json::to_value(&enrolled).map_err(AppError::internal)?;
    answer["awaiting_approval"] = true.into();
    Ok(Json(answer))
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
            database.write(|tx| Ok(directory::revoke_by(tx, &actor, device)?))
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
            database.write(|tx| {
                let found = directory::find_device(tx, device)?
                    .ok_or(DirectoryError::NoSuchDevice(device))?;
                require_managed_over_http(found.role, "rotating the token of")?;
                Ok(directory::rotate_with(
                    tx,
                    &actor,
                    device,
                    Approval::AwaitingTeamLead,
                )?)
            })
        })
        .await?;
    Ok(Json(
        serde_json::json!({ "device_id": device, "token": token, "awaiting_approval": true }),
    ))
}

/// Any device, any role: a new token for itself, valid alongside the old one until first used,
/// and only if the token it presented is still its current one.
async fn rotate_own_token(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    PresentedToken(presented): PresentedToken,
) -> Result<Json<serde_json::Value>, AppError> {
    let id = device.id;
    state
        .self_rotations
        .take(Client::Device(id), Instant::now())
        .map_err(|limited| {
            tracing::warn!(device = %id, "self-rotations over the hourly limit");
            too_many(limited)
        })?;
    let token = state
        .blocking(move |database| {
            database.write(|tx| Ok(directory::begin_rotation(tx, &device, &presented)?))
        })
        .await?;
    Ok(Json(serde_json::json!({ "device_id": id, "token": token })))
}
