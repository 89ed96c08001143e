//! The mapping between the typed record ([`Encounter`]) and its Automerge document, and the
//! merge rules that follow from it.
//!
//! The typed record is turned into JSON by serde, and JSON is laid into the document by one
//! small set of rules (see docs/record.md, "How each field merges"):
//! - a JSON object is an Automerge map, reconciled key by key, so concurrent edits to different
//!   fields never touch each other;
//! - a scalar is a map register: concurrent writes of different values are kept side by side by
//!   Automerge and reported by [`EncounterDocument::conflicts`] until someone sets the field again;
//! - a list of plain values (services, hazards, …) is a set, stored as a map of `true`, so
//!   concurrent additions are a union;
//! - `referrals` and `vitals` are lists: concurrent appends both survive;
//! - `notes` is Automerge text: concurrent typing interleaves.
//!
//! Writes are minimal: a field whose value did not change is not written, so an edit on one
//! phone does not overwrite a field another phone changed concurrently.

use std::collections::BTreeSet;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};
use serde_json::{Map, Value as Json};

use crate::id::{DeviceId, EncounterId, device_of_actor};
use crate::schema::{Encounter, SCHEMA_VERSION};

/// What can go wrong reading or writing an encounter document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not a valid Automerge document or change: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("not a valid Automerge change: {0}")]
    BadChange(#[from] automerge::LoadChangeError),
    /// Automerge failed inside on these changes (it panicked); the changes are refused.
    #[error("the changes could not be merged ({0}); they are malformed")]
    Unmergeable(String),
    #[error("the document is not a valid encounter at `{path}`: {message}")]
    Shape { path: String, message: String },
    #[error(
        "the document has schema version {found}; this build understands version {SCHEMA_VERSION}: upgrade to read it"
    )]
    UnknownSchemaVersion { found: u64 },
}

/// Two or more values written concurrently to one field, none of which has won yet.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conflict {
    /// Dotted path of the field, such as `counts.m.18-59`.
    pub path: String,
    /// Every concurrent value, the one currently shown first.
    pub values: Vec<ConflictingValue>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConflictingValue {
    pub value: Json,
    /// The device that wrote this value, when its actor id names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
}

/// Fields whose JSON string is collaborative Automerge text rather than a plain register.
const TEXT_FIELDS: [&str; 1] = ["notes"];
/// Fields whose JSON list is an Automerge list (ordered, appended to); every other list of plain
/// values is a set.
const LIST_FIELDS: [&str; 2] = ["referrals", "vitals"];

/// One encounter's Automerge document.
#[derive(Debug)]
pub struct EncounterDocument {
    doc: AutoCommit,
}

impl EncounterDocument {
    /// A new document holding `encounter`, written by `actor`, and the change that made it.
    ///
    /// The first change names the encounter in its message. Without that, two encounters logged
    /// by one device in the same second with the same content would begin with byte-identical
    /// changes, and content addressing would merge them into one.
    pub fn create(
        actor: ActorId,
        id: EncounterId,
        encounter: &Encounter,
        time: i64,
    ) -> Result<(Self, Change), DocumentError> {
        let mut document = Self {
            doc: AutoCommit::new().with_actor(actor),
        };
        let options = CommitOptions::default()
            .with_time(time)
            .with_message(format!("create encounter {id}"));
        let change = document
            .write(encounter, &BTreeSet::new(), options)?
            .expect("a new document always has a first change");
        Ok((document, change))
    }

    /// A document with no changes yet, to receive changes into (the server's first sight of an
    /// encounter).
    pub fn empty() -> Self {
        Self {
            doc: AutoCommit::new(),
        }
    }

