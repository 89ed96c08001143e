//! The device's half of a sync, with no I/O: a state machine that decides every request of a sync
//! and what each answer means, in the style of Automerge's `sync::State`.
//!
//! The app (its transport: `ureq`, OkHttp, URLSession, `fetch`) drives it:
//!
//! ```text
//! let mut session = SyncSession::new(&store, SyncOptions::default())?;
//! loop {
//!     match session.next(&mut store)? {
//!         Next::Sync(request) => {   // POST /v1/sync with request.body (see SyncRequestBody)
//!             let reply = /* the HTTP status, headers and body bytes that arrived, or a failure */;
//!             session.receive(&mut store, reply)?;
//!         }
//!         Next::Wait(delay) => /* sleep `delay`, then ask again */,
//!         Next::RefreshRelayKeys(body) => { // POST /v1/relay-keys with this JSON body
//!             session.relay_keys_answered(&mut store, /* the answer's body, or a failure */);
//!         }
//!         Next::Done => break,
//!     }
//! }
//! ```
//!
//! It opens no socket, reads no clock and never sleeps: it says how long to wait. Everything a
//! sync decides is here: the size of each page (halved after a cut, doubled after a whole
//! exchange, split further after a 413), asking by id about requests whose answer never came
//! (kept in the store, so a sync started after the app was closed asks first), sending each change
//! the server wants once, vaults riding with the last page, the end condition, retries and their
//! back-off, 429 waits (and stopping when the wait is a daily ceiling), wiping a revoked store,
//! and refreshing the team's relay keys once the sync is done.

use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

use automerge::Change;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::protocol::{
    self, CONTENT_ENCODING, EncounterChanges, ProtocolError, RejectReason, Rejection, SyncResponse,
    VaultRejection,
};
use crate::relay_auth::{RelayKeyRegistration, TeamRelayKeys};
use crate::store::{DeviceStore, StoreError, UploadPage, Wiped};

/// A response larger than this is refused rather than read into memory (the transport stops
/// reading there; the session inflates no further than this).
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// A sync that needs more round trips than this is stuck, not slow.
pub const MAX_ROUND_TRIPS: u32 = 100_000;
/// The longest a sync waits on one 429 before trying again, whatever the server says: a phone
/// that just reached signal should not sit idle for long.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// A 429 asking to wait longer than this (a device's daily ceiling of new encounters, until the
/// next UTC day) ends the sync at once instead: the records stay on the device for a later one.
pub const LONGEST_WAIT_WITHIN_A_SYNC: Duration = Duration::from_secs(600);
/// The longest wait between two failed attempts.
const LONGEST_RETRY_DELAY: Duration = Duration::from_secs(8);
/// How much of a refusal's body is read for its message.
const REFUSAL_BODY_BYTES: usize = 64 * 1024;

/// Why a sync ended without finishing. Texts say what happened, never which command to run:
/// that is the app's to add.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The server said this device is revoked and must erase its data; the session has done so.
    #[error("this device was revoked ({message}); its store was erased as the server instructed")]
    RevokedAndWiped { wiped: Wiped, message: String },
    /// The device awaits approval by a team lead of its team: nothing was sent or received.
    #[error("{message}")]
    AwaitingApproval { message: String },
    #[error("the server refused the token ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    /// The server refused in a way another try in this sync cannot mend.
    #[error("the server answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// Too many failed attempts in a row: the link is down, or cuts every exchange.
    #[error("gave up after too many failed attempts: {message}")]
    GaveUp { message: String },
    #[error("the server's answer was not understood: {0}")]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sync did not finish after {0} round trips")]
    Stuck(u32),
}

/// Figures of one sync.
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

/// What the app does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// POST this request to the server's `/v1/sync`, then hand what came back to
    /// [`SyncSession::receive`].
    Sync(SyncRequestBody),
    /// Wait this long (the link failed, or the server asked to), then call `next` again.
    Wait(Duration),
    /// The sync is done: POST this JSON body to `/v1/relay-keys` and hand the answer to
    /// [`SyncSession::relay_keys_answered`] (a failure there loses nothing).
    RefreshRelayKeys(Vec<u8>),
    /// The sync is done; [`SyncSession::report`] has its figures.
    Done,
}

/// One sync request as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequestBody {
    /// Sent with `Content-Type: `[`protocol::MEDIA_TYPE`].
    pub body: Vec<u8>,
    /// The body is deflated: send `Content-Encoding` and `Accept-Encoding`
    /// [`CONTENT_ENCODING`].
    pub compressed: bool,
}

