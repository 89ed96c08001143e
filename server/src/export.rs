//! Exports for reports (`GET /v1/export`): CSV and GeoJSON with one minimised row per encounter,
//! and an HXL-tagged aggregate CSV. Every export declares its purpose and is recorded in the
//! audit log in the same transaction that reads the data, so no export leaves unrecorded.
//!
//! Minimisation and generalisation (the brief's data-protection rules 1, 3 and 6):
//! - rows carry only codes and counts: id, team, occurred_at, status, services, terrain, adm1,
//!   the group's totals, triage and UASC flag; never notes, the agent, casualty details,
//!   referrals or trafficking indicators;
//! - coordinates are rounded to 0.1° (about 11 km), in every format;
//! - in the aggregate (HXL) export, every count from 1 to 4 is written as `<5` (0 stays 0), and
//!   a row's main origin is named only when at least 5 people share it;
//! - in CSV and HXL, a cell a spreadsheet would run (starting with `=`, `+`, `-`, `@`, a tab, a
//!   line break, `|` or their full-width forms) gets a leading `'`, and `adm1` is written only
//!   when it is an area code.

use std::collections::BTreeMap;

use auxilio_core::EncounterId;
use auxilio_core::validation::is_area_code;
use rusqlite::types::Value;
use rusqlite::{Connection, Transaction, params_from_iter};
use serde_json::json;

use crate::audit;
use crate::index::facts::service_codes;
use crate::index::filter::Filter;
use crate::index::map::located_sql;
use crate::index::stats::Period;

/// Counts below this are suppressed in aggregate exports.
pub const SUPPRESS_BELOW: i64 = 5;
/// What a suppressed count is written as.
pub const SUPPRESSED: &str = "<5";
/// Coordinates are rounded to multiples of this many degrees.
pub const GENERALISED_DEGREES: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    GeoJson,
    Hxl,
}

impl Format {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "csv" => Ok(Format::Csv),
            "geojson" => Ok(Format::GeoJson),
            "hxl" => Ok(Format::Hxl),
            _ => Err(format!("`format={text}` must be csv, geojson or hxl")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::GeoJson => "geojson",
            Format::Hxl => "hxl",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv | Format::Hxl => "text/csv; charset=utf-8",
            Format::GeoJson => "application/geo+json",
        }
    }

    pub fn file_extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::GeoJson => "geojson",
            Format::Hxl => "hxl.csv",
        }
    }
}

/// Checks a declared purpose: 3 to 200 characters once trimmed.
pub fn check_purpose(purpose: Option<&str>) -> Result<String, String> {
    let purpose = purpose.map(str::trim).unwrap_or_default();
    if purpose.is_empty() {
        return Err(
            "a declared purpose is required: add `purpose=...` (3 to 200 characters, e.g. purpose=monthly report to INM) saying what the export is for; it is kept in the audit log"
                .into(),
        );
    }
    let length = purpose.chars().count();
    if !(3..=200).contains(&length) {
        return Err(format!(
            "`purpose` must be 3 to 200 characters; it has {length}"
        ));
    }
    Ok(purpose.to_string())
}

/// An export ready to send.
#[derive(Debug)]
pub struct Export {
    pub body: String,
    /// Data rows (encounters, or aggregate rows for HXL).
    pub rows: usize,
}

fn generalise(degrees: f64) -> f64 {
    (degrees / GENERALISED_DEGREES).round() * GENERALISED_DEGREES
}

fn generalised_text(degrees: Option<f64>) -> String {
    degrees
        .map(|d| format!("{:.1}", generalise(d)))
        .unwrap_or_default()
}

/// First characters with which a spreadsheet (Excel, LibreOffice, Google Sheets) runs a cell as a
/// formula or a command: the ASCII ones, the full-width forms some of them also accept, and the
/// controls that start a new cell or line before one.
const FORMULA_STARTS: [char; 12] = [
    '=', '+', '-', '@', '\t', '\r', '\n', '|', '\u{ff1d}', '\u{ff0b}', '\u{ff0d}', '\u{ff20}',
];

