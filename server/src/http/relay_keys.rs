//! `POST /v1/relay-keys`: a device registers its relay public key (`{"key": "<64 hex>"}`) and
//! gets back the current relay keys of its team (`{"keys": [{"device", "key"}]}`), which its
//! store keeps to check teammates in phone-to-phone relays (see [`crate::relay_keys`]). Only
//! roles that sync may relay, so only they may register.

use auxilio_core::relay_auth::{RelayKeyRegistration, TeamRelayKeys};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use super::{AppState, AuthenticatedDevice, JsonBody};
use crate::access::{self, Permission};
use crate::error::AppError;
use crate::relay_keys::{self, RelayKeyError};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/relay-keys", post(register))
}

async fn register(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    JsonBody(RelayKeyRegistration { key }): JsonBody<RelayKeyRegistration>,
) -> Result<Json<TeamRelayKeys>, AppError> {
    access::require(&device, Permission::Sync)?;
    let keys = state
        .blocking(move |database| {
            database
                .write(|conn| relay_keys::register(conn, &device, &key))
                .map_err(|err| match err {
                    RelayKeyError::InvalidKey => AppError::BadRequest(err.to_string()),
                    other => AppError::internal(other),
                })
        })
        .await?;
    Ok(Json(TeamRelayKeys { keys }))
}
