//! What the attack review (issue 10) found a device could slip past sync, refused end to end: a
//! purged encounter's change brought back from an old backup under a new encounter id; a change
//! whose author is a teammate device that does not write encounters (coordinator, administrator,
//! auditor); an answer that told whether another team holds an encounter id; and requests so
//! large they held the single writer while other devices waited.

use std::path::{Path, PathBuf};

use automerge::transaction::Transactable;
use auxilio_core::document::EncounterDocument;
use auxilio_core::id::new_actor_id;
use auxilio_core::protocol::{self, EncounterChanges, RejectReason, Rejection, SyncRequest};
use auxilio_core::{DeviceId, EncounterId, SCHEMA_VERSION};
use auxilio_server::ServerConfig;
use auxilio_server::client::ClientError;
use auxilio_server::directory::Role;
use auxilio_server::ledger::SyncCaps;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, PROTECTION_CASE, TeamFixture, TwoTeams, empty_sync_request, enroll,
    files_containing, files_in, get_json, post_bytes, post_json, stored_change_hashes,
    stored_snapshot,
};
use serde_bytes::ByteBuf;

/// A sync request uploading `groups` (each an encounter id and the changes filed under it).
fn upload(groups: Vec<(EncounterId, Vec<&automerge::Change>)>) -> Vec<u8> {
    protocol::encode(&SyncRequest {
        changes: groups
            .into_iter()
            .map(|(encounter, changes)| EncounterChanges {
                encounter,
                changes: changes
                    .into_iter()
                    .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
                    .collect(),
            })
            .collect(),
        ..empty_sync_request()
    })
}

