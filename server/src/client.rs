//! The device side of the HTTP transport: runs sync protocol v1 rounds between a
//! [`DeviceStore`] and a server, and asks the server who a token belongs to.
//!
//! Core builds and applies the messages; this module only moves bytes, so the phone app can swap
//! it for its own transport.

use std::time::Duration;

use auxilio_core::DeviceStore;
use auxilio_core::protocol::{self, MEDIA_TYPE, ProtocolError, RejectReason, Rejection};
use auxilio_core::store::StoreError;
use serde::{Deserialize, Serialize};

use crate::directory::Role;

/// A response larger than this is refused rather than read into memory.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// A sync that needs more round trips than this is stuck, not slow.
const MAX_ROUND_TRIPS: u32 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "could not reach the server at {url}: {message}. Check the address, or try again when there is signal; nothing on this device was lost"
    )]
    Unreachable { url: String, message: String },
    #[error("the server refused the token ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("the server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("the server's answer was not understood: {0}")]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sync did not finish after {0} round trips")]
    Stuck(u32),
}

/// Figures of one `sync`, printed as one JSON line by `auxilio device sync`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Changes the server acknowledged as durably stored.
    pub uploaded: u64,
    /// Changes received from the server.
    pub downloaded: u64,
    pub round_trips: u32,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Changes still waiting for acknowledgement (refused ones stay here, never deleted).
    pub pending: u64,
    pub rejected: Vec<Rejection>,
}

/// How a sync behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOptions {
    /// Change bytes sent per request.
    pub max_upload_change_bytes: usize,
}

impl Default for SyncOptions {
    /// 256 KiB per request: a page a 2G link moves in about a minute, and far under the
    /// server's default body limit (16 MiB), so a phone back from days offline never builds a
    /// request the server must refuse.
    fn default() -> Self {
        Self {
            max_upload_change_bytes: 256 * 1024,
        }
    }
}

/// What the server knows of a token's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub device_id: auxilio_core::DeviceId,
    pub team: String,
    pub role: Role,
}

/// Timeouts sized for a weak link: a 256 KiB page takes about a minute at 4 kB/s, so bodies get
/// ten minutes; an unreachable server is reported within half a minute.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_send_body(Some(Duration::from_secs(600)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_recv_body(Some(Duration::from_secs(600)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

fn endpoint(server_url: &str, path: &str) -> String {
    format!("{}{path}", server_url.trim_end_matches('/'))
}

/// Reads a whole response, turning HTTP failures into [`ClientError`]s.
fn finish(
    url: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Vec<u8>, ClientError> {
    let unreachable = |e: ureq::Error| ClientError::Unreachable {
        url: url.to_string(),
        message: e.to_string(),
    };
    let mut response = result.map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(unreachable)?;
    match status {
        200..=299 => Ok(body),
        401 | 403 => Err(ClientError::Unauthorized {
            status,
            message: error_message(&body),
        }),
        _ => Err(ClientError::Server {
            status,
            message: error_message(&body),
        }),
    }
}

/// Asks the server which device, team and role `token` belongs to.
pub fn whoami(server_url: &str, token: &str) -> Result<WhoAmI, ClientError> {
    let url = endpoint(server_url, "/v1/whoami");
    let body = finish(
        &url,
        agent()
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call(),
    )?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Server {
        status: 200,
        message: format!("unexpected whoami answer: {e}"),
    })
}

/// Syncs `store` with its server until nothing more is waiting either way; `progress` sees the
/// running figures after every round trip.
pub fn sync(
    store: &mut DeviceStore,
    progress: impl FnMut(&SyncReport),
) -> Result<SyncReport, ClientError> {
    sync_with(store, SyncOptions::default(), progress)
}

/// [`sync`] with explicit options: uploads go in pages of at most
/// `options.max_upload_change_bytes`, downloads in the server's pages.
pub fn sync_with(
    store: &mut DeviceStore,
    options: SyncOptions,
    mut progress: impl FnMut(&SyncReport),
) -> Result<SyncReport, ClientError> {
    let enrolment = store.enrolment()?.ok_or(StoreError::NotEnrolled)?;
    let url = endpoint(&enrolment.server_url, "/v1/sync");
    let agent = agent();
    let mut report = SyncReport::default();
    let mut uploaded_up_to = 0;
    loop {
        let page = store.upload_page(uploaded_up_to, options.max_upload_change_bytes)?;
        uploaded_up_to = page.last;
        let request = protocol::encode(&page.request);
        report.bytes_up += request.len() as u64;
        let body = finish(
            &url,
            agent
                .post(&url)
                .header("Authorization", &format!("Bearer {}", enrolment.token))
                .header("Content-Type", MEDIA_TYPE)
                .send(&request[..]),
        )?;
        report.bytes_down += body.len() as u64;
        let response = protocol::decode_response(&body)?;
        let applied = store.apply_response(&response)?;
        report.round_trips += 1;
        report.uploaded += applied.acknowledged;
        report.downloaded += applied.downloaded;
        // A reused actor is mended by the store itself (it re-makes its edits), not a refusal to report.
        for rejection in applied
            .rejected
            .into_iter()
            .filter(|r| r.reason != RejectReason::ActorReused)
        {
            if !report
                .rejected
                .iter()
                .any(|r| r.encounter == rejection.encounter)
            {
                report.rejected.push(rejection);
            }
        }
        report.pending = store.pending_count()?;
        progress(&report);
        // A restarted response made the store offer its own changes again: one more round
        // sends them.
        let store_asks_again = applied.actor_renewed || applied.rebased > 0;
        if !response.more && !page.more && !response.restarted && !store_asks_again {
            return Ok(report);
        }
        if report.round_trips >= MAX_ROUND_TRIPS {
            return Err(ClientError::Stuck(report.round_trips));
        }
    }
}
