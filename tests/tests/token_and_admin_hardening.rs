//! Issue 10's token and administration findings, end to end: an administrator's rotation wins
//! every race against a leaked token's self-rotations; roles that read case data or the audit log
//! are enrolled and rotated only on the server's command line; a flood of bad tokens from one
//! address (or for one device id) is slowed without locking out valid tokens, and
//! `X-Forwarded-For` is believed only from a configured proxy; event streams end when their token
//! is rotated; half-sent requests are timed out; labels are capped; a device cannot flood the audit
//! log; and every `/v1/*` answer says `Cache-Control: no-store`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auxilio_server::ServerConfig;
use auxilio_server::audit;
use auxilio_server::directory::{self, Role};
use auxilio_server::rate_limit::RateLimits;
use ureq::http::HeaderMap;

use auxilio_tests::{EventStream, TeamFixture, add_team, enroll, get_json, post_json};

const WAIT: Duration = Duration::from_secs(10);

/// One request with any method, extra headers and an optional JSON body: the status, the
/// response's headers and its JSON body.
fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, HeaderMap, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if let Some(token) = token {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = match body {
        Some(body) => agent.run(
            builder
                .header("Content-Type", "application/json")
                .body(body.as_bytes().to_vec())
                .unwrap(),
        ),
        None => agent.run(builder.body(()).unwrap()),
    }
    .unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.body_mut().read_to_vec().unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// A response header's value, empty when absent.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// `GET /v1/whoami` with `token`, through a proxy that says the client is `forwarded_for` (if
/// any): the status and the response's headers.
fn whoami_via(url: &str, token: &str, forwarded_for: Option<&str>) -> (u16, HeaderMap) {
    let headers: Vec<(&str, &str)> = forwarded_for
        .map(|address| vec![("X-Forwarded-For", address)])
        .unwrap_or_default();
    let (status, headers, _) = request(
        "GET",
        &format!("{url}/v1/whoami"),
        Some(token),
        &headers,
        None,
    );
    (status, headers)
}

const BAD_TOKEN: &str = "auxilio_not_a_token";

fn whoami_status(url: &str, token: &str) -> u16 {
    get_json(url, "/v1/whoami", Some(token)).unwrap().0
}

/// Rotates `device`'s token straight on the data directory, as `auxilio admin device rotate`
/// does: the change and its audit row in one transaction.
fn rotate_on_the_data_directory(data: &std::path::Path, device: auxilio_core::DeviceId) -> String {
    let database = auxilio_server::Database::open(data).unwrap();
    database
        .write(|tx| directory::rotate_by(tx, directory::ADMIN_CLI, device))
        .unwrap()
}

fn audit_rows(data: &std::path::Path, action: &str, device: &str) -> usize {
    let database = auxilio_server::Database::open(data).unwrap();
    database
        .read(|conn| audit::entries(conn, 0, 100_000))
        .unwrap()
        .iter()
        .filter(|e| e.action == action && e.detail.to_string().contains(device))
        .count()
}

fn unlimited() -> ServerConfig {
    ServerConfig {
        rate_limits: RateLimits {
            per_minute: 0,
            burst: 0,
        },
        self_rotations_per_hour: 0,
        ..ServerConfig::default()
    }
}

#[test]
fn an_administrators_rotation_racing_a_leaked_tokens_self_rotations_always_leaves_only_the_administrators_token()
 {
    let fixture = TeamFixture::start("sonora", unlimited());
    let url = fixture.server.url.clone();
    let admin = enroll(fixture.data.path(), "sonora", Role::Administrator);
    let mut lost = Vec::new();
    for trial in 0..50u64 {
        let leaked = enroll(fixture.data.path(), "sonora", Role::Field);
        let current = Arc::new(Mutex::new(leaked.token.clone()));
        let obtained = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // Two threads of the token's thief: each rotates with the newest token it has and uses
        // the new one at once, which promotes it.
        let thieves: Vec<_> = (0..2)
            .map(|_| {
                let (url, current, obtained, stop) =
                    (url.clone(), current.clone(), obtained.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let token = current.lock().unwrap().clone();
                        let (status, answer) = post_json(
                            &url,
                            "/v1/token/rotate",
                            Some(&token),
                            &serde_json::json!({}),
                        );
                        if status != 200 {
                            continue;
                        }
                        let new = answer["token"].as_str().unwrap().to_string();
                        obtained.lock().unwrap().push(new.clone());
                        if whoami_status(&url, &new) == 200 {
                            *current.lock().unwrap() = new;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(trial * 7 % 23));
        // Half the trials rotate over HTTP, half on the data directory as the command line does.
        let replaced = if trial % 2 == 0 {
            let (status, answer) = post_json(
                &url,
                &format!("/v1/admin/devices/{}/rotate", leaked.device_id),
                Some(&admin.token),
                &serde_json::json!({}),
            );
            assert_eq!(status, 200, "{answer}");
            answer["token"].as_str().unwrap().to_string()
        } else {
            rotate_on_the_data_directory(fixture.data.path(), leaked.device_id)
        };
        // The thief keeps trying for a moment after the rotation.
        std::thread::sleep(Duration::from_millis(30));
        stop.store(true, Ordering::Relaxed);
        for thief in thieves {
            thief.join().unwrap();
        }
        let obtained = obtained.lock().unwrap().clone();
        let thief_still_in = obtained
            .iter()
            .chain([&leaked.token])
            .any(|token| whoami_status(&url, token) == 200);
        let administrator_works = whoami_status(&url, &replaced) == 200;
        if thief_still_in || !administrator_works {
            lost.push((trial, thief_still_in, administrator_works, obtained.len()));
        }
    }
    assert!(
        lost.is_empty(),
        "trials the thief won (trial, thief still in, administrator's token works, tokens the thief got): {lost:?}"
    );
}

/// A refusal that carries no token and whose hint names `command`.
fn refused_naming_the_command(body: &serde_json::Value, command: &str) {
    assert!(body.get("token").is_none(), "{body}");
    let hint = body["hint"].as_str().unwrap_or_default();
    assert!(hint.contains(command), "{body}");
}

#[test]
fn an_administrator_over_http_enrols_and_rotates_field_devices_only_and_the_command_line_does_the_rest()
 {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let url = &fixture.server.url;
    let admin = enroll(fixture.data.path(), "sonora", Role::Administrator);
    // Positive control: a field phone is the fleet's job, over HTTP.
    let (status, field) = post_json(
        url,
        "/v1/admin/devices",
        Some(&admin.token),
        &serde_json::json!({"team": "sonora", "role": "field", "label": "phone 4"}),
    );
    assert_eq!(status, 200, "{field}");
    let field_id = field["device_id"].as_str().unwrap();
    let (status, rotated) = post_json(
        url,
        &format!("/v1/admin/devices/{field_id}/rotate"),
        Some(&admin.token),
        &serde_json::json!({}),
    );
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(whoami_status(url, rotated["token"].as_str().unwrap()), 200);
    for role in [
        "team_lead",
        "coordinator",
        "protection_officer",
        "auditor",
        "administrator",
    ] {
        let (status, body) = post_json(
            url,
            "/v1/admin/devices",
            Some(&admin.token),
            &serde_json::json!({"team": "sonora", "role": role}),
        );
        assert_eq!(status, 403, "{role}: {body}");
        refused_naming_the_command(&body, "auxilio admin device enroll");
    }
    let coordinator = enroll(fixture.data.path(), "sonora", Role::Coordinator);
    let (status, body) = post_json(
        url,
        &format!("/v1/admin/devices/{}/rotate", coordinator.device_id),
        Some(&admin.token),
        &serde_json::json!({}),
    );
    assert_eq!(status, 403, "{body}");
    refused_naming_the_command(&body, "auxilio admin device rotate");
    assert_eq!(
        whoami_status(url, &coordinator.token),
        200,
        "a refused rotation changes nothing"
    );
    // The server's own command line still enrols and rotates them.
    let enrolled = fixture.admin(&[
        "--json",
        "device",
        "enroll",
        "--team",
        "sonora",
        "--role",
        "coordinator",
    ]);
    assert!(enrolled.status.success(), "{enrolled:?}");
    let rotated = fixture.admin(&[
        "--json",
        "device",
        "rotate",
        &coordinator.device_id.to_string(),
    ]);
    assert!(rotated.status.success(), "{rotated:?}");
    let rotated: serde_json::Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(whoami_status(url, rotated["token"].as_str().unwrap()), 200);
    assert_eq!(whoami_status(url, &coordinator.token), 401);
}

fn limited(per_minute: u32, burst: u32, trusted_proxies: Vec<std::net::IpAddr>) -> ServerConfig {
    ServerConfig {
        rate_limits: RateLimits { per_minute, burst },
        trusted_proxies,
        ..ServerConfig::default()
    }
}

/// Sends bad tokens (through a proxy that says the client is `forwarded_for`, if any) until one
/// is answered 429; false if none is within 500 requests.
fn flood_until_limited(url: &str, token: &str, forwarded_for: Option<&str>) -> bool {
    for _ in 0..500 {
        match whoami_via(url, token, forwarded_for) {
            (401, _) => continue,
            (429, headers) => {
                assert!(
                    !header(&headers, "retry-after").is_empty(),
                    "a 429 says when to retry"
                );
                return true;
            }
            (other, _) => panic!("a bad token was answered {other}"),
        }
    }
    false
}

#[test]
fn a_flood_of_bad_tokens_from_one_address_is_slowed_but_valid_tokens_from_that_address_are_served()
{
    let fixture = TeamFixture::start("sonora", limited(60, 10, vec![]));
    let url = &fixture.server.url;
    let phones: Vec<_> = (0..3)
        .map(|_| enroll(fixture.data.path(), "sonora", Role::Field))
        .collect();
    for _ in 0..20 {
        assert!(flood_until_limited(url, BAD_TOKEN, None));
    }
    let statuses: Vec<u16> = phones
        .iter()
        .flat_map(|phone| (0..5).map(|_| whoami_status(url, &phone.token)))
        .collect();
    assert!(
        statuses.iter().all(|status| *status == 200),
        "valid tokens from the flooding address: {statuses:?}"
    );
    // The flood is still slowed.
    assert_eq!(whoami_via(url, BAD_TOKEN, None).0, 429);
}

#[test]
fn bad_secrets_for_one_device_id_are_slowed_from_any_address_and_that_devices_real_token_still_works()
 {
    let localhost = "127.0.0.1".parse().unwrap();
    let fixture = TeamFixture::start("sonora", limited(60, 10, vec![localhost]));
    let url = &fixture.server.url;
    let victim = enroll(fixture.data.path(), "sonora", Role::Field);
    let other = enroll(fixture.data.path(), "sonora", Role::Field);
    // The victim's id with another device's secret: a well-formed token that fails.
    let forged = format!(
        "auxilio_{}_{}",
        victim.device_id,
        other.token.rsplit_once('_').unwrap().1
    );
    let limited = (0..200).any(|n| {
        // Each guess from another address: only the claimed device id is common to them.
        let address = format!("198.51.100.{}", n % 250);
        match whoami_via(url, &forged, Some(&address)).0 {
            429 => true,
            status => {
                assert_eq!(status, 401);
                false
            }
        }
    });
    assert!(
        limited,
        "guesses at one device's secret from many addresses were never slowed"
    );
    assert_eq!(whoami_status(url, &victim.token), 200);
    assert_eq!(whoami_status(url, &other.token), 200);
}

#[test]
fn x_forwarded_for_tells_clients_apart_behind_a_trusted_proxy_and_is_ignored_from_anyone_else() {
    let localhost = "127.0.0.1".parse().unwrap();
    let behind_proxy = TeamFixture::start("sonora", limited(60, 10, vec![localhost]));
    let url = &behind_proxy.server.url;
    assert!(flood_until_limited(url, BAD_TOKEN, Some("203.0.113.7")));
    // Another client behind the same proxy is not slowed by the first one's flood...
    assert_eq!(whoami_via(url, BAD_TOKEN, Some("203.0.113.8")).0, 401);
    // ...and a client cannot escape its own limit by prepending addresses: the rightmost
    // untrusted one counts.
    let prepended = Some("192.0.2.1, 203.0.113.7");
    assert_eq!(whoami_via(url, BAD_TOKEN, prepended).0, 429);
    // Without a trusted proxy the header is the client's word, and ignored.
    let direct = TeamFixture::start("sonora", limited(60, 10, vec![]));
    let url = &direct.server.url;
    assert!(flood_until_limited(url, BAD_TOKEN, Some("203.0.113.7")));
    assert_eq!(whoami_via(url, BAD_TOKEN, Some("203.0.113.8")).0, 429);
}

fn quick_keep_alive() -> ServerConfig {
    ServerConfig {
        events_keep_alive: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

/// A coordinator's stream that is shown to be alive across two token checks first.
fn live_coordinator_stream(fixture: &TeamFixture) -> (EventStream, directory::Enrolled) {
    add_team(fixture.data.path(), "coordination");
    let coordinator = enroll(fixture.data.path(), "coordination", Role::Coordinator);
    let stream = EventStream::open(&fixture.server.url, Some(&coordinator.token)).unwrap();
    assert_eq!(stream.next_event(WAIT).unwrap().event, "ready");
    for _ in 0..2 {
        let item = stream
            .next_item(WAIT)
            .expect("keep-alives on a live stream");
        assert_eq!(item.event, ":");
    }
    (stream, coordinator)
}

#[test]
fn an_open_event_stream_ends_when_an_administrator_rotates_its_token() {
    let fixture = TeamFixture::start("sonora", quick_keep_alive());
    let (stream, coordinator) = live_coordinator_stream(&fixture);
    let replaced = rotate_on_the_data_directory(fixture.data.path(), coordinator.device_id);
    assert!(
        stream.ends_within(WAIT),
        "the stream opened with the rotated-out token kept going"
    );
    // The new token opens a new stream.
    let again = EventStream::open(&fixture.server.url, Some(&replaced)).unwrap();
    assert_eq!(again.next_event(WAIT).unwrap().event, "ready");
}

#[test]
fn an_open_event_stream_ends_when_its_token_is_superseded_by_a_used_self_rotation() {
    let fixture = TeamFixture::start("sonora", quick_keep_alive());
    let url = &fixture.server.url;
    let (stream, coordinator) = live_coordinator_stream(&fixture);
    let (status, answer) = post_json(
        url,
        "/v1/token/rotate",
        Some(&coordinator.token),
        &serde_json::json!({}),
    );
    assert_eq!(status, 200, "{answer}");
    // Until the new token is used the old one stays valid, and so does its stream.
    for _ in 0..2 {
        assert_eq!(stream.next_item(WAIT).expect("still alive").event, ":");
    }
    assert_eq!(whoami_status(url, answer["token"].as_str().unwrap()), 200);
    assert!(
        stream.ends_within(WAIT),
        "the stream opened with the superseded token kept going"
    );
}

#[test]
fn a_half_sent_request_is_closed_after_the_header_timeout_while_complete_requests_are_served() {
    let config = ServerConfig {
        header_read_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let fixture = TeamFixture::start("sonora", config);
    let address = fixture.server.url.strip_prefix("http://").unwrap();
    let mut half_sent = TcpStream::connect(address).unwrap();
    half_sent
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: auxilio\r\nX-Slow: ")
        .unwrap();
    // Another connection's complete request is served meanwhile.
    assert_eq!(
        get_json(&fixture.server.url, "/healthz", None).unwrap().0,
        200
    );
    half_sent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = Vec::new();
    match half_sent.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(err) => panic!("the half-sent request's connection was still open: {err}"),
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[test]
fn device_labels_are_capped_and_plain_over_http_and_on_the_command_line() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let url = &fixture.server.url;
    let admin = enroll(fixture.data.path(), "sonora", Role::Administrator);
    let enrol = |label: &str| {
        post_json(
            url,
            "/v1/admin/devices",
            Some(&admin.token),
            &serde_json::json!({"team": "sonora", "role": "field", "label": label}),
        )
    };
    let (status, body) = enrol(&"x".repeat(100));
    assert_eq!(status, 200, "{body}");
    for bad in [
        "x".repeat(60_000),
        "phone\u{7}3".into(),
        "line\nbreak".into(),
    ] {
        let (status, body) = enrol(&bad);
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("label"), "{body}");
    }
    let long = "y".repeat(101);
    let refused = fixture.admin(&[
        "device", "enroll", "--team", "sonora", "--role", "field", "--label", &long,
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("label"), "{stderr}");
    let (_, listing) = get_json(url, "/v1/admin/devices", Some(&admin.token)).unwrap();
    assert!(!listing.to_string().contains(&long));
}

#[test]
fn a_device_cannot_flood_the_audit_log_with_self_rotations_or_revoked_calls() {
    let config = ServerConfig {
        self_rotations_per_hour: 3,
        ..ServerConfig::default()
    };
    let fixture = TeamFixture::start("sonora", config);
    let url = &fixture.server.url;
    let phone = enroll(fixture.data.path(), "sonora", Role::Field);
    let id = phone.device_id.to_string();
    let rotate = || {
        request(
            "POST",
            &format!("{url}/v1/token/rotate"),
            Some(&phone.token),
            &[],
            Some("{}"),
        )
    };
    for _ in 0..3 {
        assert_eq!(rotate().0, 200);
    }
    for _ in 0..10 {
        let (status, headers, body) = rotate();
        assert_eq!(status, 429, "{body}");
        assert!(header(&headers, "retry-after").parse::<u64>().unwrap() > 0);
    }
    assert_eq!(
        audit_rows(fixture.data.path(), "device.rotate_self", &id),
        3
    );
    // A revoked phone is still told to wipe every time, but logged once.
    let database = auxilio_server::Database::open(fixture.data.path()).unwrap();
    database
        .write(|tx| directory::revoke(tx, phone.device_id))
        .unwrap();
    for _ in 0..10 {
        let (status, body) = get_json(url, "/v1/whoami", Some(&phone.token)).unwrap();
        assert_eq!((status, &body["wipe"]), (401, &serde_json::json!(true)));
    }
    assert_eq!(
        audit_rows(fixture.data.path(), "device.revoked_contact", &id),
        1
    );
}

#[test]
fn every_v1_answer_and_error_says_cache_control_no_store() {
    let fixture = TeamFixture::start("sonora", ServerConfig::default());
    let url = &fixture.server.url;
    let phone = enroll(fixture.data.path(), "sonora", Role::Field);
    let admin = enroll(fixture.data.path(), "sonora", Role::Administrator);
    let (phone, admin) = (Some(phone.token.as_str()), Some(admin.token.as_str()));
    // (method, path, token, body, expected status)
    let cases = [
        ("GET", "/v1/whoami", phone, None, 200),
        ("GET", "/v1/whoami", None, None, 401),
        ("GET", "/v1/admin/devices", admin, None, 200),
        ("GET", "/v1/admin/devices", phone, None, 403),
        ("GET", "/v1/no-such-thing", None, None, 404),
        ("POST", "/v1/admin/teams", admin, Some("{"), 400),
        ("POST", "/v1/token/rotate", phone, Some("{}"), 200),
    ];
    for (method, path, token, body, expected) in cases {
        let (status, headers, answer) = request(method, &format!("{url}{path}"), token, &[], body);
        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert_eq!(
            header(&headers, "cache-control"),
            "no-store",
            "{method} {path} ({status})"
        );
    }
}
