//! Sync protocol v2: the messages a device and the server exchange, and their binary form.
//!
//! A request carries a page of the changes the device has not had acknowledged, for any number
//! of encounters, and the cursor up to which it already holds what the server has; the response
//! says which changes are now durably stored (or why some were refused) and carries a page of the
//! changes the device may see and lacks. One request/response per page, never one per document.
//! Bodies are CBOR (RFC 8949); the layout is documented in docs/protocol.md. Every message starts
//! with its protocol version so that a peer speaking another version gets a clear refusal instead
//! of a misreading.
//!
//! The response is a CBOR sequence (RFC 8742): a head, then one frame per run of one encounter's
//! changes, each frame naming the log position it reaches. A response cut off mid-way on a
//! dropping link still yields every frame that arrived whole ([`read_response`]), so the device
//! stores those and its next request resumes after them instead of fetching the page again.
//!
//! Retrying is harmless by construction: changes are content-addressed, so a change sent twice is
//! stored once and acknowledged both times, and applying a page twice changes nothing.

use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::cbor::describe_cbor_error;
pub use crate::cbor::encode;
use crate::id::EncounterId;
use crate::vault::SealedVault;

/// The longest request id a server accepts.
pub const MAX_REQUEST_ID_BYTES: usize = 32;
/// The most earlier requests one request may ask about.
pub const MAX_RESUMED: usize = 64;
/// The most sealed vaults one request may carry.
pub const MAX_VAULTS_PER_REQUEST: usize = 64;
/// The most encounters one request uploads changes of, by default: a server refuses more with
/// 413 (it may be configured lower; the client then splits its page further).
pub const MAX_ENCOUNTERS_PER_REQUEST: usize = 500;
/// The most changes one request uploads, by default (413 over it, as above).
pub const MAX_CHANGES_PER_REQUEST: usize = 2000;

/// The version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// The HTTP media type of sync bodies (the server is the only part that knows HTTP; it is here so
/// both sides name it the same way).
pub const MEDIA_TYPE: &str = "application/vnd.auxilio.sync+cbor";

/// The HTTP content coding of compressed sync bodies: zlib-wrapped DEFLATE (RFC 1950), which
/// HTTP calls `deflate`. Changes of many encounters share keys, values and actor ids, so a page
/// compresses well; a device asks for it with `Accept-Encoding` and sends it with
/// `Content-Encoding`.
pub const CONTENT_ENCODING: &str = "deflate";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("the body is not a valid sync v{PROTOCOL_VERSION} message: {0}")]
    Malformed(String),
    #[error(
        "sync protocol version {found} is not supported; this build speaks version {PROTOCOL_VERSION}: update the app or the server so both speak the same version"
    )]
    UnsupportedVersion { found: u32 },
    /// The response stopped before its head was whole: nothing in it can be used, and whether
    /// the server stored the request's changes is unknown.
    #[error("the response was cut off before its first part arrived")]
    CutBeforeHead,
    #[error("the body inflates to more than {limit} bytes")]
    InflatesTooLarge { limit: usize },
}

/// Compresses a body for [`CONTENT_ENCODING`].
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(bytes.len() / 3),
        flate2::Compression::default(),
    );
    encoder
        .write_all(bytes)
        .expect("compressing into memory cannot fail");
    encoder
        .finish()
        .expect("compressing into memory cannot fail")
}

/// A reader of a [`CONTENT_ENCODING`] body; it yields what it could inflate before the
/// compressed bytes ended or failed, so a cut response keeps its whole frames.
pub fn decompressing(reader: impl Read) -> impl Read {
    flate2::read::ZlibDecoder::new(reader)
}

/// Inflates a whole compressed body, refusing one that would grow past `limit` bytes (a small
/// hostile body must not become gigabytes in memory).
pub fn decompress(bytes: &[u8], limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    decompressing(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ProtocolError::Malformed(format!("the compressed body is damaged: {e}")))?;
    if out.len() > limit {
        return Err(ProtocolError::InflatesTooLarge { limit });
    }
    Ok(out)
}

/// Changes of one encounter, as raw Automerge change bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncounterChanges {
    pub encounter: EncounterId,
    pub changes: Vec<ByteBuf>,
}

