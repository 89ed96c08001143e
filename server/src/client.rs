//! The device side of the HTTP transport: runs sync protocol v2 rounds between a
//! [`DeviceStore`] and a server, and asks the server who a token belongs to. The protection
//! officer's vault calls (fetch, list, put a resealed envelope) are here too: they move
//! ciphertext only, and decrypting is the caller's, on the officer's machine.
//!
//! Core builds and applies the messages; this module only moves bytes, so the phone app can swap
//! it for its own transport.

use std::time::Duration;

use auxilio_core::DeviceStore;
use std::collections::HashSet;
use std::io::Read;

use automerge::Change;
use auxilio_core::protocol::{
    self, CONTENT_ENCODING, EncounterChanges, MEDIA_TYPE, ProtocolError, RejectReason, Rejection,
    SyncResponse, VaultRejection,
};
use auxilio_core::store::{StoreError, Wiped};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

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
    /// The device is enrolled but awaits approval by a team lead of its team (an administrator
    /// enrolled it, or rotated its token, over HTTP): nothing was sent or received.
    #[error(
        "{message}: ask your team lead to approve this device, then sync again. Nothing was synced, and nothing on this device was lost"
    )]
    AwaitingApproval { message: String },
    /// The server said this device is revoked and must erase its data; `sync` has done so
    /// before returning this.
    #[error(
        "this device was revoked by an administrator (a lost or stolen phone), and as the server instructed its store was erased: {} encounters and {} unsynced changes. Hand it to an administrator to enrol it again as a new device", wiped.encounters, wiped.unsynced_changes
    )]
    RevokedAndWiped { wiped: Wiped },
    /// The server ordered a wipe (the device is revoked); only [`sync_with`] acts on it.
    #[error("this device was revoked: {message}")]
    WipeOrdered { message: String },
    #[error("the server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("the server's answer was not understood: {0}")]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sync did not finish after {0} round trips")]
    Stuck(u32),
    #[error("this device's relay keys could not be kept: {0}")]
    RelayKeys(String),
}

/// Figures of one `sync`, printed as one JSON line by `auxilio device sync`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Changes the server acknowledged as durably stored.
    pub uploaded: u64,
    /// Changes received from the server.
    pub downloaded: u64,
    /// Requests sent, including those cut off on the way.
    pub round_trips: u32,
    /// Requests cut off (or refused) on the way and retried.
    pub retries: u32,
    /// Body bytes sent and received (compressed, as they crossed the link).
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Changes still waiting for acknowledgement (refused ones stay here, never deleted).
    pub pending: u64,
    pub rejected: Vec<Rejection>,
    /// Encounters this device dropped because the server purged them (their unsent edits
    /// included: a purge outranks a pending edit).
    #[serde(default)]
    pub dropped: u64,
    /// Encounters whose identity vault copies this device dropped after a vault purge.
    #[serde(default)]
    pub vaults_dropped: u64,
    /// Sealed identity vaults the server acknowledged (and this device then deleted).
    #[serde(default)]
    pub vaults_uploaded: u64,
    /// Sealed vaults still waiting on this device (refused ones stay, and go again next sync).
    #[serde(default)]
    pub vaults_pending: u64,
    /// Sealed vaults the server refused (kept on the device and offered again next sync).
    #[serde(default)]
    pub vaults_rejected: Vec<VaultRejection>,
}

/// How a sync behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOptions {
    /// The largest page, in bytes of changes, each way: what one request uploads and what it
    /// asks the server to send back.
    pub max_page_bytes: usize,
    /// After a cut the page halves, down to this; each whole exchange doubles it again, up to
    /// `max_page_bytes`. A link that drops every few seconds still moves small pages whole.
    pub min_page_bytes: usize,
    /// Compress bodies both ways (deflate).
    pub compress: bool,
    /// Give up after this many failed attempts in a row (each waits twice as long as the one
    /// before, from `first_retry_delay` up to 8 s).
    pub max_failed_attempts: u32,
    pub first_retry_delay: Duration,
}

