//! The checks behind every fuzz target, one function per decoder of network input. The
//! libFuzzer targets in `fuzz_targets/` call them with generated inputs (`scripts/fuzz.sh`), and
//! `tests/tests/fuzz_corpus.rs` calls them with every committed seed and regression input on the
//! stable toolchain, so a crash once found stays fixed. Each function panics only on a bug: an
//! input may be refused, never crash the decoder or break a round trip.

use std::io::Read;

use auxilio_core::document::{EncounterDocument, parse_change};
use auxilio_core::id::new_actor_id;
use auxilio_core::protocol;
use auxilio_core::relay::{self, RelayAnswer, RelayChanges, RelayDone, RelayMessage, RelayOffer};
use auxilio_core::relay_auth::{RelayHello, RelayProof};
use auxilio_core::validation::validate;
use auxilio_core::{DeviceId, Encounter, EncounterId};
use auxilio_server::{directory, ledger};

/// Installed by every target after libFuzzer's own panic hook, which aborts on any panic, even
/// one our code catches. `EncounterDocument::apply_changes` catches Automerge's panics on
/// malformed changes and refuses the changes, so a panic raised inside the automerge crate is
/// let unwind to that guard; if nothing of ours catches it, libFuzzer's wrapper still aborts and
/// reports the input. Every other panic aborts at once, as before.
pub fn let_guarded_automerge_panics_unwind() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_automerge = info
            .location()
            .is_some_and(|at| at.file().contains("/automerge-"));
        if !in_automerge {
            abort(info);
        }
    }));
}

/// `POST /v1/sync` bodies as the server reads them: `protocol::decode_request`, then the
/// ledger's `decode` (request id and resume bounds, every change parsed as an Automerge change).
pub fn sync_request(body: &[u8]) {
    if let Ok(request) = protocol::decode_request(body) {
        // What decodes must encode back to something that decodes to the same request.
        let again = protocol::decode_request(&protocol::encode(&request))
            .expect("a decoded request re-encodes");
        assert_eq!(again, request);
        let _ = ledger::decode(request);
    }
}

/// Sync response bodies as a device reads them, whole or cut off: `protocol::read_response`.
pub fn sync_response(body: &[u8]) {
    if let Ok(response) = protocol::read_response(body)
        && response.complete
    {
        // A complete response re-encodes to one that reads back the same.
        let again = protocol::decode_response(&protocol::encode_response(&response))
            .expect("a read response re-encodes");
        assert_eq!(again, response);
    }
    let _ = protocol::decode_response(body);
}

/// The inflation limit of [`deflate`]: small, so a compression bomb is caught by the limit
/// rather than by memory.
pub const DEFLATE_LIMIT: usize = 64 * 1024;

/// `Content-Encoding: deflate` bodies, inflated under a limit as the server and the device do:
/// `protocol::decompress`, and the streaming reader a device reads a cut response through.
pub fn deflate(body: &[u8]) {
    match protocol::decompress(body, DEFLATE_LIMIT) {
        Ok(inflated) => {
            assert!(inflated.len() <= DEFLATE_LIMIT);
            assert_eq!(
                protocol::decompress(&protocol::compress(&inflated), DEFLATE_LIMIT),
                Ok(inflated)
            );
        }
        Err(protocol::ProtocolError::InflatesTooLarge { limit }) => {
            assert_eq!(limit, DEFLATE_LIMIT)
        }
        Err(_) => {}
    }
    let _ = protocol::read_response(protocol::decompressing(body).take(DEFLATE_LIMIT as u64));
}

fn relay_round_trip<T: RelayMessage + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(message) = relay::decode_message::<T>(body) {
        let again: T = relay::decode_message(&relay::encode_message(&message))
            .expect("a decoded message re-encodes");
        assert_eq!(again, message);
    }
}

/// Relay message bodies (phone to phone, over Bluetooth or Wi-Fi): `relay::decode_message` for
/// each of its messages (the handshake's hello and proof, then the exchange), as the receiving
/// phone reads them.
pub fn relay_message(body: &[u8]) {
    relay_round_trip::<RelayHello>(body);
    relay_round_trip::<RelayProof>(body);
    relay_round_trip::<RelayOffer>(body);
    relay_round_trip::<RelayAnswer>(body);
    relay_round_trip::<RelayChanges>(body);
    relay_round_trip::<RelayDone>(body);
}

/// `Authorization: Bearer` tokens as the server reads them before any database look-up:
/// `directory::parse_token`.
pub fn bearer_token(header: &[u8]) {
    let Ok(token) = std::str::from_utf8(header) else {
        return;
    };
    if let Ok((device, secret)) = directory::parse_token(token) {
        assert_eq!(secret.len(), 32);
        assert!(token.contains(&device.to_string()));
    }
}

/// An encounter as JSON, as `auxilio device log` and the HTTP API read it: parsed into
/// `schema::Encounter`, validated, and (when valid) written into a new Automerge document, which
/// must read back as the same record.
pub fn encounter_json(json: &[u8]) {
    let Ok(encounter) = serde_json::from_slice::<Encounter>(json) else {
        return;
    };
    if validate(&encounter).is_err() {
        return;
    }
    let actor = new_actor_id(DeviceId::from_bytes([7; 16]));
    let id = EncounterId::from_bytes([9; 16]);
    let (document, _change) = EncounterDocument::create(actor, id, &encounter, 0)
        .expect("a valid encounter makes a document");
    let read_back = document
        .encounter()
        .expect("a document made from a valid record reads back");
    assert_eq!(read_back, encounter);
}

/// Uploaded change bytes as the server handles each of them: `document::parse_change`, applied to an
/// encounter's document, then the document read as a record, its team values, its conflicts and
/// its JSON (what the index derives its columns from), saved as the server saves it.
///
/// The input is one or more changes, each preceded by a two-byte big-endian length, so the
/// fuzzer can build documents of several changes (a change and its dependants).
pub fn automerge_changes(bytes: &[u8]) {
    let mut changes = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let length = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let end = (2 + length).min(rest.len());
        let chunk = &rest[2..end];
        rest = &rest[end..];
        // The server refuses compressed changes before parsing them (see `ledger::decode`).
        if protocol::is_compressed_change(chunk) {
            continue;
        }
        if let Ok(change) = parse_change(chunk) {
            changes.push(change);
        }
    }
    let mut document = EncounterDocument::empty();
    if document.apply_changes(changes).is_err() {
        return;
    }
    let _ = document.encounter();
    let _ = document.conflicts();
    let _ = document.team_values();
    let _ = document.schema_version();
    let _ = document.missing_dependencies();
    // What the server stores: refused unless the saved document loads again.
    if let Ok(saved) = document.save_checked() {
        EncounterDocument::load(&saved, None).expect("a checked document loads");
    }
}
