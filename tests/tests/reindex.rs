//! The stored changes are the only copy that matters: `auxilio reindex` rebuilds every merged
//! document and index column from them, and the API answers exactly as before.

use auxilio_server::directory::Role;
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, TestServer, add_team, enroll, get_json, run_auxilio,
};

#[test]
fn reindex_rebuilds_documents_and_indexes_from_stored_changes_alone() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    add_team(data.path(), "sonora");
    let mut one = Device::new(
        dir.path(),
        "one",
        &server.url,
        &enroll(data.path(), "sonora", Role::Field),
    );
    let mut two = Device::new(
        dir.path(),
        "two",
        &server.url,
        &enroll(data.path(), "sonora", Role::Field),
    );
    let coordinator = enroll(data.path(), "sonora", Role::Coordinator);
    let shared = one.log(EXAMPLE_ENCOUNTER);
    for _ in 0..5 {
        two.log(r#"{"services":["orientation"],"location":{"lat":25.8,"lon":-97.5},"counts":{"f":{"5-11":2}}}"#);
    }
    one.sync().unwrap();
    two.sync().unwrap();
    one.edit(shared, &["counts.m.18-59=5"]);
    two.edit(shared, &["counts.m.18-59=6", "status=closed"]);
    one.sync().unwrap();
    two.sync().unwrap();

    let snapshot = |path: &str| {
        get_json(&server.url, path, Some(&coordinator.token))
            .unwrap()
            .1
    };
    let list_before = snapshot("/v1/encounters");
    let detail_before = snapshot(&format!("/v1/encounters/{shared}"));
    assert_eq!(list_before["count"], 6);
    assert_eq!(detail_before["conflicts"].as_array().unwrap().len(), 1);

    let conn = rusqlite::Connection::open(data.path().join("auxilio.sqlite")).unwrap();
    conn.execute_batch("DELETE FROM encounters; DELETE FROM encounter_services;")
        .unwrap();
    assert_eq!(snapshot("/v1/encounters")["count"], 0);

    let output = run_auxilio(
        dir.path(),
        &["reindex", "--json", "--data", data.path().to_str().unwrap()],
        None,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["encounters"], 6);
    assert_eq!(report["changes"], 8);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("reindexed 6/6"),
        "progress is shown"
    );

    assert_eq!(snapshot("/v1/encounters"), list_before);
    assert_eq!(snapshot(&format!("/v1/encounters/{shared}")), detail_before);
    let river = snapshot("/v1/encounters?bbox=-98,25,-97,26");
    assert_eq!(
        river["count"], 5,
        "the location index answers a bounding box"
    );
    let (status, body) = get_json(
        &server.url,
        "/v1/encounters?bbox=-98,25",
        Some(&coordinator.token),
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("bbox"));
}
