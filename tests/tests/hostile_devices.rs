//! A device that misbehaves, on purpose or through a bug, can neither take over another
//! device's identity or authorship, nor move an encounter to another team, nor flood the server;
//! and what it writes that breaks the schema is kept (nothing lost) but flagged for a person.
//! Every refusal leaves the device's own changes in its store.

use std::time::{Duration, Instant};

use automerge::ReadDoc;
use automerge::transaction::Transactable;
use auxilio_core::document::EncounterDocument;
use auxilio_core::id::new_actor_id;
use auxilio_core::protocol::{self, EncounterChanges, RejectReason, SyncRequest};
use auxilio_core::{EncounterId, SCHEMA_VERSION};
use auxilio_server::ServerConfig;
use auxilio_server::client::{self, ClientError, SyncOptions};
use auxilio_server::directory::Role;
use auxilio_server::rate_limit::RateLimits;
use auxilio_tests::{
    EXAMPLE_ENCOUNTER, TwoTeams, empty_sync_request, enroll, get_json, post_bytes, raw_change,
    stored_snapshot,
};
use serde_bytes::ByteBuf;

type Setup = TwoTeams;

fn setup_with(config: ServerConfig) -> Setup {
    TwoTeams::start(config)
}

fn setup() -> Setup {
    setup_with(ServerConfig::default())
}

fn request_body(encounter: EncounterId, changes: Vec<Vec<u8>>) -> Vec<u8> {
    protocol::encode(&SyncRequest {
        changes: vec![EncounterChanges {
            encounter,
            changes: changes.into_iter().map(ByteBuf::from).collect(),
        }],
        ..empty_sync_request()
    })
}

/// Puts `change` on the device's pending list, as the modified app's store would hold it.
fn hold_as_pending(setup: &Setup, device_name: &str, id: EncounterId, change: &automerge::Change) {
    let conn =
        rusqlite::Connection::open(setup.devices.path().join(format!("{device_name}.db"))).unwrap();
    conn.execute(
        "INSERT INTO pending_changes (encounter, hash, change) VALUES (?1, ?2, ?3)",
        rusqlite::params![
            id.as_bytes(),
            change.hash().0.as_slice(),
            change.raw_bytes()
        ],
    )
    .unwrap();
}

