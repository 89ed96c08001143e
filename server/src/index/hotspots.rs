//! Hotspots (`GET /v1/hotspots`): where rescues and injuries concentrate, as polygons.
//!
//! The encounters that count are those with the `rescue` service or at least one injured
//! person, under the request's filters. Each polygon's properties: `count` (those encounters),
//! `rescues` (of them, with the rescue service), `injured` (people injured in them), `cells`. They are binned into square cells in SQL (the map's
//! cells for the given zoom); a cell is dense when it holds at least [`MIN_HOTSPOT_COUNT`] of
//! them and at least the mean of the occupied cells. Touching dense cells are merged into
//! polygons with `geo`'s boolean union, and each polygon carries the counts of the cells inside
//! it. The minimum of 5 also keeps a hotspot from pointing at one small group.

use auxilio_core::schema::Service;
use geo::{Contains, Coord, MultiPolygon, Point, Polygon, Rect, unary_union};
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use serde_json::{Value as Json, json};

use super::facts::{cell_size, service_bit};
use super::filter::Filter;
use super::map::located_sql;

/// The fewest qualifying encounters in a cell for it to be part of a hotspot.
pub const MIN_HOTSPOT_COUNT: i64 = 5;
/// Zoom whose cells are used when neither `zoom` nor `bbox` says otherwise: 0.35° (about 35 km).
pub const DEFAULT_HOTSPOT_ZOOM: u32 = 8;

/// The zoom at which `bbox` fills about four 256-pixel tiles across, as a map showing it would be.
pub fn zoom_for(bbox: [f64; 4]) -> u32 {
    let span = (bbox[2] - bbox[0]).max(bbox[3] - bbox[1]).max(1e-6);
    ((360.0 * 4.0 / span).log2().floor().max(0.0) as u32).min(super::map::MAX_ZOOM)
}

struct CellCount {
    area: Rect<f64>,
    encounters: i64,
    rescues: i64,
    injured: i64,
}

/// Answers `GET /v1/hotspots` as a GeoJSON FeatureCollection of polygons, densest first.
pub fn query(conn: &Connection, filter: &Filter, zoom: u32) -> Result<Json, rusqlite::Error> {
    let size = cell_size(zoom);
    let mut values = vec![
        Value::Real(size),
        Value::Integer(service_bit(Service::Rescue)),
    ];
    let source = match filter.bbox {
        Some(bbox) => located_sql(filter, bbox, &mut values),
        None => format!(
            " FROM encounter_facts f WHERE f.lat IS NOT NULL AND f.lon IS NOT NULL{}{}",
            filter.time_sql("f.", &mut values),
            filter.dimension_sql("f.", &mut values)
        ),
    };
    let sql = format!(
        "SELECT CAST((f.lon + 180) / ?1 AS INTEGER) AS cx, CAST((f.lat + 90) / ?1 AS INTEGER) AS cy,
                count(*), sum(f.rescues), sum(f.injured)
         {source} AND (f.services & ?2 != 0 OR f.injured > 0)
         GROUP BY cx, cy"
    );
    let mut statement = conn.prepare(&sql)?;
    let cells: Vec<CellCount> = statement
        .query_map(params_from_iter(values), |row| {
            let (cx, cy): (i64, i64) = (row.get(0)?, row.get(1)?);
            let west = cx as f64 * size - 180.0;
            let south = cy as f64 * size - 90.0;
            Ok(CellCount {
                area: Rect::new(
                    Coord { x: west, y: south },
                    Coord {
                        x: west + size,
                        y: south + size,
                    },
                ),
                encounters: row.get(2)?,
                rescues: row.get(3)?,
                injured: row.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let occupied = cells.len().max(1) as f64;
    let mean = cells.iter().map(|c| c.encounters).sum::<i64>() as f64 / occupied;
    let dense: Vec<&CellCount> = cells
        .iter()
        .filter(|c| c.encounters >= MIN_HOTSPOT_COUNT && c.encounters as f64 >= mean)
        .collect();
    let squares: Vec<Polygon<f64>> = dense.iter().map(|c| c.area.to_polygon()).collect();
    let merged: MultiPolygon<f64> = unary_union(&squares);
    let mut features: Vec<(i64, Json)> = merged
        .0
        .iter()
        .map(|polygon| {
            let inside: Vec<&&CellCount> = dense
                .iter()
                .filter(|c| polygon.contains(&Point::from(c.area.center())))
                .collect();
            let count: i64 = inside.iter().map(|c| c.encounters).sum();
            let feature = json!({
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": std::iter::once(polygon.exterior())
                        .chain(polygon.interiors())
                        .map(|ring| ring.coords().map(|c| [c.x, c.y]).collect::<Vec<_>>())
                        .collect::<Vec<_>>(),
                },
                "properties": {
                    "count": count,
                    "rescues": inside.iter().map(|c| c.rescues).sum::<i64>(),
                    "injured": inside.iter().map(|c| c.injured).sum::<i64>(),
                    "cells": inside.len(),
                },
            });
            (count, feature)
        })
        .collect();
    features.sort_by_key(|(count, _)| std::cmp::Reverse(*count));
    Ok(json!({
        "type": "FeatureCollection",
        "zoom": zoom,
        "cell_degrees": size,
        "features": features.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
    }))
}
