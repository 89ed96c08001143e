//! Map and stats benchmark (issue 4): how `GET /v1/map` and `GET /v1/stats` answer as the
//! number of stored encounters grows to a million, and the server's memory while they do.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/map_bench 100000 1000000
//! ```
//!
//! For each size it fills a new data directory with that many encounters (real Automerge
//! documents made by `EncounterDocument::create`, stored through `ledger::sync` and so
//! `index::update`, thousands per transaction, not over HTTP; above 200,000 through
//! `ledger::import` with the aggregates recomputed at the end), starts the real `auxilio serve`,
//! and times requests from one client over loopback: the map at random viewports and zooms
//! (with no filter, with the last 30 days, with one other filter) and the stats (random ranges
//! and filters, and the whole history by month). It prints one JSON line per size; progress goes
//! to stderr. Encounters are spread around the Sonoran desert and the Río Bravo (nine places,
//! one team each) at 100,000 a year, about twice what Grupos Beta log, so a million spans ten
//! years.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use auxilio_core::document::EncounterDocument;
use auxilio_core::id::new_actor_id;
use auxilio_core::protocol::{EncounterChanges, PROTOCOL_VERSION, SyncRequest};
use auxilio_core::{Encounter, EncounterId, SCHEMA_VERSION};
use auxilio_server::Database;
use auxilio_server::directory::{Device, Role};
use auxilio_server::index;
use auxilio_server::ledger::{self, PageLimits};
use auxilio_tests::{ServerProcess, add_team, enroll, get_text};
use chrono::{DateTime, Duration as Span, Utc};
use serde_bytes::ByteBuf;

/// Places teams work (latitude, longitude, terrain, adm1), as in `auxilio sim`.
const PLACES: [(&str, f64, f64, &str, &str); 9] = [
    ("sonoyta", 31.86, -112.85, "desert", "MX-SON"),
    ("altar", 30.71, -111.83, "desert", "MX-SON"),
    ("sasabe", 31.48, -111.54, "desert", "MX-SON"),
    ("desemboque", 30.53, -113.02, "desert", "MX-SON"),
    ("juarez", 31.69, -106.42, "river", "MX-CHH"),
    ("piedras-negras", 28.70, -100.52, "river", "MX-COA"),
    ("nuevo-laredo", 27.48, -99.51, "river", "MX-TAM"),
    ("reynosa", 26.09, -98.28, "river", "MX-TAM"),
    ("matamoros", 25.87, -97.50, "river", "MX-TAM"),
];

/// Encounters a year: a million is ten years.
const PER_YEAR: f64 = 100_000.0;
/// Encounters per sync request (and transaction) while filling.
const BATCH: usize = 2_000;
/// Requests timed per workload.
const REQUESTS: usize = 200;

/// splitmix64: a reproducible stream of random numbers with no dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(bound)) >> 64) as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const SERVICE_SETS: [&[&str]; 10] = [
    &["orientation", "humanitarian_aid"],
    &["humanitarian_aid"],
    &["orientation"],
    &["rescue", "first_aid"],
    &["rescue", "first_aid", "transfer_hospital"],
    &["first_aid"],
    &["rescue"],
    &["social_assistance", "orientation"],
    &["located_missing"],
    &["transfer_shelter", "humanitarian_aid"],
];
const ORIGINS: [&str; 7] = ["HND", "GTM", "SLV", "MEX", "VEN", "HTI", "CUB"];
const TRIAGE: [&str; 10] = [
    "red", "yellow", "yellow", "yellow", "green", "green", "green", "green", "gray", "black",
];

