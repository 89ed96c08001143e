//! The server process is SIGKILLed between and during syncs: nothing it acknowledged is lost,
//! and after restarts every device converges with it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auxilio_server::client;
use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, ServerProcess, add_team, app_retries_or_quick, enroll, get_json,
    pending_hashes, stored_change_hashes,
};

#[test]
fn acknowledged_changes_survive_sigkill_between_syncs() {
    let data = tempfile::tempdir().unwrap();
    let devices = tempfile::tempdir().unwrap();
    add_team(data.path(), "sonora");
    let enrolled = enroll(data.path(), "sonora", Role::Field);
    let server = ServerProcess::spawn(data.path());
    let mut phone = Device::new(devices.path(), "phone", &server.url, &enrolled);
    let ids: Vec<_> = (0..5).map(|_| phone.log(EXAMPLE_ENCOUNTER)).collect();
    let report = phone.sync().unwrap();
    assert_eq!(report.uploaded, 5);
    assert_eq!(report.pending, 0);

    server.kill();
    let server = ServerProcess::spawn(data.path());
    for id in ids {
        let (status, detail) = get_json(
            &server.url,
            &format!("/v1/encounters/{id}"),
            Some(&enrolled.token),
        )
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            detail["heads"],
            serde_json::to_value(phone.view(id).heads).unwrap()
        );
    }
}

#[test]
fn acknowledged_changes_survive_sigkill_during_syncs() {
    let data = tempfile::tempdir().unwrap();
    let devices = tempfile::tempdir().unwrap();
    add_team(data.path(), "sonora");
    let writer_token = enroll(data.path(), "sonora", Role::Field);
    let reader_token = enroll(data.path(), "sonora", Role::Field);
    let mut server = ServerProcess::spawn(data.path());
    let url = Arc::new(Mutex::new(server.url.clone()));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::<Vec<u8>>::new()));

    // A phone logs, edits and syncs in a loop while the server is killed under it. In the full
    // run a sync cut by a kill retries as the app's does (ten attempts, waiting up to 8 s between
    // them, at the killed server's address); in the short run it gives up after three quick
    // attempts and the next round finds the restarted server. The same kills, the same checks.
    let options = app_retries_or_quick("acknowledged_changes_survive_sigkill_during_syncs", 3);
    let writer = {
        let url = url.clone();
        let acknowledged = acknowledged.clone();
        let dir = devices.path().to_path_buf();
        std::thread::spawn(move || {
            let mut phone = Device::new(&dir, "writer", &url.lock().unwrap(), &writer_token);
            let mut failures = 0;
            for round in 0..60 {
                let id = phone.log(EXAMPLE_ENCOUNTER);
                phone.edit(
                    id,
                    &[&format!("counts.f.0-4={}", round % 3), "status=closed"],
                );
                let before = pending_hashes(&phone.store);
                let current = url.lock().unwrap().clone();
                phone.point_at(&current);
                match client::sync_with(&mut phone.store, options, |_| {}) {
                    Ok(_) => {
                        let after = pending_hashes(&phone.store);
                        acknowledged
                            .lock()
                            .unwrap()
                            .extend(before.difference(&after).cloned());
                    }
                    Err(_) => failures += 1,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (phone, failures)
        })
    };

    for pause in [60u64, 140, 35, 200, 90, 20] {
        std::thread::sleep(Duration::from_millis(pause));
        let promised: BTreeSet<Vec<u8>> = acknowledged.lock().unwrap().clone();
        server.kill();
        // Everything acknowledged before the kill is in the file the next process opens.
        let stored: BTreeSet<Vec<u8>> = stored_change_hashes(data.path()).into_iter().collect();
        let missing = promised.difference(&stored).count();
        assert_eq!(
            missing, 0,
            "{missing} acknowledged changes were lost by a SIGKILL"
        );
        server = ServerProcess::spawn(data.path());
        *url.lock().unwrap() = server.url.clone();
    }
    let (mut writer, failures) = writer.join().unwrap();
    eprintln!(
        "syncs cut by a kill: {failures}; changes acknowledged: {}",
        acknowledged.lock().unwrap().len()
    );
    assert!(
        failures > 0,
        "the kills happened while the phone was syncing"
    );

    writer.point_at(&server.url);
    let report = writer.sync().unwrap();
    assert_eq!(report.pending, 0);
    let stored: BTreeSet<Vec<u8>> = stored_change_hashes(data.path()).into_iter().collect();
    assert!(acknowledged.lock().unwrap().is_subset(&stored));

    let mut reader = Device::new(devices.path(), "reader", &server.url, &reader_token);
    reader.sync().unwrap();
    let written = writer.ids();
    assert_eq!(written.len(), 60);
    assert_eq!(reader.ids(), written);
    for id in written {
        let (status, detail) = get_json(
            &server.url,
            &format!("/v1/encounters/{id}"),
            Some(&reader.enrolled.token),
        )
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            detail["heads"],
            serde_json::to_value(writer.view(id).heads).unwrap()
        );
        assert_eq!(reader.view(id).heads, writer.view(id).heads);
    }
}

