//! Sync protocol v1: the messages a device and the server exchange, and their binary form.
//!
//! One request carries every change the device has not had acknowledged, for any number of
//! encounters, and the cursor up to which it already holds what the server has; the response
//! says which changes are now durably stored (or why some were refused) and carries the changes
//! the device may see and lacks, in pages. Bodies are CBOR (RFC 8949); the layout is documented in
//! ARCHITECTURE.md. Every message starts with its protocol version so that a peer speaking
//! another version gets a clear refusal instead of a misreading.
//!
//! Retrying is harmless by construction: changes are content-addressed, so a change sent twice is
//! stored once and acknowledged both times, and applying a page twice changes nothing.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::id::EncounterId;

/// The version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The HTTP media type of sync bodies (the server is the only part that knows HTTP; it is here so
/// both sides name it the same way).
pub const MEDIA_TYPE: &str = "application/vnd.auxilio.sync+cbor";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("the body is not a valid sync v{PROTOCOL_VERSION} message: {0}")]
    Malformed(String),
    #[error(
        "sync protocol version {found} is not supported; this build speaks version {PROTOCOL_VERSION}"
    )]
    UnsupportedVersion { found: u32 },
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
    /// The Automerge actor id this store writes with: the server leaves the store's own changes
    /// out of downloads (it has them), even when they were uploaded in an earlier page.
    pub actor: Option<ByteBuf>,
    /// The device holds every change it may see up to this position of the server's log.
    pub cursor: u64,
    /// Every change the device has not had acknowledged, grouped by encounter, in causal order.
    pub changes: Vec<EncounterChanges>,
}

/// Why the server refused the changes of one encounter. The device keeps refused changes: a
/// refusal never destroys data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The encounter belongs to a team this device may not write to.
    Forbidden,
    /// A change was written by an actor that is not this device.
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub encounter: EncounterId,
    pub reason: RejectReason,
    pub message: String,
}

/// Server → device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    pub protocol: u32,
    /// Hashes of uploaded changes that are now durably stored (including ones stored before).
    pub accepted: Vec<ByteBuf>,
    pub rejected: Vec<Rejection>,
    /// Changes the device may see and lacks, in the server's log order.
    pub changes: Vec<EncounterChanges>,
    /// The device's new cursor: it now holds everything it may see up to here.
    pub cursor: u64,
    /// The hash of the change at `cursor` (empty when the log is empty), to send back.
    pub cursor_check: ByteBuf,
    /// The request's cursor did not match this server's history, so this response starts from
    /// the beginning: the device must take `cursor` even if it is lower than its own.
    pub restarted: bool,
    /// More changes wait after `cursor`: send another request.
    pub more: bool,
}

/// The binary form of a message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(message, &mut out).expect("writing CBOR into memory cannot fail");
    out
}

#[derive(Deserialize)]
struct VersionOnly {
    protocol: u32,
}

/// Says what is wrong with a body in words, not in the CBOR reader's internal terms.
fn malformed(err: ciborium::de::Error<std::io::Error>) -> ProtocolError {
    ProtocolError::Malformed(match err {
        ciborium::de::Error::Io(_) => "the body ends too early (truncated or empty)".to_string(),
        ciborium::de::Error::Syntax(offset) => format!("not CBOR (invalid at byte {offset})"),
        ciborium::de::Error::Semantic(offset, message) => match offset {
            Some(offset) => format!("{message} (at byte {offset})"),
            None => message,
        },
        ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".to_string(),
    })
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ProtocolError> {
    // The version is read first, alone, so a message of another version is named as such even
    // when the rest of its layout differs.
    let version: VersionOnly = ciborium::from_reader(bytes).map_err(malformed)?;
    if version.protocol != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion {
            found: version.protocol,
        });
    }
    ciborium::from_reader(bytes).map_err(malformed)
}

pub fn decode_request(bytes: &[u8]) -> Result<SyncRequest, ProtocolError> {
    decode(bytes)
}

pub fn decode_response(bytes: &[u8]) -> Result<SyncResponse, ProtocolError> {
    decode(bytes)
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
        }
    }

    #[test]
    fn a_request_round_trips() {
        let request = request();
        assert_eq!(decode_request(&encode(&request)).unwrap(), request);
    }

    #[test]
    fn another_version_is_named() {
        let mut request = request();
        request.protocol = 9;
        assert_eq!(
            decode_request(&encode(&request)),
            Err(ProtocolError::UnsupportedVersion { found: 9 })
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for bytes in [&b""[..], b"{\"protocol\":1}", &[0xff, 0x00, 0x13]] {
            assert!(matches!(
                decode_request(bytes),
                Err(ProtocolError::Malformed(_))
            ));
        }
    }
}