    /// Loads saved bytes; `actor` is who will write any further edits.
    pub fn load(bytes: &[u8], actor: Option<ActorId>) -> Result<Self, DocumentError> {
        let mut doc = AutoCommit::load(bytes)?;
        if let Some(actor) = actor {
            doc.set_actor(actor);
        }
        Ok(Self { doc })
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// [`Self::save`], checked: the saved bytes load again. Automerge accepts some changes that
    /// it does not write back the same way when it saves the document (found by fuzzing: the
    /// saved document then fails its checksum when loaded), so whoever keeps a document built
    /// from other devices' changes checks it before storing it, and refuses the changes instead.
    /// Saving can also panic inside Automerge after such changes merged; that is caught too.
    pub fn save_checked(&mut self) -> Result<Vec<u8>, DocumentError> {
        let doc = &mut self.doc;
        guarded(move || {
            let saved = doc.save();
            AutoCommit::load(&saved)?;
            Ok(saved)
        })
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    pub fn has_change(&mut self, hash: &ChangeHash) -> bool {
        self.doc.get_change_by_hash(hash).is_some()
    }

    /// Every change in the document, in causal order.
    pub fn changes(&mut self) -> Vec<Change> {
        self.doc.get_changes(&[])
    }

    /// The changes that are not ancestors of `heads` (what a peer at `heads` lacks), in causal
    /// order. Every hash in `heads` must be a change of this document.
    pub fn changes_after(&mut self, heads: &[ChangeHash]) -> Vec<Change> {
        self.doc.get_changes(heads)
    }

    /// Applies changes from elsewhere. Applying a change twice is a no-op; a change whose
    /// dependencies are missing waits inside the document until they arrive (see
    /// [`EncounterDocument::missing_dependencies`]), and is not part of [`EncounterDocument::save`]
    /// until then.
    ///
    /// Automerge panics on some malformed changes instead of returning an error (found by
    /// fuzzing, `fuzz/corpus/automerge_changes/regression-*`): such a panic is caught and
    /// returned as [`DocumentError::Unmergeable`], so one hostile change cannot take down the
    /// server's request or a phone's relay. After any error the document may be half-changed:
    /// callers discard it (the server refuses the upload, a store rolls back its transaction).
    pub fn apply_changes(&mut self, changes: Vec<Change>) -> Result<(), DocumentError> {
        let doc = &mut self.doc;
        guarded(move || Ok(doc.apply_changes(changes)?))
    }

    /// The document's state as JSON without the changes `leave_out` (and so as it was before
    /// them, when they are the newest): the base an edit was made against.
    pub fn json_without(&mut self, leave_out: &[ChangeHash]) -> Result<Json, DocumentError> {
        let kept: Vec<Change> = self
            .changes()
            .into_iter()
            .filter(|c| !leave_out.contains(&c.hash()))
            .collect();
        let mut base = Self::empty();
        base.apply_changes(kept)?;
        Ok(base.to_json())
    }

    /// Hashes of changes this document has heard of but does not have.
    pub fn missing_dependencies(&mut self) -> Vec<ChangeHash> {
        self.doc.get_missing_deps(&[])
    }

    /// The schema version written in the document, if any.
    pub fn schema_version(&self) -> Option<u64> {
        match self.doc.get(ROOT, "schema_version").ok().flatten() {
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Int(n) => u64::try_from(*n).ok(),
                ScalarValue::Uint(n) => Some(*n),
                _ => None,
            },
            _ => None,
        }
    }

    /// The team written in the document, if it names one.
    pub fn team(&self) -> Option<String> {
        match self.doc.get(ROOT, "team").ok().flatten() {
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Str(team) => Some(team.to_string()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every value written to `team` that has not been overwritten: one normally, several after
    /// concurrent writes nobody settled (the shown one first, as [`Self::team`] gives it). A
    /// value that is not text is `None`; an empty list means the document names no team (yet).
    pub fn team_values(&self) -> Vec<Option<String>> {
        let values = self.doc.get_all(ROOT, "team").unwrap_or_default();
        let mut out: Vec<Option<String>> = values
            .iter()
            .map(|(value, _)| match value {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Str(team) => Some(team.to_string()),
                    _ => None,
                },
                Value::Object(_) => None,
            })
            .collect();
        // `get_all` lists the values in ascending op order, and the winner is the last of them.
        out.reverse();
        out
    }

    /// The document's current state as JSON (sets appear as maps of `true`).
    pub fn to_json(&self) -> Json {
        object_to_json(&self.doc, &ROOT, 0)
    }

    /// The document's current state as the typed record.
    pub fn encounter(&self) -> Result<Encounter, DocumentError> {
        if let Some(found) = self.schema_version()
            && found > SCHEMA_VERSION
        {
            return Err(DocumentError::UnknownSchemaVersion { found });
        }
        serde_path_to_error::deserialize(self.to_json()).map_err(|err| DocumentError::Shape {
            path: err.path().to_string(),
            message: err.inner().to_string(),
        })
    }

    /// Writes `encounter` into the document, touching only what differs, and commits.
    ///
    /// `resolve` lists dotted paths the user set on purpose: a conflict at such a path is settled
    /// by writing the value again even if it equals the value currently shown. Returns the new
    /// change, or `None` when nothing differed.
    pub fn update(
        &mut self,
        encounter: &Encounter,
        resolve: &BTreeSet<String>,
        time: i64,
    ) -> Result<Option<Change>, DocumentError> {
        self.write(encounter, resolve, CommitOptions::default().with_time(time))
    }

    fn write(
        &mut self,
        encounter: &Encounter,
        resolve: &BTreeSet<String>,
        options: CommitOptions,
    ) -> Result<Option<Change>, DocumentError> {
        let json = serde_json::to_value(encounter).expect("an encounter always serialises to JSON");
        let Json::Object(fields) = json else {
            unreachable!("an encounter serialises to a JSON object")
        };
        let mut writer = Reconciler {
            doc: &mut self.doc,
            resolve,
        };
        writer.map(&ROOT, &fields, "")?;
        let hash = self.doc.commit_with(options);
        Ok(hash.map(|h| {
            self.doc
                .get_change_by_hash(&h)
                .expect("a change just committed is in the document")
        }))
    }

    /// Fields with concurrent values nobody has settled yet.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        collect_conflicts(&self.doc, &ROOT, "", 0, &mut out);
        out
    }
}

/// Parses change bytes received from elsewhere (a sync request, a relay, a download). Automerge
/// panics on some malformed bytes instead of refusing them (found by fuzzing,
/// `fuzz/corpus/automerge_changes/regression-automerge-panics-parsing.bin`); that is caught and
/// returned as an error like any other malformed change.
pub fn parse_change(bytes: &[u8]) -> Result<Change, DocumentError> {
    guarded(|| Ok(Change::from_bytes(bytes.to_vec())?))
}

/// Runs Automerge `work` on changes from elsewhere, turning a panic inside it into
/// [`DocumentError::Unmergeable`] (see [`EncounterDocument::apply_changes`]).
fn guarded<T>(work: impl FnOnce() -> Result<T, DocumentError>) -> Result<T, DocumentError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(DocumentError::Unmergeable(detail))
        }
    }
}

