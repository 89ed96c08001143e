//! The protection officers' vault endpoints: `GET /v1/encounters/{id}/vault` (the sealed
//! envelopes of one encounter), `GET /v1/vaults` (every envelope's id, encounter and recipients,
//! paged, for key rotation) and `PUT /v1/encounters/{id}/vault/{envelope_id}` (replace an
//! envelope's ciphertext with one resealed to the current keys; 409 when its digest is not the
//! one kept since upload, which would change the sealed contents).
//!
//! Only [`Permission::ReadVault`] reaches them; every other role gets 403. The server hands out
//! ciphertext only and cannot open it; each read and reseal is audited in the transaction that
//! does it.

use auxilio_core::EncounterId;
use auxilio_core::vault::{self, SealedVault};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{AppState, AuthenticatedDevice};
use crate::access::{self, Permission};
use crate::audit;
use crate::error::AppError;
use crate::index;
use crate::vault::{self as vault_store, EnvelopeSummary, ResealError, StoredEnvelope};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/encounters/{id}/vault", get(read))
        .route("/v1/encounters/{id}/vault/{envelope_id}", put(reseal))
        .route("/v1/vaults", get(list))
}

/// The answer of `GET /v1/encounters/{id}/vault`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EncounterVault {
    pub encounter: EncounterId,
    pub envelopes: Vec<StoredEnvelope>,
    /// The keys new vaults are sealed to (an envelope sealed to none of them needs a reseal).
    pub current_recipients: Vec<String>,
}

/// The answer of `GET /v1/vaults`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VaultListing {
    pub envelopes: Vec<EnvelopeSummary>,
    pub current_recipients: Vec<String>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

fn encounter_id(text: &str) -> Result<EncounterId, AppError> {
    text.parse()
        .map_err(|e| AppError::BadRequest(format!("`{text}` is not an encounter id: {e}")))
}

async fn read(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    Path(id): Path<String>,
) -> Result<Json<EncounterVault>, AppError> {
    access::require(&device, Permission::ReadVault)?;
    let id = encounter_id(&id)?;
    let answer = state
        .blocking(move |database| {
            database.write(|tx| {
                let known = vault_store::encounter_known(tx, id)?;
                // Only cases the role reads: another encounter answers like an unknown id.
                let readable = !access::protection_cases_only(device.role)
                    || index::is_protection_case(tx, id)?
                    || vault_store::has_envelopes(tx, id)?;
                if !known || !readable {
                    return Err(AppError::NotFound(format!("no encounter {id}")));
                }
                let envelopes = vault_store::envelopes_of(tx, id).map_err(AppError::internal)?;
                let current_recipients = vault_store::current_recipients(tx)?;
                audit::record(
                    tx,
                    &device.id.to_string(),
                    "vault.read",
                    serde_json::json!({
                        "encounter": id.to_string(),
                        "envelopes": envelopes.iter().map(|e| vault::hex(&e.sealed.id)).collect::<Vec<_>>(),
                        "role": device.role,
                    }),
                )?;
                Ok(EncounterVault {
                    encounter: id,
                    envelopes,
                    current_recipients,
                })
            })
        })
        .await?;
    Ok(Json(answer))
}

#[derive(Debug, Deserialize)]
struct ListParameters {
    after: Option<String>,
    limit: Option<u32>,
}

const DEFAULT_LIST_LIMIT: u32 = 500;
const MAX_LIST_LIMIT: u32 = 5000;

async fn list(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    parameters: Result<Query<ListParameters>, QueryRejection>,
) -> Result<Json<VaultListing>, AppError> {
    access::require(&device, Permission::ReadVault)?;
    let Query(parameters) = parameters.map_err(|e| {
        AppError::BadRequest(format!(
            "{}; the parameters are after (an envelope id in hex) and limit (1-{MAX_LIST_LIMIT})",
            e.body_text()
        ))
    })?;
    let after = parameters
        .after
        .as_deref()
        .map(|text| {
            vault::unhex(text).ok_or_else(|| {
                AppError::BadRequest(format!("`after={text}` is not an envelope id (hex)"))
            })
        })
        .transpose()?;
    let limit = parameters.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(AppError::BadRequest(format!(
            "`limit={limit}` is out of range; 1 to {MAX_LIST_LIMIT}"
        )));
    }
    let listing = state
        .blocking(move |database| {
            database.write(|tx| {
                let envelopes =
                    vault_store::list(tx, after.as_deref(), limit).map_err(AppError::internal)?;
                let current_recipients = vault_store::current_recipients(tx)?;
                audit::record(
                    tx,
                    &device.id.to_string(),
                    "vault.list",
                    serde_json::json!({ "envelopes": envelopes.len(), "role": device.role }),
                )?;
                let next_after = (envelopes.len() == limit as usize)
                    .then(|| envelopes.last().map(|e| e.id.clone()))
                    .flatten();
                Ok(VaultListing {
                    envelopes,
                    current_recipients,
                    next_after,
                })
            })
        })
        .await?;
    Ok(Json(listing))
}

async fn reseal(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    Path((id, envelope_id)): Path<(String, String)>,
    body: Result<Json<SealedVault>, JsonRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    access::require(&device, Permission::ReadVault)?;
    let id = encounter_id(&id)?;
    let Json(resealed) = body.map_err(|e| {
        AppError::BadRequest(format!(
            "the body must be the resealed envelope as JSON (id, encounter, sealed_at, recipients, ciphertext in hex): {}",
            e.body_text()
        ))
    })?;
    if resealed.encounter != id || vault::hex(&resealed.id) != envelope_id.to_ascii_lowercase() {
        return Err(AppError::BadRequest(
            "the envelope's id and encounter must match the address it is put to".into(),
        ));
    }
    let recipients = resealed.recipients.clone();
    state
        .blocking(move |database| {
            database.write(|tx| {
                vault_store::replace(tx, &resealed).map_err(|err| match err {
                    ResealError::Refused(message) => AppError::BadRequest(message),
                    ResealError::ContentsChanged { .. } => AppError::Conflict(err.to_string()),
                    ResealError::NotFound { .. } => AppError::NotFound(err.to_string()),
                    ResealError::Stored(other) => AppError::internal(other),
                })?;
                audit::record(
                    tx,
                    &device.id.to_string(),
                    "vault.reseal",
                    serde_json::json!({
                        "encounter": id.to_string(),
                        "envelope": vault::hex(&resealed.id),
                        "recipients": resealed.recipients,
                    }),
                )?;
                Ok(())
            })
        })
        .await?;
    Ok(Json(serde_json::json!({
        "encounter": id,
        "envelope": envelope_id,
        "recipients": recipients,
        "resealed": true,
    })))
}
