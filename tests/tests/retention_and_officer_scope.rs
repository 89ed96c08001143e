//! Attack review (issue 10): retention counts from the server's time, not from a device's clock,
//! and a protection officer reaches only what the role may read. Real server, real SQLite
//! files, real phones' stores and the real `auxilio` binary for the retention run and the
//! officer's vault tools.

use std::path::Path;

use auxilio_core::EncounterId;
use auxilio_core::vault::{self, FamilyContact, SealedVault, VaultContents};
use auxilio_server::ServerConfig;
use auxilio_server::client::{self, ClientError};
use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, TeamFixture, auxilio_ok, enroll, example_encounter_with, get_json,
    post_json, run_auxilio,
};
use chrono::{Duration, SecondsFormat, Utc};

fn days_ago(days: i64) -> String {
    (Utc::now() - Duration::days(days)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn family() -> VaultContents {
    VaultContents {
        names: vec!["Yaretzi Coc Tiul".into()],
        family_contacts: vec![FamilyContact {
            name: "Matilde Tiul".into(),
            relation: Some("mother".into()),
            phone: Some("+502 5555 0142".into()),
            place: Some("Cobán".into()),
        }],
        notes: None,
    }
}

/// A closed case of an unaccompanied girl whose hand-over to DIF the phone says happened at
/// `handed_over_at`.
fn handed_over_case(handed_over_at: &str) -> String {
    format!(
        r#"{{"services":["rescue"],"status":"closed","counts":{{"f":{{"12-17":1}},"uasc":1}},"location":{{"lat":31.3,"lon":-110.9}},"casualties":{{"p1":{{"sex":"f","age_band":"12-17","uasc":{{"dif_unit":"DIF Nogales","handed_over_at":"{handed_over_at}"}}}}}}}}"#
    )
}

fn admin(data: &Path, args: &[&str]) -> String {
    let mut all = vec!["admin", "--data", data.to_str().unwrap()];
    all.extend_from_slice(args);
    auxilio_ok(data, &all, None)
}

fn server_database(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join(auxilio_server::database::DATABASE_FILE)).unwrap()
}

fn stored(data: &Path, id: EncounterId) -> bool {
    server_database(data)
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM encounters WHERE id = ?1)",
            [id.as_bytes()],
            |row| row.get(0),
        )
        .unwrap()
}

fn envelopes_of(data: &Path, id: EncounterId) -> i64 {
    server_database(data)
        .query_row(
            "SELECT count(*) FROM vault_envelopes WHERE encounter = ?1",
            [id.as_bytes()],
            |row| row.get(0),
        )
        .unwrap()
}