/// What came back for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// No HTTP status arrived: the connection was refused, cut while uploading or before the
    /// status line, or timed out. The request's changes may or may not be stored.
    Failed { message: &'a str },
    /// An HTTP status arrived, with the body bytes that followed it: all of them, or those that
    /// came before the connection was cut or timed out.
    Answered {
        status: u16,
        body: &'a [u8],
        /// The `Content-Encoding` header.
        content_encoding: Option<&'a str>,
        /// The `Retry-After` header.
        retry_after: Option<&'a str>,
    },
}

/// The request in flight.
#[derive(Debug)]
struct InFlight {
    page: UploadPage,
    request_id: ByteBuf,
    vault_ids: Vec<ByteBuf>,
    vaults_more: bool,
}

/// Where the session stands between two calls.
#[derive(Debug)]
enum State {
    /// The next request is due.
    Ready,
    /// A request is on the wire.
    Sent(Box<InFlight>),
    /// Waiting before the next request.
    Waiting(Duration),
    RefreshRelayKeys,
    RelayKeysSent,
    Done,
}

/// The state of one sync (see the module documentation).
#[derive(Debug)]
pub struct SyncSession {
    options: SyncOptions,
    min_page: usize,
    page_bytes: usize,
    /// Lowered for the rest of the sync when the server answers 413 (its ceilings may be lower
    /// than this build's defaults).
    page_ceiling: usize,
    max_encounters: usize,
    max_changes: usize,
    report: SyncReport,
    uploaded_up_to: u64,
    /// Requests whose response never came: their ids, and the position of the first change they
    /// carried. Kept in the store too, so a sync after the app was closed asks about them first.
    in_doubt: Vec<(ByteBuf, u64)>,
    only_asking: bool,
    /// Changes the server asked for that this store has already sent in this sync.
    wanted_sent: HashSet<ByteBuf>,
    wanted: Vec<EncounterChanges>,
    failed_in_a_row: u32,
    /// Sealed vaults the server answered for in this sync (stored or refused): each goes once.
    vaults_answered: HashSet<ByteBuf>,
    state: State,
}

impl SyncSession {
    /// A new sync of `store`, which must be enrolled; requests whose answer was lost in an
    /// earlier sync are asked about first.
    pub fn new(store: &DeviceStore, options: SyncOptions) -> Result<Self, SessionError> {
        store.enrolment()?.ok_or(StoreError::NotEnrolled)?;
        let max_page = options.max_page_bytes.max(1);
        let in_doubt: Vec<(ByteBuf, u64)> = store
            .lost_requests()?
            .into_iter()
            .map(|(id, first)| (ByteBuf::from(id), first))
            .collect();
        Ok(Self {
            options,
            min_page: options.min_page_bytes.clamp(1, max_page),
            page_bytes: max_page,
            page_ceiling: max_page,
            max_encounters: protocol::MAX_ENCOUNTERS_PER_REQUEST,
            max_changes: protocol::MAX_CHANGES_PER_REQUEST,
            report: SyncReport::default(),
            uploaded_up_to: 0,
            only_asking: !in_doubt.is_empty(),
            in_doubt,
            wanted_sent: HashSet::new(),
            wanted: Vec::new(),
            failed_in_a_row: 0,
            vaults_answered: HashSet::new(),
            state: State::Ready,
        })
    }

    /// The figures so far.
    pub fn report(&self) -> &SyncReport {
        &self.report
    }

    pub fn into_report(self) -> SyncReport {
        self.report
    }

    /// The size of the next page, in bytes of changes.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// Whether the sync has finished.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// What the app does next. Called while a request is still on the wire (its answer never
    /// handed to [`Self::receive`]), the session takes that answer as lost and goes on from there.
    pub fn next(&mut self, store: &mut DeviceStore) -> Result<Next, SessionError> {
        match std::mem::replace(&mut self.state, State::Ready) {
            State::Ready => self.next_request(store).map(Next::Sync),
            State::Waiting(delay) => Ok(Next::Wait(delay)),
            State::RefreshRelayKeys => match relay_keys_request(store) {
                Ok(body) => {
                    self.state = State::RelayKeysSent;
                    Ok(Next::RefreshRelayKeys(body))
                }
                Err(err) => {
                    tracing::warn!(%err, "could not refresh the team's relay keys; relays use the ones from the last sync");
                    self.state = State::Done;
                    Ok(Next::Done)
                }
            },
            State::Done | State::RelayKeysSent => {
                self.state = State::Done;
                Ok(Next::Done)
            }
            State::Sent(in_flight) => {
                // The answer never came back to the session: treat it as lost.
                self.state = State::Sent(in_flight);
                self.receive(
                    store,
                    Reply::Failed {
                        message: "the app asked for a new request before answering the last one",
                    },
                )?;
                self.next(store)
            }
        }
    }

