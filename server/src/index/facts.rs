//! Per-encounter facts for the map, the stats and the exports, and the pre-aggregated tables
//! built from them (`map_cells`, `stats_cells`, `stats_nationalities`, the `encounter_locations`
//! R*Tree).
//!
//! [`refresh`] is called by `index::update` for every merged encounter: it derives the facts from
//! the document, replaces the encounter's row, and moves its contribution in the aggregates from
//! the old facts to the new (subtract, then add), so the aggregates stay exact without ever being
//! recomputed on the request path. [`recompute_aggregates`] rebuilds the aggregates wholesale from
//! the facts (`auxilio reindex`). Everything here is derived: the stored changes stay the truth.

use auxilio_core::schema::{Service, TriageCategory};
use chrono::NaiveDate;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, ToSql, params, params_from_iter};
use serde_json::Value as Json;

/// Counted columns, in the order of [`Facts::measures`]; the same names are columns of
/// `encounter_facts` and `stats_cells`. `encounters` is 1 for every encounter, so sums of it
/// count encounters.
pub const MEASURES: [&str; 25] = [
    "encounters",
    "people",
    "injured",
    "uasc",
    "deceased",
    "rescues",
    "rescued",
    "f_0_4",
    "f_5_11",
    "f_12_17",
    "f_18_59",
    "f_60_plus",
    "f_unknown",
    "m_0_4",
    "m_5_11",
    "m_12_17",
    "m_18_59",
    "m_60_plus",
    "m_unknown",
    "unknown_0_4",
    "unknown_5_11",
    "unknown_12_17",
    "unknown_18_59",
    "unknown_60_plus",
    "unknown_unknown",
];

/// Index of the first sex × age band measure in [`MEASURES`].
pub const FIRST_SEX_AGE: usize = 7;
/// Sexes and age bands as written in the record, in the order of the sex × age measures.
pub const SEXES: [&str; 3] = ["f", "m", "unknown"];
pub const AGE_BANDS: [&str; 6] = ["0-4", "5-11", "12-17", "18-59", "60+", "unknown"];

/// Every service, in bit order: bit `i` of a `services` mask is `SERVICES[i]`.
pub const SERVICES: [Service; 11] = [
    Service::Orientation,
    Service::HumanitarianAid,
    Service::SocialAssistance,
    Service::Rescue,
    Service::FirstAid,
    Service::LocatedMissing,
    Service::LegalAdvice,
    Service::TransferHospital,
    Service::TransferShelter,
    Service::RepatriationSupport,
    Service::BodyRecovery,
];

/// The bit of `service` in a `services` mask. The match is exhaustive, so a service added to
/// the schema does not compile until it has a bit here (and in [`SERVICES`]).
pub fn service_bit(service: Service) -> i64 {
    let index = match service {
        Service::Orientation => 0,
        Service::HumanitarianAid => 1,
        Service::SocialAssistance => 2,
        Service::Rescue => 3,
        Service::FirstAid => 4,
        Service::LocatedMissing => 5,
        Service::LegalAdvice => 6,
        Service::TransferHospital => 7,
        Service::TransferShelter => 8,
        Service::RepatriationSupport => 9,
        Service::BodyRecovery => 10,
    };
    1 << index
}

/// The record's name of a schema enum value (`rescue`, `red`, …).
pub fn code<T: serde::Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(Json::String(text)) => text,
        _ => String::new(),
    }
}

/// Service codes set in a mask, in bit order.
pub fn service_codes(mask: i64) -> Vec<String> {
    SERVICES
        .iter()
        .filter(|service| mask & service_bit(**service) != 0)
        .map(|service| code(*service))
        .collect()
}

/// Triage categories from most to least urgent: an encounter's `triage` is the first of these
/// among its casualties that are not withdrawn.
pub const TRIAGE_ORDER: [TriageCategory; 5] = [
    TriageCategory::Red,
    TriageCategory::Yellow,
    TriageCategory::Green,
    TriageCategory::Gray,
    TriageCategory::Black,
];

/// Columns of `stats_cells` after its key: [`MEASURES`], then encounters and people for each
/// service (in [`SERVICES`] order) and for each triage category (in [`TRIAGE_ORDER`] order, then
/// `none`).
pub fn stats_columns() -> Vec<String> {
    let mut columns: Vec<String> = MEASURES.iter().map(|m| (*m).to_string()).collect();
    for service in SERVICES {
        let name = code(service);
        columns.push(format!("service_{name}_encounters"));
        columns.push(format!("service_{name}_people"));
    }
    for category in triage_codes() {
        columns.push(format!("triage_{category}_encounters"));
        columns.push(format!("triage_{category}_people"));
    }
    columns
}