/// The ids `GET /v1/encounters?flagged=true` lists, each with the fields its problems name as
/// `clock_suspect`.
fn clock_suspects(url: &str, token: &str) -> Vec<(String, Vec<String>)> {
    let (status, body) = get_json(url, "/v1/encounters?flagged=true", Some(token)).unwrap();
    assert_eq!(status, 200, "{body}");
    body["encounters"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of encounters: {body}"))
        .iter()
        .map(|row| {
            let fields = row["problems"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["message"].as_str().unwrap().contains("clock_suspect"))
                .map(|p| p["field"].as_str().unwrap().to_string())
                .collect();
            (row["id"].as_str().unwrap().to_string(), fields)
        })
        .collect()
}

#[test]
fn retention_counts_from_the_servers_time_so_a_backdated_phone_clock_erases_nothing_and_is_flagged()
{
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let data = fixture.data.path();
    let (_, public) = vault::generate_identity();
    admin(data, &["vault-key", "add", &public, "--label", "officer"]);
    let field = enroll(data, "sonora", Role::Field);
    let mut phone = Device::new(fixture.devices.path(), "a", &fixture.server.url, &field);
    phone.sync().unwrap();

    // A phone whose clock fell back to 2016, and one that says a child was handed over in 2020.
    let backdated_start = phone.log(&example_encounter_with(
        r#""started_at":"2016-03-01T10:00:00Z""#,
    ));
    let backdated_hand_over = phone.log(&handed_over_case("2020-01-01T00:00:00Z"));
    // Positive controls, due by the server's time: an encounter logged 20 days before it reached
    // signal, and a child handed over 5 days ago.
    let old_enough = phone.log(&example_encounter_with(&format!(
        r#""started_at":"{}""#,
        days_ago(20)
    )));
    let handed_over = phone.log(&handed_over_case(&days_ago(5)));
    for case in [backdated_hand_over, handed_over] {
        phone.store.seal_vault(case, &family()).unwrap();
    }
    let report = phone.sync().unwrap();
    assert_eq!(report.vaults_uploaded, 2, "{report:?}");

    let suspects = clock_suspects(&fixture.server.url, &field.token);
    let fields_of = |id: EncounterId| {
        suspects
            .iter()
            .find(|(listed, _)| *listed == id.to_string())
            .map(|(_, fields)| fields.clone())
    };
    assert_eq!(
        fields_of(backdated_start),
        Some(vec!["started_at".to_string()]),
        "{suspects:?}"
    );
    assert_eq!(
        fields_of(backdated_hand_over),
        Some(vec!["casualties.p1.uasc.handed_over_at".to_string()]),
        "{suspects:?}"
    );
    for plausible in [old_enough, handed_over] {
        assert!(
            fields_of(plausible).is_none_or(|fields| fields.is_empty()),
            "{suspects:?}"
        );
    }

    let out = admin(
        data,
        &[
            "retention",
            "run",
            "--retain-encounter-days",
            "10",
            "--retain-vault-days",
            "2",
        ],
    );
    // The controls are purged by the same run: the run did act.
    assert!(!stored(data, old_enough), "{out}");
    assert_eq!(envelopes_of(data, handed_over), 0, "{out}");
    // The backdated ones are kept, and still flagged for a person to look at.
    assert!(stored(data, backdated_start), "{out}");
    assert_eq!(envelopes_of(data, backdated_hand_over), 1, "{out}");
    let suspects = clock_suspects(&fixture.server.url, &field.token);
    for kept in [backdated_start, backdated_hand_over] {
        assert!(
            suspects.iter().any(|(id, _)| *id == kept.to_string()),
            "{suspects:?}"
        );
    }
}

/// `POST /v1/encounters/{id}/purge` as `token`; the answer's status and body with the id
/// written as `ID`, so two answers about two ids compare.
fn purge_answer(url: &str, token: &str, id: EncounterId) -> (u16, String) {
    let (status, body) = post_json(
        url,
        &format!("/v1/encounters/{id}/purge"),
        Some(token),
        &serde_json::json!({"reason": "consent withdrawn"}),
    );
    (status, body.to_string().replace(&id.to_string(), "ID"))
}

#[test]
fn an_officer_purging_an_encounter_it_may_not_read_is_answered_as_for_an_unknown_id_and_nothing_is_erased()
 {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let data = fixture.data.path();
    let url = &fixture.server.url;
    let mut phone = fixture.device("a", Role::Field);
    let not_a_case = phone.log(EXAMPLE_ENCOUNTER);
    let case = phone.log(&handed_over_case(&days_ago(1)));
    phone.sync().unwrap();
    let officer = enroll(data, "sonora", Role::ProtectionOfficer).token;

    let unknown_id = EncounterId::random();
    let unknown = purge_answer(url, &officer, unknown_id);
    assert_eq!(unknown.0, 404, "{}", unknown.1);
    assert_eq!(purge_answer(url, &officer, not_a_case), unknown);
    assert!(stored(data, not_a_case), "the record it may not read stays");
    // Nor does its vault endpoint tell the id exists.
    let vault_answer = |id: EncounterId| {
        let (status, body) =
            get_json(url, &format!("/v1/encounters/{id}/vault"), Some(&officer)).unwrap();
        (status, body.to_string().replace(&id.to_string(), "ID"))
    };
    assert_eq!(vault_answer(unknown_id).0, 404);
    assert_eq!(vault_answer(not_a_case), vault_answer(unknown_id));
    assert_eq!(vault_answer(case).0, 200, "positive control");
    // Positive control: the officer's own kind of case is purged by the same request.
    let (status, body) = purge_answer(url, &officer, case);
    assert_eq!(status, 200, "{body}");
    assert!(!stored(data, case));
    assert!(stored(data, not_a_case));
}

/// A protection officer's key pair, its secret written to an identity file in `dir` for the
/// `auxilio vault` commands: (file, secret, public key).
fn officer_key(dir: &Path, name: &str) -> (std::path::PathBuf, String, String) {
    let (secret, public) = vault::generate_identity();
    let file = dir.join(name);
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    (file, secret, public)
}

/// `auxilio vault open` as an officer: exit success, stdout, stderr.
fn vault_open(
    dir: &Path,
    url: &str,
    token: &str,
    identity: &Path,
    id: EncounterId,
) -> (bool, String, String) {
    let output = run_auxilio(
        dir,
        &[
            "vault",
            "open",
            &id.to_string(),
            "--server",
            url,
            "--token",
            token,
            "--identity",
            identity.to_str().unwrap(),
        ],
        None,
    );
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const SWAPPED_PHONE: &str = "+52 662 555 0000";

/// What officer B would put in the child's vault instead: another "family" contact.
fn swapped() -> VaultContents {
    let mut contents = family();
    contents.family_contacts[0].name = "Tío Beto".into();
    contents.family_contacts[0].phone = Some(SWAPPED_PHONE.into());
    contents
}

#[test]
fn an_officer_cannot_swap_the_contents_of_a_childs_vault_by_resealing_it() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let data = fixture.data.path();
    let url = &fixture.server.url;
    let keys = tempfile::tempdir().unwrap();
    let (a_file, _, a_public) = officer_key(keys.path(), "a.key");
    let (_, b_secret, b_public) = officer_key(keys.path(), "b.key");
    for key in [&a_public, &b_public] {
        admin(data, &["vault-key", "add", key, "--label", "officer"]);
    }
    let officer_a = enroll(data, "sonora", Role::ProtectionOfficer).token;
    let officer_b = enroll(data, "sonora", Role::ProtectionOfficer).token;
    let mut phone = fixture.device("a", Role::Field);
    phone.sync().unwrap();
    let case = phone.log(&handed_over_case(&days_ago(1)));
    phone.store.seal_vault(case, &family()).unwrap();
    assert_eq!(phone.sync().unwrap().vaults_uploaded, 1);
    let stored = client::fetch_vault(url, &officer_b, case)
        .unwrap()
        .envelopes[0]
        .sealed
        .clone();
    let recipients = [a_public.clone(), b_public.clone()];

    // Positive control: B's honest reseal (key rotation) is taken.
    let honest = vault::reseal(&stored, &b_secret, &recipients).unwrap();
    client::put_resealed(url, &officer_b, &honest).unwrap();

    // B seals other contents under the same envelope id: refused, nothing replaced.
    let forged = SealedVault {
        id: stored.id.clone(),
        sealed_at: stored.sealed_at.clone(),
        ..vault::seal(&swapped(), case, &recipients).unwrap()
    };
    let refused = client::put_resealed(url, &officer_b, &forged).unwrap_err();
    assert!(
        matches!(&refused, ClientError::Server { status: 409, .. }),
        "{refused}"
    );
    let (opened, stdout, stderr) = vault_open(keys.path(), url, &officer_a, &a_file, case);
    assert!(opened, "{stderr}");
    assert!(
        stdout.contains("+502 5555 0142") && !stdout.contains(SWAPPED_PHONE),
        "{stdout}"
    );

    // B claims the kept digest for the other contents: the server cannot read them and takes
    // the envelope, but officer A's `vault open` refuses them, loudly, and shows nothing false.
    let under_kept_digest = SealedVault {
        digest: stored.digest.clone(),
        ..forged
    };
    client::put_resealed(url, &officer_b, &under_kept_digest).unwrap();
    let (opened, stdout, stderr) = vault_open(keys.path(), url, &officer_a, &a_file, case);
    assert!(!opened, "{stdout}");
    assert!(!stdout.contains(SWAPPED_PHONE), "{stdout}");
    assert!(
        stderr.contains("WARNING") && stderr.contains("do not match what the phone sealed"),
        "{stderr}"
    );
}