/// One CSV field: quoted when needed, and text a spreadsheet would run as a formula defused by a
/// leading `'` (a plain number such as `-112.9` is left as it is).
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(FORMULA_STARTS) && text.parse::<f64>().is_err() {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// An `adm1` as a device wrote it, written only when it is an area code (else left empty: the
/// record itself is flagged for it).
fn area_code(adm1: String) -> String {
    if is_area_code(&adm1) {
        adm1
    } else {
        String::new()
    }
}

fn csv_line(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// FROM and WHERE over the facts (alias `f`) for `filter`.
fn facts_sql(filter: &Filter, values: &mut Vec<Value>) -> String {
    match filter.bbox {
        Some(bbox) => located_sql(filter, bbox, values),
        None => format!(
            " FROM encounter_facts f WHERE 1 = 1{}{}",
            filter.time_sql("f.", values),
            filter.dimension_sql("f.", values)
        ),
    }
}

const ENCOUNTER_COLUMNS: [&str; 15] = [
    "id",
    "team",
    "occurred_at",
    "status",
    "services",
    "terrain",
    "adm1",
    "people",
    "injured",
    "uasc",
    "deceased",
    "triage",
    "has_uasc",
    "lat",
    "lon",
];

/// The minimised per-encounter rows, oldest first.
fn encounter_rows(
    conn: &Connection,
    filter: &Filter,
) -> Result<Vec<[String; 15]>, rusqlite::Error> {
    let mut values = Vec::new();
    let sql = format!(
        "SELECT f.encounter, f.team, f.occurred_at, f.status, f.services, f.terrain, f.adm1, f.people,
                f.injured, f.uasc, f.deceased, f.triage, f.uasc_flag, f.lat, f.lon{}
         ORDER BY f.occurred_at, f.key",
        facts_sql(filter, &mut values)
    );
    let mut statement = conn.prepare(&sql)?;
    let rows = statement.query_map(params_from_iter(values), |row| {
        let id: Vec<u8> = row.get(0)?;
        let number =
            |i: usize| -> Result<String, rusqlite::Error> { Ok(row.get::<_, i64>(i)?.to_string()) };
        Ok([
            EncounterId::from_slice(&id)
                .map(|id| id.to_string())
                .unwrap_or_default(),
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            service_codes(row.get(4)?).join(";"),
            row.get(5)?,
            area_code(row.get(6)?),
            number(7)?,
            number(8)?,
            number(9)?,
            number(10)?,
            row.get(11)?,
            row.get::<_, bool>(12)?.to_string(),
            generalised_text(row.get(13)?),
            generalised_text(row.get(14)?),
        ])
    })?;
    rows.collect()
}

fn csv(rows: &[[String; 15]]) -> String {
    let mut out = csv_line(&ENCOUNTER_COLUMNS.map(String::from));
    for row in rows {
        out.push_str(&csv_line(row));
    }
    out
}

fn geojson(rows: &[[String; 15]]) -> String {
    let features: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let mut properties = serde_json::Map::new();
            for (name, value) in ENCOUNTER_COLUMNS.iter().zip(row).take(13) {
                let value = match *name {
                    "people" | "injured" | "uasc" | "deceased" => {
                        json!(value.parse::<i64>().unwrap_or(0))
                    }
                    "has_uasc" => json!(value == "true"),
                    "services" => json!(
                        value
                            .split(';')
                            .filter(|s| !s.is_empty())
                            .collect::<Vec<_>>()
                    ),
                    _ if value.is_empty() => serde_json::Value::Null,
                    _ => json!(value),
                };
                properties.insert((*name).to_string(), value);
            }
            let geometry = match (row[14].parse::<f64>(), row[13].parse::<f64>()) {
                (Ok(lon), Ok(lat)) => json!({"type": "Point", "coordinates": [lon, lat]}),
                _ => serde_json::Value::Null,
            };
            json!({"type": "Feature", "geometry": geometry, "properties": properties})
        })
        .collect();
    json!({
        "type": "FeatureCollection",
        "generalised_degrees": GENERALISED_DEGREES,
        "features": features,
    })
    .to_string()
}

