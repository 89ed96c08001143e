//! Phone-to-phone relay (the data mule): two devices of one team give each other what the other
//! lacks, directly, so that whichever reaches signal first uploads what the other logged out of
//! reach of any network.
//!
//! Core reads and writes only the byte stream the caller hands it (Bluetooth or Wi-Fi Direct in
//! the app, a socket or a pipe in the tests); it opens no socket. The exchange starts with an
//! authenticated handshake ([`crate::relay_auth`]: hellos both ways, then the initiator's and the
//! responder's proofs), and nothing of the team's records moves before both sides have proved
//! they hold a current relay key of the team. Then three messages and an acknowledgement, each
//! framed as a 4-byte big-endian length and a CBOR body (layout in docs/relay.md):
//!
//! 1. initiator → responder: [`RelayOffer`], the heads of each encounter the initiator holds;
//! 2. responder → initiator: [`RelayAnswer`], the responder's own offer and the changes the
//!    initiator lacks;
//! 3. initiator → responder: [`RelayChanges`], the changes the responder lacks;
//! 4. responder → initiator: [`RelayDone`], once the responder has committed them.
//!
//! Each side stores what it receives in one SQLite transaction, as a sync response is stored. A
//! change keeps the actor that wrote it, so who wrote it travels with it. A change its sender
//! has not yet had acknowledged by the server also joins the receiver's pending list, so
//! whichever phone reaches signal first uploads it; the server stores a change once whoever
//! uploads it, and takes a relayed change only from a teammate of its author.
//!
//! Independently of the handshake, a phone never takes from a peer a new change written under its
//! own device id: only this device writes as itself.

use std::collections::{BTreeMap, HashSet};
use std::io::{ErrorKind, Read, Write};

use automerge::{Change, ChangeHash};
use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::cbor::describe_cbor_error;
use crate::document::{EncounterDocument, parse_change};
use crate::id::device_of_actor;
use crate::id::{DeviceId, EncounterId};
use crate::protocol::is_compressed_change;
use crate::relay_auth::{RelayAuthError, RelayHello, RelayProof, Signer};
use crate::store::{
    DeviceStore, StoreError, add_pending, encounter_ids, enrolment, is_purged, load_document,
    merge_with_held, save_merged,
};

/// The relay protocol version this build speaks (independent of the sync protocol's). Version 2
/// added the authenticated handshake; a version 1 peer is refused.
pub const RELAY_PROTOCOL_VERSION: u32 = 2;

/// The largest relay message read or written. A phone holds at most a few thousand encounters of
/// a few kilobytes of changes each; a larger length is a broken or hostile peer, refused before
/// its body is read.
pub const MAX_RELAY_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(
        "the other phone is a device of team `{theirs}` and this one of team `{ours}`: phones relay only within one team, so nothing was exchanged"
    )]
    OtherTeam { ours: String, theirs: String },
    #[error(
        "the other phone speaks relay protocol version {found}; this build speaks version {RELAY_PROTOCOL_VERSION}: update the app on both phones"
    )]
    UnsupportedVersion { found: u32 },
    #[error(
        "the other phone's {message} is not a valid relay v{RELAY_PROTOCOL_VERSION} message ({detail}); nothing of it was stored"
    )]
    Malformed {
        message: &'static str,
        detail: String,
    },
    #[error(
        "a relay message of {size} bytes is over the {limit}-byte limit: refused whole, nothing of it stored"
    )]
    MessageTooLarge { size: u64, limit: u64 },
    #[error(
        "the connection closed before the other phone's {waiting_for} arrived whole; what this phone committed before is kept"
    )]
    Closed { waiting_for: &'static str },
    #[error(
        "the other phone proved it is device {proved} but its offer names device {named}: refused, nothing of it was stored"
    )]
    NotThePeer { proved: DeviceId, named: DeviceId },
    #[error(transparent)]
    Auth(#[from] RelayAuthError),
    #[error("the relay connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which end of the exchange this device is: the initiator speaks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRole {
    Initiator,
    Responder,
}

/// One encounter a device holds, and the heads of its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedEncounter {
    pub encounter: EncounterId,
    pub heads: Vec<ByteBuf>,
}

/// What a device holds: enough for the peer to work out what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayOffer {
    pub protocol: u32,
    pub team: String,
    pub device: DeviceId,
    pub encounters: Vec<OfferedEncounter>,
}

/// One raw Automerge change, and whether its sender still waits for the server to acknowledge
/// it (then the receiver uploads it too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedChange {
    pub change: ByteBuf,
    pub pending: bool,
}

/// Changes of one encounter, in causal order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedEncounter {
    pub encounter: EncounterId,
    pub changes: Vec<RelayedChange>,
}

/// The changes a peer lacks, by encounter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayChanges {
    pub protocol: u32,
    pub encounters: Vec<RelayedEncounter>,
}

impl RelayChanges {
    /// How many changes the message carries.
    pub fn change_count(&self) -> u64 {
        self.encounters.iter().map(|e| e.changes.len() as u64).sum()
    }
}

