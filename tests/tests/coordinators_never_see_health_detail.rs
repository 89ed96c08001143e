//! A coordinator reads every team's records, but never the health detail in them: not in the
//! record, not in the values of a conflict (over one casualty or over all of them), not in the
//! text of a flagged problem, not in a record that does not fit the schema, and not in the free
//! text of the notes. Each test first shows the detail to a field phone of the team (it is
//! there), then proves the coordinator's answer holds none of it. The coordinator's list is
//! audited like a record read, and a CSV export defuses every text a spreadsheet would run.

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use auxilio_core::EncounterId;
use auxilio_core::protocol::{EncounterChanges, SyncRequest};
use auxilio_server::ServerConfig;
use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, TeamFixture, add_team, empty_sync_request, enroll, get_json, get_text, raw_change,
    sync_answer,
};
use serde_bytes::ByteBuf;
use serde_json::Value;

/// One team of two field phones, and a coordinator and an auditor at headquarters.
struct Scene {
    fixture: TeamFixture,
    phone_a: Device,
    phone_b: Device,
    coordinator: String,
    coordinator_id: String,
    auditor: String,
}

impl Scene {
    fn start() -> Self {
        let fixture = TeamFixture::start("sonora", ServerConfig::default());
        add_team(fixture.data.path(), "headquarters");
        let coordinator = enroll(fixture.data.path(), "headquarters", Role::Coordinator);
        let auditor = enroll(fixture.data.path(), "headquarters", Role::Auditor).token;
        let phone_a = fixture.device("phone-a", Role::Field);
        let phone_b = fixture.device("phone-b", Role::Field);
        Self {
            fixture,
            phone_a,
            phone_b,
            coordinator: coordinator.token,
            coordinator_id: coordinator.device_id.to_string(),
            auditor,
        }
    }

    fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = get_json(&self.fixture.server.url, path, Some(token)).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    fn read(&self, id: EncounterId, token: &str) -> Value {
        self.get(&format!("/v1/encounters/{id}"), token)
    }

    /// A rescue logged on phone A and synced to both phones.
    fn rescue_on_both_phones(&mut self) -> EncounterId {
        let id = self.phone_a.log(RESCUE);
        self.phone_a.sync().unwrap();
        self.phone_b.sync().unwrap();
        id
    }

    /// Uploads a change written by a modified app on `device`, as its own sync would.
    fn upload(&self, device: &Device, id: EncounterId, change: &automerge::Change) {
        let request = SyncRequest {
            changes: vec![EncounterChanges {
                encounter: id,
                changes: vec![ByteBuf::from(change.raw_bytes().to_vec())],
            }],
            ..empty_sync_request()
        };
        let answer = sync_answer(&self.fixture.server.url, device, &request);
        assert_eq!(answer.accepted.len(), 1, "{:?}", answer.rejected);
    }
}

/// What a casualty's health detail looks like in the answers below: none of it may reach a
/// coordinator.
const HEALTH: [&str; 12] = [
    "Caborca",
    "Sonoyta",
    "heat_stroke",
    "dehydration",
    "iv_fluids",
    "golpe de calor",
    "dolor de pecho",
    "\"pulse\"",
    "\"vitals\"",
    "\"conditions\"",
    "\"facility\"",
    "\"age_years\"",
];

fn assert_holds_no_health_detail(value: &Value) {
    let text = value.to_string();
    for detail in HEALTH {
        assert!(!text.contains(detail), "`{detail}` reached: {text}");
    }
}

fn assert_holds(value: &Value, details: &[&str]) {
    let text = value.to_string();
    for detail in details {
        assert!(text.contains(detail), "`{detail}` missing from {text}");
    }
}

fn conflict_at<'a>(detail: &'a Value, path: &str) -> &'a Value {
    detail["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == path)
        .unwrap_or_else(|| panic!("no conflict at {path}: {detail}"))
}

const RESCUE: &str =
    r#"{"services":["rescue","first_aid"],"counts":{"m":{"18-59":1},"injured":1},"status":"open"}"#;

