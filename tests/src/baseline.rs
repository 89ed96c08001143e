//! The baseline the benchmark compares Auxilio's sync protocol with: the same documents synced
//! with one Automerge sync session per document (`automerge::sync`), as a sync server built on
//! Automerge's own protocol would do it.
//!
//! Auxilio moves the changes of many encounters in one request; Automerge's protocol negotiates
//! each document on its own (heads, bloom filter of what each side has, then the changes). This
//! module runs those sessions between two in-memory peers, merges for real, and counts messages,
//! round trips and encoded bytes, so both can be put side by side on the same workload.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use auxilio_core::store::Enrolment;
use auxilio_core::{DeviceId, DeviceStore, EncounterId};

/// More messages than any session between two honest peers needs (four when one side starts
/// empty); a session still talking after this many is stuck, not slow.
const MAX_MESSAGES_PER_SESSION: u64 = 20;

/// Figures of syncing a set of documents between two peers with one Automerge sync session per
/// document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BaselineFigures {
    pub documents: u64,
    /// Messages sent in either direction (each message of a session counts once).
    pub messages: u64,
    /// Request/response round trips if a device drives each session over HTTP: each
    /// device→server message with its server reply is one round trip; a final one-way message
    /// also counts as one.
    pub round_trips: u64,
    /// Sum of the encoded sync message sizes sent by the device.
    pub bytes_up: u64,
    /// Sum of the encoded sync message sizes sent by the server.
    pub bytes_down: u64,
}

impl std::ops::AddAssign for BaselineFigures {
    fn add_assign(&mut self, other: Self) {
        self.documents += other.documents;
        self.messages += other.messages;
        self.round_trips += other.round_trips;
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
    }
}

/// Syncs every document of `device` with the document of the same key in `server`, one
/// Automerge sync session per document, and returns what that cost.
///
/// A document missing on one side starts there as an empty [`Automerge`] (and is in that side's
/// map afterwards). Each session starts from fresh [`sync::State`]s, as a device that keeps no
/// sync state per document would; the device speaks first and the two take turns until neither
/// has a message. Every message is encoded and decoded again, so the bytes counted are the bytes
/// that would travel.
///
/// # Panics
///
/// If a session has not converged within 20 messages, if a message cannot be decoded or
/// applied, or if a session ends with the two sides' heads different.
pub fn per_document_automerge_sync<K: Ord + Clone>(
    device: &mut BTreeMap<K, Automerge>,
    server: &mut BTreeMap<K, Automerge>,
) -> BaselineFigures {
    let keys: BTreeSet<K> = device.keys().chain(server.keys()).cloned().collect();
    let mut figures = BaselineFigures::default();
    // `K` is not required to be `Debug`, so a failing document is named by its position in key
    // order.
    for (position, key) in keys.into_iter().enumerate() {
        let device_document = device.entry(key.clone()).or_default();
        let server_document = server.entry(key).or_default();
        figures += sync_one_document(position, device_document, server_document);
    }
    figures
}

/// One sync session between the device's and the server's copy of one document.
fn sync_one_document(
    position: usize,
    device_document: &mut Automerge,
    server_document: &mut Automerge,
) -> BaselineFigures {
    let mut device_state = sync::State::new();
    let mut server_state = sync::State::new();
    let mut figures = BaselineFigures {
        documents: 1,
        ..BaselineFigures::default()
    };
    let mut device_turn = true;
    // A server message rides back on the response to the device message just before it. If the
    // device had nothing to say on its last turn, it would have to ask (a request with no sync
    // message) to receive the server's message: a round trip of its own.
    let mut device_spoke_last_turn = false;
    let mut silent_turns_in_a_row = 0;
    // A side's next message depends only on what it has received since its last one, so once
    // both sides have been silent in turn, neither will speak again.
    while silent_turns_in_a_row < 2 {
        let sent = if device_turn {
            send_message(
                position,
                device_document,
                &mut device_state,
                server_document,
                &mut server_state,
            )
        } else {
            send_message(
                position,
                server_document,
                &mut server_state,
                device_document,
                &mut device_state,
            )
        };
        match sent {
            None => silent_turns_in_a_row += 1,
            Some(encoded_length) => {
                silent_turns_in_a_row = 0;
                figures.messages += 1;
                if device_turn {
                    figures.bytes_up += encoded_length;
                    figures.round_trips += 1;
                } else {
                    figures.bytes_down += encoded_length;
                    if !device_spoke_last_turn {
                        figures.round_trips += 1;
                    }
                }
                assert!(
                    figures.messages <= MAX_MESSAGES_PER_SESSION,
                    "the Automerge sync session of document {position} (in key order) did not \
                     converge within {MAX_MESSAGES_PER_SESSION} messages"
                );
            }
        }
        device_spoke_last_turn = device_turn && sent.is_some();
        device_turn = !device_turn;
    }
    assert_eq!(
        device_document.get_heads(),
        server_document.get_heads(),
        "the Automerge sync session of document {position} (in key order) ended with the device's \
         and the server's heads different"
    );
    figures
}

