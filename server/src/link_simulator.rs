//! A flaky-link TCP proxy: sits between a device's HTTP client and the server (both on
//! 127.0.0.1) and makes the connection behave like the weak, dropping 2G links field agents
//! have. The end-to-end tests and `auxilio sim` put it in front of a server to prove that sync
//! survives slow links, refused connections and cuts in the middle of a request or a response.
//!
//! How a link is simulated. Every connection has, for each direction, a reader thread that takes
//! bytes from the sending socket as soon as they come (a bounded queue of chunks, timestamped on
//! arrival) and a forwarder thread that delivers them as the link would: a chunk starts to cross
//! when it arrived and the link is free, takes `len / bytes_per_second` to cross, and reaches the
//! other side `latency` later. Latency is therefore a true one-way delay that does not lower
//! throughput, and a request and its response cost two of it.
//!
//! Cuts. Each connection's fate is fixed when it is accepted: a cut queued by
//! [`FlakyProxy::cut_next`], or else one drawn from the profile. A cut after N bytes in a
//! direction fires when the link is about to carry byte N + 1 there: exactly N bytes are
//! delivered, then both sockets are shut down in both directions. Offsets count over the whole
//! connection, across every request of an HTTP keep-alive connection. A connection whose
//! traffic never goes past N bytes in that direction ends normally; its cut is not counted and
//! does not move to the next connection.
//!
//! Randomness is splitmix64 seeded by the caller, so a run repeats from its seed: the k-th
//! forwarded connection always takes the same three draws whether or not it uses them, so its
//! random cut depends only on the seed, k and the profile when it was accepted.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Read size when the link is rate limited: small, so the rate is applied smoothly (1 KiB is
/// 50 ms at 20 kB/s). Cuts land at an exact byte whatever the size: a chunk is split at the cut.
const SHAPED_CHUNK_BYTES: usize = 1024;
const UNSHAPED_CHUNK_BYTES: usize = 16 * 1024;
/// Chunks a reader takes ahead of its forwarder: more than a 3G link's bandwidth-delay product
/// (200 kB/s × 50 ms is 10 chunks), so the queue never leaves the link idle, and a bound on
/// memory per connection.
const CHUNKS_IN_FLIGHT: usize = 64;
/// Forwarders wait in slices this long, so a cut or a dropped proxy ends a waiting one promptly.
const WAIT_SLICE: Duration = Duration::from_millis(20);
/// Caps every delay and refusal, so an absurd profile cannot overflow `Instant` arithmetic.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed accept (out of file descriptors, say), wait instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// How long dropping the proxy waits for connection threads once their sockets are shut down.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// A direction of travel over the simulated link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server: requests.
    Upload,
    /// Server to client: responses.
    Download,
}

/// How a simulated link behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkProfile {
    pub name: String,
    /// One-way delay added to every byte, in each direction.
    pub latency: Duration,
    /// Per-connection, per-direction cap; `None` is unlimited. `Some(0)` is taken as 1 byte per
    /// second, the slowest link there is.
    pub bytes_per_second: Option<u64>,
    /// Probability that a connection gets cut, at a uniformly random byte offset in
    /// `0..cut_within_bytes` of a randomly chosen direction.
    pub cut_probability: f64,
    pub cut_within_bytes: u64,
}

impl LinkProfile {
    pub const NAMES: &[&str] = &["lan", "3g", "2g", "2g-dropping"];

    /// `lan`: no shaping. `3g`: 50 ms, 200,000 B/s. `2g`: 150 ms, 20,000 B/s. `2g-dropping`:
    /// like `2g`, and 3 connections in 10 are cut within their first 6,000 bytes (a few seconds
    /// of transfer).
    pub fn named(name: &str) -> Option<LinkProfile> {
        let (latency_ms, bytes_per_second, cut_probability, cut_within_bytes) = match name {
            "lan" => (0, None, 0.0, 0),
            "3g" => (50, Some(200_000), 0.0, 0),
            "2g" => (150, Some(20_000), 0.0, 0),
            "2g-dropping" => (150, Some(20_000), 0.3, 6_000),
            _ => return None,
        };
        Some(LinkProfile {
            name: name.to_owned(),
            latency: Duration::from_millis(latency_ms),
            bytes_per_second,
            cut_probability,
            cut_within_bytes,
        })
    }
}

