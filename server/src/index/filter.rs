//! The filters shared by `/v1/map`, `/v1/stats`, `/v1/hotspots` and `/v1/export`: parsed from
//! query parameters with a clear message naming any bad one, and turned into SQL conditions over
//! the columns that `encounter_facts`, `map_cells` and `stats_cells` have in common.

use std::collections::BTreeMap;

use auxilio_core::schema::{Service, Status, TriageCategory};
use rusqlite::types::Value;
use serde::Serialize;

use super::facts::{code, service_bit};
use super::{normalise_time, parse_bbox};

/// What a coordinator narrowed the view to. Every field is optional; `bbox` is required by
/// `/v1/map` only.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Filter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f64; 4]>,
    /// Inclusive, normalised to whole seconds UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Exclusive, normalised to whole seconds UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triage: Option<TriageCategory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uasc: Option<bool>,
}

/// The parameter names every filtered endpoint accepts.
pub const FILTER_PARAMETERS: [&str; 8] = [
    "bbox", "from", "to", "team", "service", "triage", "status", "uasc",
];

fn parse_enum<T: serde::de::DeserializeOwned>(
    name: &str,
    text: &str,
    expected: &str,
) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("`{name}={text}` is not one of {expected}"))
}

impl Filter {
    /// Parses the filter parameters from `pairs`; any other parameter must be in `extra`, and
    /// those are returned by name. Every error names the parameter.
    pub fn parse(
        pairs: &[(String, String)],
        extra: &[&str],
    ) -> Result<(Filter, BTreeMap<String, String>), String> {
        let mut filter = Filter::default();
        let mut others = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for (name, value) in pairs {
            if !seen.insert(name.as_str()) {
                return Err(format!("`{name}` is given more than once"));
            }
            match name.as_str() {
                "bbox" => filter.bbox = Some(parse_bbox(value)?),
                "from" => filter.from = Some(normalise_time("from", value, false)?),
                "to" => filter.to = Some(normalise_time("to", value, true)?),
                "team" if value.is_empty() => {
                    return Err("`team` must name a team, e.g. team=sonora".into());
                }
                "team" => filter.team = Some(value.clone()),
                "service" => {
                    filter.service = Some(parse_enum(
                        "service",
                        value,
                        "the service codes (orientation, humanitarian_aid, social_assistance, rescue, first_aid, located_missing, legal_advice, transfer_hospital, transfer_shelter, repatriation_support, body_recovery)",
                    )?)
                }
                "triage" => {
                    filter.triage = Some(parse_enum(
                        "triage",
                        value,
                        "red, yellow, green, gray or black",
                    )?)
                }
                "status" => filter.status = Some(parse_enum("status", value, "open or closed")?),
                "uasc" => {
                    filter.uasc = Some(match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("`uasc={value}` must be true or false")),
                    })
                }
                other if extra.contains(&other) => {
                    others.insert(name.clone(), value.clone());
                }
                other => {
                    let allowed: Vec<&str> =
                        FILTER_PARAMETERS.iter().chain(extra).copied().collect();
                    return Err(format!(
                        "unknown parameter `{other}`; the parameters are {}",
                        allowed.join(", ")
                    ));
                }
            }
        }
        if let (Some(from), Some(to)) = (&filter.from, &filter.to)
            && from > to
        {
            return Err(format!("`from` ({from}) is after `to` ({to})"));
        }
        Ok((filter, others))
    }

    /// Whether a time range (`from` or `to`) is set.
    pub fn has_time(&self) -> bool {
        self.from.is_some() || self.to.is_some()
    }

    /// SQL conditions (joined with AND, starting with ` AND`) on the dimension columns common to
    /// the facts and the aggregates, prefixed by `table.`; values are pushed onto `values`.
    pub fn dimension_sql(&self, table: &str, values: &mut Vec<Value>) -> String {
        let mut sql = String::new();
        let mut condition = |clause: String, value: Value| {
            values.push(value);
            sql.push_str(&format!(" AND {clause}?{}", values.len()));
        };
        if let Some(team) = &self.team {
            condition(format!("{table}team = "), Value::Text(team.clone()));
        }
        if let Some(status) = self.status {
            condition(format!("{table}status = "), Value::Text(code(status)));
        }
        if let Some(triage) = self.triage {
            condition(format!("{table}triage = "), Value::Text(code(triage)));
        }
        if let Some(uasc) = self.uasc {
            condition(
                format!("{table}uasc_flag = "),
                Value::Integer(i64::from(uasc)),
            );
        }
        if let Some(service) = self.service {
            condition(
                format!("{table}services & "),
                Value::Integer(service_bit(service)),
            );
            sql.push_str(" != 0");
        }
        sql
    }

    /// Conditions on `encounter_facts` (aliased `table`) for the time range.
    pub fn time_sql(&self, table: &str, values: &mut Vec<Value>) -> String {
        let mut sql = String::new();
        if let Some(from) = &self.from {
            values.push(Value::Text(from.clone()));
            sql.push_str(&format!(" AND {table}occurred_at >= ?{}", values.len()));
        }
        if let Some(to) = &self.to {
            values.push(Value::Text(to.clone()));
            sql.push_str(&format!(" AND {table}occurred_at < ?{}", values.len()));
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (name, value) in [
            ("bbox", "1,2,3"),
            ("from", "yesterday"),
            ("triage", "purple"),
            ("status", "pending"),
            ("uasc", "yes"),
            ("service", "taxi"),
            ("team", ""),
            ("colour", "red"),
        ] {
            let err = Filter::parse(&pairs(&[(name, value)]), &[]).unwrap_err();
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn filters_parse_into_their_types() {
        let (filter, others) = Filter::parse(
            &pairs(&[
                ("triage", "red"),
                ("uasc", "true"),
                ("zoom", "5"),
                ("from", "2026-11-01T00:00:00-06:00"),
            ]),
            &["zoom"],
        )
        .unwrap();
        assert_eq!(filter.triage, Some(TriageCategory::Red));
        assert_eq!(filter.uasc, Some(true));
        assert_eq!(filter.from.as_deref(), Some("2026-11-01T06:00:00Z"));
        assert_eq!(others["zoom"], "5");
    }
}
