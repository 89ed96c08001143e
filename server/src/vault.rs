//! The server's side of the sealed identity vault: the protection officers' public keys, and the
//! envelopes devices upload, stored as they came.
//!
//! The server never decrypts: it holds no identity, checks an envelope only by its shape (size,
//! recipients, an age header; [`SealedVault::check`]) and by whom it is for (an encounter of the
//! uploader's team that is a UASC or missing-person case). Envelopes are stored in the sync
//! transaction that carries them, after the request's changes, so a vault may travel with the
//! first changes of its encounter and an acknowledgement means committed. Protection officers
//! read envelopes ([`envelopes_of`]) and, when keys are rotated, replace their ciphertext in
//! place ([`replace`]); both are audited by the HTTP layer in the same transaction.

use auxilio_core::EncounterId;
use auxilio_core::protocol::{PurgeKind, VaultRejection};
use auxilio_core::vault::{self, SealedVault, VaultError};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::audit;
use crate::changes::{self, ChangesError};
use crate::database::now_text;
use crate::directory::Device;
use crate::index;
use crate::purge;

#[derive(Debug, thiserror::Error)]
pub enum VaultKeyError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Key(#[from] VaultError),
    #[error("key {0} is already enrolled; `auxilio admin vault-key list` shows it")]
    AlreadyEnrolled(String),
    #[error(
        "no active key {0}: `auxilio admin vault-key list` shows the keys (a retired key stays retired)"
    )]
    NoActiveKey(String),
}

/// One protection officer's public key as `vault-key list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultKey {
    pub public_key: String,
    pub label: Option<String>,
    pub added_at: Option<String>,
    pub retired_at: Option<String>,
}

/// The keys new vaults are sealed to: every key not retired, oldest first.
pub fn current_recipients(conn: &Connection) -> Result<Vec<String>, rusqlite::Error> {
    let mut statement = conn.prepare(
        "SELECT public_key FROM vault_keys WHERE retired_at IS NULL ORDER BY added_at, public_key",
    )?;
    statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()
}

/// Enrols a protection officer's public key; returns it in canonical form. Audited.
pub fn add_key(conn: &Connection, key: &str, label: &str) -> Result<String, VaultKeyError> {
    let key = vault::parse_public_key(key)?;
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM vault_keys WHERE public_key = ?1)",
        [&key],
        |row| row.get(0),
    )?;
    if exists {
        return Err(VaultKeyError::AlreadyEnrolled(key));
    }
    conn.execute(
        "INSERT INTO vault_keys (public_key, label, added_at) VALUES (?1, ?2, ?3)",
        params![key, label, now_text()],
    )?;
    audit::record(
        conn,
        "admin-cli",
        "vault_key.add",
        serde_json::json!({ "public_key": key, "label": label }),
    )?;
    Ok(key)
}

/// Every key, retired ones included.
pub fn list_keys(conn: &Connection) -> Result<Vec<VaultKey>, rusqlite::Error> {
    let mut statement = conn.prepare(
        "SELECT public_key, label, added_at, retired_at FROM vault_keys ORDER BY added_at, public_key",
    )?;
    statement
        .query_map([], |row| {
            Ok(VaultKey {
                public_key: row.get(0)?,
                label: row.get(1)?,
                added_at: row.get(2)?,
                retired_at: row.get(3)?,
            })
        })?
        .collect()
}

/// Retires a key: devices stop sealing to it at their next sync. Returns how many stored
/// envelopes are still sealed to it (they open only with it until resealed). Audited.
pub fn retire_key(conn: &Connection, key: &str) -> Result<u64, VaultKeyError> {
    let key = key.trim();
    let retired = conn.execute(
        "UPDATE vault_keys SET retired_at = ?2 WHERE public_key = ?1 AND retired_at IS NULL",
        params![key, now_text()],
    )?;
    if retired == 0 {
        return Err(VaultKeyError::NoActiveKey(key.to_string()));
    }
    let still_sealed_to_it = envelopes_sealed_to(conn, key)?;
    audit::record(
        conn,
        "admin-cli",
        "vault_key.retire",
        serde_json::json!({ "public_key": key, "envelopes_still_sealed_to_it": still_sealed_to_it }),
    )?;
    Ok(still_sealed_to_it)
}

/// How many envelopes list `key` among their recipients.
pub fn envelopes_sealed_to(conn: &Connection, key: &str) -> Result<u64, rusqlite::Error> {
    let mut statement = conn.prepare("SELECT recipients FROM vault_envelopes")?;
    let mut rows = statement.query([])?;
    let mut count = 0;
    while let Some(row) = rows.next()? {
        let recipients: Vec<String> =
            serde_json::from_str(&row.get::<_, String>(0)?).unwrap_or_default();
        count += u64::from(recipients.iter().any(|r| r == key));
    }
    Ok(count)
}

