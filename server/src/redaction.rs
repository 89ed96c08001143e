//! What a role without health access is shown of a record: one allow-list,
//! [`RECORD_WITHOUT_HEALTH`], that every value such a role receives goes through: the record
//! itself, each value of each conflict (by the rule at the conflict's path) and each flagged
//! problem (by its field). Whatever the list does not name is withheld, and so is anything of
//! another shape than the list expects: it fails closed.
//!
//! Health detail is what a casualty sub-record holds beyond its triage, sex, age band,
//! disposition and UASC hand-over; trafficking indicators are restricted like it, and the
//! free-text notes are withheld too (agents write what they saw of a person there). Which roles
//! read health detail is [`crate::access`]'s table.

/// What a role without [`ReadHealth`](crate::access::Permission::ReadHealth) is shown of a value
/// at one place in a record; anything of another shape than the rule expects (a list where a map
/// of casualties belongs, an object where a plain value belongs) is withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Everything below: group counts, places, codes.
    All,
    /// A plain value (text, number, true or false, null); anything else there is withheld.
    Plain,
    /// An object of which only the named members are shown, each by its own rule.
    Members(&'static [(&'static str, Shown)]),
    /// An object keyed by any key (casualties by `person_ref`), every member by the same rule.
    EachMember(&'static Shown),
    /// Nothing.
    Withheld,
}

/// A casualty without health detail: enough to count, triage and follow a hand-over; nothing
/// clinical (vitals, conditions, interventions, facility, consent, legal basis) and no exact age.
const CASUALTY: Shown = Shown::Members(&[
    ("sex", Shown::Plain),
    ("age_band", Shown::Plain),
    (
        "triage",
        Shown::Members(&[("method", Shown::Plain), ("category", Shown::Plain)]),
    ),
    ("disposition", Shown::Plain),
    (
        "uasc",
        Shown::Members(&[
            ("ppnna_notified_at", Shown::Plain),
            ("dif_unit", Shown::Plain),
            ("handed_over_at", Shown::Plain),
        ]),
    ),
    ("withdrawn_at", Shown::Plain),
]);

/// The record without health detail. Left out: `trafficking_indicators` (restricted like health
/// data), `notes` (free text, where agents write what they saw of a person's health: a
/// collaborative text that any phone of the team adds to, so no one can vouch that it holds
/// none), and any field this list does not know (a newer app's).
pub const RECORD_WITHOUT_HEALTH: Shown = Shown::Members(&[
    ("schema_version", Shown::All),
    ("team", Shown::All),
    ("agent", Shown::All),
    ("started_at", Shown::All),
    ("ended_at", Shown::All),
    ("location", Shown::All),
    ("adm1", Shown::All),
    ("adm2", Shown::All),
    ("terrain", Shown::All),
    ("hazards", Shown::All),
    ("trigger", Shown::All),
    ("services", Shown::All),
    ("counts", Shown::All),
    ("nationality_counts", Shown::All),
    ("items", Shown::All),
    ("status", Shown::All),
    ("referrals", Shown::All),
    ("casualties", Shown::EachMember(&CASUALTY)),
]);

/// What a problem whose text might carry a withheld value says instead.
pub const WITHHELD_PROBLEM: &str = "withheld: this problem concerns detail this role does not read (the team's own devices see it)";

impl Shown {
    /// The rule for the value at a dotted `path` below a value this rule applies to (`""` is the
    /// value itself). A path into a plain value, or into what is withheld, is withheld.
    pub fn at(self, path: &str) -> Shown {
        if path.is_empty() {
            return self;
        }
        let mut rule = self;
        for segment in path.split('.') {
            rule = match rule {
                Shown::All => return Shown::All,
                Shown::Members(members) => member(members, segment),
                Shown::EachMember(each) => *each,
                Shown::Plain | Shown::Withheld => return Shown::Withheld,
            };
        }
        rule
    }

    /// Applies the rule to `value` in place, adding to `withheld` one for every value left out
    /// that held something. Returns false when the whole value is withheld: the caller removes
    /// it.
    pub fn apply(self, value: &mut serde_json::Value, withheld: &mut usize) -> bool {
        let kept = match (self, &mut *value) {
            (Shown::All, _) => return true,
            (Shown::Plain, v) => !(v.is_object() || v.is_array()),
            (Shown::Members(members), serde_json::Value::Object(fields)) => {
                fields.retain(|key, item| member(members, key).apply(item, withheld));
                return true;
            }
            (Shown::EachMember(each), serde_json::Value::Object(fields)) => {
                fields.retain(|_, item| each.apply(item, withheld));
                return true;
            }
            _ => false,
        };
        if !kept {
            *withheld += usize::from(holds_something(value));
        }
        kept
    }
}

