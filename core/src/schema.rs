//! The encounter record: typed Rust structs, serialised as the JSON that users write and read.
//!
//! This is the one place the record's shape is defined. The same serde form is what `device log`
//! accepts, what the server's `GET /v1/encounters/{id}` returns, and (through [`crate::document`])
//! what is stored in the Automerge document. Minimisation is built into the shape: an encounter
//! is a set of group counts; an individual sub-record ([`Casualty`]) exists only for a rescue,
//! first aid, a transfer or an unaccompanied or separated child (checked in
//! [`crate::validation`]). There is deliberately no field for migration status, photos or
//! biometrics.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The schema version this build writes and fully understands.
///
/// Every document carries `schema_version`; a server meeting a higher one refuses those changes
/// (the device keeps them) instead of merging what it cannot check.
pub const SCHEMA_VERSION: u64 = 1;

/// The most characters allowed in `notes`: the brief asks for short notes, and long free text is
/// where identifying details creep in.
pub const NOTES_MAX_CHARS: usize = 2000;

/// One encounter with a group of people: the root of an encounter document.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encounter {
    /// Filled in by the store; documents from a newer schema are refused, not guessed at.
    #[serde(default)]
    pub schema_version: u64,
    /// The team that owns the encounter; filled in from the device's enrolment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
    /// Pseudonymous staff id of the agent who logged it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent: String,
    /// Device clock, RFC 3339 with its offset. The server records its own `received_at` too,
    /// because a device clock can be anywhere (1970 after a flat battery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// First- and second-level administrative area codes (state, municipality).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adm1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adm2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terrain: Option<Terrain>,
    #[serde(default, with = "set")]
    pub hazards: BTreeSet<Hazard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    #[serde(default, with = "set")]
    pub services: BTreeSet<Service>,
    #[serde(default)]
    pub counts: Counts,
    /// ISO 3166-1 alpha-3 code → number of people.
    #[serde(default)]
    pub nationality_counts: BTreeMap<String, u32>,
    #[serde(default)]
    pub items: Items,
    #[serde(default)]
    pub status: Status,
    /// Collaborative text: concurrent edits on two phones interleave instead of one winning.
    /// Always present (empty by default), so the text exists from the first change and two
    /// phones writing the first note at once still interleave.
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub referrals: Vec<Referral>,
    /// Sensitive, restricted like health data.
    #[serde(default, with = "set")]
    pub trafficking_indicators: BTreeSet<TraffickingIndicator>,
    /// Individual sub-records keyed by their random `person_ref`, so two agents adding casualties
    /// to the same encounter at once keep both. `device log` also accepts a list and makes the refs.
    #[serde(default, deserialize_with = "casualties::deserialize")]
    pub casualties: BTreeMap<String, Casualty>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    #[serde(default)]
    pub source: LocationSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocationSource {
    #[default]
    Gps,
    Manual,
    None,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }
    };
}

string_enum!(Terrain {
    Desert,
    River,
    Mountain,
    Jungle,
    Railway,
    Highway,
    Urban,
    Other
});
string_enum!(Hazard {
    Heat,
    Cold,
    Drowning,
    Train,
    Traffic,
    Violence,
    AbandonedBySmuggler,
    Lost
});
string_enum!(Trigger {
    Patrol,
    EmergencyCall,
    PanicBeacon,
    NgoReferral,
    WalkIn
});
string_enum!(Service {
    Orientation,
    HumanitarianAid,
    SocialAssistance,
    Rescue,
    FirstAid,
    LocatedMissing,
    LegalAdvice,
    TransferHospital,
    TransferShelter,
    RepatriationSupport,
    BodyRecovery,
});
string_enum!(TraffickingIndicator {
    Deception,
    DebtBondage,
    DocumentsConfiscated,
    RestrictedMovement,
    Threats,
    ForcedWork,
    Other,
});
string_enum!(Sex { F, M, Unknown });
string_enum!(TriageMethod {
    Start,
    Jumpstart,
    Salt
});
string_enum!(
    /// NEMSIS-style triage colours (eScene.08): immediate, delayed, minor, expectant, dead.
    TriageCategory { Red, Yellow, Green, Gray, Black }
);
string_enum!(Avpu {
    Alert,
    Voice,
    Pain,
    Unresponsive
});
string_enum!(Condition {
    HeatExhaustion,
    HeatStroke,
    Dehydration,
    Hypothermia,
    NearDrowning,
    TrainTrauma,
    OtherTrauma,
    FeetWounds,
    Pregnancy,
    Exhaustion,
    Other,
});
string_enum!(Disposition {
    ReleasedAfterCare,
    Refused,
    ToHospital,
    ToShelter,
    Deceased
});
string_enum!(LegalBasis {
    VitalInterest,
    Consent,
    PublicInterest
});
string_enum!(ReferralTo {
    Hospital,
    Shelter,
    ChildProtection,
    Consulate,
    AsylumOffice,
    AssistedVoluntaryReturn,
    AntiTrafficking,
    Ngo,
});
string_enum!(ReferralStatus {
    Planned,
    Made,
    Accepted,
    Declined,
    Completed
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Open,
    Closed,
}

/// Age bands used for every group count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AgeBand {
    #[serde(rename = "0-4")]
    From0To4,
    #[serde(rename = "5-11")]
    From5To11,
    #[serde(rename = "12-17")]
    From12To17,
    #[serde(rename = "18-59")]
    From18To59,
    #[serde(rename = "60+")]
    From60,
    #[serde(rename = "unknown")]
    Unknown,
}

