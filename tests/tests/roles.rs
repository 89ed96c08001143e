//! Each role can do what it needs and nothing more, over HTTP and over sync (issue 5; the table
//! is in `server/src/access.rs`). One test per role, all against one scene: two teams, a UASC
//! case with health detail, a plain encounter, and one of the other team.

use auxilio_server::client::ClientError;
use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, EventStream, TestServer, add_team, enroll, get_json, post_json,
};

/// A child found alone on the river bank, with vitals: the case a protection officer follows.
const UASC_CASE: &str = r#"{"services":["rescue","first_aid"],"location":{"lat":29.1,"lon":-110.9},"terrain":"river","counts":{"m":{"12-17":1},"uasc":1,"injured":1},"casualties":{"c1":{"sex":"m","age_years":14,"age_band":"12-17","triage":{"method":"jumpstart","category":"yellow"},"vitals":[{"at":"2026-11-20T10:00:00-07:00","pulse":128,"temperature_c":39.4}],"conditions":["heat_exhaustion"],"uasc":{"dif_unit":"DIF Hermosillo"}}}}"#;

struct Scene {
    server: TestServer,
    _data: tempfile::TempDir,
    _stores: tempfile::TempDir,
    sonora_field: Device,
    altar_field: Device,
    uasc_case: String,
    plain_sonora: String,
    altar_own: String,
}

