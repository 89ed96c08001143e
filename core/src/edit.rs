//! Field edits by dotted path, as the `device edit --set PATH=VALUE` command takes them.
//!
//! An edit is applied to the record's JSON form, then the result is read back into the typed
//! record, so a wrong path or a wrong type fails with the field named and nothing is written.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde_json::Value as Json;

use crate::schema::Encounter;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error(
        "`{0}` is not an edit: write PATH=VALUE, PATH+=VALUE (add to a set or list) or PATH-=VALUE (remove from a set or list)"
    )]
    Syntax(String),
    #[error("`{path}`: {message}")]
    Path { path: String, message: String },
    #[error("after the edits, `{path}` is invalid: {message}")]
    Type { path: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditOp {
    Set,
    Add,
    Remove,
}

/// One edit: `counts.m.18-59=3`, `services+=first_aid`, `hazards-=heat`, `location=null`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldEdit {
    pub path: Vec<String>,
    pub op: EditOp,
    pub value: Json,
    /// The value as typed, for fields that hold text even when it looks like a number
    /// (`adm1=26`).
    pub text: String,
}

impl FieldEdit {
    /// `PATH=VALUE`, built rather than parsed.
    pub fn set(path: Vec<String>, value: Json) -> Self {
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        Self {
            path,
            op: EditOp::Set,
            value,
            text,
        }
    }

    pub fn dotted_path(&self) -> String {
        self.path.join(".")
    }
}

impl FromStr for FieldEdit {
    type Err = EditError;

    /// The edit splits at the first `=`; a `+` or `-` just before it makes it an addition or a
    /// removal, so values may contain `=`, `+=` or `-=` (`notes=gave water += 2L`). The value is
    /// read as JSON when it parses as JSON, else taken as plain text, so `status=closed` and
    /// `counts.f.0-4=2` both work without quoting.
    fn from_str(text: &str) -> Result<Self, EditError> {
        let (path, raw) = text
            .split_once('=')
            .ok_or_else(|| EditError::Syntax(text.to_string()))?;
        let (path, op) = if let Some(path) = path.strip_suffix('+') {
            (path, EditOp::Add)
        } else if let Some(path) = path.strip_suffix('-') {
            (path, EditOp::Remove)
        } else {
            (path, EditOp::Set)
        };
        let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(EditError::Syntax(text.to_string()));
        }
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Json::String(raw.to_string()));
        Ok(Self {
            path,
            op,
            value,
            text: raw.to_string(),
        })
    }
}

/// Applies `edits` in order to a record's JSON form (as the typed record serialises, or as the
/// document holds it); returns the edited record and the dotted paths set on purpose (these
/// settle any conflict there).
pub fn apply_edits_to_json(
    json: Json,
    edits: &[FieldEdit],
) -> Result<(Encounter, BTreeSet<String>), EditError> {
    let settled = edits.iter().map(FieldEdit::dotted_path).collect();
    // Edits whose value looked like a number or boolean but whose field holds text (`adm1=26`):
    // found one at a time from the errors, then given the text as typed.
    let mut as_text: BTreeSet<usize> = BTreeSet::new();
    loop {
        let mut edited = json.clone();
        for (index, edit) in edits.iter().enumerate() {
            let value = if as_text.contains(&index) {
                Json::String(edit.text.clone())
            } else {
                edit.value.clone()
            };
            apply_one(&mut edited, edit, &value)?;
        }
        let err = match serde_path_to_error::deserialize::<_, Encounter>(edited) {
            Ok(record) => return Ok((record, settled)),
            Err(err) => err,
        };
        let path = err.path().to_string();
        let retry = edits.iter().enumerate().position(|(index, e)| {
            e.dotted_path() == path
                && !as_text.contains(&index)
                && (e.value.is_number() || e.value.is_boolean())
        });
        match retry {
            Some(index) => {
                as_text.insert(index);
            }
            None => {
                return Err(EditError::Type {
                    path,
                    message: err.into_inner().to_string(),
                });
            }
        }
    }
}