/// Device → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub protocol: u32,
    /// The hash of the change at position `cursor`, as the last response gave it. The server
    /// checks it: a cursor into another history (a server restored from a backup, or replaced)
    /// no longer names the same change, and the device is sent everything again instead of
    /// silently skipping what it never had.
    pub cursor_check: Option<ByteBuf>,
    /// The Automerge actor id this store writes with: the server leaves out of downloads the
    /// changes this store wrote or uploaded (it has them), even from earlier pages.
    pub actor: Option<ByteBuf>,
    /// The device holds every change it may see up to this position of the server's log.
    pub cursor: u64,
    /// A page of the changes the device has not had acknowledged, grouped by encounter, in
    /// causal order.
    pub changes: Vec<EncounterChanges>,
    /// A random id (at most [`MAX_REQUEST_ID_BYTES`]) for a request that uploads changes: if
    /// its response never arrives, the next request names it in `resume`.
    #[serde(default)]
    pub request_id: Option<ByteBuf>,
    /// Ids of earlier requests whose responses never arrived (at most [`MAX_RESUMED`]). For
    /// each that the server committed, it adds what it stored and refused to this response and
    /// lists the id in `resumed`; the device re-sends only the pages of the others. A few bytes
    /// instead of a page again.
    #[serde(default)]
    pub resume: Vec<ByteBuf>,
    /// How many bytes of changes the device wants in the response at most (the server clamps it
    /// to its own bounds); a device on a link that keeps dropping asks for less.
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
    /// The device has applied every purge notice up to this position of the server's purge log
    /// (see [`PurgeNotice`]); the response carries the notices after it.
    #[serde(default)]
    pub purges_after: u64,
    /// Sealed identity vaults the device has not had acknowledged (at most
    /// [`MAX_VAULTS_PER_REQUEST`]); the server stores them after the request's changes, so a
    /// vault may travel with the first changes of its encounter.
    #[serde(default)]
    pub vaults: Vec<SealedVault>,
}

/// Why the server refused a sealed vault. The device keeps it and offers it again next sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRejection {
    pub id: ByteBuf,
    pub reason: String,
}

/// Why the server refused the changes of one encounter. The device keeps refused changes: a
/// refusal never destroys data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The encounter belongs to a team this device may not write to.
    Forbidden,
    /// A change was written by an actor that is neither this device nor an active device of its
    /// team (changes relayed from a teammate's phone are accepted).
    WrongAuthor,
    /// The document declares a schema version the server does not understand yet.
    UnknownSchemaVersion,
    /// The changes cannot be merged into what the server holds for the encounter (for example
    /// they belong to another encounter).
    InvalidChange,
    /// The changes reuse sequence numbers their actor already used in changes the server holds:
    /// the store was copied, or restored from a backup, and both copies wrote. The device gives
    /// itself a new actor and makes its edits again on top of the server's document.
    ActorReused,
    /// The encounter was purged on the server (an authorised erasure, or its retention period
    /// ended): its changes are never stored again. The device drops its copy, pending edits
    /// included, instead of keeping them: a purge outranks a pending edit.
    Purged,
    /// The merged record would name another team than the one the server files the encounter
    /// under (a `team` edit, or concurrent edits leaving another team beside it). An encounter
    /// never moves between teams by sync: the device keeps its change, and a person corrects
    /// the record (`team` back to the owning team) or asks an administrator.
    TeamChanged,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeKind {
    /// The whole encounter: its document, its history and its identity vault.
    Whole,
    /// Only its identity vault (sealed envelopes); the record stays.
    VaultOnly,
}

impl PurgeKind {
    /// The stored and printed form (`whole`, `vault_only`).
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Whole => "whole",
            PurgeKind::VaultOnly => "vault_only",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "whole" => Some(PurgeKind::Whole),
            "vault_only" => Some(PurgeKind::VaultOnly),
            _ => None,
        }
    }
}

/// One entry of the server's purge log, for the teams a device may see: the device drops its
/// copy of the encounter (or of its vault). `seq` is the notice's position in that log; the
/// device sends the last one it applied as [`SyncRequest::purges_after`]. A notice names only
/// the encounter's random id, never what it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeNotice {
    pub seq: u64,
    pub encounter: EncounterId,
    pub kind: PurgeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub encounter: EncounterId,
    pub reason: RejectReason,
    pub message: String,
}

