//! Property: any interleaving, duplication, reordering and loss of sync requests and responses
//! between several devices and the server ends, once everyone syncs cleanly, with the same merged
//! state on the server and on every device that may see it, and with no change lost.
//!
//! Devices use real store files and the server's real ledger on a real SQLite file; the HTTP
//! layer is left out here (the end-to-end tests cover it) so that many cases run quickly. Pages
//! are kept tiny so paging is exercised too.

use std::collections::{BTreeMap, BTreeSet};

use auxilio_core::edit::FieldEdit;
use auxilio_core::protocol::{SyncRequest, SyncResponse};
use auxilio_core::store::{Enrolment, heads_hex};
use auxilio_core::{DeviceStore, Encounter, EncounterId};
use auxilio_server::Database;
use auxilio_server::directory::{self, Device, Role};
use auxilio_server::ledger::{self, PageLimits};
use auxilio_tests::full_or_short;
use proptest::prelude::*;

const SERVICES: [&str; 4] = [
    "first_aid",
    "transfer_hospital",
    "orientation",
    "legal_advice",
];

#[derive(Debug, Clone)]
enum EditKind {
    Count(u32),
    AddService(usize),
    Close(bool),
    Note(String),
    AddCasualty,
}

#[derive(Debug, Clone)]
enum Op {
    Log {
        device: usize,
    },
    Edit {
        device: usize,
        pick: usize,
        edit: EditKind,
    },
    /// The device builds a request; it goes into the network and may arrive late, twice or never.
    Send {
        device: usize,
    },
    /// Like `Send`, but only the first page of the device's pending changes, as a sync on a
    /// bounded link sends them.
    SendPage {
        device: usize,
        budget: usize,
    },
    /// One request in the network reaches the server; its response may be lost, or travel back.
    Deliver {
        pick: usize,
        keep_copy: bool,
        reply: bool,
    },
    /// One response in the network reaches its device: late, out of order, or more than once.
    Receive {
        pick: usize,
        keep_copy: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let device = 0..4usize;
    let edit = prop_oneof![
        (0..20u32).prop_map(EditKind::Count),
        (0..SERVICES.len()).prop_map(EditKind::AddService),
        any::<bool>().prop_map(EditKind::Close),
        "[a-z ]{0,12}".prop_map(EditKind::Note),
        Just(EditKind::AddCasualty),
    ];
    prop_oneof![
        1 => device.clone().prop_map(|device| Op::Log { device }),
        3 => (device.clone(), any::<usize>(), edit).prop_map(|(device, pick, edit)| Op::Edit { device, pick, edit }),
        2 => device.clone().prop_map(|device| Op::Send { device }),
        1 => (device.clone(), 1..3000usize).prop_map(|(device, budget)| Op::SendPage { device, budget }),
        3 => (any::<usize>(), any::<bool>(), prop::bool::weighted(0.7))
            .prop_map(|(pick, keep_copy, reply)| Op::Deliver { pick, keep_copy, reply }),
        3 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, keep_copy)| Op::Receive { pick, keep_copy }),
    ]
}

