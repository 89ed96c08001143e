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

/// A data directory inside a temporary directory, so the audit key made beside it
/// (`<data>.audit-key`) goes away with the test.
fn data_dir(tmp: &tempfile::TempDir) -> std::path::PathBuf {
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    data
}

fn admin_ok(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    let output = admin(data, args);
    assert!(
        output.status.success(),
        "auxilio admin {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A team and `devices` enrolled devices: `1 + devices` audit rows.
fn log_with_rows(data: &std::path::Path, devices: usize) {
    admin_ok(data, &["team", "add", "sonora"]);
    for n in 0..devices {
        let label = format!("phone {n}");
        admin_ok(
            data,
            &[
                "device", "enroll", "--team", "sonora", "--role", "field", "--label", &label,
            ],
        );
    }
}

/// A data directory whose log holds a team and `devices` enrolments and verifies (the positive
/// control before each tampering).
fn intact_log(tmp: &tempfile::TempDir, devices: usize) -> std::path::PathBuf {
    let data = data_dir(tmp);
    log_with_rows(&data, devices);
    let intact = admin(&data, &["audit", "verify"]);
    assert!(intact.status.success(), "{}", verify_report(&intact));
    data
}

/// Runs `audit verify ARGS`, which must fail: its JSON report and its message.
fn failed_verify(data: &std::path::Path, args: &[&str]) -> (serde_json::Value, String) {
    let mut full = vec!["audit", "verify"];
    full.extend_from_slice(args);
    let verified = admin(data, &full);
    let report = verify_report(&verified);
    assert!(!verified.status.success(), "{report}");
    (
        report,
        String::from_utf8_lossy(&verified.stderr).into_owned(),
    )
}

fn verify_report(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "verify printed no JSON: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn open_database_file(data: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join(auxilio_server::database::DATABASE_FILE)).unwrap()
}

/// The plain SHA-256 chain of the first audit log (issue 5): what anyone holding only the
/// database file can compute.
fn plain_sha256_chain(previous: Option<&[u8]>, fields: [&str; 4]) -> Vec<u8> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(previous.unwrap_or(&[]));
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().to_vec()
}

#[test]
fn admin_commands_beside_a_running_server_keep_the_audit_chain_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(&tmp);
    admin_ok(&data, &["team", "add", "sonora"]);
    let enrolled = admin_ok(
        &data,
        &[
            "device", "enroll", "--team", "sonora", "--role", "field", "--json",
        ],
    );
    let enrolled: serde_json::Value = serde_json::from_slice(&enrolled.stdout).unwrap();
    let token = enrolled["token"].as_str().unwrap().to_string();
    let server = auxilio_tests::ServerProcess::spawn(&data);
    let url = server.url.clone();
    // Each whoami is a sign-in row the server writes while the command line enrols devices.
    let hammer = std::thread::spawn(move || {
        for _ in 0..60 {
            let (status, body) = auxilio_tests::get_json(&url, "/v1/whoami", Some(&token)).unwrap();
            assert_eq!(status, 200, "{body}");
        }
    });
    let data_arg = data.to_str().unwrap();
    let enrolments: Vec<_> = (0..15)
        .map(|n| {
            let label = format!("phone {n}");
            auxilio_tests::spawn_auxilio(
                &data,
                &[
                    "admin", "--data", data_arg, "device", "enroll", "--team", "sonora", "--role",
                    "field", "--label", &label,
                ],
            )
        })
        .collect();
    for child in enrolments {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "an enrolment beside the server failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    hammer.join().unwrap();
    let verified = admin(&data, &["audit", "verify"]);
    let report = verify_report(&verified);
    assert!(verified.status.success(), "{report}");
    assert_eq!(report["chained_rows"], 2 + 15 + 60, "{report}");
    server.kill();
}

/// `auxilio admin ARGS --json` as a child process beside the running server.
fn spawn_admin(data: &std::path::Path, args: &[&str]) -> std::process::Child {
    let mut full = vec!["admin", "--data", data.to_str().unwrap(), "--json"];
    full.extend_from_slice(args);
    auxilio_tests::spawn_auxilio(data, &full)
}

/// The audit log's rows as `audit export --format csv` writes them: how many of each action.
fn audit_actions(data: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let csv = admin_ok(data, &["audit", "export", "--format", "csv"]);
    let csv = String::from_utf8(csv.stdout).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = header.iter().position(|name| *name == "action").unwrap();
    let mut actions = std::collections::BTreeMap::new();
    for line in lines {
        let action = line.split(',').nth(column).unwrap().to_string();
        *actions.entry(action).or_insert(0) += 1;
    }
    actions
}

#[test]
fn admin_commands_interleaved_with_audited_requests_keep_the_audit_chain_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(&tmp);
    admin_ok(&data, &["team", "add", "sonora"]);
    let enrol = |label: &str| -> serde_json::Value {
        let output = admin_ok(
            &data,
            &[
                "device", "enroll", "--team", "sonora", "--role", "field", "--label", label,
                "--json",
            ],
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let phone = enrol("phone");
    let lost = enrol("lost phone");
    let leaked = enrol("leaked phone");
    let server = auxilio_tests::ServerProcess::spawn(&data);
    let url = server.url.clone();

    // The phone logs encounters and syncs (no audit rows): some to read, some to purge.
    let enrolled = auxilio_server::directory::Enrolled {
        token: phone["token"].as_str().unwrap().to_string(),
        device_id: phone["device_id"].as_str().unwrap().parse().unwrap(),
        team: "sonora".into(),
        role: auxilio_server::directory::Role::Field,
    };
    let mut device = auxilio_tests::Device::new(tmp.path(), "phone", &url, &enrolled);
    let ids: Vec<_> = (0..6)
        .map(|_| device.log(auxilio_tests::EXAMPLE_ENCOUNTER))
        .collect();
    device.sync().unwrap();
    let (read, purged) = ids.split_at(3);
    let read: Vec<String> = read.iter().map(ToString::to_string).collect();

    // The phone's audited requests, while the command line writes beside the server: a sign-in,
    // a list and a record read each round, and a token rotation (then used) every fifth.
    const ROUNDS: usize = 20;
    const ROTATIONS: usize = 4;
    let mut token = enrolled.token.clone();
    let requests = std::thread::spawn(move || {
        for round in 0..ROUNDS {
            let (status, body) = auxilio_tests::get_json(&url, "/v1/whoami", Some(&token)).unwrap();
            assert_eq!(status, 200, "whoami: {body}");
            let (status, body) =
                auxilio_tests::get_json(&url, "/v1/encounters", Some(&token)).unwrap();
            assert_eq!(status, 200, "list: {body}");
            let path = format!("/v1/encounters/{}", read[round % read.len()]);
            let (status, body) = auxilio_tests::get_json(&url, &path, Some(&token)).unwrap();
            assert_eq!(status, 200, "read: {body}");
            if round % (ROUNDS / ROTATIONS) == 0 {
                let (status, body) = auxilio_tests::post_json(
                    &url,
                    "/v1/token/rotate",
                    Some(&token),
                    &serde_json::json!({}),
                );
                assert_eq!(status, 200, "rotate: {body}");
                token = body["token"].as_str().unwrap().to_string();
            }
        }
    });
    let mut commands = Vec::new();
    for n in 0..4 {
        commands.push(spawn_admin(&data, &["team", "add", &format!("team-{n}")]));
        commands.push(spawn_admin(
            &data,
            &[
                "device",
                "enroll",
                "--team",
                "sonora",
                "--role",
                "field",
                "--label",
                &format!("new phone {n}"),
            ],
        ));
    }
    for _ in 0..2 {
        commands.push(spawn_admin(
            &data,
            &["device", "rotate", leaked["device_id"].as_str().unwrap()],
        ));
    }
    commands.push(spawn_admin(
        &data,
        &["device", "revoke", lost["device_id"].as_str().unwrap()],
    ));
    for id in purged {
        commands.push(spawn_admin(
            &data,
            &["purge", &id.to_string(), "--reason", "duplicate record"],
        ));
    }
    for child in commands {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "a command beside the server failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    requests.join().unwrap();

    let verified = admin(&data, &["audit", "verify"]);
    let report = verify_report(&verified);
    assert!(verified.status.success(), "{report}");
    let expected: std::collections::BTreeMap<String, usize> = [
        ("team.add", 1 + 4),
        ("device.enroll", 3 + 4),
        ("device.rotate", 2),
        ("device.revoke", 1),
        ("encounter.purge", 3),
        ("auth.sign_in", ROUNDS),
        ("encounter.list", ROUNDS),
        ("encounter.read", ROUNDS),
        ("device.rotate_self", ROTATIONS),
        // The phone's first sync registers its relay key.
        ("device.relay_key", 1),
    ]
    .into_iter()
    .map(|(action, n)| (action.to_string(), n))
    .collect();
    assert_eq!(
        audit_actions(&data),
        expected,
        "every row is in the log once"
    );
    let rows: usize = expected.values().sum();
    assert_eq!(report["chained_rows"], rows, "{report}");
    server.kill();
}

#[test]
fn verify_names_every_row_edited_around_the_server_not_only_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let data = intact_log(&tmp, 4);
    let conn = open_database_file(&data);
    conn.execute_batch(
        "DROP TRIGGER audit_log_is_append_only_update;
         UPDATE audit_log SET detail = '{\"team\":\"elsewhere\"}' WHERE seq = 2;
         UPDATE audit_log SET actor = 'someone else' WHERE seq = 4;",
    )
    .unwrap();
    drop(conn);
    let (report, message) = failed_verify(&data, &[]);
    assert_eq!(report["broken_seqs"], serde_json::json!([2, 4]), "{report}");
    assert!(message.contains("broken rows: 2, 4"), "{message}");
}

#[test]
fn verify_detects_rows_deleted_from_the_end_of_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let data = intact_log(&tmp, 4);
    // Someone with the file removes the last two rows: what is left still chains.
    let conn = open_database_file(&data);
    conn.execute_batch(
        "DROP TRIGGER audit_log_is_append_only_delete;
         DELETE FROM audit_log WHERE seq >= 4;",
    )
    .unwrap();
    drop(conn);
    let (report, message) = failed_verify(&data, &[]);
    assert_eq!(
        report["missing_seqs"],
        serde_json::json!([[4, 5]]),
        "{report}"
    );
    assert!(message.contains("missing rows: 4-5"), "{message}");
}

#[test]
fn a_row_appended_by_someone_without_the_audit_key_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let data = intact_log(&tmp, 2);
    // The forger holds the database file only: it chains a made-up revocation onto the last
    // row with the plain SHA-256 that the log's code describes.
    let conn = open_database_file(&data);
    let previous: Vec<u8> = conn
        .query_row(
            "SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let fields = [
        "2026-11-28T00:00:00Z",
        "admin-cli",
        "device.revoke",
        "{\"device\":\"someone\"}",
    ];
    let hash = plain_sha256_chain(Some(&previous), fields);
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![fields[0], fields[1], fields[2], fields[3], hash],
    )
    .unwrap();
    drop(conn);
    let (report, _) = failed_verify(&data, &[]);
    assert_eq!(report["broken_seqs"], serde_json::json!([4]), "{report}");
}

