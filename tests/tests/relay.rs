//! The data mule: a phone that logged encounters out of signal relays them to a teammate's phone
//! over a plain byte stream; the teammate reaches signal and uploads them. The server keeps the
//! original author of every change and records who uploaded it; when the first phone syncs later
//! nothing is stored twice, and every copy converges. Another team's device can neither relay
//! with the team's phones nor upload changes relayed to it some other way.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use auxilio_core::protocol::{self, PROTOCOL_VERSION, RejectReason, SyncRequest};
use auxilio_core::relay::{RelayError, RelayReport, RelayRole, relay_over};
use auxilio_core::{DeviceStore, EncounterId};
use auxilio_server::ServerConfig;
use auxilio_server::database::DATABASE_FILE;
use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, TeamFixture, add_team, enroll, get_json, pending_hashes, post_bytes,
    run_auxilio, spawn_auxilio, stored_change_hashes, stored_snapshot,
};

/// Relays between two stores over a TCP connection on the loopback interface, `initiator`
/// connecting from this thread to `responder` listening in another.
fn relay_over_tcp(
    initiator: &mut DeviceStore,
    responder: &mut DeviceStore,
) -> (
    Result<RelayReport, RelayError>,
    Result<RelayReport, RelayError>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let timeout = Some(Duration::from_secs(60));
    std::thread::scope(|scope| {
        let responding = scope.spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(timeout).unwrap();
            relay_over(responder, &mut stream, RelayRole::Responder)
        });
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(timeout).unwrap();
        let initiated = relay_over(initiator, &mut stream, RelayRole::Initiator);
        // A responder still waiting for the initiator sees the connection end.
        drop(stream);
        (initiated, responding.join().unwrap())
    })
}

fn device_row(data_dir: &Path, hash: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let conn = rusqlite::Connection::open(data_dir.join(DATABASE_FILE)).unwrap();
    conn.query_row(
        "SELECT device, uploader FROM changes WHERE hash = ?1",
        [hash],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .unwrap()
}

fn stored_rows(data_dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(data_dir.join(DATABASE_FILE)).unwrap();
    conn.query_row("SELECT count(*) FROM changes", [], |row| row.get(0))
        .unwrap()
}

#[test]
fn a_phone_out_of_signal_reaches_the_server_through_a_teammate() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let data = fixture.data.path();
    let mut desert = fixture.device("desert", Role::Field);
    let mut town = fixture.device("town", Role::Field);

    // In the desert: no server is contacted to log or edit.
    let ids: Vec<EncounterId> = (0..3).map(|_| desert.log(EXAMPLE_ENCOUNTER)).collect();
    desert.edit(ids[0], &["counts.m.18-59=3", "status=closed"]);
    let written_in_desert = pending_hashes(&desert.store);
    assert_eq!(written_in_desert.len(), 4);

    let (from_desert, from_town) = relay_over_tcp(&mut desert.store, &mut town.store);
    let (from_desert, from_town) = (from_desert.unwrap(), from_town.unwrap());
    assert_eq!(from_desert.peer, town.enrolled.device_id);
    assert_eq!(from_town.peer, desert.enrolled.device_id);
    assert_eq!((from_desert.sent, from_desert.received), (4, 0));
    assert_eq!(
        (from_town.received, from_town.queued_for_upload),
        (4, 4),
        "every change the desert phone has not uploaded waits for upload in town"
    );
    assert!(from_town.refused_encounters.is_empty());

    // In town, with signal.
    let uploaded = town.sync().unwrap();
    assert!(uploaded.rejected.is_empty(), "{:?}", uploaded.rejected);
    assert_eq!(uploaded.uploaded, 4);
    assert_eq!(town.store.pending_count().unwrap(), 0);
    for hash in &written_in_desert {
        assert_eq!(
            device_row(data, hash),
            (
                desert.enrolled.device_id.as_bytes().to_vec(),
                town.enrolled.device_id.as_bytes().to_vec()
            ),
            "the server records the desert phone as author and the town phone as uploader"
        );
    }
    let (status, list) = get_json(
        &fixture.server.url,
        "/v1/encounters",
        Some(&town.enrolled.token),
    )
    .unwrap();
    assert_eq!((status, list["count"].as_u64()), (200, Some(3)));

    // Later the desert phone reaches signal itself.
    let late = desert.sync().unwrap();
    assert!(late.rejected.is_empty(), "{:?}", late.rejected);
    assert_eq!(late.downloaded, 0, "it already holds everything");
    assert_eq!(desert.store.pending_count().unwrap(), 0);
    let stored = stored_change_hashes(data);
    assert_eq!(stored.len(), 4);
    assert_eq!(stored_rows(data), 4, "no change stored twice");
    assert_eq!(
        stored
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        written_in_desert
    );

    for &id in &ids {
        let (status, detail) = get_json(
            &fixture.server.url,
            &format!("/v1/encounters/{id}"),
            Some(&desert.enrolled.token),
        )
        .unwrap();
        assert_eq!(status, 200);
        let on_server = detail["heads"].clone();
        assert_eq!(
            serde_json::to_value(desert.view(id).heads).unwrap(),
            on_server
        );
        assert_eq!(
            serde_json::to_value(town.view(id).heads).unwrap(),
            on_server
        );
    }
    assert_eq!(desert.view(ids[0]).encounter.counts.total(), 4);
}