struct World {
    dir: tempfile::TempDir,
    database: Database,
    devices: Vec<(Device, DeviceStore)>,
    in_flight: Vec<(usize, SyncRequest)>,
    responses: Vec<(usize, SyncResponse)>,
    /// Every change hash any device ever made: none may be missing at the end.
    made: BTreeSet<Vec<u8>>,
    limits: PageLimits,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("server")).unwrap();
        let mut devices = Vec::new();
        for (index, (team, role)) in [
            ("a", Role::Field),
            ("a", Role::Field),
            ("b", Role::Field),
            ("b", Role::TeamLead),
        ]
        .into_iter()
        .enumerate()
        {
            let enrolled = database
                .write(|conn| {
                    let _ = directory::add_team(conn, team);
                    directory::enroll(conn, team, role, "")
                })
                .unwrap();
            let device = database
                .read(|conn| directory::find_device(conn, enrolled.device_id))
                .unwrap()
                .unwrap();
            let mut store =
                DeviceStore::open(dir.path().join(format!("device-{index}.db"))).unwrap();
            store
                .enrol(&Enrolment {
                    server_url: "http://127.0.0.1:9".into(),
                    token: enrolled.token,
                    device_id: enrolled.device_id,
                    team: team.into(),
                    role: role.to_string(),
                    agent: format!("agent-{index}"),
                })
                .unwrap();
            devices.push((device, store));
        }
        Self {
            dir,
            database,
            devices,
            in_flight: Vec::new(),
            responses: Vec::new(),
            made: BTreeSet::new(),
            limits: PageLimits::at_most(400),
        }
    }

    fn server_sync(&self, device: usize, request: &SyncRequest) -> SyncResponse {
        let device = &self.devices[device].0;
        self.database
            .write(|conn| ledger::sync(conn, device, request, self.limits))
            .unwrap()
    }

    fn remember_pending(&mut self, device: usize) {
        for group in self.devices[device].1.sync_request().unwrap().changes {
            for change in group.changes {
                let change = automerge::Change::from_bytes(change.to_vec()).unwrap();
                self.made.insert(change.hash().0.to_vec());
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Log { device } => {
                let encounter: Encounter = serde_json::from_str(
                    r#"{"services":["rescue"],"counts":{"m":{"18-59":1},"f":{"18-59":1}}}"#,
                )
                .unwrap();
                self.devices[device].1.log(encounter).unwrap();
                self.remember_pending(device);
            }
            Op::Edit { device, pick, edit } => {
                let ids = self.devices[device].1.encounter_ids().unwrap();
                if ids.is_empty() {
                    return;
                }
                let id = ids[pick % ids.len()];
                let text = match edit {
                    EditKind::Count(n) => format!("counts.m.18-59={n}"),
                    EditKind::AddService(i) => format!("services+={}", SERVICES[i]),
                    EditKind::Close(closed) => {
                        format!("status={}", if closed { "closed" } else { "open" })
                    }
                    EditKind::Note(text) => format!("notes={text}"),
                    EditKind::AddCasualty => format!(
                        r#"casualties.{}={{"sex":"f"}}"#,
                        auxilio_core::schema::new_person_ref()
                    ),
                };
                let edit: FieldEdit = text.parse().unwrap();
                self.devices[device].1.edit(id, &[edit]).unwrap();
                self.remember_pending(device);
            }
            Op::Send { device } => {
                let request = self.devices[device].1.sync_request().unwrap();
                self.in_flight.push((device, request));
            }
            Op::SendPage { device, budget } => {
                let page = self.devices[device].1.upload_page(0, budget).unwrap();
                self.in_flight.push((device, page.request));
            }
            Op::Deliver {
                pick,
                keep_copy,
                reply,
            } => {
                if self.in_flight.is_empty() {
                    return;
                }
                let index = pick % self.in_flight.len();
                let (device, request) = if keep_copy {
                    self.in_flight[index].clone()
                } else {
                    self.in_flight.remove(index)
                };
                let response = self.server_sync(device, &request);
                if reply {
                    self.responses.push((device, response));
                }
            }
            Op::Receive { pick, keep_copy } => {
                if self.responses.is_empty() {
                    return;
                }
                let index = pick % self.responses.len();
                let (device, response) = if keep_copy {
                    self.responses[index].clone()
                } else {
                    self.responses.remove(index)
                };
                self.devices[device].1.apply_response(&response).unwrap();
            }
        }
    }

    /// Everyone reaches good signal: each device syncs until nothing more waits, twice round.
    fn settle(&mut self) {
        for _ in 0..2 {
            for device in 0..self.devices.len() {
                loop {
                    let request = self.devices[device].1.sync_request().unwrap();
                    let response = self.server_sync(device, &request);
                    let applied = self.devices[device].1.apply_response(&response).unwrap();
                    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
                    if !response.more {
                        break;
                    }
                }
            }
        }
    }

    /// The server's merged state: encounter → (team, heads, record).
    fn server_state(&self) -> BTreeMap<EncounterId, (String, Vec<String>, Encounter)> {
        self.database
            .read(|conn| {
                let mut statement = conn.prepare("SELECT id, team FROM encounters").unwrap();
                let rows: Vec<(Vec<u8>, String)> = statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let mut out = BTreeMap::new();
                for (id, team) in rows {
                    let id = EncounterId::from_slice(&id).unwrap();
                    let mut document = auxilio_server::changes::load_document(conn, id)
                        .unwrap()
                        .unwrap();
                    out.insert(
                        id,
                        (
                            team,
                            heads_hex(&document.heads()),
                            document.encounter().unwrap(),
                        ),
                    );
                }
                Ok::<_, rusqlite::Error>(out)
            })
            .unwrap()
    }
}