impl Default for SyncOptions {
    /// 512 KiB of changes per page, about 100 KB once compressed: a few seconds on a 2G link,
    /// and far under the server's default body limit (16 MiB), so a phone back from days
    /// offline never builds a request the server must refuse. Ten failed attempts in a row span
    /// about 40 s of waiting.
    fn default() -> Self {
        Self {
            max_page_bytes: 512 * 1024,
            min_page_bytes: 4 * 1024,
            compress: true,
            max_failed_attempts: 10,
            first_retry_delay: Duration::from_millis(250),
        }
    }
}

impl SyncOptions {
    /// Large pages for a fast, reliable link: a whole deployment in one or two round trips.
    pub fn for_lan() -> Self {
        Self {
            max_page_bytes: 16 * 1024 * 1024,
            ..Self::default()
        }
    }
}

/// What the server knows of a token's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub device_id: auxilio_core::DeviceId,
    pub team: String,
    pub role: Role,
    /// False while the device awaits approval by a team lead of its team: it may not sync yet.
    /// (A server from before approvals does not say: approved.)
    #[serde(default = "approved_unless_told")]
    pub approved: bool,
}

fn approved_unless_told() -> bool {
    true
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

/// Whether a refusal's body sets `flag` to true: `wipe` (the device was revoked and must erase
/// its store) or `awaiting_approval` (it waits for its team lead).
fn body_says(body: &[u8], flag: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get(flag).and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

/// Whether a refusal's body orders this device to wipe its store (it was revoked).
fn wipe_ordered(body: &[u8]) -> bool {
    body_says(body, "wipe")
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

/// `GET url` with `token`, read as the JSON answer `what` names.
fn get_json<T: serde::de::DeserializeOwned>(
    url: &str,
    token: &str,
    what: &str,
) -> Result<T, ClientError> {
    let body = finish(
        url,
        agent()
            .get(url)
            .header("Authorization", &format!("Bearer {token}"))
            .call(),
    )?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Server {
        status: 200,
        message: format!("unexpected {what} answer: {e}"),
    })
}

/// Asks the server which device, team and role `token` belongs to.
pub fn whoami(server_url: &str, token: &str) -> Result<WhoAmI, ClientError> {
    get_json(&endpoint(server_url, "/v1/whoami"), token, "whoami")
}

/// The sealed envelopes of one encounter (`GET /v1/encounters/{id}/vault`; protection officers).
pub fn fetch_vault(
    server_url: &str,
    token: &str,
    encounter: auxilio_core::EncounterId,
) -> Result<crate::http::vault::EncounterVault, ClientError> {
    let url = endpoint(server_url, &format!("/v1/encounters/{encounter}/vault"));
    get_json(&url, token, "vault")
}

/// One page of every envelope's id, encounter and recipients (`GET /v1/vaults`).
pub fn list_vaults(
    server_url: &str,
    token: &str,
    after: Option<&str>,
) -> Result<crate::http::vault::VaultListing, ClientError> {
    let mut url = endpoint(server_url, "/v1/vaults");
    if let Some(after) = after {
        url.push_str(&format!("?after={after}"));
    }
    get_json(&url, token, "vault list")
}

/// Replaces a stored envelope with one resealed to the current keys
/// (`PUT /v1/encounters/{id}/vault/{envelope_id}`).
pub fn put_resealed(
    server_url: &str,
    token: &str,
    resealed: &auxilio_core::vault::SealedVault,
) -> Result<(), ClientError> {
    let url = endpoint(
        server_url,
        &format!(
            "/v1/encounters/{}/vault/{}",
            resealed.encounter,
            auxilio_core::vault::hex(&resealed.id)
        ),
    );
    let body = serde_json::to_vec(resealed).expect("serialisable");
    finish(
        &url,
        agent()
            .put(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(&body[..]),
    )?;
    Ok(())
}

/// Replaces the store's token with a new one from the server. The server keeps the old token
/// valid until the new one is first used, and the new one is saved before it is used, so a cut
/// at any point leaves the device with a token that works.
pub fn rotate_token(store: &mut DeviceStore) -> Result<WhoAmI, ClientError> {
    let mut enrolment = store.enrolment()?.ok_or(StoreError::NotEnrolled)?;
    let url = endpoint(&enrolment.server_url, "/v1/token/rotate");
    let body = finish(
        &url,
        agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {}", enrolment.token))
            .send_empty(),
    )?;
    let token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_string))
        .ok_or_else(|| ClientError::Server {
            status: 200,
            message: "the rotation answer has no token".into(),
        })?;
    enrolment.token = token;
    store.enrol(&enrolment)?;
    // The first use makes the new token the only one.
    whoami(&enrolment.server_url, &enrolment.token)
}

/// Registers this device's relay public key with its server (`POST /v1/relay-keys`) and keeps
/// the team's current relay keys the server answers with, so this phone can check teammates in
/// a relay out of signal. Returns how many keys the team has. [`sync`] calls it after each
/// successful sync.
pub fn refresh_relay_keys(store: &mut DeviceStore) -> Result<usize, ClientError> {
    let enrolment = store.enrolment()?.ok_or(StoreError::NotEnrolled)?;
    let key = store
        .relay_public_key()
        .map_err(|e| ClientError::RelayKeys(e.to_string()))?;
    let url = endpoint(&enrolment.server_url, "/v1/relay-keys");
    let body = serde_json::to_vec(&serde_json::json!({ "key": key })).expect("serialisable");
    let answer = finish(
        &url,
        agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {}", enrolment.token))
            .header("Content-Type", "application/json")
            .send(&body[..]),
    )?;
    let team: crate::http::relay_keys::TeamRelayKeys =
        serde_json::from_slice(&answer).map_err(|e| ClientError::Server {
            status: 200,
            message: format!("unexpected relay keys answer: {e}"),
        })?;
    store
        .set_team_relay_keys(&team.keys)
        .map_err(|e| ClientError::RelayKeys(e.to_string()))?;
    Ok(team.keys.len())
}

/// Syncs `store` with its server until nothing more is waiting either way; `progress` sees the
/// running figures after every round trip.
pub fn sync(
    store: &mut DeviceStore,
    progress: impl FnMut(&SyncReport),
) -> Result<SyncReport, ClientError> {
    sync_with(store, SyncOptions::default(), progress)
}

fn remember_lost_requests(
    store: &mut DeviceStore,
    in_doubt: &[(ByteBuf, u64)],
) -> Result<(), ClientError> {
    let lost: Vec<(Vec<u8>, u64)> = in_doubt
        .iter()
        .map(|(id, first)| (id.to_vec(), *first))
        .collect();
    Ok(store.set_lost_requests(&lost)?)
}

/// 16 random bytes naming one request (see [`protocol::SyncRequest::request_id`]).
fn random_request_id() -> Vec<u8> {
    let mut id = vec![0; 16];
    getrandom::fill(&mut id).expect("the operating system provides random bytes");
    id
}

/// How one request ended.
enum Exchange {
    /// The server answered with a response, whole or cut after its head: it committed the
    /// request, and says what it stored.
    Answered(Box<SyncResponse>),
    /// No usable answer (the connection failed or was cut before the head, or the server failed):
    /// the request's changes may or may not be stored.
    InDoubt(String),
    /// The server refused the request before reading it (429, over its rate limit): nothing of
    /// it was stored, and the same request may go again after `retry_after`.
    RateLimited {
        retry_after: Duration,
        message: String,
    },
    /// The server refused the request as too large (413: too many bytes, encounters or
    /// changes) before storing anything: the same changes go again in smaller pages.
    TooLarge(String),
}

/// The longest a sync waits on one 429 before trying again, whatever the server says: a phone
/// that just reached signal should not sit idle for long.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// A 429 asking to wait longer than this (a device's daily ceiling of new encounters, until the
/// next UTC day) ends the sync at once instead: the records stay on the device for a later one.
const LONGEST_WAIT_WITHIN_A_SYNC: Duration = Duration::from_secs(600);

/// How long a 429 asks to wait: its `Retry-After` in seconds (an HTTP date or nothing is taken
/// as one second). A sync waits at most [`MAX_RATE_LIMIT_WAIT`] at a time, and stops instead
/// when asked to wait past [`LONGEST_WAIT_WITHIN_A_SYNC`].
fn retry_after(headers: &ureq::http::HeaderMap) -> Duration {
    headers
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

/// Counts the bytes that cross the link while a response streams in.
struct CountingReader<'a, R> {
    inner: R,
    count: &'a mut u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.count += n as u64;
        Ok(n)
    }
}

