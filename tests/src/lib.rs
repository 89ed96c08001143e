//! The shared harness of the end-to-end tests: servers on `127.0.0.1:0` with temporary data
//! directories (in process, or as a real `auxilio` process that can be SIGKILLed), simulated
//! devices with real store files, and small HTTP helpers. [`baseline`] is the per-document
//! Automerge sync that the benchmark compares Auxilio's protocol with.

pub mod baseline;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use auxilio_core::edit::FieldEdit;
use auxilio_core::store::{EncounterView, Enrolment};
use auxilio_core::{DeviceStore, Encounter, EncounterId};
use auxilio_server::client::{self, ClientError, SyncOptions, SyncReport};
use auxilio_server::directory::{self, Enrolled, Role};
use auxilio_server::{AppState, Database, ServerConfig};

/// Adds a team, straight on the data directory (as `auxilio admin team add` does).
pub fn add_team(data_dir: &Path, team: &str) {
    let database = Database::open(data_dir).unwrap();
    database
        .write(|conn| directory::add_team(conn, team))
        .unwrap();
}

/// Enrols a device, straight on the data directory (as `auxilio admin device enroll` does).
pub fn enroll(data_dir: &Path, team: &str, role: Role) -> Enrolled {
    let database = Database::open(data_dir).unwrap();
    database
        .write(|conn| directory::enroll(conn, team, role, "test"))
        .unwrap()
}

/// A server running inside the test process on a loopback port.
#[derive(Debug)]
pub struct TestServer {
    pub url: String,
    pub data_dir: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on `data_dir` with the default configuration.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, ServerConfig::default())
    }

    pub fn start_with(data_dir: &Path, config: ServerConfig) -> Self {
        let database = Database::open(data_dir).unwrap();
        let state = AppState::new(database, config);
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let address = std_listener.local_addr().unwrap();
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                auxilio_server::serve(listener, state, async {
                    let _ = signal.await;
                })
                .await
                .unwrap();
            });
        });
        let server = Self {
            url: format!("http://{address}"),
            data_dir: data_dir.to_path_buf(),
            shutdown: Some(shutdown),
            thread: Some(thread),
        };
        wait_until_healthy(&server.url);
        server
    }

    /// Stops the server and waits until its port is closed.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

fn wait_until_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = get_json(url, "/healthz", None) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server at {url} did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server configuration whose download pages hold about `bytes` of changes, so that even a
/// small test backlog takes many round trips.
pub fn small_pages(bytes: usize) -> ServerConfig {
    ServerConfig {
        pages: auxilio_server::ledger::PageLimits::at_most(bytes),
        ..ServerConfig::default()
    }
}

/// An in-process server with two teams: a Sonora field device (a real store) that has logged
/// and synced one encounter, and an enrolled Chihuahua field device. For tests of what one
/// team's device may not do to another's data.
#[derive(Debug)]
pub struct TwoTeams {
    // Declared first so it stops before its data directory is removed.
    pub server: TestServer,
    pub data: tempfile::TempDir,
    /// Where the devices' store files are (`<name>.db`).
    pub devices: tempfile::TempDir,
    pub sonora: Device,
    pub chihuahua: Enrolled,
    /// The Sonora device's synced encounter.
    pub encounter: EncounterId,
}

impl TwoTeams {
    pub fn start(config: ServerConfig) -> Self {
        let data = tempfile::tempdir().unwrap();
        let devices = tempfile::tempdir().unwrap();
        let server = TestServer::start_with(data.path(), config);
        add_team(data.path(), "sonora");
        add_team(data.path(), "chihuahua");
        let mut sonora = Device::new(
            devices.path(),
            "sonora",
            &server.url,
            &enroll(data.path(), "sonora", Role::Field),
        );
        let chihuahua = enroll(data.path(), "chihuahua", Role::Field);
        let encounter = sonora.log(EXAMPLE_ENCOUNTER);
        sonora.sync().unwrap();
        Self {
            server,
            data,
            devices,
            sonora,
            chihuahua,
            encounter,
        }
    }
}