#[test]
fn another_teams_device_can_neither_relay_nor_upload_a_teams_changes() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let data = fixture.data.path();
    add_team(data, "chihuahua");
    let mut sonora = fixture.device("sonora", Role::Field);
    let mut chihuahua = Device::new(
        fixture.devices.path(),
        "chihuahua",
        &fixture.server.url,
        &enroll(data, "chihuahua", Role::Field),
    );
    let logged = [sonora.log(EXAMPLE_ENCOUNTER), sonora.log(EXAMPLE_ENCOUNTER)];

    let (initiated, responded) = relay_over_tcp(&mut chihuahua.store, &mut sonora.store);
    assert!(
        matches!(initiated, Err(RelayError::OtherTeam { .. })),
        "{initiated:?}"
    );
    assert!(
        matches!(responded, Err(RelayError::OtherTeam { .. })),
        "{responded:?}"
    );
    assert!(chihuahua.ids().is_empty());

    // Suppose the chihuahua phone got the changes anyway, and uploads them as its own, first
    // while the server has never seen them and again once the sonora phone has uploaded them.
    let relayed = sonora.store.sync_request().unwrap().changes;
    let upload = SyncRequest {
        protocol: PROTOCOL_VERSION,
        cursor_check: None,
        actor: None,
        cursor: 0,
        changes: relayed,
        request_id: None,
        resume: vec![],
        max_response_bytes: None,
        purges_after: 0,
        vaults: vec![],
    };
    for sonora_synced in [false, true] {
        if sonora_synced {
            sonora.sync().unwrap();
        }
        let before = stored_snapshot(data);
        let (status, body) = post_bytes(
            &fixture.server.url,
            "/v1/sync",
            Some(&chihuahua.enrolled.token),
            &protocol::encode(&upload),
        );
        assert_eq!(status, 200);
        let response = protocol::decode_response(&body).unwrap();
        assert!(response.accepted.is_empty(), "{:?}", response.accepted);
        assert_eq!(response.rejected.len(), 2);
        for rejection in &response.rejected {
            assert!(logged.contains(&rejection.encounter));
            assert!(
                matches!(
                    rejection.reason,
                    RejectReason::WrongAuthor | RejectReason::Forbidden
                ),
                "{rejection:?}"
            );
        }
        assert!(
            response.changes.is_empty(),
            "nothing of sonora's is sent back"
        );
        assert_eq!(stored_snapshot(data), before, "nothing stored");
    }
}

fn store_path(fixture: &TeamFixture, name: &str) -> PathBuf {
    fixture.devices.path().join(format!("{name}.db"))
}

#[test]
fn the_command_line_relays_between_two_store_files() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let (desert_id, town_id, logged, desert_heads) = {
        let mut desert = fixture.device("desert", Role::Field);
        let town = fixture.device("town", Role::Field);
        let logged = [desert.log(EXAMPLE_ENCOUNTER), desert.log(EXAMPLE_ENCOUNTER)];
        let heads: Vec<Vec<String>> = logged.iter().map(|id| desert.view(*id).heads).collect();
        (
            desert.enrolled.device_id,
            town.enrolled.device_id,
            logged,
            heads,
        )
    };
    let (desert, town) = (store_path(&fixture, "desert"), store_path(&fixture, "town"));
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let cwd = fixture.devices.path();

    let mut listening = spawn_auxilio(
        cwd,
        &[
            "device",
            "--store",
            town.to_str().unwrap(),
            "relay",
            "--listen",
            &address,
            "--json",
        ],
    );
    let mut stderr = BufReader::new(listening.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains("waiting for one device"),
        "unexpected first line: {line:?}"
    );

    let connected = run_auxilio(
        cwd,
        &[
            "device",
            "--store",
            desert.to_str().unwrap(),
            "relay",
            "--connect",
            &address,
            "--json",
        ],
        None,
    );
    assert!(
        connected.status.success(),
        "{}",
        String::from_utf8_lossy(&connected.stderr)
    );
    let listened = listening.wait_with_output().unwrap();
    assert!(listened.status.success());

    let report = |stdout: &[u8]| -> serde_json::Value {
        let text = String::from_utf8(stdout.to_vec()).unwrap();
        assert_eq!(text.trim().lines().count(), 1, "one JSON line: {text}");
        serde_json::from_str(text.trim()).unwrap()
    };
    let from_desert = report(&connected.stdout);
    let from_town = report(&listened.stdout);
    assert_eq!(from_desert["peer"], town_id.to_string());
    assert_eq!(from_desert["sent"], 2);
    assert_eq!(from_town["peer"], desert_id.to_string());
    assert_eq!(from_town["received"], 2);
    assert_eq!(from_town["queued_for_upload"], 2);
    assert_eq!(from_town["refused_encounters"], serde_json::json!([]));

    let town_store = DeviceStore::open(&town).unwrap();
    for (id, heads) in logged.iter().zip(desert_heads) {
        assert_eq!(town_store.show(*id).unwrap().heads, heads);
    }
    assert_eq!(town_store.pending_count().unwrap(), 2);
}
