//! The coordinator's query API (issue 4): `/v1/map`, `/v1/stats`, `/v1/hotspots` and
//! `/v1/export`, against a real server with encounters logged on phones and synced. Each filter
//! changes the answer as it should, clusters give way to points as the map zooms in, only
//! coordinators are served, exports are minimised, generalised, suppressed and audited, and
//! `auxilio reindex` rebuilds the index tables to the same answers.

use std::collections::BTreeSet;

use auxilio_core::EncounterId;
use auxilio_server::ServerConfig;
use auxilio_server::directory::Role;
use auxilio_tests::{Device, TeamFixture, add_team, enroll, get_json, get_text, run_auxilio};

/// Sonoyta, in the Sonoran desert, and Ciudad Juárez, on the Río Bravo.
const SONOYTA: (f64, f64) = (31.86, -112.85);
const JUAREZ: (f64, f64) = (31.69, -106.42);
const SONORA_BOX: &str = "-114,30,-110,33";
const JUAREZ_BOX: &str = "-107,31,-106,32";
const PIEDRAS_NEGRAS: (f64, f64) = (28.70, -100.52);
const EVERYWHERE: &str = "-120,20,-90,35";

/// An encounter near `place` (offset by `nudge` thousandths of a degree), on `day` of November
/// 2026, with `services` and any `extra` fields (JSON members, with a leading comma). Unless
/// `extra` has counts, the group is a woman and two men from Honduras.
fn encounter(place: (f64, f64), nudge: i32, day: u32, services: &[&str], extra: &str) -> String {
    let services: Vec<String> = services.iter().map(|s| format!("\"{s}\"")).collect();
    let counts = if extra.contains("\"counts\"") {
        ""
    } else {
        r#","counts":{"f":{"18-59":1},"m":{"18-59":2}},"nationality_counts":{"HND":3}"#
    };
    format!(
        r#"{{"services":[{}],"location":{{"lat":{},"lon":{}}},"started_at":"2026-11-{day:02}T10:00:00-06:00","terrain":"desert","notes":"secret note {nudge}"{counts}{extra}}}"#,
        services.join(","),
        place.0 + f64::from(nudge) / 1000.0,
        place.1 + f64::from(nudge) / 1000.0,
    )
}

/// A server with two teams, a field phone in each, and a coordinator.
struct Field {
    fixture: TeamFixture,
    sonora: Device,
    chihuahua: Device,
    coordinator: Device,
}

impl Field {
    fn start() -> Self {
        let fixture = TeamFixture::start("sonora", ServerConfig::default());
        add_team(fixture.data.path(), "chihuahua");
        let sonora = fixture.device("sonora-1", Role::Field);
        let enrolled = enroll(fixture.data.path(), "chihuahua", Role::Field);
        let chihuahua = Device::new(
            fixture.devices.path(),
            "chihuahua-1",
            &fixture.server.url,
            &enrolled,
        );
        let coordinator = fixture.device("coordinator", Role::Coordinator);
        Self {
            fixture,
            sonora,
            chihuahua,
            coordinator,
        }
    }

    fn sync_all(&mut self) {
        for device in [&mut self.sonora, &mut self.chihuahua] {
            let report = device.sync().unwrap();
            assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        }
    }

    fn get(&self, path: &str) -> (u16, serde_json::Value) {
        get_json(
            &self.fixture.server.url,
            path,
            Some(&self.coordinator.enrolled.token),
        )
        .unwrap()
    }

    /// An export's status, content type, disposition and body.
    fn export(&self, query: &str) -> (u16, String, String, String) {
        get_text(
            &self.fixture.server.url,
            &format!("/v1/export?{query}"),
            Some(&self.coordinator.enrolled.token),
        )
    }

