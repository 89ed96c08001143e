//! `GET /v1/encounters` (filtered list from the index) and `GET /v1/encounters/{id}` (the
//! current merged state, with its unresolved conflicts and flagged problems).
//!
//! Scoped by role (see [`crate::access`]): field devices and team leads read their own team,
//! coordinators every team without health detail, protection officers UASC and missing-person
//! cases only; what a role without health access receives (the record, its conflicts, its
//! problems, the list's problems) goes through [`crate::redaction`]'s one allow-list. Every read
//! of one record and every list is written to the audit log.

use auxilio_core::document::{Conflict, ConflictingValue};
use auxilio_core::schema::{Service, Status};
use auxilio_core::store::heads_hex;
use auxilio_core::{DeviceId, EncounterId};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{AppState, AuthenticatedDevice};
use crate::access::{self, Permission};
use crate::audit;
use crate::changes;
use crate::error::AppError;
use crate::index::{self, EncounterRow, ListFilter, Problem};
use crate::ledger;
use crate::redaction;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/encounters", get(list))
        .route("/v1/encounters/{id}", get(show))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EncounterList {
    pub encounters: Vec<EncounterRow>,
    pub count: usize,
}

async fn list(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    filter: Result<Query<ListFilter>, QueryRejection>,
) -> Result<Json<EncounterList>, AppError> {
    access::require(&device, Permission::ReadEncounter)?;
    let Query(mut filter) = filter.map_err(|e| {
        AppError::BadRequest(format!(
            "{}; the parameters are team, service, status, from, to, bbox, flagged (true or false), limit (0-1000) and offset",
            e.body_text()
        ))
    })?;
    if let Some(from) = &filter.from {
        filter.from =
            Some(index::normalise_time("from", from, false).map_err(AppError::BadRequest)?);
    }
    if let Some(service) = &filter.service {
        serde_json::from_value::<Service>(serde_json::Value::String(service.clone())).map_err(
            |_| {
                AppError::BadRequest(format!(
                    "`service={service}` is not a service code (e.g. rescue, first_aid)"
                ))
            },
        )?;
    }
    if let Some(status) = &filter.status {
        serde_json::from_value::<Status>(serde_json::Value::String(status.clone())).map_err(
            |_| AppError::BadRequest(format!("`status={status}` is not open or closed")),
        )?;
    }
    if let Some(bbox) = &filter.bbox {
        index::parse_bbox(bbox).map_err(AppError::BadRequest)?;
    }
    if let Some(to) = &filter.to {
        filter.to = Some(index::normalise_time("to", to, true).map_err(AppError::BadRequest)?);
    }
    if let (Some(from), Some(to)) = (&filter.from, &filter.to)
        && from > to
    {
        return Err(AppError::BadRequest(format!(
            "`from` ({from}) is after `to` ({to})"
        )));
    }
    let visible_team = access::team_scope(&device).team().map(str::to_string);
    filter.protection_cases_only = access::protection_cases_only(device.role);
    let with_health = access::allows(device.role, Permission::ReadHealth);
    let encounters = state
        .blocking(move |database| {
            // A write: the list is an in-system read like a record's (exact coordinates, for
            // dispatch), so it is audited in the same transaction that reads it.
            Ok(database.write(|conn| {
                let mut encounters = index::list(conn, &filter, visible_team.as_deref())?;
                if !with_health {
                    for row in &mut encounters {
                        row.health_detail_withheld = redaction::redact_problems(&mut row.problems);
                    }
                }
                audit::record(
                    conn,
                    &device.id.to_string(),
                    "encounter.list",
                    serde_json::json!({
                        "role": device.role,
                        "team": device.team,
                        "filters": filter,
                        "rows": encounters.len(),
                        "health": with_health,
                    }),
                )?;
                Ok::<_, rusqlite::Error>(encounters)
            })?)
        })
        .await?;
    Ok(Json(EncounterList {
        count: encounters.len(),
        encounters,
    }))
}