/// Triage codes from most to least urgent, then `none` (no casualty with a triage category).
pub fn triage_codes() -> Vec<String> {
    TRIAGE_ORDER
        .iter()
        .map(|c| code(*c))
        .chain(["none".to_string()])
        .collect()
}

/// SQL expressions computing [`stats_columns`] from an `encounter_facts` row (columns prefixed
/// by `table`), in the same order.
pub fn stats_expressions(table: &str) -> Vec<String> {
    let mut expressions: Vec<String> = MEASURES.iter().map(|m| format!("{table}{m}")).collect();
    for service in SERVICES {
        let bit = service_bit(service);
        expressions.push(format!("({table}services & {bit} != 0)"));
        expressions.push(format!(
            "(CASE WHEN {table}services & {bit} != 0 THEN {table}people ELSE 0 END)"
        ));
    }
    for category in triage_codes() {
        let stored = if category == "none" { "" } else { &category };
        expressions.push(format!("({table}triage = '{stored}')"));
        expressions.push(format!(
            "(CASE WHEN {table}triage = '{stored}' THEN {table}people ELSE 0 END)"
        ));
    }
    expressions
}

/// The highest map level with pre-aggregated cells; closer zooms are answered from the R*Tree.
pub const MAX_CELL_LEVEL: u32 = 13;

/// Side of a map cell at `level`, in degrees: a 256-pixel tile at zoom `level` spans
/// 360/2^level degrees, and a cell is a quarter of it (64 pixels).
pub fn cell_size(level: u32) -> f64 {
    360.0 / f64::from(1u32 << (level + 2))
}

/// The cell holding a point at `level`. SQL computes the same with
/// `CAST((lon + 180) / size AS INTEGER)` (both are exact IEEE divisions by a power of two, and
/// the operands are never negative), so incremental and rebuilt cells agree.
pub fn cell_of(level: u32, lon: f64, lat: f64) -> (i64, i64) {
    let size = cell_size(level);
    (
        ((lon + 180.0) / size).floor() as i64,
        ((lat + 90.0) / size).floor() as i64,
    )
}

/// Millionths of a degree, the unit of the coordinate sums in `map_cells`.
pub fn micro_degrees(degrees: f64) -> i64 {
    (degrees * 1e6).round() as i64
}

/// Days since 1970-01-01 of a stored UTC time (`YYYY-MM-DD...`).
pub fn day_number(day: &str) -> i64 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
    NaiveDate::parse_from_str(day.get(..10).unwrap_or(day), "%Y-%m-%d")
        .map(|date| (date - epoch).num_days())
        .unwrap_or(0)
}

/// The R*Tree's time coordinate of a stored UTC time: years since 1970, as days / 365.25 (see
/// the migration: a year must weigh about as much as a degree).
pub fn year_number(time: &str) -> f64 {
    day_number(time) as f64 / 365.25
}

/// What one encounter contributes to the map, the stats and the exports.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub occurred_at: String,
    pub team: String,
    pub adm1: String,
    pub terrain: String,
    pub status: String,
    pub triage: String,
    pub uasc_flag: bool,
    pub services: i64,
    /// Longitude and latitude, when the record has a usable location.
    pub location: Option<(f64, f64)>,
    pub measures: [i64; MEASURES.len()],
    /// ISO 3166-1 alpha-3 code → people, without zeros, sorted.
    pub nationalities: Vec<(String, i64)>,
}

