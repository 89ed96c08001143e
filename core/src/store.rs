//! The device-side store: encounters created and edited fully offline, in one SQLite file.
//!
//! Every user action is one SQLite transaction that writes both the document's new saved form
//! and the change it produced into `pending_changes`; with WAL and `synchronous=FULL`, the app can
//! be killed at any instant and reopen either before or after the action, never half-way. A
//! pending change is deleted only when a sync response names it as durably stored by the server.
//! Changes downloaded before their dependencies are held in `held_changes` and re-applied when
//! the rest arrives, so nothing received is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use automerge::{ActorId, Change, ChangeHash};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::document::{Conflict, DocumentError, EncounterDocument};
use crate::edit::{EditError, FieldEdit, apply_edits};
use crate::id::{DeviceId, EncounterId, new_actor_id};
use crate::protocol::{EncounterChanges, PROTOCOL_VERSION, Rejection, SyncRequest, SyncResponse};
use crate::schema::{Encounter, SCHEMA_VERSION, Status};
use crate::validation::{ValidationErrors, validate};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the device store could not be read or written: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("the encounter is invalid: {0}")]
    Invalid(#[from] ValidationErrors),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(
        "this store is not enrolled yet: run `auxilio device --store FILE init --server URL --token TOKEN` first"
    )]
    NotEnrolled,
    #[error(
        "this store belongs to device {enrolled} and holds {pending} unsynced changes; sync them, or use a new store file for device {requested}"
    )]
    EnrolledToAnotherDevice {
        enrolled: DeviceId,
        requested: DeviceId,
        pending: u64,
    },
    #[error("no encounter {0} in this store")]
    NotFound(EncounterId),
    #[error("team: this device is enrolled in team `{enrolled}`, the record says `{given}`")]
    WrongTeam { enrolled: String, given: String },
    #[error("the store is damaged: {0}")]
    Corrupt(String),
}

/// What a device learned at enrolment; enough to work offline afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    pub server_url: String,
    pub token: String,
    pub device_id: DeviceId,
    pub team: String,
    pub role: String,
    /// Pseudonymous staff id written into new encounters.
    #[serde(default)]
    pub agent: String,
}

/// One line of `device list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncounterSummary {
    pub id: EncounterId,
    pub status: Status,
    pub started_at: Option<String>,
    pub services: Vec<String>,
    pub people: u64,
    pub pending_changes: u64,
    pub conflicts: usize,
}

/// One encounter as `device show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncounterView {
    pub id: EncounterId,
    pub encounter: Encounter,
    pub conflicts: Vec<Conflict>,
    /// The document's heads (hex): equal heads mean identical documents.
    pub heads: Vec<String>,
    pub pending_changes: u64,
}

/// One request's worth of unacknowledged changes (see [`DeviceStore::upload_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadPage {
    pub request: SyncRequest,
    /// Position of the last change included: pass it as `after` for the next page.
    pub last: u64,
    /// More unacknowledged changes wait after this page.
    pub more: bool,
}

/// What applying one sync response did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncApplied {
    pub acknowledged: u64,
    pub downloaded: u64,
    pub rejected: Vec<Rejection>,
}

/// Hex form of change hashes, as shown to people.
pub fn heads_hex(heads: &[ChangeHash]) -> Vec<String> {
    let mut out: Vec<String> = heads.iter().map(ToString::to_string).collect();
    out.sort();
    out
}

