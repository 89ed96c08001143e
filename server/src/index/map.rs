//! The coordinator's map (`GET /v1/map`): clusters and points for a bounding box and zoom,
//! answered from the index alone.
//!
//! Two ways to answer, chosen by the request:
//! - **Pre-aggregated cells** (`map_cells`) when there is no time range and the zoom is at most
//!   [`MAX_CELL_LEVEL`]: the work is proportional to the cells in view, whatever the number of
//!   encounters. Cells are whole: a cluster at the edge of the box may hold encounters up to one
//!   cell outside it.
//! - **The R*Tree** (`encounter_locations`: longitude, latitude, year) with the facts for exact
//!   coordinates, time and filters, grouped into the same cells in SQL: the work is proportional
//!   to the encounters in the box and time range. Used for time ranges and close zooms.
//!
//! Cells holding one encounter, and every encounter when there are few (at most
//! [`POINTS_WHEN_AT_MOST`], or at most [`MAX_POINTS`] from zoom [`POINTS_FROM_ZOOM`]), come back
//! as points. A cell's single encounter is found by its key (`map_cells` keeps the sum of its
//! encounters' keys, which for one encounter is its key), so points cost a lookup each, and
//! cells of several are searched through the R*Tree only within their own bounds.

use auxilio_core::EncounterId;
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use serde::{Deserialize, Serialize};

use super::facts::{MAX_CELL_LEVEL, cell_size, service_codes, year_number};
use super::filter::Filter;

/// Highest zoom accepted (street level).
pub const MAX_ZOOM: u32 = 20;
/// Everything is points when the box holds at most this many encounters.
pub const POINTS_WHEN_AT_MOST: i64 = 500;
/// From this zoom on, everything is points unless there are more than [`MAX_POINTS`].
pub const POINTS_FROM_ZOOM: u32 = 15;
/// The most points in one answer; beyond it, encounters stay in clusters.
pub const MAX_POINTS: usize = 2000;
/// The most cells a box may span across or down at its zoom: a 16,000-pixel screen. A larger
/// box is a client asking for a continent at street level, which would cost a scan of
/// everything and an answer of millions of clusters.
pub const MAX_CELLS_ACROSS: f64 = 256.0;

