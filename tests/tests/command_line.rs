//! The `auxilio` command as a person uses it: the README walk-through, `--help` with examples,
//! `--json` output, and errors that say what went wrong and what to do.

use std::path::Path;

use auxilio_tests::{EXAMPLE_ENCOUNTER, ServerProcess, auxilio_ok as ok, get_json, run_auxilio};

fn fails(cwd: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let output = run_auxilio(cwd, args, stdin);
    assert!(!output.status.success(), "auxilio {args:?} should fail");
    String::from_utf8(output.stderr).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    assert_eq!(text.trim().lines().count(), 1, "one JSON line: {text}");
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn every_command_has_help_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["admin"],
        &["admin", "team"],
        &["admin", "team", "add"],
        &["admin", "team", "list"],
        &["admin", "device"],
        &["admin", "device", "enroll"],
        &["admin", "device", "revoke"],
        &["admin", "device", "list"],
        &["reindex"],
        &["device"],
        &["device", "--store", "x.db", "init"],
        &["device", "--store", "x.db", "log"],
        &["device", "--store", "x.db", "edit"],
        &["device", "--store", "x.db", "list"],
        &["device", "--store", "x.db", "show"],
        &["device", "--store", "x.db", "sync"],
        &["device", "--store", "x.db", "relay"],
        &["device", "--store", "x.db", "vault"],
        &["admin", "vault-key"],
        &["admin", "vault-key", "add"],
        &["admin", "vault-key", "list"],
        &["admin", "vault-key", "retire"],
        &["vault"],
        &["vault", "keygen"],
        &["vault", "open"],
        &["vault", "reseal"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let help = ok(dir.path(), &args, None);
        assert!(
            help.contains("Example"),
            "auxilio {} --help has no example:\n{help}",
            command.join(" ")
        );
    }
}