/// The edits that turn `base` into `edited`, field by field (leaves and whole lists and texts),
/// so that they can be made again on top of another version of the record.
pub fn edits_between(base: &Json, edited: &Json) -> Vec<FieldEdit> {
    fn walk(base: &Json, edited: &Json, path: &mut Vec<String>, out: &mut Vec<FieldEdit>) {
        match (base, edited) {
            (Json::Object(old), Json::Object(new)) => {
                for (key, value) in new {
                    path.push(key.clone());
                    walk(old.get(key).unwrap_or(&Json::Null), value, path, out);
                    path.pop();
                }
                for key in old.keys().filter(|k| !new.contains_key(*k)) {
                    path.push(key.clone());
                    out.push(FieldEdit::set(path.clone(), Json::Null));
                    path.pop();
                }
            }
            (old, new) if old == new => {}
            (_, new) => out.push(FieldEdit::set(path.clone(), new.clone())),
        }
    }
    let mut out = Vec::new();
    walk(base, edited, &mut Vec::new(), &mut out);
    out
}

/// [`apply_edits_to_json`] on a typed record.
pub fn apply_edits(
    encounter: &Encounter,
    edits: &[FieldEdit],
) -> Result<(Encounter, BTreeSet<String>), EditError> {
    apply_edits_to_json(
        serde_json::to_value(encounter).expect("an encounter serialises to JSON"),
        edits,
    )
}

fn apply_one(root: &mut Json, edit: &FieldEdit, value: &Json) -> Result<(), EditError> {
    let path_error = |message: String| EditError::Path {
        path: edit.dotted_path(),
        message,
    };
    let (last, parents) = edit.path.split_last().expect("paths are never empty");
    let mut node = root;
    let mut walked: Vec<&str> = Vec::new();
    for key in parents {
        walked.push(key);
        node = match node {
            // Only existing objects are walked into: a typo (`casualties.ghost.vitals+=…`) must
            // not create a new record. A missing part is set whole.
            Json::Object(map) => map
                .get_mut(key.as_str())
                .filter(|v| !v.is_null())
                .ok_or_else(|| {
                    path_error(format!(
                        "there is no `{}` yet; set it whole first, e.g. {}={{...}}",
                        walked.join("."),
                        walked.join(".")
                    ))
                })?,
            Json::Array(list) => {
                let index: usize = key
                    .parse()
                    .map_err(|_| path_error("a list is indexed by number".into()))?;
                list.get_mut(index).ok_or_else(|| {
                    path_error(format!(
                        "no entry {index} in `{}`",
                        walked[..walked.len() - 1].join(".")
                    ))
                })?
            }
            _ => return Err(path_error("goes inside a plain value".into())),
        };
    }
    match node {
        Json::Object(map) => {
            // `counts.f.60+=2` is the 60+ band set to 2, not an addition to `counts.f.60`.
            let plus_key = format!("{last}+");
            let (key, op) =
                if edit.op == EditOp::Add && !map.contains_key(last) && map.contains_key(&plus_key)
                {
                    (plus_key, EditOp::Set)
                } else {
                    (last.clone(), edit.op)
                };
            if op == EditOp::Set && value.is_null() {
                // A casualty is withdrawn rather than deleted (see `Casualty::withdrawn_at`).
                if parents.len() == 1 && parents[0] == "casualties" {
                    let casualty = map
                        .get_mut(&key)
                        .and_then(Json::as_object_mut)
                        .ok_or_else(|| path_error("no such casualty".into()))?;
                    let now =
                        chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
                    casualty.insert("withdrawn_at".into(), Json::String(now));
                    return Ok(());
                }
                map.remove(&key);
                return Ok(());
            }
            let slot = map.entry(key).or_insert(Json::Null);
            apply_op(slot, op, value).map_err(path_error)
        }
        Json::Array(list) => {
            let index: usize = last
                .parse()
                .map_err(|_| path_error("a list is indexed by number".into()))?;
            if index >= list.len() {
                return Err(path_error(format!("no entry {index}")));
            }
            if edit.op == EditOp::Set && value.is_null() {
                list.remove(index);
                return Ok(());
            }
            apply_op(&mut list[index], edit.op, value).map_err(path_error)
        }
        _ => Err(path_error("goes inside a plain value".into())),
    }
}