    fn next_request(&mut self, store: &mut DeviceStore) -> Result<SyncRequestBody, SessionError> {
        let mut page = if self.only_asking {
            // Asks what became of the lost requests before walking the pending list, which would
            // otherwise send their pages again.
            let mut page = store.upload_page(u64::MAX, self.page_bytes)?;
            page.last = 0;
            page.more = true;
            page
        } else {
            store.upload_page_within(
                self.uploaded_up_to,
                self.page_bytes,
                self.max_encounters,
                self.max_changes,
            )?
        };
        let request_id = ByteBuf::from(random_request_id());
        page.request.request_id = Some(request_id.clone());
        page.request.resume = self.in_doubt.iter().map(|(id, _)| id.clone()).collect();
        page.request.max_response_bytes = Some(self.page_bytes as u64);
        page.request.changes.extend(self.wanted.iter().cloned());
        // Vaults ride with the last page of changes, so their encounter reaches the server no
        // later than they do; the server stores them after the request's changes.
        let mut vaults_more = false;
        if !self.only_asking && !page.more {
            let (vaults, more) = store.vault_page(&self.vaults_answered, self.page_bytes)?;
            page.request.vaults = vaults;
            vaults_more = more;
        }
        let vault_ids = page.request.vaults.iter().map(|v| v.id.clone()).collect();
        let mut body = protocol::encode(&page.request);
        if self.options.compress {
            body = protocol::compress(&body);
        }
        self.report.bytes_up += body.len() as u64;
        self.report.round_trips += 1;
        self.state = State::Sent(Box::new(InFlight {
            page,
            request_id,
            vault_ids,
            vaults_more,
        }));
        Ok(SyncRequestBody {
            body,
            compressed: self.options.compress,
        })
    }

    /// Hands the session what came back for the request [`Self::next`] gave. An error ends the
    /// sync (a revoked device's store is wiped first); otherwise call `next` again.
    pub fn receive(
        &mut self,
        store: &mut DeviceStore,
        reply: Reply<'_>,
    ) -> Result<(), SessionError> {
        let outcome = self.take_reply(store, reply);
        if outcome.is_err() {
            // An ended sync sends nothing more, whatever the app asks.
            self.state = State::Done;
        }
        outcome
    }

    fn take_reply(
        &mut self,
        store: &mut DeviceStore,
        reply: Reply<'_>,
    ) -> Result<(), SessionError> {
        let State::Sent(in_flight) = std::mem::replace(&mut self.state, State::Ready) else {
            // Nothing was asked: nothing to learn.
            return Ok(());
        };
        let (status, body, content_encoding, retry_after) = match reply {
            Reply::Failed { message } => return self.in_doubt(store, *in_flight, message.into()),
            Reply::Answered {
                status,
                body,
                content_encoding,
                retry_after,
            } => (status, body, content_encoding, retry_after),
        };
        self.report.bytes_down += body.len() as u64;
        if status != 200 {
            return self.refused(store, *in_flight, status, body, retry_after);
        }
        let deflated =
            content_encoding.is_some_and(|v| v.trim().eq_ignore_ascii_case(CONTENT_ENCODING));
        let read = if deflated {
            // Inflated no further than an uncompressed body could be: a broken or hostile server
            // cannot make a small body fill the phone's memory.
            protocol::read_response(protocol::decompressing(body).take(MAX_RESPONSE_BYTES))
        } else {
            protocol::read_response(body)
        };
        match read {
            Ok(response) => self.answered(store, *in_flight, &response),
            Err(ProtocolError::CutBeforeHead) => self.in_doubt(
                store,
                *in_flight,
                "the response was cut off before its first part arrived".into(),
            ),
            Err(other) => Err(other.into()),
        }
    }

    /// A refusal (any status but 200).
    fn refused(
        &mut self,
        store: &mut DeviceStore,
        in_flight: InFlight,
        status: u16,
        body: &[u8],
        retry_after: Option<&str>,
    ) -> Result<(), SessionError> {
        let body = &body[..body.len().min(REFUSAL_BODY_BYTES)];
        let message = refusal_message(body);
        match status {
            401 if refusal_says(body, "wipe") => {
                let wiped = store.wipe()?;
                tracing::warn!(%message, encounters = wiped.encounters, unsynced = wiped.unsynced_changes, "device revoked: store wiped");
                Err(SessionError::RevokedAndWiped { wiped, message })
            }
            403 if refusal_says(body, "awaiting_approval") => {
                Err(SessionError::AwaitingApproval { message })
            }
            401 | 403 => Err(SessionError::Unauthorized { status, message }),
            429 => self.rate_limited(parse_retry_after(retry_after), message),
            413 => self.too_large(&in_flight, message),
            // The server failed, or is restarting behind a proxy: worth another try.
            500..=599 => self.in_doubt(
                store,
                in_flight,
                format!("the server answered {status}: {message}"),
            ),
            _ => Err(SessionError::Refused { status, message }),
        }
    }