/// The HXL columns: a header, its hashtag, and for counts the measure it sums.
const HXL_COLUMNS: [(&str, &str); 16] = [
    ("Date", "#date+occurred"),
    ("Admin 1", "#adm1+code"),
    ("Latitude", "#geo+lat"),
    ("Longitude", "#geo+lon"),
    ("Team", "#org"),
    ("Activities", "#activity"),
    ("Main origin", "#country+code+origin"),
    ("Encounters", "#output+encounters"),
    ("People reached", "#reached+total"),
    ("Women and girls", "#reached+f"),
    ("Men and boys", "#reached+m"),
    ("Children", "#reached+children"),
    ("Girls", "#reached+f+children"),
    ("Boys", "#reached+m+children"),
    ("Unaccompanied children", "#reached+children+unaccompanied"),
    ("Injured", "#affected+injured"),
];

/// The counts of one HXL row, in the order of the count columns.
#[derive(Default)]
struct HxlGroup {
    services: i64,
    located: i64,
    sum_lat: f64,
    sum_lon: f64,
    counts: [i64; 9],
    origins: BTreeMap<String, i64>,
}

fn suppressed(count: i64) -> String {
    if count > 0 && count < SUPPRESS_BELOW {
        SUPPRESSED.to_string()
    } else {
        count.to_string()
    }
}

fn hxl(
    conn: &Connection,
    filter: &Filter,
    period: Period,
) -> Result<(String, usize), rusqlite::Error> {
    let bucket = match period {
        Period::Day => "f.day",
        Period::Week => {
            "date(f.day, '-' || ((CAST(strftime('%w', f.day) AS INTEGER) + 6) % 7) || ' days')"
        }
        Period::Month => "substr(f.day, 1, 7)",
    };
    let mut values = Vec::new();
    let source = facts_sql(filter, &mut values);
    let sql = format!(
        "SELECT {bucket}, f.adm1, f.team, f.services, count(f.lat), sum(f.lat), sum(f.lon),
                count(*), sum(f.people),
                sum(f_0_4 + f_5_11 + f_12_17 + f_18_59 + f_60_plus + f_unknown),
                sum(m_0_4 + m_5_11 + m_12_17 + m_18_59 + m_60_plus + m_unknown),
                sum(f_0_4 + f_5_11 + f_12_17 + m_0_4 + m_5_11 + m_12_17 + unknown_0_4 + unknown_5_11 + unknown_12_17),
                sum(f_0_4 + f_5_11 + f_12_17), sum(m_0_4 + m_5_11 + m_12_17), sum(f.uasc), sum(f.injured)
         {source} GROUP BY 1, 2, 3, 4"
    );
    let mut groups: BTreeMap<(String, String, String), HxlGroup> = BTreeMap::new();
    let mut statement = conn.prepare(&sql)?;
    let mut rows = statement.query(params_from_iter(values.clone()))?;
    while let Some(row) = rows.next()? {
        let group = groups
            .entry((row.get(0)?, row.get(1)?, row.get(2)?))
            .or_default();
        group.services |= row.get::<_, i64>(3)?;
        group.located += row.get::<_, i64>(4)?;
        group.sum_lat += row.get::<_, Option<f64>>(5)?.unwrap_or(0.0);
        group.sum_lon += row.get::<_, Option<f64>>(6)?.unwrap_or(0.0);
        for (i, count) in group.counts.iter_mut().enumerate() {
            *count += row.get::<_, i64>(7 + i)?;
        }
    }
    let mut statement = conn.prepare(&format!(
        "SELECT {bucket}, f.adm1, f.team, n.nationality, sum(n.people)
         FROM encounter_nationalities n JOIN encounter_facts f ON f.key = n.key
         WHERE n.key IN (SELECT f.key {source}) GROUP BY 1, 2, 3, 4"
    ))?;
    let mut rows = statement.query(params_from_iter(values))?;
    while let Some(row) = rows.next()? {
        if let Some(group) = groups.get_mut(&(row.get(0)?, row.get(1)?, row.get(2)?)) {
            group.origins.insert(row.get(3)?, row.get(4)?);
        }
    }
    let mut out = csv_line(&HXL_COLUMNS.map(|(header, _)| header.to_string()));
    out.push_str(&csv_line(&HXL_COLUMNS.map(|(_, tag)| tag.to_string())));
    for ((period, adm1, team), group) in &groups {
        let adm1 = area_code(adm1.clone());
        let (lat, lon) = if group.located > 0 {
            (
                Some(group.sum_lat / group.located as f64),
                Some(group.sum_lon / group.located as f64),
            )
        } else {
            (None, None)
        };
        // The most common origin, named only when enough people share it.
        let origin = group
            .origins
            .iter()
            .max_by_key(|(code, people)| (**people, std::cmp::Reverse((*code).clone())))
            .filter(|(_, people)| **people >= SUPPRESS_BELOW)
            .map(|(code, _)| code.clone())
            .unwrap_or_default();
        let mut fields = vec![
            period.clone(),
            adm1,
            generalised_text(lat),
            generalised_text(lon),
            team.clone(),
            service_codes(group.services).join(";"),
            origin,
        ];
        fields.extend(group.counts.iter().map(|c| suppressed(*c)));
        out.push_str(&csv_line(&fields));
    }
    Ok((out, groups.len()))
}