fn detail(server_url: &str, token: &str, id: EncounterId) -> serde_json::Value {
    let (status, body) =
        get_json(server_url, &format!("/v1/encounters/{id}"), Some(token)).unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn moving_an_encounter_to_another_team_is_refused_and_the_device_keeps_its_change() {
    let mut s = setup();
    let id = s.encounter;
    let moved = raw_change(&s.sonora, id, |doc| {
        doc.put(automerge::ROOT, "team", "chihuahua").unwrap();
    });
    hold_as_pending(&s, "sonora", id, &moved);
    let before = stored_snapshot(&s.server.data_dir);

    let report = s.sonora.sync().unwrap();
    assert_eq!(report.uploaded, 0);
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    let refusal = &report.rejected[0];
    assert_eq!(refusal.reason, RejectReason::TeamChanged);
    assert!(
        refusal.message.contains("chihuahua") && refusal.message.contains("team=sonora"),
        "the message says what and how to fix it: {}",
        refusal.message
    );
    assert_eq!(
        stored_snapshot(&s.server.data_dir),
        before,
        "nothing stored"
    );
    assert_eq!(
        detail(&s.server.url, &s.sonora.enrolled.token, id)["team"],
        "sonora",
        "the encounter stays with its team"
    );
    let (_, list) = get_json(&s.server.url, "/v1/encounters", Some(&s.chihuahua.token)).unwrap();
    assert_eq!(list["count"], 0, "and the other team sees nothing of it");

    // Refusals never destroy data: the change is still pending, marked with why.
    assert_eq!(s.sonora.store.pending_count().unwrap(), 1);
    let view = s.sonora.view(id);
    assert!(
        view.refused
            .as_deref()
            .is_some_and(|r| r.contains("chihuahua")),
        "{view:?}"
    );
}

#[test]
fn a_new_encounter_naming_another_team_is_refused() {
    let s = setup();
    let mut record: auxilio_core::Encounter = serde_json::from_str(EXAMPLE_ENCOUNTER).unwrap();
    record.schema_version = SCHEMA_VERSION;
    record.team = "chihuahua".into();
    let id = EncounterId::random();
    let (_, change) =
        EncounterDocument::create(new_actor_id(s.sonora.enrolled.device_id), id, &record, 0)
            .unwrap();
    let before = stored_snapshot(&s.server.data_dir);
    let (status, body) = post_bytes(
        &s.server.url,
        "/v1/sync",
        Some(&s.sonora.enrolled.token),
        &request_body(id, vec![change.raw_bytes().to_vec()]),
    );
    assert_eq!(status, 200);
    let response = protocol::decode_response(&body).unwrap();
    assert!(response.accepted.is_empty());
    assert_eq!(response.rejected[0].reason, RejectReason::TeamChanged);
    assert_eq!(stored_snapshot(&s.server.data_dir), before);
}

#[test]
fn a_concurrent_team_value_beside_the_right_one_is_refused() {
    let s = setup();
    let id = s.encounter;
    // Two edits from the same base, one keeping the team and one naming another: merged, the
    // document holds both values, and the wrong one could win at the next edit.
    let keep = raw_change(&s.sonora, id, |doc| {
        // Writing the same value again is no operation at all; writing it back is one.
        doc.put(automerge::ROOT, "team", "sonora-east").unwrap();
        doc.put(automerge::ROOT, "team", "sonora").unwrap();
    });
    let saved = s.sonora.store.document(id).unwrap().save();
    let second_actor = new_actor_id(s.sonora.enrolled.device_id);
    let mut other = automerge::AutoCommit::load(&saved)
        .unwrap()
        .with_actor(second_actor);
    other.put(automerge::ROOT, "team", "chihuahua").unwrap();
    other.commit();
    let moved = other.get_last_local_change().unwrap();
    let mut merged = EncounterDocument::load(&saved, None).unwrap();
    merged
        .apply_changes(vec![keep.clone(), moved.clone()])
        .unwrap();
    assert_eq!(merged.team_values().len(), 2, "a real conflict");

    let before = stored_snapshot(&s.server.data_dir);
    let (status, body) = post_bytes(
        &s.server.url,
        "/v1/sync",
        Some(&s.sonora.enrolled.token),
        &request_body(
            id,
            vec![keep.raw_bytes().to_vec(), moved.raw_bytes().to_vec()],
        ),
    );
    assert_eq!(status, 200);
    let response = protocol::decode_response(&body).unwrap();
    assert_eq!(response.rejected[0].reason, RejectReason::TeamChanged);
    assert!(
        response.rejected[0].message.contains("concurrent"),
        "{}",
        response.rejected[0].message
    );
    assert_eq!(stored_snapshot(&s.server.data_dir), before);
}

#[test]
fn a_token_with_another_devices_id_and_its_own_secret_is_401() {
    let s = setup();
    // The Chihuahua device knows its own secret and the Sonora device's id (ids are not secret).
    let own_secret = s.chihuahua.token.rsplit('_').next().unwrap();
    let claimed = format!("auxilio_{}_{own_secret}", s.sonora.enrolled.device_id);
    let before = stored_snapshot(&s.server.data_dir);
    for path in ["/v1/whoami", "/v1/encounters"] {
        let (status, body) = get_json(&s.server.url, path, Some(&claimed)).unwrap();
        assert_eq!(status, 401, "{path}: {body}");
    }
    let body = protocol::encode(&s.sonora.store.sync_request().unwrap());
    let (status, _) = post_bytes(&s.server.url, "/v1/sync", Some(&claimed), &body);
    assert_eq!(status, 401);
    assert_eq!(stored_snapshot(&s.server.data_dir), before);
}

#[test]
fn a_change_whose_actor_is_another_teams_device_is_refused_even_on_ones_own_encounter() {
    let s = setup();
    // A Sonora upload, on Sonora's own encounter, carrying a change that names the Chihuahua
    // device as its author: relaying is for teammates only.
    let saved = s.sonora.store.document(s.encounter).unwrap().save();
    let mut doc = automerge::AutoCommit::load(&saved)
        .unwrap()
        .with_actor(new_actor_id(s.chihuahua.device_id));
    doc.put(automerge::ROOT, "status", "closed").unwrap();
    doc.commit();
    let forged = doc.get_last_local_change().unwrap();
    let before = stored_snapshot(&s.server.data_dir);
    let (status, body) = post_bytes(
        &s.server.url,
        "/v1/sync",
        Some(&s.sonora.enrolled.token),
        &request_body(s.encounter, vec![forged.raw_bytes().to_vec()]),
    );
    assert_eq!(status, 200);
    let response = protocol::decode_response(&body).unwrap();
    assert_eq!(response.rejected[0].reason, RejectReason::WrongAuthor);
    assert!(
        response.rejected[0]
            .message
            .contains("not a device of team `sonora`"),
        "{}",
        response.rejected[0].message
    );
    assert_eq!(stored_snapshot(&s.server.data_dir), before);
}

fn limited(per_minute: u32, burst: u32) -> ServerConfig {
    ServerConfig {
        rate_limits: RateLimits { per_minute, burst },
        ..ServerConfig::default()
    }
}

#[test]
fn a_device_over_its_rate_limit_gets_429_with_retry_after() {
    // The setup's own sync takes a request or two of the burst.
    let s = setup_with(limited(60, 5));
    let token = s.sonora.enrolled.token.as_str();
    let mut statuses = Vec::new();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut limited_response = None;
    for _ in 0..8 {
        let mut response = agent
            .get(format!("{}/v1/whoami", s.server.url))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        let status = response.status().as_u16();
        statuses.push(status);
        if status == 429 && limited_response.is_none() {
            let retry_after: u64 = response
                .headers()
                .get("Retry-After")
                .expect("a Retry-After header")
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body: serde_json::Value =
                serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap();
            limited_response = Some((retry_after, body));
        }
    }
    assert!(
        statuses.contains(&200) && statuses.ends_with(&[429]),
        "{statuses:?}"
    );
    let (retry_after, body) = limited_response.unwrap();
    assert_eq!(retry_after, 1, "one request a second refills");
    assert_eq!(body["retry_after_secs"], 1);
    assert!(
        body["error"].as_str().unwrap().contains("retry in 1 s"),
        "{body}"
    );

    // Another device is not held back by this one.
    let other = enroll(s.data.path(), "sonora", Role::Field);
    let (status, _) = get_json(&s.server.url, "/v1/whoami", Some(&other.token)).unwrap();
    assert_eq!(status, 200);
    // And after the wait, the device is let through again.
    std::thread::sleep(Duration::from_secs(retry_after));
    let (status, _) = get_json(&s.server.url, "/v1/whoami", Some(token)).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn guessing_tokens_is_slowed_per_address() {
    let s = setup_with(limited(60, 3));
    let guess = format!(
        "auxilio_{}_4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi",
        s.sonora.enrolled.device_id
    );
    let statuses: Vec<u16> = (0..6)
        .map(|_| {
            get_json(&s.server.url, "/v1/whoami", Some(&guess))
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(statuses[..3], [401, 401, 401], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // Only failures are limited: the right token from the same address is served (behind a
    // NAT or proxy the whole fleet shares it).
    let (status, body) =
        get_json(&s.server.url, "/v1/whoami", Some(&s.sonora.enrolled.token)).unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_sync_over_the_rate_limit_waits_and_finishes_with_nothing_lost() {
    // Pages of about one encounter each way, and a burst of two requests: the sync must wait
    // for the server at least once.
    let mut config = limited(120, 2);
    config.pages = auxilio_server::ledger::PageLimits::at_most(1024);
    let s = setup_with(config);
    let mut sonora = s.sonora;
    let ids: Vec<EncounterId> = (0..6).map(|_| sonora.log(EXAMPLE_ENCOUNTER)).collect();
    let options = SyncOptions {
        max_page_bytes: 1024,
        min_page_bytes: 1024,
        ..SyncOptions::default()
    };
    let started = Instant::now();
    let report = client::sync_with(&mut sonora.store, options, |_| {}).unwrap();
    assert!(report.retries > 0, "the limit was met: {report:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "and waited for"
    );
    assert_eq!(report.uploaded, 6, "{report:?}");
    assert_eq!(sonora.store.pending_count().unwrap(), 0);
    // The device has used its burst: the list waits for the refill too.
    std::thread::sleep(Duration::from_secs(2));
    let (_, list) = get_json(
        &s.server.url,
        "/v1/encounters",
        Some(&sonora.enrolled.token),
    )
    .unwrap();
    assert_eq!(list["count"], 7);
    for id in ids {
        assert_eq!(sonora.view(id).pending_changes, 0);
    }

    // A device that gives up on the limit keeps everything and says so.
    let impatient = SyncOptions {
        max_failed_attempts: 1,
        ..options
    };
    sonora.log(EXAMPLE_ENCOUNTER);
    let mut failure = None;
    for _ in 0..10 {
        if let Err(err) = client::sync_with(&mut sonora.store, impatient, |_| {}) {
            failure = Some(err);
            break;
        }
        sonora.log(EXAMPLE_ENCOUNTER);
    }
    match failure {
        Some(ClientError::Server {
            status: 429,
            message,
        }) => {
            assert!(
                message.contains("nothing on this device was lost"),
                "{message}"
            )
        }
        other => panic!("expected a 429 failure, got {other:?}"),
    }
    assert!(sonora.store.pending_count().unwrap() > 0);
}

#[test]
fn records_that_break_the_schema_are_stored_flagged_and_listed_as_flagged() {
    let mut s = setup();
    let token = s.sonora.enrolled.token.clone();
    // A group encounter (no rescue, first aid, transfer or UASC), then a casualty under it and an
    // absurd injured count, written through raw Automerge by a buggy or hostile app.
    let group = s
        .sonora
        .log(r#"{"services":["humanitarian_aid"],"counts":{"m":{"18-59":2}},"status":"open"}"#);
    let negative = s
        .sonora
        .log(r#"{"services":["humanitarian_aid"],"counts":{"m":{"18-59":2}},"status":"open"}"#);
    s.sonora.sync().unwrap();
    let casualty = raw_change(&s.sonora, group, |doc| {
        let casualties = doc
            .put_object(automerge::ROOT, "casualties", automerge::ObjType::Map)
            .unwrap();
        let person = doc
            .put_object(&casualties, "p1", automerge::ObjType::Map)
            .unwrap();
        doc.put(&person, "sex", "m").unwrap();
        let (_, counts) = doc.get(automerge::ROOT, "counts").unwrap().unwrap();
        doc.put(&counts, "injured", 1_000_000_u64).unwrap();
    });
    let below_zero = raw_change(&s.sonora, negative, |doc| {
        let (_, counts) = doc.get(automerge::ROOT, "counts").unwrap().unwrap();
        doc.put(&counts, "injured", -3_i64).unwrap();
    });
    for (id, change) in [(group, &casualty), (negative, &below_zero)] {
        let (status, body) = post_bytes(
            &s.server.url,
            "/v1/sync",
            Some(&token),
            &request_body(id, vec![change.raw_bytes().to_vec()]),
        );
        assert_eq!(status, 200);
        let response = protocol::decode_response(&body).unwrap();
        assert_eq!(
            response.accepted.len(),
            1,
            "stored: {:?}",
            response.rejected
        );
    }

    // Stored as merged, nothing lost, and flagged field by field.
    let shown = detail(&s.server.url, &token, group);
    assert_eq!(shown["encounter"]["casualties"]["p1"]["sex"], "m");
    assert_eq!(shown["encounter"]["counts"]["injured"], 1_000_000);
    let fields: Vec<&str> = shown["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"casualties.p1") && fields.contains(&"counts.injured"),
        "{shown}"
    );
    let shown = detail(&s.server.url, &token, negative);
    assert_eq!(shown["encounter"]["counts"]["injured"], -3);
    assert!(
        !shown["problems"].as_array().unwrap().is_empty(),
        "a value the schema cannot read is flagged: {shown}"
    );

    let ids_listed = |query: &str| -> Vec<String> {
        let (status, list) = get_json(
            &s.server.url,
            &format!("/v1/encounters{query}"),
            Some(&token),
        )
        .unwrap();
        assert_eq!(status, 200, "{list}");
        let mut ids: Vec<String> = list["encounters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let mut flagged = vec![group.to_string(), negative.to_string()];
    flagged.sort();
    assert_eq!(ids_listed("?flagged=true"), flagged);
    assert_eq!(ids_listed("?flagged=false"), vec![s.encounter.to_string()]);
    assert_eq!(ids_listed("").len(), 3);
    let (status, body) =
        get_json(&s.server.url, "/v1/encounters?flagged=maybe", Some(&token)).unwrap();
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("flagged"),
        "{body}"
    );
}

#[test]
fn the_small_body_limit_of_other_routes_leaves_sync_its_own() {
    let mut s = setup();
    for n in 0..40 {
        let notes = format!("{n:02} ").repeat(700);
        s.sonora.log(&format!(
            r#"{{"services":["rescue"],"counts":{{"m":{{"18-59":1}}}},"notes":"{}"}}"#,
            &notes[..1900]
        ));
    }
    let body = protocol::encode(&s.sonora.store.sync_request().unwrap());
    assert!(
        body.len() > auxilio_server::http::MAX_JSON_BODY_BYTES,
        "{} bytes",
        body.len()
    );
    let (status, response) = post_bytes(
        &s.server.url,
        "/v1/sync",
        Some(&s.sonora.enrolled.token),
        &body,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&response));
    assert_eq!(
        protocol::decode_response(&response).unwrap().accepted.len(),
        40
    );
}