const MIGRATIONS: &[&str] = &[r"
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE encounters (
        id BLOB PRIMARY KEY,
        document BLOB NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE pending_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        encounter BLOB NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        change BLOB NOT NULL,
        rejected TEXT
    );
    CREATE TABLE held_changes (
        hash BLOB PRIMARY KEY,
        encounter BLOB NOT NULL,
        change BLOB NOT NULL
    );
"];

/// A device's store: one SQLite file.
#[derive(Debug)]
pub struct DeviceStore {
    conn: Connection,
}

impl DeviceStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "store format {version} is newer than this build understands ({}); update the app",
                MIGRATIONS.len()
            )));
        }
        let tx = conn.transaction()?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
        }
        tx.commit()?;
        Ok(Self { conn })
    }

    fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    fn put_setting(tx: &Transaction<'_>, key: &str, value: &str) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Records the enrolment. Re-enrolling the same device (a new token, a new server address)
    /// keeps everything; switching to another device is refused while changes are unsynced.
    pub fn enrol(&mut self, enrolment: &Enrolment) -> Result<(), StoreError> {
        let pending = self.pending_count()?;
        if let Some(existing) = self.enrolment()?
            && existing.device_id != enrolment.device_id
            && pending > 0
        {
            return Err(StoreError::EnrolledToAnotherDevice {
                enrolled: existing.device_id,
                requested: enrolment.device_id,
                pending,
            });
        }
        let same_device = self
            .enrolment()?
            .is_some_and(|e| e.device_id == enrolment.device_id);
        let tx = self.conn.transaction()?;
        Self::put_setting(
            &tx,
            "enrolment",
            &serde_json::to_string(enrolment).expect("serialisable"),
        )?;
        if !same_device {
            let actor = new_actor_id(enrolment.device_id);
            Self::put_setting(&tx, "actor", &actor.to_hex_string())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn enrolment(&self) -> Result<Option<Enrolment>, StoreError> {
        self.setting("enrolment")?
            .map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    fn require_enrolment(&self) -> Result<Enrolment, StoreError> {
        self.enrolment()?.ok_or(StoreError::NotEnrolled)
    }

    /// Points the store at another server address (same device, same token).
    pub fn set_server_url(&mut self, url: &str) -> Result<(), StoreError> {
        let mut enrolment = self.require_enrolment()?;
        enrolment.server_url = url.to_string();
        self.enrol(&enrolment)
    }

    fn actor(&self) -> Result<ActorId, StoreError> {
        let hex = self.setting("actor")?.ok_or(StoreError::NotEnrolled)?;
        ActorId::try_from(hex.as_str()).map_err(|e| StoreError::Corrupt(format!("actor id: {e}")))
    }

    /// The position in the server's log up to which this device holds everything it may see.
    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(self
            .setting("cursor")?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }

    fn count(&self, sql: &str, params: impl rusqlite::Params) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(sql, params, |row| row.get(0))?;
        Ok(n.unsigned_abs())
    }

    pub fn pending_count(&self) -> Result<u64, StoreError> {
        self.count("SELECT count(*) FROM pending_changes", [])
    }

    fn load_document(
        &self,
        id: EncounterId,
        actor: Option<ActorId>,
    ) -> Result<Option<EncounterDocument>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT document FROM encounters WHERE id = ?1",
                [id.as_bytes()],
                |row| row.get(0),
            )
            .optional()?;
        bytes
            .map(|b| EncounterDocument::load(&b, actor).map_err(StoreError::from))
            .transpose()
    }

    /// The document of encounter `id`.
    pub fn document(&self, id: EncounterId) -> Result<EncounterDocument, StoreError> {
        self.load_document(id, None)?
            .ok_or(StoreError::NotFound(id))
    }

    fn save_document(
        tx: &Transaction<'_>,
        id: EncounterId,
        document: &mut EncounterDocument,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO encounters (id, document, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at",
            params![id.as_bytes(), document.save(), chrono::Utc::now().to_rfc3339()],
        )?;
        Ok(())
    }

    fn add_pending(
        tx: &Transaction<'_>,
        id: EncounterId,
        change: &Change,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT OR IGNORE INTO pending_changes (encounter, hash, change) VALUES (?1, ?2, ?3)",
            params![
                id.as_bytes(),
                change.hash().0.as_slice(),
                change.raw_bytes()
            ],
        )?;
        Ok(())
    }

    /// Logs a new encounter; returns its id. Works with no network at all.
    pub fn log(&mut self, mut encounter: Encounter) -> Result<EncounterId, StoreError> {
        let enrolment = self.require_enrolment()?;
        if encounter.team.is_empty() {
            encounter.team = enrolment.team.clone();
        } else if encounter.team != enrolment.team {
            return Err(StoreError::WrongTeam {
                enrolled: enrolment.team,
                given: encounter.team,
            });
        }
        if encounter.agent.is_empty() {
            encounter.agent = enrolment.agent.clone();
        }
        if encounter.schema_version == 0 {
            encounter.schema_version = SCHEMA_VERSION;
        }
        if encounter.started_at.is_none() {
            encounter.started_at =
                Some(chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false));
        }
        validate(&encounter)?;
        let id = EncounterId::random();
        let (mut document, change) =
            EncounterDocument::create(self.actor()?, id, &encounter, now())?;
        let tx = self.conn.transaction()?;
        Self::save_document(&tx, id, &mut document)?;
        Self::add_pending(&tx, id, &change)?;
        tx.commit()?;
        tracing::debug!(encounter = %id, "logged");
        Ok(id)
    }

    /// Edits fields of an encounter by path; returns whether anything changed.
    pub fn edit(&mut self, id: EncounterId, edits: &[FieldEdit]) -> Result<bool, StoreError> {
        let actor = self.actor()?;
        let mut document = self
            .load_document(id, Some(actor))?
            .ok_or(StoreError::NotFound(id))?;
        let current = document.encounter()?;
        let (edited, settled) = apply_edits(&current, edits)?;
        let enrolment = self.require_enrolment()?;
        if edited.team != current.team {
            return Err(StoreError::WrongTeam {
                enrolled: enrolment.team,
                given: edited.team,
            });
        }
        validate(&edited)?;
        let Some(change) = document.update(&edited, &settled, now())? else {
            return Ok(false);
        };
        let tx = self.conn.transaction()?;
        Self::save_document(&tx, id, &mut document)?;
        Self::add_pending(&tx, id, &change)?;
        tx.commit()?;
        Ok(true)
    }

    /// Every encounter id in the store.
    pub fn encounter_ids(&self) -> Result<Vec<EncounterId>, StoreError> {
        let mut statement = self.conn.prepare("SELECT id FROM encounters ORDER BY id")?;
        let ids = statement
            .query_map([], |row| row.get::<_, Vec<u8>>(0))?
            .map(|bytes| {
                EncounterId::from_slice(&bytes?).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    fn pending_for(&self, id: EncounterId) -> Result<u64, StoreError> {
        self.count(
            "SELECT count(*) FROM pending_changes WHERE encounter = ?1",
            [id.as_bytes()],
        )
    }

    pub fn list(&self) -> Result<Vec<EncounterSummary>, StoreError> {
        self.encounter_ids()?
            .into_iter()
            .map(|id| {
                let document = self.document(id)?;
                let encounter = document.encounter()?;
                Ok(EncounterSummary {
                    id,
                    status: encounter.status,
                    started_at: encounter.started_at.clone(),
                    services: serde_json::to_value(&encounter.services)
                        .ok()
                        .and_then(|v| serde_json::from_value(v).ok())
                        .unwrap_or_default(),
                    people: encounter.counts.total(),
                    pending_changes: self.pending_for(id)?,
                    conflicts: document.conflicts().len(),
                })
            })
            .collect()
    }

    pub fn show(&self, id: EncounterId) -> Result<EncounterView, StoreError> {
        let mut document = self.document(id)?;
        Ok(EncounterView {
            id,
            encounter: document.encounter()?,
            conflicts: document.conflicts(),
            heads: heads_hex(&document.heads()),
            pending_changes: self.pending_for(id)?,
        })
    }

    /// A request carrying every unacknowledged change, and the cursor.
    pub fn sync_request(&self) -> Result<SyncRequest, StoreError> {
        Ok(self.upload_page(0, usize::MAX)?.request)
    }

    /// The next request of a sync: unacknowledged changes made after position `after` of the
    /// pending list, up to about `max_change_bytes` of change data (always at least one change,
    /// so every request makes progress), and the cursor.
    ///
    /// Pages follow creation order, so a change never travels before the changes it depends on.
    /// Walking by position rather than re-reading from the start means a change the server
    /// refused is not re-sent within the same sync.
    pub fn upload_page(
        &self,
        after: u64,
        max_change_bytes: usize,
    ) -> Result<UploadPage, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT seq, encounter, change FROM pending_changes WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut grouped: Vec<EncounterChanges> = Vec::new();
        let mut group_of: HashMap<EncounterId, usize> = HashMap::new();
        let mut rows = statement.query([i64::try_from(after).unwrap_or(i64::MAX)])?;
        let mut bytes = 0usize;
        let mut last = after;
        let mut more = false;
        while let Some(row) = rows.next()? {
            let change: Vec<u8> = row.get(2)?;
            if bytes > 0 && bytes.saturating_add(change.len()) > max_change_bytes {
                more = true;
                break;
            }
            bytes += change.len();
            last = row.get::<_, i64>(0)?.unsigned_abs();
            let encounter = EncounterId::from_slice(&row.get::<_, Vec<u8>>(1)?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let index = *group_of.entry(encounter).or_insert_with(|| {
                grouped.push(EncounterChanges {
                    encounter,
                    changes: Vec::new(),
                });
                grouped.len() - 1
            });
            grouped[index].changes.push(ByteBuf::from(change));
        }
        let request = SyncRequest {
            protocol: PROTOCOL_VERSION,
            cursor: self.cursor()?,
            changes: grouped,
        };
        Ok(UploadPage {
            request,
            last,
            more,
        })
    }

    /// Applies a response, all or nothing: acknowledged changes leave the pending list, downloaded
    /// changes are merged, the cursor moves forward (never back: a late, stale response is
    /// harmless).
    pub fn apply_response(&mut self, response: &SyncResponse) -> Result<SyncApplied, StoreError> {
        let mut downloads: BTreeMap<EncounterId, Vec<Change>> = BTreeMap::new();
        let mut downloaded = 0u64;
        for group in &response.changes {
            for bytes in &group.changes {
                let change = Change::from_bytes(bytes.to_vec()).map_err(DocumentError::from)?;
                downloads.entry(group.encounter).or_default().push(change);
                downloaded += 1;
            }
        }
        let mut documents = Vec::new();
        for (id, changes) in downloads {
            let mut document = self
                .load_document(id, None)?
                .unwrap_or_else(EncounterDocument::empty);
            let held = self.held_changes(id)?;
            document.apply_changes(held.into_iter().chain(changes.clone()).collect())?;
            let still_held: Vec<Change> = {
                let mut all = self.held_changes(id)?;
                all.extend(changes);
                all.into_iter()
                    .filter(|c| !document.has_change(&c.hash()))
                    .collect()
            };
            documents.push((id, document, still_held));
        }

        let cursor = self.cursor()?.max(response.cursor);
        let tx = self.conn.transaction()?;
        let mut acknowledged = 0u64;
        for hash in &response.accepted {
            acknowledged += tx.execute(
                "DELETE FROM pending_changes WHERE hash = ?1",
                [hash.as_slice()],
            )? as u64;
        }
        for rejection in &response.rejected {
            tx.execute(
                "UPDATE pending_changes SET rejected = ?2 WHERE encounter = ?1",
                params![rejection.encounter.as_bytes(), rejection.message],
            )?;
        }
        for (id, mut document, still_held) in documents {
            Self::save_document(&tx, id, &mut document)?;
            tx.execute(
                "DELETE FROM held_changes WHERE encounter = ?1",
                [id.as_bytes()],
            )?;
            for change in &still_held {
                tx.execute(
                    "INSERT OR IGNORE INTO held_changes (hash, encounter, change) VALUES (?1, ?2, ?3)",
                    params![change.hash().0.as_slice(), id.as_bytes(), change.raw_bytes()],
                )?;
            }
        }
        Self::put_setting(&tx, "cursor", &cursor.to_string())?;
        tx.commit()?;
        Ok(SyncApplied {
            acknowledged,
            downloaded,
            rejected: response.rejected.clone(),
        })
    }

    fn held_changes(&self, id: EncounterId) -> Result<Vec<Change>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT change FROM held_changes WHERE encounter = ?1")?;
        let rows = statement.query_map([id.as_bytes()], |row| row.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for bytes in rows {
            out.push(Change::from_bytes(bytes?).map_err(DocumentError::from)?);
        }
        Ok(out)
    }

    /// Changes received but waiting for their dependencies.
    pub fn held_count(&self) -> Result<u64, StoreError> {
        self.count("SELECT count(*) FROM held_changes", [])
    }

    /// Unique encounters the pending changes belong to.
    pub fn pending_encounters(&self) -> Result<BTreeSet<EncounterId>, StoreError> {
        Ok(self
            .sync_request()?
            .changes
            .into_iter()
            .map(|g| g.encounter)
            .collect())
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrolled(dir: &tempfile::TempDir, name: &str) -> DeviceStore {
        let mut store = DeviceStore::open(dir.path().join(name)).unwrap();
        store
            .enrol(&Enrolment {
                server_url: "http://127.0.0.1:9".into(),
                token: "t".into(),
                device_id: DeviceId::random(),
                team: "sonora".into(),
                role: "field".into(),
                agent: "agent-7".into(),
            })
            .unwrap();
        store
    }

    fn example() -> Encounter {
        serde_json::from_str(r#"{"services":["rescue"],"counts":{"m":{"18-59":2}}}"#).unwrap()
    }

    #[test]
    fn logging_needs_enrolment() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DeviceStore::open(dir.path().join("s.db")).unwrap();
        assert!(matches!(store.log(example()), Err(StoreError::NotEnrolled)));
    }

    #[test]
    fn logged_and_edited_encounters_survive_reopening_with_their_pending_changes() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let mut store = enrolled(&dir, "s.db");
            let id = store.log(example()).unwrap();
            assert!(store.edit(id, &["status=closed".parse().unwrap()]).unwrap());
            id
        };
        let store = DeviceStore::open(dir.path().join("s.db")).unwrap();
        let view = store.show(id).unwrap();
        assert_eq!(view.encounter.status, Status::Closed);
        assert_eq!(view.encounter.team, "sonora");
        assert_eq!(view.encounter.agent, "agent-7");
        assert_eq!(view.pending_changes, 2);
        assert_eq!(store.sync_request().unwrap().changes[0].changes.len(), 2);
    }

    #[test]
    fn an_invalid_edit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled(&dir, "s.db");
        let id = store.log(example()).unwrap();
        let err = store
            .edit(id, &["counts.injured=9".parse().unwrap()])
            .unwrap_err();
        assert!(err.to_string().contains("counts.injured"), "{err}");
        assert_eq!(store.pending_count().unwrap(), 1);
        assert_eq!(store.show(id).unwrap().encounter.counts.injured, 0);
    }

    #[test]
    fn two_identical_encounters_logged_at_once_are_both_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled(&dir, "s.db");
        let mut e = example();
        e.started_at = Some("2026-11-28T10:00:00-07:00".into());
        store.log(e.clone()).unwrap();
        store.log(e).unwrap();
        assert_eq!(store.pending_count().unwrap(), 2);
    }

    #[test]
    fn uploads_are_paged_in_creation_order_with_every_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled(&dir, "s.db");
        for _ in 0..5 {
            let id = store.log(example()).unwrap();
            store.edit(id, &["status=closed".parse().unwrap()]).unwrap();
        }
        let everything = store.sync_request().unwrap();
        let mut paged = Vec::new();
        let mut after = 0;
        loop {
            let page = store.upload_page(after, 1).unwrap();
            assert_eq!(
                page.request
                    .changes
                    .iter()
                    .map(|g| g.changes.len())
                    .sum::<usize>(),
                1
            );
            paged.extend(page.request.changes);
            after = page.last;
            if !page.more {
                break;
            }
        }
        let flatten = |groups: Vec<EncounterChanges>| -> Vec<ByteBuf> {
            groups.into_iter().flat_map(|g| g.changes).collect()
        };
        assert_eq!(flatten(paged), flatten(everything.changes));
    }

    #[test]
    fn logging_into_another_team_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled(&dir, "s.db");
        let mut e = example();
        e.team = "chihuahua".into();
        assert!(matches!(store.log(e), Err(StoreError::WrongTeam { .. })));
    }

    #[test]
    fn acknowledged_changes_leave_the_pending_list_and_the_cursor_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled(&dir, "s.db");
        store.log(example()).unwrap();
        let request = store.sync_request().unwrap();
        let hash = {
            let bytes = request.changes[0].changes[0].to_vec();
            Change::from_bytes(bytes).unwrap().hash()
        };
        let response = |cursor| SyncResponse {
            protocol: PROTOCOL_VERSION,
            accepted: vec![ByteBuf::from(hash.0.to_vec())],
            rejected: vec![],
            changes: vec![],
            cursor,
            more: false,
        };
        assert_eq!(store.apply_response(&response(10)).unwrap().acknowledged, 1);
        assert_eq!(store.pending_count().unwrap(), 0);
        store.apply_response(&response(4)).unwrap();
        assert_eq!(store.cursor().unwrap(), 10);
    }

    #[test]
    fn downloaded_changes_with_missing_dependencies_are_held_until_the_rest_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let mut author = enrolled(&dir, "a.db");
        let id = author.log(example()).unwrap();
        author
            .edit(id, &["status=closed".parse().unwrap()])
            .unwrap();
        let all = author.sync_request().unwrap().changes.remove(0);
        let page = |changes: Vec<ByteBuf>, cursor| SyncResponse {
            protocol: PROTOCOL_VERSION,
            accepted: vec![],
            rejected: vec![],
            changes: vec![EncounterChanges {
                encounter: id,
                changes,
            }],
            cursor,
            more: false,
        };

        let mut reader = enrolled(&dir, "b.db");
        reader
            .apply_response(&page(vec![all.changes[1].clone()], 1))
            .unwrap();
        assert_eq!(reader.held_count().unwrap(), 1);
        reader
            .apply_response(&page(vec![all.changes[0].clone()], 2))
            .unwrap();
        assert_eq!(reader.held_count().unwrap(), 0);
        assert_eq!(reader.show(id).unwrap().encounter.status, Status::Closed);
    }
}