impl Facts {
    /// Reads the facts from a merged document's JSON, field by field, so a record with one bad
    /// value still counts (its problems are flagged elsewhere).
    pub fn derive(raw: &Json, team: &str, occurred_at: &str) -> Self {
        let text = |value: &Json| value.as_str().unwrap_or_default().to_string();
        let count = |value: &Json| value.as_u64().unwrap_or(0).min(i32::MAX as u64) as i64;
        let services = match &raw["services"] {
            Json::Object(members) => members
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            Json::Array(items) => items.iter().filter_map(Json::as_str).collect(),
            _ => Vec::new(),
        };
        let services = SERVICES
            .iter()
            .filter(|service| services.contains(&code(**service).as_str()))
            .fold(0, |mask, service| mask | service_bit(*service));
        let casualties: Vec<&Json> = raw["casualties"]
            .as_object()
            .map(|members| {
                members
                    .values()
                    .filter(|c| c["withdrawn_at"].is_null())
                    .collect()
            })
            .unwrap_or_default();
        let triage = TRIAGE_ORDER
            .iter()
            .map(|category| code(*category))
            .find(|category| {
                casualties
                    .iter()
                    .any(|c| c["triage"]["category"].as_str() == Some(category.as_str()))
            })
            .unwrap_or_default();
        let counts = &raw["counts"];
        let children_with_handover = casualties.iter().filter(|c| c["uasc"].is_object()).count();
        let uasc = count(&counts["uasc"]).max(children_with_handover as i64);
        let mut measures = [0i64; MEASURES.len()];
        for (s, sex) in SEXES.iter().enumerate() {
            for (b, band) in AGE_BANDS.iter().enumerate() {
                measures[FIRST_SEX_AGE + s * AGE_BANDS.len() + b] = count(&counts[sex][band]);
            }
        }
        let people: i64 = measures[FIRST_SEX_AGE..].iter().sum();
        let rescue = services & service_bit(Service::Rescue) != 0;
        measures[..FIRST_SEX_AGE].copy_from_slice(&[
            1,
            people,
            count(&counts["injured"]),
            uasc,
            count(&counts["deceased"]),
            i64::from(rescue),
            if rescue { people } else { 0 },
        ]);
        let mut nationalities: Vec<(String, i64)> = raw["nationality_counts"]
            .as_object()
            .map(|members| {
                members
                    .iter()
                    .map(|(code, n)| (code.clone(), count(n)))
                    .filter(|(code, n)| *n > 0 && !code.is_empty() && code.len() <= 8)
                    .collect()
            })
            .unwrap_or_default();
        nationalities.sort();
        let lat = raw["location"]["lat"]
            .as_f64()
            .filter(|l| (-90.0..=90.0).contains(l));
        let lon = raw["location"]["lon"]
            .as_f64()
            .filter(|l| (-180.0..=180.0).contains(l));
        Self {
            occurred_at: occurred_at.to_string(),
            team: team.to_string(),
            adm1: text(&raw["adm1"]).chars().take(16).collect(),
            terrain: text(&raw["terrain"]).chars().take(32).collect(),
            status: text(&raw["status"]).chars().take(16).collect(),
            triage,
            uasc_flag: uasc > 0,
            services,
            location: lon.zip(lat),
            measures,
            nationalities,
        }
    }

    /// The values of [`stats_columns`] for this encounter.
    pub fn stats_values(&self) -> Vec<i64> {
        let people = self.measures[1];
        let mut values = self.measures.to_vec();
        for service in SERVICES {
            let has = self.services & service_bit(service) != 0;
            values.extend([i64::from(has), if has { people } else { 0 }]);
        }
        for category in triage_codes() {
            let is = if category == "none" {
                self.triage.is_empty()
            } else {
                self.triage == category
            };
            values.extend([i64::from(is), if is { people } else { 0 }]);
        }
        values
    }

    /// The stats facets this encounter counts in: every encounter (`""`), each of its services,
    /// and its triage category (`none` without one).
    pub fn facets(&self) -> Vec<(&'static str, String)> {
        let mut facets = vec![("", String::new())];
        facets.extend(
            service_codes(self.services)
                .into_iter()
                .map(|service| ("service", service)),
        );
        let triage = if self.triage.is_empty() {
            "none".to_string()
        } else {
            self.triage.clone()
        };
        facets.push(("triage", triage));
        facets
    }

    fn day(&self) -> &str {
        self.occurred_at.get(..10).unwrap_or(&self.occurred_at)
    }

    fn month(&self) -> &str {
        self.occurred_at.get(..7).unwrap_or(&self.occurred_at)
    }
}

