//! The coordinator's figures (`GET /v1/stats`): totals and breakdowns by period, adm1, service,
//! sex × age band, nationality and triage, for the same filters as the map.
//!
//! Without a bounding box the figures come from the pre-aggregated `stats_cells` and
//! `stats_nationalities` (rows per day or month, team, adm1, status and UASC flag, for every
//! encounter and again per service and per triage category; services and triage categories are
//! also columns): the time range is cut into whole months (when the breakdown is by month),
//! whole days, and the partial days at its two ends, which are read from the per-encounter
//! facts. The work grows with the number of days or months and teams in the range, not with the
//! number of encounters. With both a service and a triage filter the encounters in the time
//! range are summed from their facts (through the time index), and with a bounding box those
//! the R*Tree finds.

use std::collections::BTreeMap;

use chrono::{Datelike, Months, NaiveDate};
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use serde::{Deserialize, Serialize};

use super::facts::{
    AGE_BANDS, FIRST_SEX_AGE, MEASURES, SERVICES, SEXES, code, stats_columns, stats_expressions,
    triage_codes,
};
use super::filter::Filter;
use super::map::located_sql;

/// How `by_period` is broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    /// Weeks start on Monday; a week is named by its Monday.
    Week,
    Month,
}

impl Period {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            _ => Err(format!("`period={text}` must be day, week or month")),
        }
    }

    /// SQL naming the period of a day column `day` (YYYY-MM-DD).
    fn of_day(self, day: &str) -> String {
        match self {
            Period::Day => day.to_string(),
            Period::Week => format!(
                "date({day}, '-' || ((CAST(strftime('%w', {day}) AS INTEGER) + 6) % 7) || ' days')"
            ),
            Period::Month => format!("substr({day}, 1, 7)"),
        }
    }
}

/// The counted figures of a set of encounters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub encounters: i64,
    /// People met (the sum of the group counts).
    pub people: i64,
    pub injured: i64,
    /// Unaccompanied or separated children.
    pub uasc: i64,
    pub deceased: i64,
    /// Encounters with the `rescue` service.
    pub rescues: i64,
    /// People in those encounters.
    pub rescued: i64,
}

