//! `POST /v1/sync` (sync protocol v2, CBOR bodies, optionally deflate-compressed both ways) and
//! `GET /v1/whoami`. A sync that stored changes is announced on the coordinators' event stream
//! (`GET /v1/events`, [`super::events`]) after its commit.

use auxilio_core::protocol::{self, CONTENT_ENCODING, MEDIA_TYPE};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING as CONTENT_ENCODING_HEADER, CONTENT_TYPE,
};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{AppState, AuthenticatedDevice};
use crate::access::{self, Permission};
use crate::audit;
use crate::error::AppError;
use crate::ledger::{self, LedgerError};

pub fn router(max_request_bytes: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/sync",
            post(sync).layer(DefaultBodyLimit::max(max_request_bytes)),
        )
        .route("/v1/whoami", get(whoami))
}

/// Who the token belongs to, and whether the device is approved (one awaiting a team lead's
/// approval may do nothing else but rotate its own token). The map page calls it to sign in, so
/// it is the sign-in the audit log records.
async fn whoami(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
) -> Result<Json<serde_json::Value>, AppError> {
    let answer = serde_json::json!({
        "device_id": device.id, "team": device.team, "role": device.role,
        "approved": !device.awaiting_approval,
    });
    let detail =
        serde_json::json!({ "device": device.id, "team": device.team, "role": device.role });
    let actor = device.id.to_string();
    state
        .blocking(move |database| {
            Ok(database.write(|conn| audit::record(conn, &actor, "auth.sign_in", detail))?)
        })
        .await?;
    Ok(Json(answer))
}

async fn sync(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    // Refused before the body is even read: sync carries whole documents, health included.
    access::require(&device, Permission::Sync)?;
    let body = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(_)
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            AppError::PayloadTooLarge {
                limit: state.config.max_request_bytes,
            }
        }
        other => AppError::BadRequest(format!("could not read the request body: {other}")),
    })?;
    let limit = state.config.max_request_bytes;
    let body = match headers.get(CONTENT_ENCODING_HEADER).map(|v| v.to_str()) {
        None => body.to_vec(),
        Some(Ok(coding)) if coding.trim().eq_ignore_ascii_case(CONTENT_ENCODING) => {
            protocol::decompress(&body, limit).map_err(|e| match e {
                protocol::ProtocolError::InflatesTooLarge { .. } => {
                    AppError::PayloadTooLarge { limit }
                }
                other => AppError::BadRequest(other.to_string()),
            })?
        }
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "content encoding {:?} is not supported; send the body as is or as `{CONTENT_ENCODING}`",
                other.unwrap_or("(not text)")
            )));
        }
    };
    let compress = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.split(';').next().unwrap_or("").trim() == CONTENT_ENCODING);
    let request =
        protocol::decode_request(&body).map_err(|e| AppError::BadRequest(e.to_string()))?;
    drop(body);
    // Counted before anything is decoded or the writer waited for: one huge request would
    // hold the single writer while other devices wait.
    let caps = state.config.caps;
    caps.check_request(&request)
        .map_err(|err| AppError::TooManyItems(err.to_string()))?;
    let uploaded: usize = request.changes.iter().map(|g| g.changes.len()).sum();
    let pages = state.config.pages;
    let device_for_log = device.id;
    let events = state.events.clone();
    let (response, stored) = state
        .blocking(move |database| {
            let ledger_error = |err| match err {
                LedgerError::BadRequest(message) => AppError::BadRequest(message),
                LedgerError::Forbidden(message) => AppError::Forbidden(message),
                LedgerError::TooManyItems(message) => AppError::TooManyItems(message),
                err @ LedgerError::DailyCeiling {
                    retry_after_secs, ..
                } => AppError::DailyCeiling {
                    message: err.to_string(),
                    retry_after_secs,
                },
                other => AppError::internal(other),
            };
            // Decoded before the write lock is taken: a large body does not hold up other devices.
            let decoded = ledger::decode(request).map_err(ledger_error)?;
            database
                .write(|conn| {
                    // Under the writer lock no other sync stores changes in between, so the log
                    // positions bracket exactly what this request stored.
                    let before = ledger::log_end(conn)?;
                    let response = ledger::sync_decoded(conn, &device, decoded, pages, &caps)?;
                    // Read in the same transaction, published after the commit: a page that
                    // subscribed before it gets the event, one that subscribes later reads the
                    // committed state. The query is skipped when no coordinator is listening.
                    let stored = if events.has_subscribers() {
                        ledger::encounters_stored_after(conn, before)?
                    } else {
                        Vec::new()
                    };
                    Ok((response, stored))
                })
                .map_err(ledger_error)
        })
        .await?;
    // After the commit: a coordinator that re-reads on this event sees the new state.
    state.events.publish(stored);
    let downloaded: usize = response.changes.iter().map(|g| g.changes.len()).sum();
    tracing::info!(
        device = %device_for_log,
        uploaded,
        accepted = response.accepted.len(),
        rejected = response.rejected.len(),
        downloaded,
        cursor = response.cursor,
        more = response.more,
        "sync"
    );
    let body = protocol::encode_response(&response);
    Ok(if compress {
        (
            [
                (CONTENT_TYPE, MEDIA_TYPE),
                (CONTENT_ENCODING_HEADER, CONTENT_ENCODING),
            ],
            protocol::compress(&body),
        )
            .into_response()
    } else {
        ([(CONTENT_TYPE, MEDIA_TYPE)], body).into_response()
    })
}