/// Reads the export and records it in the audit log, in one transaction: if the audit row
/// cannot be written, nothing is exported.
pub fn export(
    tx: &Transaction<'_>,
    actor: &str,
    format: Format,
    purpose: &str,
    filter: &Filter,
    period: Period,
) -> Result<Export, rusqlite::Error> {
    let (body, rows) = match format {
        Format::Csv | Format::GeoJson => {
            let rows = encounter_rows(tx, filter)?;
            let body = if format == Format::Csv {
                csv(&rows)
            } else {
                geojson(&rows)
            };
            (body, rows.len())
        }
        Format::Hxl => hxl(tx, filter, period)?,
    };
    let mut detail = json!({
        "device": actor,
        "format": format.name(),
        "purpose": purpose,
        "filters": filter,
        "rows": rows,
    });
    if format == Format::Hxl {
        detail["period"] = json!(period);
    }
    audit::record(tx, actor, "export", detail)?;
    Ok(Export { body, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_under_five_are_suppressed_but_zero_is_not() {
        assert_eq!(suppressed(0), "0");
        assert_eq!(suppressed(3), "<5");
        assert_eq!(suppressed(5), "5");
    }

    #[test]
    fn coordinates_are_rounded_to_a_tenth_of_a_degree() {
        assert_eq!(generalised_text(Some(31.8649)), "31.9");
        assert_eq!(generalised_text(Some(-112.8512)), "-112.9");
        assert_eq!(generalised_text(None), "");
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("-112.9"), "-112.9");
        for formula in [
            "\tcalc",
            "\rcalc",
            "|calc",
            "\u{ff1d}1+1",
            "\u{ff20}SUM(1)",
            "-1+1",
        ] {
            assert!(
                csv_field(formula).trim_start_matches('"').starts_with('\''),
                "{formula:?}"
            );
        }
        assert_eq!(area_code("MX-SON".into()), "MX-SON");
        assert_eq!(area_code("=SUM(1,2)".into()), "");
        assert!(check_purpose(Some("  ")).unwrap_err().contains("purpose"));
        assert!(check_purpose(Some("ab")).is_err());
        assert_eq!(
            check_purpose(Some(" monthly report ")).unwrap(),
            "monthly report"
        );
    }
}
