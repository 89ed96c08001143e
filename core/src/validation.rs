//! The rules a record must follow beyond its types, each failure naming the field it is about.
//!
//! Types (in [`crate::schema`]) already refuse unknown fields and unknown codes; this module
//! checks ranges, consistency between counts, and minimisation: an individual sub-record only
//! where the brief allows one. A device clock that looks wrong is *not* an error here: an agent
//! must always be able to log, and the server keeps its own `received_at` for such records.

use std::fmt;

use chrono::DateTime;

use crate::schema::{
    Casualty, Encounter, NOTES_MAX_CHARS, ReferralTo, SCHEMA_VERSION, Service, Vitals,
};

/// One rule broken, at one field (a dotted path such as `counts.injured`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every rule the record breaks (empty when it is valid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

/// The most characters in any text field but `notes` (a code, a name of a facility, a time).
pub const TEXT_MAX_CHARS: usize = 200;
/// The most characters in a key chosen by a device (a casualty's `person_ref`).
pub const KEY_MAX_CHARS: usize = 64;
/// The largest a whole record may be, as JSON. Far above any real encounter; it keeps one record
/// from growing a change that no server would accept in a request.
pub const RECORD_MAX_BYTES: usize = 64 * 1024;

/// The most characters in an administrative area code (`adm1`, `adm2`).
pub const AREA_CODE_MAX_CHARS: usize = 16;

/// Whether `text` is an administrative area code such as `MX-SON` (ISO 3166-2) or `26` (INEGI):
/// ASCII letters, digits, `-`, `.` and `_`, starting with a letter or digit. Exports write only
/// such codes, so a device cannot put a spreadsheet formula in a report through them.
pub fn is_area_code(text: &str) -> bool {
    text.len() <= AREA_CODE_MAX_CHARS
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// The services that allow individual sub-records (besides a UASC).
const INDIVIDUAL_RECORD_SERVICES: [Service; 4] = [
    Service::Rescue,
    Service::FirstAid,
    Service::TransferHospital,
    Service::TransferShelter,
];

struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn timestamp(
        &mut self,
        field: &str,
        value: Option<&str>,
    ) -> Option<DateTime<chrono::FixedOffset>> {
        let text = value?;
        match DateTime::parse_from_rfc3339(text) {
            Ok(parsed) => Some(parsed),
            Err(err) => {
                self.fail(
                    field,
                    format!("`{text}` is not an RFC 3339 time with offset (e.g. 2026-11-28T14:05:00-07:00): {err}"),
                );
                None
            }
        }
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        field: &str,
        value: Option<T>,
        low: T,
        high: T,
    ) {
        if let Some(v) = value
            && !(low <= v && v <= high)
        {
            self.fail(
                field,
                format!("{v} is outside the plausible range {low}..={high}"),
            );
        }
    }

    fn country_code(&mut self, field: &str, code: &str) {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            self.fail(
                field,
                format!(
                    "`{code}` is not an ISO 3166-1 alpha-3 code (three capital letters, e.g. HND)"
                ),
            );
        }
    }
}

