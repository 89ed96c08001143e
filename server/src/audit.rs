//! The append-only audit log: sign-ins, reads of case records and vaults, exports with their
//! declared purpose, purges, enrolments, rotations and revocations.
//!
//! Rows are only ever inserted: triggers in the database refuse `UPDATE` and `DELETE`, and each
//! row's `hash` is SHA-256 over the previous row's hash and the row's own fields, so an edit made
//! around the server (the sqlite3 shell on a seized disk) shows up in [`verify`]. A row names the
//! actor (a device id, `admin-cli`, or `retention`), the action, and a JSON detail that holds ids
//! and purposes, never case content: purging a record never needs to touch this log.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

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

fn chain_hash(
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

/// Appends one row. Call it inside the transaction that does the audited thing, so the two
/// commit together or not at all.
pub fn record(
    conn: &Connection,
    actor: &str,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), rusqlite::Error> {
    let previous: Option<Vec<u8>> = conn
        .query_row(
            "SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?
        .flatten();
    let at = now_text();
    let detail = detail.to_string();
    let hash = chain_hash(previous.as_deref(), &at, actor, action, &detail);
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at, actor, action, detail, hash],
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

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Rows checked (those with a hash).
    pub chained_rows: u64,
    /// Rows older than the chain (no hash), not checked.
    pub unchained_rows: u64,
    /// The first row whose hash does not match its content and its predecessor, if any.
    pub first_broken_seq: Option<i64>,
    /// Gaps in `seq` (a deleted row), if any: the first missing number.
    pub first_missing_seq: Option<i64>,
}

impl Verification {
    pub fn intact(&self) -> bool {
        self.first_broken_seq.is_none() && self.first_missing_seq.is_none()
    }
}

/// Walks the whole log and checks every chained row.
pub fn verify(conn: &Connection) -> Result<Verification, rusqlite::Error> {
    let mut statement =
        conn.prepare("SELECT seq, at, actor, action, detail, hash FROM audit_log ORDER BY seq")?;
    let mut rows = statement.query([])?;
    let mut report = Verification {
        chained_rows: 0,
        unchained_rows: 0,
        first_broken_seq: None,
        first_missing_seq: None,
    };
    let mut previous_hash: Option<Vec<u8>> = None;
    let mut previous_seq: Option<i64> = None;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        if let Some(before) = previous_seq
            && seq != before + 1
            && report.first_missing_seq.is_none()
        {
            report.first_missing_seq = Some(before + 1);
        }
        previous_seq = Some(seq);
        let hash: Option<Vec<u8>> = row.get(5)?;
        let Some(hash) = hash else {
            report.unchained_rows += 1;
            if report.chained_rows > 0 && report.first_broken_seq.is_none() {
                // A row without a hash after the chain began was written around the server.
                report.first_broken_seq = Some(seq);
            }
            continue;
        };
        report.chained_rows += 1;
        let expected = chain_hash(
            previous_hash.as_deref(),
            &row.get::<_, String>(1)?,
            &row.get::<_, String>(2)?,
            &row.get::<_, String>(3)?,
            &row.get::<_, String>(4)?,
        );
        if expected != hash && report.first_broken_seq.is_none() {
            report.first_broken_seq = Some(seq);
        }
        previous_hash = Some(hash);
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
        let db = crate::Database::open(dir.path()).unwrap();
        (dir, db)
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
    fn an_edit_made_around_the_server_breaks_the_chain() {
        let (dir, db) = database();
        db.write(|conn| {
            for n in 0..5 {
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
        let intact = db.read(verify).unwrap();
        assert!(intact.intact(), "{intact:?}");
        assert_eq!(intact.chained_rows, 5);
        drop(db);
        // Someone with the file drops the triggers and rewrites row 3.
        let conn = Connection::open(dir.path().join(crate::database::DATABASE_FILE)).unwrap();
        conn.execute_batch(
            "DROP TRIGGER audit_log_is_append_only_update;
             UPDATE audit_log SET detail = '{\"n\":99}' WHERE seq = 3;",
        )
        .unwrap();
        let broken = verify(&conn).unwrap();
        assert_eq!(broken.first_broken_seq, Some(3));
        conn.execute_batch(
            "DROP TRIGGER audit_log_is_append_only_delete; DELETE FROM audit_log WHERE seq = 4;",
        )
        .unwrap();
        assert_eq!(verify(&conn).unwrap().first_missing_seq, Some(4));
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
