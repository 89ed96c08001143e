//! The device-side store: encounters created and edited fully offline, in one SQLite file.
//!
//! Every user action is one SQLite transaction that writes both the document's new saved form
//! and the change it produced into `pending_changes`; with WAL and `synchronous=FULL`, the app can
//! be killed at any instant and reopen either before or after the action, never half-way. A
//! pending change is deleted only when a sync response names it as durably stored by the server.
//! Changes downloaded before their dependencies are held in `held_changes` and re-applied when
//! the rest arrives, so nothing received is dropped.
//!
//! Sealed identity vaults ([`crate::vault`]) wait in `vault_outbox` as envelopes only (the
//! plaintext is never written) until the server acknowledges them, and are then deleted: the
//! device cannot read them anyway, and a lost phone holds less.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use automerge::{ActorId, Change, ChangeHash};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use serde_json::Value as Json;

use crate::document::{Conflict, DocumentError, EncounterDocument, parse_change};
use crate::edit::{EditError, FieldEdit, apply_edits_to_json, edits_between};
use crate::id::{DeviceId, EncounterId, new_actor_id};
use crate::protocol::{
    EncounterChanges, MAX_CHANGES_PER_REQUEST, MAX_ENCOUNTERS_PER_REQUEST, PROTOCOL_VERSION,
    PurgeKind, RejectReason, Rejection, SyncRequest, SyncResponse, WantedChanges,
};
use crate::schema::{Encounter, SCHEMA_VERSION, Status};
use crate::validation::{FieldError, ValidationErrors, validate};
use crate::vault::{self, SealedVault, VaultContents, VaultError};

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
    #[error(
        "cannot create the store file {path} readable by its owner only ({source}): check the folder exists and is yours"
    )]
    PrivateFile {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(
        "encounter {0} is not a UASC or missing-person case: identity data is sealed only for those (count the child with counts.uasc, or add the service located_missing, first)"
    )]
    NotAVaultCase(EncounterId),
}

/// What [`DeviceStore::wipe`] erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wiped {
    pub encounters: u64,
    /// Changes never acknowledged by the server: lost with the phone's data, on purpose.
    pub unsynced_changes: u64,
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
    pub status: Option<Status>,
    pub started_at: Option<String>,
    pub services: Vec<String>,
    pub people: u64,
    pub pending_changes: u64,
    pub conflicts: usize,
    /// Why the record could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Why the server last refused this encounter's changes (they are kept and sent again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
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
    /// Why the server last refused this encounter's changes (they are kept and sent again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Rules the merged record breaks (concurrent edits can combine into a record no single
    /// edit would have made); shown, never hidden.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<FieldError>,
}

/// One request's worth of unacknowledged changes (see [`DeviceStore::upload_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadPage {
    pub request: SyncRequest,
    /// Position of the last change included: pass it as `after` for the next page.
    pub last: u64,
    /// Position and hash of every change in the page, so a page whose request never reached the
    /// server (see [`SyncRequest::resume`]) can be sent again from its first change.
    pub sent: Vec<(u64, ByteBuf)>,
    /// More unacknowledged changes wait after this page.
    pub more: bool,
}

/// What applying one sync response did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncApplied {
    pub acknowledged: u64,
    pub downloaded: u64,
    pub rejected: Vec<Rejection>,
    /// The store found its actor reused (a copied or restored store), took a new one and will
    /// make its refused edits again: sync on.
    pub actor_renewed: bool,
    /// Encounters whose refused edits were made again as new changes, waiting to be sent.
    pub rebased: u64,
    /// Encounters this store held and dropped because the server purged them (a purge notice,
    /// or a `purged` refusal of their pending changes).
    pub dropped: u64,
    /// Encounters whose identity vault copies (outbox rows) this store dropped after a vault
    /// purge.
    pub vaults_dropped: u64,
    /// Sealed vaults the server acknowledged (and this store deleted).
    pub vaults_acknowledged: u64,
}

/// Hex form of change hashes, as shown to people.
pub fn heads_hex(heads: &[ChangeHash]) -> Vec<String> {
    let mut out: Vec<String> = heads.iter().map(ToString::to_string).collect();
    out.sort();
    out
}

const MIGRATIONS: &[&str] = &[
    r"
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
    -- Edits to make again, on a new actor, once the server's version of the encounter has
    -- arrived (see `RejectReason::ActorReused`).
    CREATE TABLE rebases (
        encounter BLOB PRIMARY KEY,
        edits TEXT NOT NULL
    );
    CREATE TABLE held_changes (
        hash BLOB PRIMARY KEY,
        encounter BLOB NOT NULL,
        change BLOB NOT NULL
    );
",
    r"
    -- Sealed identity vaults (CBOR envelopes, ciphertext only) not yet acknowledged by the
    -- server; `rejected` says why the server last refused one (it is offered again).
    CREATE TABLE vault_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id BLOB NOT NULL UNIQUE,
        encounter BLOB NOT NULL,
        envelope BLOB NOT NULL,
        rejected TEXT
    );
",
    r"
    -- Encounters the server purged, by id only: a teammate's phone that has not heard of the
    -- purge yet may relay them again, and they are refused instead of stored.
    CREATE TABLE purged_encounters (id BLOB PRIMARY KEY) WITHOUT ROWID;
",
];

/// The number (counted from 1, as `user_version` counts) of the migration that came with
/// purges and `secure_delete`.
fn erasure_migration() -> usize {
    MIGRATIONS
        .iter()
        .position(|migration| migration.contains("CREATE TABLE purged_encounters"))
        .map_or(0, |index| index + 1)
}

/// A device's store: one SQLite file.
#[derive(Debug)]
pub struct DeviceStore {
    conn: Connection,
}

pub(crate) fn setting(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?)
}