fn member(members: &[(&str, Shown)], key: &str) -> Shown {
    members
        .iter()
        .find(|(name, _)| *name == key)
        .map_or(Shown::Withheld, |(_, rule)| *rule)
}

/// Whether a withheld value is worth counting: an empty default (`""`, `[]`, `{}`, null) is not.
fn holds_something(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => false,
        serde_json::Value::String(text) => !text.is_empty(),
        serde_json::Value::Array(items) => !items.is_empty(),
        serde_json::Value::Object(fields) => !fields.is_empty(),
        _ => true,
    }
}

/// Removes health detail from an encounter's JSON and from its conflicts, for a role without
/// health access, through [`RECORD_WITHOUT_HEALTH`]. Each conflict's values are redacted by the
/// rule at the conflict's path (a conflict at `casualties.c1` holds casualties); a conflict at a
/// withheld path is left out. Returns how many values were left out, so the answer can say so.
pub fn redact_health(
    encounter: &mut serde_json::Value,
    conflicts: &mut Vec<auxilio_core::document::Conflict>,
) -> usize {
    let mut withheld = 0;
    if !RECORD_WITHOUT_HEALTH.apply(encounter, &mut withheld) {
        *encounter = serde_json::Value::Object(serde_json::Map::new());
    }
    conflicts.retain_mut(|conflict| {
        let rule = RECORD_WITHOUT_HEALTH.at(&conflict.path);
        if rule == Shown::Withheld {
            withheld += conflict.values.len();
            return false;
        }
        for conflicting in &mut conflict.values {
            if !rule.apply(&mut conflicting.value, &mut withheld) {
                conflicting.value = serde_json::Value::Null;
            }
        }
        true
    });
    withheld
}

/// Redacts flagged problems for a role without health access: a problem at a withheld field is
/// named by the nearest field shown and its text replaced; a problem at a field that holds
/// structure (the record, a casualty) keeps its field but not its text, which may quote a value
/// of the wrong shape. Problems at plain shown fields are kept as they are (their value is shown
/// anyway). Returns how many were changed.
pub fn redact_problems(problems: &mut [crate::index::Problem]) -> usize {
    let mut withheld = 0;
    for problem in problems {
        match RECORD_WITHOUT_HEALTH.at(&problem.field) {
            Shown::All | Shown::Plain => continue,
            Shown::Members(_) | Shown::EachMember(_) => {}
            Shown::Withheld => problem.field = nearest_shown(&problem.field),
        }
        problem.message = WITHHELD_PROBLEM.to_string();
        withheld += 1;
    }
    withheld
}

