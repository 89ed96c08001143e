//! The walking skeleton end to end: phones of two teams log and edit encounters with no server
//! reachable, including concurrent edits of one encounter, then sync in different orders.
//! Every device of a team converges to identical documents, the other team sees none of them,
//! the coordinator reads everything over HTTP, and the server's merged state equals what devices hold.

use std::collections::BTreeSet;

use auxilio_core::EncounterId;
use auxilio_server::client::{self, ClientError};
use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, TestServer, add_team, app_retries_or_quick, enroll, get_json,
};

struct Field {
    dir: tempfile::TempDir,
    sonora_1: Device,
    sonora_2: Device,
    chihuahua: Device,
    coordinator: Device,
    coordinator_token: String,
}

fn enrolled_field(server: &TestServer) -> Field {
    let dir = tempfile::tempdir().unwrap();
    add_team(&server.data_dir, "sonora");
    add_team(&server.data_dir, "chihuahua");
    let device = |name: &str, team: &str, role: Role| {
        let enrolled = enroll(&server.data_dir, team, role);
        Device::new(dir.path(), name, &server.url, &enrolled)
    };
    let sonora_1 = device("sonora-1", "sonora", Role::Field);
    let sonora_2 = device("sonora-2", "sonora", Role::Field);
    let chihuahua = device("chihuahua-1", "chihuahua", Role::Field);
    let coordinator = device("coordinator", "chihuahua", Role::Coordinator);
    let coordinator_token = coordinator.enrolled.token.clone();
    Field {
        dir,
        sonora_1,
        sonora_2,
        chihuahua,
        coordinator,
        coordinator_token,
    }
}

fn ids(device: &Device) -> BTreeSet<EncounterId> {
    device.ids().into_iter().collect()
}

