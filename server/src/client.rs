//! The device side of the HTTP transport: runs sync protocol v2 rounds between a
//! [`DeviceStore`] and a server, and asks the server who a token belongs to. The protection
//! officer's vault calls (fetch, list, put a resealed envelope) are here too: they move
//! ciphertext only, and decrypting is the caller's, on the officer's machine.
//!
//! Core's [`SyncSession`] decides every request, retry and wait of a sync; this module only moves
//! its bytes and sleeps when it says so, so the phone app can swap it for its own transport.

use std::io::Read;
use std::time::Duration;

use auxilio_core::DeviceStore;
use auxilio_core::protocol::{CONTENT_ENCODING, MEDIA_TYPE, ProtocolError};
use auxilio_core::session::{self, MAX_RESPONSE_BYTES, Next, Reply, SessionError, SyncSession};
use auxilio_core::store::{StoreError, Wiped};
use serde::{Deserialize, Serialize};

use crate::directory::Role;

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

/// Figures of one `sync` (printed as one JSON line by `auxilio device sync`), and how a sync
/// behaves: both belong to the core session this module drives.
pub use auxilio_core::session::{SyncOptions, SyncReport};

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

fn error_message(body: &[u8]) -> String {
    session::refusal_message(body)
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
    let body =
        session::relay_keys_request(store).map_err(|e| ClientError::RelayKeys(e.to_string()))?;
    let url = endpoint(&enrolment.server_url, "/v1/relay-keys");
    let answer = finish(
        &url,
        agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {}", enrolment.token))
            .header("Content-Type", "application/json")
            .send(&body[..]),
    )?;
    session::apply_relay_keys(store, &answer).map_err(|e| match e {
        session::RelayKeysError::Answer(message) => ClientError::Server {
            status: 200,
            message: format!("unexpected relay keys answer: {message}"),
        },
        other => ClientError::RelayKeys(other.to_string()),
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

/// What came back for one POST, owned until the session has read it.
enum Posted {
    Failed(String),
    Answered {
        status: u16,
        body: Vec<u8>,
        content_encoding: Option<String>,
        retry_after: Option<String>,
    },
}

impl Posted {
    fn reply(&self) -> Reply<'_> {
        match self {
            Posted::Failed(message) => Reply::Failed { message },
            Posted::Answered {
                status,
                body,
                content_encoding,
                retry_after,
            } => Reply::Answered {
                status: *status,
                body,
                content_encoding: content_encoding.as_deref(),
                retry_after: retry_after.as_deref(),
            },
        }
    }
}

/// POSTs `body` to `url` and reads what comes back: the bytes that arrived before a cut are kept.
fn post(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
    compressed: bool,
) -> Posted {
    let mut request = agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", content_type);
    if compressed {
        request = request
            .header("Content-Encoding", CONTENT_ENCODING)
            .header("Accept-Encoding", CONTENT_ENCODING);
    }
    let mut response = match request.send(body) {
        Ok(response) => response,
        Err(err) => return Posted::Failed(err.to_string()),
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_encoding = header("Content-Encoding");
    let retry_after = header("Retry-After");
    let mut received = Vec::new();
    // A cut or a timeout keeps what arrived before it: the session uses every whole frame.
    let _ = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .reader()
        .read_to_end(&mut received);
    Posted::Answered {
        status: response.status().as_u16(),
        body: received,
        content_encoding,
        retry_after,
    }
}

/// A session's error in the words of this transport and of the `auxilio` CLI.
fn client_error(err: SessionError, url: &str) -> ClientError {
    match err {
        SessionError::RevokedAndWiped { wiped, .. } => ClientError::RevokedAndWiped { wiped },
        SessionError::AwaitingApproval { message } => ClientError::AwaitingApproval { message },
        SessionError::Unauthorized { status, message } => {
            ClientError::Unauthorized { status, message }
        }
        SessionError::Refused { status, message } => ClientError::Server { status, message },
        SessionError::GaveUp { message } => ClientError::Unreachable {
            url: url.to_string(),
            message,
        },
        SessionError::Protocol(err) => ClientError::Protocol(err),
        SessionError::Store(err) => ClientError::Store(err),
        SessionError::Stuck(round_trips) => ClientError::Stuck(round_trips),
    }
}

/// [`sync`] with explicit options: drives a core [`SyncSession`], which decides every request,
/// retry and wait; this only moves its bytes over HTTP and sleeps when it says so.
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
    let mut session = SyncSession::new(store, options).map_err(|e| client_error(e, &url))?;
    loop {
        match session.next(store).map_err(|e| client_error(e, &url))? {
            Next::Sync(request) => {
                let posted = post(
                    &agent,
                    &url,
                    &enrolment.token,
                    MEDIA_TYPE,
                    &request.body,
                    request.compressed,
                );
                session
                    .receive(store, posted.reply())
                    .map_err(|e| client_error(e, &url))?;
                progress(session.report());
            }
            Next::Wait(delay) => std::thread::sleep(delay),
            Next::RefreshRelayKeys(body) => {
                let keys_url = endpoint(&enrolment.server_url, "/v1/relay-keys");
                let answer = match post(
                    &agent,
                    &keys_url,
                    &enrolment.token,
                    "application/json",
                    &body,
                    false,
                ) {
                    Posted::Answered {
                        status: 200..=299,
                        body,
                        ..
                    } => Ok(body),
                    Posted::Answered { status, body, .. } => Err(format!(
                        "the server answered {status}: {}",
                        error_message(&body)
                    )),
                    Posted::Failed(message) => Err(message),
                };
                session.relay_keys_answered(store, answer.as_deref().map_err(Clone::clone));
            }
            Next::Done => return Ok(session.into_report()),
        }
    }
}
