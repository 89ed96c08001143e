//! The core sync session drives a real server through a transport of the test's own, as a phone
//! app drives it through OkHttp or URLSession: the session decides every request and wait, the
//! transport only moves bytes (and here never sleeps: the waits it is told are recorded).

use std::time::Duration;

use auxilio_core::DeviceStore;
use auxilio_core::session::{Next, Reply, SyncOptions, SyncReport, SyncSession};
use auxilio_server::directory::Role;
use auxilio_tests::{
    EXAMPLE_ENCOUNTER, TeamFixture, post_bytes, post_json, small_pages, stored_change_hashes,
};

/// Syncs `store` through the test's transport until the session says it is done. The answer
/// to each request whose number `lose` names is dropped after the server stored the request.
/// Returns the figures and every wait the session asked for.
fn drive(
    store: &mut DeviceStore,
    server: &str,
    token: &str,
    lose: &[u32],
) -> (SyncReport, Vec<Duration>) {
    let options = SyncOptions {
        max_page_bytes: 8 * 1024,
        compress: false,
        ..SyncOptions::default()
    };
    let mut session = SyncSession::new(store, options).unwrap();
    let mut waits = Vec::new();
    let mut sent = 0;
    loop {
        match session.next(store).unwrap() {
            Next::Sync(request) => {
                sent += 1;
                let (status, body) = post_bytes(server, "/v1/sync", Some(token), &request.body);
                let reply = if lose.contains(&sent) {
                    Reply::Failed {
                        message: "the answer was lost on the way back",
                    }
                } else {
                    Reply::Answered {
                        status,
                        body: &body,
                        content_encoding: None,
                        retry_after: None,
                    }
                };
                session.receive(store, reply).unwrap();
            }
            Next::Wait(delay) => waits.push(delay),
            Next::RefreshRelayKeys(body) => {
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let (status, answer) = post_json(server, "/v1/relay-keys", Some(token), &body);
                assert_eq!(status, 200, "{answer}");
                let answer = serde_json::to_vec(&answer).unwrap();
                session.relay_keys_answered(store, Ok(&answer));
            }
            Next::Done => return (session.into_report(), waits),
        }
    }
}

#[test]
fn the_core_session_through_a_transport_of_its_own_moves_a_backlog_both_ways_and_recovers_a_lost_answer()
 {
    let team = TeamFixture::start("sonora", small_pages(4 * 1024));
    let mut writer = team.device("writer", Role::Field);
    let mut late = team.device("late", Role::Field);
    for _ in 0..30 {
        writer.log(EXAMPLE_ENCOUNTER);
    }
    let url = team.server.url.clone();
    assert!(writer.store.team_relay_keys().unwrap().is_none());

    // The server stores the first page, but its answer never reaches the phone.
    let (report, waits) = drive(&mut writer.store, &url, &writer.enrolled.token, &[1]);
    assert_eq!((report.uploaded, report.pending), (30, 0), "{report:?}");
    assert!(report.round_trips > 2, "the upload was paged: {report:?}");
    assert_eq!(report.retries, 1);
    assert_eq!(
        waits,
        vec![Duration::from_millis(250)],
        "the session, not the transport, said how long to wait"
    );
    assert_eq!(
        stored_change_hashes(team.data.path()).len(),
        30,
        "every change stored exactly once"
    );
    assert!(writer.store.lost_requests().unwrap().is_empty());
    let keys = writer.store.team_relay_keys().unwrap().unwrap();
    assert!(
        keys.iter().any(|k| k.device == writer.enrolled.device_id),
        "the session refreshed the team's relay keys once the sync was done"
    );

    let (report, waits) = drive(&mut late.store, &url, &late.enrolled.token, &[]);
    assert_eq!(report.downloaded, 30);
    assert!(waits.is_empty());
    assert_eq!(late.ids(), writer.ids());
}
