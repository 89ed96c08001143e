//! Erasure: an authorised purge of an encounter, or of its identity vault only, that removes the
//! data from the server's stored history, not just from its current state.
//!
//! Automerge keeps every change, so hiding a value in a new change would keep it in the history
//! (and in every device's copy). A whole purge instead deletes the encounter's changes, its merged
//! document and every index row derived from them (taking it out of the map and stats
//! aggregates), in one transaction, and leaves a tombstone in `purges`: the encounter's id, team,
//! kind and time, never what it held, nor the reason (that goes to the audit log). Nothing is
//! re-created: the document is gone. The tombstone does three things:
//!
//! - devices that sync afterwards receive it as a [`PurgeNotice`] and drop their copies
//!   (`DeviceStore::apply_response`);
//! - a device that still uploads changes of the encounter is refused with
//!   [`RejectReason::Purged`](auxilio_core::protocol::RejectReason::Purged) and drops them;
//! - `auxilio reindex` has nothing to rebuild it from.
//!
//! The purged changes' log positions and hashes stay in `purged_changes`, so a device whose
//! cursor points at one is not sent its whole team again on a 2G link.
//!
//! The bytes must leave the disk too: the server's connections run with `secure_delete` (deleted
//! rows are overwritten with zeros in their pages, freed pages included), and after the purge
//! commits the write-ahead log, which still holds the pages as they were, is checkpointed and
//! truncated ([`clear_files`]).

use auxilio_core::EncounterId;
use auxilio_core::protocol::{PurgeKind, PurgeNotice};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::access::TeamScope;
use crate::audit;
use crate::changes::{self, ChangesError};
use crate::database::{Database, now_text};
use crate::index;

/// At most this many purge notices go in one sync response; a device with more to catch up on
/// gets them over the next requests (`more`).
pub const MAX_NOTICES_PER_RESPONSE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error(
        "no encounter {0} on this server: check the id (`auxilio device list`, or GET /v1/encounters)"
    )]
    NotFound(EncounterId),
    #[error("encounter {encounter} was already purged on {purged_at}")]
    AlreadyPurged {
        encounter: EncounterId,
        purged_at: String,
    },
    #[error(
        "a purge needs a reason for the audit log (e.g. --reason \"retention: vault after hand-over\")"
    )]
    MissingReason,
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Stored(#[from] ChangesError),
}

/// What one purge removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    pub encounter: EncounterId,
    pub team: String,
    pub kind: PurgeKind,
    /// The tombstone's position in the purge log.
    pub seq: u64,
    pub purged_at: String,
    /// Stored changes deleted (0 for a vault purge).
    pub changes_removed: u64,
    /// Sealed identity envelopes deleted.
    pub vault_envelopes_removed: u64,
}

/// Purges `encounter` (or only its vault), audited as `actor` with `reason`, in one immediate
/// transaction; then clears the write-ahead log so the bytes are gone from the data directory.
pub fn purge(
    database: &Database,
    encounter: EncounterId,
    kind: PurgeKind,
    reason: &str,
    actor: &str,
) -> Result<PurgeReport, PurgeError> {
    let report = database.write(|tx| purge_in(tx, encounter, kind, reason, actor))?;
    clear_files(database)?;
    Ok(report)
}