    /// The export audit rows: their actor and detail.
    fn export_audit(&self) -> Vec<(String, serde_json::Value)> {
        let conn =
            rusqlite::Connection::open(self.fixture.data.path().join("auxilio.sqlite")).unwrap();
        let mut statement = conn
            .prepare("SELECT actor, detail FROM audit_log WHERE action = 'export' ORDER BY seq")
            .unwrap();
        statement
            .query_map([], |row| {
                let detail: String = row.get(1)?;
                Ok((row.get(0)?, serde_json::from_str(&detail).unwrap()))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn ok(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// Ids of the points of a map answer (every encounter must be a point).
    fn map_points(&self, query: &str) -> BTreeSet<String> {
        let body = self.ok(&format!("/v1/map?{query}"));
        assert!(
            body["clusters"].as_array().unwrap().is_empty(),
            "{query}: {body}"
        );
        body["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    }
}

fn ids(list: &[EncounterId]) -> BTreeSet<String> {
    list.iter().map(ToString::to_string).collect()
}

/// Five encounters across two teams, places, days, services, triage, status and UASC.
struct Logged {
    rescue_red: EncounterId,
    orientation_closed: EncounterId,
    juarez_uasc: EncounterId,
    juarez_green: EncounterId,
    no_location: EncounterId,
}

fn log_five(field: &mut Field) -> Logged {
    let red = r#","adm1":"MX-SON","casualties":{"a":{"sex":"m","age_band":"18-59","triage":{"method":"start","category":"red"}}}"#;
    let rescue_red = field
        .sonora
        .log(&encounter(SONOYTA, 0, 1, &["rescue", "first_aid"], red));
    let orientation_closed = field.sonora.log(&encounter(
        SONOYTA,
        10,
        10,
        &["orientation"],
        r#","status":"closed","adm1":"MX-SON""#,
    ));
    let uasc = r#","adm1":"MX-CHH","counts":{"m":{"12-17":1},"uasc":1,"injured":1},"casualties":{"c":{"sex":"m","age_band":"12-17","triage":{"method":"jumpstart","category":"yellow"},"uasc":{}}}"#;
    let juarez_uasc = field
        .chihuahua
        .log(&encounter(JUAREZ, 0, 20, &["rescue"], uasc));
    let green = r#","adm1":"MX-CHH","casualties":{"g":{"sex":"f","triage":{"method":"start","category":"green"}},"w":{"sex":"f","triage":{"method":"start","category":"red"},"withdrawn_at":"2026-11-21T00:00:00Z"}}"#;
    let juarez_green = field
        .chihuahua
        .log(&encounter(JUAREZ, 5, 21, &["first_aid"], green));
    let no_location = field.chihuahua.log(
        r#"{"services":["orientation"],"started_at":"2026-11-22T10:00:00-06:00","counts":{"f":{"60+":1}}}"#,
    );
    field.sync_all();
    Logged {
        rescue_red,
        orientation_closed,
        juarez_uasc,
        juarez_green,
        no_location,
    }
}

#[test]
fn each_map_filter_changes_the_answer_as_it_should() {
    let mut field = Field::start();
    let logged = log_five(&mut field);
    let everything = format!("bbox={EVERYWHERE}&zoom=5");
    let map = |field: &Field, filters: &str| field.map_points(&format!("{everything}{filters}"));

    let located = ids(&[
        logged.rescue_red,
        logged.orientation_closed,
        logged.juarez_uasc,
        logged.juarez_green,
    ]);
    assert_eq!(
        map(&field, ""),
        located,
        "an encounter without a location is not on the map"
    );
    assert!(!map(&field, "").contains(&logged.no_location.to_string()));
    assert_eq!(
        field.map_points(&format!("bbox={SONORA_BOX}&zoom=8")),
        ids(&[logged.rescue_red, logged.orientation_closed])
    );
    assert_eq!(
        field.map_points(&format!("bbox={JUAREZ_BOX}&zoom=9")),
        ids(&[logged.juarez_uasc, logged.juarez_green])
    );
    assert_eq!(
        map(&field, "&team=sonora"),
        ids(&[logged.rescue_red, logged.orientation_closed])
    );
    assert_eq!(
        map(&field, "&service=rescue"),
        ids(&[logged.rescue_red, logged.juarez_uasc])
    );
    assert_eq!(
        map(&field, "&service=first_aid"),
        ids(&[logged.rescue_red, logged.juarez_green])
    );
    assert_eq!(map(&field, "&triage=red"), ids(&[logged.rescue_red]));
    assert_eq!(map(&field, "&triage=yellow"), ids(&[logged.juarez_uasc]));
    assert_eq!(
        map(&field, "&triage=green"),
        ids(&[logged.juarez_green]),
        "a withdrawn red casualty does not count"
    );
    assert_eq!(
        map(&field, "&status=closed"),
        ids(&[logged.orientation_closed])
    );
    assert_eq!(map(&field, "&uasc=true"), ids(&[logged.juarez_uasc]));
    assert_eq!(map(&field, "&uasc=false").len(), 3);
    assert_eq!(
        map(&field, "&from=2026-11-05T00:00:00Z&to=2026-11-21T00:00:00Z"),
        ids(&[logged.orientation_closed, logged.juarez_uasc])
    );
    assert_eq!(
        map(&field, "&from=2026-11-21T16:00:00Z"),
        ids(&[logged.juarez_green]),
        "from is inclusive, to the second"
    );
    assert_eq!(
        map(&field, "&to=2026-11-01T16:00:00Z"),
        BTreeSet::new(),
        "to is exclusive"
    );
    assert_eq!(
        map(&field, "&team=chihuahua&service=rescue&uasc=true"),
        ids(&[logged.juarez_uasc])
    );

    // A point carries what the map shows without opening the encounter.
    let body = field.ok(&format!("/v1/map?{everything}&triage=yellow"));
    let point = &body["points"][0];
    assert_eq!(point["triage"], "yellow");
    assert_eq!(point["uasc"], true);
    assert_eq!(point["status"], "open");
    assert_eq!(point["services"], serde_json::json!(["rescue"]));
    assert_eq!(point["occurred_at"], "2026-11-20T16:00:00Z");
    assert_eq!(body["total"], 1);
    assert_eq!(body["zoom"], 5);

    // An edit that changes a filtered value moves the encounter between answers.
    field.sonora.edit(
        logged.rescue_red,
        &["status=closed", "casualties.a.triage.category=green"],
    );
    field.sync_all();
    assert_eq!(
        map(&field, "&status=closed"),
        ids(&[logged.rescue_red, logged.orientation_closed])
    );
    assert_eq!(map(&field, "&triage=red"), BTreeSet::new());
    field.sonora.edit(logged.rescue_red, &["location=null"]);
    field.sync_all();
    assert_eq!(
        map(&field, "&team=sonora"),
        ids(&[logged.orientation_closed]),
        "a removed location leaves the map"
    );
}

#[test]
fn clusters_at_low_zoom_become_points_when_zoomed_in() {
    let mut field = Field::start();
    // 520 encounters in a 0.05° square near Sonoyta, and 3 at Juárez.
    for i in 0..520 {
        let nudge = i % 50;
        field.sonora.log(&encounter(
            SONOYTA,
            nudge,
            1 + (i % 28) as u32,
            &["rescue"],
            "",
        ));
    }
    for i in 0..3 {
        field
            .chihuahua
            .log(&encounter(JUAREZ, i * 50, 2, &["first_aid"], ""));
    }
    field.sync_all();

    for query in [
        format!("bbox={EVERYWHERE}&zoom=4"),
        // The same from the R*Tree rather than the pre-aggregated cells.
        format!("bbox={EVERYWHERE}&zoom=4&from=2026-01-01T00:00:00Z"),
    ] {
        let body = field.ok(&format!("/v1/map?{query}"));
        assert_eq!(body["total"], 523, "{query}");
        let clusters = body["clusters"].as_array().unwrap();
        let counts: BTreeSet<i64> = clusters
            .iter()
            .map(|c| c["count"].as_i64().unwrap())
            .collect();
        assert!(counts.contains(&520), "{query}: {body}");
        let sonoyta = clusters.iter().find(|c| c["count"] == 520).unwrap();
        let (lat, lon) = (
            sonoyta["lat"].as_f64().unwrap(),
            sonoyta["lon"].as_f64().unwrap(),
        );
        assert!(
            (lat - 31.8845).abs() < 0.01 && (lon + 112.8255).abs() < 0.01,
            "{sonoyta}"
        );
        let bbox: Vec<f64> = serde_json::from_value(sonoyta["bbox"].clone()).unwrap();
        assert!(bbox[0] <= lon && lon <= bbox[2] && bbox[1] <= lat && lat <= bbox[3]);
        let clustered: i64 = clusters.iter().map(|c| c["count"].as_i64().unwrap()).sum();
        let points = body["points"].as_array().unwrap().len() as i64;
        assert_eq!(clustered + points, 523, "{query}");
    }

    // Zoomed in on the three Juárez encounters, 0.05° apart: each alone in its cell.
    let body = field.ok("/v1/map?bbox=-106.5,31.6,-106.2,31.9&zoom=12");
    assert_eq!(body["points"].as_array().unwrap().len(), 3, "{body}");
    // Zoomed in far enough, everything in view is points.
    let body = field.ok("/v1/map?bbox=-112.86,31.85,-112.79,31.92&zoom=15");
    assert!(body["clusters"].as_array().unwrap().is_empty());
    assert_eq!(body["points"].as_array().unwrap().len(), 520);
    // At zoom 8 over Sonora there are more than 500 in view: clusters.
    let body = field.ok(&format!("/v1/map?bbox={SONORA_BOX}&zoom=8"));
    assert!(!body["clusters"].as_array().unwrap().is_empty());
    assert_eq!(body["total"], 520);
}

#[test]
fn a_field_device_is_refused_the_map_and_bad_parameters_are_named() {
    let field = Field::start();
    let endpoints = [format!("/v1/map?bbox={EVERYWHERE}&zoom=5")];
    for path in &endpoints {
        let (status, body) = get_json(
            &field.fixture.server.url,
            path,
            Some(&field.sonora.enrolled.token),
        )
        .unwrap();
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("coordinator devices"),
            "{body}"
        );
        let (status, _) = get_json(&field.fixture.server.url, path, None).unwrap();
        assert_eq!(status, 401, "{path}");
    }
    for (query, parameter) in [
        ("zoom=5", "bbox"),
        ("bbox=-120,20,-90", "bbox"),
        ("bbox=-90,20,-120,35&zoom=5", "bbox"),
        (&format!("bbox={EVERYWHERE}") as &str, "zoom"),
        (&format!("bbox={EVERYWHERE}&zoom=21"), "zoom"),
        (&format!("bbox={EVERYWHERE}&zoom=five"), "zoom"),
        (&format!("bbox={EVERYWHERE}&zoom=14"), "bbox"),
        (&format!("bbox={EVERYWHERE}&zoom=5&from=yesterday"), "from"),
        (
            &format!("bbox={EVERYWHERE}&zoom=5&to=2026-13-01T00:00:00Z"),
            "to",
        ),
        (&format!("bbox={EVERYWHERE}&zoom=5&triage=purple"), "triage"),
        (
            &format!("bbox={EVERYWHERE}&zoom=5&status=pending"),
            "status",
        ),
        (&format!("bbox={EVERYWHERE}&zoom=5&uasc=maybe"), "uasc"),
        (&format!("bbox={EVERYWHERE}&zoom=5&service=taxi"), "service"),
        (&format!("bbox={EVERYWHERE}&zoom=5&colour=red"), "colour"),
        (
            &format!("bbox={EVERYWHERE}&zoom=5&from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z"),
            "from",
        ),
    ] {
        let (status, body) = field.get(&format!("/v1/map?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(parameter),
            "{query}: {body}"
        );
    }
}

#[test]
fn stats_count_totals_and_every_breakdown_with_the_same_filters() {
    let mut field = Field::start();
    log_five(&mut field);
    let stats = field.ok("/v1/stats");
    assert_eq!(stats["period"], "day");
    assert_eq!(
        stats["totals"],
        serde_json::json!({"encounters": 5, "people": 11, "injured": 1, "uasc": 1, "deceased": 0, "rescues": 2, "rescued": 4})
    );
    let periods: Vec<(String, i64)> = stats["by_period"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["period"].as_str().unwrap().to_string(),
                row["encounters"].as_i64().unwrap(),
            )
        })
        .collect();
    let day = |d: &str| (d.to_string(), 1);
    assert_eq!(
        periods,
        [
            day("2026-11-01"),
            day("2026-11-10"),
            day("2026-11-20"),
            day("2026-11-21"),
            day("2026-11-22")
        ]
    );
    let pick = |rows: &serde_json::Value, key: &str| -> Vec<(String, i64, i64)> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row[key].as_str().unwrap_or("null").to_string(),
                    row["encounters"].as_i64().unwrap(),
                    row["people"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        pick(&stats["by_adm1"], "adm1"),
        [
            ("null".into(), 1, 1),
            ("MX-CHH".into(), 2, 4),
            ("MX-SON".into(), 2, 6)
        ]
    );
    assert_eq!(
        pick(&stats["by_triage"], "triage"),
        [
            ("red".into(), 1, 3),
            ("yellow".into(), 1, 1),
            ("green".into(), 1, 3),
            ("none".into(), 2, 4)
        ]
    );
    assert_eq!(
        pick(&stats["by_service"], "service"),
        [
            ("orientation".into(), 2, 4),
            ("rescue".into(), 2, 4),
            ("first_aid".into(), 2, 6)
        ]
    );
    assert_eq!(
        stats["by_sex_age"],
        serde_json::json!([
            {"sex": "f", "age_band": "18-59", "people": 3},
            {"sex": "f", "age_band": "60+", "people": 1},
            {"sex": "m", "age_band": "12-17", "people": 1},
            {"sex": "m", "age_band": "18-59", "people": 6},
        ])
    );
    assert_eq!(
        stats["by_nationality"],
        serde_json::json!([{"nationality": "HND", "people": 9}])
    );

    let weeks = field.ok("/v1/stats?period=week");
    let weeks: Vec<(&str, i64)> = weeks["by_period"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["period"].as_str().unwrap(),
                row["encounters"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        weeks,
        [("2026-10-26", 1), ("2026-11-09", 1), ("2026-11-16", 3)],
        "weeks start on Monday"
    );
    let months = field.ok("/v1/stats?period=month");
    assert_eq!(
        months["by_period"],
        serde_json::json!([{"period": "2026-11", "encounters": 5, "people": 11, "injured": 1, "uasc": 1, "deceased": 0, "rescues": 2, "rescued": 4}])
    );

    let encounters = |query: &str| {
        field.ok(&format!("/v1/stats?{query}"))["totals"]["encounters"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(encounters("team=chihuahua"), 3);
    assert_eq!(encounters("service=rescue"), 2);
    assert_eq!(encounters("triage=green"), 1);
    assert_eq!(encounters("service=rescue&triage=red"), 1);
    assert_eq!(
        encounters("service=first_aid&triage=yellow&period=month"),
        0
    );
    assert_eq!(
        pick(
            &field.ok("/v1/stats?service=rescue")["by_service"],
            "service"
        ),
        [("rescue".into(), 2, 4), ("first_aid".into(), 1, 3)],
        "under a service filter, the services given with it"
    );
    assert_eq!(encounters("status=closed"), 1);
    assert_eq!(encounters("uasc=true"), 1);
    assert_eq!(encounters(&format!("bbox={SONORA_BOX}")), 2);
    assert_eq!(
        encounters(&format!("bbox={EVERYWHERE}")),
        4,
        "a box leaves out encounters without a location"
    );
    assert_eq!(
        encounters(&format!("bbox={EVERYWHERE}&team=chihuahua&triage=yellow")),
        1
    );
    // Partial days at both ends are counted to the second, whole days and months from the
    // aggregates; every way of cutting the range agrees.
    for period in ["day", "week", "month"] {
        assert_eq!(
            encounters(&format!(
                "period={period}&from=2026-11-01T12:00:00Z&to=2026-11-21T17:00:00Z"
            )),
            4
        );
        assert_eq!(
            encounters(&format!(
                "period={period}&from=2026-11-01T16:00:01Z&to=2026-11-21T16:00:00Z"
            )),
            2
        );
        assert_eq!(
            encounters(&format!(
                "period={period}&service=rescue&from=2026-11-01T12:00:00Z&to=2026-11-21T17:00:00Z"
            )),
            2
        );
        assert_eq!(
            encounters(&format!(
                "period={period}&triage=green&from=2026-11-01T12:00:00Z&to=2026-11-21T17:00:00Z"
            )),
            1
        );
        assert_eq!(
            encounters(&format!(
                "period={period}&from=2026-10-15T05:00:00Z&to=2026-12-03T00:00:00Z"
            )),
            5
        );
        assert_eq!(
            encounters(&format!(
                "period={period}&from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z"
            )),
            1
        );
        assert_eq!(
            encounters(&format!(
                "period={period}&from=2026-11-20T15:00:00Z&to=2026-11-20T17:00:00Z"
            )),
            1
        );
        assert_eq!(
            encounters(&format!("period={period}&to=2026-11-20T16:00:00Z")),
            2
        );
        assert_eq!(
            encounters(&format!("period={period}&from=2026-11-20T16:00:00Z")),
            3
        );
        assert_eq!(
            encounters(&format!(
                "period={period}&bbox={EVERYWHERE}&from=2026-11-20T16:00:00Z"
            )),
            2
        );
    }
    for (query, parameter) in [
        ("/v1/hotspots?zoom=13", "bbox"),
        ("/v1/hotspots?zoom=21", "zoom"),
        ("/v1/hotspots?bbox=-120,20,-90,35&zoom=14", "bbox"),
        ("/v1/stats?bbox=1,2", "bbox"),
        ("/v1/stats?uasc=1", "uasc"),
    ] {
        let (status, body) = field.get(query);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(parameter),
            "{query}: {body}"
        );
    }
    let (status, body) = field.get("/v1/stats?period=year");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("period"), "{body}");
}

#[test]
fn hotspots_merge_touching_dense_cells_into_polygons() {
    let mut field = Field::start();
    // Zoom 8 cells are 0.35° wide; a cell edge runs at longitude -112.8515625, just west of
    // Sonoyta: six rescues on each side make one hotspot of two cells.
    for nudge in 0..6 {
        field
            .sonora
            .log(&encounter(SONOYTA, nudge, 3, &["rescue"], ""));
        field.sonora.log(&encounter(
            SONOYTA,
            -10 - nudge,
            4,
            &["rescue", "first_aid"],
            "",
        ));
    }
    // Five encounters with someone injured at Piedras Negras make another; three rescues at
    // Juárez are too few, and orientation without injuries does not count.
    let injured = r#","counts":{"m":{"18-59":1},"injured":1}"#;
    for nudge in 0..5 {
        field.chihuahua.log(&encounter(
            PIEDRAS_NEGRAS,
            nudge,
            5,
            &["first_aid"],
            injured,
        ));
    }
    for nudge in 0..3 {
        field
            .chihuahua
            .log(&encounter(JUAREZ, nudge, 6, &["rescue"], ""));
    }
    for nudge in 0..10 {
        field
            .chihuahua
            .log(&encounter(JUAREZ, nudge, 6, &["orientation"], ""));
    }
    field.sync_all();

    let body = field.ok("/v1/hotspots?zoom=8");
    assert_eq!(body["type"], "FeatureCollection");
    let features = body["features"].as_array().unwrap();
    let summary: Vec<(i64, i64, i64, i64)> = features
        .iter()
        .map(|f| {
            let p = &f["properties"];
            (
                p["count"].as_i64().unwrap(),
                p["rescues"].as_i64().unwrap(),
                p["injured"].as_i64().unwrap(),
                p["cells"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [(12, 12, 0, 2), (5, 0, 5, 1)], "{body}");
    let sonoyta = &features[0]["geometry"];
    assert_eq!(sonoyta["type"], "Polygon");
    let ring = sonoyta["coordinates"][0].as_array().unwrap();
    let longitudes: Vec<f64> = ring.iter().map(|c| c[0].as_f64().unwrap()).collect();
    let west = longitudes.iter().cloned().fold(f64::MAX, f64::min);
    let east = longitudes.iter().cloned().fold(f64::MIN, f64::max);
    assert!(
        (east - west - 2.0 * 0.3515625).abs() < 1e-9,
        "two cells wide: {ring:?}"
    );
    assert!(west < -112.865 && east > -112.845);

    // The filters apply: one team, one place, one time range.
    let counts = |query: &str| -> Vec<i64> {
        field.ok(&format!("/v1/hotspots?{query}"))["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["properties"]["count"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(counts("zoom=8&team=chihuahua"), [5]);
    assert_eq!(counts(&format!("zoom=8&bbox={SONORA_BOX}")), [12]);
    assert_eq!(
        counts(&format!("bbox={SONORA_BOX}&zoom=8&to=2026-11-04T00:00:00Z")),
        [6]
    );
    assert_eq!(
        counts("zoom=8&service=first_aid"),
        [6],
        "Piedras Negras' 5 are below the mean of the occupied cells (5.5)"
    );
    assert_eq!(
        counts("zoom=8&from=2026-11-06T00:00:00Z"),
        Vec::<i64>::new()
    );
}

#[test]
fn exports_are_minimised_generalised_suppressed_and_audited() {
    let mut field = Field::start();
    let logged = log_five(&mut field);
    // A third Sonora encounter: 3 encounters, 3 women and 6 men in Sonora in November.
    field.sonora.log(&encounter(
        SONOYTA,
        20,
        12,
        &["humanitarian_aid"],
        r#","adm1":"MX-SON""#,
    ));
    field.sync_all();

    let (status, content_type, disposition, csv) =
        field.export("format=csv&purpose=monthly%20report%20to%20INM");
    assert_eq!(status, 200, "{csv}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    assert!(
        disposition.starts_with("attachment; filename=\"auxilio-")
            && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "id,team,occurred_at,status,services,terrain,adm1,people,injured,uasc,deceased,triage,has_uasc,lat,lon"
    );
    assert_eq!(lines.len(), 7, "a header and one row per encounter: {csv}");
    assert!(
        !csv.contains("secret note"),
        "notes never leave in an export"
    );
    assert!(
        !csv.contains("31.86") && !csv.contains("112.85"),
        "exact coordinates never leave"
    );
    let red = lines
        .iter()
        .find(|line| line.starts_with(&logged.rescue_red.to_string()))
        .unwrap();
    assert_eq!(
        red.split(',').skip(1).collect::<Vec<_>>(),
        [
            "sonora",
            "2026-11-01T16:00:00Z",
            "open",
            "rescue;first_aid",
            "desert",
            "MX-SON",
            "3",
            "0",
            "0",
            "0",
            "red",
            "false",
            "31.9",
            "-112.8"
        ]
    );
    let unlocated = lines
        .iter()
        .find(|line| line.starts_with(&logged.no_location.to_string()))
        .unwrap();
    assert!(unlocated.ends_with(",,"), "{unlocated}");

    let (status, content_type, _, geojson) =
        field.export("format=geojson&purpose=map%20for%20partners&team=chihuahua");
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/geo+json");
    let geojson: serde_json::Value = serde_json::from_str(&geojson).unwrap();
    let features = geojson["features"].as_array().unwrap();
    assert_eq!(features.len(), 3, "the filters apply to exports");
    let uasc = features
        .iter()
        .find(|f| f["properties"]["id"] == logged.juarez_uasc.to_string())
        .unwrap();
    assert_eq!(
        uasc["geometry"]["coordinates"],
        serde_json::json!([-106.4, 31.7])
    );
    assert_eq!(uasc["properties"]["has_uasc"], true);
    assert_eq!(uasc["properties"]["triage"], "yellow");
    assert!(
        !uasc["properties"]
            .as_object()
            .unwrap()
            .contains_key("notes")
    );
    assert!(
        features.iter().any(|f| f["geometry"].is_null()),
        "an encounter without a location has no geometry"
    );

    let (status, _, _, hxl) = field.export("format=hxl&purpose=HDX%20monthly%20figures");
    assert_eq!(status, 200, "{hxl}");
    let rows: Vec<Vec<&str>> = hxl.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0][0], "Date");
    assert_eq!(
        rows[1],
        [
            "#date+occurred",
            "#adm1+code",
            "#geo+lat",
            "#geo+lon",
            "#org",
            "#activity",
            "#country+code+origin",
            "#output+encounters",
            "#reached+total",
            "#reached+f",
            "#reached+m",
            "#reached+children",
            "#reached+f+children",
            "#reached+m+children",
            "#reached+children+unaccompanied",
            "#affected+injured"
        ],
        "the second row is the HXL hashtags"
    );
    let sonora = rows.iter().find(|r| r[4] == "sonora").unwrap();
    assert_eq!(sonora[0], "2026-11");
    assert_eq!(sonora[1], "MX-SON");
    assert_eq!(sonora[6], "HND", "9 people share the main origin");
    assert_eq!(sonora[7], "<5", "3 encounters are suppressed");
    assert_eq!(sonora[8], "9", "9 people are shown");
    assert_eq!(sonora[9], "<5", "3 women are suppressed");
    assert_eq!(sonora[10], "6", "6 men are shown");
    assert_eq!(sonora[11], "0", "zero is not suppressed");
    let chihuahua_unknown_adm1 = rows
        .iter()
        .find(|r| r[4] == "chihuahua" && r[1].is_empty())
        .unwrap();
    assert_eq!(
        chihuahua_unknown_adm1[6], "",
        "an origin shared by fewer than 5 is not named"
    );
    assert!(
        rows[2..]
            .iter()
            .all(|r| r[2].is_empty() || r[2].split('.').nth(1).is_some_and(|d| d.len() == 1)),
        "aggregate coordinates are generalised too: {hxl}"
    );

    // Every export is in the audit log, with its purpose, format, filters and size.
    let audit = field.export_audit();
    assert_eq!(audit.len(), 3);
    assert_eq!(audit[0].0, field.coordinator.enrolled.device_id.to_string());
    assert_eq!(audit[0].1["purpose"], "monthly report to INM");
    assert_eq!(audit[0].1["format"], "csv");
    assert_eq!(audit[0].1["rows"], 6);
    assert_eq!(audit[1].1["purpose"], "map for partners");
    assert_eq!(
        audit[1].1["filters"],
        serde_json::json!({"team": "chihuahua"})
    );
    assert_eq!(audit[2].1["format"], "hxl");

    // No purpose, no export, and nothing recorded.
    for (query, parameter) in [
        ("format=csv", "purpose"),
        ("format=csv&purpose=", "purpose"),
        ("format=csv&purpose=%20%20", "purpose"),
        ("format=csv&purpose=ab", "purpose"),
        ("purpose=monthly%20report", "format"),
        ("format=xlsx&purpose=monthly%20report", "format"),
        ("format=csv&purpose=monthly%20report&period=week", "period"),
        ("format=hxl&purpose=monthly%20report&period=year", "period"),
        ("format=csv&purpose=monthly%20report&triage=blue", "triage"),
    ] {
        let (status, _, _, body) = field.export(query);
        assert_eq!(status, 400, "{query}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(parameter),
            "{query}: {body}"
        );
    }
    let (_, _, _, body) = field.export("format=csv");
    assert!(body.contains("a declared purpose is required"), "{body}");
    assert_eq!(field.export_audit().len(), 3);
}

#[test]
fn reindex_rebuilds_the_map_and_stats_tables_to_the_same_answers() {
    let mut field = Field::start();
    let logged = log_five(&mut field);
    for i in 0..510 {
        field.sonora.log(&encounter(
            SONOYTA,
            i % 40,
            1 + (i % 28) as u32,
            &["rescue"],
            "",
        ));
    }
    field.sync_all();
    // Edits move encounters between aggregate rows: the incremental path subtracts and adds.
    field
        .sonora
        .edit(logged.rescue_red, &["status=closed", "location.lat=31.5"]);
    field.chihuahua.edit(
        logged.juarez_green,
        &["services+=rescue", "counts.injured=2"],
    );
    field.sync_all();

    let queries = [
        format!("/v1/map?bbox={EVERYWHERE}&zoom=4"),
        format!("/v1/map?bbox={EVERYWHERE}&zoom=9&service=rescue"),
        format!("/v1/map?bbox={SONORA_BOX}&zoom=12&from=2026-11-05T00:00:00Z"),
        format!("/v1/map?bbox={EVERYWHERE}&zoom=5&status=closed"),
        "/v1/stats".to_string(),
        "/v1/stats?period=month&from=2026-10-15T05:00:00Z".to_string(),
        format!("/v1/stats?bbox={SONORA_BOX}&period=week"),
        "/v1/hotspots?zoom=8".to_string(),
    ];
    let before: Vec<serde_json::Value> = queries.iter().map(|q| field.ok(q)).collect();
    assert_eq!(before[4]["totals"]["encounters"], 515);
    assert!(!before[0]["clusters"].as_array().unwrap().is_empty());

    let conn =
        rusqlite::Connection::open(field.fixture.data.path().join("auxilio.sqlite")).unwrap();
    conn.execute_batch(
        "DELETE FROM encounter_facts; DELETE FROM encounter_nationalities; DELETE FROM encounter_locations;
         DELETE FROM map_cells; DELETE FROM stats_cells; DELETE FROM stats_nationalities;",
    )
    .unwrap();
    assert_eq!(field.ok("/v1/stats")["totals"]["encounters"], 0);

    let data = field.fixture.data.path().to_str().unwrap().to_string();
    let output = run_auxilio(
        field.fixture.devices.path(),
        &["reindex", "--json", "--data", &data],
        None,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let after: Vec<serde_json::Value> = queries.iter().map(|q| field.ok(q)).collect();
    for ((query, before), after) in queries.iter().zip(&before).zip(&after) {
        assert_eq!(before, after, "{query}");
    }

    // Reindexing again, with the tables in place, changes nothing either.
    let output = run_auxilio(
        field.fixture.devices.path(),
        &["reindex", "--json", "--data", &data],
        None,
    );
    assert!(output.status.success());
    assert_eq!(field.ok(&queries[0]), before[0]);
    assert_eq!(field.ok(&queries[4]), before[4]);
}

/// Every row of the map and stats aggregates, as text, in key order.
fn aggregate_rows(data: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(data.join("auxilio.sqlite")).unwrap();
    let mut rows = Vec::new();
    for table in ["map_cells", "stats_cells", "stats_nationalities"] {
        let mut statement = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = statement.column_count();
        let mut query = statement.query([]).unwrap();
        while let Some(row) = query.next().unwrap() {
            let values: Vec<String> = (0..columns)
                .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                .collect();
            rows.push(format!("{table} {}", values.join(" ")));
        }
    }
    rows.sort();
    rows
}

#[test]
fn a_bulk_import_ends_with_the_same_aggregates_as_syncing() {
    let mut field = Field::start();
    for i in 0..30 {
        let extra = if i % 3 == 0 {
            r#","status":"closed","adm1":"MX-SON""#
        } else {
            ""
        };
        field.sonora.log(&encounter(
            SONOYTA,
            i,
            1 + (i % 5) as u32,
            &["rescue", "orientation"],
            extra,
        ));
    }
    // The same changes, stored through `ledger::import` in another data directory with the
    // aggregates recomputed at the end, and through a normal sync.
    let request = field.sonora.store.sync_request().unwrap();
    let imported = tempfile::tempdir().unwrap();
    add_team(imported.path(), "sonora");
    let database = auxilio_server::Database::open(imported.path()).unwrap();
    let device = auxilio_server::directory::Device {
        id: field.sonora.enrolled.device_id,
        team: "sonora".into(),
        role: Role::Field,
        label: String::new(),
        enrolled_at: String::new(),
        revoked_at: None,
        awaiting_approval: false,
    };
    let rejected = database
        .write(|conn| auxilio_server::ledger::import(conn, &device, &request))
        .unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    database
        .write(|conn| auxilio_server::index::facts::recompute_aggregates(conn))
        .unwrap();
    field.sync_all();
    let synced = aggregate_rows(field.fixture.data.path());
    assert!(synced.len() > 30, "{synced:?}");
    assert_eq!(aggregate_rows(imported.path()), synced);
}