/// Checks `encounter` against every rule; `Ok` when it may be stored as it is.
pub fn validate(encounter: &Encounter) -> Result<(), ValidationErrors> {
    let mut check = Checker { errors: Vec::new() };

    if encounter.schema_version != SCHEMA_VERSION {
        check.fail(
            "schema_version",
            format!(
                "version {} is not the supported version {SCHEMA_VERSION}",
                encounter.schema_version
            ),
        );
    }
    if encounter.started_at.is_none() {
        // `log` fills it in from the device clock; without it the record has no place in time.
        check.fail(
            "started_at",
            "is required (when the encounter began, RFC 3339 with offset)",
        );
    }
    let started = check.timestamp("started_at", encounter.started_at.as_deref());
    let ended = check.timestamp("ended_at", encounter.ended_at.as_deref());
    if let (Some(started), Some(ended)) = (started, ended)
        && ended < started
    {
        check.fail("ended_at", "ends before started_at");
    }

    if let Some(location) = &encounter.location {
        if !location.lat.is_finite() || !(-90.0..=90.0).contains(&location.lat) {
            check.fail(
                "location.lat",
                format!("{} is not a latitude in -90..=90", location.lat),
            );
        }
        if !location.lon.is_finite() || !(-180.0..=180.0).contains(&location.lon) {
            check.fail(
                "location.lon",
                format!("{} is not a longitude in -180..=180", location.lon),
            );
        }
        if let Some(accuracy) = location.accuracy_m
            && (!accuracy.is_finite() || accuracy < 0.0)
        {
            check.fail(
                "location.accuracy_m",
                format!("{accuracy} is not a distance in metres"),
            );
        }
    }

    for (field, code) in [("adm1", &encounter.adm1), ("adm2", &encounter.adm2)] {
        if let Some(code) = code
            && !is_area_code(code)
        {
            check.fail(
                field,
                format!("`{code}` is not an area code: 1 to {AREA_CODE_MAX_CHARS} letters, digits, `-`, `.` or `_`, starting with a letter or digit (e.g. MX-SON or 26)"),
            );
        }
    }

    let counts = &encounter.counts;
    let total = counts.total();
    let children = counts.f.children() + counts.m.children() + counts.unknown.children();
    for (field, value, limit, of_whom) in [
        ("counts.injured", counts.injured, total, "people counted"),
        ("counts.deceased", counts.deceased, total, "people counted"),
        (
            "counts.pregnant",
            counts.pregnant,
            counts.f.total() + counts.unknown.total(),
            "women and people of unknown sex counted",
        ),
        (
            "counts.uasc",
            counts.uasc,
            children,
            "children and people of unknown age counted",
        ),
    ] {
        if u64::from(value) > limit {
            check.fail(field, format!("{value} is more than the {limit} {of_whom}"));
        }
    }
    let by_nationality: u64 = encounter
        .nationality_counts
        .values()
        .map(|n| u64::from(*n))
        .sum();
    if by_nationality > total {
        check.fail(
            "nationality_counts",
            format!("{by_nationality} people by nationality, but only {total} counted"),
        );
    }
    for code in encounter.nationality_counts.keys() {
        check.country_code(&format!("nationality_counts.{code}"), code);
    }

    let water = encounter.items.water_litres;
    if !water.is_finite() || water < 0.0 {
        check.fail(
            "items.water_litres",
            format!("{water} is not an amount of water"),
        );
    }

    let chars = encounter.notes.chars().count();
    if chars > NOTES_MAX_CHARS {
        check.fail("notes", format!("{chars} characters; notes are kept short (at most {NOTES_MAX_CHARS}) to keep identifying detail out"));
    }

    for (index, referral) in encounter.referrals.iter().enumerate() {
        let field = format!("referrals.{index}");
        check.timestamp(&format!("{field}.at"), referral.at.as_deref());
        match (&referral.to, &referral.consulate_country) {
            (ReferralTo::Consulate, None) => check.fail(
                format!("{field}.consulate_country"),
                "a consulate referral names the country (ISO alpha-3)",
            ),
            (_, Some(code)) => check.country_code(&format!("{field}.consulate_country"), code),
            _ => {}
        }
    }

    let allows_individuals = INDIVIDUAL_RECORD_SERVICES
        .iter()
        .any(|s| encounter.services.contains(s));
    for (person_ref, casualty) in &encounter.casualties {
        let field = format!("casualties.{person_ref}");
        if !allows_individuals && casualty.uasc.is_none() && casualty.withdrawn_at.is_none() {
            check.fail(
                &field,
                "an individual record needs a rescue, first_aid or transfer service, or a UASC hand-over; otherwise record group counts only",
            );
        }
        validate_casualty(&mut check, &field, casualty);
    }

    let json = serde_json::to_value(encounter).expect("an encounter serialises to JSON");
    check_sizes(&mut check, &json, "");
    let bytes = json.to_string().len();
    if bytes > RECORD_MAX_BYTES {
        check.fail(
            "",
            format!("the record is {bytes} bytes as JSON; at most {RECORD_MAX_BYTES}"),
        );
    }

    if check.errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(check.errors))
    }
}

/// Every text value (but `notes`, which has its own limit) and every key a device chose stays
/// short: long free text is where identifying detail creeps in, and an oversized record would
/// make a change the server refuses.
fn check_sizes(check: &mut Checker, value: &serde_json::Value, path: &str) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        serde_json::Value::String(text) if path != "notes" => {
            let chars = text.chars().count();
            if chars > TEXT_MAX_CHARS {
                check.fail(
                    path,
                    format!("{chars} characters; at most {TEXT_MAX_CHARS}"),
                );
            }
        }
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check_sizes(check, item, &child(&index.to_string()));
            }
        }
        serde_json::Value::Object(fields) => {
            for (key, item) in fields {
                if key.chars().count() > KEY_MAX_CHARS {
                    check.fail(
                        path,
                        format!(
                            "a key of {} characters; at most {KEY_MAX_CHARS}",
                            key.chars().count()
                        ),
                    );
                } else {
                    check_sizes(check, item, &child(key));
                }
            }
        }
        _ => {}
    }
}