/// Runs the whole scenario, syncing the devices in `order` (indexes into
/// [sonora_1, sonora_2, chihuahua]) after the offline period.
fn scenario(order: [usize; 3]) {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let mut field = enrolled_field(&server);

    // At base, with signal: one shared encounter reaches both Sonora phones.
    let shared = field.sonora_1.log(EXAMPLE_ENCOUNTER);
    field.sonora_1.sync().unwrap();
    field.sonora_2.sync().unwrap();
    assert_eq!(ids(&field.sonora_2), BTreeSet::from([shared]));

    // Out of signal: the server is gone. The full run lets the sync give up as the app's does
    // (ten attempts, waiting up to 8 s between them: about 40 s); the short run gives up after
    // two quick attempts, with the same answer.
    server.stop();
    let options = app_retries_or_quick("offline_devices_converge: the sync with no server", 2);
    let err = client::sync_with(&mut field.sonora_1.store, options, |_| {}).unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");

    field.sonora_1.edit(
        shared,
        &[
            "counts.m.18-59=3",
            "services+=transfer_hospital",
            "notes=two men dehydrated",
        ],
    );
    field.sonora_1.edit(shared, &[r#"casualties.a1={"sex":"m","age_band":"18-59","triage":{"method":"start","category":"yellow"},"conditions":["dehydration"]}"#]);
    field
        .sonora_2
        .edit(shared, &["counts.m.18-59=4", "hazards+=heat"]);
    field.sonora_2.edit(shared, &[r#"casualties.b1={"sex":"f","age_band":"18-59","triage":{"method":"start","category":"red"}}"#]);
    let only_sonora_1 = field
        .sonora_1
        .log(r#"{"services":["orientation"],"terrain":"river","counts":{"f":{"5-11":2}}}"#);
    let only_sonora_2 = field.sonora_2.log(r#"{"services":["humanitarian_aid"],"terrain":"desert","counts":{"m":{"60+":1}},"items":{"water_litres":6}}"#);
    let chihuahua_own = field.chihuahua.log(r#"{"services":["rescue"],"terrain":"railway","hazards":["train"],"counts":{"m":{"12-17":1},"uasc":1}}"#);
    assert_eq!(
        field.sonora_1.store.pending_count().unwrap(),
        3,
        "every offline change is kept until acknowledged"
    );

    // Signal again (the server restarts on the same data, at a new address).
    let server = TestServer::start(data.path());
    for device in [
        &mut field.sonora_1,
        &mut field.sonora_2,
        &mut field.chihuahua,
        &mut field.coordinator,
    ] {
        device.point_at(&server.url);
    }
    let phones = [
        &mut field.sonora_1,
        &mut field.sonora_2,
        &mut field.chihuahua,
    ];
    for round in 0..2 {
        for &index in &order {
            let report = phones[index].sync().unwrap();
            assert!(
                report.rejected.is_empty(),
                "round {round}: {:?}",
                report.rejected
            );
            assert_eq!(report.pending, 0);
        }
    }
    let sonora = BTreeSet::from([shared, only_sonora_1, only_sonora_2]);
    assert_eq!(ids(&field.sonora_1), sonora);
    assert_eq!(ids(&field.sonora_2), sonora);
    assert_eq!(
        ids(&field.chihuahua),
        BTreeSet::from([chihuahua_own]),
        "another team's encounters never reach a field device"
    );
    let everything: BTreeSet<_> = sonora.iter().copied().chain([chihuahua_own]).collect();

    for &id in &sonora {
        let one = field.sonora_1.view(id);
        let two = field.sonora_2.view(id);
        assert_eq!(
            one.heads, two.heads,
            "identical documents on both Sonora phones"
        );
        assert_eq!(one.encounter, two.encounter);
        assert_eq!(one.conflicts, two.conflicts);
    }

    // Both casualties survive; both services and the hazard survive; the two counts are a
    // visible conflict, not a silent loss.
    let merged = field.sonora_1.view(shared);
    assert_eq!(merged.encounter.casualties.len(), 2);
    assert!(
        merged.encounter.casualties.contains_key("a1")
            && merged.encounter.casualties.contains_key("b1")
    );
    assert_eq!(merged.encounter.services.len(), 3);
    assert_eq!(merged.encounter.hazards.len(), 1);
    assert_eq!(merged.encounter.notes, "two men dehydrated");
    assert_eq!(merged.conflicts.len(), 1);
    assert_eq!(merged.conflicts[0].path, "counts.m.18-59");
    let mut counted: Vec<i64> = merged.conflicts[0]
        .values
        .iter()
        .map(|v| v.value.as_i64().unwrap())
        .collect();
    counted.sort();
    assert_eq!(counted, [3, 4]);

    // The server's merged state is what the devices hold, read by a device of the team.
    for &id in &everything {
        let phone = if sonora.contains(&id) {
            &field.sonora_1
        } else {
            &field.chihuahua
        };
        let (status, detail) = get_json(
            &server.url,
            &format!("/v1/encounters/{id}"),
            Some(&phone.enrolled.token),
        )
        .unwrap();
        assert_eq!(status, 200);
        let device_view = phone.view(id);
        assert_eq!(
            detail["encounter"],
            serde_json::to_value(&device_view.encounter).unwrap(),
            "{id}"
        );
        assert_eq!(
            detail["heads"],
            serde_json::to_value(&device_view.heads).unwrap()
        );
        // The server adds who uploaded each value beside its author; the rest is the same.
        let mut conflicts = detail["conflicts"].clone();
        for conflict in conflicts.as_array_mut().unwrap() {
            for value in conflict["values"].as_array_mut().unwrap() {
                value.as_object_mut().unwrap().remove("uploaded_by");
            }
        }
        assert_eq!(
            conflicts,
            serde_json::to_value(&device_view.conflicts).unwrap()
        );
        assert_eq!(detail["health_detail_withheld"], 0);
    }
    // The coordinator reads every team's merged record (the same heads) without health detail.
    let (status, detail) = get_json(
        &server.url,
        &format!("/v1/encounters/{shared}"),
        Some(&field.coordinator_token),
    )
    .unwrap();
    assert_eq!(status, 200);
    let sonora_view = field.sonora_2.view(shared);
    assert_eq!(
        detail["heads"],
        serde_json::to_value(&sonora_view.heads).unwrap()
    );
    assert_eq!(
        detail["encounter"]["casualties"].as_object().unwrap().len(),
        2
    );
    assert!(
        detail["health_detail_withheld"].as_u64().unwrap() > 0,
        "{detail}"
    );

    // Scope over HTTP: the Chihuahua field phone cannot read a Sonora encounter, nor list it.
    let chihuahua_token = field.chihuahua.enrolled.token.clone();
    let (status, _) = get_json(
        &server.url,
        &format!("/v1/encounters/{shared}"),
        Some(&chihuahua_token),
    )
    .unwrap();
    assert_eq!(status, 404);
    let (status, list) = get_json(&server.url, "/v1/encounters", Some(&chihuahua_token)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(list["count"], 1);
    let (_, list) = get_json(
        &server.url,
        "/v1/encounters",
        Some(&field.coordinator_token),
    )
    .unwrap();
    assert_eq!(list["count"], 4);
    drop(field.dir);
}

#[test]
fn devices_converge_when_synced_in_logging_order() {
    scenario([0, 1, 2]);
}

#[test]
fn devices_converge_when_synced_in_reverse_order() {
    scenario([2, 1, 0]);
}

#[test]
fn devices_converge_when_the_other_team_syncs_between_them() {
    scenario([1, 2, 0]);
}

#[test]
fn coordinator_list_filters_by_team_service_status_and_time() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let field = enrolled_field(&server);
    let Field {
        mut sonora_1,
        mut chihuahua,
        coordinator_token,
        dir: _dir,
        ..
    } = field;
    let river = sonora_1.log(r#"{"services":["rescue"],"terrain":"river","started_at":"2026-11-01T10:00:00-06:00","counts":{"m":{"18-59":1}}}"#);
    let closed = sonora_1.log(r#"{"services":["orientation"],"status":"closed","started_at":"2026-11-20T10:00:00-06:00","counts":{"f":{"18-59":1}}}"#);
    let train = chihuahua.log(r#"{"services":["rescue","first_aid"],"started_at":"2026-11-25T10:00:00-06:00","counts":{"m":{"12-17":1}}}"#);
    let clock_1970 = chihuahua.log(r#"{"services":["orientation"],"started_at":"1970-01-01T00:00:09+00:00","counts":{"f":{"60+":1}}}"#);
    sonora_1.sync().unwrap();
    chihuahua.sync().unwrap();

    let query = |q: &str| -> BTreeSet<String> {
        let (status, body) = get_json(
            &server.url,
            &format!("/v1/encounters{q}"),
            Some(&coordinator_token),
        )
        .unwrap();
        assert_eq!(status, 200, "{q}: {body}");
        body["encounters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let set = |ids: &[EncounterId]| ids.iter().map(ToString::to_string).collect::<BTreeSet<_>>();
    assert_eq!(query("?team=sonora"), set(&[river, closed]));
    assert_eq!(query("?service=rescue"), set(&[river, train]));
    assert_eq!(query("?status=closed"), set(&[closed]));
    assert_eq!(
        query("?from=2026-11-15T00:00:00Z&to=2026-11-26T00:00:00Z"),
        set(&[closed, train])
    );
    assert_eq!(query("?team=chihuahua&service=first_aid"), set(&[train]));
    // Bounds with fractions of a second never leave out an encounter inside them.
    assert_eq!(
        query("?from=2026-11-25T16:00:00Z&to=2026-11-25T16:00:00.5Z"),
        set(&[train])
    );
    let (status, _) = get_json(
        &server.url,
        "/v1/encounters?from=2026-11-26T00:00:00Z&to=2026-11-01T00:00:00Z",
        Some(&coordinator_token),
    )
    .unwrap();
    assert_eq!(status, 400, "from after to");

    // A device clock in 1970 is accepted; the record is dated by the server and flagged.
    let (_, detail) = get_json(
        &server.url,
        &format!("/v1/encounters/{clock_1970}"),
        Some(&coordinator_token),
    )
    .unwrap();
    assert_eq!(detail["clock_suspect"], true);
    assert_eq!(detail["occurred_at"], detail["received_at"]);

    let (status, body) = get_json(
        &server.url,
        "/v1/encounters?from=last-tuesday",
        Some(&coordinator_token),
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("from"), "{body}");
    let (status, _) = get_json(
        &server.url,
        "/v1/encounters?colour=red",
        Some(&coordinator_token),
    )
    .unwrap();
    assert_eq!(status, 400);
}