/// Reads the facts stored for an encounter, with their key.
fn stored(conn: &Connection, encounter: &[u8]) -> Result<Option<(i64, Facts)>, rusqlite::Error> {
    let columns = MEASURES.join(", ");
    let row = conn
        .prepare_cached(&format!(
            "SELECT key, occurred_at, team, adm1, terrain, status, triage, uasc_flag, services, lon, lat, {columns}
             FROM encounter_facts WHERE encounter = ?1"
        ))?
        .query_row([encounter], |row| {
            let mut measures = [0i64; MEASURES.len()];
            for (i, measure) in measures.iter_mut().enumerate() {
                *measure = row.get(11 + i)?;
            }
            let lon: Option<f64> = row.get(9)?;
            let lat: Option<f64> = row.get(10)?;
            Ok((
                row.get::<_, i64>(0)?,
                Facts {
                    occurred_at: row.get(1)?,
                    team: row.get(2)?,
                    adm1: row.get(3)?,
                    terrain: row.get(4)?,
                    status: row.get(5)?,
                    triage: row.get(6)?,
                    uasc_flag: row.get(7)?,
                    services: row.get(8)?,
                    location: lon.zip(lat),
                    measures,
                    nationalities: Vec::new(),
                },
            ))
        })
        .optional()?;
    let Some((key, mut facts)) = row else {
        return Ok(None);
    };
    let mut statement = conn.prepare_cached(
        "SELECT nationality, people FROM encounter_nationalities WHERE key = ?1 ORDER BY nationality",
    )?;
    facts.nationalities = statement
        .query_map([key], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Some((key, facts)))
}

/// Whether [`refresh`] keeps the aggregate tables in step. `auxilio reindex` skips them and
/// recomputes them once at the end ([`recompute_aggregates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregates {
    Maintain,
    Skip,
}

/// Stores `facts` as the encounter's facts, moving its contribution in the aggregates.
pub fn refresh(
    conn: &Connection,
    encounter: &[u8],
    facts: &Facts,
    aggregates: Aggregates,
) -> Result<(), rusqlite::Error> {
    let old = stored(conn, encounter)?;
    if let Some((_, old_facts)) = &old
        && old_facts == facts
    {
        return Ok(());
    }
    let columns = MEASURES.join(", ");
    let placeholders: Vec<String> = (0..MEASURES.len())
        .map(|i| format!("?{}", i + 13))
        .collect();
    let mut values: Vec<Value> = vec![
        Value::Blob(encounter.to_vec()),
        Value::Text(facts.occurred_at.clone()),
        Value::Text(facts.day().to_string()),
        Value::Text(facts.team.clone()),
        Value::Text(facts.adm1.clone()),
        Value::Text(facts.terrain.clone()),
        Value::Text(facts.status.clone()),
        Value::Text(facts.triage.clone()),
        Value::Integer(i64::from(facts.uasc_flag)),
        Value::Integer(facts.services),
        facts
            .location
            .map_or(Value::Null, |(_, lat)| Value::Real(lat)),
        facts
            .location
            .map_or(Value::Null, |(lon, _)| Value::Real(lon)),
    ];
    values.extend(facts.measures.iter().map(|m| Value::Integer(*m)));
    let key = match &old {
        Some((key, old_facts)) => {
            if aggregates == Aggregates::Maintain {
                aggregate(conn, *key, old_facts, -1)?;
            }
            values.push(Value::Integer(*key));
            let assignments: Vec<String> = MEASURES
                .iter()
                .zip(&placeholders)
                .map(|(name, placeholder)| format!("{name} = {placeholder}"))
                .collect();
            conn.prepare_cached(&format!(
                "UPDATE encounter_facts SET encounter = ?1, occurred_at = ?2, day = ?3, team = ?4, adm1 = ?5,
                        terrain = ?6, status = ?7, triage = ?8, uasc_flag = ?9, services = ?10, lat = ?11,
                        lon = ?12, {}
                 WHERE key = ?{}",
                assignments.join(", "),
                MEASURES.len() + 13
            ))?
            .execute(params_from_iter(values))?;
            *key
        }
        None => {
            conn.prepare_cached(&format!(
                "INSERT INTO encounter_facts (encounter, occurred_at, day, team, adm1, terrain, status, triage,
                        uasc_flag, services, lat, lon, {columns})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, {})",
                placeholders.join(", ")
            ))?
            .execute(params_from_iter(values))?;
            conn.last_insert_rowid()
        }
    };
    conn.prepare_cached("DELETE FROM encounter_nationalities WHERE key = ?1")?
        .execute([key])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO encounter_nationalities (key, nationality, people) VALUES (?1, ?2, ?3)",
    )?;
    for (nationality, people) in &facts.nationalities {
        insert.execute(params![key, nationality, people])?;
    }
    match facts.location {
        Some((lon, lat)) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO encounter_locations (key, min_lon, max_lon, min_lat, max_lat, min_year, max_year)
                 VALUES (?1, ?2, ?2, ?3, ?3, ?4, ?4)",
            )?
            .execute(params![key, lon, lat, year_number(facts.day())])?;
        }
        None => {
            conn.prepare_cached("DELETE FROM encounter_locations WHERE key = ?1")?
                .execute([key])?;
        }
    }
    if aggregates == Aggregates::Maintain {
        aggregate(conn, key, facts, 1)?;
    }
    Ok(())
}