/// Whether encounter `id` (stored) is a UASC or missing-person case, by the merged document
/// (the core rule devices apply), or by the index if the document cannot be read as a record.
fn is_vault_case(conn: &Connection, id: EncounterId) -> Result<bool, ChangesError> {
    let Some(document) = changes::load_document(conn, id)? else {
        return Ok(false);
    };
    Ok(match document.encounter() {
        Ok(encounter) => encounter.is_protection_case(),
        Err(_) => index::is_protection_case(conn, id)?,
    })
}

/// Stores the vaults of one sync request from `device` (inside its transaction, after its
/// changes); returns the ids stored (now or before) and the refusals.
pub fn store_uploaded(
    tx: &Connection,
    device: &Device,
    vaults: &[SealedVault],
) -> Result<(Vec<ByteBuf>, Vec<VaultRejection>), ChangesError> {
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for sealed in vaults {
        match store_one(tx, device, sealed)? {
            Ok(()) => accepted.push(sealed.id.clone()),
            Err(reason) => {
                tracing::info!(encounter = %sealed.encounter, %reason, "sealed vault refused");
                rejected.push(VaultRejection {
                    id: sealed.id.clone(),
                    reason,
                });
            }
        }
    }
    Ok((accepted, rejected))
}

fn store_one(
    tx: &Connection,
    device: &Device,
    sealed: &SealedVault,
) -> Result<Result<(), String>, ChangesError> {
    if let Err(err) = sealed.check() {
        return Ok(Err(err.to_string()));
    }
    let id = sealed.encounter;
    // A purged case's identity data is not taken again: a phone that sealed it before the purge
    // and syncs afterwards drops it on this response's purge notice.
    if let Some((kind, purged_at)) = purge::tombstone(tx, id)? {
        return Ok(Err(match kind {
            PurgeKind::Whole => format!("encounter {id} was purged on {purged_at}"),
            PurgeKind::VaultOnly => format!(
                "the identity vault of encounter {id} was purged on {purged_at}; it is not taken again"
            ),
        }));
    }
    let team: Option<String> = tx
        .query_row(
            "SELECT team FROM encounters WHERE id = ?1",
            [id.as_bytes()],
            |row| row.get(0),
        )
        .optional()?;
    // Another team's encounter is answered exactly like an unknown one, so an upload does not
    // tell a device which ids exist elsewhere.
    let Some(team) = team.filter(|team| device.may_see_team(team)) else {
        return Ok(Err(format!(
            "the server has no encounter {id}: its changes must be uploaded first"
        )));
    };
    if !is_vault_case(tx, id)? {
        return Ok(Err(format!(
            "encounter {id} is not a UASC or missing-person case: identity data is kept only for those"
        )));
    }
    let stored_under: Option<Vec<u8>> = tx
        .query_row(
            "SELECT encounter FROM vault_envelopes WHERE id = ?1",
            [sealed.id.as_slice()],
            |row| row.get(0),
        )
        .optional()?;
    match stored_under {
        // Sent again after a lost response: stored once, acknowledged again.
        Some(encounter) if encounter == id.as_bytes() => return Ok(Ok(())),
        Some(_) => {
            return Ok(Err(
                "this envelope id is already used for another encounter".into(),
            ));
        }
        None => {}
    }
    tx.execute(
        "INSERT INTO vault_envelopes (id, encounter, team, device, sealed_at, received_at,
                                      recipients, ciphertext, digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            sealed.id.as_slice(),
            id.as_bytes(),
            team,
            device.id.as_bytes(),
            sealed.sealed_at,
            now_text(),
            serde_json::to_string(&sealed.recipients).expect("serialisable"),
            sealed.ciphertext.as_slice(),
            sealed.digest.as_deref().map(|d| d.as_slice()),
        ],
    )?;
    Ok(Ok(()))
}

/// An envelope as the server holds it, for a protection officer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEnvelope {
    #[serde(flatten)]
    pub sealed: SealedVault,
    pub team: String,
    pub received_at: String,
}

/// Whether encounter `id` has sealed envelopes stored (a vault stays readable to officers even if
/// its record later stops being a protection case).
pub fn has_envelopes(conn: &Connection, id: EncounterId) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM vault_envelopes WHERE encounter = ?1)",
        [id.as_bytes()],
        |row| row.get(0),
    )
}

/// Whether this server holds encounter `id` or a vault envelope of it.
pub fn encounter_known(conn: &Connection, id: EncounterId) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM encounters WHERE id = ?1)
             OR EXISTS (SELECT 1 FROM vault_envelopes WHERE encounter = ?1)",
        [id.as_bytes()],
        |row| row.get(0),
    )
}

