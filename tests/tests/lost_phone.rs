//! A lost or stolen phone (issue 5): revocation takes effect on the very next request, the
//! phone's next contact erases its store, it cannot enrol itself again, and tokens can be
//! rotated without losing anything.

use auxilio_core::DeviceStore;
use auxilio_server::client::{self, ClientError};
use auxilio_server::directory::Role;
use auxilio_tests::{
    EXAMPLE_ENCOUNTER, TeamFixture, example_encounter_with, files_containing, files_in, get_json,
    post_json, run_auxilio,
};

const KNOWN_TO_THE_SERVER: &str = "Marker-synced-4471";
const NEVER_SYNCED: &str = "Marker-unsynced-8832";

fn run_admin(fixture: &TeamFixture, args: &[&str]) -> std::process::Output {
    fixture.admin(args)
}

#[test]
fn a_revoked_phone_is_refused_at_once_and_wipes_its_store_on_next_contact() {
    let fixture = TeamFixture::start("sonora", Default::default());
    let mut phone = fixture.device("phone", Role::Field);
    // Scalar fields, stored compressed in the store's documents: `files_containing` inflates
    // every DEFLATE stream of a file to find them.
    let synced = phone.log(&example_encounter_with(&format!(
        r#""agent":"{KNOWN_TO_THE_SERVER}""#
    )));
    phone.sync().unwrap();
    let unsynced = phone.log(&example_encounter_with(&format!(
        r#""agent":"{NEVER_SYNCED}""#
    )));
    phone.edit(unsynced, &["adm2=26030"]);
    let store_dir = fixture.devices.path();
    // The check below can fail: before the wipe both texts are in the phone's files.
    let before = files_in(store_dir);
    assert!(!files_containing(&before, KNOWN_TO_THE_SERVER).is_empty());
    assert!(!files_containing(&before, NEVER_SYNCED).is_empty());

    let revoked = run_admin(
        &fixture,
        &["device", "revoke", &phone.enrolled.device_id.to_string()],
    );
    assert!(revoked.status.success(), "{revoked:?}");

    // The very next request is refused, and the refusal says to wipe.
    let token = phone.enrolled.token.clone();
    let (status, body) = get_json(&fixture.server.url, "/v1/whoami", Some(&token)).unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["wipe"], true, "{body}");

    // The phone's next sync: refused, and the store erased.
    match phone.sync() {
        Err(ClientError::RevokedAndWiped { wiped }) => {
            assert_eq!(wiped.encounters, 2);
            assert!(wiped.unsynced_changes >= 2, "{wiped:?}");
        }
        other => panic!("expected the store to be wiped, got {other:?}"),
    }
    assert!(phone.ids().is_empty());
    assert!(
        phone.store.enrolment().unwrap().is_none(),
        "the token is gone too"
    );
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    let after = files_in(store_dir);
    for marker in [KNOWN_TO_THE_SERVER, NEVER_SYNCED] {
        assert_eq!(
            files_containing(&after, marker),
            Vec::<std::path::PathBuf>::new(),
            "{marker} must be gone from the phone's files"
        );
    }
    // Reopened (the app restarted), the store is an empty, unenrolled one.
    drop(phone);
    let reopened = DeviceStore::open(store_dir.join("phone.db")).unwrap();
    assert!(reopened.enrolment().unwrap().is_none());
    assert!(reopened.encounter_ids().unwrap().is_empty());

    // What the phone had synced stays on the server; the contact is in the audit log.
    let audit = run_admin(&fixture, &["audit", "export"]);
    let audit = String::from_utf8(audit.stdout).unwrap();
    assert!(audit.contains("\"device.revoke\""), "{audit}");
    assert!(audit.contains("\"device.revoked_contact\""), "{audit}");
    let coordinator = fixture.device("coordinator", Role::Coordinator);
    let (status, _) = get_json(
        &fixture.server.url,
        &format!("/v1/encounters/{synced}"),
        Some(&coordinator.enrolled.token),
    )
    .unwrap();
    assert_eq!(status, 200);
}