/// The responder's reply to an offer: its own offer and the changes the initiator lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayAnswer {
    pub protocol: u32,
    pub offer: RelayOffer,
    pub changes: RelayChanges,
}

/// The responder's last word: it has committed the initiator's changes (`stored` of them were
/// new to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayDone {
    pub protocol: u32,
    pub stored: u64,
}

/// A message of the relay exchange, named in errors about it.
pub trait RelayMessage: Serialize + DeserializeOwned {
    const NAME: &'static str;
}

impl RelayMessage for RelayHello {
    const NAME: &'static str = "hello";
}
impl RelayMessage for RelayProof {
    const NAME: &'static str = "proof of identity";
}
impl RelayMessage for RelayOffer {
    const NAME: &'static str = "offer";
}
impl RelayMessage for RelayAnswer {
    const NAME: &'static str = "answer";
}
impl RelayMessage for RelayChanges {
    const NAME: &'static str = "changes";
}
impl RelayMessage for RelayDone {
    const NAME: &'static str = "acknowledgement";
}

/// What storing a peer's changes did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelayAccepted {
    /// Changes new to this store, now stored (merged, or held until their dependencies arrive).
    pub received: u64,
    /// Of those, the ones the peer had not had acknowledged: now on this store's pending list.
    pub queued_for_upload: u64,
    /// Encounters whose changes were refused (they would not merge into a record of this team).
    pub refused_encounters: Vec<EncounterId>,
}

/// What one relay did, from this device's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayReport {
    /// The other phone, as it named itself.
    pub peer: DeviceId,
    /// Changes sent to the peer.
    pub sent: u64,
    /// Changes received that were new to this store.
    pub received: u64,
    /// Received changes the server has not acknowledged yet, now waiting to be uploaded from here.
    pub queued_for_upload: u64,
    pub refused_encounters: Vec<EncounterId>,
}

/// The binary form of a relay message (the body of a frame).
pub fn encode_message<T: RelayMessage>(message: &T) -> Vec<u8> {
    crate::protocol::encode(message)
}

#[derive(Deserialize)]
struct VersionOnly {
    protocol: u32,
}

/// Reads a relay message body, checking its version first and alone, so a message of another
/// version is named as such even when the rest of its layout differs.
pub fn decode_message<T: RelayMessage>(bytes: &[u8]) -> Result<T, RelayError> {
    let malformed = |detail| RelayError::Malformed {
        message: T::NAME,
        detail,
    };
    let version: VersionOnly =
        ciborium::from_reader(bytes).map_err(|e| malformed(describe_cbor_error(e)))?;
    if version.protocol != RELAY_PROTOCOL_VERSION {
        return Err(RelayError::UnsupportedVersion {
            found: version.protocol,
        });
    }
    ciborium::from_reader(bytes).map_err(|e| malformed(describe_cbor_error(e)))
}

fn write_message<T: RelayMessage>(stream: &mut impl Write, message: &T) -> Result<(), RelayError> {
    let body = encode_message(message);
    let size = body.len() as u64;
    let length = u32::try_from(size)
        .ok()
        .filter(|_| size <= MAX_RELAY_MESSAGE_BYTES)
        .ok_or(RelayError::MessageTooLarge {
            size,
            limit: MAX_RELAY_MESSAGE_BYTES,
        })?;
    stream.write_all(&length.to_be_bytes())?;
    stream.write_all(&body)?;
    stream.flush()?;
    Ok(())
}

fn read_message<T: RelayMessage>(stream: &mut impl Read) -> Result<T, RelayError> {
    let closed = |err: std::io::Error| match err.kind() {
        ErrorKind::UnexpectedEof => RelayError::Closed {
            waiting_for: T::NAME,
        },
        _ => RelayError::Io(err),
    };
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).map_err(closed)?;
    let size = u64::from(u32::from_be_bytes(length));
    if size > MAX_RELAY_MESSAGE_BYTES {
        return Err(RelayError::MessageTooLarge {
            size,
            limit: MAX_RELAY_MESSAGE_BYTES,
        });
    }
    // Read through `take` rather than into a buffer of the announced size, so memory follows
    // the bytes that actually arrive.
    let mut body = Vec::new();
    stream
        .by_ref()
        .take(size)
        .read_to_end(&mut body)
        .map_err(closed)?;
    if (body.len() as u64) < size {
        return Err(RelayError::Closed {
            waiting_for: T::NAME,
        });
    }
    decode_message(&body)
}

/// Refuses a peer that speaks another version or names another team.
fn check_version_and_team(ours: &str, protocol: u32, theirs: &str) -> Result<(), RelayError> {
    if protocol != RELAY_PROTOCOL_VERSION {
        return Err(RelayError::UnsupportedVersion { found: protocol });
    }
    if theirs != ours {
        return Err(RelayError::OtherTeam {
            ours: ours.to_string(),
            theirs: theirs.to_string(),
        });
    }
    Ok(())
}

/// Refuses an offer of another version or team.
fn check_peer(ours: &str, peer: &RelayOffer) -> Result<(), RelayError> {
    check_version_and_team(ours, peer.protocol, &peer.team)
}