/// Copies the server's database files (the main file and its WAL) from one directory to another.
fn copy_database(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(to).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn after_a_restore_from_backup_devices_still_receive_everything_new() {
    let data = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let devices = tempfile::tempdir().unwrap();
    add_team(data.path(), "sonora");
    let writer_token = enroll(data.path(), "sonora", Role::Field);
    let reader_token = enroll(data.path(), "sonora", Role::Field);
    let late_token = enroll(data.path(), "sonora", Role::Field);

    let server = ServerProcess::spawn(data.path());
    let mut writer = Device::new(devices.path(), "writer", &server.url, &writer_token);
    let mut reader = Device::new(devices.path(), "reader", &server.url, &reader_token);
    for _ in 0..3 {
        writer.log(EXAMPLE_ENCOUNTER);
    }
    writer.sync().unwrap();
    server.kill();
    copy_database(data.path(), backup.path());

    // Life goes on after the backup: the reader's cursor moves past it.
    let server = ServerProcess::spawn(data.path());
    writer.point_at(&server.url);
    reader.point_at(&server.url);
    for _ in 0..4 {
        writer.log(EXAMPLE_ENCOUNTER);
    }
    writer.sync().unwrap();
    reader.sync().unwrap();
    assert_eq!(reader.ids().len(), 7);
    server.kill();

    // The server is restored from the backup; another phone logs new encounters, which take log
    // positions the reader's cursor has already passed.
    copy_database(backup.path(), data.path());
    let server = ServerProcess::spawn(data.path());
    let mut late = Device::new(devices.path(), "late", &server.url, &late_token);
    let fresh: Vec<_> = (0..2).map(|_| late.log(EXAMPLE_ENCOUNTER)).collect();
    late.sync().unwrap();

    reader.point_at(&server.url);
    reader.sync().unwrap();
    let held = reader.ids();
    for id in fresh {
        assert!(
            held.contains(&id),
            "the reader received {id}, logged after the restore"
        );
        assert_eq!(reader.view(id).heads, late.view(id).heads);
    }

    // The restored server lost what it had acknowledged after the backup; the writer, told its
    // cursor no longer matches, offers its changes again and nothing stays lost.
    writer.point_at(&server.url);
    writer.sync().unwrap();
    assert_eq!(writer.store.pending_count().unwrap(), 0);
    for id in writer.ids() {
        let path = format!("/v1/encounters/{id}");
        let (status, detail) = get_json(&server.url, &path, Some(&reader.enrolled.token)).unwrap();
        assert_eq!(status, 200, "{id} is back on the restored server");
        assert_eq!(
            detail["heads"],
            serde_json::to_value(writer.view(id).heads).unwrap()
        );
    }
    reader.sync().unwrap();
    assert_eq!(reader.ids(), writer.ids(), "both hold all 9 encounters");
    assert_eq!(reader.ids().len(), 9);
}

#[test]
fn a_store_restored_from_a_phone_backup_makes_its_edits_again_under_a_new_actor() {
    let team = auxilio_tests::TeamFixture::start("sonora", auxilio_server::ServerConfig::default());
    let enrolled = enroll(team.data.path(), "sonora", Role::Field);
    let mut phone = Device::new(team.devices.path(), "phone", &team.server.url, &enrolled);
    let id = phone.log(EXAMPLE_ENCOUNTER);
    phone.sync().unwrap();

    // The phone's store is backed up, the phone goes on working, then the backup is restored
    // beside it (same device, same actor) and used too.
    drop(phone);
    let original = team.devices.path().join("phone.db");
    std::fs::copy(&original, team.devices.path().join("restored.db")).unwrap();
    let open = |name: &str| Device {
        store: auxilio_core::DeviceStore::open(team.devices.path().join(name)).unwrap(),
        enrolled: enrolled.clone(),
    };
    let mut phone = open("phone.db");
    let mut restored = open("restored.db");
    phone.edit(id, &["items.rations=5"]);
    restored.edit(id, &["items.water_litres=10"]);

    phone.sync().unwrap();
    let report = restored.sync().unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(
        report.pending, 0,
        "the restored store's edit was made again and stored"
    );
    phone.sync().unwrap();

    let (_, detail) = get_json(
        &team.server.url,
        &format!("/v1/encounters/{id}"),
        Some(&enrolled.token),
    )
    .unwrap();
    assert_eq!(detail["encounter"]["items"]["rations"], 5);
    assert_eq!(detail["encounter"]["items"]["water_litres"], 10.0);
    assert_eq!(phone.view(id).heads, restored.view(id).heads);
    assert_eq!(
        detail["heads"],
        serde_json::to_value(phone.view(id).heads).unwrap()
    );
}