/// Lets `sender` generate its next sync message and delivers it to `receiver` through its
/// encoded form; returns the encoded length, or `None` if the sender had nothing to say.
fn send_message(
    position: usize,
    sender: &Automerge,
    sender_state: &mut sync::State,
    receiver: &mut Automerge,
    receiver_state: &mut sync::State,
) -> Option<u64> {
    let message = sender.generate_sync_message(sender_state)?;
    let encoded = message.encode();
    let decoded = sync::Message::decode(&encoded).unwrap_or_else(|error| {
        panic!("a sync message of document {position} (in key order) does not decode: {error}")
    });
    receiver
        .receive_sync_message(receiver_state, decoded)
        .unwrap_or_else(|error| {
            panic!(
                "a sync message of document {position} (in key order) cannot be applied: {error}"
            )
        });
    Some(encoded.len() as u64)
}

/// The sum of the raw bytes of every change of `documents`, each change counted once as
/// Automerge stores it on its own (uncompressed): the floor under a protocol that sends every
/// change once, as Auxilio's does.
pub fn raw_change_bytes<K>(documents: &BTreeMap<K, Automerge>) -> u64 {
    documents
        .values()
        .flat_map(|document| document.get_changes(&[]))
        .map(|change| change.raw_bytes().len() as u64)
        .sum()
}

/// A device store at `path`, enrolled without any server, so that encounters can be logged and
/// edited to build real documents. Nothing syncs it over HTTP: its server address and token are
/// placeholders.
pub fn offline_store(path: &Path) -> DeviceStore {
    let mut store = DeviceStore::open(path).unwrap();
    store
        .enrol(&Enrolment {
            server_url: "http://127.0.0.1:9".to_string(),
            token: "offline".to_string(),
            device_id: DeviceId::random(),
            team: "sonora".to_string(),
            role: "field".to_string(),
            agent: "baseline".to_string(),
        })
        .unwrap();
    store
}