fn validate_casualty(check: &mut Checker, field: &str, casualty: &Casualty) {
    check.range(&format!("{field}.age_years"), casualty.age_years, 0, 120);
    for (index, vitals) in casualty.vitals.iter().enumerate() {
        validate_vitals(check, &format!("{field}.vitals.{index}"), vitals);
    }
    if let Some(uasc) = &casualty.uasc {
        check.timestamp(
            &format!("{field}.uasc.ppnna_notified_at"),
            uasc.ppnna_notified_at.as_deref(),
        );
        check.timestamp(
            &format!("{field}.uasc.handed_over_at"),
            uasc.handed_over_at.as_deref(),
        );
    }
    if let Some(consent) = &casualty.consent {
        check.timestamp(&format!("{field}.consent.at"), consent.at.as_deref());
    }
}

fn validate_vitals(check: &mut Checker, field: &str, vitals: &Vitals) {
    check.timestamp(&format!("{field}.at"), Some(&vitals.at));
    check.range(&format!("{field}.resp_rate"), vitals.resp_rate, 0, 80);
    check.range(&format!("{field}.pulse"), vitals.pulse, 0, 300);
    check.range(&format!("{field}.spo2"), vitals.spo2, 0, 100);
    check.range(
        &format!("{field}.temperature_c"),
        vitals.temperature_c,
        20.0,
        46.0,
    );
    check.range(&format!("{field}.bp_systolic"), vitals.bp_systolic, 0, 300);
    check.range(
        &format!("{field}.bp_diastolic"),
        vitals.bp_diastolic,
        0,
        200,
    );
    check.range(&format!("{field}.gcs"), vitals.gcs, 3, 15);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Casualty, Location, LocationSource};

    fn valid() -> Encounter {
        serde_json::from_str(r#"{"schema_version":1,"services":["rescue"],"counts":{"m":{"18-59":2}},"started_at":"2026-11-28T10:00:00-07:00"}"#).unwrap()
    }

    #[test]
    fn an_area_code_that_could_carry_a_spreadsheet_formula_is_flagged() {
        for code in ["MX-SON", "26", "26030", "mx.son_1"] {
            assert!(is_area_code(code), "{code}");
        }
        for code in [
            "=SUM(1,2)",
            "-26",
            "\tMX",
            "MX SON",
            "\u{ff1d}1",
            "",
            "MX-SONORA-1234567",
        ] {
            assert!(!is_area_code(code), "{code:?}");
        }
        let mut record = valid();
        record.adm1 = Some("@SUM(1,2)".into());
        record.adm2 = Some("26030".into());
        let errors = validate(&record).unwrap_err().0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["adm1"]);
    }

    fn fields(encounter: &Encounter) -> Vec<String> {
        validate(encounter)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_plain_record_is_valid() {
        validate(&valid()).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut e = valid();
        e.counts.injured = 5;
        e.location = Some(Location {
            lat: 95.0,
            lon: 0.0,
            accuracy_m: Some(-1.0),
            source: LocationSource::Gps,
        });
        e.started_at = Some("yesterday".into());
        assert_eq!(
            fields(&e),
            [
                "started_at",
                "location.lat",
                "location.accuracy_m",
                "counts.injured"
            ]
        );
    }

    #[test]
    fn a_device_clock_in_1970_is_not_an_error() {
        let mut e = valid();
        e.started_at = Some("1970-01-01T00:00:12+00:00".into());
        validate(&e).unwrap();
    }

    #[test]
    fn individual_records_only_where_minimisation_allows() {
        let mut e = valid();
        e.services.clear();
        e.casualties.insert("abc".into(), Casualty::default());
        assert_eq!(fields(&e), ["casualties.abc"]);
        e.casualties.get_mut("abc").unwrap().uasc = Some(Default::default());
        validate(&e).unwrap();
    }

    #[test]
    fn long_text_and_oversized_records_are_refused_by_field() {
        let mut e = valid();
        e.agent = "a".repeat(TEXT_MAX_CHARS + 1);
        let mut casualty = Casualty::default();
        casualty
            .interventions
            .insert("x".repeat(TEXT_MAX_CHARS + 5));
        e.casualties.insert("c1".into(), casualty);
        assert_eq!(fields(&e), ["agent", "casualties.c1.interventions.0"]);
    }

    #[test]
    fn unknown_schema_version_is_named() {
        let mut e = valid();
        e.schema_version = 99;
        assert_eq!(fields(&e), ["schema_version"]);
    }

    #[test]
    fn nationality_codes_must_be_alpha3() {
        let mut e = valid();
        e.nationality_counts.insert("Honduras".into(), 1);
        assert_eq!(fields(&e), ["nationality_counts.Honduras"]);
    }
}