/// The longest prefix of a dotted path that is shown.
fn nearest_shown(path: &str) -> String {
    let mut shown = String::new();
    let mut prefix = String::new();
    for segment in path.split('.') {
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(segment);
        if RECORD_WITHOUT_HEALTH.at(&prefix) == Shown::Withheld {
            break;
        }
        shown.clone_from(&prefix);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(path: &str, values: Vec<serde_json::Value>) -> auxilio_core::document::Conflict {
        auxilio_core::document::Conflict {
            path: path.into(),
            // From JSON, as a conflict is served, so the test does not depend on every field.
            values: values
                .into_iter()
                .map(|value| serde_json::from_value(serde_json::json!({ "value": value })).unwrap())
                .collect(),
        }
    }

    #[test]
    fn health_detail_is_removed_from_the_record_and_its_conflicts() {
        let mut encounter = serde_json::json!({
            "team": "sonora",
            "notes": "",
            "trafficking_indicators": ["debt_bondage"],
            "casualties": { "p1": {
                "sex": "f", "age_years": 15, "age_band": "12-17",
                "triage": {"method": "start", "category": "red"},
                "vitals": [{"at": "2026-01-01T00:00:00Z", "pulse": 130}],
                "conditions": ["heat_stroke"], "interventions": [],
                "uasc": {"dif_unit": "Hermosillo"}
            }}
        });
        let mut conflicts = vec![
            conflict("casualties.p1.vitals", vec![1.into(), 2.into()]),
            conflict(
                "casualties.p1.triage.category",
                vec!["red".into(), "yellow".into()],
            ),
            conflict("status", vec!["open".into(), "closed".into()]),
        ];
        let removed = redact_health(&mut encounter, &mut conflicts);
        // trafficking, age_years, vitals, conditions, and the two conflicting vitals; the empty
        // notes and interventions are left out but not counted.
        assert_eq!(removed, 6);
        let casualty = &encounter["casualties"]["p1"];
        assert!(casualty.get("vitals").is_none() && casualty.get("conditions").is_none());
        assert!(casualty.get("age_years").is_none());
        assert_eq!(casualty["triage"]["category"], "red");
        assert_eq!(casualty["uasc"]["dif_unit"], "Hermosillo");
        assert!(encounter.get("trafficking_indicators").is_none());
        assert!(encounter.get("notes").is_none());
        let paths: Vec<&str> = conflicts.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["casualties.p1.triage.category", "status"]);
    }

    #[test]
    fn a_conflict_over_a_whole_casualty_or_all_casualties_is_redacted_value_by_value() {
        let casualty = |pulse: u32| {
            serde_json::json!({"sex": "m", "age_years": 40, "triage": {"method": "start", "category": "red"},
                "vitals": [{"pulse": pulse}], "facility": "Hospital General"})
        };
        let mut encounter = serde_json::json!({});
        let mut conflicts = vec![
            conflict("casualties.c1", vec![casualty(140), casualty(150)]),
            conflict(
                "casualties",
                vec![
                    serde_json::json!({"c2": casualty(160)}),
                    serde_json::json!([casualty(170)]),
                ],
            ),
        ];
        let removed = redact_health(&mut encounter, &mut conflicts);
        let shown = serde_json::to_string(&conflicts).unwrap();
        for secret in [
            "140",
            "150",
            "160",
            "170",
            "Hospital",
            "age_years",
            "vitals",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(conflicts[0].values[0].value["triage"]["category"], "red");
        assert_eq!(conflicts[1].values[0].value["c2"]["sex"], "m");
        assert!(
            conflicts[1].values[1].value.is_null(),
            "a list of casualties: nothing"
        );
        assert_eq!(removed, 3 + 3 + 3 + 1);
    }

    #[test]
    fn casualties_of_an_unexpected_shape_are_withheld_whole() {
        for casualties in [
            serde_json::json!([{"sex": "m", "vitals": [{"pulse": 333}]}]),
            serde_json::json!({"c1": [{"pulse": 333}]}),
            serde_json::json!({"c1": {"sex": {"pulse": 333}}}),
            serde_json::json!("pulse 333"),
        ] {
            let mut encounter = serde_json::json!({"casualties": casualties, "status": "open"});
            let removed = redact_health(&mut encounter, &mut Vec::new());
            assert!(!encounter.to_string().contains("333"), "{encounter}");
            assert_eq!(encounter["status"], "open");
            assert_eq!(removed, 1, "{encounter}");
        }
    }

    #[test]
    fn problems_about_withheld_fields_keep_no_value_and_name_the_nearest_shown_field() {
        use crate::index::Problem;
        let problem = |field: &str, message: &str| Problem {
            field: field.into(),
            message: message.into(),
        };
        let mut problems = vec![
            problem(
                "casualties.c1.vitals.0.pulse",
                "333 is outside the plausible range 0..=300",
            ),
            problem("casualties", "invalid type: string \"pulse 333\""),
            problem("", "casualties.c1.vitals: invalid type: string \"333\""),
            problem("counts.injured", "9 is more than the 2 people counted"),
            problem("casualties.c1.triage.category", "unknown variant `blue`"),
        ];
        assert_eq!(redact_problems(&mut problems), 3);
        assert!(!format!("{problems:?}").contains("333"), "{problems:?}");
        assert_eq!(problems[0].field, "casualties.c1");
        assert_eq!(problems[0].message, WITHHELD_PROBLEM);
        assert_eq!(problems[1].field, "casualties");
        assert_eq!(problems[3].message, "9 is more than the 2 people counted");
        assert_eq!(problems[4].message, "unknown variant `blue`");
    }

    #[test]
    fn the_map_stats_and_exports_read_only_fields_shown_without_health() {
        // Every field `index::facts` reads for the map, stats, hotspots, exports and events: a
        // coordinator receives them there without going through a record read, so each must be
        // one the allow-list shows.
        for path in [
            "team",
            "started_at",
            "status",
            "services",
            "terrain",
            "adm1",
            "location.lat",
            "location.lon",
            "counts.f.0-4",
            "counts.injured",
            "counts.uasc",
            "counts.deceased",
            "nationality_counts.HND",
            "casualties.c1.triage.category",
            "casualties.c1.withdrawn_at",
        ] {
            assert_ne!(RECORD_WITHOUT_HEALTH.at(path), Shown::Withheld, "{path}");
        }
        for path in [
            "notes",
            "trafficking_indicators",
            "casualties.c1.vitals.0.pulse",
            "casualties.c1.age_years",
            "casualties.c1.facility",
            "casualties.c1.sex.pulse",
            "a_newer_apps_field",
        ] {
            assert_eq!(RECORD_WITHOUT_HEALTH.at(path), Shown::Withheld, "{path}");
        }
    }
}