/// Deletes an encounter's facts, its nationalities and its R*Tree entry, and takes its
/// contribution out of the aggregates (the same subtraction a refresh makes, so the cost is one
/// encounter's cells, not a recompute). Returns whether it had facts.
pub fn remove(conn: &Connection, encounter: &[u8]) -> Result<bool, rusqlite::Error> {
    let Some((key, facts)) = stored(conn, encounter)? else {
        return Ok(false);
    };
    aggregate(conn, key, &facts, -1)?;
    conn.prepare_cached("DELETE FROM encounter_nationalities WHERE key = ?1")?
        .execute([key])?;
    conn.prepare_cached("DELETE FROM encounter_locations WHERE key = ?1")?
        .execute([key])?;
    conn.prepare_cached("DELETE FROM encounter_facts WHERE key = ?1")?
        .execute([key])?;
    Ok(true)
}

/// Adds (`sign` 1) or removes (`sign` -1) one encounter's contribution to every aggregate row
/// it counts in; rows that fall to zero encounters are deleted, so the tables hold only what
/// exists.
fn aggregate(conn: &Connection, key: i64, facts: &Facts, sign: i64) -> Result<(), rusqlite::Error> {
    if let Some((lon, lat)) = facts.location {
        let mut upsert = conn.prepare_cached(
            "INSERT INTO map_cells (level, cx, cy, team, status, triage, uasc_flag, services, encounters, sum_lat_e6, sum_lon_e6, sum_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT DO UPDATE SET encounters = encounters + excluded.encounters,
                 sum_lat_e6 = sum_lat_e6 + excluded.sum_lat_e6, sum_lon_e6 = sum_lon_e6 + excluded.sum_lon_e6,
                 sum_key = sum_key + excluded.sum_key
             RETURNING encounters",
        )?;
        let mut delete = conn.prepare_cached(
            "DELETE FROM map_cells WHERE level = ?1 AND cx = ?2 AND cy = ?3 AND team = ?4 AND status = ?5
                 AND triage = ?6 AND uasc_flag = ?7 AND services = ?8",
        )?;
        for level in 0..=MAX_CELL_LEVEL {
            let (cx, cy) = cell_of(level, lon, lat);
            let cell: [&dyn ToSql; 8] = [
                &level,
                &cx,
                &cy,
                &facts.team,
                &facts.status,
                &facts.triage,
                &facts.uasc_flag,
                &facts.services,
            ];
            let change = [
                sign,
                sign * micro_degrees(lat),
                sign * micro_degrees(lon),
                sign * key,
            ];
            let left: i64 = upsert.query_row(
                params_from_iter(
                    cell.iter()
                        .copied()
                        .chain(change.iter().map(|v| v as &dyn ToSql)),
                ),
                |row| row.get(0),
            )?;
            if left <= 0 {
                delete.execute(params_from_iter(cell))?;
            }
        }
    }
    let columns = stats_columns();
    let placeholders: Vec<String> = (0..columns.len()).map(|i| format!("?{}", i + 9)).collect();
    let additions: Vec<String> = columns
        .iter()
        .map(|name| format!("{name} = {name} + excluded.{name}"))
        .collect();
    let mut upsert = conn.prepare_cached(&format!(
        "INSERT INTO stats_cells (grain, period, facet, facet_value, team, adm1, status, uasc_flag, {})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, {})
         ON CONFLICT DO UPDATE SET {}
         RETURNING encounters",
        columns.join(", "),
        placeholders.join(", "),
        additions.join(", ")
    ))?;
    let mut delete = conn.prepare_cached(
        "DELETE FROM stats_cells WHERE grain = ?1 AND period = ?2 AND facet = ?3 AND facet_value = ?4
             AND team = ?5 AND adm1 = ?6 AND status = ?7 AND uasc_flag = ?8",
    )?;
    let mut upsert_nationality = conn.prepare_cached(
        "INSERT INTO stats_nationalities (grain, period, facet, facet_value, team, status, uasc_flag, nationality, people)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT DO UPDATE SET people = people + excluded.people
         RETURNING people",
    )?;
    let mut delete_nationality = conn.prepare_cached(
        "DELETE FROM stats_nationalities WHERE grain = ?1 AND period = ?2 AND facet = ?3 AND facet_value = ?4
             AND team = ?5 AND status = ?6 AND uasc_flag = ?7 AND nationality = ?8",
    )?;
    let stats_values = facts.stats_values();
    for (grain, period) in [("day", facts.day()), ("month", facts.month())] {
        for (facet, facet_value) in facts.facets() {
            let key: Vec<Value> = vec![
                Value::Text(grain.into()),
                Value::Text(period.into()),
                Value::Text(facet.into()),
                Value::Text(facet_value.clone()),
                Value::Text(facts.team.clone()),
                Value::Text(facts.adm1.clone()),
                Value::Text(facts.status.clone()),
                Value::Integer(i64::from(facts.uasc_flag)),
            ];
            let mut values = key.clone();
            values.extend(stats_values.iter().map(|v| Value::Integer(sign * v)));
            let left: i64 = upsert.query_row(params_from_iter(values), |row| row.get(0))?;
            if left <= 0 {
                delete.execute(params_from_iter(key))?;
            }
            for (nationality, people) in &facts.nationalities {
                let key: [&dyn ToSql; 8] = [
                    &grain,
                    &period,
                    &facet,
                    &facet_value,
                    &facts.team,
                    &facts.status,
                    &facts.uasc_flag,
                    nationality,
                ];
                let change = sign * people;
                let left: i64 = upsert_nationality.query_row(
                    params_from_iter(key.iter().copied().chain([&change as &dyn ToSql])),
                    |row| row.get(0),
                )?;
                if left <= 0 {
                    delete_nationality.execute(params_from_iter(key))?;
                }
            }
        }
    }
    Ok(())
}

