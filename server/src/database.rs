//! The server's SQLite database: one file under the data directory, WAL mode, migrations at open.
//!
//! One writer connection (SQLite allows one writer at a time anyway) and a small pool of reader
//! connections. Callers pass closures; the HTTP layer runs them on tokio's blocking threads so
//! SQLite work never stalls the async workers. `synchronous=FULL` makes every commit durable
//! before it returns: the server acknowledges a change only after that.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::audit_key::{self, AuditKey, AuditKeyError};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "auxilio.sqlite";

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    AuditKey(#[from] AuditKeyError),
    #[error(
        "there is no Auxilio data directory at {path}: check --data (or start with `auxilio admin team add NAME`, which creates one)"
    )]
    Missing { path: PathBuf },
    #[error(
        "the database at {path} has format {found}, newer than this build ({supported}); run a newer auxilio"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
}

pub(crate) const MIGRATIONS: &[&str] = &[
    r"
    CREATE TABLE teams (
        name TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    );
    CREATE TABLE devices (
        id BLOB PRIMARY KEY,
        team TEXT NOT NULL REFERENCES teams (name),
        role TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        token_hash BLOB NOT NULL,
        enrolled_at TEXT NOT NULL,
        revoked_at TEXT
    );
    -- The durable truth: every change ever accepted, in the order it was committed.
    -- `seq` is the position devices' cursors point into.
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        encounter BLOB NOT NULL,
        team TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        change BLOB NOT NULL,
        device BLOB NOT NULL,
        actor BLOB NOT NULL,
        received_at TEXT NOT NULL
    );
    CREATE INDEX changes_by_encounter ON changes (encounter, seq);
    CREATE INDEX changes_by_team ON changes (team, seq);
    -- The merged document of each encounter and its index columns, all derived from `changes`
    -- (rebuildable from it).
    CREATE TABLE encounters (
        id BLOB PRIMARY KEY,
        team TEXT NOT NULL,
        document BLOB NOT NULL,
        complete INTEGER NOT NULL DEFAULT 1,
        received_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        status TEXT,
        started_at TEXT,
        occurred_at TEXT NOT NULL,
        clock_suspect INTEGER NOT NULL DEFAULT 0,
        lat REAL,
        lon REAL,
        people INTEGER NOT NULL DEFAULT 0,
        injured INTEGER NOT NULL DEFAULT 0,
        uasc INTEGER NOT NULL DEFAULT 0,
        conflicts INTEGER NOT NULL DEFAULT 0,
        problems TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX encounters_by_team_time ON encounters (team, occurred_at);
    CREATE INDEX encounters_by_time ON encounters (occurred_at);
    CREATE INDEX encounters_by_location ON encounters (lat, lon);
    CREATE TABLE encounter_services (
        encounter BLOB NOT NULL,
        service TEXT NOT NULL,
        PRIMARY KEY (encounter, service)
    ) WITHOUT ROWID;
    CREATE INDEX encounter_services_by_service ON encounter_services (service, encounter);
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
",
    r"
    -- Changes relayed phone-to-phone are uploaded by another device than their author:
    -- `device` is the author (from the change's actor), `uploader` the device that sent it, and
    -- `uploader_actor` the store that sent it (left out of that store's downloads).
    ALTER TABLE changes ADD COLUMN uploader BLOB;
    ALTER TABLE changes ADD COLUMN uploader_actor BLOB;
    UPDATE changes SET uploader = device, uploader_actor = actor;
    CREATE INDEX encounters_incomplete ON encounters (id) WHERE complete = 0;
    -- What each of a device's last uploads stored and refused, committed with its changes, so a
    -- device whose response was lost asks by request id instead of uploading the page again.
    CREATE TABLE request_outcomes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        device BLOB NOT NULL,
        request_id BLOB NOT NULL,
        outcome BLOB NOT NULL
    );
    CREATE UNIQUE INDEX request_outcomes_by_device ON request_outcomes (device, request_id);
",
    r"
    -- Issue 4: what the map, the stats and the exports read, all derived from the merged
    -- documents by `index::update` and rebuilt by `auxilio reindex` (never the only copy).
    -- One row per encounter: the filter dimensions and the counted measures.
    CREATE TABLE encounter_facts (
        key INTEGER PRIMARY KEY,
        encounter BLOB NOT NULL UNIQUE,
        occurred_at TEXT NOT NULL,
        day TEXT NOT NULL,
        team TEXT NOT NULL,
        adm1 TEXT NOT NULL DEFAULT '',
        terrain TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT '',
        triage TEXT NOT NULL DEFAULT '',
        uasc_flag INTEGER NOT NULL DEFAULT 0,
        services INTEGER NOT NULL DEFAULT 0,
        lat REAL,
        lon REAL,
        encounters INTEGER NOT NULL DEFAULT 0,
        people INTEGER NOT NULL DEFAULT 0,
        injured INTEGER NOT NULL DEFAULT 0,
        uasc INTEGER NOT NULL DEFAULT 0,
        deceased INTEGER NOT NULL DEFAULT 0,
        rescues INTEGER NOT NULL DEFAULT 0,
        rescued INTEGER NOT NULL DEFAULT 0,
        f_0_4 INTEGER NOT NULL DEFAULT 0,
        f_5_11 INTEGER NOT NULL DEFAULT 0,
        f_12_17 INTEGER NOT NULL DEFAULT 0,
        f_18_59 INTEGER NOT NULL DEFAULT 0,
        f_60_plus INTEGER NOT NULL DEFAULT 0,
        f_unknown INTEGER NOT NULL DEFAULT 0,
        m_0_4 INTEGER NOT NULL DEFAULT 0,
        m_5_11 INTEGER NOT NULL DEFAULT 0,
        m_12_17 INTEGER NOT NULL DEFAULT 0,
        m_18_59 INTEGER NOT NULL DEFAULT 0,
        m_60_plus INTEGER NOT NULL DEFAULT 0,
        m_unknown INTEGER NOT NULL DEFAULT 0,
        unknown_0_4 INTEGER NOT NULL DEFAULT 0,
        unknown_5_11 INTEGER NOT NULL DEFAULT 0,
        unknown_12_17 INTEGER NOT NULL DEFAULT 0,
        unknown_18_59 INTEGER NOT NULL DEFAULT 0,
        unknown_60_plus INTEGER NOT NULL DEFAULT 0,
        unknown_unknown INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX encounter_facts_by_time ON encounter_facts (occurred_at);
    CREATE TABLE encounter_nationalities (
        key INTEGER NOT NULL,
        nationality TEXT NOT NULL,
        people INTEGER NOT NULL,
        PRIMARY KEY (key, nationality)
    ) WITHOUT ROWID;
    -- Where and when: longitude, latitude and time in years since 1970 (the day's number over
    -- 365.25: a year weighs about as much as a degree in the tree's splits, where days would
    -- make nodes thin slices of time spread over the whole map), keyed by
    -- `encounter_facts.key`. Boxes are 32-bit floats rounded outwards; queries re-check the
    -- exact coordinates and time in `encounter_facts`.
    CREATE VIRTUAL TABLE encounter_locations USING rtree(key, min_lon, max_lon, min_lat, max_lat, min_year, max_year);
    -- Pre-aggregated map cells, one level per zoom: encounters, the sum of their coordinates
    -- (in millionths of a degree, so sums stay exact) and the sum of their keys (for a row of
    -- one encounter, its key) per cell and filter combination.
    CREATE TABLE map_cells (
        level INTEGER NOT NULL,
        cx INTEGER NOT NULL,
        cy INTEGER NOT NULL,
        team TEXT NOT NULL,
        status TEXT NOT NULL,
        triage TEXT NOT NULL,
        uasc_flag INTEGER NOT NULL,
        services INTEGER NOT NULL,
        encounters INTEGER NOT NULL,
        sum_lat_e6 INTEGER NOT NULL,
        sum_lon_e6 INTEGER NOT NULL,
        sum_key INTEGER NOT NULL,
        PRIMARY KEY (level, cx, cy, team, status, triage, uasc_flag, services)
    ) WITHOUT ROWID;
    -- Pre-aggregated counts per day (`grain` 'day', period YYYY-MM-DD) and per month ('month',
    -- YYYY-MM), team, adm1, status and UASC flag; encounters and people per service and per
    -- triage category are columns, so the breakdowns need no more rows. `facet` '' counts every
    -- encounter; `facet` 'service' (or 'triage') with `facet_value` a service code (or triage
    -- category, 'none' without one) counts only the encounters with it, for those filters.
    CREATE TABLE stats_cells (
        grain TEXT NOT NULL,
        period TEXT NOT NULL,
        facet TEXT NOT NULL,
        facet_value TEXT NOT NULL,
        team TEXT NOT NULL,
        adm1 TEXT NOT NULL,
        status TEXT NOT NULL,
        uasc_flag INTEGER NOT NULL,
        encounters INTEGER NOT NULL DEFAULT 0,
        people INTEGER NOT NULL DEFAULT 0,
        injured INTEGER NOT NULL DEFAULT 0,
        uasc INTEGER NOT NULL DEFAULT 0,
        deceased INTEGER NOT NULL DEFAULT 0,
        rescues INTEGER NOT NULL DEFAULT 0,
        rescued INTEGER NOT NULL DEFAULT 0,
        f_0_4 INTEGER NOT NULL DEFAULT 0,
        f_5_11 INTEGER NOT NULL DEFAULT 0,
        f_12_17 INTEGER NOT NULL DEFAULT 0,
        f_18_59 INTEGER NOT NULL DEFAULT 0,
        f_60_plus INTEGER NOT NULL DEFAULT 0,
        f_unknown INTEGER NOT NULL DEFAULT 0,
        m_0_4 INTEGER NOT NULL DEFAULT 0,
        m_5_11 INTEGER NOT NULL DEFAULT 0,
        m_12_17 INTEGER NOT NULL DEFAULT 0,
        m_18_59 INTEGER NOT NULL DEFAULT 0,
        m_60_plus INTEGER NOT NULL DEFAULT 0,
        m_unknown INTEGER NOT NULL DEFAULT 0,
        unknown_0_4 INTEGER NOT NULL DEFAULT 0,
        unknown_5_11 INTEGER NOT NULL DEFAULT 0,
        unknown_12_17 INTEGER NOT NULL DEFAULT 0,
        unknown_18_59 INTEGER NOT NULL DEFAULT 0,
        unknown_60_plus INTEGER NOT NULL DEFAULT 0,
        unknown_unknown INTEGER NOT NULL DEFAULT 0,
        service_orientation_encounters INTEGER NOT NULL DEFAULT 0,
        service_orientation_people INTEGER NOT NULL DEFAULT 0,
        service_humanitarian_aid_encounters INTEGER NOT NULL DEFAULT 0,
        service_humanitarian_aid_people INTEGER NOT NULL DEFAULT 0,
        service_social_assistance_encounters INTEGER NOT NULL DEFAULT 0,
        service_social_assistance_people INTEGER NOT NULL DEFAULT 0,
        service_rescue_encounters INTEGER NOT NULL DEFAULT 0,
        service_rescue_people INTEGER NOT NULL DEFAULT 0,
        service_first_aid_encounters INTEGER NOT NULL DEFAULT 0,
        service_first_aid_people INTEGER NOT NULL DEFAULT 0,
        service_located_missing_encounters INTEGER NOT NULL DEFAULT 0,
        service_located_missing_people INTEGER NOT NULL DEFAULT 0,
        service_legal_advice_encounters INTEGER NOT NULL DEFAULT 0,
        service_legal_advice_people INTEGER NOT NULL DEFAULT 0,
        service_transfer_hospital_encounters INTEGER NOT NULL DEFAULT 0,
        service_transfer_hospital_people INTEGER NOT NULL DEFAULT 0,
        service_transfer_shelter_encounters INTEGER NOT NULL DEFAULT 0,
        service_transfer_shelter_people INTEGER NOT NULL DEFAULT 0,
        service_repatriation_support_encounters INTEGER NOT NULL DEFAULT 0,
        service_repatriation_support_people INTEGER NOT NULL DEFAULT 0,
        service_body_recovery_encounters INTEGER NOT NULL DEFAULT 0,
        service_body_recovery_people INTEGER NOT NULL DEFAULT 0,
        triage_red_encounters INTEGER NOT NULL DEFAULT 0,
        triage_red_people INTEGER NOT NULL DEFAULT 0,
        triage_yellow_encounters INTEGER NOT NULL DEFAULT 0,
        triage_yellow_people INTEGER NOT NULL DEFAULT 0,
        triage_green_encounters INTEGER NOT NULL DEFAULT 0,
        triage_green_people INTEGER NOT NULL DEFAULT 0,
        triage_gray_encounters INTEGER NOT NULL DEFAULT 0,
        triage_gray_people INTEGER NOT NULL DEFAULT 0,
        triage_black_encounters INTEGER NOT NULL DEFAULT 0,
        triage_black_people INTEGER NOT NULL DEFAULT 0,
        triage_none_encounters INTEGER NOT NULL DEFAULT 0,
        triage_none_people INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (grain, facet, facet_value, period, team, adm1, status, uasc_flag)
    ) WITHOUT ROWID;
    CREATE TABLE stats_nationalities (
        grain TEXT NOT NULL,
        period TEXT NOT NULL,
        facet TEXT NOT NULL,
        facet_value TEXT NOT NULL,
        team TEXT NOT NULL,
        status TEXT NOT NULL,
        uasc_flag INTEGER NOT NULL,
        nationality TEXT NOT NULL,
        people INTEGER NOT NULL,
        PRIMARY KEY (grain, facet, facet_value, period, team, status, uasc_flag, nationality)
    ) WITHOUT ROWID;
",
    r"
    -- Issue 5, audit: the log becomes append-only in the database itself, and each row carries
    -- the SHA-256 of the previous row's hash and its own content, so a row edited or removed
    -- behind the server's back (with the sqlite3 shell) breaks the chain that
    -- `auxilio admin audit verify` checks. Rows written before this migration have no hash.
    ALTER TABLE audit_log ADD COLUMN hash BLOB;
    CREATE TRIGGER audit_log_is_append_only_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_is_append_only_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    -- Issue 5, tokens: a device rotating its own token gets a new one that becomes the only
    -- valid one the first time it is used, so a rotation whose answer is lost on a dropping
    -- link does not lock the phone out (its old token still works until then).
    ALTER TABLE devices ADD COLUMN next_token_hash BLOB;
",
    r"
    -- Issue 5: the sealed identity vault. The protection officers' public keys (age X25519),
    -- and the envelopes devices sealed to them: ciphertext only, no key here opens it.
    CREATE TABLE vault_keys (
        public_key TEXT PRIMARY KEY,
        label TEXT,
        added_at TEXT,
        retired_at TEXT
    );
    CREATE TABLE vault_envelopes (
        id BLOB PRIMARY KEY,
        encounter BLOB NOT NULL,
        team TEXT NOT NULL,
        device BLOB NOT NULL,
        sealed_at TEXT,
        received_at TEXT NOT NULL,
        recipients TEXT NOT NULL,
        ciphertext BLOB NOT NULL
    );
    CREATE INDEX vault_envelopes_by_encounter ON vault_envelopes (encounter);
",
    r"
    -- Issue 5, erasure: one tombstone per purge, in the order purges happened. `seq` is the
    -- position devices' purge cursors point into; no reason text here (it is in the audit log).
    CREATE TABLE purges (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        encounter BLOB NOT NULL,
        team TEXT NOT NULL,
        kind TEXT NOT NULL,
        purged_at TEXT NOT NULL
    );
    CREATE INDEX purges_by_encounter ON purges (encounter, kind);
    CREATE INDEX purges_by_team ON purges (team, seq);
    -- The log positions and hashes of purged changes, so a device cursor that points at one
    -- is still recognised (hashes say nothing of the content).
    CREATE TABLE purged_changes (
        seq INTEGER PRIMARY KEY,
        hash BLOB NOT NULL
    );
",
    r"
    -- Issue 10, audit: rows from `mac_from_seq` on are chained with HMAC-SHA256 under the audit
    -- key kept outside the data directory (`audit_key`), so the database file alone cannot
    -- forge a row; the rows before keep their plain SHA-256 chain. Written once, never changed.
    CREATE TABLE audit_chain (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        mac_from_seq INTEGER NOT NULL
    );
    INSERT INTO audit_chain (id, mac_from_seq) VALUES (1, 1 + MAX(
        COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'), 0),
        COALESCE((SELECT MAX(seq) FROM audit_log), 0)));
    CREATE TRIGGER audit_chain_is_fixed_update BEFORE UPDATE ON audit_chain
    BEGIN SELECT RAISE(ABORT, 'the audit chain marker is fixed'); END;
    CREATE TRIGGER audit_chain_is_fixed_delete BEFORE DELETE ON audit_chain
    BEGIN SELECT RAISE(ABORT, 'the audit chain marker is fixed'); END;
",
    r"
    -- Issue 10, relay: each device's Ed25519 relay public key (32 bytes), registered by the device
    -- over its authenticated connection; teammates check relay handshakes against it.
    ALTER TABLE devices ADD COLUMN relay_key BLOB;
",
    r"
    -- Issue 10, vault reseal: the digest a phone sealed an envelope's contents under, kept from
    -- the first upload; a reseal must carry the same (NULL for envelopes sealed before).
    ALTER TABLE vault_envelopes ADD COLUMN digest BLOB;
",
    r"
    -- Issue 10: a change of a purged encounter is refused by its hash, or its dependency's,
    -- under whatever encounter id it is filed (`purge::purged_change_in`).
    CREATE INDEX purged_changes_by_hash ON purged_changes (hash);
    -- Issue 10: new encounters each device filed per UTC day, for the daily ceiling
    -- (`ledger::SyncCaps`); a device's earlier days are deleted as it files on a new one.
    CREATE TABLE device_intake (
        device BLOB NOT NULL,
        day TEXT NOT NULL,
        encounters INTEGER NOT NULL,
        PRIMARY KEY (device, day)
    ) WITHOUT ROWID;
",
    r"
    -- Issue 10, approval: a device an administrator enrolled, or whose token an administrator
    -- rotated, over HTTP awaits the approval of a team lead of its team (or of the operator on
    -- the server's command line) before it reads or writes any case data. Devices enrolled
    -- before this migration stay approved.
    ALTER TABLE devices ADD COLUMN awaiting_approval INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN approved_by TEXT;
    ALTER TABLE devices ADD COLUMN approved_at TEXT;
",
];

/// The position (counted from 1, as `user_version` counts) of the migration that added purges.
fn erasure_migration() -> i64 {
    MIGRATIONS
        .iter()
        .position(|migration| migration.contains("CREATE TABLE purges"))
        .map_or(0, |index| index as i64 + 1)
}

/// Whether a database found at format `version` ran before deletes were zeroed
/// (`secure_delete` came with the purge migration): an existing one that had not had it yet.
fn deletes_were_not_zeroed(version: i64) -> bool {
    version > 0 && version < erasure_migration()
}

const READER_POOL: usize = 4;

#[derive(Debug)]
pub struct Database {
    path: PathBuf,
    audit_key: AuditKey,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Deleted rows (a purge above all) are overwritten with zeros instead of left in free
    // space; see `purge`.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(())
}

impl Database {
    /// Opens the database of an existing data directory; a mistyped `--data` is an error here,
    /// not a new empty database.
    pub fn open_existing(data_dir: &Path) -> Result<Self, DatabaseError> {
        Self::open_existing_with_audit_key(data_dir, None)
    }

    /// [`Database::open_existing`] with the audit key at `audit_key` (`None`: the default
    /// beside the data directory, see [`audit_key::default_path`]).
    pub fn open_existing_with_audit_key(
        data_dir: &Path,
        audit_key: Option<&Path>,
    ) -> Result<Self, DatabaseError> {
        if !data_dir.join(DATABASE_FILE).exists() {
            return Err(DatabaseError::Missing {
                path: data_dir.to_path_buf(),
            });
        }
        Self::open_with_audit_key(data_dir, audit_key)
    }

    /// Opens the database in `data_dir`, creating the directory and running migrations, with
    /// the audit key beside it.
    pub fn open(data_dir: &Path) -> Result<Self, DatabaseError> {
        Self::open_with_audit_key(data_dir, None)
    }

    /// [`Database::open`] with the audit key at `audit_key` (made there if there is none;
    /// `None`: the default beside the data directory).
    pub fn open_with_audit_key(
        data_dir: &Path,
        audit_key: Option<&Path>,
    ) -> Result<Self, DatabaseError> {
        // Owner-only directory and files, created before SQLite opens them (its `-wal` and
        // `-shm` files then take the database file's mode).
        auxilio_core::private_files::create_private_dir(data_dir).map_err(|source| {
            DatabaseError::DataDirectory {
                path: data_dir.to_path_buf(),
                source,
            }
        })?;
        let key_path =
            audit_key.map_or_else(|| audit_key::default_path(data_dir), Path::to_path_buf);
        let audit_key = AuditKey::load_or_create(&key_path, data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        auxilio_core::private_files::prepare_private_database(&path).map_err(|source| {
            DatabaseError::DataDirectory {
                path: data_dir.to_path_buf(),
                source,
            }
        })?;
        let mut writer = Connection::open(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        configure(&writer)?;
        audit_key.install(&writer)?;
        // Every transaction of the writer takes the write lock when it begins, so reading the
        // audit chain's head and appending to it are serialised with other processes (an
        // `auxilio admin` beside the server) instead of failing or forking the chain.
        writer.set_transaction_behavior(TransactionBehavior::Immediate);
        // The version is read inside the write transaction, so two processes opening a new data
        // directory at once cannot both run the migrations.
        let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(DatabaseError::TooNew {
                path,
                found: version,
                supported,
            });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
            if index == 0 {
                tracing::info!(path = %path.display(), "created a new database");
            }
            tracing::info!(version = index + 1, "database migrated");
        }
        tx.commit()?;
        if deletes_were_not_zeroed(version) {
            // This data directory ran before deletes were zeroed (`secure_delete`): its free
            // space may still hold old versions of documents. Rewritten once, so a purge leaves
            // nothing behind (about 2 s for 300 MB on the development machine, file cached; it
            // needs free disk for a second copy), once, at the first start after upgrading.
            tracing::info!(path = %path.display(), "rewriting the database once so deleted data leaves no trace");
            writer.execute_batch("VACUUM")?;
            writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(Self {
            path,
            audit_key,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction of the single writer connection,
    /// committed when it returns `Ok` and rolled back otherwise. The only way to write: a change
    /// and its audit row commit together ([`crate::audit::record`] refuses to write outside a
    /// transaction), and the write lock taken at `BEGIN` serialises this server with an
    /// `auxilio admin` beside it. `synchronous=FULL`: once this returns `Ok` the change is on disk.
    pub fn write<T, E: From<rusqlite::Error>>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = work(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Copies the write-ahead log into the database file and truncates the log to nothing,
    /// outside any transaction (a checkpoint cannot run inside one). After a purge: the deleted
    /// rows are zeroed in the pages the purge wrote, but the log still holds those pages as
    /// they were before, until a checkpoint; TRUNCATE waits (up to the busy timeout) for
    /// readers of older snapshots to finish first. Answers whether the log could be truncated
    /// (`false`: a reader stayed open; it is cleared at the next checkpoint).
    pub fn clear_write_ahead_log(&self) -> Result<bool, rusqlite::Error> {
        let conn = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        Ok(busy == 0)
    }

    /// Runs `work` with a reader connection (sees the last committed state).
    pub fn read<T, E: From<rusqlite::Error>>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                configure(&conn)?;
                self.audit_key.install(&conn)?;
                conn
            }
        };
        let result = work(&conn);
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if readers.len() < READER_POOL {
            readers.push(conn);
        }
        result
    }
}

/// Current time as stored in the database: UTC RFC 3339 with seconds, so text order is time order.
pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory from before purges existed deleted rows without zeroing them; opening it
    /// with this build rewrites it once, so that text is gone from the file.
    #[test]
    fn upgrading_to_purges_clears_text_deleted_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_FILE);
        let marker = "DELETED-BEFORE-THE-UPGRADE-4f2c";
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            let before = erasure_migration() - 1;
            for migration in &MIGRATIONS[..before as usize] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", before).unwrap();
            conn.execute(
                "INSERT INTO teams (name, created_at) VALUES (?1, 't')",
                [marker.repeat(20)],
            )
            .unwrap();
            conn.execute("DELETE FROM teams", []).unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        let holds = || !crate::purge::tests::files_holding(dir.path(), marker).is_empty();
        assert!(holds(), "a delete without secure_delete leaves the text");
        Database::open(dir.path()).unwrap();
        assert!(!holds());
        // Only once: a new database, or one already past the purge migration, is not rewritten.
        assert!(!deletes_were_not_zeroed(0));
        assert!(!deletes_were_not_zeroed(MIGRATIONS.len() as i64));
    }
}