fn apply_op(slot: &mut Json, op: EditOp, value: &Json) -> Result<(), String> {
    match (op, &mut *slot) {
        (EditOp::Set, _) => *slot = value.clone(),
        (EditOp::Add, Json::Array(list)) => {
            if !list.contains(value) {
                list.push(value.clone());
            }
        }
        // A set as the document holds it: a map of `true`.
        (EditOp::Add, Json::Object(members)) => {
            let key = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            members.insert(key, Json::Bool(true));
        }
        (EditOp::Add, Json::Null) => *slot = Json::Array(vec![value.clone()]),
        (EditOp::Remove, Json::Array(list)) => {
            let before = list.len();
            list.retain(|v| v != value);
            if list.len() == before {
                return Err(format!("holds no {value}"));
            }
        }
        (EditOp::Remove, Json::Object(members)) => {
            let key = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            if members.remove(&key).is_none() {
                return Err(format!("holds no {value}"));
            }
        }
        (EditOp::Add, _) => return Err("+= adds to a set or list".into()),
        (EditOp::Remove, _) => return Err("-= removes from a set or list".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Service, Status};

    fn edits(texts: &[&str]) -> Vec<FieldEdit> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn sets_scalars_sets_and_nested_counts() {
        let base = Encounter::default();
        let (edited, paths) = apply_edits(
            &base,
            &edits(&[
                "status=closed",
                "counts.m.18-59=3",
                "services+=rescue",
                "location={\"lat\":1,\"lon\":2}",
            ]),
        )
        .unwrap();
        assert_eq!(edited.status, Status::Closed);
        assert_eq!(edited.counts.m.from_18_to_59, 3);
        assert!(edited.services.contains(&Service::Rescue));
        assert_eq!(edited.location.unwrap().lat, 1.0);
        assert!(paths.contains("counts.m.18-59"));
    }

    #[test]
    fn wrong_types_and_paths_name_the_field() {
        let err = apply_edits(&Encounter::default(), &edits(&["counts.m.18-59=many"])).unwrap_err();
        assert!(
            matches!(&err, EditError::Type { path, .. } if path == "counts.m.18-59"),
            "{err}"
        );
        let err = apply_edits(&Encounter::default(), &edits(&["colour=red"])).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        assert!(matches!(
            "nothing".parse::<FieldEdit>(),
            Err(EditError::Syntax(_))
        ));
    }

    #[test]
    fn values_may_hold_operators_and_the_60_plus_band_is_settable() {
        let (edited, _) = apply_edits(
            &Encounter::default(),
            &edits(&["counts.f.60+=2", "notes=gave water += 2L"]),
        )
        .unwrap();
        assert_eq!(edited.counts.f.from_60, 2);
        assert_eq!(edited.notes, "gave water += 2L");
    }

    #[test]
    fn number_like_text_is_kept_as_text() {
        let (edited, _) =
            apply_edits(&Encounter::default(), &edits(&["adm1=26", "agent=4711"])).unwrap();
        assert_eq!(edited.adm1.as_deref(), Some("26"));
        assert_eq!(edited.agent, "4711");
    }

    #[test]
    fn a_typo_in_a_path_creates_nothing_and_null_removes_an_entry() {
        let (with, _) = apply_edits(
            &Encounter::default(),
            &edits(&[r#"casualties.a1={"sex":"f"}"#]),
        )
        .unwrap();
        let err = apply_edits(
            &with,
            &edits(&[r#"casualties.ghost.vitals+={"at":"2026-11-28T10:00:00Z"}"#]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("casualties.ghost"), "{err}");
        let (withdrawn, _) = apply_edits(&with, &edits(&["casualties.a1=null"])).unwrap();
        assert!(
            withdrawn.casualties["a1"].withdrawn_at.is_some(),
            "withdrawn, not deleted"
        );
        let (referred, _) = apply_edits(&with, &edits(&[r#"referrals+={"to":"ngo"}"#])).unwrap();
        let (unreferred, _) = apply_edits(&referred, &edits(&["referrals.0=null"])).unwrap();
        assert!(unreferred.referrals.is_empty());
        let (unlocated, _) = apply_edits(
            &with,
            &edits(&[r#"location={"lat":1,"lon":2}"#, "location=null"]),
        )
        .unwrap();
        assert!(unlocated.location.is_none());
        let err = apply_edits(&with, &edits(&["hazards-=heat"])).unwrap_err();
        assert!(err.to_string().contains("holds no"), "{err}");
    }

    #[test]
    fn removes_from_a_set() {
        let (with, _) = apply_edits(
            &Encounter::default(),
            &edits(&["hazards+=heat", "hazards+=lost"]),
        )
        .unwrap();
        let (without, _) = apply_edits(&with, &edits(&["hazards-=heat"])).unwrap();
        assert_eq!(without.hazards.len(), 1);
    }
}