/// Rebuilds `map_cells`, `stats_cells` and `stats_nationalities` from `encounter_facts` and
/// `encounter_nationalities`, in SQL, in the caller's transaction.
pub fn recompute_aggregates(conn: &Connection) -> Result<(), rusqlite::Error> {
    let columns = stats_columns().join(", ");
    conn.execute_batch(&format!(
        "DELETE FROM map_cells;
         WITH RECURSIVE levels (level, size) AS (
             SELECT 0, 90.0 UNION ALL SELECT level + 1, size / 2 FROM levels WHERE level < {MAX_CELL_LEVEL})
         INSERT INTO map_cells (level, cx, cy, team, status, triage, uasc_flag, services, encounters, sum_lat_e6, sum_lon_e6, sum_key)
         SELECT level, CAST((lon + 180) / size AS INTEGER), CAST((lat + 90) / size AS INTEGER),
                team, status, triage, uasc_flag, services, count(*),
                sum(CAST(round(lat * 1e6) AS INTEGER)), sum(CAST(round(lon * 1e6) AS INTEGER)), sum(key)
         FROM encounter_facts, levels WHERE lat IS NOT NULL AND lon IS NOT NULL
         GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
         DELETE FROM stats_cells;
         DELETE FROM stats_nationalities;",
    ))?;
    // Each encounter's facets, as (key, facet, facet_value): every encounter, each service of
    // its mask, its triage category.
    let service_values: Vec<String> = SERVICES
        .iter()
        .map(|service| format!("('{}', {})", code(*service), service_bit(*service)))
        .collect();
    let facets = format!(
        "WITH services (code, bit) AS (VALUES {}),
         facets (key, facet, facet_value) AS (
             SELECT key, '', '' FROM encounter_facts
             UNION ALL SELECT f.key, 'service', s.code FROM encounter_facts f JOIN services s ON f.services & s.bit != 0
             UNION ALL SELECT key, 'triage', CASE triage WHEN '' THEN 'none' ELSE triage END FROM encounter_facts)",
        service_values.join(", ")
    );
    let f_sums: Vec<String> = stats_expressions("f.")
        .iter()
        .map(|e| format!("sum({e})"))
        .collect();
    for (grain, period) in [("day", "f.day"), ("month", "substr(f.day, 1, 7)")] {
        conn.execute_batch(&format!(
            "{facets}
             INSERT INTO stats_cells (grain, period, facet, facet_value, team, adm1, status, uasc_flag, {columns})
             SELECT '{grain}', {period}, x.facet, x.facet_value, f.team, f.adm1, f.status, f.uasc_flag, {}
             FROM facets x JOIN encounter_facts f ON f.key = x.key GROUP BY 2, 3, 4, 5, 6, 7, 8;
             {facets}
             INSERT INTO stats_nationalities (grain, period, facet, facet_value, team, status, uasc_flag, nationality, people)
             SELECT '{grain}', {period}, x.facet, x.facet_value, f.team, f.status, f.uasc_flag, n.nationality, sum(n.people)
             FROM facets x JOIN encounter_facts f ON f.key = x.key JOIN encounter_nationalities n ON n.key = f.key
             GROUP BY 2, 3, 4, 5, 6, 7, 8;",
            f_sums.join(", ")
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_its_own_bit_in_order() {
        for (index, service) in SERVICES.iter().enumerate() {
            assert_eq!(service_bit(*service), 1 << index);
        }
        assert_eq!(
            service_codes(service_bit(Service::Rescue) | service_bit(Service::FirstAid)),
            ["rescue", "first_aid"]
        );
    }

    #[test]
    fn the_most_urgent_triage_of_casualties_still_counted_wins() {
        let raw = serde_json::json!({
            "services": {"rescue": true, "first_aid": true, "orientation": false},
            "counts": {"f": {"18-59": 2}, "m": {"12-17": 1}, "injured": 1},
            "casualties": {
                "a": {"triage": {"method": "start", "category": "green"}},
                "b": {"triage": {"method": "start", "category": "red"}, "withdrawn_at": "2026-11-01T00:00:00Z"},
                "c": {"triage": {"method": "start", "category": "yellow"}, "uasc": {}}
            },
            "nationality_counts": {"HND": 2, "GTM": 0},
            "location": {"lat": 31.5, "lon": -111.2}
        });
        let facts = Facts::derive(&raw, "sonora", "2026-11-02T10:00:00Z");
        assert_eq!(facts.triage, "yellow");
        assert!(facts.uasc_flag);
        assert_eq!(facts.measures[..7], [1, 3, 1, 1, 0, 1, 3]);
        assert_eq!(facts.nationalities, [("HND".to_string(), 2)]);
        assert_eq!(facts.location, Some((-111.2, 31.5)));
        assert_eq!(service_codes(facts.services), ["rescue", "first_aid"]);
    }

    #[test]
    fn the_stats_table_has_the_columns_the_code_writes() {
        let data = tempfile::tempdir().unwrap();
        let database = crate::Database::open(data.path()).unwrap();
        let columns: Vec<String> = database
            .read(|conn| {
                let mut statement =
                    conn.prepare("SELECT name FROM pragma_table_info('stats_cells')")?;
                statement
                    .query_map([], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .unwrap();
        let mut expected: Vec<String> = [
            "grain",
            "period",
            "facet",
            "facet_value",
            "team",
            "adm1",
            "status",
            "uasc_flag",
        ]
        .map(String::from)
        .to_vec();
        expected.extend(stats_columns());
        assert_eq!(columns, expected);
        assert_eq!(stats_expressions("f.").len(), stats_columns().len());
    }

    #[test]
    fn the_bundled_sqlite_has_the_rtree_module() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE VIRTUAL TABLE boxes USING rtree(key, min_x, max_x, min_y, max_y);
             INSERT INTO boxes VALUES (1, -112.9, -112.8, 31.8, 31.9);",
        )
        .unwrap();
        let found: i64 = conn
            .query_row(
                "SELECT key FROM boxes WHERE max_x >= -113 AND min_x <= -112 AND max_y >= 31 AND min_y <= 32",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(found, 1);
    }

    #[test]
    fn cells_nest_from_one_level_to_the_next() {
        let (x, y) = cell_of(10, -106.42, 31.69);
        let (parent_x, parent_y) = cell_of(9, -106.42, 31.69);
        assert_eq!((x >> 1, y >> 1), (parent_x, parent_y));
        assert_eq!(day_number("1970-01-02T00:00:00Z"), 1);
    }
}
