//! Bad input gets a clear error and changes nothing: missing and wrong tokens, revoked devices,
//! another team's data, malformed and oversize bodies, forged authorship, unknown schema
//! versions. After each, the server's stored changes and documents are exactly as before.

use auxilio_core::document::EncounterDocument;
use auxilio_core::id::new_actor_id;
use auxilio_core::protocol::{self, EncounterChanges, PROTOCOL_VERSION, RejectReason, SyncRequest};
use auxilio_core::{Encounter, EncounterId, SCHEMA_VERSION};
use auxilio_server::ServerConfig;
use auxilio_tests::{
    EXAMPLE_ENCOUNTER, TwoTeams, get_json, post_bytes, post_bytes_with_headers, stored_snapshot,
};
use serde_bytes::ByteBuf;

const MAX_REQUEST_BYTES: usize = 64 * 1024;

type Setup = TwoTeams;

fn setup() -> Setup {
    TwoTeams::start(ServerConfig {
        max_request_bytes: MAX_REQUEST_BYTES,
        ..ServerConfig::default()
    })
}

fn error_text(body: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("error bodies are JSON: {}", String::from_utf8_lossy(body)));
    json["error"]
        .as_str()
        .expect("an error message")
        .to_string()
}

/// A sync request that uploads nothing.
fn empty_request() -> SyncRequest {
    auxilio_tests::empty_sync_request()
}

/// A sync request body carrying `change` (raw bytes) for `encounter`.
fn request_body(encounter: EncounterId, change: Vec<u8>) -> Vec<u8> {
    protocol::encode(&SyncRequest {
        changes: vec![EncounterChanges {
            encounter,
            changes: vec![ByteBuf::from(change)],
        }],
        ..empty_request()
    })
}

/// A sync request body holding the first change of a fresh document written by `actor`.
fn request_with_change(
    actor: automerge::ActorId,
    encounter: EncounterId,
    record: &Encounter,
) -> Vec<u8> {
    let (_, change) = EncounterDocument::create(actor, encounter, record, 0).unwrap();
    request_body(encounter, change.raw_bytes().to_vec())
}

fn valid_record() -> Encounter {
    let mut record: Encounter = serde_json::from_str(EXAMPLE_ENCOUNTER).unwrap();
    record.schema_version = SCHEMA_VERSION;
    record
}

/// Sends `body` as `token`, expects the changes refused for `reason` with nothing stored, and
/// returns the response.
fn expect_refusal(
    s: &Setup,
    token: &str,
    body: &[u8],
    reason: RejectReason,
) -> protocol::SyncResponse {
    let before = stored_snapshot(&s.server.data_dir);
    let (status, response) = post_bytes(&s.server.url, "/v1/sync", Some(token), body);
    assert_eq!(status, 200);
    let response = protocol::decode_response(&response).unwrap();
    assert!(response.accepted.is_empty());
    assert_eq!(
        response.rejected[0].reason, reason,
        "{:?}",
        response.rejected[0]
    );
    assert_eq!(
        stored_snapshot(&s.server.data_dir),
        before,
        "nothing stored"
    );
    response
}

#[test]
fn missing_or_wrong_tokens_get_401_and_change_nothing() {
    let s = setup();
    let before = stored_snapshot(&s.server.data_dir);
    let body = protocol::encode(&s.sonora.store.sync_request().unwrap());
    let forged = format!("auxilio_{}_{}", s.sonora.enrolled.device_id, bs58_secret());
    for token in [
        None,
        Some("not-a-token"),
        Some(forged.as_str()),
        Some("auxilio_x_y"),
    ] {
        let (status, response) = post_bytes(&s.server.url, "/v1/sync", token, &body);
        assert_eq!(status, 401, "{token:?}");
        assert!(!error_text(&response).is_empty());
        for path in [
            "/v1/encounters",
            &format!("/v1/encounters/{}", s.encounter),
            "/v1/whoami",
        ] {
            let (status, body) = get_json(&s.server.url, path, token).unwrap();
            assert_eq!(status, 401, "{path} {token:?}");
            assert!(body["error"].is_string());
        }
    }
    assert_eq!(stored_snapshot(&s.server.data_dir), before);
}

fn bs58_secret() -> String {
    // 32 bytes in the right shape, but not the device's secret.
    "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi".to_string()
}