#[test]
fn an_anchored_head_detects_a_log_rewritten_and_chained_again_without_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = intact_log(&tmp, 3);
    let head = admin_ok(&data, &["audit", "head"]);
    let anchor = String::from_utf8(head.stdout).unwrap().trim().to_string();
    assert!(anchor.starts_with("4:"), "{anchor}");
    let anchored = admin(&data, &["audit", "verify", "--expect-head", &anchor]);
    assert!(anchored.status.success(), "{}", verify_report(&anchored));

    // Someone with the database file (not the key) rewrites row 2, chains every row again
    // with plain SHA-256, moves the point where keyed rows begin past the end and removes the
    // key file: the log now checks out on its own.
    let conn = open_database_file(&data);
    conn.execute_batch(
        "DROP TRIGGER audit_log_is_append_only_update;
         DROP TRIGGER audit_chain_is_fixed_update;
         UPDATE audit_log SET detail = '{\"team\":\"elsewhere\"}' WHERE seq = 2;
         UPDATE audit_chain SET mac_from_seq = 5;",
    )
    .unwrap();
    let rows: Vec<(i64, [String; 4])> = conn
        .prepare("SELECT seq, at, actor, action, detail FROM audit_log ORDER BY seq")
        .unwrap()
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                [row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?],
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut previous: Option<Vec<u8>> = None;
    for (seq, fields) in rows {
        let fields = [&*fields[0], &*fields[1], &*fields[2], &*fields[3]];
        let hash = plain_sha256_chain(previous.as_deref(), fields);
        conn.execute(
            "UPDATE audit_log SET hash = ?2 WHERE seq = ?1",
            rusqlite::params![seq, hash],
        )
        .unwrap();
        previous = Some(hash);
    }
    drop(conn);
    std::fs::remove_file(tmp.path().join("data.audit-key")).unwrap();
    let unanchored = admin(&data, &["audit", "verify"]);
    assert!(
        unanchored.status.success(),
        "without an anchor the rewrite is invisible: {}",
        verify_report(&unanchored)
    );
    let (report, message) = failed_verify(&data, &["--expect-head", &anchor]);
    assert_eq!(report["expected_head"]["holds"], false, "{report}");
    assert!(message.contains("anchored head row 4"), "{message}");
}