/// Checks that `bbox` is a plausible view at `zoom`, or says what to change.
pub fn check_view(bbox: [f64; 4], zoom: u32) -> Result<(), String> {
    let size = cell_size(zoom);
    let across = ((bbox[2] - bbox[0]) / size).max((bbox[3] - bbox[1]) / size);
    if across > MAX_CELLS_ACROSS {
        return Err(format!(
            "`bbox` is too large for `zoom={zoom}`: it spans {across:.0} map cells of {size} degrees, at most {MAX_CELLS_ACROSS:.0}; send the box the map shows, or a lower zoom"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapAnswer {
    pub zoom: u32,
    /// Encounters in the clusters and points.
    pub total: i64,
    pub clusters: Vec<Cluster>,
    pub points: Vec<Point>,
}

/// Several encounters in one cell: their mean position and the cell's bounds
/// (`[minLon, minLat, maxLon, maxLat]`; for clusters answered from the R*Tree, the bounds of the
/// encounters themselves).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub lat: f64,
    pub lon: f64,
    pub count: i64,
    pub bbox: [f64; 4],
}

/// One encounter on the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub id: String,
    pub lat: f64,
    pub lon: f64,
    pub status: Option<String>,
    pub triage: Option<String>,
    pub uasc: bool,
    pub services: Vec<String>,
    pub occurred_at: String,
}

/// A grouped cell before it becomes a cluster or a point.
struct Cell {
    count: i64,
    lat: f64,
    lon: f64,
    bounds: [f64; 4],
    /// The facts key of the cell's encounter, when it holds exactly one.
    single_key: Option<i64>,
}

fn round6(degrees: f64) -> f64 {
    (degrees * 1e6).round() / 1e6
}

/// The FROM and WHERE of a query over the R*Tree and the facts (aliases `l` and `f`) for
/// encounters inside `area` that match `filter`.
pub fn located_sql(filter: &Filter, area: [f64; 4], values: &mut Vec<Value>) -> String {
    let [min_lon, min_lat, max_lon, max_lat] = area;
    let first = values.len() + 1;
    values.extend([min_lon, max_lon, min_lat, max_lat].map(Value::Real));
    // The R*Tree keeps 32-bit boxes rounded outwards: it finds candidates by overlap, and the
    // exact coordinates in the facts decide.
    let mut sql = format!(
        " FROM encounter_locations l JOIN encounter_facts f ON f.key = l.key
          WHERE l.max_lon >= ?{a} AND l.min_lon <= ?{b} AND l.max_lat >= ?{c} AND l.min_lat <= ?{d}
            AND f.lon BETWEEN ?{a} AND ?{b} AND f.lat BETWEEN ?{c} AND ?{d}",
        a = first,
        b = first + 1,
        c = first + 2,
        d = first + 3
    );
    // Whole days: the exact time is checked on the facts below.
    if let Some(from) = &filter.from {
        values.push(Value::Real(year_number(from)));
        sql.push_str(&format!(" AND l.max_year >= ?{}", values.len()));
    }
    if let Some(to) = &filter.to {
        values.push(Value::Real(year_number(to)));
        sql.push_str(&format!(" AND l.min_year <= ?{}", values.len()));
    }
    sql.push_str(&filter.time_sql("f.", values));
    sql.push_str(&filter.dimension_sql("f.", values));
    sql
}

/// The columns [`point`] reads, from `encounter_facts` aliased `f`.
const POINT_COLUMNS: &str =
    "f.encounter, f.lat, f.lon, f.status, f.triage, f.uasc_flag, f.services, f.occurred_at";

/// Encounters inside `area` matching `filter`, as points, newest first, at most `limit`.
fn points_in(
    conn: &Connection,
    filter: &Filter,
    area: [f64; 4],
    limit: usize,
) -> Result<Vec<Point>, rusqlite::Error> {
    let mut values = Vec::new();
    let sql = format!(
        "SELECT {POINT_COLUMNS}{} ORDER BY f.occurred_at DESC, f.key LIMIT {limit}",
        located_sql(filter, area, &mut values)
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(params_from_iter(values), point)?;
    rows.collect()
}

/// The encounters with these facts keys, as points, newest first: one lookup each.
fn points_by_key(conn: &Connection, keys: &[i64]) -> Result<Vec<Point>, rusqlite::Error> {
    let keys = serde_json::to_string(keys).expect("numbers serialise");
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {POINT_COLUMNS} FROM encounter_facts f WHERE f.key IN (SELECT value FROM json_each(?1))
         ORDER BY f.occurred_at DESC, f.key"
    ))?;
    let rows = statement.query_map([keys], point)?;
    rows.collect()
}

/// A point from a row of [`POINT_COLUMNS`].
fn point(row: &rusqlite::Row<'_>) -> Result<Point, rusqlite::Error> {
    {
        let id: Vec<u8> = row.get(0)?;
        let status: String = row.get(3)?;
        let triage: String = row.get(4)?;
        Ok(Point {
            id: EncounterId::from_slice(&id)
                .map(|id| id.to_string())
                .unwrap_or_default(),
            lat: row.get(1)?,
            lon: row.get(2)?,
            status: (!status.is_empty()).then_some(status),
            triage: (!triage.is_empty()).then_some(triage),
            uasc: row.get(5)?,
            services: service_codes(row.get(6)?),
            occurred_at: row.get(7)?,
        })
    }
}

/// Cells from the pre-aggregated `map_cells`.
fn aggregated_cells(
    conn: &Connection,
    filter: &Filter,
    bbox: [f64; 4],
    level: u32,
) -> Result<Vec<Cell>, rusqlite::Error> {
    let size = cell_size(level);
    let [min_lon, min_lat, max_lon, max_lat] = bbox;
    let mut values: Vec<Value> = vec![
        Value::Integer(i64::from(level)),
        Value::Integer(((min_lon + 180.0) / size).floor() as i64),
        Value::Integer(((max_lon + 180.0) / size).floor() as i64),
        Value::Integer(((min_lat + 90.0) / size).floor() as i64),
        Value::Integer(((max_lat + 90.0) / size).floor() as i64),
    ];
    let sql = format!(
        "SELECT cx, cy, sum(encounters), sum(sum_lat_e6), sum(sum_lon_e6), sum(sum_key) FROM map_cells
         WHERE level = ?1 AND cx BETWEEN ?2 AND ?3 AND cy BETWEEN ?4 AND ?5{}
         GROUP BY cx, cy",
        filter.dimension_sql("", &mut values)
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(params_from_iter(values), |row| {
        let (cx, cy): (i64, i64) = (row.get(0)?, row.get(1)?);
        let count: i64 = row.get(2)?;
        let (sum_lat, sum_lon): (i64, i64) = (row.get(3)?, row.get(4)?);
        let west = cx as f64 * size - 180.0;
        let south = cy as f64 * size - 90.0;
        Ok(Cell {
            count,
            lat: round6(sum_lat as f64 / count as f64 / 1e6),
            lon: round6(sum_lon as f64 / count as f64 / 1e6),
            bounds: [west, south, west + size, south + size],
            single_key: if count == 1 { row.get(5)? } else { None },
        })
    })?;
    rows.collect()
}

/// Cells grouped in SQL from the encounters the R*Tree finds.
fn located_cells(
    conn: &Connection,
    filter: &Filter,
    bbox: [f64; 4],
    level: u32,
) -> Result<Vec<Cell>, rusqlite::Error> {
    let size = cell_size(level);
    let mut values = vec![Value::Real(size)];
    let sql = format!(
        "SELECT CAST((f.lon + 180) / ?1 AS INTEGER) AS cx, CAST((f.lat + 90) / ?1 AS INTEGER) AS cy,
                count(*), avg(f.lat), avg(f.lon), min(f.lon), min(f.lat), max(f.lon), max(f.lat), min(f.key){}
         GROUP BY cx, cy",
        located_sql(filter, bbox, &mut values)
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(params_from_iter(values), |row| {
        let lat: f64 = row.get(3)?;
        let lon: f64 = row.get(4)?;
        let count: i64 = row.get(2)?;
        Ok(Cell {
            count,
            lat: round6(lat),
            lon: round6(lon),
            bounds: [row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?],
            single_key: if count == 1 { row.get(9)? } else { None },
        })
    })?;
    rows.collect()
}

fn intersection(a: [f64; 4], b: [f64; 4]) -> [f64; 4] {
    [
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    ]
}

/// Every encounter in `bbox` matching `filter`, newest first (at most [`MAX_POINTS`]), looked
/// up only where `cells` hold some: by key for a cell of one, through the R*Tree in the cell's
/// part of the box otherwise. A filter that matches little in a crowded box then costs what it
/// matches, not a scan of the box.
fn every_point(
    conn: &Connection,
    filter: &Filter,
    bbox: [f64; 4],
    cells: &[Cell],
) -> Result<Vec<Point>, rusqlite::Error> {
    let mut single_keys = Vec::new();
    let mut points = Vec::new();
    for cell in cells {
        if single_keys.len() + points.len() >= MAX_POINTS {
            break;
        }
        match cell.single_key {
            Some(key) => single_keys.push(key),
            None => points.extend(points_in(
                conn,
                filter,
                intersection(cell.bounds, bbox),
                MAX_POINTS,
            )?),
        }
    }
    points.extend(points_by_key(conn, &single_keys)?);
    // Aggregated cells are whole: their single encounter may lie just outside the box.
    let [min_lon, min_lat, max_lon, max_lat] = bbox;
    points.retain(|p| (min_lon..=max_lon).contains(&p.lon) && (min_lat..=max_lat).contains(&p.lat));
    points.sort_by(|a, b| {
        b.occurred_at
            .cmp(&a.occurred_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    points.truncate(MAX_POINTS);
    Ok(points)
}

/// Answers `GET /v1/map` for `bbox` at `zoom`.
pub fn query(
    conn: &Connection,
    filter: &Filter,
    bbox: [f64; 4],
    zoom: u32,
) -> Result<MapAnswer, rusqlite::Error> {
    let aggregated = !filter.has_time() && zoom <= MAX_CELL_LEVEL;
    let cells = if aggregated {
        aggregated_cells(conn, filter, bbox, zoom)?
    } else {
        located_cells(conn, filter, bbox, zoom.min(MAX_ZOOM))?
    };
    let total: i64 = cells.iter().map(|c| c.count).sum();
    let all_points =
        total <= POINTS_WHEN_AT_MOST || (zoom >= POINTS_FROM_ZOOM && total <= MAX_POINTS as i64);
    if all_points {
        let points = every_point(conn, filter, bbox, &cells)?;
        return Ok(MapAnswer {
            zoom,
            total: points.len() as i64,
            clusters: Vec::new(),
            points,
        });
    }
    // A cell's one encounter is a point, found by its key (all of them in one query).
    let mut single_keys = Vec::new();
    let mut clusters = Vec::new();
    for cell in cells {
        match cell.single_key {
            Some(key) if single_keys.len() < MAX_POINTS => single_keys.push(key),
            _ => clusters.push(Cluster {
                lat: cell.lat,
                lon: cell.lon,
                count: cell.count,
                bbox: cell.bounds,
            }),
        }
    }
    let points = points_by_key(conn, &single_keys)?;
    Ok(MapAnswer {
        zoom,
        total,
        clusters,
        points,
    })
}