/// Every encounter document of `store` as a plain [`Automerge`] document (loaded from its saved
/// bytes, so it holds exactly what the store holds), keyed by encounter id.
pub fn automerge_documents(store: &DeviceStore) -> BTreeMap<EncounterId, Automerge> {
    store
        .encounter_ids()
        .unwrap()
        .into_iter()
        .map(|id| {
            let saved = store.document(id).unwrap().save();
            (id, Automerge::load(&saved).unwrap())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::benchmark_encounter_json;
    use automerge::transaction::Transactable;
    use auxilio_core::Encounter;
    use auxilio_core::edit::FieldEdit;

    /// A store in `dir` with `count` encounters, each logged and then edited twice (three changes
    /// per document, like the benchmark's workload).
    fn store_with_encounters(dir: &tempfile::TempDir, count: usize) -> DeviceStore {
        let mut store = offline_store(&dir.path().join("device.db"));
        for i in 0..count {
            let encounter: Encounter = serde_json::from_str(&benchmark_encounter_json(i)).unwrap();
            let id = store.log(encounter).unwrap();
            for edit in ["status=closed", "counts.injured=2"] {
                let edit: FieldEdit = edit.parse().unwrap();
                assert!(store.edit(id, &[edit]).unwrap());
            }
        }
        store
    }

    fn heads_of(
        documents: &BTreeMap<EncounterId, Automerge>,
    ) -> BTreeMap<EncounterId, Vec<automerge::ChangeHash>> {
        documents
            .iter()
            .map(|(id, document)| (*id, document.get_heads()))
            .collect()
    }

    #[test]
    fn new_documents_reach_an_empty_server_and_cost_at_least_a_round_trip_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_encounters(&dir, 5);
        let mut device = automerge_documents(&store);
        let mut server = BTreeMap::new();
        let floor = raw_change_bytes(&device);

        let figures = per_document_automerge_sync(&mut device, &mut server);

        assert_eq!(figures.documents, 5);
        assert_eq!(server.len(), 5);
        assert_eq!(heads_of(&device), heads_of(&server));
        for (id, document) in &server {
            assert_eq!(document.get_changes(&[]).len(), 3, "encounter {id}");
        }
        assert!(figures.round_trips >= 5, "{figures:?}");
        // What we observe: device sends its heads; the server (empty) asks for them; the device
        // sends the changes; the server confirms its new heads. Four messages, two round trips.
        assert_eq!(figures.messages, 4 * 5, "{figures:?}");
        assert_eq!(figures.round_trips, 2 * 5, "{figures:?}");
        // Not greater than the raw change bytes, but smaller: when a peer would send more than a
        // third of a document's changes to a peer that speaks message version 2 (the server's
        // first answer says it does), Automerge 0.12 sends the whole document in its saved,
        // columnar form instead of the changes one by one. The three changes of one encounter
        // share actor, keys and most of their values, so the saved document is smaller than the
        // three raw changes together (about 780 bytes against 1,080 here), and that saving
        // outweighs the sync messages' heads, hashes and bloom filters. The saved documents are
        // then the floor of what goes up.
        let saved_bytes: u64 = device
            .values()
            .map(|document| document.save().len() as u64)
            .sum();
        assert!(
            saved_bytes < figures.bytes_up && figures.bytes_up < floor,
            "{figures:?}, saved documents {saved_bytes} bytes, raw changes {floor} bytes"
        );
        // The server sends no changes, only heads, needs and bloom filters.
        assert!(figures.bytes_down < figures.bytes_up, "{figures:?}");
    }

    #[test]
    fn documents_already_equal_on_both_sides_still_cost_a_round_trip_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_encounters(&dir, 4);
        let mut device = automerge_documents(&store);
        let mut server = automerge_documents(&store);

        let figures = per_document_automerge_sync(&mut device, &mut server);

        // A fresh session knows nothing of the other side, so the device must send its heads and
        // the server must answer with its own before either can tell there is nothing to do:
        // one message each way, one round trip, per document, for nothing to sync.
        assert_eq!(
            figures,
            BaselineFigures {
                documents: 4,
                messages: 2 * 4,
                round_trips: 4,
                bytes_up: figures.bytes_up,
                bytes_down: figures.bytes_down,
            }
        );
        assert!(figures.bytes_up > 0 && figures.bytes_down > 0);
        assert_eq!(heads_of(&device), heads_of(&server));
    }

    #[test]
    fn a_document_only_the_server_has_is_downloaded_and_concurrent_edits_merge() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_encounters(&dir, 2);
        let mut server = automerge_documents(&store);
        let ids: Vec<EncounterId> = server.keys().copied().collect();
        // The device edits the second encounter after the server's copy was taken, while the
        // server's copy takes an edit of another actor (a teammate's phone) at the same time.
        let edit: FieldEdit = "terrain=river".parse().unwrap();
        assert!(store.edit(ids[1], &[edit]).unwrap());
        let teammates_copy = server.get_mut(&ids[1]).unwrap();
        teammates_copy.set_actor(automerge::ActorId::random());
        let mut transaction = teammates_copy.transaction();
        transaction
            .put(automerge::ROOT, "terrain", "mountain")
            .unwrap();
        transaction.commit();
        // And the device does not have the first encounter at all.
        let mut device = automerge_documents(&store);
        device.remove(&ids[0]);

        let figures = per_document_automerge_sync(&mut device, &mut server);

        assert_eq!(figures.documents, 2);
        assert_eq!(device.len(), 2);
        assert_eq!(heads_of(&device), heads_of(&server));
        assert_eq!(device[&ids[0]].get_changes(&[]).len(), 3);
        assert_eq!(device[&ids[1]].get_heads().len(), 2, "two concurrent heads");
    }
}