fn check_converged(world: &mut World) {
    let server = world.server_state();
    let stored: BTreeSet<Vec<u8>> =
        auxilio_tests::stored_change_hashes(&world.dir.path().join("server"))
            .into_iter()
            .collect();
    let lost: Vec<_> = world.made.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} changes made on devices never reached the server",
        lost.len()
    );

    for (device, store) in &world.devices {
        assert_eq!(store.pending_count().unwrap(), 0);
        assert_eq!(store.held_count().unwrap(), 0);
        let visible: BTreeSet<EncounterId> = server
            .iter()
            .filter(|(_, (team, _, _))| device.may_see_team(team))
            .map(|(id, _)| *id)
            .collect();
        let held: BTreeSet<EncounterId> = store.encounter_ids().unwrap().into_iter().collect();
        assert_eq!(
            held, visible,
            "device of team {} ({}) holds exactly what it may see",
            device.team, device.role
        );
        for id in held {
            let view = store.show(id).unwrap();
            let (_, heads, encounter) = &server[&id];
            assert_eq!(
                &view.heads, heads,
                "device and server hold the same document"
            );
            assert_eq!(&view.encounter, encounter);
        }
    }
}

proptest! {
    // 48 cases in the full run, 16 in a plain `cargo test`.
    #![proptest_config(ProptestConfig {
        cases: full_or_short("any_delivery_order_converges_without_loss", 48, 16),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_delivery_order_converges_without_loss(ops in prop::collection::vec(op(), 1..60)) {
        let mut world = World::new();
        for op in ops {
            world.apply(op);
        }
        world.settle();
        check_converged(&mut world);
    }
}

#[test]
fn a_request_replayed_after_later_ones_changes_nothing() {
    let mut world = World::new();
    world.apply(Op::Log { device: 0 });
    world.apply(Op::Send { device: 0 });
    let (_, first) = world.in_flight[0].clone();
    world.apply(Op::Deliver {
        pick: 0,
        keep_copy: false,
        reply: true,
    });
    world.apply(Op::Receive {
        pick: 0,
        keep_copy: false,
    });
    world.apply(Op::Edit {
        device: 0,
        pick: 0,
        edit: EditKind::Count(7),
    });
    world.settle();
    let before = auxilio_tests::stored_snapshot(&world.dir.path().join("server"));
    let response = world.server_sync(0, &first);
    world.devices[0].1.apply_response(&response).unwrap();
    assert_eq!(
        auxilio_tests::stored_snapshot(&world.dir.path().join("server")),
        before
    );
    world.settle();
    check_converged(&mut world);
    let id = world.devices[0].1.encounter_ids().unwrap()[0];
    assert_eq!(
        world.devices[1]
            .1
            .show(id)
            .unwrap()
            .encounter
            .counts
            .m
            .from_18_to_59,
        7
    );
}