#[test]
fn the_readme_walkthrough_works() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ok(cwd, &["admin", "team", "add", "sonora"], None);
    let team = json(&ok(
        cwd,
        &["admin", "--json", "team", "add", "chihuahua"],
        None,
    ));
    assert_eq!(team["team"], "chihuahua");
    let first = json(&ok(
        cwd,
        &[
            "admin", "device", "enroll", "--team", "sonora", "--role", "field", "--json",
        ],
        None,
    ));
    let second = json(&ok(
        cwd,
        &[
            "admin", "device", "enroll", "--team", "sonora", "--role", "field", "--json",
        ],
        None,
    ));
    let coordinator = json(&ok(
        cwd,
        &[
            "admin",
            "device",
            "enroll",
            "--team",
            "chihuahua",
            "--role",
            "coordinator",
            "--json",
        ],
        None,
    ));
    let devices = json(&ok(cwd, &["admin", "device", "list", "--json"], None));
    assert_eq!(devices["devices"].as_array().unwrap().len(), 3);
    assert!(
        !devices
            .to_string()
            .contains(first["token"].as_str().unwrap()),
        "tokens are never listed"
    );

    // The default data directory is ./auxilio-data, shared by `admin` and `serve`.
    let server = ServerProcess::spawn(&cwd.join("auxilio-data"));
    let init = |store: &str, enrolled: &serde_json::Value| {
        json(&ok(
            cwd,
            &[
                "device",
                "--store",
                store,
                "--json",
                "init",
                "--server",
                &server.url,
                "--token",
                enrolled["token"].as_str().unwrap(),
            ],
            None,
        ))
    };
    assert_eq!(init("one.db", &first)["team"], "sonora");
    init("two.db", &second);
    assert_eq!(init("coordinator.db", &coordinator)["role"], "coordinator");
    let coordinator_token = coordinator["token"].as_str().unwrap().to_string();

    // Logged from a file and from stdin, exactly the issue's JSON.
    std::fs::write(cwd.join("encounter.json"), EXAMPLE_ENCOUNTER).unwrap();
    let id = ok(
        cwd,
        &["device", "--store", "one.db", "log", "encounter.json"],
        None,
    )
    .trim()
    .to_string();
    let from_stdin = json(&ok(
        cwd,
        &["device", "--store", "two.db", "--json", "log", "-"],
        Some(EXAMPLE_ENCOUNTER),
    ));
    assert!(from_stdin["id"].is_string());

    let sync = json(&ok(cwd, &["device", "--store", "one.db", "sync"], None));
    for key in [
        "uploaded",
        "downloaded",
        "round_trips",
        "bytes_up",
        "bytes_down",
    ] {
        assert!(sync[key].is_u64(), "sync reports {key}: {sync}");
    }
    assert_eq!(sync["uploaded"], 1);
    let sync = json(&ok(cwd, &["device", "--store", "two.db", "sync"], None));
    assert_eq!(sync["downloaded"], 1);

    // Concurrent edits on the two phones, then both sync.
    ok(
        cwd,
        &[
            "device",
            "--store",
            "one.db",
            "edit",
            &id,
            "--set",
            "counts.m.18-59=3",
            "--set",
            "services+=transfer_hospital",
        ],
        None,
    );
    ok(
        cwd,
        &[
            "device",
            "--store",
            "two.db",
            "edit",
            &id,
            "--set",
            "counts.m.18-59=4",
            "--set",
            "notes=found near km 40",
        ],
        None,
    );
    for store in ["one.db", "two.db", "one.db"] {
        ok(cwd, &["device", "--store", store, "sync"], None);
    }
    let one = json(&ok(
        cwd,
        &["device", "--store", "one.db", "--json", "show", &id],
        None,
    ));
    let two = json(&ok(
        cwd,
        &["device", "--store", "two.db", "--json", "show", &id],
        None,
    ));
    // The coordinator reads every team over HTTP; it does not sync documents (they carry
    // health detail its role does not read).
    let refused = fails(cwd, &["device", "--store", "coordinator.db", "sync"], None);
    assert!(refused.contains("403"), "{refused}");
    let (status, coordinator_view) = get_json(
        &server.url,
        &format!("/v1/encounters/{id}"),
        Some(&coordinator_token),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(one["heads"], two["heads"]);
    assert_eq!(one["encounter"], two["encounter"]);
    let mut without_restricted = one["encounter"].clone();
    // Restricted like health data: never in a coordinator's answer, even when empty; the notes
    // (free text, where health detail is written) are withheld and counted.
    let restricted = without_restricted.as_object_mut().unwrap();
    restricted.remove("trafficking_indicators");
    restricted.remove("notes");
    assert_eq!(without_restricted, coordinator_view["encounter"]);
    assert_eq!(coordinator_view["health_detail_withheld"], 1);
    assert_eq!(one["encounter"]["notes"], "found near km 40");
    assert_eq!(one["conflicts"][0]["path"], "counts.m.18-59");

    let (_, list) = get_json(&server.url, "/v1/encounters", Some(&coordinator_token)).unwrap();
    assert_eq!(list["encounters"].as_array().unwrap().len(), 2);
    let text = ok(cwd, &["device", "--store", "one.db", "list"], None);
    assert!(text.contains("1 conflicts"), "{text}");

    // Settling the conflict on one phone clears it everywhere after sync.
    ok(
        cwd,
        &[
            "device",
            "--store",
            "one.db",
            "edit",
            &id,
            "--set",
            "counts.m.18-59=4",
        ],
        None,
    );
    for store in ["one.db", "two.db"] {
        ok(cwd, &["device", "--store", store, "sync"], None);
    }
    let two = json(&ok(
        cwd,
        &["device", "--store", "two.db", "--json", "show", &id],
        None,
    ));
    assert_eq!(two["conflicts"].as_array().unwrap().len(), 0);
    assert_eq!(two["encounter"]["counts"]["m"]["18-59"], 4);

    // Revocation: the next sync is refused with a message that says what to do.
    let device_id = first["device_id"].as_str().unwrap();
    json(&ok(
        cwd,
        &["admin", "device", "revoke", device_id, "--json"],
        None,
    ));
    let err = fails(cwd, &["device", "--store", "one.db", "sync"], None);
    assert!(
        err.contains("revoked") && err.contains("erased") && err.contains("enrol"),
        "{err}"
    );
    let after = json(&ok(
        cwd,
        &["device", "--store", "one.db", "list", "--json"],
        None,
    ));
    assert_eq!(after["encounters"].as_array().unwrap().len(), 0, "wiped");
}