fn exchange(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    body: &[u8],
    compressed: bool,
    bytes_down: &mut u64,
) -> Result<Exchange, ClientError> {
    let mut request = agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", MEDIA_TYPE);
    if compressed {
        request = request
            .header("Content-Encoding", CONTENT_ENCODING)
            .header("Accept-Encoding", CONTENT_ENCODING);
    }
    let mut response = match request.send(body) {
        Ok(response) => response,
        Err(err) => return Ok(Exchange::InDoubt(err.to_string())),
    };
    let status = response.status().as_u16();
    let wait = retry_after(response.headers());
    let deflated = response
        .headers()
        .get("Content-Encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(CONTENT_ENCODING));
    let reader = CountingReader {
        inner: response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .reader(),
        count: bytes_down,
    };
    if status != 200 {
        let mut text = Vec::new();
        let _ = reader.take(64 * 1024).read_to_end(&mut text);
        let message = error_message(&text);
        return match status {
            401 if wipe_ordered(&text) => Err(ClientError::WipeOrdered { message }),
            403 if body_says(&text, "awaiting_approval") => {
                Err(ClientError::AwaitingApproval { message })
            }
            401 | 403 => Err(ClientError::Unauthorized { status, message }),
            429 => Ok(Exchange::RateLimited {
                retry_after: wait,
                message,
            }),
            413 => Ok(Exchange::TooLarge(message)),
            // The server failed, or is restarting behind a proxy: worth another try.
            500..=599 => Ok(Exchange::InDoubt(format!(
                "the server answered {status}: {message}"
            ))),
            _ => Err(ClientError::Server { status, message }),
        };
    }
    let read = if deflated {
        // Inflated no further than an uncompressed body could be: a broken or hostile server
        // cannot make a small body fill the phone's memory.
        protocol::read_response(protocol::decompressing(reader).take(MAX_RESPONSE_BYTES))
    } else {
        protocol::read_response(reader)
    };
    match read {
        Ok(response) => Ok(Exchange::Answered(Box::new(response))),
        Err(ProtocolError::CutBeforeHead) => Ok(Exchange::InDoubt(
            "the response was cut off before its first part arrived".into(),
        )),
        Err(other) => Err(other.into()),
    }
}

/// [`sync`] with explicit options.
///
/// Each request commits on the server before its response is sent, so a sync cut at any byte
/// resumes where it left off: frames of a response that arrived whole are stored, and the next
/// request asks by id what became of a request whose response never came, so only a page that
/// never reached the server is sent again.
/// After a cut the page size halves, and it grows again with each whole exchange.
pub fn sync_with(
    store: &mut DeviceStore,
    options: SyncOptions,
    mut progress: impl FnMut(&SyncReport),
) -> Result<SyncReport, ClientError> {
    let enrolment = store.enrolment()?.ok_or(StoreError::NotEnrolled)?;
    let url = endpoint(&enrolment.server_url, "/v1/sync");
    let agent = agent();
    let max_page = options.max_page_bytes.max(1);
    let min_page = options.min_page_bytes.clamp(1, max_page);
    let mut page_bytes = max_page;
    // Lowered for the rest of the sync when the server answers 413 (its ceilings may be lower
    // than this build's defaults).
    let mut page_ceiling = max_page;
    let mut max_encounters = protocol::MAX_ENCOUNTERS_PER_REQUEST;
    let mut max_changes = protocol::MAX_CHANGES_PER_REQUEST;
    let mut report = SyncReport::default();
    let mut uploaded_up_to = 0;
    // Requests whose response never came: their ids, and the position of the first change they
    // carried. Kept in the store too, so a sync after the app was closed asks about them first.
    let mut in_doubt: Vec<(ByteBuf, u64)> = store
        .lost_requests()?
        .into_iter()
        .map(|(id, first)| (ByteBuf::from(id), first))
        .collect();
    let mut only_asking = !in_doubt.is_empty();
    // Changes the server asked for that this store has already sent in this sync.
    let mut wanted_sent: HashSet<ByteBuf> = HashSet::new();
    let mut wanted: Vec<EncounterChanges> = Vec::new();
    let mut failed_in_a_row = 0u32;
    // Sealed vaults the server answered for in this sync (stored or refused): each goes once.
    let mut vaults_answered: HashSet<ByteBuf> = HashSet::new();
    loop {
        let mut page = if only_asking {
            // Asks what became of the lost requests before walking the pending list, which would
            // otherwise send their pages again.
            let mut page = store.upload_page(u64::MAX, page_bytes)?;
            page.last = 0;
            page.more = true;
            page
        } else {
            store.upload_page_within(uploaded_up_to, page_bytes, max_encounters, max_changes)?
        };
        let request_id = ByteBuf::from(random_request_id());
        page.request.request_id = Some(request_id.clone());
        page.request.resume = in_doubt.iter().map(|(id, _)| id.clone()).collect();
        page.request.max_response_bytes = Some(page_bytes as u64);
        page.request.changes.extend(wanted.iter().cloned());
        // Vaults ride with the last page of changes, so their encounter reaches the server no
        // later than they do; the server stores them after the request's changes.
        let mut vaults_more = false;
        if !only_asking && !page.more {
            let (vaults, more) = store.vault_page(&vaults_answered, page_bytes)?;
            page.request.vaults = vaults;
            vaults_more = more;
        }
        let vault_ids: Vec<ByteBuf> = page.request.vaults.iter().map(|v| v.id.clone()).collect();
        let mut body = protocol::encode(&page.request);
        if options.compress {
            body = protocol::compress(&body);
        }
        report.bytes_up += body.len() as u64;
        report.round_trips += 1;
        let outcome = match exchange(
            &agent,
            &url,
            &enrolment.token,
            &body,
            options.compress,
            &mut report.bytes_down,
        ) {
            Err(ClientError::WipeOrdered { message }) => {
                let wiped = store.wipe()?;
                tracing::warn!(%message, encounters = wiped.encounters, unsynced = wiped.unsynced_changes, "device revoked: store wiped");
                return Err(ClientError::RevokedAndWiped { wiped });
            }
            other => other?,
        };
        let response = match outcome {
            Exchange::Answered(response) => *response,
            Exchange::RateLimited {
                retry_after,
                message,
            } => {
                // Refused before it was read: nothing is in doubt, and the same page goes again
                // at the same size once the server's wait is over.
                failed_in_a_row += 1;
                report.retries += 1;
                tracing::info!(%message, ?retry_after, attempt = failed_in_a_row, "sync request over the server's rate limit; waiting");
                if retry_after > LONGEST_WAIT_WITHIN_A_SYNC {
                    return Err(ClientError::Server {
                        status: 429,
                        message: format!(
                            "{message}; nothing on this device was lost, sync again in {} s",
                            retry_after.as_secs()
                        ),
                    });
                }
                let retry_after = retry_after.min(MAX_RATE_LIMIT_WAIT);
                if failed_in_a_row >= options.max_failed_attempts {
                    return Err(ClientError::Server {
                        status: 429,
                        message: format!(
                            "{message}; nothing on this device was lost, sync again later"
                        ),
                    });
                }
                std::thread::sleep(retry_after);
                progress(&report);
                continue;
            }
            Exchange::TooLarge(message) => {
                // Refused before anything was stored: the same changes go again, half as many
                // per page, and no later page of this sync grows past that.
                report.retries += 1;
                if page.sent.len() <= 1 && page_bytes <= min_page {
                    return Err(ClientError::Server {
                        status: 413,
                        message: format!(
                            "{message}; even one change per request is refused, so nothing more can be split: nothing on this device was lost"
                        ),
                    });
                }
                tracing::info!(%message, changes = page.sent.len(), page_bytes, "sync request too large for the server; splitting the page");
                max_changes = (page.sent.len() / 2).max(1);
                max_encounters = max_encounters.min(max_changes);
                page_ceiling = (page_bytes / 2).max(min_page);
                page_bytes = page_ceiling;
                progress(&report);
                continue;
            }
            Exchange::InDoubt(message) => {
                failed_in_a_row += 1;
                report.retries += 1;
                tracing::info!(%message, attempt = failed_in_a_row, page_bytes, "sync request cut off; retrying");
                // `wanted` is kept: it goes again with the next request.
                if let Some((first, _)) = page.sent.first() {
                    in_doubt.push((request_id, *first));
                }
                if in_doubt.len() > protocol::MAX_RESUMED {
                    // Too many to ask about: the oldest page goes again instead.
                    let (_, first) = in_doubt.remove(0);
                    page.last = page.last.min(first.saturating_sub(1));
                }
                remember_lost_requests(store, &in_doubt)?;
                if failed_in_a_row >= options.max_failed_attempts {
                    return Err(ClientError::Unreachable { url, message });
                }
                uploaded_up_to = page.last;
                page_bytes = (page_bytes / 2).max(min_page);
                let delay = options
                    .first_retry_delay
                    .saturating_mul(1 << (failed_in_a_row - 1).min(5))
                    .min(Duration::from_secs(8));
                std::thread::sleep(delay);
                progress(&report);
                continue;
            }
        };
        only_asking = false;
        let applied = store.apply_response(&response)?;
        vaults_answered.extend(vault_ids);
        report.vaults_uploaded += applied.vaults_acknowledged;
        report
            .vaults_rejected
            .extend(response.vaults_rejected.iter().cloned());
        report.uploaded += applied.acknowledged;
        report.downloaded += applied.downloaded;
        report.dropped += applied.dropped;
        report.vaults_dropped += applied.vaults_dropped;
        // Pages of requests that never reached the server go again, from the earliest of them.
        uploaded_up_to = in_doubt
            .iter()
            .filter(|(id, _)| !response.resumed.contains(id))
            .map(|(_, first)| first.saturating_sub(1))
            .fold(page.last, u64::min);
        if !in_doubt.is_empty() {
            in_doubt.clear();
            remember_lost_requests(store, &in_doubt)?;
        }
        // A reused actor is mended by the store itself (it re-makes its edits), and a purged
        // encounter was dropped (counted in `dropped`): neither is a refusal to report.
        for rejection in applied
            .rejected
            .into_iter()
            .filter(|r| r.reason != RejectReason::ActorReused && r.reason != RejectReason::Purged)
        {
            if !report
                .rejected
                .iter()
                .any(|r| r.encounter == rejection.encounter)
            {
                report.rejected.push(rejection);
            }
        }
        let hash_of = |bytes: &ByteBuf| {
            Change::from_bytes(bytes.to_vec())
                .map(|change| ByteBuf::from(change.hash().0.to_vec()))
                .ok()
        };
        for group in wanted.drain(..) {
            wanted_sent.extend(group.changes.iter().filter_map(hash_of));
        }
        // Each wanted change is sent once per sync: if the server still lacks it afterwards, it
        // could not use it, and sending it again would loop.
        wanted = store.wanted_changes(&response.wanted)?;
        for group in &mut wanted {
            group
                .changes
                .retain(|change| hash_of(change).is_some_and(|hash| !wanted_sent.contains(&hash)));
        }
        wanted.retain(|group| !group.changes.is_empty());
        report.pending = store.pending_count()?;
        report.vaults_pending = store.vault_outbox()?.len() as u64;
        progress(&report);
        if response.complete {
            failed_in_a_row = 0;
            page_bytes = page_bytes.saturating_mul(2).min(page_ceiling);
        } else {
            // Cut after the head: what arrived whole is stored; smaller pages get through more often.
            report.retries += 1;
            page_bytes = (page_bytes / 2).max(min_page);
            if response.changes.is_empty() {
                failed_in_a_row += 1;
                if failed_in_a_row >= options.max_failed_attempts {
                    return Err(ClientError::Unreachable {
                        url,
                        message: "every response was cut off".into(),
                    });
                }
            } else {
                failed_in_a_row = 0;
            }
        }
        // A restarted response made the store offer its own changes again: one more round
        // sends them.
        let store_asks_again = applied.actor_renewed || applied.rebased > 0;
        if response.complete
            && !response.more
            && !page.more
            && !vaults_more
            && !response.restarted
            && !store_asks_again
            && wanted.is_empty()
            && uploaded_up_to >= page.last
        {
            // A failure here loses nothing: the relay keys stay as they were until next sync.
            if let Err(err) = refresh_relay_keys(store) {
                tracing::warn!(%err, "could not refresh the team's relay keys; relays use the ones from the last sync");
            }
            return Ok(report);
        }
        if report.round_trips >= MAX_ROUND_TRIPS {
            return Err(ClientError::Stuck(report.round_trips));
        }
    }
}