#[test]
fn a_revoked_device_gets_401_at_once() {
    let s = setup();
    let database = auxilio_server::Database::open(&s.server.data_dir).unwrap();
    database
        .write(|conn| auxilio_server::directory::revoke(conn, s.sonora.enrolled.device_id))
        .unwrap();
    let (status, body) =
        get_json(&s.server.url, "/v1/whoami", Some(&s.sonora.enrolled.token)).unwrap();
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
}

#[test]
fn a_field_device_cannot_read_another_teams_encounter() {
    let s = setup();
    let (status, body) = get_json(
        &s.server.url,
        &format!("/v1/encounters/{}", s.encounter),
        Some(&s.chihuahua.token),
    )
    .unwrap();
    assert_eq!(
        status, 404,
        "another team's encounter is answered like a missing one"
    );
    assert!(body["error"].is_string());
    let (_, list) = get_json(
        &s.server.url,
        "/v1/encounters?team=sonora",
        Some(&s.chihuahua.token),
    )
    .unwrap();
    assert_eq!(list["count"], 0);
}

#[test]
fn malformed_bodies_get_400_with_a_message_and_change_nothing() {
    let s = setup();
    let before = stored_snapshot(&s.server.data_dir);
    let token = s.sonora.enrolled.token.as_str();
    let mut garbage_change = SyncRequest {
        changes: vec![EncounterChanges {
            encounter: s.encounter,
            changes: vec![ByteBuf::from(b"not automerge".to_vec())],
        }],
        ..empty_request()
    };
    let other_version = SyncRequest {
        protocol: 99,
        ..empty_request()
    };
    let fixtures: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty body", vec![], "not a valid sync"),
        (
            "random bytes",
            vec![0xff, 0x13, 0x37, 0x00, 0x42],
            "not a valid sync",
        ),
        (
            "JSON instead of CBOR",
            br#"{"protocol":1,"cursor":0,"changes":[]}"#.to_vec(),
            "not a valid sync",
        ),
        (
            "CBOR of another shape",
            protocol::encode(&serde_json::json!({"protocol": PROTOCOL_VERSION, "changes": "all"})),
            "not a valid sync",
        ),
        (
            "another protocol version",
            protocol::encode(&other_version),
            "version 99",
        ),
        (
            "a change that is not Automerge",
            protocol::encode(&garbage_change),
            "not an acceptable Automerge change",
        ),
        (
            "an encounter id of the wrong length",
            truncated_id_request(),
            "not a valid sync",
        ),
        (
            "a compressed change (a possible decompression bomb)",
            compressed_change_request(s.sonora.enrolled.device_id),
            "compressed changes are not accepted",
        ),
    ];
    // Each body is refused with `status`, a message containing `expected`, and nothing stored.
    let assert_refused = |name: &str, headers: &[(&str, &str)], body: &[u8], status, expected| {
        let (got, response) =
            post_bytes_with_headers(&s.server.url, "/v1/sync", Some(token), headers, body);
        assert_eq!(got, status, "{name}");
        let message = error_text(&response);
        assert!(message.contains(expected), "{name}: {message}");
        assert_eq!(
            stored_snapshot(&s.server.data_dir),
            before,
            "{name} changed stored data"
        );
    };
    for (name, body, expected) in fixtures {
        assert_refused(name, &[], &body, 400, expected);
    }
    // Version 2's own fields and the content coding are checked before anything is stored.
    let long_id = SyncRequest {
        request_id: Some(ByteBuf::from(vec![1; 33])),
        ..empty_request()
    };
    let many_resumed = SyncRequest {
        resume: vec![ByteBuf::from(vec![1; 16]); 65],
        ..empty_request()
    };
    let plain = protocol::encode(&s.sonora.store.sync_request().unwrap());
    let mut bomb = vec![0u8; 17 * 1024 * 1024];
    bomb[..plain.len()].copy_from_slice(&plain);
    let coded: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "a request id longer than 32 bytes",
            protocol::compress(&protocol::encode(&long_id)),
            "deflate",
            400,
            "request_id",
        ),
        (
            "more than 64 resumed requests",
            protocol::compress(&protocol::encode(&many_resumed)),
            "deflate",
            400,
            "resume",
        ),
        (
            "a content coding the server does not speak",
            plain.clone(),
            "gzip",
            400,
            "content encoding",
        ),
        (
            "a made-up content coding",
            plain.clone(),
            "deflate-raw-garbage",
            400,
            "content encoding",
        ),
        (
            "damaged deflate",
            protocol::compress(&plain)[..20].to_vec(),
            "deflate",
            400,
            "compressed body",
        ),
        (
            "a small body inflating past the limit",
            protocol::compress(&bomb),
            "deflate",
            413,
            "larger than the limit",
        ),
    ];
    for (name, body, coding, status, expected) in coded {
        assert_refused(
            name,
            &[("Content-Encoding", coding)],
            &body,
            status,
            expected,
        );
    }

    // One bad change spoils the whole request: the good change beside it is not stored either.
    let good = s.sonora.store.sync_request().unwrap();
    garbage_change.changes.extend(good.changes);
    let (status, _) = post_bytes(
        &s.server.url,
        "/v1/sync",
        Some(token),
        &protocol::encode(&garbage_change),
    );
    assert_eq!(status, 400);
    assert_eq!(stored_snapshot(&s.server.data_dir), before);

    let (status, body) = get_json(&s.server.url, "/v1/encounters/not-an-id", Some(token)).unwrap();
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not an encounter id")
    );
}