/// What crossed the simulated link so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    /// Connections forwarded (or tried: one whose upstream could not be reached counts too).
    pub connections: u64,
    /// Connections closed at once by [`FlakyProxy::refuse_for`]; not in `connections`.
    pub refused: u64,
    /// Cuts that fired; a planned cut the traffic never reached is not counted.
    pub cuts: u64,
    /// Bytes delivered to the upstream server.
    pub bytes_up: u64,
    /// Bytes delivered to the client.
    pub bytes_down: u64,
}

/// The flaky link: listens on 127.0.0.1 and forwards every connection to an upstream server.
///
/// Threads: one accepts; each forwarded connection has one that sets it up and four that move
/// its bytes (a reader and a forwarder per direction). Dropping the proxy stops accepting, shuts
/// down every open connection and waits up to two seconds for their threads to end.
pub struct FlakyProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FlakyProxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr, profile: LinkProfile, seed: u64) -> io::Result<FlakyProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            settings: Mutex::new(Settings {
                profile: Arc::new(profile),
                upstream,
                queued_cuts: VecDeque::new(),
                refuse_until: None,
                cut_draws: SplitMix64 { state: seed },
            }),
            counters: Counters::default(),
            stopping: AtomicBool::new(false),
            open: Mutex::new(OpenConnections::default()),
            open_changed: Condvar::new(),
        });
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("flaky-link-accept-{}", addr.port()))
            .spawn(move || accept_connections(&listener, &acceptor_shared))?;
        Ok(FlakyProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn profile(&self) -> LinkProfile {
        LinkProfile::clone(&self.shared.profile())
    }

    /// Latency and rate change at once, for open connections too (a phone moving out of 3G
    /// coverage does not reconnect first); the cut probability applies to connections accepted
    /// afterwards, whose fate is fixed at accept.
    pub fn set_profile(&self, profile: LinkProfile) {
        self.shared.settings().profile = Arc::new(profile);
    }

    /// Connections accepted afterwards go to `upstream`; open ones stay where they are.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.shared.settings().upstream = upstream;
    }

    /// The next connection forwarded is cut after exactly `after_bytes` bytes have been
    /// delivered in `direction`: those bytes arrive, then both sockets are shut down. One-shot;
    /// queued cuts apply to successive forwarded connections in order (refused connections do
    /// not take one). The cut fires when byte `after_bytes + 1` is about to cross, so a
    /// connection that never carries that much in `direction` ends normally and the cut is gone.
    pub fn cut_next(&self, direction: Direction, after_bytes: u64) {
        self.shared.settings().queued_cuts.push_back(PlannedCut {
            direction,
            after_bytes,
        });
    }

    /// For `duration`, new connections are accepted and closed at once without forwarding
    /// anything (a tower out of reach); they are counted in `refused`. Open connections are
    /// left alone: [`FlakyProxy::cut_open_connections`] drops them too.
    pub fn refuse_for(&self, duration: Duration) {
        self.shared.settings().refuse_until = Some(Instant::now() + duration.min(LONGEST_WAIT));
    }

    /// Cuts every open connection now, whatever it is doing; each counts in `cuts`. Returns how
    /// many were cut.
    pub fn cut_open_connections(&self) -> u64 {
        let open = self.shared.open_connections();
        let mut cut = 0;
        for connection in open.connections.values() {
            if connection.mark_ended() {
                self.shared.counters.cuts.fetch_add(1, Ordering::SeqCst);
                cut += 1;
            }
            connection.shut_sockets();
        }
        cut
    }

    pub fn stats(&self) -> LinkStats {
        let counters = &self.shared.counters;
        LinkStats {
            connections: counters.connections.load(Ordering::SeqCst),
            refused: counters.refused.load(Ordering::SeqCst),
            cuts: counters.cuts.load(Ordering::SeqCst),
            bytes_up: counters.bytes_up.load(Ordering::SeqCst),
            bytes_down: counters.bytes_down.load(Ordering::SeqCst),
        }
    }
}