fn scalar_to_json(value: &ScalarValue) -> Json {
    match value {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(n) => Json::from(*n),
        ScalarValue::Uint(n) => Json::from(*n),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Json::from(*t),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(b) => Json::String(bs58::encode(b).into_string()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Json::Null,
    }
}

fn json_to_scalar(value: &Json) -> Option<ScalarValue> {
    Some(match value {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ScalarValue::Int(i),
            (None, Some(u), _) => ScalarValue::Uint(u),
            (_, _, Some(f)) => ScalarValue::F64(f),
            _ => return None,
        },
        Json::Null | Json::Array(_) | Json::Object(_) => return None,
    })
}

/// How deep objects are read. The schema needs 5 levels; a hostile change nesting thousands of
/// maps would otherwise overflow the stack of whoever reads it (the server, on every upload).
const MAX_DEPTH: usize = 16;

fn value_to_json(doc: &AutoCommit, value: &Value<'_>, id: &ObjId, depth: usize) -> Json {
    match value {
        Value::Scalar(s) => scalar_to_json(s),
        Value::Object(_) => object_to_json(doc, id, depth + 1),
    }
}

fn object_to_json(doc: &AutoCommit, obj: &ObjId, depth: usize) -> Json {
    if depth > MAX_DEPTH {
        return Json::Null;
    }
    match doc.object_type(obj) {
        Ok(ObjType::Map) | Ok(ObjType::Table) => {
            let mut out = Map::new();
            for item in doc.map_range(obj, ..) {
                let id = item.id();
                out.insert(
                    item.key.to_string(),
                    value_to_json(doc, &Value::from(item.value), &id, depth),
                );
            }
            Json::Object(out)
        }
        Ok(ObjType::List) => Json::Array(
            doc.list_range(obj, ..)
                .map(|item| {
                    let id = item.id();
                    value_to_json(doc, &Value::from(item.value), &id, depth)
                })
                .collect(),
        ),
        Ok(ObjType::Text) => Json::String(doc.text(obj).unwrap_or_default()),
        Err(_) => Json::Null,
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn collect_conflicts(
    doc: &AutoCommit,
    obj: &ObjId,
    path: &str,
    depth: usize,
    out: &mut Vec<Conflict>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let props: Vec<automerge::Prop> = match doc.object_type(obj) {
        Ok(ObjType::Map) | Ok(ObjType::Table) => doc.keys(obj).map(automerge::Prop::Map).collect(),
        Ok(ObjType::List) => (0..doc.length(obj)).map(automerge::Prop::Seq).collect(),
        _ => return,
    };
    for prop in props {
        let field = child_path(path, &prop.to_string());
        let Ok(values) = doc.get_all(obj, prop.clone()) else {
            continue;
        };
        let shown: Vec<Json> = values
            .iter()
            .map(|(value, id)| value_to_json(doc, value, id, depth))
            .collect();
        // Two phones writing the same value at once agree: that is not a conflict.
        if shown.windows(2).any(|pair| pair[0] != pair[1]) {
            // get_all lists values in ascending op order; the winner shown is the last.
            let values = values
                .iter()
                .rev()
                .map(|(value, id)| ConflictingValue {
                    value: value_to_json(doc, value, id, depth),
                    device: match id {
                        ObjId::Id(_, actor, _) => device_of_actor(actor),
                        ObjId::Root => None,
                    },
                })
                .collect();
            out.push(Conflict {
                path: field.clone(),
                values,
            });
        }
        if let Ok(Some((Value::Object(_), child))) = doc.get(obj, prop) {
            collect_conflicts(doc, &child, &field, depth + 1, out);
        }
    }
}

/// Lays JSON into the document with the rules in this module's header.
struct Reconciler<'a> {
    doc: &'a mut AutoCommit,
    resolve: &'a BTreeSet<String>,
}

impl Reconciler<'_> {
    fn settles(&self, path: &str) -> bool {
        self.resolve
            .iter()
            .any(|p| p == path || p.starts_with(&format!("{path}.")))
    }

    fn conflicted(&self, obj: &ObjId, key: &str) -> Result<bool, DocumentError> {
        Ok(self.doc.get_all(obj, key)?.len() > 1)
    }

    /// The object at `obj[key]` of type `kind`, made new when absent, of another type, or
    /// conflicted and being settled.
    fn child_object(
        &mut self,
        obj: &ObjId,
        key: &str,
        kind: ObjType,
        path: &str,
    ) -> Result<ObjId, DocumentError> {
        let existing = self.doc.get(obj, key)?;
        if let Some((Value::Object(found), id)) = existing {
            let same_kind = found == kind;
            if same_kind && !(self.settles(path) && self.conflicted(obj, key)?) {
                return Ok(id);
            }
        }
        Ok(self.doc.put_object(obj, key, kind)?)
    }

    fn map(
        &mut self,
        obj: &ObjId,
        fields: &Map<String, Json>,
        path: &str,
    ) -> Result<(), DocumentError> {
        for (key, value) in fields {
            self.field(obj, key, value, &child_path(path, key))?;
        }
        let stale: Vec<String> = self
            .doc
            .keys(obj)
            .filter(|k| !fields.contains_key(k))
            .collect();
        for key in stale {
            self.doc.delete(obj, key.as_str())?;
        }
        Ok(())
    }

    fn field(
        &mut self,
        obj: &ObjId,
        key: &str,
        value: &Json,
        path: &str,
    ) -> Result<(), DocumentError> {
        match value {
            Json::Null => {
                if self.doc.get(obj, key)?.is_some() {
                    self.doc.delete(obj, key)?;
                }
            }
            Json::Object(fields) => {
                let child = self.child_object(obj, key, ObjType::Map, path)?;
                self.map(&child, fields, path)?;
            }
            Json::String(text) if TEXT_FIELDS.contains(&key) => {
                let child = self.child_object(obj, key, ObjType::Text, path)?;
                self.doc.update_text(&child, text)?;
            }
            Json::Array(items) if LIST_FIELDS.contains(&key) => {
                let child = self.child_object(obj, key, ObjType::List, path)?;
                self.list(&child, items, path)?;
            }
            Json::Array(items) => {
                let child = self.child_object(obj, key, ObjType::Map, path)?;
                self.set(&child, items, path)?;
            }
            scalar => {
                let new = json_to_scalar(scalar).expect("a JSON scalar");
                let current = match self.doc.get(obj, key)? {
                    Some((Value::Scalar(s), _)) => Some(s.into_owned()),
                    _ => None,
                };
                let unchanged = current.as_ref().map(scalar_to_json).as_ref() == Some(scalar);
                if !unchanged || (self.settles(path) && self.conflicted(obj, key)?) {
                    self.doc.put(obj, key, new)?;
                }
            }
        }
        Ok(())
    }

    fn set(&mut self, obj: &ObjId, items: &[Json], path: &str) -> Result<(), DocumentError> {
        let mut members = Map::new();
        for item in items {
            let key = match item {
                Json::String(s) => s.clone(),
                other if json_to_scalar(other).is_some() => other.to_string(),
                _ => {
                    return Err(DocumentError::Shape {
                        path: path.to_string(),
                        message: "a set holds plain values, not lists or objects".into(),
                    });
                }
            };
            members.insert(key, Json::Bool(true));
        }
        self.map(obj, &members, path)
    }

    /// Lists are entries appended over time (referrals, vitals). Each new entry is matched to
    /// the entry it came from: unchanged entries by equality (longest common subsequence), and
    /// between those, changed entries to the old entry sharing the most fields. A matched entry is
    /// reconciled in place, field by field, so another phone's concurrent edit of it survives;
    /// only entries that went are deleted and only new ones inserted.
    fn list(&mut self, obj: &ObjId, items: &[Json], path: &str) -> Result<(), DocumentError> {
        let old: Vec<Json> = self
            .doc
            .list_range(obj, ..)
            .map(|entry| {
                let id = entry.id();
                value_to_json(self.doc, &Value::from(entry.value), &id, 0)
            })
            .collect();
        let pairs = match_entries(&old, items);
        let kept_old: BTreeSet<usize> = pairs.iter().map(|(o, _)| *o).collect();
        let kept_new: BTreeSet<usize> = pairs.iter().map(|(_, n)| *n).collect();
        for index in (0..old.len()).rev().filter(|i| !kept_old.contains(i)) {
            self.doc.delete(obj, index)?;
        }
        // The list now holds the matched entries in order, each bound for a position j; walking
        // j upwards and inserting the new entries in between puts every entry at its place.
        for (index, item) in items.iter().enumerate() {
            let item_path = child_path(path, &index.to_string());
            if kept_new.contains(&index) {
                self.list_entry(obj, index, item, &item_path)?;
            } else if let Json::Object(fields) = item {
                let child = self.doc.insert_object(obj, index, ObjType::Map)?;
                self.map(&child, fields, &item_path)?;
            } else if let Some(new) = json_to_scalar(item) {
                self.doc.insert(obj, index, new)?;
            }
        }
        Ok(())
    }

    fn list_entry(
        &mut self,
        obj: &ObjId,
        index: usize,
        item: &Json,
        path: &str,
    ) -> Result<(), DocumentError> {
        match (item, self.doc.get(obj, index)?) {
            (Json::Object(fields), Some((Value::Object(ObjType::Map), child))) => {
                self.map(&child, fields, path)
            }
            (Json::Object(fields), _) => {
                let child = self.doc.put_object(obj, index, ObjType::Map)?;
                self.map(&child, fields, path)
            }
            (scalar, current) => {
                let current = match current {
                    Some((Value::Scalar(s), _)) => Some(scalar_to_json(&s)),
                    _ => None,
                };
                if current.as_ref() != Some(scalar)
                    && let Some(new) = json_to_scalar(scalar)
                {
                    self.doc.put(obj, index, new)?;
                }
                Ok(())
            }
        }
    }
}

