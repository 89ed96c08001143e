//! The change store as the modules above it read it: the stored changes of an encounter, its
//! merged document and stored columns, and what earlier sync requests stored (`request_outcomes`).
//!
//! The ledger writes these tables; [`crate::purge`], [`crate::vault`] and [`crate::retention`]
//! read them (and a purge scrubs them) through this module, so none of them imports the
//! ledger, and the ledger imports them.

use std::collections::{BTreeSet, HashSet};

use automerge::Change;
use auxilio_core::EncounterId;
use auxilio_core::document::EncounterDocument;
use auxilio_core::protocol::{self, Rejection};
use rusqlite::{Connection, OptionalExtension, params};
use serde_bytes::ByteBuf;

/// Reading the change store failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Stored bytes do not decode (a change, a document, an outcome).
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
}

/// What the server keeps about a stored encounter beside its merged document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEncounter {
    pub team: String,
    pub received_at: String,
    pub updated_at: String,
    pub occurred_at: String,
    pub clock_suspect: bool,
    pub complete: bool,
    /// The validation problems, as JSON text.
    pub problems: String,
}

/// The stored columns of encounter `id`, or `None` if the server holds no such encounter.
pub fn stored_encounter(
    conn: &Connection,
    id: EncounterId,
) -> Result<Option<StoredEncounter>, rusqlite::Error> {
    conn.query_row(
        "SELECT team, received_at, updated_at, occurred_at, clock_suspect, complete, problems
         FROM encounters WHERE id = ?1",
        [id.as_bytes()],
        |r| {
            Ok(StoredEncounter {
                team: r.get(0)?,
                received_at: r.get(1)?,
                updated_at: r.get(2)?,
                occurred_at: r.get(3)?,
                clock_suspect: r.get(4)?,
                complete: r.get(5)?,
                problems: r.get(6)?,
            })
        },
    )
    .optional()
}

/// Loads the merged document of an encounter; if earlier changes were stored before their
/// dependencies, every stored change is applied again so none is left out.
pub fn load_document(
    conn: &Connection,
    id: EncounterId,
) -> Result<Option<EncounterDocument>, ChangesError> {
    let row: Option<(Vec<u8>, bool)> = conn
        .query_row(
            "SELECT document, complete FROM encounters WHERE id = ?1",
            [id.as_bytes()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some((bytes, complete)) = row else {
        return Ok(None);
    };
    let mut document =
        EncounterDocument::load(&bytes, None).map_err(|e| ChangesError::Corrupt(e.to_string()))?;
    if !complete {
        document
            .apply_changes(stored_changes(conn, id)?)
            .map_err(|e| ChangesError::Corrupt(e.to_string()))?;
    }
    Ok(Some(document))
}

/// The stored changes of encounter `id`, in the order they were committed.
pub fn stored_changes(conn: &Connection, id: EncounterId) -> Result<Vec<Change>, ChangesError> {
    let mut statement =
        conn.prepare("SELECT change FROM changes WHERE encounter = ?1 ORDER BY seq")?;
    let rows = statement.query_map([id.as_bytes()], |row| row.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for bytes in rows {
        out.push(Change::from_bytes(bytes?).map_err(|e| ChangesError::Corrupt(e.to_string()))?);
    }
    Ok(out)
}

/// What one upload stored and refused, kept in `request_outcomes`.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Outcome {
    pub(crate) accepted: Vec<ByteBuf>,
    pub(crate) rejected: Vec<Rejection>,
}

/// Removes encounter `encounter` from every stored request outcome (its refusals, and the
/// hashes of its changes among those acknowledged): a purge leaves nothing naming its changes.
/// Only the outcomes holding its id or one of its hashes (found by a byte search in SQL) are
/// decoded and rewritten.
pub fn forget_outcomes_of(tx: &Connection, encounter: EncounterId) -> Result<(), ChangesError> {
    let hashes: HashSet<Vec<u8>> = tx
        .prepare("SELECT hash FROM changes WHERE encounter = ?1")?
        .query_map([encounter.as_bytes()], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut naming = tx.prepare("SELECT seq FROM request_outcomes WHERE instr(outcome, ?1) > 0")?;
    let mut candidates: BTreeSet<i64> = BTreeSet::new();
    for needle in hashes
        .iter()
        .map(Vec::as_slice)
        .chain([encounter.as_bytes().as_slice()])
    {
        for seq in naming.query_map([needle], |row| row.get(0))? {
            candidates.insert(seq?);
        }
    }
    for seq in candidates {
        let bytes: Vec<u8> = tx.query_row(
            "SELECT outcome FROM request_outcomes WHERE seq = ?1",
            [seq],
            |row| row.get(0),
        )?;
        let mut outcome: Outcome = ciborium::from_reader(bytes.as_slice())
            .map_err(|e| ChangesError::Corrupt(format!("a stored request outcome: {e}")))?;
        outcome
            .accepted
            .retain(|hash| !hashes.contains(hash.as_slice()));
        outcome.rejected.retain(|r| r.encounter != encounter);
        tx.execute(
            "UPDATE request_outcomes SET outcome = ?2 WHERE seq = ?1",
            params![seq, protocol::encode(&outcome)],
        )?;
    }
    Ok(())
}