/// [`purge`] inside the caller's transaction (a retention sweep purges a batch in one); the
/// caller runs [`clear_files`] after its commit.
pub fn purge_in(
    tx: &Connection,
    encounter: EncounterId,
    kind: PurgeKind,
    reason: &str,
    actor: &str,
) -> Result<PurgeReport, PurgeError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(PurgeError::MissingReason);
    }
    if let Some(purged_at) = whole_purge_time(tx, encounter)? {
        return Err(PurgeError::AlreadyPurged {
            encounter,
            purged_at,
        });
    }
    let team: String = tx
        .query_row(
            "SELECT team FROM encounters WHERE id = ?1",
            [encounter.as_bytes()],
            |row| row.get(0),
        )
        .optional()?
        .ok_or(PurgeError::NotFound(encounter))?;
    let vault_envelopes_removed = delete_vault_envelopes(tx, encounter)?;
    let mut changes_removed = 0;
    if kind == PurgeKind::Whole {
        // The positions stay recognisable to device cursors; the bytes go.
        changes_removed = tx.execute(
            "INSERT INTO purged_changes (seq, hash) SELECT seq, hash FROM changes WHERE encounter = ?1",
            [encounter.as_bytes()],
        )? as u64;
        changes::forget_outcomes_of(tx, encounter)?;
        tx.execute(
            "DELETE FROM changes WHERE encounter = ?1",
            [encounter.as_bytes()],
        )?;
        index::remove(tx, encounter)?;
        tx.execute(
            "DELETE FROM encounters WHERE id = ?1",
            [encounter.as_bytes()],
        )?;
    }
    let purged_at = now_text();
    tx.execute(
        "INSERT INTO purges (encounter, team, kind, purged_at) VALUES (?1, ?2, ?3, ?4)",
        params![encounter.as_bytes(), team, kind.as_str(), purged_at],
    )?;
    let seq = tx.last_insert_rowid().unsigned_abs();
    audit::record(
        tx,
        actor,
        "encounter.purge",
        serde_json::json!({
            "encounter": encounter.to_string(),
            "kind": kind.as_str(),
            "reason": reason,
            "changes_removed": changes_removed,
            "vault_envelopes_removed": vault_envelopes_removed,
        }),
    )?;
    tracing::info!(%encounter, kind = kind.as_str(), changes_removed, vault_envelopes_removed, %actor, "purged");
    Ok(PurgeReport {
        encounter,
        team,
        kind,
        seq,
        purged_at,
        changes_removed,
        vault_envelopes_removed,
    })
}

/// Why `changes` may not be stored, if one of them, or a change one of them depends on, is a
/// purged change: kept on an old backup of a phone, it would bring the purged text back, under
/// any encounter id it is filed under. The hashes in `purged_changes` say nothing of the content.
pub fn purged_change_in(
    conn: &Connection,
    changes: &[automerge::Change],
) -> Result<Option<String>, rusqlite::Error> {
    let mut purged = conn.prepare_cached("SELECT 1 FROM purged_changes WHERE hash = ?1 LIMIT 1")?;
    for change in changes {
        if purged.exists([change.hash().0.as_slice()])? {
            return Ok(Some(format!(
                "change {} belongs to a purged encounter; drop this device's copy",
                change.hash()
            )));
        }
        for dep in change.deps() {
            if purged.exists([dep.0.as_slice()])? {
                return Ok(Some(format!(
                    "change {} follows change {dep} of a purged encounter; drop this device's copy",
                    change.hash()
                )));
            }
        }
    }
    Ok(None)
}

/// When encounter `encounter` was purged whole, if it was.
pub fn whole_purge_time(
    conn: &Connection,
    encounter: EncounterId,
) -> Result<Option<String>, rusqlite::Error> {
    Ok(tombstone(conn, encounter)?
        .filter(|(kind, _)| *kind == PurgeKind::Whole)
        .map(|(_, at)| at))
}

/// The purge encounter `encounter` had, if any, with its time: a whole purge if there was one,
/// else its latest vault purge.
pub fn tombstone(
    conn: &Connection,
    encounter: EncounterId,
) -> Result<Option<(PurgeKind, String)>, rusqlite::Error> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT kind, purged_at FROM purges WHERE encounter = ?1
             ORDER BY kind = 'whole' DESC, seq DESC LIMIT 1",
            [encounter.as_bytes()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(kind, at)| PurgeKind::parse(&kind).map(|kind| (kind, at))))
}

/// Deletes the encounter's sealed identity envelopes (they live outside the Automerge document,
/// in `vault_envelopes`, see [`crate::vault`]).
fn delete_vault_envelopes(tx: &Connection, encounter: EncounterId) -> Result<u64, rusqlite::Error> {
    Ok(tx.execute(
        "DELETE FROM vault_envelopes WHERE encounter = ?1",
        [encounter.as_bytes()],
    )? as u64)
}

/// Encounters with sealed identity envelopes: what a vault retention sweep looks at.
pub fn encounters_with_vault(conn: &Connection) -> Result<Vec<EncounterId>, rusqlite::Error> {
    let mut statement =
        conn.prepare("SELECT DISTINCT encounter FROM vault_envelopes ORDER BY encounter")?;
    let ids = statement
        .query_map([], |row| row.get::<_, Vec<u8>>(0))?
        .filter_map(|id| id.ok().and_then(|id| EncounterId::from_slice(&id).ok()))
        .collect();
    Ok(ids)
}

