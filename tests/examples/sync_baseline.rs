//! Auxilio's sync protocol against the baseline, side by side on one workload: a phone with N
//! encounters (each logged, then edited twice: three changes) uploads them to a server that has
//! none, and a second phone of the team downloads them all.
//!
//! - Auxilio: the real server in process on a loopback port, the real client, bodies counted as
//!   they cross HTTP; once with the default pages (512 KiB of changes, deflate), once with LAN
//!   pages (16 MiB), once with default pages and no compression.
//! - Baseline: the same documents synced with one Automerge sync session per document
//!   (`auxilio_tests::baseline`), in memory, counting messages, round trips and encoded bytes.
//!
//! ```text
//! cargo build --release -p auxilio-tests --example sync_baseline
//! target/release/examples/sync_baseline 100 1000 5000
//! ```
//!
//! For each size it prints one JSON line. `floor_bytes` is the raw bytes of every change, which
//! have to move once up and once down.

use std::collections::BTreeMap;

use auxilio_server::client::{self, SyncOptions};
use auxilio_server::directory::Role;
use auxilio_tests::baseline::{automerge_documents, per_document_automerge_sync, raw_change_bytes};
use auxilio_tests::{Device, TeamFixture, benchmark_encounter_json};

/// Each encounter is logged and then edited twice, so its document has three changes.
const EDITS: [&str; 2] = ["status=closed", "counts.injured=2"];

/// A phone holding the workload: `encounters` encounters, each logged and edited twice.
fn phone_with_backlog(team: &TeamFixture, name: &str, encounters: usize) -> Device {
    let mut phone = team.device(name, Role::Field);
    for i in 0..encounters {
        let id = phone.log(&benchmark_encounter_json(i));
        for edit in EDITS {
            phone.edit(id, &[edit]);
        }
    }
    phone
}

/// Bytes that crossed the link both ways over the floor (every change once up, once down).
fn wire_over_floor(wire_bytes: u64, floor_bytes_each_way: u64) -> f64 {
    (wire_bytes as f64 / (2 * floor_bytes_each_way) as f64 * 1000.0).round() / 1000.0
}

/// A fresh phone uploads the workload and another downloads it, with `options`.
fn auxilio(encounters: usize, options: SyncOptions) -> serde_json::Value {
    let team = TeamFixture::start("sonora", Default::default());
    let mut writer = phone_with_backlog(&team, "writer", encounters);
    let floor_bytes = raw_change_bytes(&automerge_documents(&writer.store));
    let mut reader = team.device("reader", Role::Field);
    let up = client::sync_with(&mut writer.store, options, |_| {}).unwrap();
    let down = client::sync_with(&mut reader.store, options, |_| {}).unwrap();
    assert_eq!(reader.ids().len(), encounters);
    serde_json::json!({
        "round_trips_up": up.round_trips,
        "round_trips_down": down.round_trips,
        "bytes_up": up.bytes_up + down.bytes_up,
        "bytes_down": up.bytes_down + down.bytes_down,
        "floor_bytes_each_way": floor_bytes,
        "wire_over_floor": wire_over_floor(
            up.bytes_up + up.bytes_down + down.bytes_up + down.bytes_down,
            floor_bytes
        ),
    })
}

/// The same workload with one Automerge sync session per document, up then down.
fn baseline(encounters: usize) -> serde_json::Value {
    let team = TeamFixture::start("sonora", Default::default());
    let writer = phone_with_backlog(&team, "writer", encounters);
    let mut device = automerge_documents(&writer.store);
    let floor_bytes = raw_change_bytes(&device);
    let mut server = BTreeMap::new();
    let upload = per_document_automerge_sync(&mut device, &mut server);
    // The download is the same sessions with the server, now holding everything, speaking to
    // a phone that holds nothing.
    let mut fresh_phone = BTreeMap::new();
    let download = per_document_automerge_sync(&mut server, &mut fresh_phone);
    assert_eq!(fresh_phone.len(), encounters);
    serde_json::json!({
        "round_trips_up": upload.round_trips,
        "round_trips_down": download.round_trips,
        "bytes_up": upload.bytes_up + download.bytes_down,
        "bytes_down": upload.bytes_down + download.bytes_up,
        "floor_bytes_each_way": floor_bytes,
        "wire_over_floor": wire_over_floor(
            upload.bytes_up + upload.bytes_down + download.bytes_up + download.bytes_down,
            floor_bytes
        ),
    })
}

fn run(encounters: usize) -> serde_json::Value {
    serde_json::json!({
        "encounters": encounters,
        "changes": encounters * (1 + EDITS.len()),
        "auxilio_default_pages": auxilio(encounters, SyncOptions::default()),
        "auxilio_lan_pages": auxilio(encounters, SyncOptions::for_lan()),
        "auxilio_uncompressed": auxilio(encounters, SyncOptions { compress: false, ..SyncOptions::default() }),
        "baseline_per_document": baseline(encounters),
    })
}

fn main() {
    for size in auxilio_tests::sizes_from_args(&[100, 1000]) {
        eprintln!("syncing {size} encounters both ways, Auxilio and per-document Automerge…");
        println!("{}", run(size));
    }
}