/// An in-process server with one team and a directory for its devices' stores; removed on drop.
#[derive(Debug)]
pub struct TeamFixture {
    // Declared first so it stops before its data directory is removed.
    pub server: TestServer,
    pub team: String,
    pub data: tempfile::TempDir,
    pub devices: tempfile::TempDir,
}

impl TeamFixture {
    pub fn start(team: &str, config: ServerConfig) -> Self {
        let data = tempfile::tempdir().unwrap();
        let devices = tempfile::tempdir().unwrap();
        let server = TestServer::start_with(data.path(), config);
        add_team(data.path(), team);
        Self {
            server,
            team: team.to_string(),
            data,
            devices,
        }
    }

    /// A newly enrolled device of the team, with a store named `name`.
    pub fn device(&self, name: &str, role: Role) -> Device {
        let enrolled = enroll(self.data.path(), &self.team, role);
        Device::new(self.devices.path(), name, &self.server.url, &enrolled)
    }

    /// Runs `auxilio admin --data <this data directory> ARGS`, as an operator on the server would.
    pub fn admin(&self, args: &[&str]) -> Output {
        let data = self.data.path().to_str().unwrap();
        let mut full = vec!["admin", "--data", data];
        full.extend_from_slice(args);
        run_auxilio(self.data.path(), &full, None)
    }
}