#[test]
fn a_revoked_device_cannot_enrol_itself_again_nor_claim_another_device_id() {
    let fixture = TeamFixture::start("sonora", Default::default());
    let phone = fixture.device("phone", Role::Field);
    let teammate = fixture.device("teammate", Role::Field);
    let administrator = fixture.device("admin", Role::Administrator);
    let revoked = run_admin(
        &fixture,
        &["device", "revoke", &phone.enrolled.device_id.to_string()],
    );
    assert!(revoked.status.success());
    let url = &fixture.server.url;
    let token = phone.enrolled.token.as_str();
    let enrol_body = serde_json::json!({"team": "sonora", "role": "field"});
    assert_eq!(
        post_json(url, "/v1/admin/devices", Some(token), &enrol_body).0,
        401
    );
    assert_eq!(
        post_json(url, "/v1/token/rotate", Some(token), &serde_json::json!({})).0,
        401
    );
    // Even an active field device may not enrol one.
    assert_eq!(
        post_json(
            url,
            "/v1/admin/devices",
            Some(&teammate.enrolled.token),
            &enrol_body
        )
        .0,
        403
    );
    // A token is the device id and its secret: one device's secret under another's id fails,
    // so a device id cannot be claimed by whoever knows it.
    let secret_of = |token: &str| token.rsplit_once('_').unwrap().1.to_string();
    let claimed = format!(
        "auxilio_{}_{}",
        teammate.enrolled.device_id,
        secret_of(token)
    );
    let (status, body) = get_json(url, "/v1/whoami", Some(&claimed)).unwrap();
    assert_eq!(status, 401);
    assert!(
        body.get("wipe").is_none(),
        "only the real device is told to wipe: {body}"
    );
    let claimed = format!(
        "auxilio_{}_{}",
        phone.enrolled.device_id,
        secret_of(&teammate.enrolled.token)
    );
    assert_eq!(get_json(url, "/v1/whoami", Some(&claimed)).unwrap().0, 401);
    // Revoking twice is a clear conflict, over HTTP too.
    let (status, body) = post_json(
        url,
        &format!("/v1/admin/devices/{}/revoke", phone.enrolled.device_id),
        Some(&administrator.enrolled.token),
        &serde_json::json!({}),
    );
    assert_eq!(status, 409, "{body}");
}

#[test]
fn a_device_rotating_its_own_token_keeps_everything_and_the_old_token_stops_working() {
    let fixture = TeamFixture::start("sonora", Default::default());
    let mut phone = fixture.device("phone", Role::Field);
    let id = phone.log(EXAMPLE_ENCOUNTER);
    let old_token = phone.enrolled.token.clone();
    let who = client::rotate_token(&mut phone.store).unwrap();
    assert_eq!(who.device_id, phone.enrolled.device_id);
    let new_token = phone.store.enrolment().unwrap().unwrap().token;
    assert_ne!(new_token, old_token);
    let url = &fixture.server.url;
    let (status, body) = get_json(url, "/v1/whoami", Some(&old_token)).unwrap();
    assert_eq!(status, 401);
    assert!(
        body.get("wipe").is_none(),
        "a rotated token is not a revoked device: {body}"
    );
    // Nothing was lost: the pending encounter syncs with the new token.
    let report = phone.sync().unwrap();
    assert!(report.uploaded > 0);
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    assert!(phone.ids().contains(&id));
}

#[test]
fn an_administrator_rotation_retires_a_leaked_token_and_the_device_keeps_its_store() {
    let fixture = TeamFixture::start("sonora", Default::default());
    let mut phone = fixture.device("phone", Role::Field);
    let id = phone.log(EXAMPLE_ENCOUNTER);
    let device_id = phone.enrolled.device_id.to_string();
    let rotated = run_admin(&fixture, &["--json", "device", "rotate", &device_id]);
    assert!(rotated.status.success(), "{rotated:?}");
    let answer: serde_json::Value = serde_json::from_slice(&rotated.stdout).unwrap();
    let new_token = answer["token"].as_str().unwrap().to_string();
    // The leaked token fails at once (without a wipe order: the phone is not lost).
    match phone.sync() {
        Err(ClientError::Unauthorized { status: 401, .. }) => {}
        other => panic!("the old token must be refused, got {other:?}"),
    }
    assert!(phone.store.pending_count().unwrap() > 0);
    // The new token goes on the same store: nothing unsynced is lost.
    let store_path = fixture.devices.path().join("phone.db");
    drop(phone);
    let init = run_auxilio(
        fixture.devices.path(),
        &[
            "device",
            "--store",
            store_path.to_str().unwrap(),
            "init",
            "--server",
            &fixture.server.url,
            "--token",
            &new_token,
        ],
        None,
    );
    assert!(init.status.success(), "{init:?}");
    let mut store = DeviceStore::open(&store_path).unwrap();
    let report = client::sync(&mut store, |_| {}).unwrap();
    assert!(report.uploaded > 0);
    assert!(store.encounter_ids().unwrap().contains(&id));
}