fn compressed_change_request(device: auxilio_core::DeviceId) -> Vec<u8> {
    let mut record = valid_record();
    record.notes = "a long note that makes the change worth compressing ".repeat(20);
    let id = EncounterId::random();
    let (_, mut change) = EncounterDocument::create(new_actor_id(device), id, &record, 0).unwrap();
    let compressed = change.bytes().to_vec();
    assert_eq!(compressed[8], 2, "automerge compressed the change chunk");
    request_body(id, compressed)
}

fn truncated_id_request() -> Vec<u8> {
    protocol::encode(&serde_json::json!({
        "protocol": PROTOCOL_VERSION,
        "cursor": 0,
        "changes": [{"encounter": serde_bytes::Bytes::new(&[1, 2, 3]), "changes": []}],
    }))
}

#[test]
fn an_oversize_body_gets_413_and_changes_nothing() {
    let s = setup();
    let before = stored_snapshot(&s.server.data_dir);
    let (status, body) = post_bytes(
        &s.server.url,
        "/v1/sync",
        Some(&s.sonora.enrolled.token),
        &vec![0u8; MAX_REQUEST_BYTES + 1],
    );
    assert_eq!(status, 413);
    assert!(error_text(&body).contains("larger than the limit"));
    assert_eq!(stored_snapshot(&s.server.data_dir), before);
}

#[test]
fn changes_written_by_another_device_are_refused() {
    let s = setup();
    // The Chihuahua device uploads a change that claims to be written by the Sonora device.
    let forged = new_actor_id(s.sonora.enrolled.device_id);
    let body = request_with_change(forged, EncounterId::random(), &valid_record());
    expect_refusal(&s, &s.chihuahua.token, &body, RejectReason::WrongAuthor);
}

#[test]
fn writing_into_another_teams_encounter_is_refused() {
    let s = setup();
    let body = request_with_change(
        new_actor_id(s.chihuahua.device_id),
        s.encounter,
        &valid_record(),
    );
    // Refused like any id the device may not use, not as "another team's": that would say the
    // id exists (see sync_refuses_forged_and_purged_changes.rs).
    let response = expect_refusal(&s, &s.chihuahua.token, &body, RejectReason::InvalidChange);
    assert!(
        response.changes.is_empty(),
        "nothing of the other team leaks back"
    );
}

#[test]
fn an_unknown_schema_version_is_refused_and_kept_by_the_device() {
    let s = setup();
    let mut record = valid_record();
    record.schema_version = SCHEMA_VERSION + 1;
    let body = request_with_change(
        new_actor_id(s.sonora.enrolled.device_id),
        EncounterId::random(),
        &record,
    );
    let response = expect_refusal(
        &s,
        &s.sonora.enrolled.token,
        &body,
        RejectReason::UnknownSchemaVersion,
    );
    assert!(
        response.rejected[0].message.contains("schema version 2"),
        "{}",
        response.rejected[0].message
    );

    // The device applying such a refusal keeps its changes for a later, upgraded server, says
    // why they were refused, and sends them again.
    let mut sonora = s.sonora;
    sonora.edit(s.encounter, &["status=closed"]);
    let pending = sonora.store.sync_request().unwrap();
    let mut refusal = response.clone();
    refusal.rejected[0].encounter = s.encounter;
    sonora.store.apply_response(&refusal).unwrap();
    assert_eq!(sonora.store.pending_count().unwrap(), 1);
    let view = sonora.view(s.encounter);
    assert!(
        view.refused
            .as_deref()
            .is_some_and(|r| r.contains("schema version 2")),
        "{view:?}"
    );
    assert_eq!(
        sonora.store.sync_request().unwrap().changes,
        pending.changes
    );
    let report = sonora.sync().unwrap();
    assert_eq!(report.uploaded, 1, "sent again, and this time stored");
    assert_eq!(sonora.view(s.encounter).refused, None);
}