    /// 429: refused before it was read, so nothing is in doubt, and the same page goes again at
    /// the same size once the server's wait is over.
    fn rate_limited(&mut self, retry_after: Duration, message: String) -> Result<(), SessionError> {
        self.failed_in_a_row += 1;
        self.report.retries += 1;
        tracing::info!(%message, ?retry_after, attempt = self.failed_in_a_row, "sync request over the server's rate limit; waiting");
        if retry_after > LONGEST_WAIT_WITHIN_A_SYNC {
            return Err(SessionError::Refused {
                status: 429,
                message: format!(
                    "{message}; nothing on this device was lost, sync again in {} s",
                    retry_after.as_secs()
                ),
            });
        }
        if self.failed_in_a_row >= self.options.max_failed_attempts {
            return Err(SessionError::Refused {
                status: 429,
                message: format!("{message}; nothing on this device was lost, sync again later"),
            });
        }
        self.state = State::Waiting(retry_after.min(MAX_RATE_LIMIT_WAIT));
        Ok(())
    }

    /// 413: refused before anything was stored; the same changes go again, half as many per
    /// page, and no later page of this sync grows past that.
    fn too_large(&mut self, in_flight: &InFlight, message: String) -> Result<(), SessionError> {
        self.report.retries += 1;
        let changes = in_flight.page.sent.len();
        if changes <= 1 && self.page_bytes <= self.min_page {
            return Err(SessionError::Refused {
                status: 413,
                message: format!(
                    "{message}; even one change per request is refused, so nothing more can be split: nothing on this device was lost"
                ),
            });
        }
        tracing::info!(%message, changes, page_bytes = self.page_bytes, "sync request too large for the server; splitting the page");
        self.max_changes = (changes / 2).max(1);
        self.max_encounters = self.max_encounters.min(self.max_changes);
        self.page_ceiling = (self.page_bytes / 2).max(self.min_page);
        self.page_bytes = self.page_ceiling;
        Ok(())
    }

    /// No usable answer: the request's changes may or may not be stored. Its id is asked about
    /// in the next request, the page halves, and the next try waits longer than the last.
    fn in_doubt(
        &mut self,
        store: &mut DeviceStore,
        in_flight: InFlight,
        message: String,
    ) -> Result<(), SessionError> {
        let InFlight {
            mut page,
            request_id,
            ..
        } = in_flight;
        self.failed_in_a_row += 1;
        self.report.retries += 1;
        tracing::info!(%message, attempt = self.failed_in_a_row, page_bytes = self.page_bytes, "sync request cut off; retrying");
        // `wanted` is kept: it goes again with the next request.
        if let Some((first, _)) = page.sent.first() {
            self.in_doubt.push((request_id, *first));
        }
        if self.in_doubt.len() > protocol::MAX_RESUMED {
            // Too many to ask about: the oldest page goes again instead.
            let (_, first) = self.in_doubt.remove(0);
            page.last = page.last.min(first.saturating_sub(1));
        }
        self.remember_lost_requests(store)?;
        if self.failed_in_a_row >= self.options.max_failed_attempts {
            return Err(SessionError::GaveUp { message });
        }
        self.uploaded_up_to = page.last;
        self.page_bytes = (self.page_bytes / 2).max(self.min_page);
        let delay = self
            .options
            .first_retry_delay
            .saturating_mul(1 << (self.failed_in_a_row - 1).min(5))
            .min(LONGEST_RETRY_DELAY);
        self.state = State::Waiting(delay);
        Ok(())
    }

