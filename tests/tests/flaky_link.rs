//! Sync over a link that cuts connections at any byte, in either direction, refuses connections
//! for a while, and loses the server mid-exchange: every change ends up exactly once on the
//! server and on every device of the team, nothing acknowledged is lost, and a cut exchange
//! resumes instead of starting over.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use auxilio_core::EncounterId;
use auxilio_core::protocol;
use auxilio_server::client::{self, SyncOptions, SyncReport};
use auxilio_server::directory::Role;
use auxilio_server::link_simulator::{Direction, FlakyProxy, LinkProfile};
use auxilio_tests::{
    Device, EXAMPLE_ENCOUNTER, ServerProcess, TeamFixture, add_team, enroll, full_or_short,
    pending_hashes, post_bytes, small_pages, stored_change_hashes,
};

/// Quick retries: a test link recovers in milliseconds, not minutes.
fn patient() -> SyncOptions {
    SyncOptions {
        first_retry_delay: Duration::from_millis(10),
        max_failed_attempts: 30,
        ..SyncOptions::default()
    }
}

fn sync(device: &mut Device) -> SyncReport {
    client::sync_with(&mut device.store, patient(), |_| {}).expect("the sync gets through")
}

fn address_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

fn clean_link() -> LinkProfile {
    LinkProfile::named("lan").unwrap()
}

/// Every change in every document of a store.
fn held_changes(device: &Device) -> BTreeSet<Vec<u8>> {
    device
        .ids()
        .into_iter()
        .flat_map(|id| device.store.document(id).unwrap().changes())
        .map(|change| change.hash().0.to_vec())
        .collect()
}

fn assert_same_documents(a: &Device, b: &Device) {
    assert_eq!(a.ids(), b.ids());
    for id in a.ids() {
        assert_eq!(a.view(id).heads, b.view(id).heads, "encounter {id}");
    }
}

/// Stored exactly once: the server's rows are exactly the changes the devices made.
fn assert_stored_exactly(data_dir: &std::path::Path, made: &BTreeSet<Vec<u8>>) {
    let stored = stored_change_hashes(data_dir);
    let distinct: BTreeSet<Vec<u8>> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), distinct.len(), "no change stored twice");
    assert_eq!(
        &distinct, made,
        "every change made is stored, and nothing else"
    );
}

fn log_some(device: &mut Device, n: usize) -> Vec<EncounterId> {
    (0..n)
        .map(|i| {
            let id = device.log(EXAMPLE_ENCOUNTER);
            device.edit(id, &[&format!("counts.m.18-59={}", 3 + i)]);
            id
        })
        .collect()
}

/// How far apart the cut offsets of a sweep are, and how many exchanges it must at least have
/// cut: every 157th byte in the full run; every 785th (157 × 5, so the short run's offsets are
/// among the full run's) in a plain `cargo test`, with the same checks at each offset.
#[derive(Debug, Clone, Copy)]
struct Sweep {
    step: u64,
    at_least_cut: u32,
}

fn sweep_for(test: &str) -> Sweep {
    full_or_short(
        test,
        Sweep {
            step: 157,
            at_least_cut: 8,
        },
        Sweep {
            step: 785,
            at_least_cut: 2,
        },
    )
}

/// Cuts every exchange of a writer's upload and a reader's download at one byte offset after
/// another, `sweep.step` bytes apart, until the offset lies past both exchanges; checks after
/// each that every change is stored exactly once and that the reader downloaded each change it
/// lacked exactly once (frames stored before a cut are not fetched again).
fn sweep_cut_offsets(direction: Direction, options: SyncOptions, sweep: Sweep) {
    let team = TeamFixture::start("sonora", small_pages(2 * 1024));
    let proxy = FlakyProxy::start(address_of(&team.server.url), clean_link(), 7).unwrap();
    let mut writer = team.device("writer", Role::Field);
    let mut reader = team.device("reader", Role::Field);
    writer.point_at(&proxy.url());
    reader.point_at(&proxy.url());
    let sync = |device: &mut Device| {
        client::sync_with(&mut device.store, options, |_| {}).expect("the sync gets through")
    };

    let mut offset = 0;
    let mut cut_exchanges = 0;
    loop {
        log_some(&mut writer, 5);
        let cuts_before = proxy.stats().cuts;
        proxy.cut_next(direction, offset);
        let report = sync(&mut writer);
        assert_eq!(
            report.pending, 0,
            "{direction:?} cut at {offset}: {report:?}"
        );
        let writer_was_cut = proxy.stats().cuts > cuts_before;

        let lacking = held_changes(&writer)
            .difference(&held_changes(&reader))
            .count() as u64;
        let cuts_before = proxy.stats().cuts;
        proxy.cut_next(direction, offset);
        let report = sync(&mut reader);
        let reader_was_cut = proxy.stats().cuts > cuts_before;
        assert_eq!(
            report.downloaded, lacking,
            "{direction:?} cut at {offset}: each lacking change downloaded once, none again after the cut: {report:?}"
        );
        assert_same_documents(&writer, &reader);
        assert_stored_exactly(team.data.path(), &held_changes(&writer));
        if !writer_was_cut && !reader_was_cut {
            break;
        }
        cut_exchanges += u32::from(writer_was_cut) + u32::from(reader_was_cut);
        offset += sweep.step;
    }
    eprintln!("{direction:?}: {cut_exchanges} exchanges cut, offsets up to {offset}");
    assert!(
        cut_exchanges >= sweep.at_least_cut,
        "{direction:?}: only {cut_exchanges} exchanges were cut before offset {offset}"
    );
}