#[test]
fn errors_say_what_is_wrong_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();

    let err = fails(
        cwd,
        &[
            "admin", "device", "enroll", "--team", "nowhere", "--role", "field",
        ],
        None,
    );
    assert!(err.contains("auxilio admin team add nowhere"), "{err}");
    let err = fails(cwd, &["admin", "--data", "typo", "device", "list"], None);
    assert!(
        err.contains("no Auxilio data directory"),
        "a mistyped --data is not a new empty database: {err}"
    );
    assert!(!cwd.join("typo").exists());
    let output = run_auxilio(
        cwd,
        &["admin", "--json", "device", "revoke", "not-an-id"],
        None,
    );
    assert!(
        json(&String::from_utf8(output.stdout).unwrap())["error"].is_string(),
        "--json even for a bad command line"
    );
    let err = fails(
        cwd,
        &[
            "device",
            "--store",
            "never.db",
            "init",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "t",
        ],
        None,
    );
    assert!(err.contains("could not reach"), "{err}");
    assert!(
        !cwd.join("never.db").exists(),
        "a failed enrolment leaves no store behind"
    );
    let err = fails(
        cwd,
        &["device", "--store", "new.db", "log", "-"],
        Some(EXAMPLE_ENCOUNTER),
    );
    assert!(err.contains("init"), "{err}");

    // An enrolled store whose server is gone: logging works, sync fails and keeps everything.
    ok(cwd, &["admin", "team", "add", "sonora"], None);
    let enrolled = json(&ok(
        cwd,
        &[
            "admin", "device", "enroll", "--team", "sonora", "--role", "field", "--json",
        ],
        None,
    ));
    let server = ServerProcess::spawn(&cwd.join("auxilio-data"));
    let url = server.url.clone();
    ok(
        cwd,
        &[
            "device",
            "--store",
            "p.db",
            "init",
            "--server",
            &url,
            "--token",
            enrolled["token"].as_str().unwrap(),
        ],
        None,
    );
    server.kill();

    let err = fails(
        cwd,
        &["device", "--store", "p.db", "log", "-"],
        Some(r#"{"servises":["rescue"]}"#),
    );
    assert!(err.contains("servises"), "{err}");
    let two = "{\"counts\":{\"m\":{\"18-59\":1}}}\n{\"counts\":{\"f\":{\"18-59\":7}}}\n";
    let err = fails(cwd, &["device", "--store", "p.db", "log", "-"], Some(two));
    assert!(
        err.contains("not one JSON object"),
        "a second record is never dropped silently: {err}"
    );
    let err = fails(cwd, &["device", "--store", "p.db", "log", "-"], Some("[]"));
    assert!(err.contains("one JSON object"), "{err}");
    let output = run_auxilio(
        cwd,
        &["device", "--store", "p.db", "--json", "log", "-"],
        Some("[]"),
    );
    let answer = json(&String::from_utf8(output.stdout).unwrap());
    assert!(
        answer["error"].is_string(),
        "--json failures are JSON on stdout too"
    );
    let err = fails(
        cwd,
        &[
            "device", "--store", "p.db", "edit", "nothing", "--set", "a=b",
        ],
        None,
    );
    assert_eq!(
        err.matches("not a valid id").count(),
        1,
        "each cause is said once: {err}"
    );
    let err = fails(
        cwd,
        &["device", "--store", "p.db", "log", "-"],
        Some(r#"{"counts":{"m":{"18-59":"two"}}}"#),
    );
    assert!(err.contains("counts.m.18-59"), "{err}");
    let err = fails(
        cwd,
        &["device", "--store", "p.db", "log", "-"],
        Some(r#"{"counts":{"m":{"18-59":1},"injured":3}}"#),
    );
    assert!(err.contains("counts.injured"), "{err}");

    let id = ok(
        cwd,
        &["device", "--store", "p.db", "log", "-"],
        Some(EXAMPLE_ENCOUNTER),
    )
    .trim()
    .to_string();
    let err = fails(
        cwd,
        &[
            "device",
            "--store",
            "p.db",
            "edit",
            &id,
            "--set",
            "location.lat=200",
        ],
        None,
    );
    assert!(err.contains("location.lat"), "{err}");
    let err = fails(
        cwd,
        &[
            "device",
            "--store",
            "p.db",
            "edit",
            &id,
            "--set",
            "status=lost",
        ],
        None,
    );
    assert!(err.contains("status"), "{err}");
    let unknown = auxilio_core::EncounterId::random().to_string();
    let err = fails(cwd, &["device", "--store", "p.db", "show", &unknown], None);
    assert!(err.contains("no encounter"), "{err}");
    let err = fails(
        cwd,
        &["device", "--store", "p.db", "show", "not-an-id"],
        None,
    );
    assert!(err.contains("not a valid id"), "{err}");

    let err = fails(
        cwd,
        &["device", "--store", "p.db", "sync", "--attempts", "2"],
        None,
    );
    assert!(
        err.contains("could not reach the server")
            && err.contains("nothing on this device was lost"),
        "{err}"
    );
    let list = json(&ok(
        cwd,
        &["device", "--store", "p.db", "list", "--json"],
        None,
    ));
    assert_eq!(list["encounters"][0]["pending_changes"], 1);
}