/// Changes the server holds changes depending on, but not the changes themselves: a device that
/// has them sends them in its next request, even if they were acknowledged long ago.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WantedChanges {
    pub encounter: EncounterId,
    pub hashes: Vec<ByteBuf>,
}

/// One run of one encounter's changes in a response; `through` is the log position of the last
/// of them, where the device's cursor may move once the frame is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub encounter: EncounterId,
    pub changes: Vec<ByteBuf>,
    pub through: u64,
}

/// Server → device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    pub protocol: u32,
    /// Hashes of uploaded changes (in this request or a resumed one) that are durably stored,
    /// including ones stored before.
    pub accepted: Vec<ByteBuf>,
    pub rejected: Vec<Rejection>,
    /// Changes the server lacks and would like from the device.
    pub wanted: Vec<WantedChanges>,
    /// The ids of the request's `resume` that the server had committed; their outcomes are in
    /// `accepted` and `rejected`.
    pub resumed: Vec<ByteBuf>,
    /// Changes the device may see and lacks, in the server's log order.
    pub changes: Vec<ResponseFrame>,
    /// The device's new cursor once every frame is stored: it then holds everything it may see
    /// up to here.
    pub cursor: u64,
    /// The hash of the change at `cursor` (empty when the log is empty), to send back.
    pub cursor_check: ByteBuf,
    /// The request's cursor did not match this server's history, so this response starts from
    /// the beginning: the device must take the new cursor even if it is lower than its own.
    pub restarted: bool,
    /// More changes (or purge notices) wait after `cursor`: send another request.
    pub more: bool,
    /// Purges after the request's `purges_after`, in order, for the teams the device may see.
    pub purges: Vec<PurgeNotice>,
    /// The device has every purge notice it may see up to here once it applied `purges`: its
    /// next `purges_after`.
    pub purges_through: u64,
    /// Every frame arrived. Not on the wire: a response read from a cut connection has only the
    /// frames that arrived whole, and the device's cursor moves only as far as they reach.
    pub complete: bool,
    /// The protection officers' public keys (`age1...`) new vaults are sealed to, always sent:
    /// the device replaces what it knew with them.
    pub vault_recipients: Vec<String>,
    /// Ids of the request's vaults that are durably stored (including ones stored before).
    pub vaults_accepted: Vec<ByteBuf>,
    pub vaults_rejected: Vec<VaultRejection>,
}

/// The first item of a response body; `frames` frames follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ResponseHead {
    protocol: u32,
    accepted: Vec<ByteBuf>,
    rejected: Vec<Rejection>,
    #[serde(default)]
    wanted: Vec<WantedChanges>,
    #[serde(default)]
    resumed: Vec<ByteBuf>,
    cursor: u64,
    cursor_check: ByteBuf,
    restarted: bool,
    more: bool,
    frames: u64,
    #[serde(default)]
    purges: Vec<PurgeNotice>,
    #[serde(default)]
    purges_through: u64,
    #[serde(default)]
    vault_recipients: Vec<String>,
    #[serde(default)]
    vaults_accepted: Vec<ByteBuf>,
    #[serde(default)]
    vaults_rejected: Vec<VaultRejection>,
}

/// The binary form of a response: its head, then its frames, as one CBOR sequence.
pub fn encode_response(response: &SyncResponse) -> Vec<u8> {
    let head = ResponseHead {
        protocol: response.protocol,
        accepted: response.accepted.clone(),
        rejected: response.rejected.clone(),
        wanted: response.wanted.clone(),
        resumed: response.resumed.clone(),
        cursor: response.cursor,
        cursor_check: response.cursor_check.clone(),
        restarted: response.restarted,
        more: response.more,
        frames: response.changes.len() as u64,
        purges: response.purges.clone(),
        purges_through: response.purges_through,
        vault_recipients: response.vault_recipients.clone(),
        vaults_accepted: response.vaults_accepted.clone(),
        vaults_rejected: response.vaults_rejected.clone(),
    };
    let mut out = encode(&head);
    for frame in &response.changes {
        ciborium::into_writer(frame, &mut out).expect("writing CBOR into memory cannot fail");
    }
    out
}

#[derive(Deserialize)]
struct VersionOnly {
    protocol: u32,
}

fn malformed<E: std::fmt::Debug>(err: ciborium::de::Error<E>) -> ProtocolError {
    ProtocolError::Malformed(describe_cbor_error(err))
}