impl fmt::Debug for FlakyProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlakyProxy")
            .field("addr", &self.addr)
            .field("profile", &self.shared.profile().name)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The acceptor blocks in accept(); a connection of our own wakes it to see `stopping`.
        // Should that fail, the thread is left to end at the next connection rather than hang
        // this one.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(acceptor) = self.acceptor.take()
            && woken
        {
            let _ = acceptor.join();
        }
        let open = self.shared.open_connections();
        for connection in open.connections.values() {
            connection.end();
        }
        let _ = self
            .shared
            .open_changed
            .wait_timeout_while(open, DROP_GRACE, |open| open.threads > 0);
    }
}

/// State shared by the proxy handle, its acceptor and its connections.
struct Shared {
    settings: Mutex<Settings>,
    counters: Counters,
    stopping: AtomicBool,
    open: Mutex<OpenConnections>,
    /// Told whenever a connection thread ends, for `Drop` to wait on.
    open_changed: Condvar,
}

struct Settings {
    profile: Arc<LinkProfile>,
    upstream: SocketAddr,
    queued_cuts: VecDeque<PlannedCut>,
    refuse_until: Option<Instant>,
    cut_draws: SplitMix64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    cuts: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

#[derive(Default)]
struct OpenConnections {
    /// Connection threads still running, including ones still reaching the upstream.
    threads: usize,
    /// Connections with both sockets, by the order they were forwarded in.
    connections: HashMap<u64, Arc<ProxiedConnection>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlannedCut {
    direction: Direction,
    after_bytes: u64,
}

/// What the acceptor decided for one connection.
enum Admission {
    Refused,
    Forwarded {
        ordinal: u64,
        upstream: SocketAddr,
        cut: Option<PlannedCut>,
    },
}

impl Shared {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open_connections(&self) -> MutexGuard<'_, OpenConnections> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn profile(&self) -> Arc<LinkProfile> {
        Arc::clone(&self.settings().profile)
    }

    fn admit(&self) -> Admission {
        let mut settings = self.settings();
        if settings
            .refuse_until
            .is_some_and(|until| Instant::now() < until)
        {
            self.counters.refused.fetch_add(1, Ordering::SeqCst);
            return Admission::Refused;
        }
        let ordinal = self.counters.connections.fetch_add(1, Ordering::SeqCst);
        let cut = plan_cut(&mut settings);
        Admission::Forwarded {
            ordinal,
            upstream: settings.upstream,
            cut,
        }
    }

    /// Lists a connection for `Drop` to shut down; false if the proxy is already stopping. The
    /// check is under the same lock `Drop` takes after setting `stopping`, so no connection
    /// slips past it.
    fn register(&self, ordinal: u64, connection: &Arc<ProxiedConnection>) -> bool {
        let mut open = self.open_connections();
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        open.connections.insert(ordinal, Arc::clone(connection));
        true
    }

    fn connection_thread_ended(&self, ordinal: u64) {
        let mut open = self.open_connections();
        open.connections.remove(&ordinal);
        open.threads -= 1;
        self.open_changed.notify_all();
    }

    fn delivered_counter(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::Upload => &self.counters.bytes_up,
            Direction::Download => &self.counters.bytes_down,
        }
    }
}

fn plan_cut(settings: &mut Settings) -> Option<PlannedCut> {
    let draws = &mut settings.cut_draws;
    let roll = draws.next_unit();
    let direction = if draws.next_u64() & 1 == 0 {
        Direction::Upload
    } else {
        Direction::Download
    };
    let offset = draws.next_below(settings.profile.cut_within_bytes.max(1));
    if let Some(queued) = settings.queued_cuts.pop_front() {
        return Some(queued);
    }
    (roll < settings.profile.cut_probability).then_some(PlannedCut {
        direction,
        after_bytes: offset,
    })
}