#[test]
fn two_phones_setting_the_same_casualty_show_the_team_both_values_and_the_coordinator_neither_ones_health_detail()
 {
    let mut s = Scene::start();
    let id = s.rescue_on_both_phones();
    // Offline, both phones record the same person as casualty c1, differently.
    s.phone_a.edit(id, &[r#"casualties.c1={"sex":"m","age_years":34,"age_band":"18-59","triage":{"method":"start","category":"red"},"vitals":[{"at":"2026-11-20T10:00:00-07:00","pulse":142,"spo2":88}],"conditions":["heat_stroke"],"interventions":["iv_fluids"],"disposition":"to_hospital","facility":"Hospital General de Caborca"}"#]);
    s.phone_b.edit(id, &[r#"casualties.c1={"sex":"m","age_years":41,"age_band":"18-59","triage":{"method":"start","category":"yellow"},"vitals":[{"at":"2026-11-20T10:05:00-07:00","pulse":97}],"conditions":["dehydration"],"disposition":"to_shelter","facility":"Albergue Sonoyta"}"#]);
    s.phone_a.sync().unwrap();
    s.phone_b.sync().unwrap();

    let team_view = s.read(id, &s.phone_a.enrolled.token.clone());
    assert_holds(
        conflict_at(&team_view, "casualties.c1"),
        &[
            "Caborca",
            "Sonoyta",
            "heat_stroke",
            "dehydration",
            "iv_fluids",
            "\"pulse\":142",
            "\"age_years\":41",
        ],
    );

    let coordinator_view = s.read(id, &s.coordinator);
    let conflict = conflict_at(&coordinator_view, "casualties.c1");
    let categories: Vec<&Value> = conflict["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["value"]["triage"]["category"])
        .collect();
    assert!(
        categories.contains(&&Value::from("red")) && categories.contains(&&Value::from("yellow")),
        "the coordinator still sees the conflict and each side's triage: {conflict}"
    );
    assert_holds_no_health_detail(&coordinator_view);
    assert!(coordinator_view["health_detail_withheld"].as_u64().unwrap() > 0);
}

/// Writes casualty `key` with health detail into the map `casualties` of a raw document.
fn put_casualty(
    doc: &mut automerge::AutoCommit,
    casualties: &automerge::ObjId,
    key: &str,
    facility: &str,
) {
    let person = doc.put_object(casualties, key, ObjType::Map).unwrap();
    doc.put(&person, "sex", "f").unwrap();
    doc.put(&person, "age_years", 29_u64).unwrap();
    doc.put(&person, "facility", facility).unwrap();
    let conditions = doc.put_object(&person, "conditions", ObjType::Map).unwrap();
    doc.put(&conditions, "heat_stroke", true).unwrap();
    let vitals = doc.put_object(&person, "vitals", ObjType::List).unwrap();
    let reading = doc.insert_object(&vitals, 0, ObjType::Map).unwrap();
    doc.put(&reading, "at", "2026-11-20T10:00:00-07:00")
        .unwrap();
    doc.put(&reading, "pulse", 150_u64).unwrap();
}

#[test]
fn two_phones_replacing_all_casualties_at_once_show_the_coordinator_no_health_detail_in_the_conflict()
 {
    let mut s = Scene::start();
    let id = s.rescue_on_both_phones();
    // Two modified apps each write a new casualties map at the same moment.
    let from_a = raw_change(&s.phone_a, id, |doc| {
        let casualties = doc.put_object(ROOT, "casualties", ObjType::Map).unwrap();
        put_casualty(doc, &casualties, "c1", "Hospital General de Caborca");
    });
    let from_b = raw_change(&s.phone_b, id, |doc| {
        let casualties = doc.put_object(ROOT, "casualties", ObjType::Map).unwrap();
        put_casualty(doc, &casualties, "c2", "Albergue Sonoyta");
    });
    s.upload(&s.phone_a, id, &from_a);
    s.upload(&s.phone_b, id, &from_b);

    let team_view = s.read(id, &s.phone_a.enrolled.token.clone());
    assert_holds(
        conflict_at(&team_view, "casualties"),
        &["Caborca", "Sonoyta", "heat_stroke", "\"pulse\":150"],
    );

    let coordinator_view = s.read(id, &s.coordinator);
    let conflict = conflict_at(&coordinator_view, "casualties");
    assert_holds(conflict, &["\"sex\":\"f\"", "c1", "c2"]);
    assert_holds_no_health_detail(&coordinator_view);
    assert!(coordinator_view["health_detail_withheld"].as_u64().unwrap() > 0);
}

#[test]
fn a_vital_sign_out_of_range_is_flagged_to_the_coordinator_without_its_field_or_value() {
    let mut s = Scene::start();
    let id = s.phone_a.log(r#"{"services":["rescue","first_aid"],"counts":{"m":{"18-59":1},"injured":1},"status":"open","casualties":{"c1":{"sex":"m","triage":{"method":"start","category":"red"},"vitals":[{"at":"2026-11-20T10:00:00-07:00","pulse":120}]}}}"#);
    s.phone_a.sync().unwrap();
    let absurd = raw_change(&s.phone_a, id, |doc| {
        let (_, casualties) = doc.get(ROOT, "casualties").unwrap().unwrap();
        let (_, person) = doc.get(&casualties, "c1").unwrap().unwrap();
        let (_, vitals) = doc.get(&person, "vitals").unwrap().unwrap();
        let (_, reading) = doc.get(&vitals, 0_usize).unwrap().unwrap();
        doc.put(&reading, "pulse", 333_u64).unwrap();
    });
    s.upload(&s.phone_a, id, &absurd);

    let token = s.phone_a.enrolled.token.clone();
    let problem_about_the_pulse = |problems: &Value| {
        problems.as_array().unwrap().iter().any(|p| {
            p["field"] == "casualties.c1.vitals.0.pulse"
                && p["message"].as_str().unwrap().contains("333")
        })
    };
    let team_view = s.read(id, &token);
    assert!(
        problem_about_the_pulse(&team_view["problems"]),
        "{team_view}"
    );
    let team_list = s.get("/v1/encounters?flagged=true", &token);
    assert!(problem_about_the_pulse(
        &team_list["encounters"][0]["problems"]
    ));

    let coordinator_view = s.read(id, &s.coordinator);
    let coordinator_list = s.get("/v1/encounters?flagged=true", &s.coordinator);
    assert_eq!(coordinator_list["count"], 1, "still listed as flagged");
    assert_eq!(coordinator_list["encounters"][0]["id"], id.to_string());
    for problems in [
        &coordinator_view["problems"],
        &coordinator_list["encounters"][0]["problems"],
    ] {
        let problems = problems.as_array().unwrap();
        assert!(!problems.is_empty(), "the record is still flagged");
        for problem in problems {
            let text = problem.to_string();
            assert!(!text.contains("333") && !text.contains("pulse"), "{text}");
            assert!(!text.contains("vitals"), "{text}");
        }
    }
    assert_eq!(coordinator_view["problems"][0]["field"], "casualties.c1");
    assert_holds_no_health_detail(&coordinator_view["encounter"]);
}

#[test]
fn casualties_written_as_a_list_in_a_record_that_does_not_fit_the_schema_reach_no_coordinator() {
    let mut s = Scene::start();
    let id = s.phone_a.log(RESCUE);
    s.phone_a.sync().unwrap();
    // A modified app writes the casualties as a list, with a field the schema does not know.
    let misfit = raw_change(&s.phone_a, id, |doc| {
        let casualties = doc.put_object(ROOT, "casualties", ObjType::List).unwrap();
        let person = doc.insert_object(&casualties, 0, ObjType::Map).unwrap();
        doc.put(&person, "sex", "m").unwrap();
        doc.put(&person, "diagnosis", "golpe de calor, pulso 150")
            .unwrap();
        doc.put(&person, "facility", "Hospital General de Caborca")
            .unwrap();
    });
    s.upload(&s.phone_a, id, &misfit);

    let team_view = s.read(id, &s.phone_a.enrolled.token.clone());
    assert!(team_view["encounter"]["casualties"].is_array());
    assert_holds(&team_view["encounter"], &["golpe de calor", "Caborca"]);

    let coordinator_view = s.read(id, &s.coordinator);
    assert!(
        coordinator_view["encounter"].get("casualties").is_none(),
        "casualties that are not a map of objects are withheld whole: {coordinator_view}"
    );
    assert_eq!(coordinator_view["encounter"]["status"], "open");
    assert_holds_no_health_detail(&coordinator_view);
    assert!(coordinator_view["health_detail_withheld"].as_u64().unwrap() > 0);
    let listed = s.get("/v1/encounters?flagged=true", &s.coordinator);
    assert_eq!(listed["count"], 1);
    assert_holds_no_health_detail(&listed);
}

#[test]
fn notes_are_read_by_the_team_and_withheld_from_a_coordinator_who_is_told_so() {
    let mut s = Scene::start();
    let id = s.phone_a.log(r#"{"services":["rescue"],"counts":{"f":{"18-59":1}},"status":"open","notes":"dolor de pecho, pulso débil; llevada a la carretera"}"#);
    s.phone_a.sync().unwrap();

    let team_view = s.read(id, &s.phone_a.enrolled.token.clone());
    assert_eq!(
        team_view["encounter"]["notes"],
        "dolor de pecho, pulso débil; llevada a la carretera"
    );
    assert_eq!(team_view["health_detail_withheld"], 0);

    let coordinator_view = s.read(id, &s.coordinator);
    assert!(coordinator_view["encounter"].get("notes").is_none());
    assert_holds_no_health_detail(&coordinator_view);
    assert_eq!(coordinator_view["health_detail_withheld"], 1);
    assert_eq!(coordinator_view["encounter"]["counts"]["f"]["18-59"], 1);
}

#[test]
fn the_coordinators_list_keeps_exact_coordinates_and_every_request_is_audited_with_its_filters_and_row_count()
 {
    let mut s = Scene::start();
    let id = s.phone_a.log(r#"{"services":["rescue"],"location":{"lat":31.6912,"lon":-112.8437},"counts":{"m":{"18-59":2}},"status":"open"}"#);
    s.phone_a
        .log(r#"{"services":["orientation"],"counts":{"m":{"18-59":1}},"status":"closed"}"#);
    s.phone_a.sync().unwrap();

    let listed = s.get("/v1/encounters?status=open&limit=50", &s.coordinator);
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["encounters"][0]["id"], id.to_string());
    // In the system, coordinates stay exact: coordinators dispatch rescues to them.
    assert_eq!(listed["encounters"][0]["lat"], 31.6912);
    assert_eq!(listed["encounters"][0]["lon"], -112.8437);

    let audit = s.get("/v1/audit", &s.auditor);
    let lists: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "encounter.list")
        .collect();
    assert_eq!(lists.len(), 1, "{audit}");
    assert_eq!(lists[0]["actor"], s.coordinator_id);
    assert_eq!(lists[0]["detail"]["rows"], 1);
    assert_eq!(lists[0]["detail"]["role"], "coordinator");
    assert_eq!(lists[0]["detail"]["filters"]["status"], "open");
    assert_eq!(lists[0]["detail"]["filters"]["limit"], 50);
}

/// Parses CSV as a spreadsheet would: the cells of every row, quotes removed.
fn spreadsheet_cells(csv: &str) -> Vec<Vec<String>> {
    let mut rows = vec![vec![String::new()]];
    let mut quoted = false;
    let mut chars = csv.chars().peekable();
    while let Some(c) = chars.next() {
        let row = rows.last_mut().unwrap();
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                row.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(String::new()),
            ('\r', false) if chars.peek() == Some(&'\n') => {
                chars.next();
                rows.push(vec![String::new()]);
            }
            _ => row.last_mut().unwrap().push(c),
        }
    }
    rows.retain(|row| row != &[String::new()]);
    rows
}

/// The first characters with which a spreadsheet cell becomes a formula or a command.
const FORMULA_PREFIXES: [&str; 12] = [
    "=", "+", "-", "@", "\t", "\r", "\n", "|", "\u{ff1d}", "\u{ff0b}", "\u{ff0d}", "\u{ff20}",
];

#[test]
fn a_csv_export_defuses_device_written_text_starting_with_any_formula_character() {
    let mut s = Scene::start();
    let control = s.phone_a.log(r#"{"services":["orientation"],"adm1":"MX-SON","terrain":"desert","counts":{"m":{"18-59":1}},"status":"open"}"#);
    s.phone_a.sync().unwrap();
    for prefix in FORMULA_PREFIXES {
        let id = s
            .phone_a
            .log(r#"{"services":["orientation"],"counts":{"m":{"18-59":1}},"status":"open"}"#);
        s.phone_a.sync().unwrap();
        let hostile = raw_change(&s.phone_a, id, |doc| {
            doc.put(
                ROOT,
                "terrain",
                format!("{prefix}HYPERLINK(\"http://x.example\")"),
            )
            .unwrap();
            doc.put(ROOT, "status", format!("{prefix}cmd|'/C calc'"))
                .unwrap();
            doc.put(ROOT, "adm1", format!("{prefix}SUM(1,2)")).unwrap();
        });
        s.upload(&s.phone_a, id, &hostile);
    }

    for format in ["csv", "hxl"] {
        let (status, _, _, body) = get_text(
            &s.fixture.server.url,
            &format!("/v1/export?format={format}&purpose=monthly%20report"),
            Some(&s.coordinator),
        );
        assert_eq!(status, 200, "{body}");
        let rows = spreadsheet_cells(&body);
        for cell in rows.iter().flatten() {
            let runs = FORMULA_PREFIXES.iter().any(|p| cell.starts_with(p));
            assert!(
                !runs || cell.parse::<f64>().is_ok(),
                "{format}: a spreadsheet would run {cell:?}"
            );
        }
        if format == "csv" {
            assert_eq!(rows.len(), 1 + 1 + FORMULA_PREFIXES.len(), "{body:?}");
            // The hostile text did reach the export, defused; the control row is untouched.
            let hyperlinks = rows
                .iter()
                .filter(|row| row[5].ends_with("HYPERLINK(\"http://x.example\")"))
                .count();
            assert_eq!(hyperlinks, FORMULA_PREFIXES.len(), "{body:?}");
            let control_row = rows
                .iter()
                .find(|row| row[0] == control.to_string())
                .unwrap();
            assert_eq!(
                (control_row[5].as_str(), control_row[6].as_str()),
                ("desert", "MX-SON")
            );
            // An area code that is not a code is not written at all.
            assert_eq!(
                rows.iter().filter(|row| row[6].contains("SUM")).count(),
                0,
                "{body:?}"
            );
        }
    }
}
