//! The audit log (issue 5) as an operator and an auditor meet it on the command line: it cannot
//! be edited through SQLite, an edit made around that shows up in `auxilio admin audit verify`,
//! and `auxilio admin audit export` writes it out for the auditor.

use auxilio_tests::run_auxilio;

fn admin(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut full = vec!["admin", "--data", data.to_str().unwrap()];
    full.extend_from_slice(args);
    run_auxilio(data, &full, None)
}

#[test]
fn an_edit_to_the_audit_log_is_refused_and_one_forced_around_the_server_is_detected() {
    let data = tempfile::tempdir().unwrap();
    assert!(
        admin(data.path(), &["team", "add", "sonora"])
            .status
            .success()
    );
    for label in ["phone 1", "phone 2", "phone 3"] {
        let enrolled = admin(
            data.path(),
            &[
                "device", "enroll", "--team", "sonora", "--role", "field", "--label", label,
            ],
        );
        assert!(enrolled.status.success());
    }
    let verified = admin(data.path(), &["audit", "verify"]);
    assert!(verified.status.success(), "{verified:?}");
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["chained_rows"], 4);

    let csv = admin(data.path(), &["audit", "export", "--format", "csv"]);
    assert!(csv.status.success());
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert_eq!(csv.lines().count(), 5, "a header and four rows: {csv}");
    assert!(csv.lines().nth(2).unwrap().contains("device.enroll"));

    let file = data.path().join(auxilio_server::database::DATABASE_FILE);
    let conn = rusqlite::Connection::open(&file).unwrap();
    let refused = conn
        .execute(
            "UPDATE audit_log SET actor = 'someone else' WHERE seq = 2",
            [],
        )
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    assert!(
        conn.execute("DELETE FROM audit_log WHERE seq = 2", [])
            .is_err()
    );
    // Someone with the file and the sqlite3 shell removes the guard and rewrites a row.
    conn.execute_batch(
        "DROP TRIGGER audit_log_is_append_only_update;
         UPDATE audit_log SET detail = '{\"device\":\"nobody\"}' WHERE seq = 3;",
    )
    .unwrap();
    drop(conn);
    let verified = admin(data.path(), &["audit", "verify"]);
    assert!(!verified.status.success());
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["first_broken_seq"], 3);
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(stderr.contains("altered outside the server"), "{stderr}");
}