/// Byte 8 of an Automerge chunk is its type; 2 is a deflate-compressed change.
const COMPRESSED_CHANGE_CHUNK: u8 = 2;

/// Whether `bytes` is a compressed Automerge change. Devices exchange changes uncompressed, and
/// whoever receives one (the server, a phone in a relay) refuses compressed ones: a small message
/// could otherwise inflate into gigabytes inside the receiver.
pub fn is_compressed_change(bytes: &[u8]) -> bool {
    bytes.get(8) == Some(&COMPRESSED_CHANGE_CHUNK)
}

/// Reads one message whose first field is `protocol`, checking the version first, alone, so a
/// message of another version is named as such even when the rest of its layout differs.
fn decode_versioned<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let version: VersionOnly = ciborium::from_reader(bytes).map_err(malformed)?;
    if version.protocol != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion {
            found: version.protocol,
        });
    }
    ciborium::from_reader(bytes).map_err(malformed)
}

pub fn decode_request(bytes: &[u8]) -> Result<SyncRequest, ProtocolError> {
    decode_versioned(bytes)
}

/// Reads a whole response; a response missing frames is an error here (see [`read_response`]
/// for reading from a connection that may be cut).
pub fn decode_response(bytes: &[u8]) -> Result<SyncResponse, ProtocolError> {
    let response = read_response(bytes)?;
    if !response.complete {
        return Err(ProtocolError::Malformed(format!(
            "the response ends after {} of its frames",
            response.changes.len()
        )));
    }
    Ok(response)
}

