//! Sync benchmark: how time, bytes on the wire and server memory grow with the number of
//! encounters, measured on the real release binary over loopback HTTP.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/sync_bench 500 5000
//! ```
//!
//! For each size it prints one JSON line. Compare the sizes within one run (ratios), not with
//! figures from another machine.

use std::time::{Duration, Instant};

use auxilio_server::client;
use auxilio_server::directory::Role;
use auxilio_tests::{Device, ServerProcess, add_team, benchmark_encounter_json, enroll, get_json};

const DEVICES: usize = 10;

fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn latencies(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.95))
}

fn run(encounters: usize) -> serde_json::Value {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    add_team(data.path(), "sonora");
    let server = ServerProcess::spawn(data.path());
    let idle_rss = memory_kib(server.pid(), "VmRSS:");

    let mut devices: Vec<Device> = (0..DEVICES)
        .map(|d| {
            Device::new(
                dir.path(),
                &format!("phone-{d}"),
                &server.url,
                &enroll(data.path(), "sonora", Role::Field),
            )
        })
        .collect();
    let started = Instant::now();
    for i in 0..encounters {
        let id = devices[i % DEVICES].log(&benchmark_encounter_json(i));
        devices[i % DEVICES].edit(id, &["status=closed"]);
    }
    let log_seconds = started.elapsed().as_secs_f64();

    let (mut bytes_up, mut bytes_down, mut round_trips) = (0u64, 0u64, 0u32);
    let started = Instant::now();
    for device in &mut devices {
        let report = client::sync(&mut device.store, |_| {}).unwrap();
        bytes_up += report.bytes_up;
        bytes_down += report.bytes_down;
        round_trips = round_trips.max(report.round_trips);
    }
    let upload_seconds = started.elapsed().as_secs_f64();
    let (changes, raw_change_bytes): (i64, i64) =
        rusqlite::Connection::open(data.path().join("auxilio.sqlite"))
            .unwrap()
            .query_row(
                "SELECT count(*), sum(length(change)) FROM changes",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();

    let coordinator_token = enroll(data.path(), "sonora", Role::Coordinator);
    let mut coordinator = Device::new(dir.path(), "coordinator", &server.url, &coordinator_token);
    let started = Instant::now();
    let download = client::sync(&mut coordinator.store, |_| {}).unwrap();
    let download_seconds = started.elapsed().as_secs_f64();

    let ids = coordinator.ids();
    let token = coordinator_token.token.as_str();
    let list: Vec<Duration> = (0..200)
        .map(|i| {
            let started = Instant::now();
            let (status, _) = get_json(
                &server.url,
                &format!(
                    "/v1/encounters?limit=100&offset={}",
                    (i * 37) % encounters.max(1)
                ),
                Some(token),
            )
            .unwrap();
            assert_eq!(status, 200);
            started.elapsed()
        })
        .collect();
    let show: Vec<Duration> = (0..200)
        .map(|i| {
            let started = Instant::now();
            let (status, _) = get_json(
                &server.url,
                &format!("/v1/encounters/{}", ids[(i * 7919) % ids.len()]),
                Some(token),
            )
            .unwrap();
            assert_eq!(status, 200);
            started.elapsed()
        })
        .collect();
    let (list_p50, list_p95) = latencies(list);
    let (show_p50, show_p95) = latencies(show);

    serde_json::json!({
        "encounters": encounters,
        "changes": changes,
        "raw_change_bytes": raw_change_bytes,
        "devices": DEVICES,
        "log_and_edit_ms_per_encounter": (log_seconds * 1000.0 / encounters as f64 * 100.0).round() / 100.0,
        "upload_s": (upload_seconds * 100.0).round() / 100.0,
        "upload_changes_per_s": (changes as f64 / upload_seconds).round(),
        "upload_bytes_up_per_raw_byte": (bytes_up as f64 / raw_change_bytes as f64 * 1000.0).round() / 1000.0,
        "upload_bytes_up": bytes_up,
        "upload_bytes_down": bytes_down,
        "upload_round_trips_max": round_trips,
        "full_download_s": (download_seconds * 100.0).round() / 100.0,
        "full_download_bytes": download.bytes_down,
        "full_download_bytes_per_raw_byte": (download.bytes_down as f64 / raw_change_bytes as f64 * 1000.0).round() / 1000.0,
        "full_download_round_trips": download.round_trips,
        "list_ms_p50": list_p50, "list_ms_p95": list_p95,
        "show_ms_p50": show_p50, "show_ms_p95": show_p95,
        "server_rss_idle_kib": idle_rss,
        "server_rss_after_kib": memory_kib(server.pid(), "VmRSS:"),
        "server_peak_rss_kib": memory_kib(server.pid(), "VmHWM:"),
    })
}

fn main() {
    for size in auxilio_tests::sizes_from_args(&[500, 5000]) {
        eprintln!("benchmarking {size} encounters on {DEVICES} devices…");
        println!("{}", run(size));
    }
}
