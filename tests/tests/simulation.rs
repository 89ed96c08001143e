//! `auxilio sim` and `auxilio demo`, run as a user runs them: the simulated deployment converges
//! with nothing lost or duplicated, on a LAN in at most two round trips per device, and on a
//! dropping 2G link (with phone-to-phone relays) within the pages needed plus retries.

use auxilio_tests::{ServerProcess, add_team, run_auxilio};

fn sim(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["sim"];
    all.extend_from_slice(args);
    let output = run_auxilio(dir.path(), &all, None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "auxilio {all:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("devices synced"),
        "progress is shown on stderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

fn assert_consistent(report: &serde_json::Value) {
    for key in [
        "devices",
        "encounters",
        "converged",
        "lost",
        "duplicated",
        "requests",
        "round_trips_max",
        "round_trips_mean",
        "bytes_up",
        "bytes_down",
        "floor_bytes",
        "wall_s",
    ] {
        assert!(
            report.get(key).is_some(),
            "the report has `{key}`: {report}"
        );
    }
    assert_eq!(report["converged"], true, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
}

#[test]
fn a_lan_deployment_converges_in_at_most_two_round_trips_per_device() {
    let report = sim(&[
        "--devices",
        "12",
        "--encounters",
        "8",
        "--edits",
        "4",
        "--team-size",
        "6",
        "--link",
        "lan",
    ]);
    assert_consistent(&report);
    assert_eq!(report["devices"], 12);
    assert_eq!(report["encounters"], 96);
    assert!(report["round_trips_max"].as_u64().unwrap() <= 2, "{report}");
    assert_eq!(report["retries"], 0, "a LAN does not cut: {report}");
    assert!(report["floor_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn a_dropping_2g_deployment_with_relays_converges_with_nothing_lost_or_duplicated() {
    let report = sim(&[
        "--devices",
        "6",
        "--encounters",
        "5",
        "--edits",
        "3",
        "--team-size",
        "3",
        "--link",
        "2g-dropping",
        "--cut-probability",
        "0.5",
        "--relay",
        "--seed",
        "11",
    ]);
    assert_consistent(&report);
    assert!(report["relayed"].as_u64().unwrap() > 0, "{report}");
    // Each device syncs twice (relaying devices only reach signal in the second round), and each
    // sync is one page here plus, at most, the request that finds nothing more: besides its
    // retries after cuts, no device needs more than 4 round trips.
    assert!(
        report["round_trips_without_retries_max"].as_u64().unwrap() <= 4,
        "{report}"
    );
    assert!(
        report["round_trips_max"].as_u64().unwrap() <= 4 + report["retries"].as_u64().unwrap(),
        "{report}"
    );
}

#[test]
fn sim_runs_against_a_running_server_and_leaves_its_data_there() {
    let data = tempfile::tempdir().unwrap();
    add_team(data.path(), "sonora");
    let server = ServerProcess::spawn(data.path());
    let report = sim(&[
        "--devices",
        "3",
        "--encounters",
        "4",
        "--data",
        data.path().to_str().unwrap(),
        "--server",
        &server.url,
    ]);
    assert_consistent(&report);
    let conn = rusqlite::Connection::open(data.path().join("auxilio.sqlite")).unwrap();
    let stored: i64 = conn
        .query_row(
            "SELECT count(*) FROM encounters WHERE team LIKE 'sim-%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(stored, 12);
}

#[test]
fn sim_explains_a_bad_link_name() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_auxilio(dir.path(), &["sim", "--link", "carrier-pigeon"], None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lan, 3g, 2g, 2g-dropping"), "{stderr}");
}

#[test]
fn the_demo_shows_data_flowing_and_stops_after_its_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let output = run_auxilio(
        dir.path(),
        &[
            "demo",
            "--listen",
            &listen,
            "--rounds",
            "3",
            "--interval",
            "0",
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Authorization: Bearer auxilio_"),
        "{stdout}"
    );
    let rounds: Vec<&str> = stdout.lines().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(rounds.len(), 3, "{stdout}");
    let held = |line: &str| -> u64 {
        line.split("holds ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {line:?}"))
    };
    assert!(
        held(rounds[2]) > held(rounds[0]),
        "encounters keep arriving: {stdout}"
    );
}
