//! The append-only audit log: sign-ins, reads of case records and vaults, exports with their
//! declared purpose, purges, enrolments, rotations and revocations.
//!
//! Rows are only ever inserted: triggers in the database refuse `UPDATE` and `DELETE`, and each
//! row's `hash` chains it to the row before, so an edit made around the server (the sqlite3
//! shell on a seized disk) shows up in [`verify`]. From the `seq` kept in `audit_chain` on, the
//! chain is HMAC-SHA256 under the audit key that lives outside the data directory
//! ([`crate::audit_key`]), over the previous hash, the row's `seq` and its fields: the database
//! file alone cannot forge a row. Rows written before that keep their plain SHA-256 chain.
//! [`verify`] also checks that no row is missing up to the last `seq` SQLite handed out, and an
//! operator can anchor the head elsewhere ([`head`], [`Head`]) to catch a log rewritten whole.
//!
//! [`record`] writes only inside a transaction (the server's writer begins them `IMMEDIATE`),
//! so the read of the chain's head and the insert are one step even with another process
//! writing the same file. A row names the actor (a device id, `admin-cli`, or `retention`), the
//! action, and a JSON detail that holds ids and purposes, never case content: purging a record
//! never needs to touch this log.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit_key::MAC_FUNCTION;
use crate::database::now_text;

/// One row of the log, as the auditor reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub detail: serde_json::Value,
    /// Hex SHA-256 chaining this row to the one before; absent on rows older than the chain.
    pub hash: Option<String>,
}

/// The first chain (issue 5): SHA-256 over the previous hash and the row's fields.
fn plain_hash(
    previous: Option<&[u8]>,
    at: &str,
    actor: &str,
    action: &str,
    detail: &str,
) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(previous.unwrap_or(&[]));
    // Lengths first: no two different rows hash the same bytes by shifting a boundary.
    for field in [at, actor, action, detail] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().to_vec()
}

/// What the keyed chain MACs: the previous hash, the row's own `seq`, and its fields.
fn keyed_message(
    previous: Option<&[u8]>,
    seq: i64,
    at: &str,
    actor: &str,
    action: &str,
    detail: &str,
) -> Vec<u8> {
    let mut message = b"auxilio-audit-hmac-v1".to_vec();
    let previous = previous.unwrap_or(&[]);
    message.extend_from_slice(&(previous.len() as u64).to_be_bytes());
    message.extend_from_slice(previous);
    message.extend_from_slice(&seq.to_be_bytes());
    for field in [at, actor, action, detail] {
        message.extend_from_slice(&(field.len() as u64).to_be_bytes());
        message.extend_from_slice(field.as_bytes());
    }
    message
}

fn misuse(text: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
        Some(text.to_string()),
    )
}

/// The MAC of `message` under the key installed on `conn` by [`crate::Database`].
fn keyed_hash(conn: &Connection, message: &[u8]) -> Result<Vec<u8>, rusqlite::Error> {
    let statement = conn.prepare_cached(&format!("SELECT {MAC_FUNCTION}(?1)"));
    let mut statement = match statement {
        Err(err) if err.to_string().contains("no such function") => {
            return Err(misuse(
                "this connection has no audit key: open the database through Database, which installs it",
            ));
        }
        other => other?,
    };
    statement.query_row([message], |row| row.get(0))
}

