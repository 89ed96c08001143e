//! The sealed identity vault (issue 5): names and family contacts of UASC and missing-person
//! cases are sealed on the phone to the protection officers' keys, the server stores and syncs
//! ciphertext it cannot read, only protection officers fetch it, and keys can be rotated. Real
//! server, real SQLite files, real `auxilio` commands for the keys and the officer's tools.

use std::path::Path;

use auxilio_core::EncounterId;
use auxilio_core::protocol::{self, SyncRequest};
use auxilio_core::store::StoreError;
use auxilio_core::vault::{self, FamilyContact, SealedVault, VaultContents, VaultError};
use auxilio_server::directory::{Enrolled, Role};
use auxilio_server::{Database, ServerConfig};
use auxilio_tests::{
    Device, TeamFixture, add_team, auxilio_ok, empty_sync_request, enroll, files_containing,
    files_in, get_json, run_auxilio, sync_answer,
};
use serde_bytes::ByteBuf;

const NAME: &str = "Zenaida Quispe-Huarachi";
const FAMILY_PHONE: &str = "+51 984 555 0199";
/// Text of the encounter's own (not sealed) notes, which the server stores readable.
const UNSEALED_NOTE: &str = "found by the canal marker 4471";
/// The agent who logged the case: a scalar field of the record, not sealed, which the search
/// of the files must find (the positive control of every check that a name is absent).
const UNSEALED_AGENT: &str = "agent-canal-4471";

fn contents() -> VaultContents {
    VaultContents {
        names: vec![NAME.into(), "Zena".into()],
        family_contacts: vec![FamilyContact {
            name: "Rosa Huarachi Mamani".into(),
            relation: Some("mother".into()),
            phone: Some(FAMILY_PHONE.into()),
            place: Some("Cusco".into()),
        }],
        notes: Some("travelling with an older cousin".into()),
    }
}

/// An unaccompanied girl of 15 near Sonoyta.
fn uasc_encounter() -> String {
    format!(
        r#"{{"agent":"{UNSEALED_AGENT}","services":["rescue"],"counts":{{"f":{{"12-17":1}},"uasc":1}},"location":{{"lat":31.86,"lon":-112.85}},"notes":"{UNSEALED_NOTE}"}}"#
    )
}

/// Two men, no child, nobody missing: not a protection case.
const ADULTS: &str = r#"{"services":["first_aid"],"counts":{"m":{"18-59":2}},"location":{"lat":31.87,"lon":-112.86}}"#;