pub(crate) fn put_setting(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

pub(crate) fn enrolment(conn: &Connection) -> Result<Option<Enrolment>, StoreError> {
    setting(conn, "enrolment")?
        .map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

pub(crate) fn actor(conn: &Connection) -> Result<ActorId, StoreError> {
    let hex = setting(conn, "actor")?.ok_or(StoreError::NotEnrolled)?;
    ActorId::try_from(hex.as_str()).map_err(|e| StoreError::Corrupt(format!("actor id: {e}")))
}

fn cursor(conn: &Connection) -> Result<u64, StoreError> {
    Ok(setting(conn, "cursor")?
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// The hash of the change at the cursor's position (see [`SyncRequest::cursor_check`]).
fn cursor_check(conn: &Connection) -> Result<Option<ByteBuf>, StoreError> {
    Ok(setting(conn, "cursor_check")?
        .and_then(|text| bs58::decode(text).into_vec().ok())
        .filter(|hash| !hash.is_empty())
        .map(ByteBuf::from))
}

pub(crate) fn encounter_ids(conn: &Connection) -> Result<Vec<EncounterId>, StoreError> {
    let mut statement = conn.prepare("SELECT id FROM encounters ORDER BY id")?;
    let ids = statement.query_map([], |row| row.get::<_, Vec<u8>>(0))?;
    ids.map(|bytes| stored_id(&bytes?)).collect()
}

/// An encounter id read from a column; anything else means the store is damaged.
pub(crate) fn stored_id(bytes: &[u8]) -> Result<EncounterId, StoreError> {
    EncounterId::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(sql, params, |row| row.get(0))?;
    Ok(n.unsigned_abs())
}

pub(crate) fn load_document(
    conn: &Connection,
    id: EncounterId,
    actor: Option<ActorId>,
) -> Result<Option<EncounterDocument>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
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

pub(crate) fn save_document(
    conn: &Connection,
    id: EncounterId,
    document: &mut EncounterDocument,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO encounters (id, document, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at",
        params![id.as_bytes(), document.save(), chrono::Utc::now().to_rfc3339()],
    )?;
    Ok(())
}

pub(crate) fn add_pending(
    conn: &Connection,
    id: EncounterId,
    change: &Change,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO pending_changes (encounter, hash, change) VALUES (?1, ?2, ?3)",
        params![
            id.as_bytes(),
            change.hash().0.as_slice(),
            change.raw_bytes()
        ],
    )?;
    Ok(())
}

pub(crate) fn held_changes(conn: &Connection, id: EncounterId) -> Result<Vec<Change>, StoreError> {
    let mut statement = conn.prepare("SELECT change FROM held_changes WHERE encounter = ?1")?;
    let rows = statement.query_map([id.as_bytes()], |row| row.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for bytes in rows {
        out.push(Change::from_bytes(bytes?).map_err(DocumentError::from)?);
    }
    Ok(out)
}

/// Merges `received` into `document` (encounter `id`'s, or a new empty one) together with the
/// changes held for the encounter, and returns every change it tried: [`save_merged`] holds the
/// ones whose dependencies are still missing.
pub(crate) fn merge_with_held(
    conn: &Connection,
    id: EncounterId,
    document: &mut EncounterDocument,
    received: Vec<Change>,
) -> Result<Vec<Change>, StoreError> {
    let mut candidates = held_changes(conn, id)?;
    candidates.extend(received);
    document.apply_changes(candidates.clone())?;
    Ok(candidates)
}

/// Saves a document [`merge_with_held`] merged, and holds the candidates it could not apply
/// yet, so that nothing received is dropped.
pub(crate) fn save_merged(
    conn: &Connection,
    id: EncounterId,
    document: &mut EncounterDocument,
    candidates: &[Change],
) -> Result<(), StoreError> {
    save_document(conn, id, document)?;
    conn.execute(
        "DELETE FROM held_changes WHERE encounter = ?1",
        [id.as_bytes()],
    )?;
    for change in candidates
        .iter()
        .filter(|c| !document.has_change(&c.hash()))
    {
        conn.execute(
            "INSERT OR IGNORE INTO held_changes (hash, encounter, change) VALUES (?1, ?2, ?3)",
            params![
                change.hash().0.as_slice(),
                id.as_bytes(),
                change.raw_bytes()
            ],
        )?;
    }
    Ok(())
}

/// Puts every change this store wrote back on the pending list. A server that had to restart the
/// device's cursor (restored from a backup, or replaced) may have lost changes it once
/// acknowledged; offering them again costs one upload, and the server stores only those it lacks.
fn requeue_own_changes(conn: &Connection) -> Result<u64, StoreError> {
    let own = actor(conn)?;
    let mut requeued = 0;
    for id in encounter_ids(conn)? {
        let Some(mut document) = load_document(conn, id, None)? else {
            continue;
        };
        for change in document.changes().iter().filter(|c| c.actor_id() == &own) {
            add_pending(conn, id, change)?;
            requeued += 1;
        }
    }
    tracing::info!(
        requeued,
        "the server's history changed: offering this device's changes again"
    );
    Ok(requeued)
}

fn refusal_for(conn: &Connection, id: EncounterId) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT rejected FROM pending_changes WHERE encounter = ?1 AND rejected IS NOT NULL
             ORDER BY seq DESC LIMIT 1",
            [id.as_bytes()],
            |row| row.get(0),
        )
        .optional()?)
}

/// A copy of this store (a restored backup) wrote with the same actor, so the server refused
/// `reused` encounters' changes. The store takes a new actor; for each of those encounters it
/// keeps the edits it made (its pending changes, as field edits against the state before them),
/// drops its copy of the document, and starts the download again, so the server's version
/// arrives whole; [`make_edits_again`] then re-makes the edits on top of it.
fn renew_actor(conn: &Connection, reused: &BTreeSet<EncounterId>) -> Result<(), StoreError> {
    let enrolled = enrolment(conn)?.ok_or(StoreError::NotEnrolled)?;
    put_setting(
        conn,
        "actor",
        &new_actor_id(enrolled.device_id).to_hex_string(),
    )?;
    for id in reused {
        if let Some(mut document) = load_document(conn, *id, None)? {
            let pending: Vec<ChangeHash> = conn
                .prepare("SELECT hash FROM pending_changes WHERE encounter = ?1")?
                .query_map([id.as_bytes()], |row| row.get::<_, Vec<u8>>(0))?
                .filter_map(|hash| {
                    hash.ok()
                        .and_then(|h| ChangeHash::try_from(h.as_slice()).ok())
                })
                .collect();
            let base = document.json_without(&pending)?;
            let edits: Vec<(Vec<String>, Json)> = edits_between(&base, &document.to_json())
                .into_iter()
                .map(|edit| (edit.path, edit.value))
                .collect();
            conn.execute(
                "INSERT INTO rebases (encounter, edits) VALUES (?1, ?2)
                 ON CONFLICT (encounter) DO UPDATE SET edits = excluded.edits",
                params![
                    id.as_bytes(),
                    serde_json::to_string(&edits).expect("serialisable")
                ],
            )?;
        }
        delete_copy(conn, *id)?;
    }
    conn.execute(
        "DELETE FROM settings WHERE key IN ('cursor', 'cursor_check')",
        [],
    )?;
    tracing::warn!(
        encounters = reused.len(),
        "this store's actor was used by a copy of it; took a new one"
    );
    Ok(())
}

/// Deletes this store's copy of encounter `id`: its document, and its pending and held changes.
/// Returns how many rows went.
fn delete_copy(conn: &Connection, id: EncounterId) -> Result<usize, StoreError> {
    let mut removed = 0;
    for table in [
        "encounters WHERE id",
        "pending_changes WHERE encounter",
        "held_changes WHERE encounter",
    ] {
        removed += conn.execute(&format!("DELETE FROM {table} = ?1"), [id.as_bytes()])?;
    }
    Ok(removed)
}

/// Deletes encounter `id`'s sealed identity envelopes still waiting in the vault outbox.
fn drop_vault_outbox(conn: &Connection, id: EncounterId) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM vault_outbox WHERE encounter = ?1",
        [id.as_bytes()],
    )?)
}

