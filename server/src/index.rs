//! Query indexes over merged encounters: the columns of the `encounters` table and
//! `encounter_services`, kept in step with every merge, and the list query the coordinator uses.
//!
//! Everything here is derived from the stored changes and can be rebuilt from them; lists are
//! answered from these columns without loading any Automerge document. The coordinator's map,
//! stats, hotspots and exports read the per-encounter facts and aggregates of [`facts`],
//! refreshed from here too, through [`filter`], [`map`], [`stats`] and [`hotspots`].

pub mod facts;
pub mod filter;
pub mod hotspots;
pub mod map;
pub mod stats;

use auxilio_core::EncounterId;
use auxilio_core::document::EncounterDocument;
use auxilio_core::validation::validate;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rusqlite::{Connection, params, params_from_iter};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Device clocks before this are taken as wrong (a phone that lost its time shows 1970 or its
/// factory date).
const EARLIEST_PLAUSIBLE: &str = "2015-01-01T00:00:00Z";

/// When the encounter happened, for queries: the device's `started_at` if it is plausible (after
/// 2015, and not after the server's `received_at`), else `received_at`. A `started_at` more than
/// [`crate::device_time::MAX_OFFLINE_GAP_DAYS`] before `received_at` is kept but suspect:
/// retention counts from `received_at` less that gap at the earliest. Returns the time and whether the device clock was suspect.
pub fn occurred_at(started_at: Option<&str>, received_at: &str) -> (String, bool) {
    let received = DateTime::parse_from_rfc3339(received_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    let earliest = DateTime::parse_from_rfc3339(EARLIEST_PLAUSIBLE)
        .expect("constant")
        .with_timezone(&Utc);
    match started_at.and_then(|s| DateTime::parse_from_rfc3339(s).ok()) {
        Some(started) => {
            let started = started.with_timezone(&Utc);
            if started >= earliest && started <= received + Duration::days(1) {
                // Kept for the map and stats, but flagged when it is further back than a phone
                // stays offline: retention does not count from it (see `crate::retention`).
                let backdated = !crate::device_time::plausible(started, received, received);
                (
                    started.to_rfc3339_opts(SecondsFormat::Secs, true),
                    backdated,
                )
            } else {
                (received.to_rfc3339_opts(SecondsFormat::Secs, true), true)
            }
        }
        None => (received.to_rfc3339_opts(SecondsFormat::Secs, true), false),
    }
}

/// A problem found in a merged document: it is stored and served as it is, but flagged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

/// Refreshes the index columns of one encounter from its merged document, and its facts and
/// their aggregates (the map and the stats).
pub fn update(
    conn: &Connection,
    id: EncounterId,
    owner_team: &str,
    document: &EncounterDocument,
) -> Result<(), rusqlite::Error> {
    update_with(conn, id, owner_team, document, facts::Aggregates::Maintain)
}

/// [`update`], choosing whether the aggregate tables are kept in step (a rebuild recomputes them
/// once at the end instead).
pub fn update_with(
    conn: &Connection,
    id: EncounterId,
    owner_team: &str,
    document: &EncounterDocument,
    aggregates: facts::Aggregates,
) -> Result<(), rusqlite::Error> {
    let received_at: String = conn.query_row(
        "SELECT received_at FROM encounters WHERE id = ?1",
        [id.as_bytes()],
        |row| row.get(0),
    )?;
    let mut problems: Vec<Problem> = match document.encounter() {
        Ok(encounter) => validate(&encounter)
            .err()
            .map(|errors| {
                errors
                    .0
                    .into_iter()
                    .map(|e| Problem {
                        field: e.field,
                        message: e.message,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Err(err) => vec![Problem {
            field: String::new(),
            message: err.to_string(),
        }],
    };
    // The columns are read from the document as it is, field by field, so a record with one bad
    // value (from a buggy or newer app) still shows on the map and in the counts, flagged.
    let raw = document.to_json();
    let text = |value: &Json| value.as_str().map(str::to_string);
    let number = |value: &Json| value.as_f64().filter(|n| n.is_finite());
    let count = |value: &Json| value.as_u64().unwrap_or(0).min(i64::MAX as u64) as i64;
    let team = text(&raw["team"]).unwrap_or_default();
    if team != owner_team {
        problems.push(Problem {
            field: "team".into(),
            message: format!("says `{team}` but the encounter belongs to `{owner_team}`"),
        });
    }
    let started_at = text(&raw["started_at"]);
    let (occurred, clock_suspect) = occurred_at(started_at.as_deref(), &received_at);
    problems.extend(clock_problems(conn, id, &raw, &received_at, clock_suspect)?);
    let people: i64 = ["f", "m", "unknown"]
        .iter()
        .filter_map(|sex| raw["counts"][sex].as_object())
        .flat_map(|bands| bands.values())
        .map(count)
        .fold(0i64, i64::saturating_add);
    let services: Vec<String> = match &raw["services"] {
        Json::Object(members) => members
            .iter()
            .filter(|(_, v)| v.as_bool() == Some(true))
            .map(|(k, _)| k.clone())
            .collect(),
        Json::Array(items) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    conn.execute(
        "UPDATE encounters SET status = ?2, started_at = ?3, occurred_at = ?4, clock_suspect = ?5, lat = ?6, lon = ?7,
                people = ?8, injured = ?9, uasc = ?10, conflicts = ?11, problems = ?12
         WHERE id = ?1",
        params![
            id.as_bytes(),
            text(&raw["status"]),
            started_at,
            occurred,
            clock_suspect,
            number(&raw["location"]["lat"]),
            number(&raw["location"]["lon"]),
            people,
            count(&raw["counts"]["injured"]),
            count(&raw["counts"]["uasc"]),
            document.conflicts().len() as i64,
            serde_json::to_string(&problems).expect("serialisable"),
        ],
    )?;
    conn.execute(
        "DELETE FROM encounter_services WHERE encounter = ?1",
        [id.as_bytes()],
    )?;
    for service in services {
        conn.execute(
            "INSERT INTO encounter_services (encounter, service) VALUES (?1, ?2)",
            params![id.as_bytes(), service],
        )?;
    }
    let derived = facts::Facts::derive(&raw, owner_team, &occurred);
    facts::refresh(conn, id.as_bytes(), &derived, aggregates)
}

/// The `clock_suspect` problems of a merged record: its `started_at` when it was not used
/// (`started_suspect`), and an `ended_at` or a casualty's `uasc.handed_over_at` outside what
/// [`crate::device_time::plausible`] allows, judged against the encounter's first receipt and
/// the server's time of its latest merge. They flag the record; retention never counts from them.
fn clock_problems(
    conn: &Connection,
    id: EncounterId,
    raw: &Json,
    received_at: &str,
    started_suspect: bool,
) -> Result<Vec<Problem>, rusqlite::Error> {
    use crate::device_time;
    let updated_at: String = conn.query_row(
        "SELECT updated_at FROM encounters WHERE id = ?1",
        [id.as_bytes()],
        |row| row.get(0),
    )?;
    let (Some(received), Some(latest)) = (
        device_time::parse(received_at),
        device_time::parse(&updated_at),
    ) else {
        return Ok(Vec::new());
    };
    let mut times: Vec<(String, &str)> = Vec::new();
    if let Some(started) = raw["started_at"].as_str().filter(|_| started_suspect) {
        times.push(("started_at".into(), started));
    }
    if let Some(ended) = raw["ended_at"].as_str() {
        times.push(("ended_at".into(), ended));
    }
    if let Some(casualties) = raw["casualties"].as_object() {
        for (person, casualty) in casualties {
            if let Some(at) = casualty["uasc"]["handed_over_at"].as_str() {
                times.push((format!("casualties.{person}.uasc.handed_over_at"), at));
            }
        }
    }
    Ok(times
        .into_iter()
        .filter(|(field, time)| {
            field == "started_at"
                || device_time::parse(time)
                    .is_some_and(|t| !device_time::plausible(t, received, latest))
        })
        .map(|(field, time)| Problem {
            field,
            message: device_time::suspect_message(time, received_at),
        })
        .collect())
}

/// Deletes every index row of one encounter (its columns' row in `encounters` stays for the
/// caller to delete), and takes it out of the map and stats aggregates: a purge.
pub fn remove(conn: &Connection, id: EncounterId) -> Result<(), rusqlite::Error> {
    conn.execute(
        "DELETE FROM encounter_services WHERE encounter = ?1",
        [id.as_bytes()],
    )?;
    facts::remove(conn, id.as_bytes())?;
    Ok(())
}

/// Filters of `GET /v1/encounters` (serialised as the audit log keeps them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    pub team: Option<String>,
    pub service: Option<String>,
    pub status: Option<String>,
    /// RFC 3339; inclusive.
    pub from: Option<String>,
    /// RFC 3339; exclusive.
    pub to: Option<String>,
    /// `minLon,minLat,maxLon,maxLat`: only encounters with a location inside.
    pub bbox: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
    /// `true`: only records with validation problems (stored as they merged, but breaking a
    /// schema rule: a count out of range, a casualty without a reason to record one, a value
    /// from another app version); `false`: only records without.
    pub flagged: Option<bool>,
    /// Only UASC and missing-person cases (what a protection officer's role reaches); set by the
    /// server from the role, never from the query.
    #[serde(skip)]
    pub protection_cases_only: bool,
}

/// SQL over `encounters e`: the encounter is a UASC or missing-person case, the cases whose
/// full record and identity vault a protection officer reads.
const PROTECTION_CASE_CONDITION: &str = "(e.uasc > 0 OR e.id IN (SELECT encounter FROM encounter_services WHERE service = 'located_missing'))";

/// Whether encounter `id` is a UASC or missing-person case.
pub fn is_protection_case(conn: &Connection, id: EncounterId) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM encounters e WHERE e.id = ?1 AND {PROTECTION_CASE_CONDITION})"),
        [id.as_bytes()],
        |row| row.get(0),
    )
}

/// One row of the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncounterRow {
    pub id: String,
    pub team: String,
    pub status: Option<String>,
    pub services: Vec<String>,
    pub occurred_at: String,
    pub clock_suspect: bool,
    pub received_at: String,
    pub updated_at: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub people: i64,
    pub injured: i64,
    pub uasc: i64,
    pub conflicts: i64,
    pub problems: Vec<Problem>,
    /// How many problems were withheld or reworded because the reader's role may not read
    /// health detail (set by the caller; 0 from the index).
    #[serde(default)]
    pub health_detail_withheld: usize,
}

pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1000;

/// A bounding box `minLon,minLat,maxLon,maxLat`, checked.
pub fn parse_bbox(text: &str) -> Result<[f64; 4], String> {
    let usage = "`bbox` must be minLon,minLat,maxLon,maxLat in degrees, e.g. -112,30,-104,33";
    let parts: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| usage.to_string())?;
    let [min_lon, min_lat, max_lon, max_lat] = parts[..] else {
        return Err(usage.to_string());
    };
    let valid = (-180.0..=180.0).contains(&min_lon)
        && (-180.0..=180.0).contains(&max_lon)
        && (-90.0..=90.0).contains(&min_lat)
        && (-90.0..=90.0).contains(&max_lat)
        && min_lon <= max_lon
        && min_lat <= max_lat;
    if valid {
        Ok([min_lon, min_lat, max_lon, max_lat])
    } else {
        Err(usage.to_string())
    }
}

/// Normalises an RFC 3339 time to the stored form (whole seconds, UTC), or says which parameter
/// is wrong. Stored times are whole seconds, so a bound with a fraction is rounded outwards when
/// `round_up` (for the exclusive `to`) and down otherwise: no encounter inside the asked range
/// falls outside it.
pub fn normalise_time(name: &str, text: &str, round_up: bool) -> Result<String, String> {
    let parsed = DateTime::parse_from_rfc3339(text).map_err(|e| {
        format!("`{name}` must be an RFC 3339 time such as 2026-11-28T00:00:00Z (write a + in an offset as %2B): {e}")
    })?;
    let mut time = parsed.with_timezone(&Utc);
    if round_up && time.timestamp_subsec_nanos() > 0 {
        time += Duration::seconds(1);
    }
    Ok(time.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Lists encounters matching `filter`, newest first, limited to `visible_team` when given.
pub fn list(
    conn: &Connection,
    filter: &ListFilter,
    visible_team: Option<&str>,
) -> Result<Vec<EncounterRow>, rusqlite::Error> {
    let mut sql = String::from(
        "SELECT e.id, e.team, e.status, e.occurred_at, e.clock_suspect, e.received_at, e.updated_at, e.lat, e.lon,
                e.people, e.injured, e.uasc, e.conflicts, e.problems,
                (SELECT group_concat(service, ',') FROM encounter_services s WHERE s.encounter = e.id)
         FROM encounters e WHERE 1 = 1",
    );
    if filter.protection_cases_only {
        sql.push_str(&format!(" AND {PROTECTION_CASE_CONDITION}"));
    }
    let mut values: Vec<String> = Vec::new();
    let mut condition = |clause: &str, value: &str| {
        values.push(value.to_string());
        sql.push_str(&format!(" AND {clause} ?{}", values.len()));
    };
    if let Some(team) = visible_team {
        condition("e.team =", team);
    }

    if let Some(team) = &filter.team {
        condition("e.team =", team);
    }
    if let Some(status) = &filter.status {
        condition("e.status =", status);
    }
    if let Some(from) = &filter.from {
        condition("e.occurred_at >=", from);
    }
    if let Some(to) = &filter.to {
        condition("e.occurred_at <", to);
    }
    if let Some(service) = &filter.service {
        condition(
            "e.id IN (SELECT encounter FROM encounter_services WHERE service =",
            service,
        );
        sql.push(')');
    }
    match filter.flagged {
        Some(true) => sql.push_str(" AND e.problems != '[]'"),
        Some(false) => sql.push_str(" AND e.problems = '[]'"),
        None => {}
    }
    if let Some(bbox) = &filter.bbox {
        let [min_lon, min_lat, max_lon, max_lat] =
            parse_bbox(bbox).map_err(rusqlite::Error::InvalidParameterName)?;
        sql.push_str(&format!(
            " AND e.lat BETWEEN {min_lat} AND {max_lat} AND e.lon BETWEEN {min_lon} AND {max_lon}"
        ));
    }
    let limit = filter
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .min(MAX_LIST_LIMIT);
    sql.push_str(&format!(
        " ORDER BY e.occurred_at DESC, e.id LIMIT {limit} OFFSET {}",
        filter.offset.unwrap_or(0)
    ));
    let mut statement = conn.prepare(&sql)?;
    let rows = statement.query_map(params_from_iter(values.iter()), |row| {
        let id: Vec<u8> = row.get(0)?;
        let problems: String = row.get(13)?;
        let services: Option<String> = row.get(14)?;
        let mut services: Vec<String> = services
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        services.sort();
        Ok(EncounterRow {
            id: EncounterId::from_slice(&id)
                .map(|i| i.to_string())
                .unwrap_or_default(),
            team: row.get(1)?,
            status: row.get(2)?,
            services,
            occurred_at: row.get(3)?,
            clock_suspect: row.get(4)?,
            received_at: row.get(5)?,
            updated_at: row.get(6)?,
            lat: row.get(7)?,
            lon: row.get(8)?,
            people: row.get(9)?,
            injured: row.get(10)?,
            uasc: row.get(11)?,
            conflicts: row.get(12)?,
            problems: serde_json::from_str(&problems).unwrap_or_default(),
            health_detail_withheld: 0,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_clock_in_1970_falls_back_to_the_server_time() {
        let (at, suspect) = occurred_at(Some("1970-01-01T00:00:05+00:00"), "2026-11-28T10:00:00Z");
        assert_eq!(at, "2026-11-28T10:00:00Z");
        assert!(suspect);
    }

    #[test]
    fn a_plausible_device_time_is_kept_in_utc() {
        let (at, suspect) = occurred_at(Some("2026-11-27T08:00:00-07:00"), "2026-11-28T10:00:00Z");
        assert_eq!(at, "2026-11-27T15:00:00Z");
        assert!(!suspect);
    }

    #[test]
    fn a_start_years_before_the_server_received_it_is_kept_for_the_map_but_suspect() {
        let (at, suspect) = occurred_at(Some("2016-03-01T10:00:00Z"), "2026-11-28T10:00:00Z");
        assert_eq!(at, "2016-03-01T10:00:00Z");
        assert!(suspect);
        let (_, suspect) = occurred_at(Some("2026-11-01T10:00:00Z"), "2026-11-28T10:00:00Z");
        assert!(!suspect, "within the offline gap");
    }

    #[test]
    fn a_device_clock_far_in_the_future_is_suspect() {
        let (_, suspect) = occurred_at(Some("2031-01-01T00:00:00Z"), "2026-11-28T10:00:00Z");
        assert!(suspect);
    }
}
