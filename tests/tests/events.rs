//! `GET /v1/events`: a coordinator's event stream announces what each sync stored, after the
//! commit; field devices and strangers are refused; a sync that stored nothing announces nothing;
//! a revoked coordinator's stream ends; and a server with open streams still shuts down.

use std::time::{Duration, Instant};

use auxilio_server::directory::{self, Role};
use auxilio_tests::{EXAMPLE_ENCOUNTER, EventStream, TeamFixture, add_team, enroll, get_json};

const WAIT: Duration = Duration::from_secs(10);

fn coordinator_stream(fixture: &TeamFixture) -> (EventStream, String) {
    add_team(fixture.data.path(), "coordination");
    let coordinator = enroll(fixture.data.path(), "coordination", Role::Coordinator);
    let stream = EventStream::open(&fixture.server.url, Some(&coordinator.token)).unwrap();
    assert_eq!(stream.content_type, "text/event-stream");
    let ready = stream.next_event(WAIT).expect("a ready event at once");
    assert_eq!(ready.event, "ready");
    (stream, coordinator.token)
}

#[test]
fn a_coordinator_hears_about_each_sync_that_stored_changes() {
    let fixture = TeamFixture::start("sonora", Default::default());
    let (stream, token) = coordinator_stream(&fixture);
    let mut phone = fixture.device("phone", Role::Field);
    let first = phone.log(EXAMPLE_ENCOUNTER);
    let second = phone.log(EXAMPLE_ENCOUNTER);
    phone.sync().unwrap();

    let event = stream.next_event(WAIT).expect("an event after the sync");
    assert_eq!(event.event, "encounters");
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    let mut ids: Vec<String> = data["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected = vec![first.to_string(), second.to_string()];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(data["teams"], serde_json::json!(["sonora"]));
    // The event comes after the commit: what it names is already readable.
    let (status, body) = get_json(
        &fixture.server.url,
        &format!("/v1/encounters/{first}"),
        Some(&token),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // A sync that stores nothing new (the phone is up to date) announces nothing.
    phone.sync().unwrap();
    assert_eq!(stream.next_event(Duration::from_millis(700)), None);

    // An edit is announced with its one encounter.
    phone.edit(first, &["status=closed"]);
    phone.sync().unwrap();
    let event = stream.next_event(WAIT).expect("an event after the edit");
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["ids"], serde_json::json!([first.to_string()]));
}

#[test]
fn only_coordinators_may_listen() {
    let fixture = TeamFixture::start("sonora", Default::default());
    let phone = fixture.device("phone", Role::Field);
    let (status, body) =
        EventStream::open(&fixture.server.url, Some(&phone.enrolled.token)).unwrap_err();
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("coordinator"));
    let (status, _) = EventStream::open(&fixture.server.url, None).unwrap_err();
    assert_eq!(status, 401);
    let (status, _) = EventStream::open(&fixture.server.url, Some("auxilio_nope")).unwrap_err();
    assert_eq!(status, 401);
}

#[test]
fn a_server_with_open_streams_still_shuts_down_and_ends_them() {
    let fixture = TeamFixture::start("sonora", Default::default());
    let (stream, _) = coordinator_stream(&fixture);
    let TeamFixture { server, data, .. } = fixture;
    let started = Instant::now();
    server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for the open event stream",
        started.elapsed()
    );
    assert!(stream.ends_within(WAIT), "the stream was not ended");
    drop(data);
}

#[test]
fn an_idle_stream_gets_keep_alive_comments() {
    // The keep-alive interval is 15 s; this test waits for one, so it takes that long.
    let fixture = TeamFixture::start("sonora", Default::default());
    let (stream, _) = coordinator_stream(&fixture);
    let item = stream
        .next_item(auxilio_server::http::events::KEEP_ALIVE + WAIT)
        .expect("a keep-alive on an idle stream");
    assert_eq!(item.event, ":", "{item:?}");
    assert_eq!(item.data, "keep-alive");
}

#[test]
fn a_revoked_coordinators_stream_ends_at_the_next_keep_alive() {
    // Like the keep-alive test, this one waits one interval.
    let fixture = TeamFixture::start("sonora", Default::default());
    add_team(fixture.data.path(), "coordination");
    let coordinator = enroll(fixture.data.path(), "coordination", Role::Coordinator);
    let stream = EventStream::open(&fixture.server.url, Some(&coordinator.token)).unwrap();
    assert_eq!(stream.next_event(WAIT).unwrap().event, "ready");
    let database = auxilio_server::Database::open(fixture.data.path()).unwrap();
    database
        .write(|conn| directory::revoke(conn, coordinator.device_id))
        .unwrap();
    assert!(
        stream.ends_within(auxilio_server::http::events::KEEP_ALIVE + WAIT),
        "a revoked coordinator kept its event stream"
    );
}