    /// A response, whole or cut after its head: the server committed the request and says what
    /// it stored.
    fn answered(
        &mut self,
        store: &mut DeviceStore,
        in_flight: InFlight,
        response: &SyncResponse,
    ) -> Result<(), SessionError> {
        let InFlight {
            page,
            vault_ids,
            vaults_more,
            ..
        } = in_flight;
        self.only_asking = false;
        let applied = store.apply_response(response)?;
        self.vaults_answered.extend(vault_ids);
        let report = &mut self.report;
        report.vaults_uploaded += applied.vaults_acknowledged;
        report
            .vaults_rejected
            .extend(response.vaults_rejected.iter().cloned());
        report.uploaded += applied.acknowledged;
        report.downloaded += applied.downloaded;
        report.dropped += applied.dropped;
        report.vaults_dropped += applied.vaults_dropped;
        // Pages of requests that never reached the server go again, from the earliest of them.
        self.uploaded_up_to = self
            .in_doubt
            .iter()
            .filter(|(id, _)| !response.resumed.contains(id))
            .map(|(_, first)| first.saturating_sub(1))
            .fold(page.last, u64::min);
        if !self.in_doubt.is_empty() {
            self.in_doubt.clear();
            self.remember_lost_requests(store)?;
        }
        // A reused actor is mended by the store itself (it re-makes its edits), and a purged
        // encounter was dropped (counted in `dropped`): neither is a refusal to report.
        for rejection in applied
            .rejected
            .into_iter()
            .filter(|r| r.reason != RejectReason::ActorReused && r.reason != RejectReason::Purged)
        {
            if !self
                .report
                .rejected
                .iter()
                .any(|r| r.encounter == rejection.encounter)
            {
                self.report.rejected.push(rejection);
            }
        }
        for group in self.wanted.drain(..) {
            self.wanted_sent
                .extend(group.changes.iter().filter_map(change_hash));
        }
        // Each wanted change is sent once per sync: if the server still lacks it afterwards, it
        // could not use it, and sending it again would loop.
        self.wanted = store.wanted_changes(&response.wanted)?;
        for group in &mut self.wanted {
            group.changes.retain(|change| {
                change_hash(change).is_some_and(|hash| !self.wanted_sent.contains(&hash))
            });
        }
        self.wanted.retain(|group| !group.changes.is_empty());
        self.report.pending = store.pending_count()?;
        self.report.vaults_pending = store.vault_outbox()?.len() as u64;
        if response.complete {
            self.failed_in_a_row = 0;
            self.page_bytes = self.page_bytes.saturating_mul(2).min(self.page_ceiling);
        } else {
            // Cut after the head: what arrived whole is stored; smaller pages get through more
            // often.
            self.report.retries += 1;
            self.page_bytes = (self.page_bytes / 2).max(self.min_page);
            if response.changes.is_empty() {
                self.failed_in_a_row += 1;
                if self.failed_in_a_row >= self.options.max_failed_attempts {
                    return Err(SessionError::GaveUp {
                        message: "every response was cut off".into(),
                    });
                }
            } else {
                self.failed_in_a_row = 0;
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
            && self.wanted.is_empty()
            && self.uploaded_up_to >= page.last
        {
            self.state = State::RefreshRelayKeys;
            return Ok(());
        }
        if self.report.round_trips >= MAX_ROUND_TRIPS {
            return Err(SessionError::Stuck(self.report.round_trips));
        }
        Ok(())
    }

    /// Hands the session the answer to [`Next::RefreshRelayKeys`]: the body of a 200, or what
    /// went wrong. A failure loses nothing: the relay keys stay as they were until next sync.
    pub fn relay_keys_answered(&mut self, store: &mut DeviceStore, answer: Result<&[u8], String>) {
        self.state = State::Done;
        let outcome = answer.and_then(|body| {
            apply_relay_keys(store, body)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        if let Err(err) = outcome {
            tracing::warn!(%err, "could not refresh the team's relay keys; relays use the ones from the last sync");
        }
    }

    fn remember_lost_requests(&self, store: &mut DeviceStore) -> Result<(), SessionError> {
        let lost: Vec<(Vec<u8>, u64)> = self
            .in_doubt
            .iter()
            .map(|(id, first)| (id.to_vec(), *first))
            .collect();
        Ok(store.set_lost_requests(&lost)?)
    }
}

/// Why the team's relay keys could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RelayKeysError {
    #[error("{0}")]
    Keys(#[from] crate::relay_auth::RelayAuthError),
    #[error("unexpected relay keys answer: {0}")]
    Answer(String),
}

/// The JSON body of `POST /v1/relay-keys`: this device's relay public key.
pub fn relay_keys_request(store: &mut DeviceStore) -> Result<Vec<u8>, RelayKeysError> {
    let key = store.relay_public_key()?;
    Ok(serde_json::to_vec(&RelayKeyRegistration { key }).expect("serialisable"))
}

/// Keeps the team's relay keys from the answer to `POST /v1/relay-keys`; returns how many the
/// team has.
pub fn apply_relay_keys(store: &mut DeviceStore, answer: &[u8]) -> Result<usize, RelayKeysError> {
    let team: TeamRelayKeys =
        serde_json::from_slice(answer).map_err(|e| RelayKeysError::Answer(e.to_string()))?;
    store.set_team_relay_keys(&team.keys)?;
    Ok(team.keys.len())
}

/// The `error` of a JSON refusal, or the start of the body as text.
pub fn refusal_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

/// Whether a refusal's body sets `flag` to true: `wipe` (the device was revoked and must erase
/// its store) or `awaiting_approval` (it waits for its team lead).
pub fn refusal_says(body: &[u8], flag: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get(flag).and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

/// How long a 429 asks to wait: its `Retry-After` in seconds (an HTTP date or nothing is taken
/// as one second).
fn parse_retry_after(header: Option<&str>) -> Duration {
    header
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

fn change_hash(bytes: &ByteBuf) -> Option<ByteBuf> {
    Change::from_bytes(bytes.to_vec())
        .map(|change| ByteBuf::from(change.hash().0.to_vec()))
        .ok()
}

/// 16 random bytes naming one request (see [`protocol::SyncRequest::request_id`]).
fn random_request_id() -> Vec<u8> {
    let mut id = vec![0; 16];
    getrandom::fill(&mut id).expect("the operating system provides random bytes");
    id
}

#[cfg(test)]
mod tests {
    //! The test plays the server: it reads each request and answers with hand-made responses.
    use super::*;
    use crate::protocol::{PurgeKind, PurgeNotice, ResponseFrame, SyncRequest};
    use crate::store::test_support::{enrolled_store, response};
    use crate::{Encounter, EncounterId};

    fn example() -> Encounter {
        serde_json::from_str(r#"{"services":["rescue"],"counts":{"m":{"18-59":2}}}"#).unwrap()
    }

    /// Small pages and no waiting worth the name, uncompressed so requests read plainly.
    fn options() -> SyncOptions {
        SyncOptions {
            max_page_bytes: 64 * 1024,
            min_page_bytes: 4 * 1024,
            compress: false,
            max_failed_attempts: 10,
            first_retry_delay: Duration::from_millis(250),
        }
    }

    /// A phone with `encounters` logged offline, and a new sync of it.
    fn phone(encounters: usize) -> (tempfile::TempDir, DeviceStore, SyncSession) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled_store(&dir, "phone.db", "sonora");
        for _ in 0..encounters {
            store.log(example()).unwrap();
        }
        let session = SyncSession::new(&store, options()).unwrap();
        (dir, store, session)
    }

    /// The next request, which must be a sync request, as the server reads it.
    fn request(session: &mut SyncSession, store: &mut DeviceStore) -> SyncRequest {
        match session.next(store).unwrap() {
            Next::Sync(request) => {
                let body = if request.compressed {
                    protocol::decompress(&request.body, usize::MAX).unwrap()
                } else {
                    request.body
                };
                protocol::decode_request(&body).unwrap()
            }
            other => panic!("expected a sync request, got {other:?}"),
        }
    }

    fn hashes(request: &SyncRequest) -> Vec<ByteBuf> {
        request
            .changes
            .iter()
            .flat_map(|group| group.changes.iter())
            .map(|change| change_hash(change).unwrap())
            .collect()
    }

    /// The server stored every change of `request` (and had committed every request it asks
    /// about), and has nothing to send.
    fn stored_all(request: &SyncRequest) -> SyncResponse {
        let mut answer = response(hashes(request), None, request.cursor);
        answer.resumed = request.resume.clone();
        answer
    }

    fn answer(session: &mut SyncSession, store: &mut DeviceStore, answer: &SyncResponse) {
        let body = protocol::encode_response(answer);
        session.receive(store, ok(&body)).unwrap();
    }

    fn ok(body: &[u8]) -> Reply<'_> {
        Reply::Answered {
            status: 200,
            body,
            content_encoding: None,
            retry_after: None,
        }
    }

    /// The request went out and nothing came back: a cut, a refusal to connect, a timeout.
    fn fail(session: &mut SyncSession, store: &mut DeviceStore, message: &str) {
        session.receive(store, Reply::Failed { message }).unwrap();
    }

    /// Plays the end of a sync: the relay keys cannot be refreshed here, which loses nothing.
    fn finish(session: &mut SyncSession, store: &mut DeviceStore) {
        assert!(matches!(
            session.next(store).unwrap(),
            Next::RefreshRelayKeys(_)
        ));
        session.relay_keys_answered(store, Err("no signal".into()));
        assert_eq!(session.next(store).unwrap(), Next::Done);
        assert!(session.is_done());
    }

    #[test]
    fn a_request_cut_mid_upload_is_asked_about_then_its_page_goes_again_after_a_wait() {
        let (_dir, mut store, mut session) = phone(1);
        let first = request(&mut session, &mut store);
        assert_eq!(hashes(&first).len(), 1);
        fail(
            &mut session,
            &mut store,
            "connection reset while sending the body",
        );
        assert_eq!(
            session.next(&mut store).unwrap(),
            Next::Wait(Duration::from_millis(250))
        );
        // The next request asks what became of the cut one instead of sending its page again.
        let asking = request(&mut session, &mut store);
        assert_eq!(asking.resume, vec![first.request_id.clone().unwrap()]);
        assert!(asking.changes.is_empty());
        // The server never saw it: the page goes again.
        answer(&mut session, &mut store, &response(vec![], None, 0));
        let again = request(&mut session, &mut store);
        assert_eq!(hashes(&again), hashes(&first));
        answer(&mut session, &mut store, &stored_all(&again));
        finish(&mut session, &mut store);
        let report = session.report();
        assert_eq!((report.uploaded, report.pending, report.retries), (1, 0, 1));
        assert_eq!(report.round_trips, 3);
    }

    #[test]
    fn a_lost_answer_is_asked_about_after_the_app_is_closed_and_its_page_is_not_sent_again() {
        let (dir, mut store, mut session) = phone(1);
        let lost = request(&mut session, &mut store);
        fail(&mut session, &mut store, "timed out waiting for the answer");
        drop(session);
        drop(store);
        // The app is closed; the server had stored the request. Opened again later:
        let mut store = DeviceStore::open(dir.path().join("phone.db")).unwrap();
        assert_eq!(store.lost_requests().unwrap().len(), 1);
        let mut session = SyncSession::new(&store, options()).unwrap();
        let asking = request(&mut session, &mut store);
        assert_eq!(asking.resume, vec![lost.request_id.clone().unwrap()]);
        assert!(asking.changes.is_empty(), "the page is not sent again");
        let mut told = response(hashes(&lost), None, 0);
        told.resumed = asking.resume.clone();
        answer(&mut session, &mut store, &told);
        let last = request(&mut session, &mut store);
        assert!(last.changes.is_empty() && last.resume.is_empty());
        answer(&mut session, &mut store, &stored_all(&last));
        finish(&mut session, &mut store);
        assert_eq!(store.pending_count().unwrap(), 0);
        assert!(store.lost_requests().unwrap().is_empty());
        assert_eq!(session.report().uploaded, 1);
    }

    fn refusal<'a>(status: u16, body: &'a [u8], retry_after: Option<&'a str>) -> Reply<'a> {
        Reply::Answered {
            status,
            body,
            content_encoding: None,
            retry_after,
        }
    }

    #[test]
    fn a_429_says_to_wait_its_retry_after_and_the_same_page_goes_again() {
        let (_dir, mut store, mut session) = phone(1);
        let first = request(&mut session, &mut store);
        let body = br#"{"error":"too many requests from this device","hint":"wait"}"#;
        session
            .receive(&mut store, refusal(429, body, Some("7")))
            .unwrap();
        assert_eq!(
            session.next(&mut store).unwrap(),
            Next::Wait(Duration::from_secs(7))
        );
        let again = request(&mut session, &mut store);
        assert_eq!(hashes(&again), hashes(&first));
        assert!(again.resume.is_empty(), "a refused request is not in doubt");
        // A wait past a sync's patience (a daily ceiling) ends the sync instead.
        let err = session
            .receive(&mut store, refusal(429, body, Some("3600")))
            .unwrap_err();
        assert!(
            matches!(&err, SessionError::Refused { status: 429, message } if message.contains("sync again in 3600 s")),
            "{err}"
        );
        assert_eq!(store.pending_count().unwrap(), 1, "nothing was lost");
        assert_eq!(session.next(&mut store).unwrap(), Next::Done);
    }

    #[test]
    fn a_401_with_wipe_erases_the_store_and_ends_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled_store(&dir, "phone.db", "sonora");
        store.log(example()).unwrap();
        assert_eq!(store.encounter_ids().unwrap().len(), 1);
        let mut session = SyncSession::new(&store, options()).unwrap();
        request(&mut session, &mut store);
        let body = br#"{"error":"this device was revoked","wipe":true}"#;
        let err = session
            .receive(&mut store, refusal(401, body, None))
            .unwrap_err();
        let SessionError::RevokedAndWiped { wiped, message } = err else {
            panic!("expected a wipe, got {err}");
        };
        assert_eq!((wiped.encounters, wiped.unsynced_changes), (1, 1));
        assert_eq!(message, "this device was revoked");
        assert!(session.is_done());
        assert!(store.encounter_ids().unwrap().is_empty());
        // A 401 without the order wipes nothing.
        let mut other = enrolled_store(&dir, "other.db", "sonora");
        other.log(example()).unwrap();
        let mut session = SyncSession::new(&other, options()).unwrap();
        request(&mut session, &mut other);
        let err = session
            .receive(&mut other, refusal(401, br#"{"error":"bad token"}"#, None))
            .unwrap_err();
        assert!(matches!(
            err,
            SessionError::Unauthorized { status: 401, .. }
        ));
        assert_eq!(other.encounter_ids().unwrap().len(), 1);
    }

    #[test]
    fn a_purge_notice_in_an_answer_drops_the_encounter_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled_store(&dir, "phone.db", "sonora");
        let purged = store.log(example()).unwrap();
        let kept = store.log(example()).unwrap();
        let mut session = SyncSession::new(&store, options()).unwrap();
        let first = request(&mut session, &mut store);
        let mut told = stored_all(&first);
        told.purges = vec![PurgeNotice {
            seq: 3,
            encounter: purged,
            kind: PurgeKind::Whole,
        }];
        told.purges_through = 3;
        answer(&mut session, &mut store, &told);
        finish(&mut session, &mut store);
        assert_eq!(session.report().dropped, 1);
        assert_eq!(store.encounter_ids().unwrap(), vec![kept]);
        assert_eq!(store.sync_request().unwrap().purges_after, 3);
    }

    /// A change of another phone's encounter, as the server would send it down.
    fn download() -> (EncounterId, Vec<ByteBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let mut other = enrolled_store(&dir, "other.db", "sonora");
        let id = other.log(example()).unwrap();
        let changes = other.sync_request().unwrap().changes.remove(0).changes;
        (id, changes)
    }

    #[test]
    fn a_cursor_mismatch_restarts_from_the_beginning_and_own_changes_go_again() {
        let (_dir, mut store, mut session) = phone(1);
        let first = request(&mut session, &mut store);
        let mut stored = stored_all(&first);
        stored.cursor = 40;
        answer(&mut session, &mut store, &stored);
        finish(&mut session, &mut store);
        assert_eq!(
            (store.cursor().unwrap(), store.pending_count().unwrap()),
            (40, 0)
        );
        // The server was restored from a backup: it does not know cursor 40.
        let mut session = SyncSession::new(&store, options()).unwrap();
        let asking = request(&mut session, &mut store);
        assert_eq!(asking.cursor, 40);
        let (encounter, changes) = download();
        let mut restarted = response(vec![], Some((encounter, changes)), 1);
        restarted.changes[0].through = 1;
        restarted.restarted = true;
        answer(&mut session, &mut store, &restarted);
        assert_eq!(store.cursor().unwrap(), 1, "the cursor went back");
        let again = request(&mut session, &mut store);
        assert_eq!(hashes(&again), hashes(&first), "own changes go again");
        answer(&mut session, &mut store, &stored_all(&again));
        finish(&mut session, &mut store);
        assert_eq!(store.encounter_ids().unwrap().len(), 2);
    }

    #[test]
    fn pages_halve_after_cuts_and_double_after_whole_exchanges() {
        let (_dir, mut store, mut session) = phone(1);
        let first = request(&mut session, &mut store);
        assert_eq!(first.max_response_bytes, Some(64 * 1024));
        fail(&mut session, &mut store, "connection refused");
        assert_eq!(session.page_bytes(), 32 * 1024);
        session.next(&mut store).unwrap(); // the wait
        let second = request(&mut session, &mut store);
        assert_eq!(second.max_response_bytes, Some(32 * 1024));
        // Cut mid-download, inside its only frame: the head arrived, the frame did not.
        let (encounter, changes) = download();
        let mut cut = stored_all(&second);
        cut.changes = vec![ResponseFrame {
            encounter,
            changes,
            through: 1,
        }];
        cut.cursor = 1;
        let body = protocol::encode_response(&cut);
        session
            .receive(&mut store, ok(&body[..body.len() - 10]))
            .unwrap();
        assert_eq!(session.page_bytes(), 16 * 1024);
        assert_eq!(
            store.encounter_ids().unwrap().len(),
            1,
            "nothing half-stored"
        );
        // Down to the floor, never below.
        for _ in 0..4 {
            request(&mut session, &mut store);
            fail(&mut session, &mut store, "cut");
            session.next(&mut store).unwrap();
        }
        assert_eq!(session.page_bytes(), 4 * 1024);
        // Each whole exchange doubles it again, up to the largest page.
        for expected in [8, 16, 32, 64, 64] {
            let asked = request(&mut session, &mut store);
            let mut whole = stored_all(&asked);
            whole.more = true;
            answer(&mut session, &mut store, &whole);
            assert_eq!(session.page_bytes(), expected * 1024);
        }
    }

    #[test]
    fn a_413_halves_the_page_and_the_same_changes_go_again_in_smaller_requests() {
        let (_dir, mut store, mut session) = phone(4);
        let first = request(&mut session, &mut store);
        assert_eq!(hashes(&first).len(), 4);
        let body = br#"{"error":"too many changes in one request"}"#;
        session
            .receive(&mut store, refusal(413, body, None))
            .unwrap();
        assert_eq!(session.page_bytes(), 32 * 1024);
        let mut sent = Vec::new();
        loop {
            let page = request(&mut session, &mut store);
            assert!(hashes(&page).len() <= 2, "no page grows past the split");
            sent.extend(hashes(&page));
            answer(&mut session, &mut store, &stored_all(&page));
            if matches!(session.state, State::RefreshRelayKeys) {
                break;
            }
        }
        assert_eq!(sent, hashes(&first), "the same changes, each once");
        finish(&mut session, &mut store);
        assert_eq!(session.report().uploaded, 4);
    }
}
