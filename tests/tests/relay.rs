//! The data mule: a phone that logged encounters out of signal relays them to a teammate's phone
//! over a plain byte stream; the teammate reaches signal and uploads them. The server keeps the
//! original author of every change and records who uploaded it; when the first phone syncs later
//! nothing is stored twice, and every copy converges. Another team's device can neither relay
//! with the team's phones nor upload changes relayed to it some other way.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use auxilio_core::protocol::{self, PROTOCOL_VERSION, RejectReason, SyncRequest};
use auxilio_core::relay::{
    RELAY_PROTOCOL_VERSION, RelayChanges, RelayError, RelayOffer, RelayReport, RelayRole,
    RelayedChange, RelayedEncounter, decode_message, encode_message, relay_over,
};
use auxilio_core::relay_auth::{RelayAuthError, RelayHello, RelayProof, Signer};
use auxilio_core::store::Enrolment;
use auxilio_core::{DeviceId, DeviceStore, EncounterId};
use auxilio_server::ServerConfig;
use auxilio_server::database::DATABASE_FILE;
use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, TeamFixture, add_team, enroll, get_json, pending_hashes, post_bytes,
    post_json, run_auxilio, spawn_auxilio, stored_change_hashes, stored_snapshot,
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

/// Each device syncs, then each again: every one has registered its relay key before any
/// fetches the team's keys the second time, so all know each other's (as phones that met the
/// server since the others were enrolled).
fn sync_to_learn_relay_keys(devices: &mut [&mut Device]) {
    for _ in 0..2 {
        for device in devices.iter_mut() {
            device.sync().unwrap();
        }
    }
}