/// Encounter `i` of team `place`, at a time in the `years` before `end`.
fn generated(random: &mut Random, place: usize, end: DateTime<Utc>, years: f64) -> Encounter {
    let (_, lat, lon, terrain, adm1) = PLACES[place];
    // Two uniforms: most encounters near the place, some up to half a degree away.
    let mut jitter = || (random.unit() + random.unit() - 1.0) * 0.5;
    let (lat, lon) = (lat + jitter(), lon + jitter());
    let seconds = (random.unit() * years * 365.25 * 86_400.0) as i64;
    let started = (end - Span::seconds(seconds))
        .with_timezone(&chrono::FixedOffset::west_opt(7 * 3600).expect("a valid offset"));
    let services = *random.pick(&SERVICE_SETS);
    let (women, men) = (random.below(3), 1 + random.below(4));
    let (girls, boys) = (
        u64::from(random.chance(0.2)) * (1 + random.below(2)),
        u64::from(random.chance(0.15)),
    );
    let uasc = random.chance(0.03);
    let mut casualties = serde_json::Map::new();
    if services.contains(&"first_aid") || random.chance(0.05) {
        casualties.insert(
            format!("c{}", random.below(1 << 30)),
            serde_json::json!({
                "sex": if random.chance(0.6) { "m" } else { "f" },
                "age_band": "18-59",
                "triage": {"method": "start", "category": random.pick(&TRIAGE)},
            }),
        );
    }
    let origin = *random.pick(&ORIGINS);
    let json = serde_json::json!({
        "schema_version": SCHEMA_VERSION,
        "started_at": started.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        "location": {"lat": lat, "lon": lon, "accuracy_m": 10 + random.below(50)},
        "adm1": adm1,
        "terrain": terrain,
        "services": services,
        "counts": {
            "f": {"18-59": women, "5-11": girls},
            "m": {"18-59": men, "12-17": boys + u64::from(uasc)},
            "uasc": u64::from(uasc),
            "injured": u64::from(random.chance(0.12)),
        },
        "nationality_counts": {origin: women + men + girls + boys + u64::from(uasc)},
        "status": if random.chance(0.95) { "closed" } else { "open" },
        "casualties": casualties,
    });
    serde_json::from_value(json).expect("generated encounters follow the schema")
}