/// Refuses a hello of another version or team (the hello's own checks are in
/// [`crate::relay_auth`]).
fn check_hello(ours: &str, peer: &RelayHello) -> Result<(), RelayError> {
    check_version_and_team(ours, peer.protocol, &peer.team)
}

/// Refuses an offer that names another device than the one that proved who it is.
fn check_offer_from(proved: &RelayHello, offer: &RelayOffer) -> Result<(), RelayError> {
    if offer.device != proved.device {
        return Err(RelayError::NotThePeer {
            proved: proved.device,
            named: offer.device,
        });
    }
    Ok(())
}

fn enrolled_team(conn: &Connection) -> Result<(String, DeviceId), RelayError> {
    let enrolled = enrolment(conn)?.ok_or(StoreError::NotEnrolled)?;
    Ok((enrolled.team, enrolled.device_id))
}

/// The documents of this store's team. A coordinator's store also holds other teams'
/// encounters; a peer would refuse them, so they are neither offered nor sent.
fn team_documents(
    conn: &Connection,
    team: &str,
) -> Result<Vec<(EncounterId, EncounterDocument)>, RelayError> {
    let mut out = Vec::new();
    for id in encounter_ids(conn)? {
        if let Some(document) = load_document(conn, id, None)?
            && document.team().as_deref() == Some(team)
        {
            out.push((id, document));
        }
    }
    Ok(out)
}

fn is_held(conn: &Connection, change: &Change) -> Result<bool, StoreError> {
    let held: i64 = conn.query_row(
        "SELECT count(*) FROM held_changes WHERE hash = ?1",
        [change.hash().0.as_slice()],
        |row| row.get(0),
    )?;
    Ok(held > 0)
}

/// One encounter's received changes, decoded, each with the sender's pending flag.
type Received = BTreeMap<EncounterId, Vec<(Change, bool)>>;

/// Decodes every change before anything is written, so a message with one broken change is
/// refused whole. Groups naming one encounter twice are joined and repeated changes kept once
/// (a change filed under two encounters stays in both, so the wrong one is refused).
fn decode_changes(changes: &RelayChanges) -> Result<Received, RelayError> {
    let malformed = |detail: String| RelayError::Malformed {
        message: RelayChanges::NAME,
        detail,
    };
    let mut received: Received = BTreeMap::new();
    let mut seen: HashSet<(EncounterId, ChangeHash)> = HashSet::new();
    for group in &changes.encounters {
        for (index, relayed) in group.changes.iter().enumerate() {
            if is_compressed_change(&relayed.change) {
                return Err(malformed(format!(
                    "change {index} of encounter {} is compressed; changes travel uncompressed",
                    group.encounter
                )));
            }
            let change = parse_change(&relayed.change).map_err(|e| {
                malformed(format!(
                    "change {index} of encounter {} is not an Automerge change: {e}",
                    group.encounter
                ))
            })?;
            if seen.insert((group.encounter, change.hash())) {
                received
                    .entry(group.encounter)
                    .or_default()
                    .push((change, relayed.pending));
            }
        }
    }
    Ok(received)
}

/// Why a received encounter must not be stored, if it must not.
fn refusal(
    id: EncounterId,
    document: &EncounterDocument,
    changes: &[(Change, bool)],
    team: &str,
) -> Option<String> {
    // As on the server: a document's first change names its encounter, so changes of one
    // encounter filed under another id cannot make a copy of it.
    let creation = format!("create encounter {id}");
    if let Some((change, _)) = changes
        .iter()
        .find(|(c, _)| c.deps().is_empty() && c.message() != Some(creation.as_str()))
    {
        return Some(format!(
            "change {} starts a document that is not this encounter",
            change.hash()
        ));
    }
    match document.team() {
        Some(found) if found == team => None,
        Some(found) => Some(format!("the record belongs to team `{found}`")),
        // A relay sends a peer lacking an encounter all of its history, so a record that still
        // names no team was not relayed in good faith.
        None => Some("the received changes do not make a record of any team".to_string()),
    }
}

impl DeviceStore {
    /// What this store holds, for a peer to work out what it lacks: the first message of a relay.
    pub fn relay_offer(&self) -> Result<RelayOffer, RelayError> {
        let conn = self.connection();
        let (team, device) = enrolled_team(conn)?;
        let encounters = team_documents(conn, &team)?
            .into_iter()
            .map(|(encounter, mut document)| OfferedEncounter {
                encounter,
                heads: document
                    .heads()
                    .iter()
                    .map(|hash| ByteBuf::from(hash.0.to_vec()))
                    .collect(),
            })
            .collect();
        Ok(RelayOffer {
            protocol: RELAY_PROTOCOL_VERSION,
            team,
            device,
            encounters,
        })
    }