#[test]
fn a_change_sent_twice_in_one_request_is_stored_once() {
    let s = setup();
    let mut sonora = s.sonora;
    let id = sonora.log(EXAMPLE_ENCOUNTER);
    let mut request = sonora.store.sync_request().unwrap();
    let group = request.changes[0].clone();
    request.changes[0].changes.push(group.changes[0].clone());
    request.changes.push(group);
    let before = auxilio_tests::stored_change_hashes(&s.server.data_dir).len();
    let (status, body) = post_bytes(
        &s.server.url,
        "/v1/sync",
        Some(&sonora.enrolled.token),
        &protocol::encode(&request),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let response = protocol::decode_response(&body).unwrap();
    assert_eq!(response.accepted.len(), 1);
    assert_eq!(
        auxilio_tests::stored_change_hashes(&s.server.data_dir).len(),
        before + 1
    );
    sonora.store.apply_response(&response).unwrap();
    assert_eq!(sonora.view(id).pending_changes, 0);
}

#[test]
fn a_change_filed_under_another_encounter_id_is_refused() {
    let mut s = setup();
    s.sonora.log(EXAMPLE_ENCOUNTER);
    let mut request = s.sonora.store.sync_request().unwrap();
    request.changes[0].encounter = EncounterId::random();
    let token = s.sonora.enrolled.token.clone();
    expect_refusal(
        &s,
        &token,
        &protocol::encode(&request),
        RejectReason::InvalidChange,
    );
}

#[test]
fn unknown_routes_and_methods_answer_json_and_the_bearer_scheme_is_case_insensitive() {
    let s = setup();
    let (status, body) = get_json(&s.server.url, "/v1/nothing-here", None).unwrap();
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/v1/nothing-here"));
    let (status, response) = post_bytes(
        &s.server.url,
        "/v1/encounters",
        Some(&s.sonora.enrolled.token),
        b"",
    );
    assert_eq!(status, 405);
    assert!(!error_text(&response).is_empty());

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .get(format!("{}/v1/whoami", s.server.url))
        .header(
            "Authorization",
            &format!("bearer {}", s.sonora.enrolled.token),
        )
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    for query in ["?service=teleport", "?status=deleted"] {
        let (status, body) = get_json(
            &s.server.url,
            &format!("/v1/encounters{query}"),
            Some(&s.sonora.enrolled.token),
        )
        .unwrap();
        assert_eq!(status, 400, "{query}");
        assert!(body["error"].is_string());
    }
}

#[test]
fn a_value_the_schema_does_not_know_is_stored_flagged_and_still_on_the_list() {
    use automerge::transaction::Transactable;
    let s = setup();
    // A change from another app version (or a buggy one), properly authored by the device.
    let document = s.sonora.store.document(s.encounter).unwrap().save();
    let mut doc = automerge::AutoCommit::load(&document)
        .unwrap()
        .with_actor(new_actor_id(s.sonora.enrolled.device_id));
    doc.put(automerge::ROOT, "status", "archived").unwrap();
    doc.commit();
    let change = doc.get_last_local_change().unwrap();
    let body = request_body(s.encounter, change.raw_bytes().to_vec());
    let (status, response) = post_bytes(
        &s.server.url,
        "/v1/sync",
        Some(&s.sonora.enrolled.token),
        &body,
    );
    assert_eq!(status, 200);
    assert_eq!(
        protocol::decode_response(&response).unwrap().accepted.len(),
        1
    );

    let token = Some(s.sonora.enrolled.token.as_str());
    let (_, list) = get_json(&s.server.url, "/v1/encounters", token).unwrap();
    let row = &list["encounters"][0];
    assert_eq!(row["status"], "archived");
    assert_eq!(row["people"], 3, "the counts still reach the index");
    assert_eq!(row["services"], serde_json::json!(["first_aid", "rescue"]));
    assert!(
        !row["problems"].as_array().unwrap().is_empty(),
        "and the record is flagged: {row}"
    );
    let (status, detail) = get_json(
        &s.server.url,
        &format!("/v1/encounters/{}", s.encounter),
        token,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(detail["encounter"]["status"], "archived", "shown as stored");
}