/// A server with teams sonora and chihuahua, a sonora phone named `name` and a chihuahua phone,
/// both synced (each has registered its key and holds its own team's current keys).
fn sonora_and_chihuahua_phones(name: &str) -> (TeamFixture, Device, Device) {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let data = fixture.data.path();
    add_team(data, "chihuahua");
    let mut sonora = fixture.device(name, Role::Field);
    let mut chihuahua = Device::new(
        fixture.devices.path(),
        "chihuahua",
        &fixture.server.url,
        &enroll(data, "chihuahua", Role::Field),
    );
    sync_to_learn_relay_keys(&mut [&mut sonora, &mut chihuahua]);
    (fixture, sonora, chihuahua)
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
    // At the base, both phones synced before going out.
    sync_to_learn_relay_keys(&mut [&mut desert, &mut town]);

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
    let (fixture, mut sonora, mut chihuahua) = sonora_and_chihuahua_phones("sonora");
    let data = fixture.data.path();
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
        let mut town = fixture.device("town", Role::Field);
        sync_to_learn_relay_keys(&mut [&mut desert, &mut town]);
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
            // A bare port: the listener stays on the loopback interface.
            "--listen",
            &port.to_string(),
            "--json",
        ],
    );
    let mut stderr = BufReader::new(listening.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains("waiting for one device") && line.contains(&address),
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

/// Writes one relay frame: a 4-byte big-endian length and the body.
fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    stream.write_all(&u32::try_from(body.len()).unwrap().to_be_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Everything that arrives on `stream` until the other side closes it (or the read fails).
fn read_until_closed(stream: &mut TcpStream, into: &mut Vec<u8>) {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => into.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Changes that claim to be written by `victim` (their actor starts with its device id), made
/// by an attacker who knows only the victim's device id and team: one new encounter.
fn forged_changes_of(victim: DeviceId, team: &str) -> RelayChanges {
    let dir = tempfile::tempdir().unwrap();
    let mut forger = DeviceStore::open(dir.path().join("forger.db")).unwrap();
    forger
        .enrol(&Enrolment {
            server_url: "http://127.0.0.1:9".into(),
            token: "stolen-nothing".into(),
            device_id: victim,
            team: team.into(),
            role: "field".into(),
            agent: "forger".into(),
        })
        .unwrap();
    forger
        .log(serde_json::from_str(EXAMPLE_ENCOUNTER).unwrap())
        .unwrap();
    RelayChanges {
        // The version the relay spoke before it authenticated peers.
        protocol: 1,
        encounters: forger
            .sync_request()
            .unwrap()
            .changes
            .into_iter()
            .map(|group| RelayedEncounter {
                encounter: group.encounter,
                changes: group
                    .changes
                    .into_iter()
                    .map(|change| RelayedChange {
                        change,
                        pending: true,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// What a phone's store holds, to compare before and after a peer talked to it.
fn holdings(store: &DeviceStore) -> (Vec<EncounterId>, Vec<Vec<String>>, u64) {
    let ids = store.encounter_ids().unwrap();
    let heads = ids
        .iter()
        .map(|id| store.show(*id).unwrap().heads)
        .collect();
    (ids, heads, store.pending_count().unwrap())
}

/// A connection to a phone listening at `address`, as a peer opens it.
fn connect_to_listener(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

/// A peer that holds no key of the team speaks the relay as it was before peers were
/// authenticated: it names `team` and a device id, offers nothing (so it is owed everything),
/// then sends `forged` as its changes. Returns every byte the listening phone sent it.
fn speak_the_unauthenticated_relay(
    address: SocketAddr,
    team: &str,
    device: DeviceId,
    forged: &RelayChanges,
) -> Vec<u8> {
    let mut stream = connect_to_listener(address);
    let offer = RelayOffer {
        protocol: 1,
        team: team.to_string(),
        device,
        encounters: vec![],
    };
    let mut received = Vec::new();
    if write_frame(&mut stream, &encode_message(&offer)).is_err() {
        return received;
    }
    // The answer's frame, if any, then the forged changes, then whatever follows.
    let mut length = [0u8; 4];
    if stream.read_exact(&mut length).is_ok() {
        received.extend_from_slice(&length);
        let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
        if stream.read_exact(&mut body).is_ok() {
            received.extend_from_slice(&body);
        }
    }
    let _ = write_frame(&mut stream, &encode_message(forged));
    read_until_closed(&mut stream, &mut received);
    received
}

/// Runs `peer` against `listener`'s store waiting as the relay's responder on a loopback
/// port; returns the responder's result and what the peer returned.
fn listen_once<T>(
    listener: &mut DeviceStore,
    peer: impl FnOnce(SocketAddr) -> T,
) -> (Result<RelayReport, RelayError>, T) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    std::thread::scope(|scope| {
        let responding = scope.spawn(move || {
            let (mut stream, _) = socket.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            relay_over(listener, &mut stream, RelayRole::Responder)
        });
        let seen = peer(address);
        (responding.join().unwrap(), seen)
    })
}

/// Whether any of `ids` occurs, as its 16 bytes, in `bytes`.
fn names_any_of(bytes: &[u8], ids: &[EncounterId]) -> bool {
    ids.iter()
        .any(|id| bytes.windows(16).any(|window| window == id.as_bytes()))
}

/// A peer that speaks this version of the relay with `hello` (naming whatever team and device it
/// likes), proves itself with `prove` (given both hellos), then sends `forged` as its changes
/// whatever it was told. Returns every byte the listening phone sent it.
fn speak_the_relay_as(
    address: SocketAddr,
    hello: &RelayHello,
    prove: impl Fn(&RelayHello, &RelayHello) -> RelayProof,
    forged: &RelayChanges,
) -> Vec<u8> {
    let mut stream = connect_to_listener(address);
    let mut received = Vec::new();
    let mut forged = forged.clone();
    forged.protocol = RELAY_PROTOCOL_VERSION;
    let _ = write_frame(&mut stream, &encode_message(hello));
    let mut length = [0u8; 4];
    if stream.read_exact(&mut length).is_ok() {
        let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
        if stream.read_exact(&mut body).is_ok() {
            received.extend_from_slice(&length);
            received.extend_from_slice(&body);
            let theirs: RelayHello = decode_message(&body).unwrap();
            let _ = write_frame(&mut stream, &encode_message(&prove(hello, &theirs)));
            let offer = RelayOffer {
                protocol: RELAY_PROTOCOL_VERSION,
                team: hello.team.clone(),
                device: hello.device,
                encounters: vec![],
            };
            let _ = write_frame(&mut stream, &encode_message(&offer));
            let _ = write_frame(&mut stream, &encode_message(&forged));
        }
    }
    read_until_closed(&mut stream, &mut received);
    received
}

/// A hello naming `team` and `device`, as anyone can write one.
fn hello_claiming(team: &str, device: DeviceId) -> RelayHello {
    RelayHello {
        protocol: RELAY_PROTOCOL_VERSION,
        team: team.to_string(),
        device,
        nonce: serde_bytes::ByteBuf::from(vec![7; 32]),
    }
}

/// A signature made with no key of the team.
fn made_up_proof(_: &RelayHello, _: &RelayHello) -> RelayProof {
    RelayProof {
        protocol: RELAY_PROTOCOL_VERSION,
        signature: serde_bytes::ByteBuf::from(vec![0x5a; 64]),
    }
}

#[test]
fn a_peer_without_a_team_key_that_names_the_team_gets_nothing_and_injects_nothing() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let mut town = fixture.device("town", Role::Field);
    let mut desert = fixture.device("desert", Role::Field);
    sync_to_learn_relay_keys(&mut [&mut town, &mut desert]);
    let logged = [town.log(EXAMPLE_ENCOUNTER), town.log(EXAMPLE_ENCOUNTER)];
    let before = holdings(&town.store);
    // Positive control: what a teammate is offered names the encounters, and the search finds
    // them there.
    assert!(names_any_of(
        &encode_message(&town.store.relay_offer().unwrap()),
        &logged
    ));

    let victim = town.enrolled.device_id;
    let teammate = desert.enrolled.device_id;
    let forged = forged_changes_of(victim, "sonora");
    for claimed in [DeviceId::random(), victim, teammate] {
        // As the relay was spoken before peers were authenticated.
        let (listened, received) = listen_once(&mut town.store, |address| {
            speak_the_unauthenticated_relay(address, "sonora", claimed, &forged)
        });
        assert!(
            !names_any_of(&received, &logged),
            "a peer with no key, claiming device {claimed}, received the team's encounters"
        );
        assert!(
            matches!(listened, Err(RelayError::UnsupportedVersion { found: 1 })),
            "{listened:?}"
        );
        assert_eq!(
            holdings(&town.store),
            before,
            "nothing was stored, nothing written under device {victim}"
        );

        // As this version speaks it, with a made-up proof.
        let (listened, received) = listen_once(&mut town.store, |address| {
            speak_the_relay_as(
                address,
                &hello_claiming("sonora", claimed),
                made_up_proof,
                &forged,
            )
        });
        assert!(!names_any_of(&received, &logged));
        let refused = match &listened {
            Err(RelayError::Auth(refused)) => refused,
            other => panic!("claiming {claimed}: {other:?}"),
        };
        let expected = if claimed == victim {
            matches!(refused, RelayAuthError::ClaimsOurId { .. })
        } else if claimed == teammate {
            matches!(refused, RelayAuthError::BadProof { .. })
        } else {
            matches!(refused, RelayAuthError::UnknownPeer { .. })
        };
        assert!(expected, "claiming {claimed}: {refused}");
        assert_eq!(holdings(&town.store), before);
    }

    // The teammate itself still relays with the same phone.
    let (from_desert, from_town) = relay_over_tcp(&mut desert.store, &mut town.store);
    assert_eq!(from_desert.unwrap().received, 2);
    assert_eq!(from_town.unwrap().peer, teammate);
}

#[test]
fn a_device_of_another_team_that_names_this_team_gets_nothing_and_injects_nothing() {
    let (_fixture, mut town, chihuahua) = sonora_and_chihuahua_phones("town");
    let logged = [town.log(EXAMPLE_ENCOUNTER)];
    let before = holdings(&town.store);
    let outsider = chihuahua.enrolled.device_id;
    let forged = forged_changes_of(town.enrolled.device_id, "sonora");

    let (listened, received) = listen_once(&mut town.store, |address| {
        speak_the_unauthenticated_relay(address, "sonora", outsider, &forged)
    });
    assert!(
        !names_any_of(&received, &logged),
        "the other team's device received the team's encounters"
    );
    assert!(listened.is_err(), "{listened:?}");
    assert_eq!(holdings(&town.store), before);

    // Its own valid key, signing a hello that names this team.
    let mut hello = chihuahua.store.relay_hello(RELAY_PROTOCOL_VERSION).unwrap();
    hello.team = "sonora".into();
    let store = &chihuahua.store;
    let (listened, received) = listen_once(&mut town.store, |address| {
        speak_the_relay_as(
            address,
            &hello,
            |ours, theirs| store.relay_proof(Signer::Initiator, ours, theirs).unwrap(),
            &forged,
        )
    });
    assert!(!names_any_of(&received, &logged));
    assert!(
        matches!(
            listened,
            Err(RelayError::Auth(RelayAuthError::UnknownPeer { device, .. })) if device == outsider
        ),
        "{listened:?}"
    );
    assert_eq!(holdings(&town.store), before);
}

#[test]
fn a_phone_that_never_synced_refuses_to_relay_and_says_to_sync_first() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let mut desert = fixture.device("desert", Role::Field);
    let mut town = fixture.device("town", Role::Field);
    desert.log(EXAMPLE_ENCOUNTER);
    let (initiated, responded) = relay_over_tcp(&mut desert.store, &mut town.store);
    for result in [&initiated, &responded] {
        let message = result.as_ref().unwrap_err().to_string();
        assert!(message.contains("sync once with signal first"), "{message}");
    }
    assert!(town.ids().is_empty());

    sync_to_learn_relay_keys(&mut [&mut town, &mut desert]);
    let (initiated, responded) = relay_over_tcp(&mut desert.store, &mut town.store);
    initiated.unwrap();
    assert_eq!(
        responded.unwrap().received,
        0,
        "desert had already uploaded it"
    );
    assert_eq!(town.ids().len(), 1);
}

#[test]
fn a_revoked_teammate_is_refused_once_the_other_phone_has_synced_since() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let mut desert = fixture.device("desert", Role::Field);
    let mut town = fixture.device("town", Role::Field);
    sync_to_learn_relay_keys(&mut [&mut desert, &mut town]);
    desert.log(EXAMPLE_ENCOUNTER);
    // Positive control: before the revocation the two relay.
    let (initiated, responded) = relay_over_tcp(&mut desert.store, &mut town.store);
    initiated.unwrap();
    assert_eq!(responded.unwrap().received, 1);

    let database = auxilio_server::Database::open(fixture.data.path()).unwrap();
    database
        .write(|tx| auxilio_server::directory::revoke(tx, desert.enrolled.device_id))
        .unwrap();
    town.sync().unwrap();
    let keys = town.store.team_relay_keys().unwrap().unwrap();
    assert_eq!(
        keys.iter().map(|k| k.device).collect::<Vec<_>>(),
        vec![town.enrolled.device_id],
        "only the town phone's own key is current"
    );
    desert.log(EXAMPLE_ENCOUNTER);
    let before = holdings(&town.store);
    let (_, responded) = relay_over_tcp(&mut desert.store, &mut town.store);
    assert!(
        matches!(
            &responded,
            Err(RelayError::Auth(RelayAuthError::UnknownPeer { device, .. })) if *device == desert.enrolled.device_id
        ),
        "{responded:?}"
    );
    assert_eq!(holdings(&town.store), before);
}

#[test]
fn registering_a_relay_key_that_is_not_one_is_refused_and_a_role_that_does_not_sync_may_not() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let mut phone = fixture.device("phone", Role::Field);
    let token = Some(phone.enrolled.token.as_str());
    for bad in [
        serde_json::json!({ "key": "not hex" }),
        serde_json::json!({ "key": "00" }),
        serde_json::json!({ "nothing": true }),
    ] {
        let (status, body) = post_json(&fixture.server.url, "/v1/relay-keys", token, &bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let good = serde_json::json!({ "key": phone.store.relay_public_key().unwrap() });
    let (status, body) = post_json(&fixture.server.url, "/v1/relay-keys", token, &good);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["keys"][0]["device"],
        phone.enrolled.device_id.to_string()
    );
    let coordinator = enroll(fixture.data.path(), "sonora", Role::Coordinator);
    let (status, _) = post_json(
        &fixture.server.url,
        "/v1/relay-keys",
        Some(&coordinator.token),
        &good,
    );
    assert_eq!(status, 403, "a role that does not sync does not relay");
}