/// Drops what this store holds of encounter `id` after the server purged it (`kind`), in the
/// caller's transaction; returns whether anything was held. A whole purge drops the document,
/// its pending changes (unsent edits too: a purge outranks a pending edit), its held changes,
/// any edits waiting to be made again and its vault outbox, and remembers the id so a relayed
/// copy is refused; a vault purge drops only the vault outbox.
pub(crate) fn drop_purged(
    conn: &Connection,
    id: EncounterId,
    kind: PurgeKind,
) -> Result<bool, StoreError> {
    let mut removed = drop_vault_outbox(conn, id)?;
    if kind == PurgeKind::Whole {
        removed += delete_copy(conn, id)?;
        removed += conn.execute("DELETE FROM rebases WHERE encounter = ?1", [id.as_bytes()])?;
        conn.execute(
            "INSERT OR IGNORE INTO purged_encounters (id) VALUES (?1)",
            [id.as_bytes()],
        )?;
    }
    if removed > 0 {
        tracing::info!(encounter = %id, kind = kind.as_str(), "purged on the server: this device's copy dropped");
    }
    Ok(removed > 0)
}

/// Whether the server purged encounter `id` (as far as this store has heard).
pub(crate) fn is_purged(conn: &Connection, id: EncounterId) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM purged_encounters WHERE id = ?1)",
        [id.as_bytes()],
        |row| row.get(0),
    )?)
}