#[test]
fn an_upload_cut_at_any_byte_resumes_with_every_change_exactly_once() {
    let sweep = sweep_for("an_upload_cut_at_any_byte_resumes_with_every_change_exactly_once");
    sweep_cut_offsets(Direction::Upload, patient(), sweep);
    sweep_cut_offsets(
        Direction::Upload,
        SyncOptions {
            compress: false,
            ..patient()
        },
        sweep,
    );
}

#[test]
fn a_download_cut_at_any_byte_resumes_with_every_change_exactly_once() {
    let sweep = sweep_for("a_download_cut_at_any_byte_resumes_with_every_change_exactly_once");
    sweep_cut_offsets(Direction::Download, patient(), sweep);
    sweep_cut_offsets(
        Direction::Download,
        SyncOptions {
            compress: false,
            ..patient()
        },
        sweep,
    );
}

#[test]
fn a_response_lost_after_the_server_stored_the_upload_is_asked_about_not_sent_again() {
    let team = TeamFixture::start("sonora", Default::default());
    let proxy = FlakyProxy::start(address_of(&team.server.url), clean_link(), 1).unwrap();
    let mut phone = team.device("phone", Role::Field);
    let mut twin = team.device("twin", Role::Field);
    phone.point_at(&proxy.url());
    twin.point_at(&proxy.url());

    // The same backlog on two phones: one syncs over a clean link, the other loses the whole
    // response to its first request (the server committed it; the phone never heard).
    log_some(&mut twin, 30);
    let clean = sync(&mut twin);
    log_some(&mut phone, 30);
    proxy.cut_next(Direction::Download, 0);
    let cut = sync(&mut phone);

    assert_eq!(cut.pending, 0);
    assert!(cut.retries >= 1, "{cut:?}");
    assert!(
        cut.bytes_up < clean.bytes_up * 3 / 2,
        "the retry asked what became of the lost request instead of sending its page again: {} bytes up, against {} without a cut",
        cut.bytes_up,
        clean.bytes_up
    );
    let mut made = held_changes(&phone);
    made.extend(held_changes(&twin));
    assert_stored_exactly(team.data.path(), &made);
}

#[test]
fn a_lost_response_is_asked_about_even_after_the_app_was_closed() {
    let team = TeamFixture::start("sonora", Default::default());
    let proxy = FlakyProxy::start(address_of(&team.server.url), clean_link(), 2).unwrap();
    let mut phone = team.device("phone", Role::Field);
    let mut twin = team.device("twin", Role::Field);
    phone.point_at(&proxy.url());
    twin.point_at(&proxy.url());
    log_some(&mut twin, 60);
    let clean = sync(&mut twin);

    // The first request reaches the server, its answer is lost, and the phone gives up at once
    // (the app is closed before it retries).
    log_some(&mut phone, 60);
    proxy.cut_next(Direction::Download, 0);
    let give_up = SyncOptions {
        max_failed_attempts: 1,
        ..patient()
    };
    let failed = client::sync_with(&mut phone.store, give_up, |_| {});
    assert!(failed.is_err());
    let first_attempt = proxy.stats().bytes_up;
    assert!(
        stored_change_hashes(team.data.path()).len() > 120,
        "the server did store the lost request"
    );
    let enrolled = phone.enrolled.clone();
    drop(phone);

    let mut reopened = Device::new(team.devices.path(), "phone", &proxy.url(), &enrolled);
    let report = sync(&mut reopened);
    assert_eq!(report.pending, 0, "{report:?}");
    let second_attempt = proxy.stats().bytes_up - first_attempt;
    assert!(
        second_attempt < clean.bytes_up / 2,
        "the reopened store asked about the lost request instead of uploading its page again: {second_attempt} bytes against {} for the page",
        clean.bytes_up
    );
    let mut made = held_changes(&reopened);
    made.extend(held_changes(&twin));
    assert_stored_exactly(team.data.path(), &made);
}

