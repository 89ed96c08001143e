//! Field edits by dotted path, as the `device edit --set PATH=VALUE` command takes them.
//!
//! An edit is applied to the record's JSON form, then the result is read back into the typed
//! record, so a wrong path or a wrong type fails with the field named and nothing is written.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde_json::{Map, Value as Json};

use crate::schema::Encounter;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error(
        "`{0}` is not an edit: write PATH=VALUE, PATH+=VALUE (add to a set or list) or PATH-=VALUE (remove from a set)"
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
}

impl FieldEdit {
    pub fn dotted_path(&self) -> String {
        self.path.join(".")
    }
}

impl FromStr for FieldEdit {
    type Err = EditError;

    /// The value is read as JSON when it parses as JSON, else taken as a plain string, so
    /// `status=closed` and `counts.f.0-4=2` both work without quoting.
    fn from_str(text: &str) -> Result<Self, EditError> {
        let (path, op, raw) = if let Some((p, v)) = text.split_once("+=") {
            (p, EditOp::Add, v)
        } else if let Some((p, v)) = text.split_once("-=") {
            (p, EditOp::Remove, v)
        } else if let Some((p, v)) = text.split_once('=') {
            (p, EditOp::Set, v)
        } else {
            return Err(EditError::Syntax(text.to_string()));
        };
        let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(EditError::Syntax(text.to_string()));
        }
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Json::String(raw.to_string()));
        Ok(Self { path, op, value })
    }
}

/// Applies `edits` in order to `encounter`; returns the edited record and the dotted paths set on
/// purpose (these settle any conflict there).
pub fn apply_edits(
    encounter: &Encounter,
    edits: &[FieldEdit],
) -> Result<(Encounter, BTreeSet<String>), EditError> {
    let mut json = serde_json::to_value(encounter).expect("an encounter serialises to JSON");
    for edit in edits {
        apply_one(&mut json, edit)?;
    }
    let edited: Encounter =
        serde_path_to_error::deserialize(json).map_err(|err| EditError::Type {
            path: err.path().to_string(),
            message: err.inner().to_string(),
        })?;
    Ok((edited, edits.iter().map(FieldEdit::dotted_path).collect()))
}

fn apply_one(root: &mut Json, edit: &FieldEdit) -> Result<(), EditError> {
    let path_error = |message: &str| EditError::Path {
        path: edit.dotted_path(),
        message: message.to_string(),
    };
    let (last, parents) = edit.path.split_last().expect("paths are never empty");
    let mut node = root;
    for key in parents {
        node = match node {
            Json::Object(map) => map
                .entry(key.clone())
                .or_insert_with(|| Json::Object(Map::new())),
            Json::Array(list) => {
                let index: usize = key
                    .parse()
                    .map_err(|_| path_error("a list is indexed by number"))?;
                list.get_mut(index)
                    .ok_or_else(|| path_error("no such list entry"))?
            }
            _ => return Err(path_error("goes inside a plain value")),
        };
    }
    let slot: &mut Json = match node {
        Json::Object(map) => map.entry(last.clone()).or_insert(Json::Null),
        Json::Array(list) => {
            let index: usize = last
                .parse()
                .map_err(|_| path_error("a list is indexed by number"))?;
            list.get_mut(index)
                .ok_or_else(|| path_error("no such list entry"))?
        }
        _ => return Err(path_error("goes inside a plain value")),
    };
    match edit.op {
        EditOp::Set => *slot = edit.value.clone(),
        EditOp::Add => match slot {
            Json::Array(list) => {
                if !list.contains(&edit.value) {
                    list.push(edit.value.clone());
                }
            }
            Json::Null => *slot = Json::Array(vec![edit.value.clone()]),
            _ => return Err(path_error("+= adds to a set or list")),
        },
        EditOp::Remove => match slot {
            Json::Array(list) => list.retain(|v| v != &edit.value),
            _ => return Err(path_error("-= removes from a set")),
        },
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