    /// The changes a peer that sent `offer` lacks: every change of an encounter it does not have,
    /// and of the others the changes that are not ancestors of its heads. Heads this store does
    /// not know are left out, which sends a superset (the peer keeps each change once). Each
    /// change says whether this store still waits for the server to acknowledge it.
    pub fn relay_changes_for(&self, offer: &RelayOffer) -> Result<RelayChanges, RelayError> {
        let conn = self.connection();
        let (team, _) = enrolled_team(conn)?;
        check_peer(&team, offer)?;
        let peer_heads: BTreeMap<EncounterId, &[ByteBuf]> = offer
            .encounters
            .iter()
            .map(|offered| (offered.encounter, offered.heads.as_slice()))
            .collect();
        let pending = crate::store::pending_hashes(conn)?;
        let mut encounters = Vec::new();
        // Changes held for missing dependencies are not sent: the documents they would join are
        // incomplete here too, and the changes a relay sends always arrive with their ancestors.
        for (encounter, mut document) in team_documents(conn, &team)? {
            let changes = match peer_heads.get(&encounter) {
                None => document.changes(),
                Some(heads) => {
                    let known: Vec<ChangeHash> = heads
                        .iter()
                        .filter_map(|bytes| ChangeHash::try_from(bytes.as_slice()).ok())
                        .filter(|hash| document.has_change(hash))
                        .collect();
                    document.changes_after(&known)
                }
            };
            if changes.is_empty() {
                continue;
            }
            encounters.push(RelayedEncounter {
                encounter,
                changes: changes
                    .iter()
                    .map(|change| RelayedChange {
                        change: ByteBuf::from(change.raw_bytes().to_vec()),
                        pending: pending.contains(change.hash().0.as_slice()),
                    })
                    .collect(),
            });
        }
        Ok(RelayChanges {
            protocol: RELAY_PROTOCOL_VERSION,
            encounters,
        })
    }