/// After a purge's commit: copies the write-ahead log into the database file and truncates the
/// log to nothing ([`Database::clear_write_ahead_log`]), so the purged bytes leave the data
/// directory.
pub fn clear_files(database: &Database) -> Result<(), rusqlite::Error> {
    if !database.clear_write_ahead_log()? {
        tracing::warn!(
            "the write-ahead log could not be truncated after a purge (a reader stayed open); it is cleared at the next checkpoint"
        );
    }
    Ok(())
}

/// The purge notices a device of `scope` has not had (after position `after`), at most
/// [`MAX_NOTICES_PER_RESPONSE`]; the position it has them all up to; and whether more wait. A
/// position past the end of this server's purge log (a server restored from an older backup)
/// starts again from the beginning: applying a notice twice does nothing.
pub fn notices_after(
    conn: &Connection,
    scope: &TeamScope,
    after: u64,
) -> Result<(Vec<PurgeNotice>, u64, bool), ChangesError> {
    let last: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM purges", [], |row| {
        row.get(0)
    })?;
    let last = last.unsigned_abs();
    let after = if after > last { 0 } else { after };
    let mut statement = conn.prepare_cached(
        "SELECT seq, encounter, kind FROM purges WHERE seq > ?1 AND (?2 IS NULL OR team = ?2)
         ORDER BY seq LIMIT ?3",
    )?;
    let rows = statement.query_map(
        params![
            i64::try_from(after).unwrap_or(i64::MAX),
            scope.team(),
            MAX_NOTICES_PER_RESPONSE as i64 + 1
        ],
        |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, String>(2)?,
            ))
        },
    )?;
    let mut notices = Vec::new();
    for row in rows {
        let (seq, encounter, kind) = row?;
        let corrupt = |what: String| ChangesError::Corrupt(format!("purge {seq}: {what}"));
        notices.push(PurgeNotice {
            seq: seq.unsigned_abs(),
            encounter: EncounterId::from_slice(&encounter).map_err(|e| corrupt(e.to_string()))?,
            kind: PurgeKind::parse(&kind).ok_or_else(|| corrupt(format!("unknown kind {kind}")))?,
        });
    }
    let more = notices.len() > MAX_NOTICES_PER_RESPONSE;
    notices.truncate(MAX_NOTICES_PER_RESPONSE);
    let through = match notices.last() {
        Some(notice) if more => notice.seq,
        _ => last,
    };
    Ok((notices, through, more))
}

#[cfg(test)]
pub(crate) mod tests {
    use auxilio_core::store::Enrolment;
    use auxilio_core::{DeviceStore, Encounter};
    use sha2::Digest;

    use auxilio_core::protocol::SyncRequest;

    use super::*;
    use crate::database::Database;
    use crate::directory::{self, Role};
    use crate::ledger::{self, PageLimits};

    /// Text that does not compress, so it is stored as written wherever it is stored.
    fn incompressible(seed: &str, chars: usize) -> String {
        let mut out = String::new();
        let mut counter = 0u64;
        while out.len() < chars {
            let digest = sha2::Sha256::digest(format!("{seed}{counter}"));
            out.extend(digest.iter().map(|b| format!("{b:02x}")));
            counter += 1;
        }
        out.truncate(chars);
        out
    }