/// Makes a protection officer's identity with `auxilio vault keygen`; returns (file, public key).
fn keygen(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let file = dir.join(name);
    let out = auxilio_ok(
        dir,
        &["vault", "keygen", "--out", file.to_str().unwrap(), "--json"],
        None,
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    (file, json["public_key"].as_str().unwrap().to_string())
}

fn admin(data: &Path, args: &[&str]) -> String {
    let mut all = vec!["admin", "--data", data.to_str().unwrap()];
    all.extend_from_slice(args);
    auxilio_ok(data, &all, None)
}

/// The envelopes the server hands a protection officer for `encounter`.
fn fetch(base: &str, token: &str, encounter: EncounterId) -> Vec<SealedVault> {
    let (status, body) = get_json(
        base,
        &format!("/v1/encounters/{encounter}/vault"),
        Some(token),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["envelopes"].clone()).unwrap()
}

fn audit_actions(data: &Path, action: &str) -> i64 {
    Database::open(data)
        .unwrap()
        .read(|conn| {
            conn.query_row(
                "SELECT count(*) FROM audit_log WHERE action = ?1",
                [action],
                |row| row.get(0),
            )
        })
        .unwrap()
}

/// A server with one protection officer's key enrolled (made with `auxilio vault keygen` and
/// added with `auxilio admin vault-key add`), and a field phone that synced once, logged a UASC
/// case, sealed its vault and uploaded it.
struct SealedCase {
    fixture: TeamFixture,
    officer_dir: tempfile::TempDir,
    identity_file: std::path::PathBuf,
    public: String,
    officer: Enrolled,
    phone: Device,
    id: EncounterId,
}

fn sealed_case() -> SealedCase {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let data = fixture.data.path();
    let officer_dir = tempfile::tempdir().unwrap();
    let (identity_file, public) = keygen(officer_dir.path(), "officer.key");
    admin(data, &["vault-key", "add", &public, "--label", "officer"]);
    let officer = enroll(data, "sonora", Role::ProtectionOfficer);
    let mut phone = fixture.device("sonora-1", Role::Field);
    phone.sync().unwrap();
    assert_eq!(phone.store.vault_recipients().unwrap(), [public.as_str()]);
    let id = phone.log(&uasc_encounter());
    let sealed = phone.store.seal_vault(id, &contents()).unwrap();
    assert_eq!(sealed.recipients, [public.as_str()]);
    let store_files = files_in(fixture.devices.path());
    assert!(!files_containing(&store_files, UNSEALED_AGENT).is_empty());
    assert_eq!(
        files_containing(&store_files, "Zenaida"),
        Vec::<std::path::PathBuf>::new(),
        "the name is in the phone's files before sync"
    );
    let report = phone.sync().unwrap();
    assert_eq!(report.vaults_uploaded, 1, "{report:?}");
    assert!(phone.store.vault_outbox().unwrap().is_empty());
    SealedCase {
        fixture,
        officer_dir,
        identity_file,
        public,
        officer,
        phone,
        id,
    }
}

#[test]
fn a_sealed_name_never_reaches_the_servers_disk_in_plaintext() {
    let SealedCase {
        fixture,
        officer_dir,
        identity_file,
        officer,
        id,
        ..
    } = sealed_case();
    let data = fixture.data.path();

    // The search works: the record's own agent and notes, which are not sealed, are found in
    // the server's files and the phone's (raw bytes and every DEFLATE stream); the sealed name
    // and family contact in none.
    for files in [files_in(data), files_in(fixture.devices.path())] {
        for unsealed in [UNSEALED_AGENT, UNSEALED_NOTE] {
            assert!(
                !files_containing(&files, unsealed).is_empty(),
                "{unsealed:?} should be readable in the files"
            );
        }
        for secret in [NAME, "Zenaida", FAMILY_PHONE, "Rosa Huarachi"] {
            assert_eq!(
                files_containing(&files, secret),
                Vec::<std::path::PathBuf>::new(),
                "{secret:?} found"
            );
        }
    }

    // The protection officer fetches the envelope over HTTP and opens it with their identity.
    let envelopes = fetch(&fixture.server.url, &officer.token, id);
    assert_eq!(envelopes.len(), 1);
    let identity = std::fs::read_to_string(&identity_file).unwrap();
    assert_eq!(vault::open(&envelopes[0], &identity).unwrap(), contents());
    assert_eq!(audit_actions(data, "vault.read"), 1);

    // And with the command-line tool.
    let vault_open = |identity: &Path| {
        let id = id.to_string();
        let args = [
            "vault",
            "open",
            id.as_str(),
            "--server",
            fixture.server.url.as_str(),
            "--token",
            officer.token.as_str(),
            "--identity",
            identity.to_str().unwrap(),
        ];
        run_auxilio(officer_dir.path(), &args, None)
    };
    let output = vault_open(&identity_file);
    assert!(output.status.success());
    let opened: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(opened["vaults"][0]["contents"]["names"][0], NAME);
    assert_eq!(
        opened["vaults"][0]["contents"]["family_contacts"][0]["phone"],
        FAMILY_PHONE
    );

    // Another officer's key does not open it, and says so.
    let (other_identity, _) = keygen(officer_dir.path(), "other.key");
    let output = vault_open(&other_identity);
    assert!(!output.status.success());
    let refusal = String::from_utf8_lossy(&output.stderr);
    assert!(refusal.contains("not among the recipients"), "{refusal}");
}

/// A sync request from `device` that uploads only `vaults`; the server's answer.
fn upload_vaults(base: &str, device: &Device, vaults: Vec<SealedVault>) -> protocol::SyncResponse {
    let request = SyncRequest {
        vaults,
        ..empty_sync_request()
    };
    sync_answer(base, device, &request)
}

#[test]
fn a_vault_is_kept_only_for_protection_cases_read_only_by_protection_officers_and_the_map_still_counts_the_case()
 {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let data = fixture.data.path();
    let base = &fixture.server.url;
    let (secret, public) = vault::generate_identity();
    Database::open(data)
        .unwrap()
        .write(|conn| auxilio_server::vault::add_key(conn, &public, "officer"))
        .unwrap();
    add_team(data, "chihuahua");
    let mut phone = fixture.device("sonora-1", Role::Field);
    let mut neighbour = Device::new(
        fixture.devices.path(),
        "chihuahua-1",
        base,
        &enroll(data, "chihuahua", Role::Field),
    );

    // Before any sync the phone knows no key, and says what to do.
    let child = phone.log(&uasc_encounter());
    let err = phone.store.seal_vault(child, &contents()).unwrap_err();
    assert!(err.to_string().contains("sync once"), "{err}");
    phone.sync().unwrap();

    let adults = phone.log(ADULTS);
    assert!(matches!(
        phone.store.seal_vault(adults, &contents()),
        Err(StoreError::NotAVaultCase(_))
    ));
    let missing_found = phone.log(r#"{"services":["located_missing"],"counts":{"m":{"18-59":1}}}"#);
    phone.store.seal_vault(child, &contents()).unwrap();
    // Sealed with the device command, reading the contents from standard input.
    let store_file = fixture.devices.path().join("sonora-1.db");
    let store_arg = store_file.to_str().unwrap();
    let missing_arg = missing_found.to_string();
    let seal_args = [
        "device",
        "--store",
        store_arg,
        "vault",
        &missing_arg,
        "--file",
        "-",
    ];
    let said = auxilio_ok(
        fixture.devices.path(),
        &seal_args,
        Some(&serde_json::to_string(&contents()).unwrap()),
    );
    assert!(said.contains("next `auxilio device sync`"), "{said}");
    let refused = run_auxilio(
        fixture.devices.path(),
        &seal_args,
        Some(r#"{"names":["Ana"],"passport":"X123"}"#),
    );
    assert!(!refused.status.success());
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(refusal.contains("passport"), "{refusal}");
    assert_eq!(phone.sync().unwrap().vaults_uploaded, 2);

    // The server refuses crafted envelopes: a case that is not one, another team's encounter,
    // an encounter it does not know, an oversize envelope.
    let theirs = neighbour.log(&uasc_encounter());
    neighbour.sync().unwrap();
    let recipients = std::slice::from_ref(&public);
    let mut oversize = vault::seal(&contents(), child, recipients).unwrap();
    oversize.ciphertext = ByteBuf::from(vec![7; vault::MAX_CIPHERTEXT_BYTES + 1]);
    let unknown = EncounterId::random();
    let crafted = vec![
        vault::seal(&contents(), adults, recipients).unwrap(),
        vault::seal(&contents(), theirs, recipients).unwrap(),
        vault::seal(&contents(), unknown, recipients).unwrap(),
        oversize,
    ];
    let response = upload_vaults(base, &phone, crafted.clone());
    assert!(response.vaults_accepted.is_empty());
    let reasons: Vec<&str> = response
        .vaults_rejected
        .iter()
        .map(|r| r.reason.as_str())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].contains("not a UASC or missing-person case"));
    // Another team's encounter is answered exactly like an unknown one: an upload must not
    // tell a device which ids exist in other teams.
    assert!(reasons[2].contains("no encounter"), "{reasons:?}");
    assert_eq!(
        reasons[1].replace(&theirs.to_string(), "ID"),
        reasons[2].replace(&unknown.to_string(), "ID"),
        "another team's encounter is told apart from an unknown one"
    );
    assert!(reasons[3].contains("larger than"));
    for (rejection, sent) in response.vaults_rejected.iter().zip(&crafted) {
        assert_eq!(rejection.id, sent.id);
    }
    assert_eq!(response.vault_recipients, [public.as_str()]);

    // Only a protection officer reads vaults; every other role is refused.
    let officer = enroll(data, "sonora", Role::ProtectionOfficer);
    assert_eq!(fetch(base, &officer.token, child).len(), 1);
    for role in [
        Role::Field,
        Role::TeamLead,
        Role::Coordinator,
        Role::Administrator,
        Role::Auditor,
    ] {
        let token = enroll(data, "sonora", role).token;
        for path in [format!("/v1/encounters/{child}/vault"), "/v1/vaults".into()] {
            let (status, body) = get_json(base, &path, Some(&token)).unwrap();
            assert_eq!(status, 403, "{role} on {path}: {body}");
        }
    }
    let (status, listing) = get_json(base, "/v1/vaults", Some(&officer.token)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(listing["envelopes"].as_array().unwrap().len(), 2);
    let opened = vault::open(&fetch(base, &officer.token, missing_found)[0], &secret).unwrap();
    assert_eq!(opened, contents());

    // The map still counts the sealed case: the rest of the record is not sealed.
    let coordinator = enroll(data, "sonora", Role::Coordinator);
    let (status, map) = get_json(
        base,
        "/v1/map?bbox=-114,30,-110,33&zoom=5",
        Some(&coordinator.token),
    )
    .unwrap();
    assert_eq!(status, 200, "{map}");
    assert_eq!(
        map["total"], 3,
        "the two located encounters and the neighbour's: {map}"
    );
}

#[test]
fn keys_rotate_by_retiring_the_old_key_and_resealing_every_vault_to_the_current_ones() {
    let SealedCase {
        fixture,
        officer_dir,
        identity_file: key_a,
        public: public_a,
        officer,
        mut phone,
        id: child,
    } = sealed_case();
    let data = fixture.data.path();
    let base = &fixture.server.url;

    let (key_b, public_b) = keygen(officer_dir.path(), "b.key");
    admin(
        data,
        &["vault-key", "add", &public_b, "--label", "officer B"],
    );
    let server_args = [
        "--server",
        base.as_str(),
        "--token",
        officer.token.as_str(),
        "--identity",
    ];
    // B is added and A retired at once: phones stop sealing to A at their next sync. The
    // vaults already sealed to A are then resealed to the current keys with A's identity.
    let retired = admin(data, &["vault-key", "retire", &public_a, "--json"]);
    assert!(
        retired.contains("\"envelopes_still_sealed_to_it\":1"),
        "{retired}"
    );
    let mut reseal = vec!["vault", "reseal"];
    reseal.extend_from_slice(&server_args);
    reseal.push(key_a.to_str().unwrap());
    let report: serde_json::Value =
        serde_json::from_str(&auxilio_ok(officer_dir.path(), &reseal, None)).unwrap();
    assert_eq!(report["resealed"], 1, "{report}");
    assert_eq!(audit_actions(data, "vault.reseal"), 1);

    let envelopes = fetch(base, &officer.token, child);
    assert_eq!(envelopes[0].recipients, [public_b.as_str()]);
    let identity_b = std::fs::read_to_string(&key_b).unwrap();
    let identity_a = std::fs::read_to_string(&key_a).unwrap();
    assert_eq!(vault::open(&envelopes[0], &identity_b).unwrap(), contents());
    assert!(matches!(
        vault::open(&envelopes[0], &identity_a),
        Err(VaultError::NotARecipient { .. })
    ));

    // A phone that syncs after the rotation seals to B only.
    phone.sync().unwrap();
    assert_eq!(phone.store.vault_recipients().unwrap(), [public_b.as_str()]);
    let missing_found = phone.log(r#"{"services":["located_missing"],"counts":{"f":{"18-59":1}}}"#);
    let sealed = phone.store.seal_vault(missing_found, &contents()).unwrap();
    assert_eq!(sealed.recipients, [public_b]);
    phone.sync().unwrap();
    let fresh = fetch(base, &officer.token, missing_found);
    assert_eq!(vault::open(&fresh[0], &identity_b).unwrap(), contents());

    // Resealing again finds everything on the current keys already.
    let report: serde_json::Value =
        serde_json::from_str(&auxilio_ok(officer_dir.path(), &reseal, None)).unwrap();
    assert_eq!(
        (
            report["resealed"].as_u64(),
            report["already_current"].as_u64()
        ),
        (Some(0), Some(2))
    );
}
