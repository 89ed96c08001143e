//! The coordinator's figures (`GET /v1/stats`): totals and breakdowns by period, adm1, service,
//! sex × age band, nationality and triage, for the same filters as the map.
//!
//! Without a bounding box the figures come from the pre-aggregated `stats_cells` and
//! `stats_nationalities`: the time range is cut into whole months (when the breakdown is by
//! month), whole days, and the partial days at its two ends, which are read from the
//! per-encounter facts. The work grows with the number of periods and filter combinations in
//! the range, not with the number of encounters. With a bounding box, the encounters are found
//! through the R*Tree and summed from their facts.

use std::collections::BTreeMap;

use chrono::{Datelike, Months, NaiveDate};
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use serde::{Deserialize, Serialize};

use super::facts::{AGE_BANDS, FIRST_SEX_AGE, MEASURES, SERVICES, SEXES, TRIAGE_ORDER, code};
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
    fn measures(&self) -> [i64; 7] {
        [
            self.encounters,
            self.people,
            self.injured,
            self.uasc,
            self.deceased,
            self.rescues,
            self.rescued,
        ]
    }

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub service: String,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriageRow {
    /// The most urgent category among the encounter's casualties, or `none`.
    pub triage: String,
    #[serde(flatten)]
    pub totals: Totals,
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

/// One SELECT of (period, adm1, triage, services, measures…) over a source, for the UNION.
fn select_measures(
    source: &Source,
    filter: &Filter,
    period: Period,
    values: &mut Vec<Value>,
) -> String {
    let sums: Vec<String> = MEASURES.iter().map(|m| format!("{m} AS {m}")).collect();
    let range =
        |column: &str, from: &Option<String>, to: &Option<String>, values: &mut Vec<Value>| {
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
        };
    match source {
        Source::Facts { from, to } => {
            let time = range("occurred_at", from, to, values);
            format!(
                "SELECT {} AS bucket, adm1, triage, services, {} FROM encounter_facts WHERE 1 = 1{time}{}",
                period.of_day("day"),
                sums.join(", "),
                filter.dimension_sql("", values)
            )
        }
        Source::Cells { grain, from, to } => {
            values.push(Value::Text((*grain).to_string()));
            let grain_parameter = values.len();
            let time = range("period", from, to, values);
            let bucket = if *grain == "month" {
                "period".to_string()
            } else {
                period.of_day("period")
            };
            format!(
                "SELECT {bucket} AS bucket, adm1, triage, services, {} FROM stats_cells
                 WHERE grain = ?{grain_parameter}{time}{}",
                sums.join(", "),
                filter.dimension_sql("", values)
            )
        }
    }
}

/// One SELECT of (nationality, people) over a source, for the UNION.
fn select_nationalities(source: &Source, filter: &Filter, values: &mut Vec<Value>) -> String {
    match source {
        Source::Facts { from, to } => {
            let mut time = String::new();
            if let Some(from) = from {
                values.push(Value::Text(from.clone()));
                time.push_str(&format!(" AND f.occurred_at >= ?{}", values.len()));
            }
            if let Some(to) = to {
                values.push(Value::Text(to.clone()));
                time.push_str(&format!(" AND f.occurred_at < ?{}", values.len()));
            }
            format!(
                "SELECT n.nationality AS nationality, n.people AS people
                 FROM encounter_facts f JOIN encounter_nationalities n ON n.key = f.key
                 WHERE 1 = 1{time}{}",
                filter.dimension_sql("f.", values)
            )
        }
        Source::Cells { grain, from, to } => {
            values.push(Value::Text((*grain).to_string()));
            let mut sql = format!(
                "SELECT nationality, people FROM stats_nationalities WHERE grain = ?{}",
                values.len()
            );
            if let Some(from) = from {
                values.push(Value::Text(from.clone()));
                sql.push_str(&format!(" AND period >= ?{}", values.len()));
            }
            if let Some(to) = to {
                values.push(Value::Text(to.clone()));
                sql.push_str(&format!(" AND period < ?{}", values.len()));
            }
            sql.push_str(&filter.dimension_sql("", values));
            sql
        }
    }
}

/// Answers `GET /v1/stats`.
pub fn query(
    conn: &Connection,
    filter: &Filter,
    period: Period,
) -> Result<StatsAnswer, rusqlite::Error> {
    let sums: Vec<String> = MEASURES.iter().map(|m| format!("sum({m})")).collect();
    let mut values = Vec::new();
    let (measures_sql, nationalities_sql) = match filter.bbox {
        Some(bbox) => {
            // Encounters found through the R*Tree, summed from their facts.
            let located = located_sql(filter, bbox, &mut values);
            let columns: Vec<String> = MEASURES.iter().map(|m| format!("f.{m}")).collect();
            let measures = format!(
                "SELECT {} AS bucket, f.adm1 AS adm1, f.triage AS triage, f.services AS services, {}{located}",
                period.of_day("f.day"),
                columns.join(", ")
            );
            let nationalities = format!(
                "SELECT nationality, people FROM encounter_nationalities WHERE key IN (SELECT f.key{located})"
            );
            (measures, nationalities)
        }
        None => {
            let parts = sources(
                filter.from.as_deref(),
                filter.to.as_deref(),
                period == Period::Month,
            );
            let measures: Vec<String> = parts
                .iter()
                .map(|source| select_measures(source, filter, period, &mut values))
                .collect();
            let mut nationality_values = Vec::new();
            let nationalities: Vec<String> = parts
                .iter()
                .map(|source| select_nationalities(source, filter, &mut nationality_values))
                .collect();
            // The two queries number their parameters separately.
            let nationalities = nationalities.join(" UNION ALL ");
            return answer(
                conn,
                period,
                &format!(
                    "SELECT bucket, adm1, triage, services, {} FROM ({}) GROUP BY 1, 2, 3, 4",
                    sums.join(", "),
                    measures.join(" UNION ALL ")
                ),
                values,
                &nationalities,
                nationality_values,
            );
        }
    };
    let nationality_values = values.clone();
    answer(
        conn,
        period,
        &format!(
            "SELECT bucket, adm1, triage, services, {} FROM ({measures_sql}) GROUP BY 1, 2, 3, 4",
            sums.join(", ")
        ),
        values,
        &nationalities_sql,
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
    let mut totals = Totals::default();
    let mut sex_age = [0i64; MEASURES.len() - FIRST_SEX_AGE];
    let mut by_period: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_adm1: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_triage: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_services: BTreeMap<i64, Totals> = BTreeMap::new();
    let mut statement = conn.prepare(measures_sql)?;
    let mut rows = statement.query(params_from_iter(values))?;
    let mut measures = [0i64; MEASURES.len()];
    while let Some(row) = rows.next()? {
        for (i, measure) in measures.iter_mut().enumerate() {
            *measure = row.get(4 + i)?;
        }
        totals.add(&measures);
        for (sum, value) in sex_age.iter_mut().zip(&measures[FIRST_SEX_AGE..]) {
            *sum += value;
        }
        by_period.entry(row.get(0)?).or_default().add(&measures);
        by_adm1.entry(row.get(1)?).or_default().add(&measures);
        by_triage.entry(row.get(2)?).or_default().add(&measures);
        by_services.entry(row.get(3)?).or_default().add(&measures);
    }
    let mut by_service: Vec<ServiceRow> = Vec::new();
    for service in SERVICES {
        let bit = super::facts::service_bit(service);
        let mut sum = Totals::default();
        for (mask, totals) in &by_services {
            if mask & bit != 0 {
                sum.add(&totals.measures());
            }
        }
        if sum.encounters > 0 {
            by_service.push(ServiceRow {
                service: code(service),
                totals: sum,
            });
        }
    }
    let mut triage_rows: Vec<TriageRow> = TRIAGE_ORDER
        .iter()
        .map(|category| code(*category))
        .chain(["".to_string()])
        .filter_map(|category| {
            by_triage.get(&category).map(|totals| TriageRow {
                triage: if category.is_empty() {
                    "none".into()
                } else {
                    category
                },
                totals: *totals,
            })
        })
        .collect();
    triage_rows.retain(|row| row.totals.encounters > 0);
    let mut by_sex_age = Vec::new();
    for (s, sex) in SEXES.iter().enumerate() {
        for (b, band) in AGE_BANDS.iter().enumerate() {
            let people = sex_age[s * AGE_BANDS.len() + b];
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
        by_triage: triage_rows,
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