    /// Stores the changes a peer (which sent `peer`) relayed, in one write transaction: merged
    /// into the documents, or held until their dependencies arrive, never dropped. Each new
    /// change its sender still waited to have acknowledged joins this store's pending list, so
    /// this device uploads it when it reaches signal. An encounter whose merged record would not
    /// be of this store's team is refused, and the others are stored.
    pub fn accept_relayed(
        &mut self,
        peer: &RelayOffer,
        changes: &RelayChanges,
    ) -> Result<RelayAccepted, RelayError> {
        let (team, own_device) = enrolled_team(self.connection())?;
        check_peer(&team, peer)?;
        if changes.protocol != RELAY_PROTOCOL_VERSION {
            return Err(RelayError::UnsupportedVersion {
                found: changes.protocol,
            });
        }
        let received = decode_changes(changes)?;
        let tx = self.write()?;
        let mut accepted = RelayAccepted::default();
        for (id, changes) in received {
            // A teammate that has not synced since the server purged it still offers it.
            if is_purged(&tx, id)? {
                tracing::info!(encounter = %id, "relayed changes refused: the encounter was purged");
                accepted.refused_encounters.push(id);
                continue;
            }
            let mut document =
                load_document(&tx, id, None)?.unwrap_or_else(EncounterDocument::empty);
            let mut new = Vec::new();
            for (change, pending) in &changes {
                if !document.has_change(&change.hash()) && !is_held(&tx, change)? {
                    new.push((change.clone(), *pending));
                }
            }
            // Only this device writes as itself: a change under its id that it does not hold
            // already was made by someone else.
            if let Some((forged, _)) = new
                .iter()
                .find(|(c, _)| device_of_actor(c.actor_id()) == Some(own_device))
            {
                tracing::warn!(encounter = %id, change = %forged.hash(), "relayed changes refused: a change claims this device as its author");
                accepted.refused_encounters.push(id);
                continue;
            }
            let merged = match merge_with_held(
                &tx,
                id,
                &mut document,
                changes.iter().map(|(c, _)| c.clone()).collect(),
            ) {
                Ok(candidates) => candidates,
                Err(StoreError::Document(err)) => {
                    tracing::warn!(encounter = %id, %err, "relayed changes refused: they do not merge");
                    accepted.refused_encounters.push(id);
                    continue;
                }
                Err(other) => return Err(other.into()),
            };
            if let Some(reason) = refusal(id, &document, &changes, &team) {
                tracing::warn!(encounter = %id, %reason, "relayed changes refused");
                accepted.refused_encounters.push(id);
                continue;
            }
            save_merged(&tx, id, &mut document, &merged)?;
            accepted.received += new.len() as u64;
            for (change, _) in new.iter().filter(|(_, pending)| *pending) {
                add_pending(&tx, id, change)?;
                accepted.queued_for_upload += 1;
            }
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(accepted)
    }
}

/// Runs a whole relay with a peer over `stream`: offers, exchanges what each side lacks, and
/// stores what arrives. The initiator returns once the responder has committed its changes.
///
/// Timeouts are the stream's own (set them on the socket): this function only reads and writes.
pub fn relay_over<S: Read + Write>(
    store: &mut DeviceStore,
    stream: &mut S,
    role: RelayRole,
) -> Result<RelayReport, RelayError> {
    let report = match role {
        RelayRole::Initiator => initiate(store, stream)?,
        RelayRole::Responder => respond(store, stream)?,
    };
    tracing::info!(
        peer = %report.peer,
        sent = report.sent,
        received = report.received,
        queued_for_upload = report.queued_for_upload,
        refused = report.refused_encounters.len(),
        "relay finished"
    );
    Ok(report)
}

/// The initiator's half of the handshake: hellos, then its proof, then the responder's. Returns
/// the responder's hello once it has proved it.
fn authenticate_responder<S: Read + Write>(
    store: &DeviceStore,
    stream: &mut S,
) -> Result<RelayHello, RelayError> {
    let ours = store.relay_hello(RELAY_PROTOCOL_VERSION)?;
    write_message(stream, &ours)?;
    let theirs: RelayHello = read_message(stream)?;
    check_hello(&ours.team, &theirs)?;
    store.check_relay_peer(&theirs)?;
    write_message(
        stream,
        &store.relay_proof(Signer::Initiator, &ours, &theirs)?,
    )?;
    let proof: RelayProof = read_message(stream)?;
    store.verify_relay_proof(Signer::Responder, &ours, &theirs, &proof)?;
    Ok(theirs)
}

/// The responder's half: its hello goes out (a device id, a team name and a nonce: nothing of
/// the records), then the initiator must prove itself before the responder does. Returns the
/// initiator's hello once it has proved it.
fn authenticate_initiator<S: Read + Write>(
    store: &DeviceStore,
    stream: &mut S,
) -> Result<RelayHello, RelayError> {
    let ours = store.relay_hello(RELAY_PROTOCOL_VERSION)?;
    let theirs = match read_message::<RelayHello>(stream) {
        Ok(theirs) => theirs,
        Err(refused @ RelayError::UnsupportedVersion { .. }) => {
            // The peer learns our version from our hello; if it has gone, our reason stands.
            let _ = write_message(stream, &ours);
            return Err(refused);
        }
        Err(other) => return Err(other),
    };
    write_message(stream, &ours)?;
    check_hello(&ours.team, &theirs)?;
    store.check_relay_peer(&theirs)?;
    let proof: RelayProof = read_message(stream)?;
    store.verify_relay_proof(Signer::Initiator, &theirs, &ours, &proof)?;
    write_message(
        stream,
        &store.relay_proof(Signer::Responder, &theirs, &ours)?,
    )?;
    Ok(theirs)
}

fn initiate<S: Read + Write>(
    store: &mut DeviceStore,
    stream: &mut S,
) -> Result<RelayReport, RelayError> {
    let peer = authenticate_responder(store, stream)?;
    write_message(stream, &store.relay_offer()?)?;
    let answer: RelayAnswer = read_message(stream)?;
    check_offer_from(&peer, &answer.offer)?;
    let accepted = store.accept_relayed(&answer.offer, &answer.changes)?;
    let changes = store.relay_changes_for(&answer.offer)?;
    write_message(stream, &changes)?;
    let done: RelayDone = read_message(stream)?;
    tracing::debug!(
        stored = done.stored,
        "the peer committed the relayed changes"
    );
    Ok(RelayReport {
        peer: answer.offer.device,
        sent: changes.change_count(),
        received: accepted.received,
        queued_for_upload: accepted.queued_for_upload,
        refused_encounters: accepted.refused_encounters,
    })
}

fn respond<S: Read + Write>(
    store: &mut DeviceStore,
    stream: &mut S,
) -> Result<RelayReport, RelayError> {
    let peer = authenticate_initiator(store, stream)?;
    let (team, _) = enrolled_team(store.connection())?;
    let offer: RelayOffer = read_message(stream)?;
    check_peer(&team, &offer)?;
    check_offer_from(&peer, &offer)?;
    let changes = store.relay_changes_for(&offer)?;
    let sent = changes.change_count();
    write_message(
        stream,
        &RelayAnswer {
            protocol: RELAY_PROTOCOL_VERSION,
            offer: store.relay_offer()?,
            changes,
        },
    )?;
    let received: RelayChanges = read_message(stream)?;
    let accepted = store.accept_relayed(&offer, &received)?;
    write_message(
        stream,
        &RelayDone {
            protocol: RELAY_PROTOCOL_VERSION,
            stored: accepted.received,
        },
    )?;
    Ok(RelayReport {
        peer: offer.device,
        sent,
        received: accepted.received,
        queued_for_upload: accepted.queued_for_upload,
        refused_encounters: accepted.refused_encounters,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;
    use crate::id::device_of_actor;
    use crate::schema::{Encounter, Status};
    use crate::store::{actor, heads_hex};

    fn enrolled(dir: &tempfile::TempDir, name: &str, team: &str) -> DeviceStore {
        crate::store::test_support::enrolled_store(dir, name, team)
    }

    fn example() -> Encounter {
        serde_json::from_str(r#"{"services":["rescue"],"counts":{"m":{"18-59":2}}}"#).unwrap()
    }

    fn device_id(store: &DeviceStore) -> DeviceId {
        store.enrolment().unwrap().unwrap().device_id
    }

    /// Relays between two stores over a connected socket pair, `initiator` speaking first.
    fn relay(
        initiator: &mut DeviceStore,
        responder: &mut DeviceStore,
    ) -> (
        Result<RelayReport, RelayError>,
        Result<RelayReport, RelayError>,
    ) {
        // As two phones that have both synced since the other enrolled.
        crate::relay_auth::test_support::introduce(&mut [&mut *initiator, &mut *responder]);
        let (mut near, mut far) = UnixStream::pair().unwrap();
        for end in [&near, &far] {
            end.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        std::thread::scope(|scope| {
            let responding =
                scope.spawn(move || relay_over(responder, &mut far, RelayRole::Responder));
            let initiated = relay_over(initiator, &mut near, RelayRole::Initiator);
            // A responder still waiting for the initiator sees the connection end.
            drop(near);
            (initiated, responding.join().unwrap())
        })
    }

    fn pending(store: &DeviceStore) -> BTreeSet<Vec<u8>> {
        store.pending_hashes().unwrap()
    }

    /// What a server's answer does to a store once it has stored every pending change.
    fn acknowledge_everything(store: &mut DeviceStore) {
        let accepted = pending(store).into_iter().map(ByteBuf::from).collect();
        store
            .apply_response(&crate::store::test_support::response(accepted, None, 0))
            .unwrap();
        assert_eq!(store.pending_count().unwrap(), 0);
    }

    fn heads(store: &DeviceStore, id: EncounterId) -> Vec<String> {
        heads_hex(&store.document(id).unwrap().heads())
    }

    #[test]
    fn an_encounter_this_store_heard_was_purged_is_refused_when_a_teammate_relays_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = enrolled(&dir, "a.db", "sonora");
        let mut b = enrolled(&dir, "b.db", "sonora");
        let purged = a.log(example()).unwrap();
        let kept = a.log(example()).unwrap();
        b.drop_encounter(purged, crate::protocol::PurgeKind::Whole)
            .unwrap();
        let (from_a, from_b) = relay(&mut a, &mut b);
        from_a.unwrap();
        assert_eq!(from_b.unwrap().refused_encounters, vec![purged]);
        assert_eq!(b.encounter_ids().unwrap(), vec![kept]);
    }

    #[test]
    fn a_peers_encounters_arrive_whole_and_its_unacknowledged_changes_wait_for_upload_here() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = enrolled(&dir, "a.db", "sonora");
        let mut b = enrolled(&dir, "b.db", "sonora");
        let uploaded = a.log(example()).unwrap();
        acknowledge_everything(&mut a);
        let first = a.log(example()).unwrap();
        let second = a.log(example()).unwrap();
        a.edit(second, &["status=closed".parse().unwrap()]).unwrap();
        let unacknowledged = pending(&a);
        assert_eq!(unacknowledged.len(), 3);

        let (from_a, from_b) = relay(&mut a, &mut b);
        let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
        assert_eq!(
            from_a,
            RelayReport {
                peer: device_id(&b),
                sent: 4,
                received: 0,
                queued_for_upload: 0,
                refused_encounters: vec![],
            }
        );
        assert_eq!(
            from_b,
            RelayReport {
                peer: device_id(&a),
                sent: 0,
                received: 4,
                queued_for_upload: 3,
                refused_encounters: vec![],
            }
        );
        for id in [uploaded, first, second] {
            assert_eq!(heads(&b, id), heads(&a, id));
        }
        assert_eq!(b.show(second).unwrap().encounter.status, Status::Closed);
        assert_eq!(
            pending(&b),
            unacknowledged,
            "what the server acknowledged to A is stored at B but not queued"
        );
        assert_eq!(pending(&a), unacknowledged, "A still uploads its own");
        let a_actor = actor(a.connection()).unwrap();
        for change in b.document(second).unwrap().changes() {
            assert_eq!(change.actor_id(), &a_actor, "the author stays A");
            assert_eq!(device_of_actor(change.actor_id()), Some(device_id(&a)));
        }
    }

    #[test]
    fn relaying_again_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = enrolled(&dir, "a.db", "sonora");
        let mut b = enrolled(&dir, "b.db", "sonora");
        a.log(example()).unwrap();
        b.log(example()).unwrap();
        let (first_a, first_b) = relay(&mut a, &mut b);
        assert_eq!((first_a.unwrap().sent, first_b.unwrap().sent), (1, 1));
        let pending_before = (pending(&a), pending(&b));

        for a_initiates in [true, false] {
            let (one, other) = if a_initiates {
                relay(&mut a, &mut b)
            } else {
                relay(&mut b, &mut a)
            };
            for report in [one.unwrap(), other.unwrap()] {
                assert_eq!(
                    (report.sent, report.received, report.queued_for_upload),
                    (0, 0, 0)
                );
            }
        }
        assert_eq!((pending(&a), pending(&b)), pending_before);
    }

    #[test]
    fn devices_of_different_teams_exchange_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sonora = enrolled(&dir, "a.db", "sonora");
        let mut chihuahua = enrolled(&dir, "c.db", "chihuahua");
        let kept_by_sonora = sonora.log(example()).unwrap();
        let kept_by_chihuahua = chihuahua.log(example()).unwrap();

        let (initiated, responded) = relay(&mut sonora, &mut chihuahua);
        assert!(
            matches!(&initiated, Err(RelayError::OtherTeam { ours, theirs }) if ours == "sonora" && theirs == "chihuahua"),
            "{initiated:?}"
        );
        assert!(
            matches!(&responded, Err(RelayError::OtherTeam { ours, theirs }) if ours == "chihuahua" && theirs == "sonora"),
            "{responded:?}"
        );
        assert_eq!(sonora.encounter_ids().unwrap(), vec![kept_by_sonora]);
        assert_eq!(chihuahua.encounter_ids().unwrap(), vec![kept_by_chihuahua]);
        assert_eq!(sonora.pending_count().unwrap(), 1);
        assert_eq!(chihuahua.pending_count().unwrap(), 1);
    }

    #[test]
    fn a_message_over_the_size_limit_is_refused_before_its_body_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = enrolled(&dir, "b.db", "sonora");
        crate::relay_auth::test_support::introduce(&mut [&mut b]);
        let (mut peer, mut far) = UnixStream::pair().unwrap();
        far.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let announced = MAX_RELAY_MESSAGE_BYTES + 1;
        // Only the length is sent and the connection stays open: waiting for the body would hang.
        peer.write_all(&u32::try_from(announced).unwrap().to_be_bytes())
            .unwrap();
        let err = relay_over(&mut b, &mut far, RelayRole::Responder).unwrap_err();
        assert!(
            matches!(err, RelayError::MessageTooLarge { size, limit } if size == announced && limit == MAX_RELAY_MESSAGE_BYTES),
            "{err:?}"
        );
        assert!(b.encounter_ids().unwrap().is_empty());
    }