/// The last `seq` SQLite handed out to the log (0 before the first row).
fn issued_seq(conn: &Connection) -> Result<i64, rusqlite::Error> {
    Ok(conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Where the keyed chain begins, or `None` if its marker is gone.
fn keyed_from_seq(conn: &Connection) -> Result<Option<i64>, rusqlite::Error> {
    conn.query_row(
        "SELECT mac_from_seq FROM audit_chain WHERE id = 1",
        [],
        |row| row.get(0),
    )
    .optional()
}

/// Appends one row, MAC'd under the connection's audit key. Call it inside the transaction
/// that does the audited thing, so the two commit together or not at all; outside one (a
/// connection in autocommit mode) it refuses, since another process could append between the
/// read of the head and the insert ([`crate::Database::write`] is the way in).
pub fn record(
    conn: &Connection,
    actor: &str,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), rusqlite::Error> {
    if conn.is_autocommit() {
        return Err(misuse(
            "audit::record outside a transaction: the change and its audit row must commit together (use Database::write)",
        ));
    }
    let last: Option<(i64, Option<Vec<u8>>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let seq = issued_seq(conn)?.max(last.as_ref().map_or(0, |(seq, _)| *seq)) + 1;
    let previous = last.and_then(|(_, hash)| hash);
    let at = now_text();
    let detail = detail.to_string();
    let hash = keyed_hash(
        conn,
        &keyed_message(previous.as_deref(), seq, &at, actor, action, &detail),
    )?;
    conn.execute(
        "INSERT INTO audit_log (seq, at, actor, action, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![seq, at, actor, action, detail, hash],
    )?;
    Ok(())
}

/// Rows after `after` (a `seq`), oldest first, at most `limit`.
pub fn entries(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<AuditEntry>, rusqlite::Error> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, at, actor, action, detail, hash FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = statement.query_map(params![after, limit], |row| {
        let detail: String = row.get(4)?;
        let hash: Option<Vec<u8>> = row.get(5)?;
        Ok(AuditEntry {
            seq: row.get(0)?,
            at: row.get(1)?,
            actor: row.get(2)?,
            action: row.get(3)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            hash: hash.map(|h| hex(&h)),
        })
    })?;
    rows.collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The newest row of the log as an operator writes it down elsewhere (`SEQ:HASH`), to check
/// later with `auxilio admin audit verify --expect-head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    pub seq: i64,
    /// Hex hash of that row (empty for a row older than the chain).
    pub hash: String,
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a head: write it as SEQ:HASH, as `auxilio admin audit head` prints it")]
pub struct BadHead(String);

impl std::str::FromStr for Head {
    type Err = BadHead;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadHead(text.to_string());
        let (seq, hash) = text.trim().split_once(':').ok_or_else(bad)?;
        let seq = seq.parse().map_err(|_| bad())?;
        if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// The log's newest row, if any.
pub fn head(conn: &Connection) -> Result<Option<Head>, rusqlite::Error> {
    conn.query_row(
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
        [],
        |row| {
            let hash: Option<Vec<u8>> = row.get(1)?;
            Ok(Head {
                seq: row.get(0)?,
                hash: hash.map(|h| hex(&h)).unwrap_or_default(),
            })
        },
    )
    .optional()
}

/// How many broken rows and missing ranges a [`Verification`] lists (all are counted).
pub const LISTED: usize = 1000;

/// An anchored head checked against the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorCheck {
    pub expected: String,
    /// The hash row `seq` has now, or `None` if the row is gone.
    pub found: Option<String>,
    pub holds: bool,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Rows checked (those with a hash).
    pub chained_rows: u64,
    /// Rows older than the chain (no hash), not checked.
    pub unchained_rows: u64,
    /// Rows MAC'd under the audit key (from `keyed_from_seq` on).
    pub keyed_rows: u64,
    /// Where the keyed chain begins; `None` if its marker was removed (the log is then broken).
    pub keyed_from_seq: Option<i64>,
    /// The last `seq` handed out: rows up to it must all be there.
    pub issued_seq: i64,
    /// Rows whose hash does not match their content and their predecessor, all counted.
    pub broken_rows: u64,
    /// The first [`LISTED`] of them.
    pub broken_seqs: Vec<i64>,
    /// Rows missing (deleted) up to `issued_seq`, all counted.
    pub missing_rows: u64,
    /// The first [`LISTED`] runs of missing rows, as `[first, last]`.
    pub missing_seqs: Vec<[i64; 2]>,
    /// The first broken row, if any.
    pub first_broken_seq: Option<i64>,
    /// The first missing row, if any.
    pub first_missing_seq: Option<i64>,
    /// The anchored head, when one was given.
    pub expected_head: Option<AnchorCheck>,
}

impl Verification {
    pub fn intact(&self) -> bool {
        self.broken_rows == 0
            && self.missing_rows == 0
            && self.keyed_from_seq.is_some()
            && self
                .expected_head
                .as_ref()
                .is_none_or(|anchor| anchor.holds)
    }

    fn broken(&mut self, seq: i64) {
        self.broken_rows += 1;
        self.first_broken_seq.get_or_insert(seq);
        if self.broken_seqs.len() < LISTED {
            self.broken_seqs.push(seq);
        }
    }

    fn missing(&mut self, first: i64, last: i64) {
        self.missing_rows += (last - first + 1) as u64;
        self.first_missing_seq.get_or_insert(first);
        if self.missing_seqs.len() < LISTED {
            self.missing_seqs.push([first, last]);
        }
    }
}

/// Walks the whole log and checks every row (see [`verify_anchored`]).
pub fn verify(conn: &Connection) -> Result<Verification, rusqlite::Error> {
    verify_anchored(conn, None)
}

/// Walks the whole log: every row's hash (plain or keyed, by where the keyed chain begins),
/// every `seq` from 1 to the last one handed out, and, given `anchor`, that its row is still
/// there with that hash. Needs a connection with the audit key ([`crate::Database::read`]).
pub fn verify_anchored(
    conn: &Connection,
    anchor: Option<&Head>,
) -> Result<Verification, rusqlite::Error> {
    let keyed_from = keyed_from_seq(conn)?;
    let mut report = Verification {
        chained_rows: 0,
        unchained_rows: 0,
        keyed_rows: 0,
        keyed_from_seq: keyed_from,
        issued_seq: issued_seq(conn)?,
        broken_rows: 0,
        broken_seqs: Vec::new(),
        missing_rows: 0,
        missing_seqs: Vec::new(),
        first_broken_seq: None,
        first_missing_seq: None,
        expected_head: None,
    };
    // Without its marker, every row must carry the key's MAC.
    let keyed_from = keyed_from.unwrap_or(1);
    let mut statement =
        conn.prepare("SELECT seq, at, actor, action, detail, hash FROM audit_log ORDER BY seq")?;
    let mut rows = statement.query([])?;
    let mut previous_hash: Option<Vec<u8>> = None;
    let mut next_seq = 1;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        if seq > next_seq {
            report.missing(next_seq, seq - 1);
        }
        next_seq = seq + 1;
        let hash: Option<Vec<u8>> = row.get(5)?;
        let Some(hash) = hash else {
            report.unchained_rows += 1;
            if report.chained_rows > 0 || seq >= keyed_from {
                // A row without a hash after the chain began was written around the server.
                report.broken(seq);
            }
            continue;
        };
        report.chained_rows += 1;
        let (at, actor, action, detail): (String, String, String, String) =
            (row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?);
        let expected = if seq >= keyed_from {
            report.keyed_rows += 1;
            keyed_hash(
                conn,
                &keyed_message(previous_hash.as_deref(), seq, &at, &actor, &action, &detail),
            )?
        } else {
            plain_hash(previous_hash.as_deref(), &at, &actor, &action, &detail)
        };
        if expected != hash {
            report.broken(seq);
        }
        previous_hash = Some(hash);
    }
    if report.issued_seq >= next_seq {
        // The newest rows were deleted: SQLite remembers it handed their numbers out.
        report.missing(next_seq, report.issued_seq);
    }
    if let Some(anchor) = anchor {
        let found: Option<Option<Vec<u8>>> = conn
            .query_row(
                "SELECT hash FROM audit_log WHERE seq = ?1",
                [anchor.seq],
                |row| row.get(0),
            )
            .optional()?;
        let found = found.map(|hash| hash.map(|h| hex(&h)).unwrap_or_default());
        report.expected_head = Some(AnchorCheck {
            expected: anchor.to_string(),
            holds: found.as_deref() == Some(anchor.hash.as_str()),
            found,
        });
    }
    Ok(report)
}

/// CSV of audit rows (RFC 4180 quoting), with a header row.
pub fn to_csv(entries: &[AuditEntry]) -> String {
    let quote = |field: &str| {
        if field.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", field.replace('"', "\"\""))
        } else {
            field.to_string()
        }
    };
    let mut out = String::from("seq,at,actor,action,detail,hash\n");
    for entry in entries {
        let fields = [
            entry.seq.to_string(),
            entry.at.clone(),
            entry.actor.clone(),
            entry.action.clone(),
            entry.detail.to_string(),
            entry.hash.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| quote(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, crate::Database) {
        let dir = tempfile::tempdir().unwrap();
        // A data directory inside the temporary one, so its audit key goes away with it.
        let db = crate::Database::open(&dir.path().join("data")).unwrap();
        (dir, db)
    }

    fn record_rows(db: &crate::Database, rows: usize) {
        db.write(|conn| {
            for n in 0..rows {
                record(
                    conn,
                    "admin-cli",
                    "device.enroll",
                    serde_json::json!({ "n": n }),
                )?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .unwrap();
    }

    #[test]
    fn the_log_refuses_updates_and_deletes() {
        let (_dir, db) = database();
        db.write(|conn| {
            record(
                conn,
                "admin-cli",
                "team.add",
                serde_json::json!({"team": "sonora"}),
            )?;
            let update = conn.execute("UPDATE audit_log SET actor = 'nobody'", []);
            assert!(update.unwrap_err().to_string().contains("append-only"));
            let delete = conn.execute("DELETE FROM audit_log", []);
            assert!(delete.unwrap_err().to_string().contains("append-only"));
            Ok::<_, rusqlite::Error>(())
        })
        .unwrap();
    }

    #[test]
    fn a_row_is_refused_outside_a_transaction() {
        let (_dir, db) = database();
        record_rows(&db, 1);
        // `Database::write` always hands out a transaction; a connection of its own in
        // autocommit mode is the only way left to try.
        let conn = Connection::open(db.path()).unwrap();
        let refused = record(&conn, "admin-cli", "team.add", serde_json::json!({})).unwrap_err();
        assert!(
            refused.to_string().contains("outside a transaction"),
            "{refused}"
        );
        assert_eq!(db.read(|conn| entries(conn, 0, 10)).unwrap().len(), 1);
    }

    #[test]
    fn an_edit_made_around_the_server_breaks_the_chain() {
        let (dir, db) = database();
        record_rows(&db, 5);
        let intact = db.read(verify).unwrap();
        assert!(intact.intact(), "{intact:?}");
        assert_eq!((intact.chained_rows, intact.keyed_rows), (5, 5));
        // Someone with the file drops the triggers and rewrites rows 2 and 3.
        let file = dir.path().join("data").join(crate::database::DATABASE_FILE);
        let conn = Connection::open(&file).unwrap();
        conn.execute_batch(
            "DROP TRIGGER audit_log_is_append_only_update;
             UPDATE audit_log SET detail = '{\"n\":99}' WHERE seq IN (2, 3);",
        )
        .unwrap();
        let broken = db.read(verify).unwrap();
        assert_eq!(broken.first_broken_seq, Some(2));
        assert_eq!(broken.broken_seqs, vec![2, 3]);
        conn.execute_batch(
            "DROP TRIGGER audit_log_is_append_only_delete; DELETE FROM audit_log WHERE seq = 4;",
        )
        .unwrap();
        let gap = db.read(verify).unwrap();
        assert_eq!(gap.missing_seqs, vec![[4, 4]]);
        // The row that followed the deleted one no longer chains either.
        assert_eq!(gap.broken_seqs, vec![2, 3, 5]);
        // Without the key, the keyed rows cannot even be checked.
        assert!(verify(&conn).is_err());
    }

    #[test]
    fn rows_chained_before_the_audit_key_keep_verifying_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let before_key = crate::database::MIGRATIONS
            .iter()
            .position(|migration| migration.contains("CREATE TABLE audit_chain"))
            .unwrap();
        {
            // A data directory of the previous format, with a plain SHA-256 chain of 3 rows.
            let conn = Connection::open(data.join(crate::database::DATABASE_FILE)).unwrap();
            for migration in &crate::database::MIGRATIONS[..before_key] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", before_key as i64)
                .unwrap();
            let mut previous: Option<Vec<u8>> = None;
            for n in 0..3 {
                let detail = format!("{{\"n\":{n}}}");
                let at = "2026-01-01T00:00:00Z";
                let hash = plain_hash(previous.as_deref(), at, "admin-cli", "team.add", &detail);
                conn.execute(
                    "INSERT INTO audit_log (at, actor, action, detail, hash) VALUES (?1, 'admin-cli', 'team.add', ?2, ?3)",
                    params![at, detail, hash],
                )
                .unwrap();
                previous = Some(hash);
            }
        }
        let db = crate::Database::open(&data).unwrap();
        record_rows(&db, 2);
        let report = db.read(verify).unwrap();
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.keyed_from_seq, Some(4));
        assert_eq!((report.chained_rows, report.keyed_rows), (5, 2));
    }

    #[test]
    fn a_head_reads_back_from_its_text() {
        let (_dir, db) = database();
        record_rows(&db, 2);
        let head = db.read(head).unwrap().unwrap();
        assert_eq!(head.seq, 2);
        assert_eq!(head.to_string().parse::<Head>().unwrap(), head);
        assert!("2".parse::<Head>().is_err());
        assert!("x:ab".parse::<Head>().is_err());
        let holds = db.read(|conn| verify_anchored(conn, Some(&head))).unwrap();
        assert!(holds.intact(), "{holds:?}");
        let other = Head {
            seq: 2,
            hash: "00".into(),
        };
        let differs = db.read(|conn| verify_anchored(conn, Some(&other))).unwrap();
        assert!(!differs.intact());
    }

    #[test]
    fn csv_quotes_json_details() {
        let entry = AuditEntry {
            seq: 1,
            at: "2026-11-28T00:00:00Z".into(),
            actor: "admin-cli".into(),
            action: "export".into(),
            detail: serde_json::json!({"purpose": "monthly, report"}),
            hash: None,
        };
        let csv = to_csv(&[entry]);
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            r#"1,2026-11-28T00:00:00Z,admin-cli,export,"{""purpose"":""monthly, report""}","#
        );
    }
}