/// Posts `body` to `/v1/sync` with `token`; the decoded answer, which must be 200.
fn sync_raw(url: &str, token: &str, body: &[u8]) -> protocol::SyncResponse {
    let (status, answer) = post_bytes(url, "/v1/sync", Some(token), body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    protocol::decode_response(&answer).unwrap()
}

/// The merged Automerge document of `id` as the store file at `path` holds it, saved.
fn document_in_store(path: &Path, id: EncounterId) -> Vec<u8> {
    let store = auxilio_core::DeviceStore::open(path).unwrap();
    let mut document = store.document(id).unwrap();
    document.save()
}

/// One change on top of `doc`, written as `author`'s device: a modified app (or a restored old
/// backup) writes such a change with any actor it likes.
fn change_as(
    saved: &[u8],
    author: DeviceId,
    edit: impl FnOnce(&mut automerge::AutoCommit),
) -> automerge::Change {
    let mut doc = automerge::AutoCommit::load(saved)
        .unwrap()
        .with_actor(new_actor_id(author));
    edit(&mut doc);
    doc.commit();
    doc.get_last_local_change().unwrap().clone()
}

fn server_files(fixture: &TeamFixture) -> Vec<(PathBuf, Vec<u8>)> {
    files_in(fixture.data.path())
}

#[test]
fn a_purged_encounters_change_from_an_old_backup_filed_under_a_new_id_is_refused_and_stays_off_the_disk()
 {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let url = fixture.server.url.clone();
    let mut phone = fixture.device("a", Role::Field);
    let mut teammate = fixture.device("b", Role::Field);
    let officer = enroll(fixture.data.path(), "sonora", Role::ProtectionOfficer).token;
    let marker = "PURGE-MARKER-Kx41-backup-restored";

    // A UASC case: what a protection officer may read, and so purge over HTTP.
    let purged = phone.log(PROTECTION_CASE);
    phone.sync().unwrap();
    phone.edit(purged, &[&format!("notes={marker}")]);
    phone.sync().unwrap();
    teammate.sync().unwrap();
    assert!(
        !files_containing(&server_files(&fixture), marker).is_empty(),
        "the marker is in the server's files before the purge (the search can fail)"
    );
    // The phone's store is backed up before the purge, as a phone backup would be.
    let backup = fixture.devices.path().join("backup.db");
    rusqlite::Connection::open(fixture.devices.path().join("a.db"))
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();

    let (status, body) = post_json(
        &url,
        &format!("/v1/encounters/{purged}/purge"),
        Some(&officer),
        &serde_json::json!({"reason": "consent withdrawn"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        files_containing(&server_files(&fixture), marker),
        Vec::<PathBuf>::new()
    );

    // Restored from the backup, the phone holds the purged changes: it files the change carrying
    // the marker under a new encounter id, and a new edit that depends on it under another.
    let old = document_in_store(&backup, purged);
    let with_marker = automerge::AutoCommit::load(&old)
        .unwrap()
        .get_changes(&[])
        .into_iter()
        .find(|c| {
            c.raw_bytes()
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
        })
        .expect("the backup holds the change with the marker")
        .clone();
    let follow_up = change_as(&old, phone.enrolled.device_id, |doc| {
        doc.put(automerge::ROOT, "status", "closed").unwrap();
    });
    let (new_id, other_new_id) = (EncounterId::random(), EncounterId::random());
    let response = sync_raw(
        &url,
        &phone.enrolled.token,
        &upload(vec![
            (new_id, vec![&with_marker]),
            (other_new_id, vec![&follow_up]),
        ]),
    );
    assert!(response.accepted.is_empty(), "{:?}", response.accepted);
    let reasons: Vec<(EncounterId, RejectReason)> = response
        .rejected
        .iter()
        .map(|r| (r.encounter, r.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (new_id, RejectReason::Purged),
            (other_new_id, RejectReason::Purged)
        ],
        "{:?}",
        response.rejected
    );
    assert_eq!(
        files_containing(&server_files(&fixture), marker),
        Vec::<PathBuf>::new(),
        "no file of the server's data directory holds the purged marker"
    );
    // Nothing of it reaches a teammate either.
    let report = teammate.sync().unwrap();
    assert_eq!(report.downloaded, 0, "{report:?}");
    assert!(!teammate.ids().contains(&new_id) && !teammate.ids().contains(&other_new_id));
}

/// A Sonora server and a field phone (store `a`) that has logged and synced one encounter.
struct Team {
    fixture: TeamFixture,
    phone: Device,
    encounter: EncounterId,
}

fn team() -> Team {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let mut phone = fixture.device("a", Role::Field);
    let encounter = phone.log(EXAMPLE_ENCOUNTER);
    phone.sync().unwrap();
    Team {
        fixture,
        phone,
        encounter,
    }
}

#[test]
fn a_change_naming_the_teams_coordinator_administrator_or_auditor_as_author_is_refused_as_wrong_author()
 {
    let Team {
        fixture,
        phone,
        encounter,
    } = team();
    let url = fixture.server.url.clone();
    let doc = document_in_store(&fixture.devices.path().join("a.db"), encounter);
    for role in [Role::Coordinator, Role::Administrator, Role::Auditor] {
        let teammate = enroll(fixture.data.path(), "sonora", role);
        let forged = change_as(&doc, teammate.device_id, |doc| {
            doc.put(automerge::ROOT, "status", "closed").unwrap();
        });
        let before = stored_snapshot(fixture.data.path());
        let response = sync_raw(
            &url,
            &phone.enrolled.token,
            &upload(vec![(encounter, vec![&forged])]),
        );
        assert!(response.accepted.is_empty(), "{role}: {response:?}");
        assert_eq!(response.rejected.len(), 1, "{role}");
        assert_eq!(
            response.rejected[0].reason,
            RejectReason::WrongAuthor,
            "{role}"
        );
        assert!(
            response.rejected[0]
                .message
                .contains("does not write encounters"),
            "{role}: {}",
            response.rejected[0].message
        );
        assert_eq!(stored_snapshot(fixture.data.path()), before, "{role}");
    }
}

#[test]
fn a_change_relayed_from_a_teammate_field_phone_is_accepted_and_the_record_shows_author_and_uploader()
 {
    let Team {
        fixture,
        mut phone,
        encounter,
    } = team();
    let url = fixture.server.url.clone();
    let teammate = enroll(fixture.data.path(), "sonora", Role::Field);
    let coordinator = enroll(fixture.data.path(), "sonora", Role::Coordinator).token;
    // The teammate's phone wrote `terrain=river` and handed it over phone to phone; meanwhile the
    // uploading phone wrote `terrain=mountain` itself: a conflict with one value each.
    let doc = document_in_store(&fixture.devices.path().join("a.db"), encounter);
    let relayed = change_as(&doc, teammate.device_id, |doc| {
        doc.put(automerge::ROOT, "terrain", "river").unwrap();
    });
    phone.edit(encounter, &["terrain=mountain"]);
    phone.sync().unwrap();
    let response = sync_raw(
        &url,
        &phone.enrolled.token,
        &upload(vec![(encounter, vec![&relayed])]),
    );
    assert!(response.rejected.is_empty(), "{:?}", response.rejected);
    assert_eq!(
        response.accepted,
        vec![ByteBuf::from(relayed.hash().0.to_vec())]
    );

    let (status, detail) = get_json(
        &url,
        &format!("/v1/encounters/{encounter}"),
        Some(&coordinator),
    )
    .unwrap();
    assert_eq!(status, 200, "{detail}");
    let (uploader, author) = (
        phone.enrolled.device_id.to_string(),
        teammate.device_id.to_string(),
    );
    assert_eq!(
        detail["authors"],
        serde_json::json!([
            {"device": uploader, "uploaded_by": [uploader]},
            {"device": author, "uploaded_by": [uploader]},
        ]),
        "{detail}"
    );
    let terrain = detail["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "terrain")
        .unwrap_or_else(|| panic!("a terrain conflict: {detail}"));
    let river = terrain["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["value"] == "river")
        .unwrap();
    assert_eq!(river["device"], author.as_str());
    assert_eq!(river["uploaded_by"], serde_json::json!([uploader]));
}

/// The refusal of `body` uploaded by `token`, with the encounter id it names replaced by `<id>`.
fn refusal(url: &str, token: &str, body: &[u8]) -> (RejectReason, String) {
    let response = sync_raw(url, token, body);
    assert!(response.accepted.is_empty());
    let [
        Rejection {
            encounter,
            reason,
            message,
        },
    ] = response.rejected.as_slice()
    else {
        panic!("one refusal: {:?}", response.rejected);
    };
    (*reason, message.replace(&encounter.to_string(), "<id>"))
}

#[test]
fn filing_under_another_teams_encounter_id_answers_exactly_like_any_id_the_device_may_not_use() {
    let s = TwoTeams::start(ServerConfig::default());
    let mut record: auxilio_core::Encounter = serde_json::from_str(EXAMPLE_ENCOUNTER).unwrap();
    record.schema_version = SCHEMA_VERSION;
    record.team = "chihuahua".into();
    let actor = || new_actor_id(s.chihuahua.device_id);
    let before = stored_snapshot(&s.server.data_dir);

    // Sonora's existing encounter id, with a first change that names it.
    let (_, taken) = EncounterDocument::create(actor(), s.encounter, &record, 0).unwrap();
    let existing = refusal(
        &s.server.url,
        &s.chihuahua.token,
        &upload(vec![(s.encounter, vec![&taken])]),
    );
    // An id no encounter has, with a first change that names another id.
    let (_, misnamed) =
        EncounterDocument::create(actor(), EncounterId::random(), &record, 0).unwrap();
    let unknown = refusal(
        &s.server.url,
        &s.chihuahua.token,
        &upload(vec![(EncounterId::random(), vec![&misnamed])]),
    );
    assert_eq!(existing, unknown);
    assert!(!existing.1.contains("team"), "{}", existing.1);
    assert_eq!(stored_snapshot(&s.server.data_dir), before);
}

/// A team's server whose ceilings are `caps`, and a field phone (store `a`).
fn capped(caps: SyncCaps) -> (TeamFixture, Device) {
    let fixture = TeamFixture::start(
        "sonora",
        ServerConfig {
            caps,
            ..ServerConfig::default()
        },
    );
    let phone = fixture.device("a", Role::Field);
    (fixture, phone)
}

/// `POST /v1/sync` with `body` as `token`: the status, the `Retry-After` header and the JSON body.
fn post_sync_reading_headers(
    url: &str,
    token: &str,
    body: &[u8],
) -> (u16, Option<String>, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(format!("{url}/v1/sync"))
        .header("Content-Type", protocol::MEDIA_TYPE)
        .header("Authorization", &format!("Bearer {token}"))
        .send(body)
        .unwrap();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().unwrap().to_string());
    // A 200 answers in CBOR, not JSON: then the body is left as null.
    let json = serde_json::from_slice(&response.body_mut().read_to_vec().unwrap())
        .unwrap_or(serde_json::Value::Null);
    (response.status().as_u16(), retry_after, json)
}

#[test]
fn a_device_with_more_pending_encounters_than_the_per_request_ceiling_syncs_them_all_in_smaller_pages()
 {
    let (fixture, mut phone) = capped(SyncCaps {
        max_encounters_per_request: 8,
        ..SyncCaps::default()
    });
    let logged: Vec<EncounterId> = (0..30).map(|_| phone.log(EXAMPLE_ENCOUNTER)).collect();
    let report = phone.sync().unwrap();
    assert_eq!(report.uploaded, 30, "{report:?}");
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    assert_eq!(
        stored_change_hashes(fixture.data.path()).len(),
        logged.len()
    );
}

#[test]
fn a_raw_request_over_the_per_request_ceiling_is_refused_with_413_and_a_hint_and_stores_nothing() {
    let (fixture, phone) = capped(SyncCaps {
        max_encounters_per_request: 8,
        ..SyncCaps::default()
    });
    let mut record: auxilio_core::Encounter = serde_json::from_str(EXAMPLE_ENCOUNTER).unwrap();
    record.schema_version = SCHEMA_VERSION;
    record.team = "sonora".into();
    let creates: Vec<(EncounterId, automerge::Change)> = (0..9)
        .map(|_| {
            let id = EncounterId::random();
            let actor = new_actor_id(phone.enrolled.device_id);
            (
                id,
                EncounterDocument::create(actor, id, &record, 0).unwrap().1,
            )
        })
        .collect();
    let request = |n: usize| upload(creates[..n].iter().map(|(id, c)| (*id, vec![c])).collect());
    let before = stored_snapshot(fixture.data.path());
    let (status, _, body) =
        post_sync_reading_headers(&fixture.server.url, &phone.enrolled.token, &request(9));
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("changes of 9 encounters; at most 8 per request"),
        "{body}"
    );
    assert!(body["hint"].as_str().unwrap().contains("split"), "{body}");
    assert_eq!(stored_snapshot(fixture.data.path()), before);
    // Positive control: at the ceiling, the same kind of request is stored.
    let response = sync_raw(&fixture.server.url, &phone.enrolled.token, &request(8));
    assert_eq!(response.accepted.len(), 8, "{:?}", response.rejected);
}

#[test]
fn a_device_past_its_daily_ceiling_of_new_encounters_gets_429_with_retry_after_and_keeps_its_records()
 {
    let (fixture, mut phone) = capped(SyncCaps {
        max_new_encounters_per_day: 5,
        ..SyncCaps::default()
    });
    for _ in 0..4 {
        phone.log(EXAMPLE_ENCOUNTER);
    }
    assert_eq!(phone.sync().unwrap().uploaded, 4);
    for _ in 0..3 {
        phone.log(EXAMPLE_ENCOUNTER);
    }
    let before = stored_snapshot(fixture.data.path());
    let (status, retry_after, body) = post_sync_reading_headers(
        &fixture.server.url,
        &phone.enrolled.token,
        &protocol::encode(&phone.store.sync_request().unwrap()),
    );
    assert_eq!(status, 429, "{body}");
    let retry_after: u64 = retry_after.expect("a Retry-After header").parse().unwrap();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 5 a day"),
        "{body}"
    );
    assert!(
        body["hint"]
            .as_str()
            .unwrap()
            .contains("--max-new-encounters-per-day"),
        "{body}"
    );
    // The app stops at once (it does not wait for the next day) and keeps every record.
    let err = phone.sync().unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { status: 429, message } if message.contains("nothing on this device was lost")),
        "{err}"
    );
    assert_eq!(phone.store.pending_count().unwrap(), 3);
    assert_eq!(phone.ids().len(), 7);
    assert_eq!(stored_snapshot(fixture.data.path()), before);
}
