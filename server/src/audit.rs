//! The append-only audit log: who did what to enrolment and, later, to sensitive data.
//!
//! Rows are only ever inserted. Each row names the actor (a device id or `admin-cli`), the
//! action, and a JSON detail.

use rusqlite::{Connection, params};

use crate::database::now_text;

pub fn record(
    conn: &Connection,
    actor: &str,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_text(), actor, action, detail.to_string()],
    )?;
    Ok(())
}
