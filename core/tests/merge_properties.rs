//! Property: replicas of one encounter edited concurrently in any way the app allows, then merged
//! in any order, end identical (same heads, same record, same conflicts), and the merged document
//! always reads back as a typed record: concurrent edits never produce a document the schema
//! cannot load.

use std::collections::BTreeSet;

use auxilio_core::document::EncounterDocument;
use auxilio_core::edit::{FieldEdit, apply_edits};
use auxilio_core::id::new_actor_id;
use auxilio_core::validation::validate;
use auxilio_core::{DeviceId, Encounter, EncounterId, SCHEMA_VERSION};
use proptest::prelude::*;

const REPLICAS: usize = 3;

fn edit_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..6u32).prop_map(|n| format!("counts.m.18-59={n}")),
        (0..6u32).prop_map(|n| format!("counts.f.0-4={n}")),
        prop::sample::select(vec!["first_aid", "orientation", "transfer_shelter"])
            .prop_map(|s| format!("services+={s}")),
        prop::sample::select(vec!["first_aid", "orientation"])
            .prop_map(|s| format!("services-={s}")),
        prop::sample::select(vec!["open", "closed"]).prop_map(|s| format!("status={s}")),
        "[a-z]{0,6}".prop_map(|s| format!("notes={s}")),
        prop::sample::select(vec!["p1", "p2", "p3"])
            .prop_map(|r| format!(r#"casualties.{r}={{"sex":"f"}}"#)),
        prop::sample::select(vec!["p1", "p2"]).prop_map(|r| format!(
            "casualties.{r}.triage={{\"method\":\"start\",\"category\":\"red\"}}"
        )),
        (60..120u32).prop_map(|p| format!(
            r#"referrals+={{"to":"hospital","status":"made","organisation":"h{p}"}}"#
        )),
        (-30..30i32).prop_map(|lat| format!(r#"location={{"lat":{lat},"lon":-100}}"#)),
        Just("location=null".to_string()),
        prop::sample::select(vec!["desert", "river"]).prop_map(|t| format!("terrain={t}")),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Edit { replica: usize, edit: String },
    Merge { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..REPLICAS, edit_text()).prop_map(|(replica, edit)| Step::Edit { replica, edit }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Merge { from, to }),
    ]
}

fn base() -> Encounter {
    let mut encounter: Encounter =
        serde_json::from_str(r#"{"services":["rescue"],"counts":{"m":{"18-59":2}}}"#).unwrap();
    encounter.schema_version = SCHEMA_VERSION;
    encounter
}

fn merge(replicas: &mut [EncounterDocument], from: usize, to: usize) {
    if from != to {
        let changes = replicas[from].changes();
        replicas[to].apply_changes(changes).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_edits_merge_to_one_readable_state(steps in prop::collection::vec(step(), 1..30), order in Just(()).prop_perturb(|_, mut rng| {
        let mut pairs: Vec<(usize, usize)> = (0..REPLICAS).flat_map(|a| (0..REPLICAS).map(move |b| (a, b))).collect();
        for i in (1..pairs.len()).rev() {
            pairs.swap(i, (rng.next_u32() as usize) % (i + 1));
        }
        pairs
    })) {
        let (mut first, _) = EncounterDocument::create(new_actor_id(DeviceId::random()), EncounterId::random(), &base(), 1).unwrap();
        let saved = first.save();
        let mut replicas = vec![first];
        for _ in 1..REPLICAS {
            replicas.push(EncounterDocument::load(&saved, Some(new_actor_id(DeviceId::random()))).unwrap());
        }
        for step in steps {
            match step {
                Step::Edit { replica, edit } => {
                    let edit: FieldEdit = edit.parse().unwrap();
                    let current = replicas[replica].encounter().unwrap();
                    // Only edits the app would accept are made, as on a phone.
                    if let Ok((edited, settled)) = apply_edits(&current, &[edit])
                        && validate(&edited).is_ok() {
                            replicas[replica].update(&edited, &settled, 2).unwrap();
                        }
                }
                Step::Merge { from, to } => merge(&mut replicas, from, to),
            }
        }
        // Everyone exchanges with everyone, in a random order, twice over.
        for _ in 0..2 {
            for &(from, to) in &order {
                merge(&mut replicas, from, to);
            }
        }
        let heads: BTreeSet<_> = replicas.iter_mut().map(|r| r.heads()).collect();
        prop_assert_eq!(heads.len(), 1, "all replicas hold the same changes");
        let reference = replicas[0].encounter().expect("a merged document always reads back");
        for replica in &replicas {
            prop_assert_eq!(&replica.encounter().unwrap(), &reference);
            prop_assert_eq!(replica.conflicts(), replicas[0].conflicts());
        }
    }
}