/// Fills `data` with `count` encounters of nine teams; returns the seconds it took. Each batch
/// is stored as a sync request (`ledger::sync`, which keeps every aggregate in step), or, when
/// not `incremental`, through `ledger::import` with the aggregates recomputed once at the end
/// (what `auxilio reindex` does; the tables end the same).
fn fill(data: &std::path::Path, count: usize, incremental: bool) -> f64 {
    let started = Instant::now();
    let devices: Vec<Device> = PLACES
        .iter()
        .map(|(team, ..)| {
            add_team(data, team);
            let enrolled = enroll(data, team, Role::Field);
            Device {
                id: enrolled.device_id,
                team: enrolled.team,
                role: Role::Field,
                label: "bench".into(),
                enrolled_at: String::new(),
                revoked_at: None,
                awaiting_approval: false,
            }
        })
        .collect();
    let database = Database::open(data).unwrap();
    // A large page cache for this filling connection only (the server runs with its defaults):
    // the indexes of a million encounters outgrow SQLite's default 2 MiB.
    database
        .write(|conn| conn.pragma_update(None, "cache_size", -256 * 1024))
        .unwrap();
    let end: DateTime<Utc> = "2026-11-28T00:00:00Z".parse().unwrap();
    let years = count as f64 / PER_YEAR;
    // Two threads make documents (the CPU-heavy part); this one stores them.
    let (sender, receiver) = mpsc::sync_channel::<(usize, Vec<EncounterChanges>)>(4);
    std::thread::scope(|scope| {
        for worker in 0..2u64 {
            let sender = sender.clone();
            let devices = &devices;
            scope.spawn(move || {
                let mut random = Random(worker + 1);
                let actors: Vec<_> = devices.iter().map(|d| new_actor_id(d.id)).collect();
                let mut batch_number = worker as usize;
                while batch_number * BATCH < count {
                    let place = batch_number % PLACES.len();
                    let size = BATCH.min(count - batch_number * BATCH);
                    let changes: Vec<EncounterChanges> = (0..size)
                        .map(|_| {
                            let mut encounter = generated(&mut random, place, end, years);
                            encounter.team = devices[place].team.clone();
                            let id = EncounterId::random();
                            let (_, change) =
                                EncounterDocument::create(actors[place].clone(), id, &encounter, 0)
                                    .unwrap();
                            EncounterChanges {
                                encounter: id,
                                changes: vec![ByteBuf::from(change.raw_bytes().to_vec())],
                            }
                        })
                        .collect();
                    if sender.send((place, changes)).is_err() {
                        return;
                    }
                    batch_number += 2;
                }
            });
        }
        drop(sender);
        let mut stored = 0usize;
        let mut storing = Duration::ZERO;
        let mut last_report = Instant::now();
        for (place, changes) in receiver {
            let size = changes.len();
            let request = SyncRequest {
                protocol: PROTOCOL_VERSION,
                cursor_check: None,
                actor: None,
                cursor: 0,
                changes,
                request_id: None,
                resume: Vec::new(),
                max_response_bytes: None,
                purges_after: 0,
                vaults: Vec::new(),
            };
            let storing_started = Instant::now();
            let rejected = database
                .write(|conn| {
                    if incremental {
                        ledger::sync(conn, &devices[place], &request, PageLimits::default())
                            .map(|response| response.rejected)
                    } else {
                        ledger::import(conn, &devices[place], &request)
                    }
                })
                .unwrap();
            storing += storing_started.elapsed();
            assert!(rejected.is_empty(), "{rejected:?}");
            stored += size;
            if last_report.elapsed() > Duration::from_secs(5) || stored == count {
                eprintln!(
                    "filled {stored}/{count} encounters ({:.0}/s; storing took {:.0}% of the time)",
                    stored as f64 / started.elapsed().as_secs_f64(),
                    storing.as_secs_f64() * 100.0 / started.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
        }
    });
    if !incremental {
        let recomputing = Instant::now();
        database
            .write(|tx| index::facts::recompute_aggregates(tx))
            .unwrap();
        eprintln!(
            "recomputed the aggregates in {:.0} s",
            recomputing.elapsed().as_secs_f64()
        );
    }
    database.write(|tx| tx.execute_batch("ANALYZE;")).unwrap();
    database.clear_write_ahead_log().unwrap();
    started.elapsed().as_secs_f64()
}

fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Median and 95th percentile in milliseconds.
fn latencies(mut samples: Vec<Duration>) -> serde_json::Value {
    samples.sort();
    let at = |p: f64| {
        let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
        (samples[index].as_secs_f64() * 1e5).round() / 100.0
    };
    serde_json::json!({"p50_ms": at(0.5), "p95_ms": at(0.95), "max_ms": at(1.0), "requests": samples.len()})
}

/// A 1024 × 768 pixel view at a random zoom from 3 (all of northern Mexico) to 16 (a few
/// streets), centred near a random place.
fn viewport(random: &mut Random) -> String {
    let zoom = 3 + random.below(14) as u32;
    let (_, lat, lon, ..) = *random.pick(&PLACES);
    let (lat, lon) = (
        lat + (random.unit() - 0.5) * 0.5,
        lon + (random.unit() - 0.5) * 0.5,
    );
    let width = 360.0 / f64::from(1u32 << zoom) * 4.0;
    let height = width * 0.75;
    format!(
        "bbox={:.5},{:.5},{:.5},{:.5}&zoom={zoom}",
        (lon - width / 2.0).max(-180.0),
        (lat - height / 2.0).max(-90.0),
        (lon + width / 2.0).min(180.0),
        (lat + height / 2.0).min(90.0)
    )
}

fn one_filter(random: &mut Random) -> String {
    match random.below(5) {
        0 => format!("&team={}", random.pick(&PLACES).0),
        1 => format!(
            "&service={}",
            random.pick(&["rescue", "first_aid", "orientation"])
        ),
        2 => format!("&triage={}", random.pick(&["red", "yellow", "green"])),
        3 => "&status=open".into(),
        _ => "&uasc=true".into(),
    }
}

fn time_range(random: &mut Random) -> (String, &'static str) {
    let days = *random.pick(&[7i64, 30, 90, 365]);
    let end: DateTime<Utc> = "2026-11-28T00:00:00Z".parse().unwrap();
    // Ranges that end at a random time of the last day, as "the last N days" does.
    let to = end - Span::seconds(random.below(86_400) as i64);
    let from = to - Span::days(days);
    let period = match days {
        0..=31 => "day",
        32..=180 => "week",
        _ => "month",
    };
    (
        format!(
            "from={}&to={}",
            from.format("%Y-%m-%dT%H:%M:%SZ"),
            to.format("%Y-%m-%dT%H:%M:%SZ")
        ),
        period,
    )
}

fn time(server: &ServerProcess, token: &str, queries: &[String]) -> serde_json::Value {
    let mut samples = Vec::with_capacity(queries.len());
    let mut slowest: Vec<(Duration, &String)> = Vec::new();
    for query in queries {
        let started = Instant::now();
        let (status, _, _, body) = get_text(&server.url, query, Some(token));
        let took = started.elapsed();
        samples.push(took);
        slowest.push((took, query));
        assert_eq!(status, 200, "{query}: {body}");
    }
    slowest.sort();
    for (took, query) in slowest.iter().rev().take(3) {
        eprintln!("slow: {:.1} ms {query}", took.as_secs_f64() * 1000.0);
    }
    latencies(samples)
}

/// Encounters stored in the data directory at `path`, if it has a database.
fn stored_encounters(path: &std::path::Path) -> Option<usize> {
    let conn = rusqlite::Connection::open_with_flags(
        path.join("auxilio.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.query_row("SELECT count(*) FROM encounter_facts", [], |row| {
        row.get::<_, i64>(0)
    })
    .ok()
    .map(|n| n as usize)
}

fn run(count: usize) -> serde_json::Value {
    // MAP_BENCH_DATA=DIR keeps each size's data directory in DIR/<size> and reuses a full one,
    // so the latencies can be measured again without filling a million encounters again.
    let kept = std::env::var_os("MAP_BENCH_DATA")
        .map(|dir| std::path::PathBuf::from(dir).join(count.to_string()));
    let temporary = tempfile::tempdir().unwrap();
    let data = kept
        .clone()
        .unwrap_or_else(|| temporary.path().to_path_buf());
    let fill_seconds = if stored_encounters(&data) == Some(count) {
        eprintln!("reusing the {count} encounters in {}", data.display());
        None
    } else {
        if kept.is_some() {
            let _ = std::fs::remove_dir_all(&data);
        }
        std::fs::create_dir_all(&data).unwrap();
        // Filling through the sync path keeps the aggregates in step batch by batch; past
        // 200,000 encounters the bulk path is used (MAP_BENCH_INCREMENTAL=1 forces the sync path).
        let incremental = count <= 200_000 || std::env::var_os("MAP_BENCH_INCREMENTAL").is_some();
        Some(fill(&data, count, incremental))
    };
    let data = Dir(data);
    let database_bytes = std::fs::metadata(data.path().join("auxilio.sqlite"))
        .map(|m| m.len())
        .unwrap_or(0);
    let coordinator = enroll(data.path(), "sonoyta", Role::Coordinator);
    let server = ServerProcess::spawn(data.path());
    let idle_rss = memory_kib(server.pid(), "VmRSS:");
    let token = coordinator.token.as_str();
    let mut random = Random(42);

    let map: Vec<String> = (0..REQUESTS)
        .map(|_| format!("/v1/map?{}", viewport(&mut random)))
        .collect();
    let map_last_30_days: Vec<String> = (0..REQUESTS)
        .map(|_| {
            format!(
                "/v1/map?{}&from=2026-10-28T00:00:00Z",
                viewport(&mut random)
            )
        })
        .collect();
    let map_one_filter: Vec<String> = (0..REQUESTS)
        .map(|_| {
            format!(
                "/v1/map?{}{}",
                viewport(&mut random),
                one_filter(&mut random)
            )
        })
        .collect();
    let stats: Vec<String> = (0..REQUESTS)
        .map(|_| {
            let (range, period) = time_range(&mut random);
            let filter = if random.chance(0.5) {
                one_filter(&mut random)
            } else {
                String::new()
            };
            format!("/v1/stats?{range}&period={period}{filter}")
        })
        .collect();
    let stats_all_by_month: Vec<String> = (0..REQUESTS)
        .map(|_| {
            if random.chance(0.5) {
                "/v1/stats?period=month".to_string()
            } else {
                format!("/v1/stats?period=month{}", one_filter(&mut random))
            }
        })
        .collect();
    // Warm the page cache as a server that has been running would be, then measure.
    time(&server, token, &map[..20]);
    let results = serde_json::json!({
        "map": time(&server, token, &map),
        "map_last_30_days": time(&server, token, &map_last_30_days),
        "map_one_filter": time(&server, token, &map_one_filter),
        "stats_range_7_to_365_days": time(&server, token, &stats),
        "stats_all_time_by_month": time(&server, token, &stats_all_by_month),
    });
    let pid = server.pid();
    serde_json::json!({
        "encounters": count,
        "years": count as f64 / PER_YEAR,
        "fill_s": fill_seconds.map(|s| (s * 10.0).round() / 10.0),
        "fill_per_s": fill_seconds.map(|s| (count as f64 / s).round()),
        "database_mib": database_bytes / (1024 * 1024),
        "rss_idle_mib": idle_rss / 1024,
        "rss_after_mib": memory_kib(pid, "VmRSS:") / 1024,
        "rss_peak_mib": memory_kib(pid, "VmHWM:") / 1024,
        "latency": results,
    })
}

/// A data directory path with the `path()` of a `TempDir`.
struct Dir(std::path::PathBuf);

impl Dir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers of encounters"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000]
    } else {
        sizes
    };
    for count in sizes {
        println!("{}", run(count));
    }
}