/// People in one sex category, by age band. Every band is always present in the document (as 0)
/// so that two phones editing different bands never race to create the same map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeBandCounts {
    #[serde(rename = "0-4", default)]
    pub from_0_to_4: u32,
    #[serde(rename = "5-11", default)]
    pub from_5_to_11: u32,
    #[serde(rename = "12-17", default)]
    pub from_12_to_17: u32,
    #[serde(rename = "18-59", default)]
    pub from_18_to_59: u32,
    #[serde(rename = "60+", default)]
    pub from_60: u32,
    #[serde(rename = "unknown", default)]
    pub unknown: u32,
}

impl AgeBandCounts {
    pub fn total(&self) -> u64 {
        self.children() + u64::from(self.from_18_to_59) + u64::from(self.from_60)
    }

    /// Everyone who may be a child: the bands under 18 and the unknown band.
    pub fn children(&self) -> u64 {
        [
            self.from_0_to_4,
            self.from_5_to_11,
            self.from_12_to_17,
            self.unknown,
        ]
        .into_iter()
        .map(u64::from)
        .sum()
    }
}

/// Group counts: sex × age band, plus the groups that need particular care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    #[serde(default)]
    pub f: AgeBandCounts,
    #[serde(default)]
    pub m: AgeBandCounts,
    #[serde(default)]
    pub unknown: AgeBandCounts,
    /// Unaccompanied or separated children.
    #[serde(default)]
    pub uasc: u32,
    #[serde(default)]
    pub pregnant: u32,
    #[serde(default)]
    pub injured: u32,
    #[serde(default)]
    pub deceased: u32,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.f.total() + self.m.total() + self.unknown.total()
    }
}

/// Items handed out during the encounter.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Items {
    #[serde(default)]
    pub water_litres: f64,
    #[serde(default)]
    pub rations: u32,
    #[serde(default)]
    pub oral_rehydration_salts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Referral {
    pub to: ReferralTo,
    /// ISO 3166-1 alpha-3 code of the country whose consulate, when `to` is `consulate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consulate_country: Option<String>,
    /// Name of the facility or organisation (an institution, never a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(default = "ReferralStatus::planned")]
    pub status: ReferralStatus,
}

impl ReferralStatus {
    fn planned() -> Self {
        ReferralStatus::Planned
    }
}

/// One person who needed individual care.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Casualty {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_years: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_band: Option<AgeBand>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub age_estimated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triage: Option<Triage>,
    /// Timestamped observations; appended, never rewritten, so concurrent readings all survive.
    #[serde(default)]
    pub vitals: Vec<Vitals>,
    #[serde(default, with = "set")]
    pub conditions: BTreeSet<Condition>,
    #[serde(default, with = "set")]
    pub interventions: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<Disposition>,
    /// The receiving facility, for `to_hospital` and `to_shelter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<LegalBasis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
    /// Present for an unaccompanied or separated child: Mexican law requires notice to the
    /// child-protection authority (PPNNA) and hand-over within 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uasc: Option<UascHandover>,
    /// When the record was withdrawn (a duplicate, a mistake). Casualties are withdrawn, not
    /// deleted: deleting one would silently drop readings another phone adds to it at the same
    /// time. Erasing the data itself is a purge, with its own rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triage {
    pub method: TriageMethod,
    pub category: TriageCategory,
}