/// The position in the server's purge log up to which this store applied every notice.
fn purges_cursor(conn: &Connection) -> Result<u64, StoreError> {
    Ok(setting(conn, "purges_cursor")?
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// Re-makes the edits [`renew_actor`] kept, on the documents now downloaded again, as new changes
/// of the new actor. Edits that no longer apply (the field is gone) are skipped.
fn make_edits_again(conn: &Connection) -> Result<u64, StoreError> {
    let waiting: Vec<(Vec<u8>, String)> = conn
        .prepare("SELECT encounter, edits FROM rebases")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut rebased = 0;
    for (id, edits) in waiting {
        let id = stored_id(&id)?;
        let Some(mut document) = load_document(conn, id, Some(actor(conn)?))? else {
            continue;
        };
        let edits: Vec<(Vec<String>, Json)> =
            serde_json::from_str(&edits).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut json = document.to_json();
        let mut settled = BTreeSet::new();
        for (path, value) in edits {
            let edit = FieldEdit::set(path, value);
            if let Ok((record, _)) = apply_edits_to_json(json.clone(), std::slice::from_ref(&edit))
            {
                json = serde_json::to_value(record).expect("serialisable");
                settled.insert(edit.dotted_path());
            }
        }
        let record: Encounter =
            serde_json::from_value(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Some(change) = document.update(&record, &settled, now())? {
            save_document(conn, id, &mut document)?;
            add_pending(conn, id, &change)?;
        }
        conn.execute("DELETE FROM rebases WHERE encounter = ?1", [id.as_bytes()])?;
        rebased += 1;
    }
    Ok(rebased)
}

pub(crate) fn pending_hashes(conn: &Connection) -> Result<BTreeSet<Vec<u8>>, StoreError> {
    let mut statement = conn.prepare("SELECT hash FROM pending_changes")?;
    let hashes = statement
        .query_map([], |row| row.get::<_, Vec<u8>>(0))?
        .collect::<Result<_, _>>()?;
    Ok(hashes)
}

fn pending_for(conn: &Connection, id: EncounterId) -> Result<u64, StoreError> {
    count(
        conn,
        "SELECT count(*) FROM pending_changes WHERE encounter = ?1",
        [id.as_bytes()],
    )
}

impl DeviceStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        // The store holds records and the device's token: its owner's alone.
        crate::private_files::prepare_private_database(path.as_ref()).map_err(|source| {
            StoreError::PrivateFile {
                path: path.as_ref().display().to_string(),
                source,
            }
        })?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Deleted rows are overwritten with zeros, so a purged encounter's text does not linger
        // in free pages of the phone's file (see `checkpoint`).
        conn.pragma_update(None, "secure_delete", "ON")?;
        // The version is read inside the write transaction, so two processes opening a new store
        // at once cannot both run the migrations.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "store format {version} is newer than this build understands ({}); update the app",
                MIGRATIONS.len()
            )));
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
        }
        tx.commit()?;
        let store = Self { conn };
        if version > 0 && version < erasure_migration() {
            // A store from before deletes were zeroed may hold acknowledged changes and old
            // document versions in its free pages: rewritten once (a phone's store is small).
            store.conn.execute_batch("VACUUM")?;
            store.checkpoint()?;
        }
        Ok(store)
    }

    /// A write transaction that takes SQLite's write lock at once, so that what a change is
    /// computed from (the saved document) cannot change under it: two writers on one store (the
    /// app's sync thread and its UI) then take turns instead of overwriting each other.
    pub(crate) fn write(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Records the enrolment. Re-enrolling the same device (a new token, a new server address)
    /// keeps everything; switching to another device is refused while changes are unsynced, and
    /// otherwise starts from an empty store (the other device's team and role may differ).
    pub fn enrol(&mut self, new: &Enrolment) -> Result<(), StoreError> {
        let tx = self.write()?;
        let existing = enrolment(&tx)?;
        let same_device = existing
            .as_ref()
            .is_some_and(|e| e.device_id == new.device_id);
        if let Some(existing) = existing
            && !same_device
        {
            // Sealed vaults not yet uploaded count too: they exist nowhere else.
            let pending = count(
                &tx,
                "SELECT (SELECT count(*) FROM pending_changes) + (SELECT count(*) FROM vault_outbox)",
                [],
            )?;
            if pending > 0 {
                return Err(StoreError::EnrolledToAnotherDevice {
                    enrolled: existing.device_id,
                    requested: new.device_id,
                    pending,
                });
            }
            tx.execute_batch(
                "DELETE FROM encounters; DELETE FROM held_changes;
                 DELETE FROM settings WHERE key IN ('cursor', 'cursor_check', 'purges_cursor',
                     'relay_signing_key', 'relay_team_keys');",
            )?;
        }
        put_setting(
            &tx,
            "enrolment",
            &serde_json::to_string(new).expect("serialisable"),
        )?;
        if !same_device {
            put_setting(&tx, "actor", &new_actor_id(new.device_id).to_hex_string())?;
        }
        crate::relay_auth::ensure_signing_key(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Erases everything the store holds (encounters, unsynced changes, the enrolment and its
    /// token) because the server said this device was revoked: a lost or stolen phone keeps no
    /// record of the people it logged. Deleted pages are overwritten (`secure_delete`), the file
    /// is rewritten without them (`VACUUM`) and the WAL is emptied, so the bytes are gone from
    /// the files too, not just unreachable. The schema stays: the store reopens as never
    /// enrolled.
    pub fn wipe(&mut self) -> Result<Wiped, StoreError> {
        self.conn.pragma_update(None, "secure_delete", "ON")?;
        let tx = self.write()?;
        let wiped = Wiped {
            encounters: count(&tx, "SELECT count(*) FROM encounters", [])?,
            unsynced_changes: count(&tx, "SELECT count(*) FROM pending_changes", [])?,
        };
        // Every table, including ones later versions add, so nothing is forgotten here.
        let tables: Vec<String> = tx
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        for table in tables {
            tx.execute(&format!("DELETE FROM \"{table}\""), [])?;
        }
        tx.commit()?;
        self.conn.execute_batch("VACUUM")?;
        self.checkpoint()?;
        Ok(wiped)
    }

    /// The store's connection, for reads by other modules of this crate.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn enrolment(&self) -> Result<Option<Enrolment>, StoreError> {
        enrolment(&self.conn)
    }

    /// Points the store at another server address (same device, same token).
    pub fn set_server_url(&mut self, url: &str) -> Result<(), StoreError> {
        let mut current = self.enrolment()?.ok_or(StoreError::NotEnrolled)?;
        current.server_url = url.to_string();
        self.enrol(&current)
    }

    /// The position in the server's log up to which this device holds everything it may see.
    pub fn cursor(&self) -> Result<u64, StoreError> {
        cursor(&self.conn)
    }

    /// Requests whose response never arrived, as (request id, position of their first change on
    /// the pending list), kept so that a sync started after the app was closed still asks about
    /// them (see [`SyncRequest::resume`]) instead of uploading their pages again.
    pub fn lost_requests(&self) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        Ok(setting(&self.conn, "lost_requests")?
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default())
    }

    pub fn set_lost_requests(&mut self, lost: &[(Vec<u8>, u64)]) -> Result<(), StoreError> {
        put_setting(
            &self.conn,
            "lost_requests",
            &serde_json::to_string(lost).expect("serialisable"),
        )
    }

    /// Hashes of the changes waiting for the server's acknowledgement.
    pub fn pending_hashes(&self) -> Result<BTreeSet<Vec<u8>>, StoreError> {
        pending_hashes(&self.conn)
    }

    pub fn pending_count(&self) -> Result<u64, StoreError> {
        count(&self.conn, "SELECT count(*) FROM pending_changes", [])
    }

    /// The document of encounter `id` as JSON, whatever the schema makes of it: for showing a
    /// record that cannot be read as an encounter.
    pub fn raw(&self, id: EncounterId) -> Result<Json, StoreError> {
        Ok(self.document(id)?.to_json())
    }

    /// The document of encounter `id`.
    pub fn document(&self, id: EncounterId) -> Result<EncounterDocument, StoreError> {
        load_document(&self.conn, id, None)?.ok_or(StoreError::NotFound(id))
    }

    /// Logs a new encounter; returns its id. Works with no network at all.
    pub fn log(&mut self, mut encounter: Encounter) -> Result<EncounterId, StoreError> {
        let tx = self.write()?;
        let enrolled = enrolment(&tx)?.ok_or(StoreError::NotEnrolled)?;
        if encounter.team.is_empty() {
            encounter.team = enrolled.team.clone();
        } else if encounter.team != enrolled.team {
            return Err(StoreError::WrongTeam {
                enrolled: enrolled.team,
                given: encounter.team,
            });
        }
        if encounter.agent.is_empty() {
            encounter.agent = enrolled.agent.clone();
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
        let (mut document, change) = EncounterDocument::create(actor(&tx)?, id, &encounter, now())?;
        save_document(&tx, id, &mut document)?;
        add_pending(&tx, id, &change)?;
        tx.commit()?;
        tracing::debug!(encounter = %id, "logged");
        Ok(id)
    }

    /// Edits fields of an encounter by path; returns whether anything changed.
    pub fn edit(&mut self, id: EncounterId, edits: &[FieldEdit]) -> Result<bool, StoreError> {
        let tx = self.write()?;
        let enrolled = enrolment(&tx)?.ok_or(StoreError::NotEnrolled)?;
        let mut document =
            load_document(&tx, id, Some(actor(&tx)?))?.ok_or(StoreError::NotFound(id))?;
        // Edits apply to the document as it is, not to what the schema makes of it, so a record
        // that a merge or another app version left unreadable can still be repaired by an edit.
        let current = document.to_json();
        let (edited, settled) = apply_edits_to_json(current.clone(), edits)?;
        if current.get("team").and_then(Json::as_str) != Some(edited.team.as_str()) {
            return Err(StoreError::WrongTeam {
                enrolled: enrolled.team,
                given: edited.team,
            });
        }
        // An edit may not break a rule, but a rule already broken by a merge (two phones' notes
        // together too long, say) must not block editing other fields of the record.
        if let Err(ValidationErrors(after)) = validate(&edited) {
            let before: Vec<String> = serde_json::from_value::<Encounter>(current)
                .ok()
                .and_then(|record| validate(&record).err())
                .map(|errors| errors.0.into_iter().map(|e| e.field).collect())
                .unwrap_or_default();
            let introduced: Vec<FieldError> = after
                .into_iter()
                .filter(|e| !before.contains(&e.field))
                .collect();
            if !introduced.is_empty() {
                return Err(ValidationErrors(introduced).into());
            }
        }
        let Some(change) = document.update(&edited, &settled, now())? else {
            return Ok(false);
        };
        save_document(&tx, id, &mut document)?;
        add_pending(&tx, id, &change)?;
        tx.commit()?;
        Ok(true)
    }

    /// Every encounter id in the store.
    pub fn encounter_ids(&self) -> Result<Vec<EncounterId>, StoreError> {
        encounter_ids(&self.conn)
    }

    /// A line per encounter. One that cannot be read (a teammate on a newer app version, say)
    /// is listed with its problem instead of hiding the others.
    pub fn list(&self) -> Result<Vec<EncounterSummary>, StoreError> {
        self.encounter_ids()?
            .into_iter()
            .map(|id| {
                let document = self.document(id)?;
                let mut summary = EncounterSummary {
                    id,
                    status: None,
                    started_at: None,
                    services: Vec::new(),
                    people: 0,
                    pending_changes: pending_for(&self.conn, id)?,
                    conflicts: document.conflicts().len(),
                    problem: None,
                    refused: refusal_for(&self.conn, id)?,
                };
                match document.encounter() {
                    Ok(encounter) => {
                        summary.status = Some(encounter.status);
                        summary.people = encounter.counts.total();
                        summary.services = encounter
                            .services
                            .iter()
                            .filter_map(|s| {
                                serde_json::to_value(s).ok()?.as_str().map(str::to_string)
                            })
                            .collect();
                        summary.started_at = encounter.started_at;
                    }
                    Err(err) => summary.problem = Some(err.to_string()),
                }
                Ok(summary)
            })
            .collect()
    }

    pub fn show(&self, id: EncounterId) -> Result<EncounterView, StoreError> {
        let mut document = self.document(id)?;
        let encounter = document.encounter()?;
        Ok(EncounterView {
            id,
            problems: validate(&encounter).err().map(|e| e.0).unwrap_or_default(),
            encounter,
            conflicts: document.conflicts(),
            heads: heads_hex(&document.heads()),
            pending_changes: pending_for(&self.conn, id)?,
            refused: refusal_for(&self.conn, id)?,
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
        self.upload_page_within(
            after,
            max_change_bytes,
            MAX_ENCOUNTERS_PER_REQUEST,
            MAX_CHANGES_PER_REQUEST,
        )
    }

    /// [`Self::upload_page`] holding changes of at most `max_encounters` encounters and at most
    /// `max_changes` changes (at least one change, so a page always makes progress): what a
    /// server's per-request ceilings allow.
    pub fn upload_page_within(
        &self,
        after: u64,
        max_change_bytes: usize,
        max_encounters: usize,
        max_changes: usize,
    ) -> Result<UploadPage, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT seq, encounter, hash, change FROM pending_changes WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut grouped: Vec<EncounterChanges> = Vec::new();
        let mut group_of: HashMap<EncounterId, usize> = HashMap::new();
        let mut rows = statement.query([i64::try_from(after).unwrap_or(i64::MAX)])?;
        let mut bytes = 0usize;
        let mut last = after;
        let mut more = false;
        let mut sent = Vec::new();
        while let Some(row) = rows.next()? {
            let change: Vec<u8> = row.get(3)?;
            let encounter = stored_id(&row.get::<_, Vec<u8>>(1)?)?;
            let new_group = !group_of.contains_key(&encounter);
            if bytes > 0
                && (bytes.saturating_add(change.len()) > max_change_bytes
                    || sent.len() >= max_changes
                    || (new_group && grouped.len() >= max_encounters))
            {
                more = true;
                break;
            }
            bytes += change.len();
            last = row.get::<_, i64>(0)?.unsigned_abs();
            sent.push((last, ByteBuf::from(row.get::<_, Vec<u8>>(2)?)));
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
            cursor_check: cursor_check(&self.conn)?,
            actor: Some(ByteBuf::from(actor(&self.conn)?.to_bytes().to_vec())),
            cursor: cursor(&self.conn)?,
            changes: grouped,
            request_id: None,
            resume: Vec::new(),
            max_response_bytes: None,
            purges_after: purges_cursor(&self.conn)?,
            vaults: Vec::new(),
        };
        Ok(UploadPage {
            request,
            last,
            sent,
            more,
        })
    }

    /// Applies a response, all or nothing, in one write transaction: acknowledged changes leave
    /// the pending list, downloaded changes are merged, the cursor moves forward (never back, so
    /// a late, stale response is harmless, unless the server says it restarted from the
    /// beginning because the cursor no longer matched its history).
    ///
    /// A response cut off mid-way (`complete: false`) is applied as far as it arrived: its
    /// frames are stored and the cursor moves to the last of them, so the next request resumes
    /// there.
    pub fn apply_response(&mut self, response: &SyncResponse) -> Result<SyncApplied, StoreError> {
        let mut downloads: BTreeMap<EncounterId, Vec<Change>> = BTreeMap::new();
        let mut downloaded = 0u64;
        let mut last_change = None;
        for frame in &response.changes {
            for bytes in &frame.changes {
                let change = parse_change(bytes)?;
                last_change = Some(change.hash());
                downloads.entry(frame.encounter).or_default().push(change);
                downloaded += 1;
            }
        }
        let reached: Option<(u64, Vec<u8>)> = if response.complete {
            Some((response.cursor, response.cursor_check.to_vec()))
        } else if let (Some(frame), Some(hash)) = (response.changes.last(), last_change) {
            Some((frame.through, hash.0.to_vec()))
        } else if response.restarted {
            Some((0, Vec::new()))
        } else {
            None
        };

        let tx = self.write()?;
        // Purges first, so nothing below (a download, a requeue after a restart) brings back
        // what the server erased.
        let mut dropped = 0u64;
        let mut vaults_dropped = 0u64;
        for notice in &response.purges {
            if drop_purged(&tx, notice.encounter, notice.kind)? {
                match notice.kind {
                    PurgeKind::Whole => dropped += 1,
                    PurgeKind::VaultOnly => vaults_dropped += 1,
                }
            }
        }
        for rejection in &response.rejected {
            if rejection.reason == RejectReason::Purged
                && drop_purged(&tx, rejection.encounter, PurgeKind::Whole)?
            {
                dropped += 1;
            }
        }
        put_setting(&tx, "purges_cursor", &response.purges_through.to_string())?;
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
        let vaults_acknowledged = apply_vault_outcome(&tx, response)?;
        for (id, changes) in downloads {
            if is_purged(&tx, id)? {
                continue;
            }
            let mut document =
                load_document(&tx, id, None)?.unwrap_or_else(EncounterDocument::empty);
            let candidates = merge_with_held(&tx, id, &mut document, changes)?;
            save_merged(&tx, id, &mut document, &candidates)?;
        }
        if response.restarted {
            requeue_own_changes(&tx)?;
        }
        let reused: BTreeSet<EncounterId> = response
            .rejected
            .iter()
            .filter(|r| r.reason == RejectReason::ActorReused)
            .map(|r| r.encounter)
            .collect();
        let actor_renewed = !reused.is_empty();
        if actor_renewed {
            renew_actor(&tx, &reused)?;
        } else if let Some((position, check)) = reached
            && (response.restarted || position >= cursor(&tx)?)
        {
            put_setting(&tx, "cursor", &position.to_string())?;
            put_setting(&tx, "cursor_check", &bs58::encode(check).into_string())?;
        }
        let rebased = if response.more || !response.complete || actor_renewed {
            0
        } else {
            make_edits_again(&tx)?
        };
        tx.commit()?;
        if dropped + vaults_dropped > 0 {
            self.checkpoint()?;
        }
        Ok(SyncApplied {
            acknowledged,
            downloaded,
            rejected: response.rejected.clone(),
            actor_renewed,
            rebased,
            dropped,
            vaults_dropped,
            vaults_acknowledged,
        })
    }

    /// Drops this store's copy of encounter `id` (or only of its identity vault, for
    /// [`PurgeKind::VaultOnly`]) in one transaction, then clears the bytes from the files (see
    /// [`DeviceStore::checkpoint`]). Returns whether the store held anything of it; a whole purge
    /// also drops unsent edits. Sync applies purge notices the same way, in
    /// [`DeviceStore::apply_response`].
    pub fn drop_encounter(&mut self, id: EncounterId, kind: PurgeKind) -> Result<bool, StoreError> {
        let tx = self.write()?;
        let dropped = drop_purged(&tx, id, kind)?;
        tx.commit()?;
        self.checkpoint()?;
        Ok(dropped)
    }

    /// Copies the write-ahead log into the store file and truncates it to nothing. Deleted rows
    /// are zeroed in the file (`secure_delete`), but older copies of their pages stay in the
    /// log until it is checkpointed; after a purge they must not.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy != 0 {
            // Another connection (the app's UI thread) is reading: the log is cleared at the
            // next checkpoint.
            tracing::warn!("the store's log could not be truncated yet: another reader is open");
        }
        Ok(())
    }

    /// The changes among `wanted` that this store holds (acknowledged long ago or not), grouped
    /// by encounter in causal order, to send to a server that lacks them.
    pub fn wanted_changes(
        &self,
        wanted: &[WantedChanges],
    ) -> Result<Vec<EncounterChanges>, StoreError> {
        let mut out = Vec::new();
        for group in wanted {
            let Some(mut document) = load_document(&self.conn, group.encounter, None)? else {
                continue;
            };
            let hashes: BTreeSet<&[u8]> = group.hashes.iter().map(|h| h.as_slice()).collect();
            let changes: Vec<ByteBuf> = document
                .changes()
                .iter()
                .filter(|change| hashes.contains(change.hash().0.as_slice()))
                .map(|change| ByteBuf::from(change.raw_bytes().to_vec()))
                .collect();
            if !changes.is_empty() {
                out.push(EncounterChanges {
                    encounter: group.encounter,
                    changes,
                });
            }
        }
        Ok(out)
    }

    /// Changes received but waiting for their dependencies.
    pub fn held_count(&self) -> Result<u64, StoreError> {
        count(&self.conn, "SELECT count(*) FROM held_changes", [])
    }
}

/// Deletes the vaults the server acknowledged, notes why it refused others, and takes the
/// server's current protection-officer keys. Returns how many vaults were acknowledged.
fn apply_vault_outcome(conn: &Connection, response: &SyncResponse) -> Result<u64, StoreError> {
    let mut acknowledged = 0;
    for id in &response.vaults_accepted {
        acknowledged +=
            conn.execute("DELETE FROM vault_outbox WHERE id = ?1", [id.as_slice()])? as u64;
    }
    for rejection in &response.vaults_rejected {
        conn.execute(
            "UPDATE vault_outbox SET rejected = ?2 WHERE id = ?1",
            params![rejection.id.as_slice(), rejection.reason],
        )?;
    }
    // A response cut before its head never reaches here; a whole head always carries the keys.
    put_setting(
        conn,
        "vault_recipients",
        &serde_json::to_string(&response.vault_recipients).expect("serialisable"),
    )?;
    Ok(acknowledged)
}

/// One sealed vault waiting in the outbox, as `device vaults` would list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxVault {
    pub id: String,
    pub encounter: EncounterId,
    pub sealed_at: String,
    pub recipients: Vec<String>,
    /// Why the server last refused it, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl DeviceStore {
    /// The protection officers' public keys the server last sent (empty before the first sync).
    pub fn vault_recipients(&self) -> Result<Vec<String>, StoreError> {
        setting(&self.conn, "vault_recipients")?
            .map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Seals identity data of encounter `id` to the protection officers' keys and keeps only the
    /// envelope, to upload at the next sync. Refused for an encounter that is not a UASC or
    /// missing-person case, and before the device has learned any key.
    pub fn seal_vault(
        &mut self,
        id: EncounterId,
        contents: &VaultContents,
    ) -> Result<SealedVault, StoreError> {
        let tx = self.write()?;
        enrolment(&tx)?.ok_or(StoreError::NotEnrolled)?;
        let encounter = load_document(&tx, id, None)?
            .ok_or(StoreError::NotFound(id))?
            .encounter()?;
        if !encounter.is_protection_case() {
            return Err(StoreError::NotAVaultCase(id));
        }
        let recipients: Vec<String> = setting(&tx, "vault_recipients")?
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        if recipients.is_empty() {
            return Err(VaultError::NoRecipients.into());
        }
        let sealed = vault::seal(contents, id, &recipients)?;
        tx.execute(
            "INSERT INTO vault_outbox (id, encounter, envelope) VALUES (?1, ?2, ?3)",
            params![sealed.id.as_slice(), id.as_bytes(), sealed.to_cbor()],
        )?;
        tx.commit()?;
        tracing::debug!(encounter = %id, "identity data sealed");
        Ok(sealed)
    }

    /// Sealed vaults waiting for the server, oldest first, leaving out `skip` (those already
    /// sent in this sync), up to about `max_bytes` (always at least one) and
    /// [`crate::protocol::MAX_VAULTS_PER_REQUEST`]. The flag says more wait.
    pub fn vault_page(
        &self,
        skip: &std::collections::HashSet<ByteBuf>,
        max_bytes: usize,
    ) -> Result<(Vec<SealedVault>, bool), StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT id, envelope FROM vault_outbox ORDER BY seq")?;
        let mut rows = statement.query([])?;
        let mut page = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next()? {
            let id = ByteBuf::from(row.get::<_, Vec<u8>>(0)?);
            if skip.contains(&id) {
                continue;
            }
            let envelope: Vec<u8> = row.get(1)?;
            if !page.is_empty()
                && (bytes + envelope.len() > max_bytes
                    || page.len() >= crate::protocol::MAX_VAULTS_PER_REQUEST)
            {
                return Ok((page, true));
            }
            bytes += envelope.len();
            page.push(
                vault::decode_sealed(&envelope)
                    .map_err(|e| StoreError::Corrupt(format!("a sealed vault: {e}")))?,
            );
        }
        Ok((page, false))
    }

    /// Sealed vaults not yet acknowledged by the server.
    pub fn vault_outbox(&self) -> Result<Vec<OutboxVault>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT envelope, rejected FROM vault_outbox ORDER BY seq")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Option<String>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (envelope, refused) = row?;
            let sealed = vault::decode_sealed(&envelope)
                .map_err(|e| StoreError::Corrupt(format!("a sealed vault: {e}")))?;
            out.push(OutboxVault {
                id: vault::hex(&sealed.id),
                encounter: sealed.encounter,
                sealed_at: sealed.sealed_at,
                recipients: sealed.recipients,
                refused,
            });
        }
        Ok(out)
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Stores for the unit tests of this crate.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A store in `dir`, enrolled as a new field device of `team` (no server needed).
    pub(crate) fn enrolled_store(dir: &tempfile::TempDir, name: &str, team: &str) -> DeviceStore {
        let mut store = DeviceStore::open(dir.path().join(name)).unwrap();
        store
            .enrol(&Enrolment {
                server_url: "http://127.0.0.1:9".into(),
                token: "t".into(),
                device_id: DeviceId::random(),
                team: team.into(),
                role: "field".into(),
                agent: "agent-7".into(),
            })
            .unwrap();
        store
    }

    /// A whole response that acknowledges `accepted`, carries `download` (one encounter's
    /// changes) if any, and moves the cursor to `cursor`.
    pub(crate) fn response(
        accepted: Vec<ByteBuf>,
        download: Option<(EncounterId, Vec<ByteBuf>)>,
        cursor: u64,
    ) -> SyncResponse {
        SyncResponse {
            protocol: PROTOCOL_VERSION,
            accepted,
            rejected: vec![],
            wanted: vec![],
            resumed: vec![],
            changes: download
                .map(|(encounter, changes)| crate::protocol::ResponseFrame {
                    encounter,
                    changes,
                    through: 0,
                })
                .into_iter()
                .collect(),
            cursor,
            cursor_check: ByteBuf::new(),
            restarted: false,
            more: false,
            purges: vec![],
            purges_through: 0,
            complete: true,
            vault_recipients: vec![],
            vaults_accepted: vec![],
            vaults_rejected: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrolled(dir: &tempfile::TempDir, name: &str) -> DeviceStore {
        test_support::enrolled_store(dir, name, "sonora")
    }

    fn example() -> Encounter {
        serde_json::from_str(r#"{"services":["rescue"],"counts":{"m":{"18-59":2}}}"#).unwrap()
    }

    fn purge_notice(seq: u64, encounter: EncounterId, kind: PurgeKind) -> SyncResponse {
        let mut response = test_support::response(vec![], None, 0);
        response.purges = vec![crate::protocol::PurgeNotice {
            seq,
            encounter,
            kind,
        }];
        response.purges_through = seq;
        response
    }

    #[test]
    fn a_purge_notice_drops_the_copy_with_its_unsent_edits_and_moves_the_purge_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled(&dir, "s.db");
        let purged = store.log(example()).unwrap();
        let kept = store.log(example()).unwrap();
        store
            .edit(purged, &["notes=seen again".parse().unwrap()])
            .unwrap();
        let applied = store
            .apply_response(&purge_notice(7, purged, PurgeKind::Whole))
            .unwrap();
        assert_eq!((applied.dropped, applied.vaults_dropped), (1, 0));
        assert_eq!(store.encounter_ids().unwrap(), vec![kept]);
        assert_eq!(
            store.pending_count().unwrap(),
            1,
            "only the kept one's change"
        );
        assert_eq!(store.sync_request().unwrap().purges_after, 7);
        // Told again (a replayed response): nothing more to drop.
        let again = store
            .apply_response(&purge_notice(7, purged, PurgeKind::Whole))
            .unwrap();
        assert_eq!(again.dropped, 0);
    }

    #[test]
    fn a_store_from_before_purges_is_rewritten_once_so_deleted_text_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let marker = "ACKNOWLEDGED-BEFORE-THE-UPGRADE-9d1e";
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO settings (key, value) VALUES ('k', ?1)",
                [marker.repeat(20)],
            )
            .unwrap();
            conn.execute("DELETE FROM settings", []).unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        let holds = || {
            std::fs::read_dir(dir.path()).unwrap().any(|entry| {
                std::fs::read(entry.unwrap().path())
                    .unwrap()
                    .windows(marker.len())
                    .any(|w| w == marker.as_bytes())
            })
        };
        assert!(holds(), "a delete without secure_delete leaves the text");
        DeviceStore::open(&path).unwrap();
        assert!(!holds());
    }

    #[test]
    fn a_vault_purge_drops_only_the_vault_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled(&dir, "s.db");
        let id = store.log(example()).unwrap();
        store
            .conn
            .execute(
                "INSERT INTO vault_outbox (id, encounter, envelope) VALUES (x'01', ?1, x'00')",
                [id.as_bytes()],
            )
            .unwrap();
        let applied = store
            .apply_response(&purge_notice(1, id, PurgeKind::VaultOnly))
            .unwrap();
        assert_eq!((applied.dropped, applied.vaults_dropped), (0, 1));
        assert_eq!(store.encounter_ids().unwrap(), vec![id]);
        assert_eq!(
            count(&store.conn, "SELECT count(*) FROM vault_outbox", []).unwrap(),
            0
        );
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
    fn two_writers_on_one_store_take_turns_without_losing_an_edit() {
        let dir = tempfile::tempdir().unwrap();
        let id = enrolled(&dir, "s.db").log(example()).unwrap();
        let writers: Vec<_> = ["counts.f.0-4", "counts.f.5-11"]
            .into_iter()
            .map(|field| {
                let path = dir.path().join("s.db");
                std::thread::spawn(move || {
                    let mut store = DeviceStore::open(path).unwrap();
                    for n in 1..=25 {
                        store
                            .edit(id, &[format!("{field}={n}").parse().unwrap()])
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let store = DeviceStore::open(dir.path().join("s.db")).unwrap();
        let mut document = store.document(id).unwrap();
        assert_eq!(store.pending_count().unwrap(), 51, "every edit is pending");
        assert_eq!(document.changes().len(), 51, "and in the document");
        let encounter = document.encounter().unwrap();
        assert_eq!(
            (
                encounter.counts.f.from_0_to_4,
                encounter.counts.f.from_5_to_11
            ),
            (25, 25)
        );
        for group in store.sync_request().unwrap().changes {
            for bytes in group.changes {
                let change = Change::from_bytes(bytes.to_vec()).unwrap();
                assert!(document.has_change(&change.hash()));
            }
        }
    }

    #[test]
    fn enrolling_as_another_device_starts_from_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled(&dir, "s.db");
        store.log(example()).unwrap();
        let other = Enrolment {
            device_id: DeviceId::random(),
            ..store.enrolment().unwrap().unwrap()
        };
        assert!(matches!(
            store.enrol(&other),
            Err(StoreError::EnrolledToAnotherDevice { pending: 1, .. })
        ));
        store
            .conn
            .execute("DELETE FROM pending_changes", [])
            .unwrap();
        put_setting(&store.conn, "cursor", "42").unwrap();
        store.enrol(&other).unwrap();
        assert!(store.encounter_ids().unwrap().is_empty());
        assert_eq!(store.cursor().unwrap(), 0);
    }

    /// Two stores of one team holding one encounter, exchanging changes directly.
    fn shared_encounter(dir: &tempfile::TempDir) -> (DeviceStore, DeviceStore, EncounterId) {
        let mut a = enrolled(dir, "a.db");
        let b = enrolled(dir, "b.db");
        let id = a.log(example()).unwrap();
        let (a, b) = exchange(a, b, id);
        (a, b, id)
    }

    fn exchange(
        mut a: DeviceStore,
        mut b: DeviceStore,
        id: EncounterId,
    ) -> (DeviceStore, DeviceStore) {
        let page = |from: &DeviceStore| {
            let changes = from
                .document(id)
                .map(|mut document| document.changes())
                .unwrap_or_default()
                .iter()
                .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
                .collect();
            test_support::response(vec![], Some((id, changes)), 0)
        };
        let (to_b, to_a) = (page(&a), page(&b));
        b.apply_response(&to_b).unwrap();
        a.apply_response(&to_a).unwrap();
        (a, b)
    }

    #[test]
    fn a_rule_broken_by_a_merge_does_not_block_other_edits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b, id) = shared_encounter(&dir);
        a.edit(
            id,
            &[format!("notes={}", "a".repeat(1500)).parse().unwrap()],
        )
        .unwrap();
        b.edit(
            id,
            &[format!("notes={}", "b".repeat(1500)).parse().unwrap()],
        )
        .unwrap();
        let (mut a, _) = exchange(a, b, id);
        let view = a.show(id).unwrap();
        assert_eq!(
            view.problems.len(),
            1,
            "the merged notes are too long, and shown as such"
        );
        assert!(a.edit(id, &["status=closed".parse().unwrap()]).unwrap());
        let err = a
            .edit(id, &["counts.injured=9".parse().unwrap()])
            .unwrap_err();
        assert!(
            err.to_string().contains("counts.injured"),
            "a new broken rule is still refused: {err}"
        );
    }

    #[test]
    fn a_record_with_a_value_the_schema_does_not_know_can_be_repaired_by_an_edit() {
        use automerge::transaction::Transactable;
        let dir = tempfile::tempdir().unwrap();
        let (mut a, b, id) = shared_encounter(&dir);
        // Another app version writes a status this one does not know.
        let mut document = b.document(id).unwrap();
        let mut doc = automerge::AutoCommit::load(&document.save())
            .unwrap()
            .with_actor(ActorId::random());
        doc.put(automerge::ROOT, "status", "archived").unwrap();
        doc.commit();
        let bad = doc.get_last_local_change().unwrap();
        let response = test_support::response(
            vec![],
            Some((id, vec![ByteBuf::from(bad.raw_bytes().to_vec())])),
            0,
        );
        a.apply_response(&response).unwrap();
        assert!(matches!(a.show(id), Err(StoreError::Document(_))));
        assert_eq!(a.raw(id).unwrap()["status"], "archived");
        assert!(a.list().unwrap()[0].problem.is_some());
        assert!(a.edit(id, &["status=closed".parse().unwrap()]).unwrap());
        assert_eq!(a.show(id).unwrap().encounter.status, Status::Closed);
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
        let response =
            |cursor| test_support::response(vec![ByteBuf::from(hash.0.to_vec())], None, cursor);
        assert_eq!(store.apply_response(&response(10)).unwrap().acknowledged, 1);
        assert_eq!(store.pending_count().unwrap(), 0);
        store.apply_response(&response(4)).unwrap();
        assert_eq!(store.cursor().unwrap(), 10);
    }

    #[test]
    fn a_vault_is_sealed_only_for_a_protection_case_once_keys_are_known_and_leaves_when_acknowledged()
     {
        let dir = tempfile::tempdir().unwrap();
        let mut store = enrolled(&dir, "s.db");
        let contents: VaultContents =
            serde_json::from_str(r#"{"names":["Zenaida Quispe-Huarachi"]}"#).unwrap();
        let child = store
            .log(serde_json::from_str(r#"{"counts":{"uasc":1,"f":{"12-17":1}}}"#).unwrap())
            .unwrap();
        let adults = store.log(example()).unwrap();
        assert!(matches!(
            store.seal_vault(child, &contents),
            Err(StoreError::Vault(VaultError::NoRecipients))
        ));
        let (secret, public) = vault::generate_identity();
        let mut keys = test_support::response(vec![], None, 0);
        keys.vault_recipients = vec![public.clone()];
        store.apply_response(&keys).unwrap();
        assert_eq!(store.vault_recipients().unwrap(), [public]);
        assert!(matches!(
            store.seal_vault(adults, &contents),
            Err(StoreError::NotAVaultCase(_))
        ));
        let sealed = store.seal_vault(child, &contents).unwrap();
        assert_eq!(vault::open(&sealed, &secret).unwrap(), contents);
        let (page, more) = store.vault_page(&Default::default(), 1).unwrap();
        assert_eq!((page, more), (vec![sealed.clone()], false));
        let mut refused = keys.clone();
        refused.vaults_rejected = vec![crate::protocol::VaultRejection {
            id: sealed.id.clone(),
            reason: "not yet".into(),
        }];
        store.apply_response(&refused).unwrap();
        assert_eq!(
            store.vault_outbox().unwrap()[0].refused.as_deref(),
            Some("not yet")
        );
        let mut acknowledged = keys;
        acknowledged.vaults_accepted = vec![sealed.id];
        assert_eq!(
            store
                .apply_response(&acknowledged)
                .unwrap()
                .vaults_acknowledged,
            1
        );
        assert!(store.vault_outbox().unwrap().is_empty());
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
        let page = |changes: Vec<ByteBuf>, cursor| {
            test_support::response(vec![], Some((id, changes)), cursor)
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
