//! The phone app can be killed at any instant (a flat battery, the OS reclaiming memory): the
//! store reopens intact, nothing logged is lost, and the next sync finishes the job.

use std::path::Path;
use std::time::Duration;

use auxilio_core::{DeviceStore, EncounterId};
use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, TeamFixture, enroll, full_or_short, small_pages, spawn_auxilio,
};

/// Runs `auxilio ARGS` and SIGKILLs it after `after`; returns whether it finished first, with its stdout.
fn run_and_kill(args: &[&str], stdin: &str, after: Duration) -> (bool, String) {
    use std::io::Write;
    let mut child = spawn_auxilio(Path::new("."), args);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    std::thread::sleep(after);
    let finished = child
        .try_wait()
        .unwrap()
        .is_some_and(|status| status.success());
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    (
        finished,
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

/// Delays spread over the life of a short command, without a random-number dependency.
fn delays() -> impl Iterator<Item = Duration> {
    (0u64..).map(|i| Duration::from_millis(2 + (i * 37) % 300))
}

#[test]
fn a_device_killed_while_logging_or_syncing_loses_nothing() {
    // Small pages, so the reader's download takes many round trips and a kill can land between
    // two of them, with part of the download stored.
    let team = TeamFixture::start("sonora", small_pages(4 * 1024));
    let (data, dir, server) = (&team.data, &team.devices, &team.server);
    let store_path = dir.path().join("phone.db");
    let store_arg = store_path.to_str().unwrap().to_string();
    let enrolled = enroll(data.path(), "sonora", Role::Field);
    drop(Device::new(dir.path(), "phone", &server.url, &enrolled));

    // Killed while logging: every id a finished `log` printed is in the store, and the store
    // always reopens.
    // Forty kills in the full run, twelve in the short one (the same spread of delays).
    let kills = full_or_short(
        "a_device_killed_while_logging_or_syncing_loses_nothing: kills while logging",
        40,
        12,
    );
    let mut logged = Vec::new();
    for delay in delays().take(kills) {
        let (finished, stdout) = run_and_kill(
            &["device", "--store", &store_arg, "log", "-"],
            EXAMPLE_ENCOUNTER,
            delay,
        );
        if finished {
            logged.push(stdout.trim().parse::<EncounterId>().unwrap());
        }
        let store = DeviceStore::open(&store_path).unwrap();
        for id in &logged {
            store.show(*id).unwrap();
        }
    }
    assert!(
        !logged.is_empty(),
        "some log commands finished before their kill"
    );

    // A second phone of the team has much to download; it is killed during its syncs.
    let mut writer = Device {
        store: DeviceStore::open(&store_path).unwrap(),
        enrolled: enrolled.clone(),
    };
    for _ in 0..80 {
        writer.log(EXAMPLE_ENCOUNTER);
    }
    writer.sync().unwrap();
    let reader_enrolled = enroll(data.path(), "sonora", Role::Field);
    drop(Device::new(
        dir.path(),
        "reader",
        &server.url,
        &reader_enrolled,
    ));
    let reader_path = dir.path().join("reader.db");
    let reader_arg = reader_path.to_str().unwrap().to_string();
    let mut cursors_after_a_kill = Vec::new();
    for delay in delays().skip(1).take(25) {
        let (finished, _) = run_and_kill(&["device", "--store", &reader_arg, "sync"], "", delay);
        if finished {
            break;
        }
        let store = DeviceStore::open(&reader_path).unwrap();
        store.list().unwrap();
        cursors_after_a_kill.push((
            store.cursor().unwrap(),
            store.encounter_ids().unwrap().len(),
        ));
    }

    let final_cursor = {
        let mut reader = Device {
            store: DeviceStore::open(&reader_path).unwrap(),
            enrolled: reader_enrolled.clone(),
        };
        reader.sync().unwrap();
        reader.store.cursor().unwrap()
    };
    assert!(
        cursors_after_a_kill
            .iter()
            .any(|(cursor, held)| *cursor > 0 && *cursor < final_cursor && *held > 0),
        "some kill landed part-way through the download: {cursors_after_a_kill:?} (final cursor {final_cursor})"
    );
    let mut reader = Device {
        store: DeviceStore::open(&reader_path).unwrap(),
        enrolled: reader_enrolled,
    };
    reader.sync().unwrap();
    let written = writer.ids();
    assert!(written.len() >= 80 + logged.len());
    assert_eq!(reader.ids(), written);
    for id in written {
        assert_eq!(reader.view(id).heads, writer.view(id).heads);
    }
    assert_eq!(writer.store.pending_count().unwrap(), 0);
}