/// Order-preserving pairs (old, new) of list entries that are the same entry: equal ones (a
/// longest common subsequence), then, in each gap between those, changed ones sharing at least
/// one field with an old entry of the same gap.
fn match_entries(old: &[Json], new: &[Json]) -> Vec<(usize, usize)> {
    let anchors = longest_common_subsequence(old, new);
    let mut pairs = Vec::new();
    let (mut old_start, mut new_start) = (0, 0);
    for (old_end, new_end) in anchors.iter().copied().chain([(old.len(), new.len())]) {
        let mut next_old = old_start;
        for (j, entry) in new.iter().enumerate().take(new_end).skip(new_start) {
            let best = (next_old..old_end)
                .map(|i| (shared_fields(&old[i], entry), i))
                .filter(|(score, _)| *score > 0)
                .max_by_key(|(score, i)| (*score, std::cmp::Reverse(*i)));
            if let Some((_, i)) = best {
                pairs.push((i, j));
                next_old = i + 1;
            }
        }
        if old_end < old.len() {
            pairs.push((old_end, new_end));
        }
        (old_start, new_start) = (old_end + 1, new_end + 1);
    }
    pairs
}

/// How many fields two entries have in common (0 unless both are objects).
fn shared_fields(a: &Json, b: &Json) -> usize {
    match (a, b) {
        (Json::Object(a), Json::Object(b)) => {
            a.iter().filter(|(k, v)| b.get(*k) == Some(*v)).count()
        }
        _ => 0,
    }
}

