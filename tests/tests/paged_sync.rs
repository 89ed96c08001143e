//! A large backlog moves in bounded pages both ways over HTTP, every change exactly once, and a
//! device that joins late (or was reinstalled) receives everything its team may see.

use auxilio_server::client::{self, SyncOptions};
use auxilio_server::directory::Role;
use auxilio_tests::{EXAMPLE_ENCOUNTER, TeamFixture, small_pages, stored_change_hashes};

#[test]
fn a_backlog_syncs_in_bounded_pages_with_every_change_once() {
    let team = TeamFixture::start("sonora", small_pages(4 * 1024));
    let data = team.data.path();
    let mut writer = team.device("writer", Role::Field);
    let mut late = team.device("late", Role::Field);

    let ids: Vec<_> = (0..40).map(|_| writer.log(EXAMPLE_ENCOUNTER)).collect();
    for id in &ids {
        writer.edit(*id, &["status=closed"]);
    }
    let options = SyncOptions {
        max_page_bytes: 8 * 1024,
        ..SyncOptions::default()
    };
    let mut requests = Vec::new();
    let report = client::sync_with(&mut writer.store, options, |so_far| {
        requests.push(so_far.bytes_up)
    })
    .unwrap();
    assert_eq!(report.uploaded, 80);
    assert_eq!(report.pending, 0);
    assert!(report.round_trips > 2, "the upload was paged: {report:?}");
    let largest_request = requests
        .windows(2)
        .map(|w| w[1] - w[0])
        .chain([requests[0]])
        .max()
        .unwrap();
    assert!(
        largest_request < 16 * 1024,
        "each request stays near its budget: {largest_request} bytes"
    );
    assert_eq!(
        stored_change_hashes(data).len(),
        80,
        "every change stored exactly once"
    );

    let report = late.sync().unwrap();
    assert_eq!(report.downloaded, 80);
    assert!(report.round_trips > 2, "the download was paged: {report:?}");
    assert!(report.bytes_down < 80 * 1024);
    assert_eq!(late.ids(), writer.ids());
    for id in ids {
        assert_eq!(late.view(id).heads, writer.view(id).heads);
    }
    // Nothing more to move: one short round trip.
    let again = late.sync().unwrap();
    assert_eq!(
        (again.uploaded, again.downloaded, again.round_trips),
        (0, 0, 1)
    );
}

#[test]
fn a_device_uploading_a_backlog_never_downloads_its_own_changes_back() {
    let team = TeamFixture::start("sonora", small_pages(4 * 1024));
    let mut other = team.device("other", Role::Field);
    let mut phone = team.device("phone", Role::Field);
    for _ in 0..20 {
        other.log(EXAMPLE_ENCOUNTER);
    }
    other.sync().unwrap();
    for _ in 0..30 {
        phone.log(EXAMPLE_ENCOUNTER);
    }
    // Upload pages and download pages interleave; the phone's earlier upload pages are in the
    // log by the time later download pages are built.
    let options = SyncOptions {
        max_page_bytes: 4 * 1024,
        ..SyncOptions::default()
    };
    let report = client::sync_with(&mut phone.store, options, |_| {}).unwrap();
    assert_eq!(report.uploaded, 30);
    assert_eq!(
        report.downloaded, 20,
        "only the other phone's changes come down: {report:?}"
    );
    assert_eq!(phone.ids().len(), 50);
}

#[test]
fn a_change_the_server_holds_without_its_dependency_gets_the_dependency_fetched() {
    let team = TeamFixture::start("sonora", Default::default());
    let mut phone = team.device("phone", Role::Field);
    let id = phone.log(EXAMPLE_ENCOUNTER);
    phone.edit(id, &["status=closed"]);
    // The phone believes its first change is already acknowledged (as after a server restored
    // from a backup taken before it arrived): only the edit goes up, without its parent.
    let store_file = team.devices.path().join("phone.db");
    let conn = rusqlite::Connection::open(&store_file).unwrap();
    let first = conn
        .execute(
            "DELETE FROM pending_changes WHERE seq = (SELECT min(seq) FROM pending_changes)",
            [],
        )
        .unwrap();
    assert_eq!(first, 1);

    let report = phone.sync().unwrap();
    assert_eq!(report.pending, 0);
    assert_eq!(
        report.round_trips, 2,
        "the server asked for the missing change and the phone sent it: {report:?}"
    );
    let server = rusqlite::Connection::open(team.data.path().join("auxilio.sqlite")).unwrap();
    let (complete, changes): (bool, i64) = server
        .query_row(
            "SELECT complete, (SELECT count(*) FROM changes) FROM encounters",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert!(
        complete,
        "the server's document has every change it depends on"
    );
    assert_eq!(changes, 2);
}

#[test]
fn a_reinstalled_phone_recovers_everything_its_team_may_see_including_its_own_work() {
    let team = TeamFixture::start("sonora", Default::default());
    let mut phone = team.device("phone", Role::Field);
    let mut teammate = team.device("teammate", Role::Field);
    let own: Vec<_> = (0..5).map(|_| phone.log(EXAMPLE_ENCOUNTER)).collect();
    phone.edit(own[0], &["status=closed"]);
    teammate.log(EXAMPLE_ENCOUNTER);
    teammate.sync().unwrap();
    phone.sync().unwrap();
    teammate.sync().unwrap();

    // The phone is wiped and set up again with its token: a new, empty store.
    let enrolled = phone.enrolled.clone();
    drop(phone);
    std::fs::remove_file(team.devices.path().join("phone.db")).unwrap();
    let mut reinstalled =
        auxilio_tests::Device::new(team.devices.path(), "phone", &team.server.url, &enrolled);
    let report = reinstalled.sync().unwrap();
    assert_eq!(report.downloaded, 7, "{report:?}");
    assert_eq!(reinstalled.ids(), teammate.ids());
    for id in teammate.ids() {
        assert_eq!(reinstalled.view(id).heads, teammate.view(id).heads);
    }
    assert_eq!(
        reinstalled.view(own[0]).encounter.status,
        auxilio_core::schema::Status::Closed
    );
}