    #[test]
    fn a_peer_of_another_protocol_version_is_refused_and_told_ours() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = enrolled(&dir, "a.db", "sonora");
        let mut b = enrolled(&dir, "b.db", "sonora");
        crate::relay_auth::test_support::introduce(&mut [&mut a, &mut b]);
        b.log(example()).unwrap();
        let (mut peer, mut far) = UnixStream::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let hello = a.relay_hello(9).unwrap();
        write_message(&mut peer, &hello).unwrap();
        let err = relay_over(&mut b, &mut far, RelayRole::Responder).unwrap_err();
        assert!(
            matches!(err, RelayError::UnsupportedVersion { found: 9 }),
            "{err:?}"
        );
        drop(far);
        let told: RelayHello = read_message(&mut peer).unwrap();
        assert_eq!(told.protocol, RELAY_PROTOCOL_VERSION);
        assert_eq!(told.team, "sonora");
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing but the hello is sent");
    }

    #[test]
    fn concurrent_edits_of_one_encounter_merge_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = enrolled(&dir, "a.db", "sonora");
        let mut b = enrolled(&dir, "b.db", "sonora");
        let id = a.log(example()).unwrap();
        let (first, _) = relay(&mut a, &mut b);
        first.unwrap();
        let edits = |list: &[&str]| -> Vec<crate::edit::FieldEdit> {
            list.iter().map(|e| e.parse().unwrap()).collect()
        };
        a.edit(
            id,
            &edits(&["counts.m.18-59=3", "services+=transfer_hospital"]),
        )
        .unwrap();
        b.edit(id, &edits(&["counts.m.18-59=4", "hazards+=heat"]))
            .unwrap();

        let (from_b, from_a) = relay(&mut b, &mut a);
        let (from_b, from_a) = (from_b.unwrap(), from_a.unwrap());
        // Each side gets the other's edit. The responder does not know the initiator's new head,
        // so it sends the whole history (a superset, kept once); the initiator answers after
        // merging, knowing the responder's head, and sends only its edit.
        assert_eq!(
            (from_a.sent, from_b.received, from_b.queued_for_upload),
            (2, 1, 1)
        );
        assert_eq!(
            (from_b.sent, from_a.received, from_a.queued_for_upload),
            (1, 1, 1)
        );
        assert_eq!(heads(&a, id), heads(&b, id));
        for store in [&a, &b] {
            let view = store.show(id).unwrap();
            let record = serde_json::to_value(&view.encounter).unwrap();
            assert!(
                record["services"]
                    .as_array()
                    .unwrap()
                    .contains(&"transfer_hospital".into())
            );
            assert!(
                record["hazards"]
                    .as_array()
                    .unwrap()
                    .contains(&"heat".into())
            );
            let conflict = view
                .conflicts
                .iter()
                .find(|c| c.path == "counts.m.18-59")
                .expect("the two head counts are kept as a conflict");
            let values: BTreeSet<String> = conflict
                .values
                .iter()
                .map(|v| v.value.to_string())
                .collect();
            assert_eq!(values, BTreeSet::from(["3".to_string(), "4".to_string()]));
        }
        assert_eq!(pending(&a).len(), 3, "the creation and both edits");
        assert_eq!(pending(&a), pending(&b));
    }

    #[test]
    fn a_peer_cannot_slip_in_another_teams_encounter_or_a_copy_under_another_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = enrolled(&dir, "a.db", "sonora");
        let mut b = enrolled(&dir, "b.db", "sonora");
        let mut chihuahua = enrolled(&dir, "c.db", "chihuahua");
        let genuine = a.log(example()).unwrap();
        let foreign = chihuahua.log(example()).unwrap();

        let mut changes = a.relay_changes_for(&b.relay_offer().unwrap()).unwrap();
        // What chihuahua would send a teammate holding nothing.
        let mut nothing_held = chihuahua.relay_offer().unwrap();
        nothing_held.encounters.clear();
        changes.encounters.extend(
            chihuahua
                .relay_changes_for(&nothing_held)
                .unwrap()
                .encounters,
        );
        let copy = EncounterId::random();
        changes.encounters.push(RelayedEncounter {
            encounter: copy,
            changes: changes.encounters[0].changes.clone(),
        });

        let accepted = b
            .accept_relayed(&a.relay_offer().unwrap(), &changes)
            .unwrap();
        assert_eq!(
            accepted.refused_encounters.iter().collect::<BTreeSet<_>>(),
            BTreeSet::from([&foreign, &copy])
        );
        assert_eq!((accepted.received, accepted.queued_for_upload), (1, 1));
        assert_eq!(b.encounter_ids().unwrap(), vec![genuine]);
        assert_eq!(b.pending_count().unwrap(), 1);
        assert_eq!(b.held_count().unwrap(), 0);
    }

    #[test]
    fn relayed_changes_missing_their_dependencies_are_held_and_still_queued() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = enrolled(&dir, "a.db", "sonora");
        let mut b = enrolled(&dir, "b.db", "sonora");
        let id = a.log(example()).unwrap();
        relay(&mut a, &mut b).0.unwrap();
        a.edit(id, &["terrain=river".parse().unwrap()]).unwrap();
        a.edit(id, &["status=closed".parse().unwrap()]).unwrap();
        let all = a.document(id).unwrap().changes();
        let only = |change: &Change| RelayChanges {
            protocol: RELAY_PROTOCOL_VERSION,
            encounters: vec![RelayedEncounter {
                encounter: id,
                changes: vec![RelayedChange {
                    change: ByteBuf::from(change.raw_bytes().to_vec()),
                    pending: true,
                }],
            }],
        };
        let offer = a.relay_offer().unwrap();

        let later = b.accept_relayed(&offer, &only(&all[2])).unwrap();
        assert_eq!((later.received, later.queued_for_upload), (1, 1));
        assert_eq!(b.held_count().unwrap(), 1);
        assert_eq!(b.show(id).unwrap().encounter.status, Status::Open);
        assert!(pending(&b).contains(all[2].hash().0.as_slice()));

        let again = b.accept_relayed(&offer, &only(&all[2])).unwrap();
        assert_eq!(again.received, 0, "a held change is not new");

        let earlier = b.accept_relayed(&offer, &only(&all[1])).unwrap();
        assert_eq!((earlier.received, earlier.queued_for_upload), (1, 1));
        assert_eq!(b.held_count().unwrap(), 0);
        assert_eq!(heads(&b, id), heads(&a, id));
        assert_eq!(b.show(id).unwrap().encounter.status, Status::Closed);
    }

    #[test]
    fn a_broken_change_refuses_the_whole_message() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = enrolled(&dir, "a.db", "sonora");
        let mut b = enrolled(&dir, "b.db", "sonora");
        a.log(example()).unwrap();
        a.log(example()).unwrap();
        let mut changes = a.relay_changes_for(&b.relay_offer().unwrap()).unwrap();
        changes.encounters[1].changes[0].change = ByteBuf::from(vec![0x85, 0x6f, 0x4a, 0x83]);
        let err = b
            .accept_relayed(&a.relay_offer().unwrap(), &changes)
            .unwrap_err();
        assert!(matches!(err, RelayError::Malformed { .. }), "{err:?}");
        assert!(b.encounter_ids().unwrap().is_empty());
    }

    #[test]
    fn changes_written_under_this_devices_own_id_by_another_store_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = enrolled(&dir, "b.db", "sonora");
        let own = b.log(example()).unwrap();
        let mut forger = DeviceStore::open(dir.path().join("forger.db")).unwrap();
        let mut as_b = b.enrolment().unwrap().unwrap();
        as_b.token = "none".into();
        forger.enrol(&as_b).unwrap();
        let forged = forger.log(example()).unwrap();
        let empty = b.relay_offer().unwrap();
        let changes = forger
            .relay_changes_for(&RelayOffer {
                encounters: vec![],
                ..empty
            })
            .unwrap();
        assert_eq!(
            changes.change_count(),
            1,
            "positive control: one forged change"
        );

        let accepted = b
            .accept_relayed(&forger.relay_offer().unwrap(), &changes)
            .unwrap();
        assert_eq!(accepted.refused_encounters, vec![forged]);
        assert_eq!(accepted.received, 0);
        assert_eq!(b.encounter_ids().unwrap(), vec![own]);
        assert_eq!(b.pending_count().unwrap(), 1);
    }
}
