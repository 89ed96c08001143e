//! An administrator manages credentials and never reads case data. A field phone syncs its
//! team's whole records, health included, so a field token an administrator obtains over HTTP
//! (by enrolling a phone, or by rotating a real phone's token) would be case access. Such a
//! device authenticates but awaits approval: it syncs nothing and reads nothing until a team
//! lead of its team (enrolled only on the server's command line, so another person) approves
//! it, or the operator on the server does with `auxilio admin device approve`. Devices enrolled
//! or rotated on the command line are approved at once, and a device's own rotation keeps its
//! approval.

use auxilio_core::EncounterId;
use auxilio_server::ServerConfig;
use auxilio_server::client::{self, ClientError};
use auxilio_server::directory::{Enrolled, Role};
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, TeamFixture, add_team, auxilio_ok, enroll, get_json, post_json,
    run_auxilio,
};
use serde_json::Value;

const RESCUE: &str =
    r#"{"services":["rescue","first_aid"],"counts":{"m":{"18-59":1},"injured":1},"status":"open"}"#;

const CASUALTY: &str = r#"casualties.c1={"sex":"m","age_years":34,"age_band":"18-59","triage":{"method":"start","category":"red"},"conditions":["heat_stroke"],"interventions":["iv_fluids"],"disposition":"to_hospital","facility":"Hospital General de Caborca"}"#;

/// Team Sonora with a synced rescue holding a casualty's health detail, its team lead, an
/// administrator, an auditor, and Chihuahua's team lead: all enrolled on the command line.
struct Scene {
    fixture: TeamFixture,
    phone: Device,
    rescue: EncounterId,
    team_lead: Enrolled,
    other_team_lead: Enrolled,
    administrator: Enrolled,
    auditor: Enrolled,
}

impl Scene {
    fn start() -> Self {
        let fixture = TeamFixture::start("sonora", ServerConfig::default());
        let data = fixture.data.path();
        add_team(data, "chihuahua");
        add_team(data, "headquarters");
        let mut phone = fixture.device("phone", Role::Field);
        let rescue = phone.log(RESCUE);
        phone.edit(rescue, &[CASUALTY]);
        phone.sync().unwrap();
        Self {
            team_lead: enroll(data, "sonora", Role::TeamLead),
            other_team_lead: enroll(data, "chihuahua", Role::TeamLead),
            administrator: enroll(data, "headquarters", Role::Administrator),
            auditor: enroll(data, "headquarters", Role::Auditor),
            fixture,
            phone,
            rescue,
        }
    }

    fn url(&self) -> &str {
        &self.fixture.server.url
    }

    fn get(&self, path: &str, token: &str) -> (u16, Value) {
        get_json(self.url(), path, Some(token)).unwrap()
    }

    fn post(&self, path: &str, token: &str) -> (u16, Value) {
        post_json(self.url(), path, Some(token), &serde_json::json!({}))
    }

    /// The rescue as `token` reads it.
    fn read_rescue(&self, token: &str) -> (u16, Value) {
        self.get(&format!("/v1/encounters/{}", self.rescue), token)
    }

    fn approved(&self, token: &str) -> bool {
        let (status, me) = self.get("/v1/whoami", token);
        assert_eq!(status, 200, "{me}");
        me["approved"]
            .as_bool()
            .unwrap_or_else(|| panic!("whoami says nothing of approval: {me}"))
    }

    /// Enrols a field phone of Sonora over HTTP, as the administrator.
    fn enrol_over_http(&self) -> Enrolled {
        let (status, body) = post_json(
            self.url(),
            "/v1/admin/devices",
            Some(&self.administrator.token),
            &serde_json::json!({"team": "sonora", "role": "field", "label": "phone 7"}),
        );
        assert_eq!(status, 200, "{body}");
        enrolled_from(&body, "sonora")
    }

