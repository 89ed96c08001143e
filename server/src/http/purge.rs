//! `POST /v1/encounters/{id}/purge`: erases an encounter, or only its identity vault, from the
//! server's stored history (see [`crate::purge`]), for the roles allowed to purge (protection
//! officers), and only what the role may read (an officer: UASC and missing-person cases);
//! anything else, and what was purged already, answers 404 like an unknown id. The body is
//! `{"reason": "...", "vault_only": false}`; the reason goes to the audit log. Devices drop their
//! copies when they next sync.

use auxilio_core::EncounterId;
use auxilio_core::protocol::PurgeKind;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

use super::{AppState, AuthenticatedDevice};
use crate::access::{self, Permission};
use crate::error::AppError;
use crate::index;
use crate::ledger;
use crate::purge::{self, PurgeError, PurgeReport};

/// A purge body is a reason and a flag; anything larger is not one.
const MAX_BODY_BYTES: usize = 4 * 1024;
/// The longest reason kept in the audit log.
const MAX_REASON_CHARS: usize = 500;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/encounters/{id}/purge",
        post(purge_encounter).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    /// Why, for the audit log (1 to 500 characters); it should not repeat what is erased.
    #[serde(default)]
    reason: String,
    /// Erase only the identity vault; the record stays.
    #[serde(default)]
    vault_only: bool,
}

/// Whether `device` may read encounter `id`, the only encounters it may purge: one of the teams
/// its role reaches and, for a protection officer, a UASC or missing-person case. An id the
/// server does not hold is left to the purge to answer.
fn may_read(
    conn: &rusqlite::Connection,
    device: &crate::directory::Device,
    id: EncounterId,
) -> Result<bool, rusqlite::Error> {
    let Some(team) = ledger::encounter_team(conn, id)? else {
        return Ok(true);
    };
    Ok(device.may_see_team(&team)
        && (!access::protection_cases_only(device.role) || index::is_protection_case(conn, id)?))
}

async fn purge_encounter(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    Path(id): Path<String>,
    body: Result<Json<PurgeRequest>, JsonRejection>,
) -> Result<Json<PurgeReport>, AppError> {
    access::require(&device, Permission::Purge)?;
    let id: EncounterId = id
        .parse()
        .map_err(|e| AppError::BadRequest(format!("`{id}` is not an encounter id: {e}")))?;
    let Json(request) = body.map_err(|rejection| match rejection {
        too_large if too_large.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            AppError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            }
        }
        other => AppError::BadRequest(format!(
            "{}; send {{\"reason\": \"...\", \"vault_only\": false}} as application/json",
            other.body_text()
        )),
    })?;
    let reason = request.reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(AppError::BadRequest(format!(
            "`reason` is required: 1 to {MAX_REASON_CHARS} characters saying why, for the audit log"
        )));
    }
    let kind = if request.vault_only {
        PurgeKind::VaultOnly
    } else {
        PurgeKind::Whole
    };
    let actor = device.id.to_string();
    let report = state
        .blocking(move |database| {
            let report = database.write(|tx| {
                // What the role may not read answers exactly like an unknown id, and so does
                // what was purged already: a purge discloses no id it was not shown.
                let unknown = || AppError::NotFound(PurgeError::NotFound(id).to_string());
                if !may_read(tx, &device, id)? {
                    return Err(unknown());
                }
                let report =
                    purge::purge_in(tx, id, kind, &reason, &actor).map_err(|err| match err {
                        PurgeError::NotFound(_) | PurgeError::AlreadyPurged { .. } => unknown(),
                        PurgeError::MissingReason => AppError::BadRequest(err.to_string()),
                        other => AppError::internal(other),
                    })?;
                Ok(report)
            })?;
            purge::clear_files(database)?;
            Ok(report)
        })
        .await?;
    if kind == PurgeKind::Whole {
        // Coordinators' maps redraw without it.
        state
            .events
            .publish(vec![(report.encounter, report.team.clone())]);
    }
    Ok(Json(report))
}