/// Index pairs (old, new) of a longest common subsequence of equal entries.
fn longest_common_subsequence(old: &[Json], new: &[Json]) -> Vec<(usize, usize)> {
    let (n, m) = (old.len(), new.len());
    let mut table = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            table[i][j] = if old[i] == new[j] {
                table[i + 1][j + 1] + 1
            } else {
                table[i + 1][j].max(table[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut pairs) = (0, 0, Vec::new());
    while i < n && j < m {
        if old[i] == new[j] {
            pairs.push((i, j));
            i += 1;
            j += 1;
        } else if table[i + 1][j] >= table[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::new_actor_id;
    use crate::schema::{Casualty, Service};

    fn sample() -> Encounter {
        let mut e: Encounter = serde_json::from_str(
            r#"{"services":["rescue"],"counts":{"m":{"18-59":2}},"notes":"two men at the river","terrain":"river"}"#,
        )
        .unwrap();
        e.schema_version = SCHEMA_VERSION;
        e
    }

    /// Two phones, each with its own copy of one encounter.
    fn two_phones() -> (EncounterDocument, EncounterDocument) {
        let (mut a, _) = EncounterDocument::create(
            new_actor_id(DeviceId::random()),
            EncounterId::random(),
            &sample(),
            1,
        )
        .unwrap();
        let b = EncounterDocument::load(&a.save(), Some(new_actor_id(DeviceId::random()))).unwrap();
        (a, b)
    }

    fn merge(a: &mut EncounterDocument, b: &mut EncounterDocument) {
        let from_b = b.changes();
        let from_a = a.changes();
        a.apply_changes(from_b).unwrap();
        b.apply_changes(from_a).unwrap();
    }

    #[test]
    fn round_trips_the_typed_record() {
        let (a, _) = two_phones();
        assert_eq!(a.encounter().unwrap(), sample());
        assert!(a.conflicts().is_empty());
    }

    #[test]
    fn team_values_lists_every_concurrent_team() {
        let (mut a, mut b) = two_phones();
        assert!(a.team_values().is_empty(), "an empty team is not written");
        for (doc, team) in [(&mut a, "sonora"), (&mut b, "chihuahua")] {
            let mut e = doc.encounter().unwrap();
            e.team = team.into();
            doc.update(&e, &BTreeSet::new(), 2).unwrap();
        }
        merge(&mut a, &mut b);
        let mut values = a.team_values();
        assert_eq!(values[0], a.team(), "the shown value first");
        values.sort();
        assert_eq!(
            values,
            vec![Some("chihuahua".to_string()), Some("sonora".to_string())]
        );
        assert!(EncounterDocument::empty().team_values().is_empty());
    }

    /// The changes of a `fuzz/corpus/automerge_changes` input (each preceded by its length).
    fn corpus_changes(input: &[u8]) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut rest = input;
        while rest.len() >= 2 {
            let end = (2 + usize::from(u16::from_be_bytes([rest[0], rest[1]]))).min(rest.len());
            if let Ok(change) = parse_change(&rest[2..end]) {
                changes.push(change);
            }
            rest = &rest[end..];
        }
        changes
    }

    #[test]
    fn change_bytes_automerge_panics_on_are_refused_not_a_crash() {
        let input: &[u8] = include_bytes!(
            "../../fuzz/corpus/automerge_changes/regression-automerge-panics-parsing.bin"
        );
        let mut refused = 0;
        let mut rest = input;
        while rest.len() >= 2 {
            let end = (2 + usize::from(u16::from_be_bytes([rest[0], rest[1]]))).min(rest.len());
            if parse_change(&rest[2..end]).is_err() {
                refused += 1;
            }
            rest = &rest[end..];
        }
        assert!(refused > 0);
    }

    /// Changes from the fuzz corpus on which Automerge panics while applying them.
    #[test]
    fn changes_automerge_panics_on_are_refused_not_a_crash() {
        let input: &[u8] = include_bytes!(
            "../../fuzz/corpus/automerge_changes/regression-automerge-panics-applying.bin"
        );
        let mut document = EncounterDocument::empty();
        assert!(matches!(
            document.apply_changes(corpus_changes(input)),
            Err(DocumentError::Unmergeable(_))
        ));
        // These merge, and Automerge panics while saving the result.
        let input: &[u8] = include_bytes!(
            "../../fuzz/corpus/automerge_changes/regression-automerge-panics-saving.bin"
        );
        let mut document = EncounterDocument::empty();
        document.apply_changes(corpus_changes(input)).unwrap();
        assert!(matches!(
            document.save_checked(),
            Err(DocumentError::Unmergeable(_))
        ));
    }

    /// Changes from the fuzz corpus (`automerge_changes`) that merge, but whose merged document
    /// saves into bytes that fail their checksum on loading.
    #[test]
    fn a_document_that_would_not_load_again_is_caught_before_it_is_stored() {
        let input: &[u8] = include_bytes!(
            "../../fuzz/corpus/automerge_changes/regression-saved-document-fails-its-checksum.bin"
        );
        let mut document = EncounterDocument::empty();
        document.apply_changes(corpus_changes(input)).unwrap();
        assert!(document.save_checked().is_err());
        let mut valid = two_phones().0;
        let saved = valid.save_checked().unwrap();
        assert!(EncounterDocument::load(&saved, None).is_ok());
    }

    #[test]
    fn identical_encounters_created_in_the_same_second_stay_distinct() {
        let actor = new_actor_id(DeviceId::random());
        let (_, first) =
            EncounterDocument::create(actor.clone(), EncounterId::random(), &sample(), 1).unwrap();
        let (_, second) =
            EncounterDocument::create(actor, EncounterId::random(), &sample(), 1).unwrap();
        assert_ne!(first.hash(), second.hash());
    }

    #[test]
    fn an_unchanged_record_writes_nothing() {
        let (mut a, _) = two_phones();
        assert!(a.update(&sample(), &BTreeSet::new(), 2).unwrap().is_none());
    }

    #[test]
    fn concurrent_casualties_are_both_kept() {
        let (mut a, mut b) = two_phones();
        for doc in [&mut a, &mut b] {
            let mut e = doc.encounter().unwrap();
            e.casualties
                .insert(crate::schema::new_person_ref(), Casualty::default());
            doc.update(&e, &BTreeSet::new(), 2).unwrap();
        }
        merge(&mut a, &mut b);
        assert_eq!(a.encounter().unwrap().casualties.len(), 2);
        assert_eq!(a.encounter().unwrap(), b.encounter().unwrap());
    }

    #[test]
    fn concurrent_services_are_a_union() {
        let (mut a, mut b) = two_phones();
        let mut ea = a.encounter().unwrap();
        ea.services.insert(Service::FirstAid);
        a.update(&ea, &BTreeSet::new(), 2).unwrap();
        let mut eb = b.encounter().unwrap();
        eb.services.insert(Service::TransferHospital);
        b.update(&eb, &BTreeSet::new(), 2).unwrap();
        merge(&mut a, &mut b);
        let services = a.encounter().unwrap().services;
        assert_eq!(
            services,
            [
                Service::Rescue,
                Service::FirstAid,
                Service::TransferHospital
            ]
            .into()
        );
    }

    #[test]
    fn concurrent_counts_are_kept_as_a_visible_conflict_until_settled() {
        let (mut a, mut b) = two_phones();
        let mut ea = a.encounter().unwrap();
        ea.counts.m.from_18_to_59 = 3;
        a.update(&ea, &BTreeSet::new(), 2).unwrap();
        let mut eb = b.encounter().unwrap();
        eb.counts.m.from_18_to_59 = 4;
        b.update(&eb, &BTreeSet::new(), 2).unwrap();
        merge(&mut a, &mut b);

        let conflicts = a.conflicts();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].path, "counts.m.18-59");
        let mut seen: Vec<Json> = conflicts[0]
            .values
            .iter()
            .map(|v| v.value.clone())
            .collect();
        seen.sort_by_key(|v| v.as_i64());
        assert_eq!(seen, [Json::from(3), Json::from(4)]);
        assert!(conflicts[0].values.iter().all(|v| v.device.is_some()));
        assert_eq!(a.conflicts(), b.conflicts());

        // Setting the field on purpose settles it, even to the value currently shown.
        let shown = a.encounter().unwrap();
        let resolve = BTreeSet::from(["counts.m.18-59".to_string()]);
        let change = a.update(&shown, &resolve, 3).unwrap();
        assert!(change.is_some());
        assert!(a.conflicts().is_empty());
        b.apply_changes(a.changes()).unwrap();
        assert!(b.conflicts().is_empty());
    }

    #[test]
    fn the_first_notes_written_on_two_phones_at_once_interleave() {
        let mut e = sample();
        e.notes = String::new();
        let (mut a, _) = EncounterDocument::create(
            new_actor_id(DeviceId::random()),
            EncounterId::random(),
            &e,
            1,
        )
        .unwrap();
        let mut b =
            EncounterDocument::load(&a.save(), Some(new_actor_id(DeviceId::random()))).unwrap();
        for (doc, text) in [(&mut a, "heat stroke"), (&mut b, "two children")] {
            let mut edited = doc.encounter().unwrap();
            edited.notes = text.into();
            doc.update(&edited, &BTreeSet::new(), 2).unwrap();
        }
        merge(&mut a, &mut b);
        let notes = a.encounter().unwrap().notes;
        assert!(
            notes.contains("heat stroke") && notes.contains("two children"),
            "{notes}"
        );
        assert!(a.conflicts().is_empty());
    }

    #[test]
    fn the_same_value_written_on_two_phones_is_not_a_conflict() {
        let (mut a, mut b) = two_phones();
        for doc in [&mut a, &mut b] {
            let mut e = doc.encounter().unwrap();
            e.status = crate::schema::Status::Closed;
            e.services.insert(Service::FirstAid);
            doc.update(&e, &BTreeSet::new(), 2).unwrap();
        }
        merge(&mut a, &mut b);
        assert!(a.conflicts().is_empty(), "{:?}", a.conflicts());
    }

    #[test]
    fn removing_a_referral_keeps_a_concurrent_edit_of_another_on_the_right_entry() {
        let (mut a, mut b) = two_phones();
        let referral = |to: &str, name: &str| -> crate::schema::Referral {
            serde_json::from_value(serde_json::json!({"to": to, "organisation": name})).unwrap()
        };
        let mut e = a.encounter().unwrap();
        e.referrals = vec![
            referral("hospital", "HG Altar"),
            referral("shelter", "Casa Nazaret"),
        ];
        a.update(&e, &BTreeSet::new(), 2).unwrap();
        b.apply_changes(a.changes()).unwrap();

        let mut ea = a.encounter().unwrap();
        ea.referrals.remove(0);
        a.update(&ea, &BTreeSet::new(), 3).unwrap();
        let mut eb = b.encounter().unwrap();
        eb.referrals[1].status = crate::schema::ReferralStatus::Accepted;
        b.update(&eb, &BTreeSet::new(), 3).unwrap();
        merge(&mut a, &mut b);

        let merged = a.encounter().unwrap().referrals;
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged[0].organisation.as_deref(), Some("Casa Nazaret"));
        assert_eq!(merged[0].status, crate::schema::ReferralStatus::Accepted);
        assert_eq!(a.encounter().unwrap(), b.encounter().unwrap());
    }

    #[test]
    fn changing_an_entry_while_appending_keeps_a_concurrent_edit_of_that_entry() {
        let (mut a, mut b) = two_phones();
        let vital = |pulse: u32| -> crate::schema::Vitals {
            serde_json::from_value(
                serde_json::json!({"at": "2026-11-28T10:00:00-07:00", "pulse": pulse, "spo2": 94}),
            )
            .unwrap()
        };
        let mut e = a.encounter().unwrap();
        let mut casualty = Casualty::default();
        casualty.vitals.push(vital(80));
        e.casualties.insert("c1".into(), casualty);
        a.update(&e, &BTreeSet::new(), 2).unwrap();
        b.apply_changes(a.changes()).unwrap();

        let mut ea = a.encounter().unwrap();
        let vitals = &mut ea.casualties.get_mut("c1").unwrap().vitals;
        vitals[0].pulse = Some(90);
        vitals.push(vital(95));
        a.update(&ea, &BTreeSet::new(), 3).unwrap();
        let mut eb = b.encounter().unwrap();
        eb.casualties.get_mut("c1").unwrap().vitals[0].spo2 = Some(88);
        b.update(&eb, &BTreeSet::new(), 3).unwrap();
        merge(&mut a, &mut b);

        let merged = &a.encounter().unwrap().casualties["c1"].vitals;
        assert_eq!(merged.len(), 2);
        assert_eq!(
            (merged[0].pulse, merged[0].spo2),
            (Some(90), Some(88)),
            "both phones' fields of the first reading"
        );
        assert_eq!(merged[1].pulse, Some(95));
    }

    #[test]
    fn entries_match_by_equality_then_by_shared_fields() {
        let a = serde_json::json!({"to": "hospital", "status": "planned"});
        let a2 = serde_json::json!({"to": "hospital", "status": "made"});
        let b = serde_json::json!({"to": "shelter", "status": "planned"});
        let c = serde_json::json!({"to": "ngo"});
        assert_eq!(
            match_entries(&[a.clone(), b.clone()], std::slice::from_ref(&b)),
            [(1, 0)]
        );
        assert_eq!(
            match_entries(std::slice::from_ref(&a), &[a2.clone(), c.clone()]),
            [(0, 0)]
        );
        assert_eq!(
            match_entries(&[a.clone(), b.clone()], &[a2, b, c]),
            [(0, 0), (1, 1)]
        );
    }

    #[test]
    fn withdrawing_a_casualty_keeps_readings_another_phone_adds_at_the_same_time() {
        let (mut a, mut b) = two_phones();
        let mut e = a.encounter().unwrap();
        e.casualties.insert("c1".into(), Casualty::default());
        a.update(&e, &BTreeSet::new(), 2).unwrap();
        b.apply_changes(a.changes()).unwrap();

        let edit = |text: &str| -> crate::edit::FieldEdit { text.parse().unwrap() };
        let (withdrawn, settled) =
            crate::edit::apply_edits(&a.encounter().unwrap(), &[edit("casualties.c1=null")])
                .unwrap();
        a.update(&withdrawn, &settled, 3).unwrap();
        let (measured, settled) = crate::edit::apply_edits(
            &b.encounter().unwrap(),
            &[edit(
                r#"casualties.c1.vitals+={"at":"2026-11-28T10:00:00-07:00","pulse":140}"#,
            )],
        )
        .unwrap();
        b.update(&measured, &settled, 3).unwrap();
        merge(&mut a, &mut b);

        let casualty = &a.encounter().unwrap().casualties["c1"];
        assert!(casualty.withdrawn_at.is_some());
        assert_eq!(
            casualty.vitals[0].pulse,
            Some(140),
            "the other phone's reading is kept"
        );
    }

    #[test]
    fn concurrent_notes_interleave() {
        let (mut a, mut b) = two_phones();
        let mut ea = a.encounter().unwrap();
        ea.notes = "two men at the river, dehydrated".into();
        a.update(&ea, &BTreeSet::new(), 2).unwrap();
        let mut eb = b.encounter().unwrap();
        eb.notes = "urgent: two men at the river".into();
        b.update(&eb, &BTreeSet::new(), 2).unwrap();
        merge(&mut a, &mut b);
        let notes = a.encounter().unwrap().notes;
        assert!(
            notes.contains("urgent") && notes.contains("dehydrated"),
            "{notes}"
        );
    }

    #[test]
    fn a_hostile_deeply_nested_document_is_read_without_overflowing_the_stack() {
        let mut doc = AutoCommit::new();
        let mut obj = ROOT;
        for _ in 0..20_000 {
            obj = doc.put_object(&obj, "x", ObjType::Map).unwrap();
        }
        let document = EncounterDocument { doc };
        assert!(document.encounter().is_err());
        assert!(document.conflicts().is_empty());
    }

    #[test]
    fn newer_schema_versions_are_refused_not_guessed() {
        let mut e = sample();
        e.schema_version = SCHEMA_VERSION + 1;
        let (doc, _) =
            EncounterDocument::create(ActorId::random(), EncounterId::random(), &e, 1).unwrap();
        assert!(matches!(
            doc.encounter(),
            Err(DocumentError::UnknownSchemaVersion { found: 2 })
        ));
    }
}
