//! Writes the seed corpus of the fuzz targets (`fuzz/corpus/<target>/`): real, valid inputs of
//! every decoder of network input, so the fuzzer starts from the shapes it must get past instead
//! of guessing CBOR, zlib and Automerge framing from nothing.
//!
//! Run: `cargo run -p auxilio-core --example fuzz_seeds -- fuzz/corpus` (scripts/fuzz.sh does
//! not; the seeds are committed, and this remakes them after a format change).

use std::path::{Path, PathBuf};

use auxilio_core::document::EncounterDocument;
use auxilio_core::id::new_actor_id;
use auxilio_core::protocol::{
    self, EncounterChanges, PROTOCOL_VERSION, PurgeKind, PurgeNotice, RejectReason, Rejection,
    ResponseFrame, SyncRequest, SyncResponse, VaultRejection, WantedChanges,
};
use auxilio_core::relay::{
    self, OfferedEncounter, RelayAnswer, RelayChanges, RelayDone, RelayOffer, RelayedChange,
    RelayedEncounter,
};
use auxilio_core::relay_auth::{RelayHello, RelayProof};
use auxilio_core::{DeviceId, Encounter, EncounterId, SCHEMA_VERSION};
use serde_bytes::ByteBuf;

/// Encounters as a device logs them: a group, a triaged casualty, a UASC hand-over.
const ENCOUNTERS: [&str; 3] = [
    r#"{"team":"beta-sonora","services":["rescue","humanitarian_aid"],"location":{"lat":31.86,"lon":-112.85,"accuracy_m":20},"terrain":"desert","hazards":["heat"],"counts":{"f":{"18-59":1},"m":{"18-59":3},"injured":1},"nationality_counts":{"HND":3,"GTM":1},"notes":"cuatro personas cerca de Sonoyta"}"#,
    r#"{"team":"beta-sonora","services":["rescue","first_aid"],"adm1":"MX-SON","counts":{"m":{"18-59":1},"injured":1},"casualties":{"a":{"sex":"m","age_band":"18-59","triage":{"method":"start","category":"red"},"conditions":["dehydration"]}}}"#,
    r#"{"team":"beta-chihuahua","services":["rescue"],"adm1":"MX-CHH","counts":{"m":{"12-17":1},"uasc":1,"injured":1},"casualties":{"c":{"sex":"m","age_band":"12-17","triage":{"method":"jumpstart","category":"yellow"},"uasc":{}}}}"#,
];

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let folder = dir.join(target);
    std::fs::create_dir_all(&folder).expect("the corpus folder can be made");
    std::fs::write(folder.join(name), bytes).expect("a seed can be written");
}