/// The envelopes of encounter `id` and their encounter's team, oldest first.
pub fn envelopes_of(
    conn: &Connection,
    id: EncounterId,
) -> Result<Vec<StoredEnvelope>, ChangesError> {
    let mut statement = conn.prepare(
        "SELECT id, sealed_at, recipients, ciphertext, team, received_at, digest FROM vault_envelopes
         WHERE encounter = ?1 ORDER BY received_at, id",
    )?;
    let rows = statement.query_map([id.as_bytes()], |row| {
        Ok((
            (
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Vec<u8>>(3)?,
            ),
            (
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, Option<Vec<u8>>>(6)?,
            ),
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let ((envelope_id, sealed_at, recipients, ciphertext), (team, received_at, digest)) = row?;
        out.push(StoredEnvelope {
            sealed: SealedVault {
                id: ByteBuf::from(envelope_id),
                encounter: id,
                sealed_at: sealed_at.unwrap_or_default(),
                recipients: serde_json::from_str(&recipients)
                    .map_err(|e| ChangesError::Corrupt(format!("vault recipients: {e}")))?,
                ciphertext: ByteBuf::from(ciphertext),
                digest: digest.map(ByteBuf::from),
            },
            team,
            received_at,
        });
    }
    Ok(out)
}

/// One envelope in the list a protection officer walks to reseal: no ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSummary {
    pub id: String,
    pub encounter: EncounterId,
    pub recipients: Vec<String>,
}

/// Envelopes after envelope id `after` (hex order of ids), at most `limit`.
pub fn list(
    conn: &Connection,
    after: Option<&[u8]>,
    limit: u32,
) -> Result<Vec<EnvelopeSummary>, ChangesError> {
    let mut statement = conn.prepare(
        "SELECT id, encounter, recipients FROM vault_envelopes WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = statement.query_map(params![after.unwrap_or(&[]), limit], |row| {
        Ok((
            row.get::<_, Vec<u8>>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, encounter, recipients) = row?;
        out.push(EnvelopeSummary {
            id: vault::hex(&id),
            encounter: EncounterId::from_slice(&encounter)
                .map_err(|e| ChangesError::Corrupt(e.to_string()))?,
            recipients: serde_json::from_str(&recipients)
                .map_err(|e| ChangesError::Corrupt(format!("vault recipients: {e}")))?,
        });
    }
    Ok(out)
}

/// Why a reseal was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("{0}")]
    Refused(String),
    #[error(
        "a reseal may not change an envelope's contents: this one's digest differs from the one kept since envelope {envelope} was uploaded. Reseal with `auxilio vault reseal`, which re-encrypts the same contents"
    )]
    ContentsChanged { envelope: String },
    #[error("no envelope {envelope} of encounter {encounter}")]
    NotFound {
        encounter: EncounterId,
        envelope: String,
    },
    #[error(transparent)]
    Stored(#[from] ChangesError),
}

impl From<rusqlite::Error> for ResealError {
    fn from(err: rusqlite::Error) -> Self {
        ResealError::Stored(err.into())
    }
}

/// Replaces the ciphertext and recipients of a stored envelope with `resealed` (key rotation).
/// The new recipients must all be current keys: a reseal moves a vault to the officers' keys,
/// never to a key the server does not know. It must carry the digest kept from the envelope's
/// first upload (the contents it commits to), so a reseal cannot put other contents in the
/// envelope under a digest of its own; contents sealed under the kept digest but not matching it
/// are refused by every officer's `open` ([`vault::open`]).
pub fn replace(conn: &Connection, resealed: &SealedVault) -> Result<(), ResealError> {
    resealed
        .check()
        .map_err(|e| ResealError::Refused(e.to_string()))?;
    let current = current_recipients(conn)?;
    if let Some(unknown) = resealed.recipients.iter().find(|r| !current.contains(r)) {
        return Err(ResealError::Refused(format!(
            "{unknown} is not a current protection officer's key; reseal to the keys `GET /v1/vaults` lists as current"
        )));
    }
    let kept: Option<Option<Vec<u8>>> = conn
        .query_row(
            "SELECT digest FROM vault_envelopes WHERE id = ?1 AND encounter = ?2",
            params![resealed.id.as_slice(), resealed.encounter.as_bytes()],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(kept) = kept
        && kept.as_deref() != resealed.digest.as_deref().map(|d| d.as_slice())
    {
        return Err(ResealError::ContentsChanged {
            envelope: vault::hex(&resealed.id),
        });
    }
    let replaced = conn.execute(
        "UPDATE vault_envelopes SET recipients = ?3, ciphertext = ?4 WHERE id = ?1 AND encounter = ?2",
        params![
            resealed.id.as_slice(),
            resealed.encounter.as_bytes(),
            serde_json::to_string(&resealed.recipients).expect("serialisable"),
            resealed.ciphertext.as_slice(),
        ],
    )?;
    if replaced == 0 {
        return Err(ResealError::NotFound {
            encounter: resealed.encounter,
            envelope: vault::hex(&resealed.id),
        });
    }
    Ok(())
}