/// Reads a response from `reader` frame by frame. If the reader fails or ends after the head,
/// the frames that arrived whole are returned with `complete: false`; a body that is not a
/// response at all is an error.
pub fn read_response(reader: impl Read) -> Result<SyncResponse, ProtocolError> {
    let mut reader = std::io::BufReader::new(reader);
    // The head is read as a generic value first so that a head of another version is named as
    // such even when the rest of its layout differs.
    let head: ciborium::Value = match ciborium::from_reader(&mut reader) {
        Ok(head) => head,
        Err(ciborium::de::Error::Io(_)) => return Err(ProtocolError::CutBeforeHead),
        Err(other) => return Err(malformed(other)),
    };
    let version: VersionOnly = head
        .deserialized()
        .map_err(|e| ProtocolError::Malformed(format!("not a sync response: {e}")))?;
    if version.protocol != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion {
            found: version.protocol,
        });
    }
    let head: ResponseHead = head
        .deserialized()
        .map_err(|e| ProtocolError::Malformed(format!("not a sync response: {e}")))?;
    let mut changes = Vec::new();
    let mut complete = true;
    for _ in 0..head.frames {
        match ciborium::from_reader::<ResponseFrame, _>(&mut reader) {
            Ok(frame) => changes.push(frame),
            Err(ciborium::de::Error::Io(_)) => {
                complete = false;
                break;
            }
            Err(other) => return Err(malformed(other)),
        }
    }
    Ok(SyncResponse {
        protocol: head.protocol,
        accepted: head.accepted,
        rejected: head.rejected,
        wanted: head.wanted,
        resumed: head.resumed,
        changes,
        cursor: head.cursor,
        cursor_check: head.cursor_check,
        restarted: head.restarted,
        more: head.more,
        purges: head.purges,
        purges_through: head.purges_through,
        complete,
        vault_recipients: head.vault_recipients,
        vaults_accepted: head.vaults_accepted,
        vaults_rejected: head.vaults_rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SyncRequest {
        SyncRequest {
            protocol: PROTOCOL_VERSION,
            cursor_check: Some(ByteBuf::from(vec![9; 32])),
            actor: None,
            cursor: 7,
            changes: vec![EncounterChanges {
                encounter: EncounterId::random(),
                changes: vec![ByteBuf::from(vec![1, 2, 3])],
            }],
            request_id: Some(ByteBuf::from(vec![4; 16])),
            resume: vec![ByteBuf::from(vec![5; 16])],
            max_response_bytes: Some(4096),
            purges_after: 3,
            vaults: vec![],
        }
    }

    fn response(frames: usize) -> SyncResponse {
        SyncResponse {
            protocol: PROTOCOL_VERSION,
            accepted: vec![ByteBuf::from(vec![1; 32])],
            rejected: vec![],
            wanted: vec![],
            resumed: vec![ByteBuf::from(vec![5; 16])],
            changes: (0..frames)
                .map(|n| ResponseFrame {
                    encounter: EncounterId::random(),
                    changes: vec![ByteBuf::from(vec![n as u8; 50]); 2],
                    through: 10 + n as u64,
                })
                .collect(),
            cursor: 40,
            cursor_check: ByteBuf::from(vec![2; 32]),
            restarted: false,
            more: true,
            purges: vec![PurgeNotice {
                seq: 4,
                encounter: EncounterId::random(),
                kind: PurgeKind::VaultOnly,
            }],
            purges_through: 4,
            complete: true,
            vault_recipients: vec!["age1example".into()],
            vaults_accepted: vec![ByteBuf::from(vec![6; 16])],
            vaults_rejected: vec![VaultRejection {
                id: ByteBuf::from(vec![7; 16]),
                reason: "not a protection case".into(),
            }],
        }
    }

    #[test]
    fn a_request_round_trips() {
        let request = request();
        assert_eq!(decode_request(&encode(&request)).unwrap(), request);
    }

    #[test]
    fn a_request_of_a_build_without_purges_reads_as_having_applied_none() {
        let mut old_request = ciborium::Value::serialized(&request()).unwrap();
        if let ciborium::Value::Map(fields) = &mut old_request {
            fields.retain(|(key, _)| key.as_text() != Some("purges_after"));
        }
        let decoded = decode_request(&encode(&old_request)).unwrap();
        assert_eq!(decoded.purges_after, 0);
    }

    #[test]
    fn a_response_round_trips() {
        let response = response(3);
        assert_eq!(
            decode_response(&encode_response(&response)).unwrap(),
            response
        );
    }

    #[test]
    fn a_response_cut_at_any_byte_yields_the_frames_that_arrived_whole() {
        let whole = response(4);
        let bytes = encode_response(&whole);
        let head_len = bytes.len() - whole.changes.iter().map(|f| encode(f).len()).sum::<usize>();
        let mut frames_seen = 0;
        for cut in 0..bytes.len() {
            match read_response(&bytes[..cut]) {
                Err(ProtocolError::CutBeforeHead) => assert!(cut < head_len, "cut at {cut}"),
                Ok(partial) => {
                    assert!(cut >= head_len);
                    assert!(!partial.complete, "cut at {cut} is not complete");
                    assert_eq!(partial.changes[..], whole.changes[..partial.changes.len()]);
                    assert!(
                        partial.changes.len() >= frames_seen,
                        "never fewer frames for more bytes"
                    );
                    frames_seen = partial.changes.len();
                }
                Err(other) => panic!("cut at {cut}: {other}"),
            }
        }
        assert_eq!(frames_seen, 3, "the last frame needs every byte");
        assert!(decode_response(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn compressed_bodies_round_trip_and_bombs_are_refused() {
        let body = encode_response(&response(20));
        let small = compress(&body);
        assert!(small.len() < body.len());
        assert_eq!(decompress(&small, body.len()).unwrap(), body);
        assert_eq!(
            decompress(&small, body.len() - 1),
            Err(ProtocolError::InflatesTooLarge {
                limit: body.len() - 1
            })
        );
        assert!(matches!(
            decompress(b"not deflate", 1000),
            Err(ProtocolError::Malformed(_))
        ));
        let cut = &small[..small.len() * 2 / 3];
        let partial = read_response(decompressing(cut)).unwrap();
        assert!(!partial.complete && !partial.changes.is_empty());
    }

    #[test]
    fn another_version_is_named() {
        let mut request = request();
        request.protocol = 9;
        assert_eq!(
            decode_request(&encode(&request)),
            Err(ProtocolError::UnsupportedVersion { found: 9 })
        );
        let old_response = encode(&serde_json::json!({"protocol": 1, "accepted": []}));
        assert_eq!(
            read_response(&old_response[..]),
            Err(ProtocolError::UnsupportedVersion { found: 1 })
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for bytes in [&b""[..], b"{\"protocol\":2}", &[0xff, 0x00, 0x13]] {
            assert!(matches!(
                decode_request(bytes),
                Err(ProtocolError::Malformed(_))
            ));
        }
        assert!(matches!(
            read_response(&[0xff, 0x00, 0x13][..]),
            Err(ProtocolError::Malformed(_))
        ));
    }
}
