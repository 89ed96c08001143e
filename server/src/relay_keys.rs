//! Relay keys: each device registers the public half of the Ed25519 key it signs relay
//! handshakes with ([`auxilio_core::relay_auth`]), and learns the current keys of its team's
//! other devices, so two phones can prove to each other, out of signal, that both are current
//! devices of the team. Current means active (not revoked) with a role that syncs; a revoked
//! phone's key leaves every teammate's list at their next sync.

use auxilio_core::DeviceId;
use auxilio_core::relay_auth::{RelayKey, parse_public_key};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::access::{self, Permission};
use crate::audit;
use crate::directory::{Device, Role};

#[derive(Debug, thiserror::Error)]
pub enum RelayKeyError {
    #[error(
        "`key` must be an Ed25519 public key as 64 hexadecimal digits: send {{\"key\": \"<64 hex digits>\"}} (the app sends its own at each sync)"
    )]
    InvalidKey,
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Records `key` as `device`'s relay key (the change and its audit row in one transaction, and
/// only when the key is new), then returns the current relay keys of its team, its own included.
pub fn register(
    tx: &Transaction<'_>,
    device: &Device,
    key: &str,
) -> Result<Vec<RelayKey>, RelayKeyError> {
    let public = parse_public_key(key.trim()).ok_or(RelayKeyError::InvalidKey)?;
    let bytes = public.as_bytes().to_vec();
    let stored: Option<Vec<u8>> = tx
        .query_row(
            "SELECT relay_key FROM devices WHERE id = ?1",
            [device.id.as_bytes().as_slice()],
            |row| row.get(0),
        )
        .optional()?
        .flatten();
    if stored.as_deref() != Some(bytes.as_slice()) {
        tx.execute(
            "UPDATE devices SET relay_key = ?2 WHERE id = ?1",
            params![device.id.as_bytes().as_slice(), bytes],
        )?;
        audit::record(
            tx,
            &device.id.to_string(),
            "device.relay_key",
            serde_json::json!({ "device": device.id, "team": device.team, "replaced": stored.is_some() }),
        )?;
    }
    let keys = team_keys(tx, &device.team)?;
    Ok(keys)
}

/// The relay keys of `team`'s active devices whose role syncs.
pub fn team_keys(conn: &Connection, team: &str) -> Result<Vec<RelayKey>, RelayKeyError> {
    let mut statement = conn.prepare(
        "SELECT id, role, relay_key FROM devices
         WHERE team = ?1 AND revoked_at IS NULL AND relay_key IS NOT NULL ORDER BY id",
    )?;
    let rows = statement.query_map([team], |row| {
        Ok((
            row.get::<_, Vec<u8>>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut keys = Vec::new();
    for row in rows {
        let (id, role, key) = row?;
        let syncs = role
            .parse::<Role>()
            .is_ok_and(|role| access::allows(role, Permission::Sync));
        if let (true, Ok(device)) = (syncs, DeviceId::from_slice(&id)) {
            keys.push(RelayKey {
                device,
                key: key.iter().map(|b| format!("{b:02x}")).collect(),
            });
        }
    }
    Ok(keys)
}