impl Scene {
    fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let stores = tempfile::tempdir().unwrap();
        let server = TestServer::start(data.path());
        add_team(data.path(), "sonora");
        add_team(data.path(), "altar");
        add_team(data.path(), "headquarters");
        let device = |name: &str, team: &str, role: Role| {
            Device::new(
                stores.path(),
                name,
                &server.url,
                &enroll(data.path(), team, role),
            )
        };
        let mut sonora_field = device("sonora-field", "sonora", Role::Field);
        let mut altar_field = device("altar-field", "altar", Role::Field);
        let uasc_case = sonora_field.log(UASC_CASE).to_string();
        let plain_sonora = sonora_field.log(EXAMPLE_ENCOUNTER).to_string();
        let altar_own = altar_field.log(EXAMPLE_ENCOUNTER).to_string();
        sonora_field.sync().unwrap();
        altar_field.sync().unwrap();
        Self {
            server,
            _data: data,
            _stores: stores,
            sonora_field,
            altar_field,
            uasc_case,
            plain_sonora,
            altar_own,
        }
    }

    fn token(&self, team: &str, role: Role) -> String {
        enroll(self._data.path(), team, role).token
    }

    fn get(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        get_json(&self.server.url, path, Some(token)).unwrap()
    }

    fn status(&self, path: &str, token: &str) -> u16 {
        self.get(path, token).0
    }

    /// A new device store enrolled with `token`'s device, synced once.
    fn sync_as(&self, team: &str, role: Role) -> Result<Device, ClientError> {
        let enrolled = enroll(self._data.path(), team, role);
        let mut device = Device::new(
            self._stores.path(),
            &format!("{role}-{team}"),
            &self.server.url,
            &enrolled,
        );
        device.sync().map(|_| device)
    }

    /// The total the map answers for everything, as `token`.
    fn map_total(&self, token: &str) -> u64 {
        let (status, body) = self.get("/v1/map?bbox=-120,20,-90,35&zoom=3", token);
        assert_eq!(status, 200, "{body}");
        body["total"].as_u64().unwrap()
    }

    fn listed(&self, token: &str) -> Vec<String> {
        let (status, body) = self.get("/v1/encounters", token);
        assert_eq!(status, 200, "{body}");
        let mut ids: Vec<String> = body["encounters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Every endpoint that serves case data or aggregates of it, each with the status `token`
    /// gets; the event stream included.
    fn case_endpoints(&self, token: &str) -> Vec<(String, u16)> {
        let mut answers: Vec<(String, u16)> = [
            "/v1/encounters".to_string(),
            format!("/v1/encounters/{}", self.plain_sonora),
            "/v1/map?bbox=-120,20,-90,35&zoom=3".into(),
            "/v1/stats".into(),
            "/v1/hotspots".into(),
            "/v1/export?format=csv&purpose=monthly%20report".into(),
        ]
        .into_iter()
        .map(|path| {
            let status = self.status(&path, token);
            (path, status)
        })
        .collect();
        let events = match EventStream::open(&self.server.url, Some(token)) {
            Ok(_) => 200,
            Err((status, _)) => status,
        };
        answers.push(("/v1/events".into(), events));
        answers
    }

    fn admin_and_audit_statuses(&self, token: &str) -> [u16; 3] {
        [
            self.status("/v1/audit", token),
            self.status("/v1/admin/devices", token),
            post_json(
                &self.server.url,
                "/v1/admin/devices",
                Some(token),
                &serde_json::json!({"team": "sonora", "role": "field"}),
            )
            .0,
        ]
    }
}

fn health_of(detail: &serde_json::Value) -> &serde_json::Value {
    &detail["encounter"]["casualties"]["c1"]
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[test]
fn a_field_device_syncs_and_reads_its_own_team_only_with_no_map_export_audit_or_admin() {
    let scene = Scene::start();
    let token = scene.sonora_field.enrolled.token.clone();
    // Sync: its own team's encounters, the other team's never.
    let teammate = scene.sync_as("sonora", Role::Field).unwrap();
    let mut held: Vec<String> = teammate.ids().iter().map(ToString::to_string).collect();
    held.sort();
    assert_eq!(
        held,
        sorted(vec![scene.uasc_case.clone(), scene.plain_sonora.clone()])
    );
    assert!(
        !scene
            .altar_field
            .ids()
            .iter()
            .any(|id| held.contains(&id.to_string()))
    );
    // Its own team's record, health included; another team's answers like a missing one.
    let (status, detail) = scene.get(&format!("/v1/encounters/{}", scene.uasc_case), &token);
    assert_eq!(status, 200);
    assert_eq!(health_of(&detail)["vitals"][0]["pulse"], 128);
    assert_eq!(detail["health_detail_withheld"], 0);
    assert_eq!(
        scene.status(&format!("/v1/encounters/{}", scene.altar_own), &token),
        404
    );
    assert_eq!(
        scene.listed(&token),
        sorted(vec![scene.uasc_case.clone(), scene.plain_sonora.clone()])
    );
    for path in [
        "/v1/map?bbox=-120,20,-90,35&zoom=3",
        "/v1/stats",
        "/v1/hotspots",
        "/v1/export?format=csv&purpose=report",
    ] {
        assert_eq!(scene.status(path, &token), 403, "{path}");
    }
    assert_eq!(
        EventStream::open(&scene.server.url, Some(&token))
            .err()
            .map(|e| e.0),
        Some(403)
    );
    assert_eq!(scene.admin_and_audit_statuses(&token), [403, 403, 403]);
}

#[test]
fn a_team_lead_sees_the_map_stats_and_exports_of_their_own_team_only() {
    let scene = Scene::start();
    let token = scene.token("sonora", Role::TeamLead);
    let coordinator = scene.token("headquarters", Role::Coordinator);
    assert_eq!(scene.map_total(&coordinator), 3);
    assert_eq!(scene.map_total(&token), 2, "only Sonora's two encounters");
    let (status, body) = scene.get("/v1/map?bbox=-120,20,-90,35&zoom=3&team=altar", &token);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("sonora"), "{body}");
    let (status, stats) = scene.get("/v1/stats", &token);
    assert_eq!(status, 200);
    let (_, all_stats) = scene.get("/v1/stats", &coordinator);
    assert_ne!(stats, all_stats, "the team lead's stats leave Altar out");
    let (status, _) = scene.get("/v1/export?format=geojson&purpose=team%20report", &token);
    assert_eq!(status, 200);
    // Records of the team, health included (a team lead follows the team's casualties).
    let (status, detail) = scene.get(&format!("/v1/encounters/{}", scene.uasc_case), &token);
    assert_eq!(status, 200);
    assert_eq!(health_of(&detail)["conditions"][0], "heat_exhaustion");
    assert_eq!(
        scene.status(&format!("/v1/encounters/{}", scene.altar_own), &token),
        404
    );
    // Syncs like a field phone of the team.
    let lead = scene.sync_as("sonora", Role::TeamLead).unwrap();
    assert_eq!(lead.ids().len(), 2);
    assert_eq!(scene.admin_and_audit_statuses(&token), [403, 403, 403]);
}

#[test]
fn a_coordinator_sees_every_team_without_health_detail_and_cannot_sync_documents() {
    let scene = Scene::start();
    let token = scene.token("headquarters", Role::Coordinator);
    assert_eq!(scene.map_total(&token), 3);
    assert_eq!(scene.listed(&token).len(), 3);
    let (status, detail) = scene.get(&format!("/v1/encounters/{}", scene.uasc_case), &token);
    assert_eq!(status, 200);
    let casualty = health_of(&detail);
    assert_eq!(casualty["triage"]["category"], "yellow");
    assert!(casualty.get("vitals").is_none(), "{casualty}");
    assert!(casualty.get("conditions").is_none(), "{casualty}");
    assert!(casualty.get("age_years").is_none(), "{casualty}");
    assert!(detail["health_detail_withheld"].as_u64().unwrap() >= 3);
    let (status, _) = scene.get("/v1/export?format=hxl&purpose=monthly%20report", &token);
    assert_eq!(status, 200);
    // Sync would hand over whole documents, health included: refused.
    match scene.sync_as("headquarters", Role::Coordinator) {
        Err(ClientError::Unauthorized {
            status: 403,
            message,
        }) => {
            assert!(message.contains("syncing"), "{message}")
        }
        other => panic!("a coordinator's sync must be refused with 403, got {other:?}"),
    }
    assert_eq!(scene.admin_and_audit_statuses(&token), [403, 403, 403]);
}

#[test]
fn a_protection_officer_reads_only_uasc_and_missing_person_cases_in_full() {
    let scene = Scene::start();
    let token = scene.token("headquarters", Role::ProtectionOfficer);
    assert_eq!(scene.listed(&token), vec![scene.uasc_case.clone()]);
    let (status, detail) = scene.get(&format!("/v1/encounters/{}", scene.uasc_case), &token);
    assert_eq!(status, 200);
    assert_eq!(health_of(&detail)["vitals"][0]["temperature_c"], 39.4);
    for not_a_case in [&scene.plain_sonora, &scene.altar_own] {
        assert_eq!(
            scene.status(&format!("/v1/encounters/{not_a_case}"), &token),
            404
        );
    }
    for path in [
        "/v1/map?bbox=-120,20,-90,35&zoom=3",
        "/v1/stats",
        "/v1/export?format=csv&purpose=report",
    ] {
        assert_eq!(scene.status(path, &token), 403, "{path}");
    }
    assert!(matches!(
        scene.sync_as("headquarters", Role::ProtectionOfficer),
        Err(ClientError::Unauthorized { status: 403, .. })
    ));
    assert_eq!(scene.admin_and_audit_statuses(&token), [403, 403, 403]);
}

#[test]
fn an_administrator_manages_devices_and_reads_no_case_data() {
    let scene = Scene::start();
    let token = scene.token("headquarters", Role::Administrator);
    for (path, status) in scene.case_endpoints(&token) {
        assert_eq!(status, 403, "{path}");
    }
    assert!(matches!(
        scene.sync_as("headquarters", Role::Administrator),
        Err(ClientError::Unauthorized { status: 403, .. })
    ));
    assert_eq!(scene.status("/v1/audit", &token), 403);
    // Enrols a phone that then works, lists devices (no tokens), and revokes it.
    let (status, enrolled) = post_json(
        &scene.server.url,
        "/v1/admin/devices",
        Some(&token),
        &serde_json::json!({"team": "altar", "role": "field", "label": "phone 9"}),
    );
    assert_eq!(status, 200, "{enrolled}");
    let new_token = enrolled["token"].as_str().unwrap().to_string();
    let device_id = enrolled["device_id"].as_str().unwrap().to_string();
    let (status, me) = scene.get("/v1/whoami", &new_token);
    assert_eq!((status, me["team"].as_str()), (200, Some("altar")));
    let (status, listing) = scene.get("/v1/admin/devices", &token);
    assert_eq!(status, 200);
    assert!(listing.to_string().contains(&device_id));
    assert!(!listing.to_string().contains(&new_token));
    let (status, _) = post_json(
        &scene.server.url,
        &format!("/v1/admin/devices/{device_id}/revoke"),
        Some(&token),
        &serde_json::json!({}),
    );
    assert_eq!(status, 200);
    assert_eq!(scene.status("/v1/whoami", &new_token), 401);
    // Bad input is named, not a 500.
    let (status, body) = post_json(
        &scene.server.url,
        "/v1/admin/devices",
        Some(&token),
        &serde_json::json!({"team": "altar", "role": "superuser"}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = post_json(
        &scene.server.url,
        "/v1/admin/devices",
        Some(&token),
        &serde_json::json!({"team": "nowhere", "role": "field"}),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn an_auditor_reads_and_exports_the_audit_log_and_nothing_else() {
    let scene = Scene::start();
    let token = scene.token("headquarters", Role::Auditor);
    for (path, status) in scene.case_endpoints(&token) {
        assert_eq!(status, 403, "{path}");
    }
    assert_eq!(scene.status("/v1/admin/devices", &token), 403);
    // Things worth auditing happen: a sign-in, a read of a case, an export with its purpose.
    let coordinator = scene.token("headquarters", Role::Coordinator);
    assert_eq!(scene.status("/v1/whoami", &coordinator), 200);
    assert_eq!(
        scene.status(&format!("/v1/encounters/{}", scene.uasc_case), &coordinator),
        200
    );
    assert_eq!(
        scene.status(
            "/v1/export?format=csv&purpose=UNHCR%20monthly%20figures",
            &coordinator
        ),
        200
    );
    let (status, log) = scene.get("/v1/audit?limit=1000", &token);
    assert_eq!(status, 200, "{log}");
    let entries = log["entries"].as_array().unwrap();
    let has = |action: &str, text: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["detail"].to_string().contains(text))
    };
    assert!(has("device.enroll", "coordinator"), "{log}");
    assert!(has("auth.sign_in", "coordinator"), "{log}");
    assert!(has("encounter.read", &scene.uasc_case), "{log}");
    assert!(has("export", "UNHCR monthly figures"), "{log}");
    // Chained: every row has a hash.
    assert!(entries.iter().all(|e| e["hash"].is_string()));
    let (status, _, _, csv) =
        auxilio_tests::get_text(&scene.server.url, "/v1/audit?format=csv", Some(&token));
    assert_eq!(status, 200);
    assert!(
        csv.starts_with("seq,at,actor,action,detail,hash\n"),
        "{csv}"
    );
    assert!(csv.contains("UNHCR monthly figures"));
    // Reading the log is itself in the log.
    let (_, again) = scene.get("/v1/audit?limit=1000", &token);
    assert!(
        again["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "audit.read")
    );
}