/// The `auxilio` binary built from this workspace.
pub fn auxilio_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join(format!("auxilio{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Starts `auxilio ARGS` in `cwd` with every standard stream piped and quiet logs.
pub fn spawn_auxilio(cwd: &Path, args: &[&str]) -> Child {
    Command::new(auxilio_bin())
        .args(args)
        .current_dir(cwd)
        .env("AUXILIO_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `auxilio ARGS` in `cwd`, feeding `stdin`, and asserts it succeeds; returns stdout.
pub fn auxilio_ok(cwd: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let output = run_auxilio(cwd, args, stdin);
    assert!(
        output.status.success(),
        "auxilio {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A sync request that uploads nothing, from the beginning of the log.
pub fn empty_sync_request() -> auxilio_core::protocol::SyncRequest {
    auxilio_core::protocol::SyncRequest {
        protocol: auxilio_core::protocol::PROTOCOL_VERSION,
        cursor_check: None,
        actor: None,
        cursor: 0,
        changes: vec![],
        request_id: None,
        resume: vec![],
        max_response_bytes: None,
        purges_after: 0,
        vaults: vec![],
    }
}

/// Sends `request` as `device` to `base`'s `/v1/sync` as it is (no store applies the answer);
/// the answer, which must be 200.
pub fn sync_answer(
    base: &str,
    device: &Device,
    request: &auxilio_core::protocol::SyncRequest,
) -> auxilio_core::protocol::SyncResponse {
    let (status, body) = post_bytes(
        base,
        "/v1/sync",
        Some(&device.enrolled.token),
        &auxilio_core::protocol::encode(request),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    auxilio_core::protocol::decode_response(&body).unwrap()
}

/// One change on top of the device's copy of `id`, written with the device's own actor, as a
/// modified app would write it (the real store refuses such edits): `edit` changes the raw
/// Automerge document.
pub fn raw_change(
    device: &Device,
    id: EncounterId,
    edit: impl FnOnce(&mut automerge::AutoCommit),
) -> automerge::Change {
    let saved = device.store.document(id).unwrap().save();
    let mut doc = automerge::AutoCommit::load(&saved)
        .unwrap()
        .with_actor(auxilio_core::id::new_actor_id(device.enrolled.device_id));
    edit(&mut doc);
    doc.commit();
    doc.get_last_local_change().unwrap()
}

/// Runs `auxilio ARGS` in `cwd`, feeding `stdin`.
pub fn run_auxilio(cwd: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = spawn_auxilio(cwd, args);
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// A real `auxilio serve` process, for tests that kill it.
#[derive(Debug)]
pub struct ServerProcess {
    pub url: String,
    pub data_dir: PathBuf,
    child: Child,
}

impl ServerProcess {
    pub fn spawn(data_dir: &Path) -> Self {
        Self::spawn_with(&auxilio_bin(), data_dir, &[])
    }

    /// `bin serve` on `data_dir` with `extra` arguments (e.g. `--tile-url`), from any copy of
    /// the binary.
    pub fn spawn_with(bin: &Path, data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data_dir)
            .args(extra)
            .env("AUXILIO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address: SocketAddr = line
            .trim()
            .strip_prefix("auxilio listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line from auxilio serve: {line:?}"))
            .parse()
            .unwrap();
        let url = format!("http://{address}");
        wait_until_healthy(&url);
        Self {
            url,
            data_dir: data_dir.to_path_buf(),
            child,
        }
    }

    /// The operating-system process id (to read its memory use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs, exactly like a power cut to the process.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulated phone: a real store file, synced over real HTTP.
#[derive(Debug)]
pub struct Device {
    pub store: DeviceStore,
    pub enrolled: Enrolled,
}

impl Device {
    /// A new store in `dir`, enrolled with `enrolled`'s token (no network needed).
    pub fn new(dir: &Path, name: &str, server_url: &str, enrolled: &Enrolled) -> Self {
        let mut store = DeviceStore::open(dir.join(format!("{name}.db"))).unwrap();
        store
            .enrol(&Enrolment {
                server_url: server_url.to_string(),
                token: enrolled.token.clone(),
                device_id: enrolled.device_id,
                team: enrolled.team.clone(),
                role: enrolled.role.to_string(),
                agent: name.to_string(),
            })
            .unwrap();
        Self {
            store,
            enrolled: enrolled.clone(),
        }
    }

    pub fn log(&mut self, json: &str) -> EncounterId {
        let encounter: Encounter = serde_json::from_str(json).unwrap();
        self.store.log(encounter).unwrap()
    }

    pub fn edit(&mut self, id: EncounterId, edits: &[&str]) {
        let edits: Vec<FieldEdit> = edits.iter().map(|e| e.parse().unwrap()).collect();
        self.store.edit(id, &edits).unwrap();
    }

    pub fn sync(&mut self) -> Result<SyncReport, ClientError> {
        client::sync(&mut self.store, |_| {})
    }

    pub fn point_at(&mut self, url: &str) {
        self.store.set_server_url(url).unwrap();
    }

    pub fn view(&self, id: EncounterId) -> EncounterView {
        self.store.show(id).unwrap()
    }

    pub fn ids(&self) -> Vec<EncounterId> {
        self.store.encounter_ids().unwrap()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `GET base+path` with an optional bearer token: status and JSON body.
pub fn get_json(
    base: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, serde_json::Value), ureq::Error> {
    let mut request = agent().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec()?;
    Ok((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// `POST base+path` with a JSON body and an optional bearer token: status and JSON body.
pub fn post_json(
    base: &str,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut request = agent()
        .post(format!("{base}{path}"))
        .header("Content-Type", "application/json");
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send(body.to_string()).unwrap();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec().unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Every file of a directory (a server's data directory: the SQLite file, its WAL and shared
/// memory), read as bytes, with its name: for checks that some text appears nowhere on disk.
pub fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

/// Whether `needle`'s UTF-8 bytes occur anywhere in `haystack`.
pub fn bytes_contain(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The files among `files` in which `needle` can be found: in their bytes as they are, or inside
/// any DEFLATE stream they hold ([`inflates_to_contain`]). Automerge compresses a document's
/// columns, so a plain byte search can miss a value that is there: an erasure test first proves
/// its marker is found by this search (the positive control), then that it is not.
pub fn files_containing(files: &[(PathBuf, Vec<u8>)], needle: &str) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|(_, bytes)| bytes_contain(bytes, needle) || inflates_to_contain(bytes, needle))
        .map(|(path, _)| path.clone())
        .collect()
}

/// The most bytes one inflation attempt may produce: bounds the work on a large file and on
/// garbage that happens to inflate.
const MAX_INFLATED_BYTES: u64 = 4 << 20;

/// Whether some DEFLATE stream of `bytes`, raw or zlib-wrapped, starting at any offset,
/// inflates (in full or until it breaks off) to bytes containing `needle`. Every offset is
/// tried as a raw stream, and as a zlib stream where a zlib header is; each attempt stops at the
/// stream's end, its first error or [`MAX_INFLATED_BYTES`].
pub fn inflates_to_contain(bytes: &[u8], needle: &str) -> bool {
    let mut inflater = flate2::Decompress::new(false);
    let mut out = Vec::new();
    for start in 0..bytes.len() {
        let rest = &bytes[start..];
        let zlib_header = rest.len() >= 2
            && rest[0] & 0x0f == 8
            && (u16::from(rest[0]) << 8 | u16::from(rest[1])) % 31 == 0;
        for zlib in [false, true] {
            if zlib && !zlib_header {
                continue;
            }
            inflater.reset(zlib);
            out.clear();
            inflate_bounded(&mut inflater, rest, &mut out);
            if out.len() >= needle.len() && bytes_contain(&out, needle) {
                return true;
            }
        }
    }
    false
}

/// Inflates `input` into `out` until the stream ends, breaks off or grows past the bound.
fn inflate_bounded(inflater: &mut flate2::Decompress, input: &[u8], out: &mut Vec<u8>) {
    while inflater.total_out() < MAX_INFLATED_BYTES {
        out.reserve(16 * 1024);
        let before = (inflater.total_in(), inflater.total_out());
        let consumed = usize::try_from(inflater.total_in()).unwrap_or(usize::MAX);
        let status = inflater.decompress_vec(
            input.get(consumed..).unwrap_or_default(),
            out,
            flate2::FlushDecompress::None,
        );
        let progressed = (inflater.total_in(), inflater.total_out()) != before;
        match status {
            Ok(flate2::Status::Ok | flate2::Status::BufError) if progressed => {}
            _ => return,
        }
    }
}

/// One Server-Sent Event as read off the wire: its `event:` name and its `data:` lines joined.
/// Keep-alive comments are kept as events named `:` so tests can see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSentEvent {
    pub event: String,
    pub data: String,
}

/// An open `GET /v1/events` stream, read on its own thread (a read blocks until the server sends
/// something).
#[derive(Debug)]
pub struct EventStream {
    pub content_type: String,
    events: std::sync::mpsc::Receiver<ServerSentEvent>,
}

impl EventStream {
    /// Opens the stream; an error status comes back as `Err(status, body)`.
    pub fn open(base: &str, token: Option<&str>) -> Result<Self, (u16, serde_json::Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let mut request = agent
            .get(format!("{base}/v1/events"))
            .header("Accept", "text/event-stream");
        if let Some(token) = token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request.call().unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.body_mut().read_to_vec().unwrap();
            return Err((
                status,
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            ));
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (sender, events) = std::sync::mpsc::channel();
        let reader = BufReader::new(response.into_body().into_reader());
        std::thread::spawn(move || {
            let mut event = String::new();
            let mut data: Vec<String> = Vec::new();
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !event.is_empty() || !data.is_empty() {
                        let name = if event.is_empty() {
                            "message".into()
                        } else {
                            std::mem::take(&mut event)
                        };
                        let sent = ServerSentEvent {
                            event: name,
                            data: data.join("\n"),
                        };
                        data.clear();
                        if sender.send(sent).is_err() {
                            return;
                        }
                    }
                } else if let Some(comment) = line.strip_prefix(':') {
                    let sent = ServerSentEvent {
                        event: ":".into(),
                        data: comment.trim().into(),
                    };
                    if sender.send(sent).is_err() {
                        return;
                    }
                } else if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim_start().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
                }
            }
        });
        Ok(Self {
            content_type,
            events,
        })
    }

    /// The next event other than a keep-alive, if one arrives within `timeout`; `None` also when
    /// the server ended the stream.
    pub fn next_event(&self, timeout: Duration) -> Option<ServerSentEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_item(deadline.checked_duration_since(Instant::now())?) {
                Some(event) if event.event == ":" => continue,
                other => return other,
            }
        }
    }

    /// The next event or keep-alive comment (named `:`).
    pub fn next_item(&self, timeout: Duration) -> Option<ServerSentEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Waits until the server ends the stream (true) or `timeout` passes (false), dropping any
    /// events still coming.
    pub fn ends_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.events.recv_timeout(left) {
                Ok(_) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

/// `GET base+path` with an optional bearer token: status, the `Content-Type` and
/// `Content-Disposition` headers (empty when absent), and the body as text.
pub fn get_text(base: &str, path: &str, token: Option<&str>) -> (u16, String, String, String) {
    let mut request = agent().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    let body = response
        .body_mut()
        .with_config()
        .limit(1024 * 1024 * 1024)
        .read_to_string()
        .unwrap();
    (response.status().as_u16(), content_type, disposition, body)
}

/// `POST base+path` with raw bytes: status and body bytes.
pub fn post_bytes(base: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    post_bytes_with_headers(base, path, token, &[], body)
}

/// [`post_bytes`] with extra request headers (a content coding, say).
pub fn post_bytes_with_headers(
    base: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut request = agent()
        .post(format!("{base}{path}"))
        .header("Content-Type", auxilio_core::protocol::MEDIA_TYPE);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send(body).unwrap();
    let status = response.status().as_u16();
    (
        status,
        response
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_vec()
            .unwrap(),
    )
}

/// What the server stores, as one comparable value: every change hash, every merged document,
/// every device's revocation state and every audit row. Equal snapshots mean a request added,
/// lost or altered none of them.
pub fn stored_snapshot(data_dir: &Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let conn =
        rusqlite::Connection::open(data_dir.join(auxilio_server::database::DATABASE_FILE)).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT 'change', hash, x'' FROM changes
             UNION ALL SELECT 'encounter', id, document FROM encounters
             UNION ALL SELECT 'device', id, CAST(coalesce(revoked_at, '') AS BLOB) FROM devices
             UNION ALL SELECT 'audit', CAST(seq AS BLOB), CAST(action || detail AS BLOB) FROM audit_log
             ORDER BY 1, 2",
        )
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Hashes of every change the server has stored.
pub fn stored_change_hashes(data_dir: &Path) -> Vec<Vec<u8>> {
    stored_snapshot(data_dir)
        .into_iter()
        .filter(|(kind, _, _)| kind == "change")
        .map(|(_, hash, _)| hash)
        .collect()
}

/// An unaccompanied girl among a rescued group: a UASC case, what a protection officer reads and
/// so may purge over HTTP.
pub const PROTECTION_CASE: &str = r#"{"services":["rescue","first_aid"],"location":{"lat":31.69,"lon":-106.42,"accuracy_m":15},"terrain":"desert","counts":{"f":{"12-17":1},"m":{"18-59":2},"uasc":1},"nationality_counts":{"HND":3},"status":"open"}"#;

/// The issue's example encounter, verbatim.
pub const EXAMPLE_ENCOUNTER: &str = r#"{"services":["rescue","first_aid"],"location":{"lat":31.69,"lon":-106.42,"accuracy_m":15},"terrain":"desert","counts":{"f":{"18-59":1},"m":{"18-59":2}},"nationality_counts":{"HND":3},"status":"open"}"#;

/// [`EXAMPLE_ENCOUNTER`] with more fields, given as JSON members: `"agent":"B-17"`.
pub fn example_encounter_with(members: &str) -> String {
    EXAMPLE_ENCOUNTER.replacen('{', &format!("{{{members},"), 1)
}

/// The benchmarks' encounter number `i`: a realistic record (services, location, counts, notes)
/// that differs a little from one number to the next, so the benchmarks' workloads are the same.
pub fn benchmark_encounter_json(i: usize) -> String {
    let lat = 31.0 + (i % 100) as f64 * 0.01;
    let lon = -110.0 + (i % 37) as f64 * 0.05;
    format!(
        r#"{{"services":["rescue","first_aid"],"location":{{"lat":{lat},"lon":{lon},"accuracy_m":15}},"terrain":"desert","hazards":["heat"],"counts":{{"f":{{"18-59":{}}},"m":{{"18-59":{}}},"injured":1}},"nationality_counts":{{"HND":1}},"notes":"group found near marker {i}"}}"#,
        1 + i % 3,
        1 + i % 4
    )
}

/// Hashes of the changes a store still waits to have acknowledged.
pub fn pending_hashes(store: &DeviceStore) -> std::collections::BTreeSet<Vec<u8>> {
    store.pending_hashes().unwrap()
}

/// The sizes a benchmark example was given on its command line, or `default`.
pub fn sizes_from_args(default: &[usize]) -> Vec<usize> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers of encounters"))
        .collect();
    if sizes.is_empty() {
        default.to_vec()
    } else {
        sizes
    }
}

/// The environment variable that asks for the full run of the long tests: `scripts/test.sh` (the
/// README's test command, and so CI) sets it to `1`.
pub const FULL_TESTS_VAR: &str = "AUXILIO_FULL_TESTS";

/// Whether this is the full run (`AUXILIO_FULL_TESTS=1`): the long tests (cut-offset sweeps,
/// SIGKILL loops, 2G simulations, the browser, property-test case counts) then run their whole
/// sweep. A plain `cargo test` runs a short version of the same checks instead: fewer offsets,
/// iterations or cases, the same assertions.
pub fn full_run() -> bool {
    std::env::var(FULL_TESTS_VAR).is_ok_and(|value| value == "1")
}

/// `full` in the full run, else `short`, saying so in one line on stderr (written past the test
/// harness's capture, so it shows even when the test passes): a short run is never silent.
pub fn full_or_short<T: std::fmt::Debug>(test: &str, full: T, short: T) -> T {
    if full_run() {
        return full;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{test}: ran the short version ({short:?}; the full run is {full:?}); \
         run the full one with `{FULL_TESTS_VAR}=1 cargo test` or `bash scripts/test.sh`"
    );
    short
}

/// The device client's retries for a test whose link fails on purpose: the app's own
/// (`SyncOptions::default()`: ten attempts, waiting up to 8 s between them) in the full run,
/// `short_attempts` attempts 10 ms apart in the short run.
pub fn app_retries_or_quick(test: &str, short_attempts: u32) -> SyncOptions {
    let app = SyncOptions::default();
    let (max_failed_attempts, first_retry_delay) = full_or_short(
        &format!("{test} (sync attempts, first wait)"),
        (app.max_failed_attempts, app.first_retry_delay),
        (short_attempts, Duration::from_millis(10)),
    );
    SyncOptions {
        max_failed_attempts,
        first_retry_delay,
        ..app
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_marker_inside_a_raw_or_zlib_deflate_stream_is_found_and_another_is_not() {
        let text = "agent=B-17-Sonoyta ".repeat(40);
        let raw = {
            let mut encoder =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(text.as_bytes()).unwrap();
            encoder.finish().unwrap()
        };
        let zlib = {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(text.as_bytes()).unwrap();
            encoder.finish().unwrap()
        };
        for stream in [raw, zlib] {
            let mut file = b"SQLite format 3\0 page header".to_vec();
            file.extend_from_slice(&stream);
            file.extend_from_slice(&[0x5a; 300]);
            assert!(!bytes_contain(&file, "B-17-Sonoyta"), "compressed away");
            let files = [(PathBuf::from("f"), file)];
            assert_eq!(
                files_containing(&files, "B-17-Sonoyta"),
                [PathBuf::from("f")]
            );
            assert!(files_containing(&files, "B-18-Sonoyta").is_empty());
        }
    }
}