impl Totals {
    fn add(&mut self, measures: &[i64]) {
        self.encounters += measures[0];
        self.people += measures[1];
        self.injured += measures[2];
        self.uasc += measures[3];
        self.deceased += measures[4];
        self.rescues += measures[5];
        self.rescued += measures[6];
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodRow {
    pub period: String,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adm1Row {
    /// `null` for encounters without an adm1 code.
    pub adm1: Option<String>,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Encounters that gave a service, and the people in them (an encounter with two services
/// counts under both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub service: String,
    pub encounters: i64,
    pub people: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriageRow {
    /// The most urgent category among the encounter's casualties, or `none`.
    pub triage: String,
    pub encounters: i64,
    pub people: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SexAgeRow {
    pub sex: String,
    pub age_band: String,
    pub people: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NationalityRow {
    pub nationality: String,
    pub people: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsAnswer {
    pub period: Period,
    pub totals: Totals,
    pub by_period: Vec<PeriodRow>,
    pub by_adm1: Vec<Adm1Row>,
    pub by_service: Vec<ServiceRow>,
    pub by_sex_age: Vec<SexAgeRow>,
    pub by_nationality: Vec<NationalityRow>,
    pub by_triage: Vec<TriageRow>,
}

/// Where a part of the time range is read from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// Per-encounter facts with `occurred_at` in [from, to) (either open).
    Facts {
        from: Option<String>,
        to: Option<String>,
    },
    /// Aggregated rows of `grain` with period in [from, to) (either open).
    Cells {
        grain: &'static str,
        from: Option<String>,
        to: Option<String>,
    },
}

fn date_of(time: &str) -> NaiveDate {
    NaiveDate::parse_from_str(time.get(..10).unwrap_or(time), "%Y-%m-%d").unwrap_or_default()
}

fn is_midnight(time: &str) -> bool {
    time.get(10..) == Some("T00:00:00Z")
}

fn day_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

fn month_text(day: NaiveDate) -> String {
    day.format("%Y-%m").to_string()
}

fn first_of_month(day: NaiveDate) -> NaiveDate {
    day.with_day(1).expect("every month has a first day")
}

/// Cuts [from, to) into partial days (facts), whole days and, when `months`, whole months.
fn sources(from: Option<&str>, to: Option<&str>, months: bool) -> Vec<Source> {
    let midnight = |day: NaiveDate| format!("{}T00:00:00Z", day_text(day));
    // The first whole day starts at or after `from`; whole days end where `to`'s day begins.
    let first_day = from.map(|f| {
        let day = date_of(f);
        if is_midnight(f) {
            day
        } else {
            day.succ_opt().unwrap_or(day)
        }
    });
    let end_day = to.map(date_of);
    if let (Some(first), Some(end)) = (first_day, end_day)
        && first >= end
    {
        return vec![Source::Facts {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
        }];
    }
    let mut out = Vec::new();
    if let (Some(f), Some(first)) = (from, first_day)
        && !is_midnight(f)
    {
        out.push(Source::Facts {
            from: Some(f.to_string()),
            to: Some(midnight(first)),
        });
    }
    if let (Some(t), Some(end)) = (to, end_day)
        && !is_midnight(t)
    {
        out.push(Source::Facts {
            from: Some(midnight(end)),
            to: Some(t.to_string()),
        });
    }
    let days = |from: Option<NaiveDate>, to: Option<NaiveDate>| Source::Cells {
        grain: "day",
        from: from.map(day_text),
        to: to.map(day_text),
    };
    if !months {
        out.push(days(first_day, end_day));
        return out;
    }
    // Whole months: from the first month starting on or after the first whole day, to the
    // month of the end day.
    let first_month = first_day.map(|day| {
        if day.day() == 1 {
            day
        } else {
            first_of_month(day) + Months::new(1)
        }
    });
    let end_month = end_day.map(first_of_month);
    match (first_month, end_month) {
        (Some(first), Some(end)) if first >= end => out.push(days(first_day, end_day)),
        _ => {
            if first_month.is_some() {
                out.push(days(first_day, first_month));
            }
            out.push(Source::Cells {
                grain: "month",
                from: first_month.map(month_text),
                to: end_month.map(month_text),
            });
            if end_month.is_some() {
                out.push(days(end_month, end_day));
            }
        }
    }
    out
}

/// Conditions on a time column for [from, to) (either open).
fn range_sql(
    column: &str,
    from: &Option<String>,
    to: &Option<String>,
    values: &mut Vec<Value>,
) -> String {
    let mut sql = String::new();
    if let Some(from) = from {
        values.push(Value::Text(from.clone()));
        sql.push_str(&format!(" AND {column} >= ?{}", values.len()));
    }
    if let Some(to) = to {
        values.push(Value::Text(to.clone()));
        sql.push_str(&format!(" AND {column} < ?{}", values.len()));
    }
    sql
}

/// The aggregate rows that answer `filter`'s service or triage filter (at most one of them), and
/// the rest of the filter, which the aggregates' columns answer.
fn facet_of(filter: &Filter) -> ((&'static str, String), Filter) {
    let facet = match (filter.service, filter.triage) {
        (Some(service), _) => ("service", code(service)),
        (None, Some(triage)) => ("triage", code(triage)),
        (None, None) => ("", String::new()),
    };
    let rest = Filter {
        service: None,
        triage: None,
        ..filter.clone()
    };
    (facet, rest)
}

/// Conditions on an aggregate table for `filter` (facet and dimensions).
fn cells_sql(filter: &Filter, values: &mut Vec<Value>) -> String {
    let ((facet, facet_value), rest) = facet_of(filter);
    values.push(Value::Text(facet.to_string()));
    values.push(Value::Text(facet_value));
    format!(
        " AND facet = ?{} AND facet_value = ?{}{}",
        values.len() - 1,
        values.len(),
        rest.dimension_sql("", values)
    )
}

/// One SELECT of (bucket, adm1, the stats columns…) over a source, for the UNION.
fn select_measures(
    source: &Source,
    filter: &Filter,
    period: Period,
    values: &mut Vec<Value>,
) -> String {
    match source {
        Source::Facts { from, to } => {
            let columns: Vec<String> = stats_expressions("")
                .into_iter()
                .zip(stats_columns())
                .map(|(expression, name)| format!("{expression} AS {name}"))
                .collect();
            let time = range_sql("occurred_at", from, to, values);
            format!(
                "SELECT {} AS bucket, adm1, {} FROM encounter_facts WHERE 1 = 1{time}{}",
                period.of_day("day"),
                columns.join(", "),
                filter.dimension_sql("", values)
            )
        }
        Source::Cells { grain, from, to } => {
            values.push(Value::Text((*grain).to_string()));
            let grain_parameter = values.len();
            let time = range_sql("period", from, to, values);
            let bucket = if *grain == "month" {
                "period".to_string()
            } else {
                period.of_day("period")
            };
            format!(
                "SELECT {bucket} AS bucket, adm1, {} FROM stats_cells WHERE grain = ?{grain_parameter}{time}{}",
                stats_columns().join(", "),
                cells_sql(filter, values)
            )
        }
    }
}

/// One SELECT of (nationality, people) over a source, for the UNION.
fn select_nationalities(source: &Source, filter: &Filter, values: &mut Vec<Value>) -> String {
    match source {
        Source::Facts { from, to } => {
            let time = range_sql("f.occurred_at", from, to, values);
            format!(
                "SELECT n.nationality AS nationality, n.people AS people
                 FROM encounter_facts f JOIN encounter_nationalities n ON n.key = f.key
                 WHERE 1 = 1{time}{}",
                filter.dimension_sql("f.", values)
            )
        }
        Source::Cells { grain, from, to } => {
            values.push(Value::Text((*grain).to_string()));
            let grain_parameter = values.len();
            let time = range_sql("period", from, to, values);
            format!(
                "SELECT nationality, people FROM stats_nationalities WHERE grain = ?{grain_parameter}{time}{}",
                cells_sql(filter, values)
            )
        }
    }
}

/// Answers `GET /v1/stats`.
pub fn query(
    conn: &Connection,
    filter: &Filter,
    period: Period,
) -> Result<StatsAnswer, rusqlite::Error> {
    let sums: Vec<String> = stats_columns()
        .iter()
        .map(|c| format!("sum({c})"))
        .collect();
    let mut values = Vec::new();
    let mut nationality_values = Vec::new();
    let (measures, nationalities) = if let Some(bbox) = filter.bbox {
        // Encounters found through the R*Tree, summed from their facts.
        let located = located_sql(filter, bbox, &mut values);
        nationality_values = values.clone();
        let columns: Vec<String> = stats_expressions("f.")
            .into_iter()
            .zip(stats_columns())
            .map(|(expression, name)| format!("{expression} AS {name}"))
            .collect();
        (
            format!(
                "SELECT {} AS bucket, f.adm1 AS adm1, {}{located}",
                period.of_day("f.day"),
                columns.join(", ")
            ),
            format!(
                "SELECT nationality, people FROM encounter_nationalities WHERE key IN (SELECT f.key{located})"
            ),
        )
    } else if filter.service.is_some() && filter.triage.is_some() {
        // The aggregates have rows per service and per triage category, not per both: the
        // facts in range.
        let whole = Source::Facts {
            from: filter.from.clone(),
            to: filter.to.clone(),
        };
        (
            select_measures(&whole, filter, period, &mut values),
            select_nationalities(&whole, filter, &mut nationality_values),
        )
    } else {
        let (from, to) = (filter.from.as_deref(), filter.to.as_deref());
        let measures: Vec<String> = sources(from, to, period == Period::Month)
            .iter()
            .map(|source| select_measures(source, filter, period, &mut values))
            .collect();
        // Nationalities have no breakdown by period: whole months always serve.
        let nationalities: Vec<String> = sources(from, to, true)
            .iter()
            .map(|source| select_nationalities(source, filter, &mut nationality_values))
            .collect();
        (
            measures.join(" UNION ALL "),
            nationalities.join(" UNION ALL "),
        )
    };
    answer(
        conn,
        period,
        &format!(
            "SELECT bucket, adm1, {} FROM ({measures}) GROUP BY 1, 2",
            sums.join(", ")
        ),
        values,
        &nationalities,
        nationality_values,
    )
}

/// Runs the grouped measures query and the nationalities query and folds them into the answer.
fn answer(
    conn: &Connection,
    period: Period,
    measures_sql: &str,
    values: Vec<Value>,
    nationalities_sql: &str,
    nationality_values: Vec<Value>,
) -> Result<StatsAnswer, rusqlite::Error> {
    let columns = stats_columns().len();
    let mut sums = vec![0i64; columns];
    let mut by_period: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_adm1: BTreeMap<String, Totals> = BTreeMap::new();
    let mut statement = conn.prepare(measures_sql)?;
    let mut rows = statement.query(params_from_iter(values))?;
    let mut row_values = vec![0i64; columns];
    while let Some(row) = rows.next()? {
        for (i, value) in row_values.iter_mut().enumerate() {
            *value = row.get::<_, Option<i64>>(2 + i)?.unwrap_or(0);
        }
        for (sum, value) in sums.iter_mut().zip(&row_values) {
            *sum += value;
        }
        by_period.entry(row.get(0)?).or_default().add(&row_values);
        by_adm1.entry(row.get(1)?).or_default().add(&row_values);
    }
    let mut totals = Totals::default();
    totals.add(&sums);
    // After the measures: encounters and people per service, then per triage category.
    let pairs = &sums[MEASURES.len()..];
    let by_service = SERVICES
        .iter()
        .zip(pairs.chunks(2))
        .filter(|(_, pair)| pair[0] > 0)
        .map(|(service, pair)| ServiceRow {
            service: code(*service),
            encounters: pair[0],
            people: pair[1],
        })
        .collect();
    let by_triage = triage_codes()
        .into_iter()
        .zip(pairs[SERVICES.len() * 2..].chunks(2))
        .filter(|(_, pair)| pair[0] > 0)
        .map(|(triage, pair)| TriageRow {
            triage,
            encounters: pair[0],
            people: pair[1],
        })
        .collect();
    let mut by_sex_age = Vec::new();
    for (s, sex) in SEXES.iter().enumerate() {
        for (b, band) in AGE_BANDS.iter().enumerate() {
            let people = sums[FIRST_SEX_AGE + s * AGE_BANDS.len() + b];
            if people > 0 {
                by_sex_age.push(SexAgeRow {
                    sex: (*sex).to_string(),
                    age_band: (*band).to_string(),
                    people,
                });
            }
        }
    }
    let mut statement = conn.prepare(&format!(
        "SELECT nationality, sum(people) FROM ({nationalities_sql}) GROUP BY 1 HAVING sum(people) > 0
         ORDER BY 2 DESC, 1"
    ))?;
    let by_nationality = statement
        .query_map(params_from_iter(nationality_values), |row| {
            Ok(NationalityRow {
                nationality: row.get(0)?,
                people: row.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(StatsAnswer {
        period,
        totals,
        by_period: by_period
            .into_iter()
            .map(|(period, totals)| PeriodRow { period, totals })
            .collect(),
        by_adm1: by_adm1
            .into_iter()
            .map(|(adm1, totals)| Adm1Row {
                adm1: (!adm1.is_empty()).then_some(adm1),
                totals,
            })
            .collect(),
        by_service,
        by_sex_age,
        by_nationality,
        by_triage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(from: &str, to: &str) -> Source {
        Source::Facts {
            from: Some(from.into()),
            to: Some(to.into()),
        }
    }

    fn cells(grain: &'static str, from: &str, to: &str) -> Source {
        Source::Cells {
            grain,
            from: Some(from.into()),
            to: Some(to.into()),
        }
    }

    #[test]
    fn a_range_is_cut_into_partial_days_whole_days_and_whole_months() {
        assert_eq!(
            sources(
                Some("2026-01-15T12:00:00Z"),
                Some("2026-04-03T06:00:00Z"),
                true
            ),
            [
                facts("2026-01-15T12:00:00Z", "2026-01-16T00:00:00Z"),
                facts("2026-04-03T00:00:00Z", "2026-04-03T06:00:00Z"),
                cells("day", "2026-01-16", "2026-02-01"),
                cells("month", "2026-02", "2026-04"),
                cells("day", "2026-04-01", "2026-04-03"),
            ]
        );
        assert_eq!(
            sources(
                Some("2026-01-15T12:00:00Z"),
                Some("2026-01-15T13:00:00Z"),
                true
            ),
            [facts("2026-01-15T12:00:00Z", "2026-01-15T13:00:00Z")]
        );
        assert_eq!(
            sources(
                Some("2026-01-01T00:00:00Z"),
                Some("2026-01-20T00:00:00Z"),
                false
            ),
            [cells("day", "2026-01-01", "2026-01-20")]
        );
        assert_eq!(
            sources(None, None, true),
            [Source::Cells {
                grain: "month",
                from: None,
                to: None
            }]
        );
    }
}
