//! A simulated field deployment: many phones, each with a real store file, logging and editing
//! encounters offline around the Sonoran desert and the Río Bravo, then syncing with a real
//! server over a simulated link ([`crate::link_simulator`]); afterwards every device's documents
//! are compared with the server's. `auxilio sim` prints its figures; `auxilio demo` runs it in
//! rounds so a newcomer sees data flow.
//!
//! The phones are the same code the app runs (`auxilio_core::DeviceStore` and [`crate::client`]);
//! only their users are simulated.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use auxilio_core::document::EncounterDocument;
use auxilio_core::edit::FieldEdit;
use auxilio_core::relay::{RelayRole, relay_over};
use auxilio_core::store::{Enrolment, StoreError, heads_hex};
use auxilio_core::{DeviceStore, Encounter, EncounterId};
use rusqlite::params;
use serde::Serialize;

use crate::client::{self, ClientError, SyncOptions};
use crate::database::{DATABASE_FILE, Database, DatabaseError};
use crate::directory::{self, DirectoryError, Role};
use crate::http::{AppState, ServerConfig};
use crate::link_simulator::{FlakyProxy, LinkProfile, LinkStats, SplitMix64};

#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("a simulated device's store failed: {0}")]
    Store(#[from] StoreError),
    #[error("device {device} could not sync: {source}")]
    Sync {
        device: usize,
        #[source]
        source: Box<ClientError>,
    },
    #[error("device {from} could not relay to device {to}: {message}")]
    Relay {
        from: usize,
        to: usize,
        message: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the server could not start: {0}")]
    Server(String),
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulationConfig {
    pub devices: usize,
    /// Encounters each device logs offline.
    pub encounters_per_device: usize,
    /// Edits each device makes offline, to its own encounters (a status, a count, a note).
    pub edits_per_device: usize,
    pub link: LinkProfile,
    /// Devices per team; each team sees only its own encounters.
    pub team_size: usize,
    /// Half of each team stays out of signal at first and relays its encounters to a teammate
    /// phone-to-phone; the teammate uploads them.
    pub relay: bool,
    /// Devices syncing at the same time.
    pub concurrency: usize,
    pub seed: u64,
    /// Team names and the place (an index into [`PLACES`]) each works around; when empty,
    /// teams are named `sim-<run>-<n>` and team `n` works around place `n`.
    pub teams: Vec<(String, usize)>,
}

impl Default for SimulationConfig {
    fn default() -> Self {
        Self {
            devices: 10,
            encounters_per_device: 20,
            edits_per_device: 5,
            link: LinkProfile::named("lan").expect("a known profile"),
            team_size: 10,
            relay: false,
            concurrency: 8,
            seed: 1,
            teams: Vec::new(),
        }
    }
}

/// The figures of a run, printed as one JSON line by `auxilio sim`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimulationReport {
    pub devices: usize,
    /// Encounters logged, over all devices.
    pub encounters: usize,
    /// Every device holds exactly the documents the server holds for its team (same ids, same
    /// heads).
    pub converged: bool,
    /// Changes made on a device and missing from the server at the end.
    pub lost: u64,
    /// Changes or encounters the server holds more than once.
    pub duplicated: u64,
    /// HTTP requests sent, including those cut off and retried.
    pub requests: u64,
    pub round_trips_max: u32,
    pub round_trips_mean: f64,
    /// The most round trips a device needed besides its retries after cuts: what a device
    /// pays when nothing is lost (one per page, plus the one that finds nothing more).
    pub round_trips_without_retries_max: u32,
    /// Bytes that crossed the simulated link, HTTP headers included.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Bytes of raw Automerge changes that had to move: each change up once, and down to each
    /// device of its team that did not already hold it.
    pub floor_bytes: u64,
    pub wall_s: f64,
    pub link: String,
    pub retries: u64,
    pub cuts: u64,
    /// Changes that reached a teammate phone-to-phone.
    pub relayed: u64,
}

/// Where the simulated devices sync.
#[derive(Debug, Clone)]
pub enum SimulationTarget {
    /// A server started for the run on `listen`, stopped afterwards, with its data in
    /// `data_dir` (kept) or in a temporary directory (removed).
    OwnServer {
        data_dir: Option<PathBuf>,
        listen: SocketAddr,
    },
    /// A running server: its data directory (devices are enrolled there, in new teams named
    /// `sim-<run>-<n>`) and its address.
    Running {
        data_dir: PathBuf,
        server_url: String,
    },
}

/// Places field teams work, with the terrain there: the Sonoran desert along the Arizona line,
/// and crossings of the Río Bravo.
pub const PLACES: &[(&str, f64, f64, &str)] = &[
    ("Sonoyta", 31.86, -112.85, "desert"),
    ("Altar", 30.71, -111.83, "desert"),
    ("Sásabe", 31.48, -111.54, "desert"),
    ("El Desemboque", 30.53, -113.02, "desert"),
    ("Ciudad Juárez", 31.69, -106.42, "river"),
    ("Piedras Negras", 28.70, -100.52, "river"),
    ("Nuevo Laredo", 27.48, -99.51, "river"),
    ("Reynosa", 26.09, -98.28, "river"),
    ("Matamoros", 25.87, -97.50, "river"),
];

const SERVICES: &[&str] = &[
    "rescue",
    "first_aid",
    "humanitarian_aid",
    "orientation",
    "transfer_hospital",
    "located_missing",
];

/// A plausible encounter near `place` (an index into [`PLACES`]).
pub(crate) fn generated_encounter(random: &mut SplitMix64, place: usize) -> Encounter {
    let (_, lat, lon, terrain) = PLACES[place % PLACES.len()];
    let jitter = |random: &mut SplitMix64| (random.next_unit() - 0.5) * 0.3;
    let first = SERVICES[random.next_below(SERVICES.len() as u64) as usize];
    let second = SERVICES[random.next_below(SERVICES.len() as u64) as usize];
    let hazard = if terrain == "river" {
        "drowning"
    } else {
        "heat"
    };
    let (women, men) = (random.next_below(3), 1 + random.next_below(4));
    let json = serde_json::json!({
        "services": [first, second],
        "location": {
            "lat": lat + jitter(random),
            "lon": lon + jitter(random),
            "accuracy_m": 10 + random.next_below(50),
        },
        "terrain": terrain,
        "hazards": [hazard],
        "counts": {
            "f": {"18-59": women},
            "m": {"18-59": men},
            "injured": random.next_below(2),
        },
        "nationality_counts": {"HND": men, "GTM": women},
    });
    serde_json::from_value(json).expect("generated encounters follow the schema")
}

/// One offline edit of a generated encounter.
fn generated_edit(random: &mut SplitMix64, n: usize) -> FieldEdit {
    let text = match random.next_below(3) {
        0 => "status=closed".to_string(),
        1 => format!("counts.injured={}", random.next_below(2)),
        _ => format!("notes=water given, group walking north ({n})"),
    };
    text.parse().expect("generated edits are well formed")
}

/// A server running in this process on a loopback port, for the length of a run.
#[derive(Debug)]
struct OwnServer {
    address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OwnServer {
    fn start(data_dir: &Path, listen: SocketAddr) -> Result<Self, SimulationError> {
        let database = Database::open(data_dir)?;
        let state = AppState::new(database, ServerConfig::default());
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let (started, ready) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = started.send(Err(err.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        let _ = started.send(Err(err.to_string()));
                        return;
                    }
                };
                let _ = started.send(Ok(()));
                let stop = async {
                    let _ = signal.await;
                };
                if let Err(err) = crate::http::serve(listener, state, stop).await {
                    tracing::error!(%err, "the simulation's server stopped");
                }
            });
        });
        ready
            .recv()
            .map_err(|e| SimulationError::Server(e.to_string()))?
            .map_err(SimulationError::Server)?;
        Ok(Self {
            address,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A simulated phone.
#[derive(Debug)]
struct SimulatedDevice {
    store: DeviceStore,
    team: String,
    round_trips: u32,
    retries: u32,
    /// Hashes of the changes it held before its first sync (made or relayed to it).
    held_before_sync: BTreeSet<Vec<u8>>,
}

fn all_change_hashes(store: &DeviceStore) -> Result<BTreeSet<Vec<u8>>, SimulationError> {
    let mut out = BTreeSet::new();
    for id in store.encounter_ids()? {
        for change in store.document(id)?.changes() {
            out.insert(change.hash().0.to_vec());
        }
    }
    Ok(out)
}

fn heads_of(store: &DeviceStore) -> Result<BTreeMap<EncounterId, Vec<String>>, SimulationError> {
    let mut out = BTreeMap::new();
    for id in store.encounter_ids()? {
        out.insert(id, heads_hex(&store.document(id)?.heads()));
    }
    Ok(out)
}

/// A deployment being simulated: its server (own or running), its link and its phones.
#[derive(Debug)]
pub struct Deployment {
    config: SimulationConfig,
    data_dir: PathBuf,
    proxy: FlakyProxy,
    devices: Vec<Mutex<SimulatedDevice>>,
    teams: Vec<String>,
    places: Vec<usize>,
    random: SplitMix64,
    logged: usize,
    relayed: u64,
    _stores: tempfile::TempDir,
    _own_data: Option<tempfile::TempDir>,
    _own_server: Option<OwnServer>,
}

impl Deployment {
    /// Starts the server (for [`SimulationTarget::OwnServer`]), the link, and enrols the
    /// devices in teams of `config.team_size`.
    pub fn start(
        config: SimulationConfig,
        target: SimulationTarget,
    ) -> Result<Self, SimulationError> {
        let (data_dir, server_address, own_data, own_server) = match target {
            SimulationTarget::OwnServer {
                data_dir: Some(data_dir),
                listen,
            } => {
                let server = OwnServer::start(&data_dir, listen)?;
                (data_dir, server.address, None, Some(server))
            }
            SimulationTarget::OwnServer {
                data_dir: None,
                listen,
            } => {
                let data = tempfile::Builder::new().prefix("auxilio-sim-").tempdir()?;
                // A data directory inside the temporary one: its audit key, made beside it,
                // goes away with it.
                let data_dir = data.path().join("data");
                let server = OwnServer::start(&data_dir, listen)?;
                (data_dir, server.address, Some(data), Some(server))
            }
            SimulationTarget::Running {
                data_dir,
                server_url,
            } => {
                let address = server_url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse()
                    .map_err(|_| {
                        SimulationError::Server(format!(
                            "--server must be http://IP:PORT of the running server, not {server_url:?}"
                        ))
                    })?;
                (data_dir, address, None, None)
            }
        };
        let database = Database::open_existing(&data_dir)?;
        let run = SplitMix64::new(config.seed ^ std::process::id() as u64).next_u64() & 0xff_ffff;
        let team_count = config.devices.div_ceil(config.team_size.max(1)).max(1);
        let (teams, places): (Vec<String>, Vec<usize>) = if config.teams.is_empty() {
            (0..team_count)
                .map(|n| (format!("sim-{run:06x}-{n}"), n))
                .unzip()
        } else {
            config.teams.iter().cloned().unzip()
        };
        for team in &teams {
            match database.write(|conn| directory::add_team(conn, team)) {
                Ok(()) | Err(DirectoryError::TeamExists(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        let proxy = FlakyProxy::start(server_address, config.link.clone(), config.seed)?;
        let stores = tempfile::Builder::new()
            .prefix("auxilio-sim-devices-")
            .tempdir()?;
        let mut devices = Vec::new();
        for n in 0..config.devices {
            let team = teams[(n / config.team_size.max(1)) % teams.len()].clone();
            let enrolled = database.write(|conn| {
                directory::enroll(conn, &team, Role::Field, &format!("simulated phone {n}"))
            })?;
            let mut store = DeviceStore::open(stores.path().join(format!("phone-{n}.db")))?;
            store.enrol(&Enrolment {
                server_url: proxy.url(),
                token: enrolled.token,
                device_id: enrolled.device_id,
                team: team.clone(),
                role: Role::Field.to_string(),
                agent: format!("agent-{n}"),
            })?;
            devices.push(Mutex::new(SimulatedDevice {
                store,
                team,
                round_trips: 0,
                retries: 0,
                held_before_sync: BTreeSet::new(),
            }));
        }
        let deployment = Self {
            random: SplitMix64::new(config.seed),
            config,
            data_dir,
            proxy,
            devices,
            teams,
            places,
            logged: 0,
            relayed: 0,
            _stores: stores,
            _own_data: own_data,
            _own_server: own_server,
        };
        deployment.learn_relay_keys()?;
        Ok(deployment)
    }

    /// Every phone registers its relay key and learns its teammates' (twice round, so the first
    /// to register learns the last), as phones do when they sync at the base before going out
    /// of signal: a phone relays only with teammates whose keys it holds.
    fn learn_relay_keys(&self) -> Result<(), SimulationError> {
        /// Tries per phone: the link may cut each request, as it cuts syncs.
        const ATTEMPTS: u32 = 50;
        for _ in 0..2 {
            for (n, device) in self.devices.iter().enumerate() {
                let mut device = device.lock().unwrap_or_else(|p| p.into_inner());
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match client::refresh_relay_keys(&mut device.store) {
                        Ok(_) => break,
                        Err(err @ ClientError::Unreachable { .. }) if attempt < ATTEMPTS => {
                            tracing::debug!(device = n, %err, "relay keys request cut; retrying");
                        }
                        Err(err) => {
                            return Err(SimulationError::Sync {
                                device: n,
                                source: Box::new(err),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The server's address as devices see it (through the simulated link).
    pub fn link_url(&self) -> String {
        self.proxy.url()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn link_stats(&self) -> LinkStats {
        self.proxy.stats()
    }

    /// Each device logs `encounters` encounters and makes `edits` edits to them, offline.
    pub fn work_offline(&mut self, encounters: usize, edits: usize) -> Result<(), SimulationError> {
        for (n, device) in self.devices.iter_mut().enumerate() {
            let device = device.get_mut().unwrap_or_else(|p| p.into_inner());
            let place = self.places[(n / self.config.team_size.max(1)) % self.places.len()];
            let mut own = Vec::new();
            for _ in 0..encounters {
                let encounter = generated_encounter(&mut self.random, place);
                own.push(device.store.log(encounter)?);
                self.logged += 1;
            }
            if own.is_empty() {
                continue;
            }
            for edit in 0..edits {
                let id = own[self.random.next_below(own.len() as u64) as usize];
                device
                    .store
                    .edit(id, &[generated_edit(&mut self.random, edit)])?;
            }
        }
        Ok(())
    }

    /// Within each team, every other device relays to the next one phone-to-phone (over a
    /// loopback socket pair, as Bluetooth would carry it). Returns the devices that relayed and
    /// now wait out of signal.
    pub fn relay_within_teams(&mut self) -> Result<Vec<usize>, SimulationError> {
        let mut out_of_signal = Vec::new();
        let size = self.config.team_size.max(1);
        for from in (0..self.devices.len()).step_by(2) {
            let to = from + 1;
            if to >= self.devices.len() || from / size != to / size {
                continue;
            }
            let (mut left, mut right) = std::os::unix::net::UnixStream::pair()?;
            let (first, second) = self.devices.split_at_mut(to);
            let a = first[from].get_mut().unwrap_or_else(|p| p.into_inner());
            let b = second[0].get_mut().unwrap_or_else(|p| p.into_inner());
            let relay_error = |message: String| SimulationError::Relay { from, to, message };
            let report = std::thread::scope(|scope| {
                let responder =
                    scope.spawn(|| relay_over(&mut b.store, &mut right, RelayRole::Responder));
                let initiator = relay_over(&mut a.store, &mut left, RelayRole::Initiator);
                let responder = responder
                    .join()
                    .map_err(|_| relay_error("panicked".into()))?;
                responder.map_err(|e| relay_error(e.to_string()))?;
                initiator.map_err(|e| relay_error(e.to_string()))
            })?;
            self.relayed += report.sent;
            out_of_signal.push(from);
        }
        Ok(out_of_signal)
    }

    /// Syncs every device not in `skip`, `concurrency` at a time; `progress` sees (done, total).
    pub fn sync_round(
        &self,
        skip: &[usize],
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(), SimulationError> {
        let options = if self.config.link.name == "lan" {
            SyncOptions::for_lan()
        } else {
            SyncOptions::default()
        };
        let queue: Vec<usize> = (0..self.devices.len())
            .filter(|n| !skip.contains(n))
            .collect();
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let failure: Mutex<Option<SimulationError>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..self.config.concurrency.max(1) {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        let Some(&n) = queue.get(index) else { break };
                        let mut device = self.devices[n].lock().unwrap_or_else(|p| p.into_inner());
                        if device.round_trips == 0 {
                            match all_change_hashes(&device.store) {
                                Ok(held) => device.held_before_sync = held,
                                Err(err) => {
                                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                                    break;
                                }
                            }
                        }
                        match client::sync_with(&mut device.store, options, |_| {}) {
                            Ok(report) => {
                                device.round_trips += report.round_trips;
                                device.retries += report.retries;
                            }
                            Err(source) => {
                                *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(SimulationError::Sync {
                                        device: n,
                                        source: Box::new(source),
                                    });
                                break;
                            }
                        }
                        drop(device);
                        progress(done.fetch_add(1, Ordering::SeqCst) + 1, queue.len());
                    }
                });
            }
        });
        match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Encounters the server holds in the deployment's teams.
    pub fn stored_encounters(&self) -> Result<u64, SimulationError> {
        let conn = rusqlite::Connection::open_with_flags(
            self.data_dir.join(DATABASE_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut total = 0u64;
        for team in &self.teams {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM encounters WHERE team = ?1",
                params![team],
                |row| row.get(0),
            )?;
            total += n.unsigned_abs();
        }
        Ok(total)
    }

    pub fn teams(&self) -> &[String] {
        &self.teams
    }

    /// Compares every device with the server and adds up the figures.
    pub fn report(&self, started: Instant) -> Result<SimulationReport, SimulationError> {
        let conn = rusqlite::Connection::open_with_flags(
            self.data_dir.join(DATABASE_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut server_heads: BTreeMap<String, BTreeMap<EncounterId, Vec<String>>> =
            BTreeMap::new();
        let mut server_changes: BTreeMap<String, BTreeMap<Vec<u8>, u64>> = BTreeMap::new();
        let mut duplicated = 0u64;
        for team in &self.teams {
            let mut statement =
                conn.prepare("SELECT id, document FROM encounters WHERE team = ?1")?;
            let rows = statement.query_map(params![team], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
            })?;
            let heads = server_heads.entry(team.clone()).or_default();
            for row in rows {
                let (id, document) = row?;
                let id = EncounterId::from_slice(&id)
                    .map_err(|e| SimulationError::Server(e.to_string()))?;
                let mut document = EncounterDocument::load(&document, None)
                    .map_err(|e| SimulationError::Server(e.to_string()))?;
                heads.insert(id, heads_hex(&document.heads()));
            }
            let mut statement =
                conn.prepare("SELECT hash, length(change) FROM changes WHERE team = ?1")?;
            let rows = statement.query_map(params![team], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
            })?;
            let changes = server_changes.entry(team.clone()).or_default();
            for row in rows {
                let (hash, length) = row?;
                if changes.insert(hash, length.unsigned_abs()).is_some() {
                    duplicated += 1;
                }
            }
        }
        let stored_encounters: usize = server_heads.values().map(BTreeMap::len).sum();
        duplicated += stored_encounters.saturating_sub(self.logged) as u64;

        let mut converged = true;
        let mut made = BTreeSet::new();
        let mut floor_bytes: u64 = server_changes.values().flat_map(|c| c.values()).sum();
        let mut round_trips = Vec::new();
        let mut round_trips_without_retries_max = 0;
        let mut retries = 0u64;
        for device in &self.devices {
            let device = device.lock().unwrap_or_else(|p| p.into_inner());
            made.extend(device.held_before_sync.iter().cloned());
            let team_changes = &server_changes[&device.team];
            floor_bytes += team_changes
                .iter()
                .filter(|(hash, _)| !device.held_before_sync.contains(*hash))
                .map(|(_, length)| length)
                .sum::<u64>();
            if heads_of(&device.store)? != server_heads[&device.team] {
                converged = false;
            }
            round_trips.push(device.round_trips);
            round_trips_without_retries_max = round_trips_without_retries_max
                .max(device.round_trips.saturating_sub(device.retries));
            retries += u64::from(device.retries);
        }
        let stored: BTreeSet<&Vec<u8>> = server_changes.values().flat_map(|c| c.keys()).collect();
        let lost = made.iter().filter(|hash| !stored.contains(hash)).count() as u64;
        let link = self.proxy.stats();
        let requests: u64 = round_trips.iter().map(|&r| u64::from(r)).sum();
        Ok(SimulationReport {
            devices: self.devices.len(),
            encounters: self.logged,
            converged,
            lost,
            duplicated,
            requests,
            round_trips_max: round_trips.iter().copied().max().unwrap_or(0),
            round_trips_mean: if round_trips.is_empty() {
                0.0
            } else {
                requests as f64 / round_trips.len() as f64
            },
            round_trips_without_retries_max,
            bytes_up: link.bytes_up,
            bytes_down: link.bytes_down,
            floor_bytes,
            wall_s: (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
            link: self.config.link.name.clone(),
            retries,
            cuts: link.cuts,
            relayed: self.relayed,
        })
    }
}

/// Runs a whole simulation: offline work (and relays), a sync round in which every device
/// uploads (devices that relayed wait for a second round, as if still out of signal), then a
/// round in which every device collects what others uploaded after it; then the comparison.
/// `progress` gets a line per step.
pub fn simulate(
    config: SimulationConfig,
    target: SimulationTarget,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<SimulationReport, SimulationError> {
    let started = Instant::now();
    let (encounters, edits, relay) = (
        config.encounters_per_device,
        config.edits_per_device,
        config.relay,
    );
    let mut deployment = Deployment::start(config, target)?;
    progress(&format!(
        "{} devices in {} teams, syncing through a `{}` link at {}",
        deployment.devices.len(),
        deployment.teams.len(),
        deployment.config.link.name,
        deployment.link_url()
    ));
    deployment.work_offline(encounters, edits)?;
    progress(&format!("logged {} encounters offline", deployment.logged));
    let out_of_signal = if relay {
        let waiting = deployment.relay_within_teams()?;
        progress(&format!(
            "{} devices relayed {} changes to a teammate and stay out of signal",
            waiting.len(),
            deployment.relayed
        ));
        waiting
    } else {
        Vec::new()
    };
    let show = |round: &'static str| {
        move |done: usize, total: usize| {
            if done == total || done.is_multiple_of(10) {
                progress(&format!("{round}: {done}/{total} devices synced"));
            }
        }
    };
    deployment.sync_round(&out_of_signal, &show("round 1 (upload)"))?;
    if !out_of_signal.is_empty() {
        let in_signal: Vec<usize> = (0..deployment.devices.len())
            .filter(|n| !out_of_signal.contains(n))
            .collect();
        deployment.sync_round(
            &in_signal,
            &show("round 1b (relaying devices reach signal)"),
        )?;
    }
    deployment.sync_round(&[], &show("round 2 (collect)"))?;
    deployment.report(started)
}