#[test]
fn replayed_and_duplicated_requests_store_each_change_once() {
    let team = TeamFixture::start("sonora", Default::default());
    let mut phone = team.device("phone", Role::Field);
    log_some(&mut phone, 5);
    let body = protocol::encode(&phone.store.sync_request().unwrap());
    let token = phone.enrolled.token.clone();

    let first = post_bytes(&team.server.url, "/v1/sync", Some(&token), &body);
    let again = post_bytes(&team.server.url, "/v1/sync", Some(&token), &body);
    assert_eq!((first.0, again.0), (200, 200));
    let first = protocol::decode_response(&first.1).unwrap();
    let again = protocol::decode_response(&again.1).unwrap();
    assert_eq!(first.accepted.len(), 10);
    assert_eq!(
        first.accepted, again.accepted,
        "a duplicate is acknowledged the same way"
    );

    // The phone syncs normally afterwards (it never saw those responses), and an old request
    // replayed later still changes nothing.
    let report = sync(&mut phone);
    assert_eq!((report.uploaded, report.pending), (10, 0));
    let replay = post_bytes(&team.server.url, "/v1/sync", Some(&token), &body);
    assert_eq!(replay.0, 200);
    assert_stored_exactly(team.data.path(), &held_changes(&phone));
    assert_eq!(pending_hashes(&phone.store).len(), 0);
}

#[test]
fn a_link_that_drops_most_connections_still_converges_exactly_once() {
    let team = TeamFixture::start("sonora", small_pages(4 * 1024));
    let flaky = LinkProfile {
        name: "test-dropping".into(),
        latency: Duration::ZERO,
        bytes_per_second: None,
        cut_probability: 0.6,
        cut_within_bytes: 1_500,
    };
    let proxy = FlakyProxy::start(address_of(&team.server.url), flaky, 42).unwrap();
    let mut phones: Vec<Device> = (0..3)
        .map(|n| {
            let mut phone = team.device(&format!("phone-{n}"), Role::Field);
            phone.point_at(&proxy.url());
            log_some(&mut phone, 12);
            phone
        })
        .collect();
    for _round in 0..3 {
        for phone in &mut phones {
            let report = sync(phone);
            assert_eq!(report.pending, 0, "{report:?}");
        }
    }
    assert!(
        proxy.stats().cuts > 3,
        "the link did cut: {:?}",
        proxy.stats()
    );
    let mut made = BTreeSet::new();
    for phone in &phones {
        made.extend(held_changes(phone));
    }
    assert_stored_exactly(team.data.path(), &made);
    assert_same_documents(&phones[0], &phones[1]);
    assert_same_documents(&phones[0], &phones[2]);
}

#[test]
fn a_tower_out_of_reach_for_a_while_only_delays_the_sync() {
    let team = TeamFixture::start("sonora", Default::default());
    let proxy = FlakyProxy::start(address_of(&team.server.url), clean_link(), 3).unwrap();
    let mut phone = team.device("phone", Role::Field);
    phone.point_at(&proxy.url());
    log_some(&mut phone, 5);
    proxy.refuse_for(Duration::from_millis(300));
    let report = sync(&mut phone);
    assert!(report.retries >= 1, "{report:?}");
    assert_eq!(report.pending, 0);
    assert!(proxy.stats().refused >= 1);
    assert_stored_exactly(team.data.path(), &held_changes(&phone));
}

#[test]
fn a_server_killed_and_restarted_mid_exchange_loses_nothing_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let stores = tempfile::tempdir().unwrap();
    add_team(data.path(), "sonora");
    let enrolled = enroll(data.path(), "sonora", Role::Field);
    let server = ServerProcess::spawn(data.path());
    // Slow enough that the kill lands while the backlog is still moving.
    let slow = LinkProfile {
        name: "test-slow".into(),
        latency: Duration::from_millis(5),
        bytes_per_second: Some(40_000),
        cut_probability: 0.0,
        cut_within_bytes: 0,
    };
    let proxy = FlakyProxy::start(address_of(&server.url), slow, 5).unwrap();
    let mut phone = Device::new(stores.path(), "phone", &proxy.url(), &enrolled);
    log_some(&mut phone, 120);
    let made = held_changes(&phone);

    let options = SyncOptions {
        max_page_bytes: 16 * 1024,
        first_retry_delay: Duration::from_millis(100),
        max_failed_attempts: 40,
        ..SyncOptions::default()
    };
    let syncing = std::thread::spawn(move || {
        let report =
            client::sync_with(&mut phone.store, options, |_| {}).map_err(|e| e.to_string());
        (phone, report)
    });
    std::thread::sleep(Duration::from_millis(1_500));
    let acknowledged_before_kill = stored_change_hashes(data.path()).len();
    server.kill();
    proxy.cut_open_connections();
    let restarted = ServerProcess::spawn(data.path());
    proxy.set_upstream(address_of(&restarted.url));

    let (phone, report) = syncing.join().unwrap();
    let report = report.expect("the sync finishes against the restarted server");
    assert!(
        acknowledged_before_kill > 0 && acknowledged_before_kill < made.len(),
        "the kill landed mid-backlog ({acknowledged_before_kill} of {} stored)",
        made.len()
    );
    assert!(report.retries >= 1, "{report:?}");
    assert_eq!(report.pending, 0);
    assert_stored_exactly(data.path(), &made);
    assert_eq!(held_changes(&phone), made);
}