/// splitmix64 (Steele, Lea and Flood, 2014): a few lines, plenty for choosing cuts, and the same
/// sequence for a seed on every platform.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits are exactly what an `f64` mantissa holds.
    pub(crate) fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..bound` for `bound > 0`, by taking the high half of a 128-bit product.
    pub(crate) fn next_below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

fn accept_connections(listener: &TcpListener, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else {
            thread::sleep(ACCEPT_RETRY);
            continue;
        };
        match shared.admit() {
            Admission::Refused => shut_down(&client),
            Admission::Forwarded {
                ordinal,
                upstream,
                cut,
            } => {
                shared.open_connections().threads += 1;
                let connection_shared = Arc::clone(shared);
                let spawned = thread::Builder::new()
                    .name(format!("flaky-link-{ordinal}"))
                    .spawn(move || {
                        run_connection(&connection_shared, ordinal, client, upstream, cut);
                        connection_shared.connection_thread_ended(ordinal);
                    });
                // Out of threads: the client sees its connection close, like a congested tower.
                // The closure, and the client socket with it, was dropped by the failed spawn.
                if spawned.is_err() {
                    shared.connection_thread_ended(ordinal);
                }
            }
        }
    }
}

/// One forwarded connection: both sockets, and whether the link has ended (cut, broken, or the
/// proxy dropped), after which nothing more is forwarded.
struct ProxiedConnection {
    client: TcpStream,
    upstream: TcpStream,
    ended: AtomicBool,
}

impl ProxiedConnection {
    /// True for the one call that ended the connection, so a cut is counted once.
    fn mark_ended(&self) -> bool {
        !self.ended.swap(true, Ordering::SeqCst)
    }

    fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Both directions on both sockets, so each end sees the link go at once, and every
    /// blocked reader and writer of this connection wakes up.
    fn shut_sockets(&self) {
        shut_down(&self.client);
        shut_down(&self.upstream);
    }

    fn end(&self) {
        self.mark_ended();
        self.shut_sockets();
    }

    /// (where bytes come from, where they go) in `direction`.
    fn sockets(&self, direction: Direction) -> (&TcpStream, &TcpStream) {
        match direction {
            Direction::Upload => (&self.client, &self.upstream),
            Direction::Download => (&self.upstream, &self.client),
        }
    }
}

/// Errors are ignored: the socket may be gone already, and gone is what was wanted.
fn shut_down(socket: &TcpStream) {
    let _ = socket.shutdown(Shutdown::Both);
}

fn run_connection(
    shared: &Shared,
    ordinal: u64,
    client: TcpStream,
    upstream: SocketAddr,
    cut: Option<PlannedCut>,
) {
    let upstream = match TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(_) => {
            // The client sees the link close, as if the tower had no backhaul.
            shut_down(&client);
            return;
        }
    };
    // Chunks are timed by the simulation; Nagle's algorithm would hold small ones back on top.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let connection = Arc::new(ProxiedConnection {
        client,
        upstream,
        ended: AtomicBool::new(false),
    });
    if !shared.register(ordinal, &connection) {
        connection.end();
        return;
    }
    let connection: &ProxiedConnection = &connection;
    thread::scope(|scope| {
        for direction in [Direction::Upload, Direction::Download] {
            let (source, destination) = connection.sockets(direction);
            let (queue, arrivals) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
            let cut_after = cut
                .filter(|cut| cut.direction == direction)
                .map(|cut| cut.after_bytes);
            let reader = thread::Builder::new()
                .name(format!("flaky-link-{ordinal}-{direction:?}-read"))
                .spawn_scoped(scope, move || take_from_sender(source, &queue, shared));
            let forwarder = thread::Builder::new()
                .name(format!("flaky-link-{ordinal}-{direction:?}-forward"))
                .spawn_scoped(scope, move || {
                    deliver(
                        direction,
                        &arrivals,
                        destination,
                        connection,
                        shared,
                        cut_after,
                    );
                });
            // Without all four threads the link cannot work; ending it lets the others finish.
            if reader.is_err() || forwarder.is_err() {
                connection.end();
                return;
            }
        }
    });
}

/// What a reader hands its forwarder.
enum Segment {
    Bytes {
        bytes: Vec<u8>,
        arrived_at: Instant,
    },
    /// The sender closed its write half: pass the half-close on once its bytes are delivered.
    Closed,
    /// Reading failed (reset): the connection is broken.
    Broken,
}

fn take_from_sender(source: &TcpStream, queue: &SyncSender<Segment>, shared: &Shared) {
    let mut source = source;
    loop {
        let chunk_bytes = if shared.profile().bytes_per_second.is_some() {
            SHAPED_CHUNK_BYTES
        } else {
            UNSHAPED_CHUNK_BYTES
        };
        let mut chunk = vec![0; chunk_bytes];
        let segment = match source.read(&mut chunk) {
            Ok(0) => Segment::Closed,
            Ok(read) => {
                chunk.truncate(read);
                Segment::Bytes {
                    bytes: chunk,
                    arrived_at: Instant::now(),
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => Segment::Broken,
        };
        let last = !matches!(segment, Segment::Bytes { .. });
        // A failed send means the forwarder is gone because the connection ended.
        if queue.send(segment).is_err() || last {
            return;
        }
    }
}

/// Delivers a direction's chunks at the pace of the link, and fires the direction's cut.
fn deliver(
    direction: Direction,
    arrivals: &Receiver<Segment>,
    destination: &TcpStream,
    connection: &ProxiedConnection,
    shared: &Shared,
    cut_after: Option<u64>,
) {
    let delivered_counter = shared.delivered_counter(direction);
    let mut delivered: u64 = 0;
    let mut link_free_at = Instant::now();
    while let Ok(segment) = arrivals.recv() {
        let (bytes, arrived_at) = match segment {
            Segment::Bytes { bytes, arrived_at } => (bytes, arrived_at),
            Segment::Closed => {
                let _ = destination.shutdown(Shutdown::Write);
                return;
            }
            Segment::Broken => {
                connection.end();
                return;
            }
        };
        let profile = shared.profile();
        let crossing_starts = arrived_at.max(link_free_at);
        link_free_at = crossing_starts + crossing_time(bytes.len(), profile.bytes_per_second);
        if !wait_until(link_free_at + profile.latency.min(LONGEST_WAIT), connection) {
            return;
        }
        let allowed = match cut_after {
            Some(after) => usize::try_from(after.saturating_sub(delivered))
                .unwrap_or(usize::MAX)
                .min(bytes.len()),
            None => bytes.len(),
        };
        let written = write_counted(
            destination,
            &bytes[..allowed],
            connection,
            delivered_counter,
        );
        delivered += written as u64;
        if written < allowed {
            connection.end();
            return;
        }
        if allowed < bytes.len() {
            // Counted before the sockets go, so whoever sees the cut also sees it in the stats.
            if connection.mark_ended() {
                shared.counters.cuts.fetch_add(1, Ordering::SeqCst);
            }
            connection.shut_sockets();
            return;
        }
    }
    // The reader went without a last segment: it could not run, so neither can the link.
    connection.end();
}

fn crossing_time(bytes: usize, bytes_per_second: Option<u64>) -> Duration {
    match bytes_per_second {
        None => Duration::ZERO,
        Some(rate) => Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64).min(LONGEST_WAIT),
    }
}

/// Sleeps until `deadline`; false if the connection ended meanwhile.
fn wait_until(deadline: Instant, connection: &ProxiedConnection) -> bool {
    loop {
        if connection.is_ended() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(WAIT_SLICE));
    }
}

/// Writes as much of `bytes` as the destination takes, counting each write as it lands, and
/// stops once the connection has ended: nothing crosses a link after its cut.
fn write_counted(
    destination: &TcpStream,
    mut bytes: &[u8],
    connection: &ProxiedConnection,
    delivered_counter: &AtomicU64,
) -> usize {
    let mut destination = destination;
    let mut written = 0;
    while !bytes.is_empty() && !connection.is_ended() {
        match destination.write(bytes) {
            Ok(0) => break,
            Ok(count) => {
                delivered_counter.fetch_add(count as u64, Ordering::SeqCst);
                written += count;
                bytes = &bytes[count..];
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longest any test waits for a socket; reaching it means the proxy hung.
    const HANG: Duration = Duration::from_secs(20);

    /// A stand-in server on 127.0.0.1:0 that runs `serve` on each connection in its own thread.
    /// Its threads outlive the test; the test process ends them.
    fn upstream(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = Arc::new(serve);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let serve = Arc::clone(&serve);
                thread::spawn(move || serve(stream));
            }
        });
        addr
    }

    fn echo(stream: TcpStream) {
        let (mut from, mut to) = (&stream, &stream);
        let _ = io::copy(&mut from, &mut to);
        let _ = stream.shutdown(Shutdown::Write);
    }

    /// Answers the first bytes of a request with `answer`, then waits for the client to close.
    fn answer_with(answer: &[u8]) -> impl Fn(TcpStream) + Send + Sync + 'static {
        let answer = answer.to_vec();
        move |stream| {
            let mut stream = stream;
            let _ = stream.read(&mut [0; 1024]);
            let _ = stream.write_all(&answer);
            let _ = stream.shutdown(Shutdown::Write);
            let _ = io::copy(&mut stream, &mut io::sink());
        }
    }

    /// Reads until the client closes, reports how many bytes came, then answers with
    /// `answer_bytes` bytes.
    fn count_then_answer(
        report: mpsc::Sender<u64>,
        answer_bytes: usize,
    ) -> impl Fn(TcpStream) + Send + Sync + 'static {
        let report = Mutex::new(report);
        move |stream| {
            let mut stream = stream;
            let received = read_until_closed(&mut stream).len() as u64;
            let _ = report.lock().unwrap().send(received);
            let _ = stream.write_all(&pattern(answer_bytes));
            let _ = stream.shutdown(Shutdown::Write);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(HANG)).unwrap();
        stream
    }

    /// Reads until EOF or a reset (both are how a cut looks); a timeout means a hang and fails.
    fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        let mut chunk = [0; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return received,
                Ok(count) => received.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("no EOF within {HANG:?}: {error}")
                }
                Err(_) => return received,
            }
        }
    }

    /// One connection: sends `request` and half-closes (while reading, so neither side blocks
    /// the other), and returns everything received until the connection closes.
    fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
        let mut stream = connect(addr);
        let writer = stream.try_clone().unwrap();
        thread::scope(|scope| {
            scope.spawn(|| {
                let mut writer = &writer;
                // Fails when the link is cut or refused, which is what some tests want.
                let _ = writer.write_all(request);
                let _ = writer.shutdown(Shutdown::Write);
            });
            read_until_closed(&mut stream)
        })
    }

    fn lan() -> LinkProfile {
        LinkProfile::named("lan").unwrap()
    }

    #[test]
    fn bytes_pass_through_unchanged_and_are_counted() {
        let proxy = FlakyProxy::start(upstream(echo), lan(), 1).unwrap();
        let sent = pattern(100_000);
        assert_eq!(exchange(proxy.addr(), &sent), sent);
        assert_eq!(
            proxy.stats(),
            LinkStats {
                connections: 1,
                refused: 0,
                cuts: 0,
                bytes_up: 100_000,
                bytes_down: 100_000,
            }
        );
        assert!(proxy.url().starts_with("http://127.0.0.1:"));
    }

    #[test]
    fn a_download_cut_delivers_exactly_the_bytes_before_it_once() {
        let answer = pattern(1000);
        let proxy = FlakyProxy::start(upstream(answer_with(&answer)), lan(), 1).unwrap();
        proxy.cut_next(Direction::Download, 100);
        assert_eq!(exchange(proxy.addr(), b"GET"), answer[..100]);
        let stats = proxy.stats();
        assert_eq!((stats.cuts, stats.bytes_down), (1, 100));

        assert_eq!(exchange(proxy.addr(), b"GET"), answer, "a cut is one-shot");
        assert_eq!(proxy.stats().cuts, 1);
    }

    #[test]
    fn upload_cuts_deliver_exactly_their_bytes_upstream_in_the_order_queued() {
        let (report, reports) = mpsc::channel();
        let proxy = FlakyProxy::start(upstream(count_then_answer(report, 0)), lan(), 1).unwrap();
        proxy.cut_next(Direction::Upload, 300);
        proxy.cut_next(Direction::Upload, 0);
        let mut received_upstream = Vec::new();
        for _ in 0..3 {
            assert_eq!(exchange(proxy.addr(), &pattern(1000)), b"");
            received_upstream.push(reports.recv_timeout(HANG).unwrap());
        }
        assert_eq!(received_upstream, [300, 0, 1000]);
        let stats = proxy.stats();
        assert_eq!(
            (stats.connections, stats.cuts, stats.bytes_up),
            (3, 2, 1300)
        );
    }

    #[test]
    fn a_cut_counts_bytes_across_requests_on_one_keep_alive_connection() {
        let proxy = FlakyProxy::start(upstream(echo), lan(), 1).unwrap();
        proxy.cut_next(Direction::Download, 150);
        let mut stream = connect(proxy.addr());
        stream.write_all(&[1; 100]).unwrap();
        let mut first = [0; 100];
        stream.read_exact(&mut first).unwrap();
        stream.write_all(&[2; 100]).unwrap();
        assert_eq!(read_until_closed(&mut stream), [2; 50]);
        assert_eq!(proxy.stats().cuts, 1);
    }

    #[test]
    fn refused_connections_exchange_nothing_and_are_counted_until_the_refusal_ends() {
        let proxy = FlakyProxy::start(upstream(echo), lan(), 1).unwrap();
        let refusal = Duration::from_secs(1);
        let refused_at = Instant::now();
        proxy.refuse_for(refusal);
        assert_eq!(exchange(proxy.addr(), b"hello"), b"");
        let stats = proxy.stats();
        assert_eq!((stats.refused, stats.connections), (1, 0));

        thread::sleep(
            (refused_at + refusal + Duration::from_millis(100))
                .saturating_duration_since(Instant::now()),
        );
        assert_eq!(exchange(proxy.addr(), b"hello"), b"hello");
        let stats = proxy.stats();
        assert_eq!((stats.refused, stats.connections), (1, 1));
    }

    #[test]
    fn a_rate_limited_link_moves_bytes_no_faster_than_its_cap() {
        let answer = pattern(20_000);
        let profile = LinkProfile {
            name: "20 kB/s".to_owned(),
            latency: Duration::ZERO,
            bytes_per_second: Some(20_000),
            cut_probability: 0.0,
            cut_within_bytes: 0,
        };
        let proxy = FlakyProxy::start(upstream(answer_with(&answer)), profile, 1).unwrap();
        let started = Instant::now();
        assert_eq!(exchange(proxy.addr(), b"GET"), answer);
        // 20 kB at 20 kB/s takes a second; half of it leaves room for any rounding.
        assert!(started.elapsed() >= Duration::from_millis(500));
    }

    #[test]
    fn latency_delays_each_direction() {
        let profile = LinkProfile {
            latency: Duration::from_millis(200),
            ..lan()
        };
        let proxy = FlakyProxy::start(upstream(echo), profile, 1).unwrap();
        let started = Instant::now();
        assert_eq!(exchange(proxy.addr(), b"?"), b"?");
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[test]
    fn every_named_profile_is_known_and_others_are_not() {
        for name in LinkProfile::NAMES {
            assert_eq!(LinkProfile::named(name).unwrap().name, *name);
        }
        assert_eq!(LinkProfile::named("4g"), None);
        let dropping = LinkProfile::named("2g-dropping").unwrap();
        assert_eq!(
            (dropping.cut_probability, dropping.cut_within_bytes),
            (0.3, 6_000)
        );
        assert_eq!(
            LinkProfile {
                cut_probability: 0.0,
                cut_within_bytes: 0,
                name: "2g".to_owned(),
                ..dropping
            },
            LinkProfile::named("2g").unwrap()
        );
    }

    /// (bytes the upstream received, bytes the client received) for each of 12 connections in
    /// turn, each sending 4,000 bytes each way through a link that cuts half of them.
    fn outcomes_of_random_cuts(seed: u64) -> (Vec<(u64, usize)>, u64) {
        let (report, reports) = mpsc::channel();
        let profile = LinkProfile {
            name: "coin flip".to_owned(),
            cut_probability: 0.5,
            cut_within_bytes: 4000,
            ..lan()
        };
        let proxy =
            FlakyProxy::start(upstream(count_then_answer(report, 4000)), profile, seed).unwrap();
        let outcomes = (0..12)
            .map(|_| {
                let received_by_client = exchange(proxy.addr(), &pattern(4000)).len();
                (reports.recv_timeout(HANG).unwrap(), received_by_client)
            })
            .collect();
        (outcomes, proxy.stats().cuts)
    }

    #[test]
    fn random_cuts_repeat_for_the_same_seed() {
        let (outcomes, cuts) = outcomes_of_random_cuts(42);
        assert_eq!(outcomes_of_random_cuts(42), (outcomes.clone(), cuts));
        let uncut = outcomes.iter().filter(|o| **o == (4000, 4000)).count() as u64;
        assert!(cuts > 0 && uncut > 0, "{outcomes:?}");
        assert_eq!(cuts + uncut, 12, "every planned cut is within the traffic");
        assert_ne!(outcomes_of_random_cuts(43).0, outcomes);
    }

    #[test]
    fn set_upstream_sends_new_connections_elsewhere() {
        let first = upstream(answer_with(b"first"));
        let second = upstream(answer_with(b"second"));
        let proxy = FlakyProxy::start(first, lan(), 1).unwrap();
        assert_eq!(exchange(proxy.addr(), b"GET"), b"first");
        proxy.set_upstream(second);
        assert_eq!(exchange(proxy.addr(), b"GET"), b"second");
    }

    #[test]
    fn dropping_the_proxy_closes_its_open_connections() {
        let proxy = FlakyProxy::start(upstream(echo), lan(), 1).unwrap();
        let mut stream = connect(proxy.addr());
        stream.write_all(b"ping").unwrap();
        let mut pong = [0; 4];
        stream.read_exact(&mut pong).unwrap();
        drop(proxy);
        assert_eq!(read_until_closed(&mut stream), b"");
    }

    #[test]
    fn cut_open_connections_ends_an_idle_keep_alive_connection() {
        let proxy = FlakyProxy::start(upstream(echo), lan(), 1).unwrap();
        let mut stream = connect(proxy.addr());
        stream.write_all(b"ping").unwrap();
        let mut pong = [0; 4];
        stream.read_exact(&mut pong).unwrap();
        assert_eq!(proxy.cut_open_connections(), 1);
        assert_eq!(read_until_closed(&mut stream), b"");
        assert_eq!(proxy.stats().cuts, 1);
    }

    #[test]
    fn splitmix64_matches_its_reference_output() {
        // First outputs for seed 1234567, from the reference implementation (Vigna's splitmix64.c).
        let mut draws = SplitMix64 { state: 1_234_567 };
        assert_eq!(draws.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(draws.next_u64(), 3_203_168_211_198_807_973);
    }
}