    fn awaiting_in_the_team_leads_list(&self, device: &str) -> bool {
        let (status, listing) = self.get("/v1/team/devices?awaiting=true", &self.team_lead.token);
        assert_eq!(status, 200, "{listing}");
        assert!(
            !listing.to_string().contains("auxilio_"),
            "no token in a listing: {listing}"
        );
        listing["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == device)
    }

    fn approve(&self, device: &str, token: &str) -> (u16, Value) {
        self.post(&format!("/v1/team/devices/{device}/approve"), token)
    }
}

fn enrolled_from(body: &Value, team: &str) -> Enrolled {
    Enrolled {
        device_id: body["device_id"].as_str().unwrap().parse().unwrap(),
        team: team.to_string(),
        role: Role::Field,
        token: body["token"].as_str().unwrap().to_string(),
    }
}

/// A refusal that says the device awaits its team lead's approval and how to get it.
fn assert_awaits_approval(status: u16, body: &Value) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["awaiting_approval"], true, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("this device awaits approval by a team lead of sonora"),
        "{body}"
    );
    assert!(
        body["hint"]
            .as_str()
            .unwrap()
            .contains("auxilio admin device approve"),
        "{body}"
    );
}

fn assert_sync_awaits_approval(result: Result<client::SyncReport, ClientError>) {
    let text = match result {
        Err(err) => err.to_string(),
        Ok(report) => {
            panic!("expected a refusal awaiting approval, the sync went through: {report:?}")
        }
    };
    assert!(
        text.contains("awaits approval by a team lead of sonora"),
        "{text}"
    );
    assert!(text.contains("nothing on this device was lost"), "{text}");
}

#[test]
fn a_field_device_an_administrator_enrols_over_http_reads_and_syncs_nothing_until_its_team_lead_approves_it()
 {
    let s = Scene::start();
    // Positive control: a field phone enrolled on the command line syncs (it did, above) and
    // reads the casualty's health detail.
    let (status, record) = s.read_rescue(&s.phone.enrolled.token);
    assert_eq!(status, 200, "{record}");
    assert!(record.to_string().contains("heat_stroke"), "{record}");

    // The administrator's phone authenticates, but reads and syncs nothing.
    let enrolled = s.enrol_over_http();
    let id = enrolled.device_id.to_string();
    let mut admins_phone = Device::new(s.fixture.devices.path(), "admins", s.url(), &enrolled);
    let logged = admins_phone.log(EXAMPLE_ENCOUNTER);
    let (status, body) = s.read_rescue(&enrolled.token);
    assert_awaits_approval(status, &body);
    assert!(s.approved(&s.phone.enrolled.token));
    assert!(!s.approved(&enrolled.token));
    let (status, body) = s.get("/v1/encounters", &enrolled.token);
    assert_awaits_approval(status, &body);
    let pending = admins_phone.store.pending_count().unwrap();
    assert!(pending > 0);
    assert_sync_awaits_approval(admins_phone.sync());
    assert!(admins_phone.ids().iter().all(|e| *e != s.rescue));
    assert_eq!(admins_phone.store.pending_count().unwrap(), pending);

    // Nobody but a team lead of Sonora approves it: not the administrator, not the device, not
    // another team's lead, not Sonora's other field phone.
    assert!(s.awaiting_in_the_team_leads_list(&id));
    assert_eq!(s.approve(&id, &s.administrator.token).0, 403);
    assert_eq!(s.approve(&id, &enrolled.token).0, 403);
    assert_eq!(s.approve(&id, &s.phone.enrolled.token).0, 403);
    let (status, body) = s.approve(&id, &s.other_team_lead.token);
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.get("/v1/team/devices?awaiting=true", &s.other_team_lead.token);
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(&id), "{body}");
    assert!(!s.approved(&enrolled.token));
    assert_sync_awaits_approval(admins_phone.sync());

    // Sonora's team lead approves: the phone syncs, its pending encounter reaches the server.
    let (status, body) = s.approve(&id, &s.team_lead.token);
    assert_eq!(status, 200, "{body}");
    assert!(s.approved(&enrolled.token));
    assert!(!s.awaiting_in_the_team_leads_list(&id));
    let report = admins_phone.sync().unwrap();
    assert_eq!(report.pending, 0, "{report:?}");
    assert!(report.uploaded > 0, "{report:?}");
    assert!(admins_phone.ids().contains(&s.rescue));
    let (status, record) = s.get(&format!("/v1/encounters/{logged}"), &s.team_lead.token);
    assert_eq!(status, 200, "{record}");

    // The approval is in the audit log, by the team lead, naming the device.
    let (status, log) = s.get("/v1/audit", &s.auditor.token);
    assert_eq!(status, 200, "{log}");
    let approvals: Vec<&Value> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "device.approve")
        .collect();
    assert_eq!(approvals.len(), 1, "{log}");
    assert_eq!(
        approvals[0]["actor"],
        s.team_lead.device_id.to_string(),
        "{log}"
    );
    assert!(approvals[0]["detail"].to_string().contains(&id), "{log}");
}