/// One set of vital signs, with LOINC codes where they exist.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vitals {
    pub at: String,
    /// Breaths per minute (LOINC 9279-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_rate: Option<u32>,
    /// Beats per minute (LOINC 8867-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulse: Option<u32>,
    /// Percent (LOINC 59408-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spo2: Option<u32>,
    /// Degrees Celsius (LOINC 8310-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bp_systolic: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bp_diastolic: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avpu: Option<Avpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capillary_refill_over_2s: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    pub given: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// `self`, `guardian`, or `not_possible` (unconscious, under vital interest).
    pub by: ConsentBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentBy {
    #[serde(rename = "self")]
    Person,
    Guardian,
    NotPossible,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UascHandover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppnna_notified_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dif_unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_at: Option<String>,
}

/// Sets are written as JSON lists by people and stored as maps of `true` in the document, so
/// concurrent additions on two phones are a union, not two list inserts that duplicate. Reading
/// accepts both forms.
pub mod set {
    use std::collections::BTreeSet;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        set: &BTreeSet<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(set)
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<BTreeSet<T>, D::Error>
    where
        T: DeserializeOwned + Ord,
        D: Deserializer<'de>,
    {
        struct SetVisitor<T>(PhantomData<T>);

        impl<'de, T: DeserializeOwned + Ord> Visitor<'de> for SetVisitor<T> {
            type Value = BTreeSet<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of values")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeSet::new();
                while let Some(item) = seq.next_element()? {
                    out.insert(item);
                }
                Ok(out)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeSet::new();
                while let Some((key, present)) = map.next_entry::<String, bool>()? {
                    if present {
                        let item =
                            T::deserialize(de::value::StringDeserializer::<A::Error>::new(key))?;
                        out.insert(item);
                    }
                }
                Ok(out)
            }
        }

        deserializer.deserialize_any(SetVisitor(PhantomData))
    }
}

/// Casualties arrive as a map keyed by `person_ref` (the document's form) or, from people, as a
/// list; each list entry gets a fresh random ref.
mod casualties {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{MapAccess, SeqAccess, Visitor};

    use super::Casualty;

    struct CasualtiesVisitor;

    // A visitor rather than an untagged enum, so an error inside a casualty names its field
    // (`casualties.c1.triage.method`) instead of "did not match any variant".
    impl<'de> Visitor<'de> for CasualtiesVisitor {
        type Value = BTreeMap<String, Casualty>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("casualties keyed by person_ref, or a list of casualties")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, casualty)) = map.next_entry::<String, Casualty>()? {
                out.insert(key, casualty);
            }
            Ok(out)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(casualty) = seq.next_element::<Casualty>()? {
                out.insert(super::new_person_ref(), casualty);
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Casualty>, D::Error> {
        deserializer.deserialize_any(CasualtiesVisitor)
    }
}

/// A fresh random reference for a casualty: links readings about one person without naming them.
pub fn new_person_ref() -> String {
    let bytes: [u8; 8] = crate::id::random_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses() {
        let json = r#"{"services":["rescue","first_aid"],"location":{"lat":31.69,"lon":-106.42,"accuracy_m":15},"terrain":"desert","counts":{"f":{"18-59":1},"m":{"18-59":2}},"nationality_counts":{"HND":3},"status":"open"}"#;
        let encounter: Encounter = serde_json::from_str(json).unwrap();
        assert!(encounter.services.contains(&Service::FirstAid));
        assert_eq!(encounter.counts.total(), 3);
        assert_eq!(encounter.location.unwrap().source, LocationSource::Gps);
    }

    #[test]
    fn sets_read_from_list_or_map_of_true() {
        let from_map: Encounter =
            serde_json::from_str(r#"{"services":{"rescue":true,"orientation":false}}"#).unwrap();
        assert_eq!(from_map.services, BTreeSet::from([Service::Rescue]));
    }

    #[test]
    fn unknown_fields_are_refused_so_typos_surface() {
        let err = serde_json::from_str::<Encounter>(r#"{"servises":["rescue"]}"#).unwrap_err();
        assert!(err.to_string().contains("servises"), "{err}");
    }

    #[test]
    fn an_error_inside_a_casualty_names_its_field() {
        let json = r#"{"casualties":{"c1":{"triage":{"method":"START","category":"red"}}}}"#;
        let err = serde_path_to_error::deserialize::<_, Encounter>(
            &mut serde_json::Deserializer::from_str(json),
        )
        .unwrap_err();
        assert_eq!(err.path().to_string(), "casualties.c1.triage.method");
    }

    #[test]
    fn casualties_given_as_a_list_get_random_refs() {
        let encounter: Encounter =
            serde_json::from_str(r#"{"casualties":[{"sex":"f"},{"sex":"m"}]}"#).unwrap();
        assert_eq!(encounter.casualties.len(), 2);
        assert!(encounter.casualties.keys().all(|k| k.len() == 16));
    }
}
