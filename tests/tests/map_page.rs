//! The coordinator's map page: served by the binary alone (assets embedded, right content types
//! and cache headers, a strict Content-Security-Policy, `--tile-url` passed to the page), and
//! used in a real headless Chromium against a real `auxilio serve` process with generated
//! encounters around the Sonoran desert and the Río Bravo.
//!
//! The browser is driven by `tests/browser/map_test.mjs` with `playwright-core` (pinned in
//! `tests/browser/package-lock.json`) and Debian's `chromium`: Playwright waits for conditions
//! instead of sleeping, which keeps the test fast and not flaky, and it is the maintained way to
//! drive Chromium; the Rust CDP crates lag behind Chromium's protocol. The script and this test
//! talk over stdin/stdout lines so the live-update step is a real device sync made by the test
//! while the page is open. `scripts/test.sh` installs Chromium and the npm package when missing.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use auxilio_server::directory::Role;
use auxilio_tests::{Device, ServerProcess, add_team, auxilio_bin, enroll, get_json};

/// `GET url`: status, headers by lower-case name, body.
fn get_raw(url: &str) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent.get(url).call().unwrap();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_vec()
        .unwrap();
    (response.status().as_u16(), headers, body)
}

#[test]
fn the_binary_alone_serves_the_page_and_its_assets() {
    // A copy of the binary in an empty directory, started from another one: nothing beside it.
    let alone = tempfile::tempdir().unwrap();
    let bin = alone.path().join("auxilio");
    std::fs::copy(auxilio_bin(), &bin).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn_with(&bin, &data.path().join("data"), &[]);

    let (status, headers, body) = get_raw(&format!("{}/", server.url));
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains(r#"<div id="map">"#));
    assert!(html.contains(r#"src="/assets/vendor/leaflet-1.9.4/leaflet.js""#));
    let policy = &headers["content-security-policy"];
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(policy.contains("img-src 'self' data:;"), "{policy}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");

    for (path, content_type, immutable) in [
        ("/assets/app.js", "text/javascript; charset=utf-8", false),
        ("/assets/app.css", "text/css; charset=utf-8", false),
        (
            "/assets/vendor/leaflet-1.9.4/leaflet.js",
            "text/javascript; charset=utf-8",
            true,
        ),
        (
            "/assets/vendor/leaflet-1.9.4/leaflet.css",
            "text/css; charset=utf-8",
            true,
        ),
        (
            "/assets/vendor/leaflet-1.9.4/images/marker-icon.png",
            "image/png",
            true,
        ),
        (
            "/assets/vendor/leaflet-1.9.4/LICENSE",
            "text/plain; charset=utf-8",
            true,
        ),
        (
            "/assets/basemap/countries.geojson",
            "application/geo+json",
            false,
        ),
    ] {
        let (status, headers, body) = get_raw(&format!("{}{path}", server.url));
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert!(!body.is_empty(), "{path}");
        let cache = &headers["cache-control"];
        assert_eq!(cache.contains("immutable"), immutable, "{path}: {cache}");
    }
    let (_, _, basemap) = get_raw(&format!("{}/assets/basemap/countries.geojson", server.url));
    let basemap: serde_json::Value = serde_json::from_slice(&basemap).unwrap();
    let names: Vec<&str> = basemap["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["properties"]["name"].as_str())
        .collect();
    assert!(names.len() > 150, "{} countries", names.len());
    assert!(names.contains(&"Mexico") && names.contains(&"Guatemala"));

    let (status, _, _) = get_raw(&format!("{}/assets/../Cargo.toml", server.url));
    assert_eq!(status, 404);
    let (status, _, _) = get_raw(&format!("{}/assets/nothing.js", server.url));
    assert_eq!(status, 404);
    let (status, config) = get_json(&server.url, "/config.json", None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(config["tile_url"], serde_json::Value::Null);
}

#[test]
fn a_tile_url_reaches_the_page_and_its_content_security_policy() {
    let data = tempfile::tempdir().unwrap();
    let tiles = "https://{s}.tiles.example.org/{z}/{x}/{y}.png";
    let server = ServerProcess::spawn_with(
        &auxilio_bin(),
        &data.path().join("data"),
        &[
            "--tile-url",
            tiles,
            "--tile-attribution",
            "© Example contributors",
        ],
    );
    let (_, config) = get_json(&server.url, "/config.json", None).unwrap();
    assert_eq!(config["tile_url"], tiles);
    assert_eq!(config["tile_attribution"], "© Example contributors");
    let (_, headers, _) = get_raw(&format!("{}/", server.url));
    assert!(
        headers["content-security-policy"]
            .contains("img-src 'self' data: https://*.tiles.example.org;"),
        "{}",
        headers["content-security-policy"]
    );

    let out = auxilio_tests::run_auxilio(
        data.path(),
        &[
            "serve",
            "--data",
            "d",
            "--tile-url",
            "https://tiles.example.org/{z}/{x}.png",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks {y}"));
}

/// A small deterministic random source, so every run draws the same map.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An encounter near `(lat, lon)`: services, counts, and now and then a triaged casualty or an
/// unaccompanied child, as field teams log them.
fn encounter_json(random: &mut Lcg, n: usize, lat: f64, lon: f64, terrain: &str) -> String {
    let lat = lat + (random.next() - 0.5) * 0.6;
    let lon = lon + (random.next() - 0.5) * 0.6;
    let status = if n.is_multiple_of(3) {
        "closed"
    } else {
        "open"
    };
    let triage = ["red", "yellow", "green"][n % 3];
    let casualties = match n % 5 {
        0 => format!(
            r#","casualties":{{"c{n}":{{"sex":"m","age_band":"18-59","triage":{{"method":"start","category":"{triage}"}},"conditions":["dehydration"]}}}}"#
        ),
        1 => format!(
            r#","casualties":{{"u{n}":{{"sex":"f","age_band":"12-17","uasc":{{"ppnna_notified_at":"2025-06-01T10:00:00-07:00"}}}}}}"#
        ),
        _ => String::new(),
    };
    let hazard = if terrain == "river" {
        "drowning"
    } else {
        "heat"
    };
    format!(
        r#"{{"services":["rescue","first_aid"],"location":{{"lat":{lat:.5},"lon":{lon:.5},"accuracy_m":20}},"terrain":"{terrain}","hazards":["{hazard}"],"counts":{{"f":{{"18-59":{f}}},"m":{{"18-59":{m}}},"injured":{injured}}},"nationality_counts":{{"HND":{m},"GTM":{f}}},"status":"{status}"{casualties}}}"#,
        f = n % 3,
        m = 1 + n % 4,
        injured = n % 2,
    )
}

/// Where the test writes the screenshot: `target/map-screenshot.png` beside the build.
fn screenshot_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/map_page-<hash>
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    target.join("map-screenshot.png")
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Fails with what to run when the browser tooling is missing, rather than skipping: a test that
/// silently does not run proves nothing.
fn check_browser_tooling() -> PathBuf {
    let chromium = PathBuf::from(
        std::env::var("AUXILIO_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    let hint = "run `bash scripts/test.sh`, which installs Debian's chromium and runs `npm ci` in tests/browser";
    assert!(
        chromium.exists(),
        "{} is missing: {hint}",
        chromium.display()
    );
    assert!(
        Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "node is missing: {hint}"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: {hint}"
    );
    chromium
}

#[test]
fn a_coordinator_uses_the_map_in_a_real_browser() {
    let chromium = check_browser_tooling();
    let data = tempfile::tempdir().unwrap();
    let phones = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let server = ServerProcess::spawn(&data_dir);
    for team in ["coordination", "sonoyta", "juarez", "piedras-negras"] {
        add_team(&data_dir, team);
    }
    let coordinator = enroll(&data_dir, "coordination", Role::Coordinator);
    let enrolled = |team: &str| enroll(&data_dir, team, Role::Field);
    let mut sonoyta_a = Device::new(
        phones.path(),
        "sonoyta-a",
        &server.url,
        &enrolled("sonoyta"),
    );
    let mut sonoyta_b = Device::new(
        phones.path(),
        "sonoyta-b",
        &server.url,
        &enrolled("sonoyta"),
    );
    let mut juarez = Device::new(phones.path(), "juarez", &server.url, &enrolled("juarez"));
    let mut piedras = Device::new(
        phones.path(),
        "piedras",
        &server.url,
        &enrolled("piedras-negras"),
    );

    // Encounters around the Sonoran desert and two Río Bravo crossings, each logged offline and
    // then synced: more than the server sends as single points for a wide view (500), so the
    // page draws groups there and single encounters when zoomed in.
    let mut random = Lcg(7);
    let mut total = 0;
    let mut closed = 0;
    let places: [(&mut Device, f64, f64, &str, usize); 4] = [
        (&mut sonoyta_a, 31.86, -112.85, "desert", 160),
        (&mut sonoyta_b, 31.48, -111.54, "desert", 120),
        (&mut juarez, 31.69, -106.42, "river", 160),
        (&mut piedras, 28.70, -100.52, "river", 120),
    ];
    for (device, lat, lon, terrain, count) in places {
        for n in 0..count {
            device.log(&encounter_json(&mut random, n, lat, lon, terrain));
            total += 1;
            closed += usize::from(n.is_multiple_of(3));
        }
        device.sync().unwrap();
    }

    // Two phones of one team edit one encounter offline: the server keeps both values.
    let (conflict_lat, conflict_lon) = (30.53, -113.02);
    let conflicted = sonoyta_a.log(&format!(
        r#"{{"services":["rescue"],"location":{{"lat":{conflict_lat},"lon":{conflict_lon},"accuracy_m":10}},"terrain":"desert","hazards":["heat","lost"],"counts":{{"m":{{"18-59":2}}}},"status":"open","notes":"group of two found near the coast road"}}"#
    ));
    total += 1;
    sonoyta_a.sync().unwrap();
    sonoyta_b.sync().unwrap();
    sonoyta_a.edit(conflicted, &["counts.m.18-59=3"]);
    sonoyta_b.edit(conflicted, &["counts.m.18-59=4"]);
    sonoyta_a.sync().unwrap();
    sonoyta_b.sync().unwrap();
    let (status, detail) = get_json(
        &server.url,
        &format!("/v1/encounters/{conflicted}"),
        Some(&coordinator.token),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(detail["conflicts"][0]["path"], "counts.m.18-59", "{detail}");

    let screenshot = screenshot_path();
    let _ = std::fs::remove_file(&screenshot);
    let _ = std::fs::remove_file(screenshot.with_file_name("map-screenshot-points.png"));
    let mut script = Command::new("node")
        .arg(browser_dir().join("map_test.mjs"))
        .current_dir(browser_dir())
        .env("AUXILIO_URL", &server.url)
        .env("AUXILIO_TOKEN", &coordinator.token)
        .env("AUXILIO_FIELD_TOKEN", &juarez.enrolled.token)
        .env("AUXILIO_TOTAL", total.to_string())
        .env("AUXILIO_CLOSED", closed.to_string())
        .env("AUXILIO_CONFLICT_ID", conflicted.to_string())
        .env("AUXILIO_CONFLICT_LAT", conflict_lat.to_string())
        .env("AUXILIO_CONFLICT_LON", conflict_lon.to_string())
        .env("AUXILIO_SCREENSHOT", &screenshot)
        .env("AUXILIO_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let mut to_script = script.stdin.take().unwrap();
    let (lines_in, lines) = mpsc::channel();
    let stdout = script.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_in.send(line).is_err() {
                break;
            }
        }
    });

    let mut transcript = Vec::new();
    let mut live_id = None;
    let outcome = loop {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(120)) else {
            break Err("the browser script went silent for 2 minutes (or ended without DONE)");
        };
        eprintln!("map_test.mjs: {line}");
        transcript.push(line.clone());
        if line == "READY_FOR_LIVE_UPDATE" {
            // The page is open and subscribed: a phone reaches signal with a new encounter.
            let id = sonoyta_a.log(&format!(
                r#"{{"services":["rescue","first_aid"],"location":{{"lat":{},"lon":{},"accuracy_m":12}},"terrain":"desert","hazards":["heat"],"counts":{{"f":{{"18-59":1}},"m":{{"18-59":1}},"injured":1}},"status":"open"}}"#,
                conflict_lat + 0.004,
                conflict_lon + 0.006
            ));
            sonoyta_a.sync().unwrap();
            writeln!(to_script, "SYNCED {id}").unwrap();
            to_script.flush().unwrap();
            live_id = Some(id);
        } else if line == "DONE" {
            break Ok(());
        } else if line.starts_with("FAIL") {
            break Err("the browser script failed");
        }
    };
    let status = if outcome.is_ok() {
        script.wait().unwrap()
    } else {
        let _ = script.kill();
        script.wait().unwrap()
    };
    if let Err(reason) = outcome {
        panic!("{reason}:\n{}", transcript.join("\n"));
    }
    assert!(status.success(), "{}", transcript.join("\n"));
    let live_id = live_id.expect("the script asked for a live update");
    assert!(
        transcript
            .iter()
            .any(|l| l.contains(&format!("encounter {live_id} appeared without a reload"))),
        "{}",
        transcript.join("\n")
    );
    let points = screenshot.with_file_name("map-screenshot-points.png");
    for picture in [&screenshot, &points] {
        let png = std::fs::read(picture).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000);
        // Shown with --nocapture; the file stays in target/ for people to look at.
        eprintln!("map screenshot: {}", picture.display());
    }
}
