//! Erasure that really erases (issue 5): a purged encounter leaves no trace in the server's data
//! directory nor on the devices that synced since, is refused when a device uploads it again,
//! does not restart devices whose cursor pointed at it, is for protection officers only, and the
//! retention policy purges on its own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use auxilio_core::EncounterId;
use auxilio_core::protocol::{self, RejectReason};
use auxilio_core::vault::VaultContents;
use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, PROTECTION_CASE, ServerProcess, TeamFixture, add_team, auxilio_bin,
    auxilio_ok, enroll, example_encounter_with, files_containing, files_in, get_json, post_json,
    run_auxilio, sync_answer,
};

/// Every file of `dir` whose name starts with `prefix` (a store and its `-wal` and `-shm`), with
/// its bytes.
fn files(dir: &Path, prefix: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files_in(dir)
        .into_iter()
        .filter(|(path, _)| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

fn server_files(fixture: &TeamFixture) -> Vec<(PathBuf, Vec<u8>)> {
    files(fixture.data.path(), "")
}

fn store_files(fixture: &TeamFixture, name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files(fixture.devices.path(), &format!("{name}.db"))
}

/// The number of encounters `/v1/map` and `/v1/stats` count, as a coordinator sees them.
fn map_and_stats_totals(url: &str, coordinator: &str) -> (i64, i64) {
    let (status, map) =
        get_json(url, "/v1/map?bbox=-120,20,-90,35&zoom=5", Some(coordinator)).unwrap();
    assert_eq!(status, 200, "{map}");
    let (status, stats) = get_json(url, "/v1/stats", Some(coordinator)).unwrap();
    assert_eq!(status, 200, "{stats}");
    (
        map["total"].as_i64().unwrap(),
        stats["totals"]["encounters"].as_i64().unwrap(),
    )
}

fn listed_ids(url: &str, token: &str) -> Vec<String> {
    let (status, list) = get_json(url, "/v1/encounters", Some(token)).unwrap();
    assert_eq!(status, 200, "{list}");
    list["encounters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_string())
        .collect()
}

fn purge_over_http(
    url: &str,
    token: Option<&str>,
    id: EncounterId,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    post_json(url, &format!("/v1/encounters/{id}/purge"), token, &body)
}

/// What the server answers to `phone`'s next sync request, sent as is (the store applies
/// nothing of it).
fn answer_to_next_sync(url: &str, phone: &Device) -> protocol::SyncResponse {
    sync_answer(url, phone, &phone.store.sync_request().unwrap())
}

/// Purges `id` over HTTP as a protection officer; the answer must be 200.
fn purge_as_officer(url: &str, officer: &str, id: EncounterId, reason: &str) -> serde_json::Value {
    let (status, body) = purge_over_http(
        url,
        Some(officer),
        id,
        serde_json::json!({"reason": reason}),
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// A team's server, two field phones (stores `a` and `b`), and a protection officer's and a
/// coordinator's tokens.
struct Team {
    fixture: TeamFixture,
    url: String,
    phone_a: Device,
    phone_b: Device,
    officer: String,
    coordinator: String,
}

fn team() -> Team {
    let fixture = TeamFixture::start("sonora", auxilio_server::ServerConfig::default());
    let url = fixture.server.url.clone();
    let phone_a = fixture.device("a", Role::Field);
    let phone_b = fixture.device("b", Role::Field);
    let officer = enroll(fixture.data.path(), "sonora", Role::ProtectionOfficer).token;
    let coordinator = enroll(fixture.data.path(), "sonora", Role::Coordinator).token;
    Team {
        fixture,
        url,
        phone_a,
        phone_b,
        officer,
        coordinator,
    }
}

/// A connection to the database of the data directory `data`, beside the running server.
fn server_database(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join(auxilio_server::database::DATABASE_FILE)).unwrap()
}

fn server_rows_of(fixture: &TeamFixture, id: EncounterId) -> i64 {
    let conn = server_database(fixture.data.path());
    conn.query_row(
        "SELECT (SELECT count(*) FROM changes WHERE encounter = ?1)
              + (SELECT count(*) FROM encounters WHERE id = ?1)
              + (SELECT count(*) FROM encounter_facts WHERE encounter = ?1)
              + (SELECT count(*) FROM encounter_services WHERE encounter = ?1)",
        [id.as_bytes()],
        |row| row.get(0),
    )
    .unwrap()
}

#[test]
fn a_purged_encounter_leaves_no_trace_on_the_server_or_on_synced_devices() {
    let Team {
        fixture,
        url,
        mut phone_a,
        mut phone_b,
        coordinator,
        ..
    } = team();
    let marker = "PURGE-MARKER-Zq7v-consent-withdrawn";

    let kept = phone_a.log(EXAMPLE_ENCOUNTER);
    // A scalar field of the first change: stored compressed in the phones' documents, where
    // `files_containing` finds it by inflating every DEFLATE stream of a file.
    let purged = phone_a.log(&example_encounter_with(&format!(r#""agent":"{marker}""#)));
    phone_a.sync().unwrap();
    phone_b.sync().unwrap();
    assert!(phone_b.ids().contains(&purged));
    assert!(
        !files_containing(&server_files(&fixture), marker).is_empty(),
        "the marker is in the server's files before the purge (the grep can fail)"
    );
    assert!(
        !files_containing(&store_files(&fixture, "b"), marker).is_empty(),
        "the marker is in phone B's store before the purge (the grep can fail)"
    );
    assert_eq!(map_and_stats_totals(&url, &coordinator), (2, 2));

    let data = fixture.data.path().to_str().unwrap().to_string();
    let id = purged.to_string();
    let output = run_auxilio(
        fixture.devices.path(),
        &[
            "admin",
            "purge",
            &id,
            "--reason",
            "consent withdrawn (request 114)",
            "--data",
            &data,
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&id) && stdout.contains("purged"),
        "{stdout}"
    );
    // The write-ahead log held the marker's pages as they were (that is where the grep above
    // found it): the purge checkpointed it into the database file and truncated it.
    let wal = fixture.data.path().join("auxilio.sqlite-wal");
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);

    assert_eq!(
        files_containing(&server_files(&fixture), marker),
        Vec::<PathBuf>::new(),
        "no file of the server's data directory holds the marker"
    );
    assert_eq!(server_rows_of(&fixture, purged), 0);
    assert!(!listed_ids(&url, &coordinator).contains(&id));
    assert!(listed_ids(&url, &coordinator).contains(&kept.to_string()));
    assert_eq!(map_and_stats_totals(&url, &coordinator), (1, 1));
    // Nothing is left to rebuild it from.
    let output = run_auxilio(fixture.devices.path(), &["reindex", "--data", &data], None);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(server_rows_of(&fixture, purged), 0);
    assert_eq!(map_and_stats_totals(&url, &coordinator), (1, 1));

    for (name, phone) in [("a", &mut phone_a), ("b", &mut phone_b)] {
        let report = phone.sync().unwrap();
        assert_eq!(report.dropped, 1, "{name}: {report:?}");
        assert!(report.rejected.is_empty(), "{name}: {report:?}");
        assert_eq!(phone.ids(), vec![kept], "{name}");
        assert_eq!(
            files_containing(&store_files(&fixture, name), marker),
            Vec::<PathBuf>::new(),
            "no file of phone {name}'s store holds the marker"
        );
        // A later sync has nothing more to drop or download.
        let again = phone.sync().unwrap();
        assert_eq!((again.dropped, again.downloaded), (0, 0), "{name}");
    }
}

#[test]
fn a_device_offline_during_the_purge_has_its_pending_edit_refused_and_drops_its_copy() {
    let Team {
        fixture,
        url,
        mut phone_a,
        phone_b: mut offline,
        officer,
        ..
    } = team();
    let id = phone_a.log(PROTECTION_CASE);
    phone_a.sync().unwrap();
    offline.sync().unwrap();
    // Edited in the desert, with no signal, while the purge happens.
    offline.edit(id, &["notes=seen again at the water station"]);
    let purged = purge_as_officer(&url, &officer, id, "recorded by mistake");
    assert_eq!(purged["changes_removed"], 1);

    // The server refuses the edit as purged, and stores nothing of it.
    let response = answer_to_next_sync(&url, &offline);
    assert_eq!(response.rejected.len(), 1);
    assert_eq!(response.rejected[0].reason, RejectReason::Purged);
    assert_eq!(server_rows_of(&fixture, id), 0);

    let report = offline.sync().unwrap();
    assert_eq!(report.dropped, 1, "{report:?}");
    assert!(
        report.rejected.is_empty(),
        "a purge is not a refusal to report: {report:?}"
    );
    assert_eq!(offline.store.pending_count().unwrap(), 0);
    assert!(offline.ids().is_empty());
    let again = offline.sync().unwrap();
    assert_eq!((again.uploaded, again.downloaded, again.dropped), (0, 0, 0));
    assert!(offline.ids().is_empty(), "nothing comes back");
    assert_eq!(server_rows_of(&fixture, id), 0);
}

#[test]
fn a_device_whose_cursor_points_at_a_purged_change_does_not_start_again() {
    let Team {
        fixture: _server,
        url,
        mut phone_a,
        mut phone_b,
        officer,
        ..
    } = team();
    let kept = phone_a.log(EXAMPLE_ENCOUNTER);
    phone_a.sync().unwrap();
    let purged = phone_a.log(PROTECTION_CASE);
    phone_a.sync().unwrap();
    phone_b.sync().unwrap();
    // B's cursor is the log position of the purged encounter's change, the last one stored.
    purge_as_officer(&url, &officer, purged, "duplicate record");

    let response = answer_to_next_sync(&url, &phone_b);
    assert!(
        !response.restarted,
        "the purged position is still recognised"
    );
    assert!(response.changes.is_empty(), "nothing is sent again");
    assert_eq!(response.purges.len(), 1);

    let report = phone_b.sync().unwrap();
    assert_eq!(
        (report.downloaded, report.uploaded, report.dropped),
        (0, 0, 1)
    );
    assert_eq!(phone_b.ids(), vec![kept]);
}

#[test]
fn only_protection_officers_purge_and_the_audit_log_keeps_the_reason() {
    let fixture = TeamFixture::start("sonora", auxilio_server::ServerConfig::default());
    let url = fixture.server.url.clone();
    let mut phone = fixture.device("a", Role::Field);
    let id = phone.log(PROTECTION_CASE);
    phone.sync().unwrap();
    let body = serde_json::json!({"reason": "consent withdrawn"});
    for role in Role::ALL
        .into_iter()
        .filter(|role| *role != Role::ProtectionOfficer)
    {
        let token = enroll(fixture.data.path(), "sonora", role).token;
        let (status, answer) = purge_over_http(&url, Some(&token), id, body.clone());
        assert_eq!(status, 403, "{role}: {answer}");
    }
    assert_eq!(purge_over_http(&url, None, id, body.clone()).0, 401);
    let officer = enroll(fixture.data.path(), "sonora", Role::ProtectionOfficer).token;
    let (status, answer) = purge_over_http(
        &url,
        Some(&officer),
        id,
        serde_json::json!({"reason": "  "}),
    );
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = purge_over_http(
        &url,
        Some(&officer),
        id,
        serde_json::json!({"reason": "x".repeat(8 * 1024)}),
    );
    assert_eq!(status, 413, "a body is bounded: {answer}");
    assert_eq!(
        purge_over_http(&url, Some(&officer), EncounterId::random(), body.clone()).0,
        404
    );
    assert_eq!(server_rows_of(&fixture, id), 5, "nothing was purged yet");

    let answer = purge_as_officer(&url, &officer, id, "consent withdrawn");
    assert_eq!(answer["kind"], "whole");
    let (status, answer) = purge_over_http(&url, Some(&officer), id, body);
    assert_eq!(status, 404, "purged already: {answer}");

    let conn = server_database(fixture.data.path());
    let details: Vec<(String, String)> = conn
        .prepare("SELECT actor, detail FROM audit_log WHERE action = 'encounter.purge'")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(details.len(), 1);
    let detail: serde_json::Value = serde_json::from_str(&details[0].1).unwrap();
    assert_eq!(detail["reason"], "consent withdrawn");
    assert_eq!(detail["encounter"], id.to_string());
    assert_eq!(detail["changes_removed"], 1);
    let tombstone: (String, String) = conn
        .query_row("SELECT team, kind FROM purges", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!(tombstone, ("sonora".to_string(), "whole".to_string()));
}

/// Counts the sealed identity envelopes the server holds for `id`.
fn envelopes_of(fixture: &TeamFixture, id: EncounterId) -> i64 {
    server_database(fixture.data.path())
        .query_row(
            "SELECT count(*) FROM vault_envelopes WHERE encounter = ?1",
            [id.as_bytes()],
            |row| row.get(0),
        )
        .unwrap()
}

#[test]
fn a_vault_purge_erases_the_envelopes_keeps_the_record_and_an_unsent_vault_is_dropped() {
    let Team {
        fixture,
        url,
        mut phone_a,
        mut phone_b,
        officer,
        coordinator,
    } = team();
    let data = fixture.data.path().to_str().unwrap().to_string();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("officer.key");
    let made = auxilio_ok(
        keys.path(),
        &[
            "vault",
            "keygen",
            "--out",
            key_file.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    let public: serde_json::Value = serde_json::from_str(&made).unwrap();
    let public = public["public_key"].as_str().unwrap();
    auxilio_ok(
        keys.path(),
        &[
            "admin",
            "--data",
            &data,
            "vault-key",
            "add",
            public,
            "--label",
            "officer",
        ],
        None,
    );
    phone_a.sync().unwrap();
    phone_b.sync().unwrap();
    let contents = |name: &str| VaultContents {
        names: vec![name.into()],
        family_contacts: vec![],
        notes: None,
    };
    let id = phone_a.log(
        r#"{"services":["rescue"],"counts":{"f":{"12-17":1},"uasc":1},"location":{"lat":31.86,"lon":-112.85}}"#,
    );
    phone_a.store.seal_vault(id, &contents("Ana")).unwrap();
    assert_eq!(phone_a.sync().unwrap().vaults_uploaded, 1);
    phone_b.sync().unwrap();
    // Phone B seals more of the case's identity with no signal, while the vault is purged.
    phone_b
        .store
        .seal_vault(id, &contents("Ana María"))
        .unwrap();
    assert_eq!(envelopes_of(&fixture, id), 1);

    let (status, body) = purge_over_http(
        &url,
        Some(&officer),
        id,
        serde_json::json!({"reason": "child handed over to DIF", "vault_only": true}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "vault_only");
    assert_eq!(body["vault_envelopes_removed"], 1);
    assert_eq!(envelopes_of(&fixture, id), 0);

    let report = phone_b.sync().unwrap();
    assert_eq!(report.vaults_dropped, 1, "{report:?}");
    assert_eq!(report.vaults_pending, 0, "{report:?}");
    assert!(phone_b.store.vault_outbox().unwrap().is_empty());
    assert_eq!(
        envelopes_of(&fixture, id),
        0,
        "the unsent vault is not taken"
    );
    // The record stays, on the phones and on the server.
    assert_eq!(phone_b.sync().unwrap().dropped, 0);
    assert!(phone_b.ids().contains(&id));
    assert!(listed_ids(&url, &coordinator).contains(&id.to_string()));
}

#[test]
fn the_retention_policy_purges_old_encounters_on_its_own() {
    let data = tempfile::tempdir().unwrap();
    let devices = tempfile::tempdir().unwrap();
    add_team(data.path(), "sonora");
    let field = enroll(data.path(), "sonora", Role::Field);
    let coordinator = enroll(data.path(), "sonora", Role::Coordinator).token;
    // Logged 20 days before the phone reached signal: within the offline gap the server trusts
    // a device's clock for (retention counts from the server's time otherwise).
    let twenty_days_ago = (chrono::Utc::now() - chrono::Duration::days(20))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let old_record = example_encounter_with(&format!(r#""started_at":"{twenty_days_ago}""#));
    let (old, recent) = {
        // Retention off while the records arrive.
        let server = ServerProcess::spawn_with(
            &auxilio_bin(),
            data.path(),
            &["--retain-encounter-days", "0", "--retain-vault-days", "0"],
        );
        let mut phone = Device::new(devices.path(), "a", &server.url, &field);
        let old = phone.log(&old_record);
        let recent = phone.log(EXAMPLE_ENCOUNTER);
        phone.sync().unwrap();
        assert_eq!(listed_ids(&server.url, &coordinator).len(), 2);
        server.kill();
        (old, recent)
    };

    let data_arg = data.path().to_str().unwrap();
    let output = run_auxilio(
        devices.path(),
        &[
            "admin",
            "retention",
            "run",
            "--dry-run",
            "--retain-encounter-days",
            "10",
            "--data",
            data_arg,
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("would purge {old}")), "{stdout}");
    assert!(!stdout.contains(&recent.to_string()), "{stdout}");

    let server = ServerProcess::spawn_with(
        &auxilio_bin(),
        data.path(),
        &["--retain-encounter-days", "10", "--retention-every", "1"],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ids = listed_ids(&server.url, &coordinator);
        if !ids.contains(&old.to_string()) {
            assert_eq!(ids, vec![recent.to_string()]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old encounter was not purged in time"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let conn = server_database(data.path());
    let actor: String = conn
        .query_row(
            "SELECT actor FROM audit_log WHERE action = 'encounter.purge'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(actor, "retention");
}