/// One encounter's merged state as the server holds it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EncounterDetail {
    pub id: EncounterId,
    pub team: String,
    pub received_at: String,
    pub updated_at: String,
    pub occurred_at: String,
    pub clock_suspect: bool,
    /// False while some stored change still waits for a change it depends on.
    pub complete: bool,
    pub encounter: serde_json::Value,
    /// Each conflicting value with `uploaded_by` beside its author `device`.
    pub conflicts: Vec<ConflictView>,
    /// Every device that wrote changes of the record, with the devices that uploaded them (a
    /// teammate's phone relays changes it was given phone to phone).
    #[serde(default)]
    pub authors: Vec<ledger::Author>,
    pub problems: Vec<Problem>,
    pub heads: Vec<String>,
    /// How many health values (and restricted fields) were left out because this device's role
    /// may not read them; 0 when nothing was.
    #[serde(default)]
    pub health_detail_withheld: usize,
}

/// A conflict as the record view shows it: [`Conflict`] with each value's uploaders.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConflictView {
    pub path: String,
    pub values: Vec<ConflictingValueView>,
}

/// A conflicting value, its author (`device`) and the devices that uploaded that author's
/// changes of this record (`uploaded_by`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ConflictingValueView {
    #[serde(flatten)]
    pub value: ConflictingValue,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploaded_by: Vec<DeviceId>,
}

/// Puts each conflicting value's uploaders (from `authors`) beside its author.
fn with_uploaders(conflicts: Vec<Conflict>, authors: &[ledger::Author]) -> Vec<ConflictView> {
    conflicts
        .into_iter()
        .map(|conflict| ConflictView {
            path: conflict.path,
            values: conflict
                .values
                .into_iter()
                .map(|value| ConflictingValueView {
                    uploaded_by: authors
                        .iter()
                        .find(|a| Some(a.device) == value.device)
                        .map(|a| a.uploaded_by.clone())
                        .unwrap_or_default(),
                    value,
                })
                .collect(),
        })
        .collect()
}

async fn show(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    Path(id): Path<String>,
) -> Result<Json<EncounterDetail>, AppError> {
    let id: EncounterId = id
        .parse()
        .map_err(|e| AppError::BadRequest(format!("`{id}` is not an encounter id: {e}")))?;
    access::require(&device, Permission::ReadEncounter)?;
    let not_found =
        move || AppError::NotFound(format!("no encounter {id} that this device may see"));
    let detail = state
        .blocking(move |database| {
            // A write: the read of a case is audited in the same transaction that reads it.
            database.write(|conn| {
                // Another team's encounter answers exactly like a missing one: its existence is
                // not disclosed.
                let Some(stored) = changes::stored_encounter(conn, id)?
                    .filter(|row| device.may_see_team(&row.team))
                else {
                    return Err(not_found());
                };
                if access::protection_cases_only(device.role)
                    && !index::is_protection_case(conn, id)?
                {
                    return Err(not_found());
                }
                let mut document = changes::load_document(conn, id)
                    .map_err(AppError::internal)?
                    .ok_or_else(not_found)?;
                let mut encounter = match document.encounter() {
                    Ok(typed) => serde_json::to_value(typed).map_err(AppError::internal)?,
                    Err(_) => document.to_json(),
                };
                let mut conflicts = document.conflicts();
                let mut problems: Vec<Problem> =
                    serde_json::from_str(&stored.problems).unwrap_or_default();
                let with_health = access::allows(device.role, Permission::ReadHealth);
                let health_detail_withheld = if with_health {
                    0
                } else {
                    redaction::redact_health(&mut encounter, &mut conflicts)
                        + redaction::redact_problems(&mut problems)
                };
                let authors = ledger::authors(conn, id).map_err(AppError::internal)?;
                let conflicts = with_uploaders(conflicts, &authors);
                audit::record(
                    conn,
                    &device.id.to_string(),
                    "encounter.read",
                    serde_json::json!({
                        "encounter": id.to_string(),
                        "team": stored.team,
                        "role": device.role,
                        "health": with_health,
                    }),
                )?;
                Ok(EncounterDetail {
                    id,
                    team: stored.team,
                    received_at: stored.received_at,
                    updated_at: stored.updated_at,
                    occurred_at: stored.occurred_at,
                    clock_suspect: stored.clock_suspect,
                    complete: stored.complete,
                    encounter,
                    conflicts,
                    authors,
                    problems,
                    heads: heads_hex(&document.heads()),
                    health_detail_withheld,
                })
            })
        })
        .await?;
    Ok(Json(detail))
}
