//! The baseline for the sync benchmark: what one device's encounters cost to sync with one
//! Automerge sync session per document (`auxilio_tests::baseline`), against a server that has
//! none of them yet. No HTTP and no server process: the sessions run in memory, so the figures
//! are messages, round trips and bytes, not time.
//!
//! ```text
//! cargo build --release -p auxilio-tests --example sync_baseline
//! target/release/examples/sync_baseline 100 1000
//! ```
//!
//! For each size it prints one JSON line: the baseline's figures and `floor_bytes`, the raw
//! bytes of every change, which Auxilio's protocol sends once each plus its framing.

use std::collections::BTreeMap;

use auxilio_core::Encounter;
use auxilio_core::edit::FieldEdit;
use auxilio_tests::baseline::{
    automerge_documents, offline_store, per_document_automerge_sync, raw_change_bytes,
};
use auxilio_tests::benchmark_encounter_json;

/// Each encounter is logged and then edited twice, so its document has three changes.
const EDITS: [&str; 2] = ["status=closed", "counts.injured=2"];

fn run(encounters: usize) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let mut store = offline_store(&dir.path().join("device.db"));
    let edits: Vec<FieldEdit> = EDITS.iter().map(|edit| edit.parse().unwrap()).collect();
    for i in 0..encounters {
        let encounter: Encounter = serde_json::from_str(&benchmark_encounter_json(i)).unwrap();
        let id = store.log(encounter).unwrap();
        // One edit per call, so each is its own change, as two separate edits on a phone are.
        for edit in &edits {
            assert!(store.edit(id, std::slice::from_ref(edit)).unwrap());
        }
    }
    let mut device = automerge_documents(&store);
    let floor_bytes = raw_change_bytes(&device);
    let mut server = BTreeMap::new();
    let baseline = per_document_automerge_sync(&mut device, &mut server);
    assert_eq!(server.len(), encounters);
    serde_json::json!({
        "encounters": encounters,
        "baseline": baseline,
        "floor_bytes": floor_bytes,
    })
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers of encounters"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000]
    } else {
        sizes
    };
    for size in sizes {
        eprintln!("syncing {size} encounters with one Automerge sync session each…");
        println!("{}", run(size));
    }
}