#[test]
fn an_administrator_rotating_a_field_phone_over_http_gets_a_token_that_awaits_the_team_leads_approval()
 {
    let mut s = Scene::start();
    // Positive control: the phone's own rotation keeps its approval.
    client::rotate_token(&mut s.phone.store).unwrap();
    s.phone.sync().unwrap();
    let rotated_self = s.phone.store.enrolment().unwrap().unwrap().token;
    let (status, record) = s.read_rescue(&rotated_self);
    assert_eq!(status, 200, "{record}");

    let id = s.phone.enrolled.device_id.to_string();
    let (status, body) = s.post(
        &format!("/v1/admin/devices/{id}/rotate"),
        &s.administrator.token,
    );
    assert_eq!(status, 200, "{body}");
    let rotated = enrolled_from(&body, "sonora");
    let mut admins_copy = Device::new(s.fixture.devices.path(), "copy", s.url(), &rotated);
    let (status, body) = s.read_rescue(&rotated.token);
    assert_awaits_approval(status, &body);
    assert!(!s.approved(&rotated.token));
    assert_sync_awaits_approval(admins_copy.sync());
    assert!(admins_copy.ids().is_empty());
    assert!(s.awaiting_in_the_team_leads_list(&id));

    let (status, body) = s.approve(&id, &s.team_lead.token);
    assert_eq!(status, 200, "{body}");
    admins_copy.sync().unwrap();
    assert!(admins_copy.ids().contains(&s.rescue));
    let (status, record) = s.read_rescue(&rotated.token);
    assert_eq!(status, 200, "{record}");
    assert!(record.to_string().contains("heat_stroke"), "{record}");
}

#[test]
fn the_device_command_line_says_it_awaits_approval_keeps_its_encounter_and_the_servers_operator_approves_it()
 {
    let s = Scene::start();
    let enrolled = s.enrol_over_http();
    let id = enrolled.device_id.to_string();
    let dir = s.fixture.devices.path();
    let store = dir.join("cli-phone.db");
    let store = store.to_str().unwrap();
    auxilio_ok(
        dir,
        &[
            "device",
            "--store",
            store,
            "init",
            "--server",
            s.url(),
            "--token",
            &enrolled.token,
        ],
        None,
    );
    auxilio_ok(
        dir,
        &["device", "--store", store, "log", "-"],
        Some(EXAMPLE_ENCOUNTER),
    );
    let refused = run_auxilio(
        dir,
        &["device", "--store", store, "sync", "--attempts", "1"],
        None,
    );
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("awaits approval by a team lead of sonora"),
        "{said}"
    );
    assert!(said.contains("nothing on this device was lost"), "{said}");

    // The operator on the server approves it from the command line.
    let approved = s.fixture.admin(&["--json", "device", "approve", &id]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let answer: Value = serde_json::from_slice(&approved.stdout).unwrap();
    assert_eq!(answer["approved"], true, "{answer}");
    let synced = auxilio_ok(dir, &["device", "--store", store, "sync"], None);
    let report: Value = serde_json::from_str(synced.lines().last().unwrap()).unwrap();
    assert!(report["uploaded"].as_u64().unwrap() >= 1, "{synced}");
    assert_eq!(report["pending"], 0, "{synced}");
    assert!(s.approved(&enrolled.token));
}