fn main() {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into())
        .into();
    let device = DeviceId::from_bytes([7; 16]);
    let mut groups = Vec::new();
    for (n, json) in ENCOUNTERS.iter().enumerate() {
        write(
            &dir,
            "encounter_json",
            &format!("encounter-{n}.json"),
            json.as_bytes(),
        );
        let mut encounter: Encounter = serde_json::from_str(json).expect("seed encounters parse");
        encounter.schema_version = SCHEMA_VERSION;
        let id = EncounterId::from_bytes([n as u8 + 1; 16]);
        let (mut document, first) =
            EncounterDocument::create(new_actor_id(device), id, &encounter, 1_764_000_000)
                .expect("seed encounters make documents");
        encounter.status = serde_json::from_value(serde_json::json!("closed")).expect("a status");
        let second = document
            .update(&encounter, &Default::default(), 1_764_000_100)
            .expect("an edit commits");
        let changes: Vec<_> = std::iter::once(first).chain(second).collect();
        let mut framed = Vec::new();
        for change in &changes {
            let bytes = change.raw_bytes();
            framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            framed.extend_from_slice(bytes);
        }
        write(
            &dir,
            "automerge_changes",
            &format!("document-{n}.bin"),
            &framed,
        );
        groups.push((id, changes, document.heads()));
    }

    let request = SyncRequest {
        protocol: PROTOCOL_VERSION,
        cursor_check: Some(ByteBuf::from(vec![3; 32])),
        actor: Some(ByteBuf::from(new_actor_id(device).to_bytes().to_vec())),
        cursor: 12,
        changes: groups
            .iter()
            .map(|(id, changes, _)| EncounterChanges {
                encounter: *id,
                changes: changes
                    .iter()
                    .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
                    .collect(),
            })
            .collect(),
        request_id: Some(ByteBuf::from(vec![4; 16])),
        resume: vec![ByteBuf::from(vec![5; 16])],
        max_response_bytes: Some(512 * 1024),
        purges_after: 7,
        vaults: Vec::new(),
    };
    let request_bytes = protocol::encode(&request);
    write(&dir, "sync_request", "request.cbor", &request_bytes);
    let empty = SyncRequest {
        changes: Vec::new(),
        request_id: None,
        resume: Vec::new(),
        max_response_bytes: None,
        cursor_check: None,
        cursor: 0,
        ..request.clone()
    };
    write(
        &dir,
        "sync_request",
        "empty.cbor",
        &protocol::encode(&empty),
    );

    let response = SyncResponse {
        protocol: PROTOCOL_VERSION,
        accepted: vec![ByteBuf::from(vec![1; 32])],
        rejected: vec![Rejection {
            encounter: groups[0].0,
            reason: RejectReason::WrongAuthor,
            message: "change written by another team's device".into(),
        }],
        wanted: vec![WantedChanges {
            encounter: groups[1].0,
            hashes: vec![ByteBuf::from(vec![2; 32])],
        }],
        resumed: vec![ByteBuf::from(vec![5; 16])],
        changes: groups
            .iter()
            .enumerate()
            .map(|(n, (id, changes, _))| ResponseFrame {
                encounter: *id,
                changes: changes
                    .iter()
                    .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
                    .collect(),
                through: 20 + n as u64,
            })
            .collect(),
        cursor: 22,
        cursor_check: ByteBuf::from(vec![6; 32]),
        restarted: false,
        more: true,
        purges: vec![PurgeNotice {
            seq: 8,
            encounter: groups[0].0,
            kind: PurgeKind::VaultOnly,
        }],
        purges_through: 8,
        complete: true,
        vault_recipients: vec![
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into(),
        ],
        vaults_accepted: vec![ByteBuf::from(vec![9; 16])],
        vaults_rejected: vec![VaultRejection {
            id: ByteBuf::from(vec![10; 16]),
            reason: "not a UASC or missing-person case".into(),
        }],
    };
    let response_bytes = protocol::encode_response(&response);
    write(&dir, "sync_response", "response.cbor", &response_bytes);
    write(
        &dir,
        "sync_response",
        "cut.cbor",
        &response_bytes[..response_bytes.len() * 2 / 3],
    );

    write(
        &dir,
        "deflate",
        "request.zlib",
        &protocol::compress(&request_bytes),
    );
    write(
        &dir,
        "deflate",
        "response.zlib",
        &protocol::compress(&response_bytes),
    );
    write(
        &dir,
        "deflate",
        "zeros.zlib",
        &protocol::compress(&[0; 200_000]),
    );

    let hello = RelayHello {
        protocol: relay::RELAY_PROTOCOL_VERSION,
        team: "beta-sonora".into(),
        device,
        nonce: ByteBuf::from(vec![9; 32]),
    };
    write(
        &dir,
        "relay_message",
        "hello.cbor",
        &relay::encode_message(&hello),
    );
    let proof = RelayProof {
        protocol: relay::RELAY_PROTOCOL_VERSION,
        signature: ByteBuf::from(vec![3; 64]),
    };
    write(
        &dir,
        "relay_message",
        "proof.cbor",
        &relay::encode_message(&proof),
    );
    let offer = RelayOffer {
        protocol: relay::RELAY_PROTOCOL_VERSION,
        team: "beta-sonora".into(),
        device,
        encounters: groups
            .iter()
            .map(|(id, _, heads)| OfferedEncounter {
                encounter: *id,
                heads: heads.iter().map(|h| ByteBuf::from(h.0.to_vec())).collect(),
            })
            .collect(),
    };
    let changes = RelayChanges {
        protocol: relay::RELAY_PROTOCOL_VERSION,
        encounters: groups
            .iter()
            .map(|(id, changes, _)| RelayedEncounter {
                encounter: *id,
                changes: changes
                    .iter()
                    .map(|c| RelayedChange {
                        change: ByteBuf::from(c.raw_bytes().to_vec()),
                        pending: true,
                    })
                    .collect(),
            })
            .collect(),
    };
    write(
        &dir,
        "relay_message",
        "offer.cbor",
        &relay::encode_message(&offer),
    );
    write(
        &dir,
        "relay_message",
        "changes.cbor",
        &relay::encode_message(&changes),
    );
    let answer = RelayAnswer {
        protocol: relay::RELAY_PROTOCOL_VERSION,
        offer,
        changes,
    };
    write(
        &dir,
        "relay_message",
        "answer.cbor",
        &relay::encode_message(&answer),
    );
    let done = RelayDone {
        protocol: relay::RELAY_PROTOCOL_VERSION,
        stored: 6,
    };
    write(
        &dir,
        "relay_message",
        "done.cbor",
        &relay::encode_message(&done),
    );

    // The token format of `directory::issue_token`: `auxilio_<device id>_<32-byte secret>`.
    let secret = bs58::encode([42u8; 32]).into_string();
    write(
        &dir,
        "bearer_token",
        "token.txt",
        format!("auxilio_{device}_{secret}").as_bytes(),
    );
    println!("seeds written under {}", dir.display());
}