    /// The files of `dir` whose bytes contain `needle`.
    pub(crate) fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                std::fs::read(path)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
            })
            .map(|path| path.display().to_string())
            .collect()
    }

    /// A data directory with one team and encounter `record` logged on a phone and synced;
    /// answers the database, the data directory, the encounter's id and the sync request.
    fn stored_encounter(
        dir: &tempfile::TempDir,
        record: serde_json::Value,
    ) -> (Database, std::path::PathBuf, EncounterId, SyncRequest) {
        let data = dir.path().join("data");
        let database = Database::open(&data).unwrap();
        let enrolled = database
            .write(|conn| {
                directory::add_team(conn, "sonora")?;
                directory::enroll(conn, "sonora", Role::Field, "test")
            })
            .unwrap();
        let (device, _) = database
            .read(|conn| directory::authenticate(conn, &enrolled.token))
            .unwrap()
            .unwrap();
        let mut store = DeviceStore::open(dir.path().join("phone.db")).unwrap();
        store
            .enrol(&Enrolment {
                server_url: "http://127.0.0.1:9".into(),
                token: enrolled.token.clone(),
                device_id: enrolled.device_id,
                team: "sonora".into(),
                role: "field".into(),
                agent: "a".into(),
            })
            .unwrap();
        let id = store
            .log(serde_json::from_value::<Encounter>(record).unwrap())
            .unwrap();
        let mut request = store.sync_request().unwrap();
        // Named, so the server keeps its outcome (what a purge must scrub too).
        request.request_id = Some(serde_bytes::ByteBuf::from(vec![7; 16]));
        database
            .write(|conn| ledger::sync(conn, &device, &request, PageLimits::default()))
            .unwrap();
        (database, data, id, request)
    }

    /// A change larger than a page spills into overflow pages; a purge must zero those too, in
    /// the database file and not only in the log.
    #[test]
    fn a_purge_leaves_no_text_in_overflow_pages_or_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("MARKER-{}", incompressible("marker", 40));
        let interventions: Vec<String> = (0..40)
            .map(|i| incompressible(&format!("intervention {i}"), 150))
            .collect();
        let record = serde_json::json!({
            "services": ["first_aid"],
            "notes": format!("{marker} {}", incompressible("notes", 1500)),
            "casualties": {"c1": {"interventions": interventions}},
        });
        let (database, data, id, request) = stored_encounter(&dir, record);
        assert!(
            request.changes[0].changes[0].len() > 8 * 1024,
            "spills over pages"
        );
        clear_files(&database).unwrap();
        assert_eq!(
            files_holding(&data, &marker),
            vec![
                data.join(crate::database::DATABASE_FILE)
                    .display()
                    .to_string()
            ],
            "the checkpointed change is in the database file"
        );

        let hash = automerge::Change::from_bytes(request.changes[0].changes[0].to_vec())
            .unwrap()
            .hash();
        let outcomes_naming_it = || -> i64 {
            database
                .read(|conn| {
                    conn.query_row(
                        "SELECT count(*) FROM request_outcomes WHERE instr(outcome, ?1) > 0",
                        [hash.0.as_slice()],
                        |row| row.get(0),
                    )
                })
                .unwrap()
        };
        assert_eq!(outcomes_naming_it(), 1);

        let report = purge(&database, id, PurgeKind::Whole, "test", "admin-cli").unwrap();
        assert_eq!(report.changes_removed, 1);
        assert_eq!(files_holding(&data, &marker), Vec::<String>::new());
        assert_eq!(
            outcomes_naming_it(),
            0,
            "the request's outcome forgot the change"
        );
    }

    #[test]
    fn a_vault_purge_deletes_only_the_envelopes_and_tells_only_the_team() {
        let dir = tempfile::tempdir().unwrap();
        let (database, data, id, _) =
            stored_encounter(&dir, serde_json::json!({"services": ["first_aid"]}));
        let sealed = "SEALED-ENVELOPE-BYTES-61c0";
        database
            .write(|conn| {
                conn.execute(
                    "INSERT INTO vault_envelopes (id, encounter, team, device, received_at, recipients, ciphertext)
                     VALUES (x'01', ?1, 'sonora', x'02', 't', '[]', CAST(?2 AS BLOB))",
                    params![id.as_bytes(), sealed],
                )
            })
            .unwrap();
        let report = purge(
            &database,
            id,
            PurgeKind::VaultOnly,
            "handed over",
            "admin-cli",
        )
        .unwrap();
        assert_eq!(
            (report.changes_removed, report.vault_envelopes_removed),
            (0, 1)
        );
        assert_eq!(files_holding(&data, sealed), Vec::<String>::new());
        let records: i64 = database
            .read(|conn| {
                conn.query_row(
                    "SELECT count(*) FROM encounters WHERE id = ?1",
                    [id.as_bytes()],
                    |row| row.get(0),
                )
            })
            .unwrap();
        assert_eq!(records, 1, "the record stays");
        let notices = |team: &str| {
            database
                .read(|conn| notices_after(conn, &TeamScope::Only(team.into()), 0))
                .unwrap()
        };
        let notice = PurgeNotice {
            seq: report.seq,
            encounter: id,
            kind: PurgeKind::VaultOnly,
        };
        assert_eq!(notices("sonora"), (vec![notice], report.seq, false));
        assert_eq!(notices("chihuahua"), (vec![], report.seq, false));
    }
}
