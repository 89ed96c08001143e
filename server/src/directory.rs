//! Teams, enrolled devices and their credentials.
//!
//! A device's token is `auxilio_<device id>_<secret>`: the device id (bs58check) lets the server
//! find the device without a table scan and lets a phone know its own id offline; the secret is
//! 32 random bytes, stored only as its SHA-256 (a leaked database does not leak tokens). A token
//! is shown once, at enrolment. Revocation takes effect on the very next request because every
//! request reads the device row.
//!
//! A device an administrator enrolled, or whose token an administrator rotated, over HTTP is
//! *awaiting approval* ([`Device::awaiting_approval`]): it authenticates, but reads and writes no
//! case data until a team lead of its team, or the operator on the server's command line,
//! approves it ([`approve_by`]). Devices enrolled or rotated on the command line are approved at
//! once; a device's own rotation keeps its approval.
//!
//! Every change of a token is a compare-and-swap on the token the request presented, in the
//! caller's transaction with its audit row: a self-rotation or the first use of a rotated token
//! that lost a race with an administrator's rotation changes nothing, so a leaked token cannot
//! outlive the rotation meant to retire it.

use std::fmt;
use std::str::FromStr;

use auxilio_core::DeviceId;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit;
use crate::database::now_text;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("team `{0}` already exists")]
    TeamExists(String),
    #[error("no team `{0}`: add it first with `auxilio admin team add {0}`")]
    NoSuchTeam(String),
    #[error("`{0}` is not a usable team name: use 1-64 letters, digits, `-` or `_`")]
    BadTeamName(String),
    #[error("no device {0}")]
    NoSuchDevice(DeviceId),
    #[error("device {0} is already revoked")]
    AlreadyRevoked(DeviceId),
    #[error(
        "a device label is at most {MAX_LABEL_CHARS} characters with no control characters (line breaks, tabs)"
    )]
    BadLabel,
    /// The token a self-rotation presented was replaced (by an administrator's rotation, or by
    /// the device's own rotated token) while the request was under way.
    #[error("the token was replaced while this request was under way")]
    TokenSuperseded,
}

/// The longest device label, in characters.
pub const MAX_LABEL_CHARS: usize = 100;

/// Whether `label` is a usable device label: up to [`MAX_LABEL_CHARS`] characters (empty means
/// none), no control characters.
pub fn valid_label(label: &str) -> bool {
    label.chars().count() <= MAX_LABEL_CHARS && !label.chars().any(char::is_control)
}

/// Why a bearer token was not accepted. Deliberately coarse in what reaches the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the token is not an Auxilio device token")]
    Malformed,
    #[error("the token is not valid (unknown device or wrong secret)")]
    Invalid,
    #[error("this device has been revoked; it must be re-enrolled by an administrator")]
    Revoked,
}

/// Who holds a credential, and so what it may do (the whole table is in [`crate::access`]).
///
/// Every credential is a device's: a field phone, a team lead's phone, a coordinator's or a
/// protection officer's laptop, an administrator's or auditor's workstation. Each has its own
/// token; none is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Role {
    /// A field agent's phone: syncs and writes its own team's encounters, health sub-records
    /// included, nothing of other teams.
    Field,
    /// A team lead: what a field agent does, plus the map, stats and exports of their own team.
    TeamLead,
    /// Sees every team's encounters on the map, in stats and exports; no identity data and no
    /// health detail beyond triage.
    Coordinator,
    /// Reads sealed identity vaults and the full records of UASC and missing-person cases, and
    /// purges.
    ProtectionOfficer,
    /// Enrols, rotates and revokes devices; no case data.
    Administrator,
    /// Reads and exports the audit log; nothing else.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Field,
        Role::TeamLead,
        Role::Coordinator,
        Role::ProtectionOfficer,
        Role::Administrator,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Field => "field",
            Role::TeamLead => "team_lead",
            Role::Coordinator => "coordinator",
            Role::ProtectionOfficer => "protection_officer",
            Role::Administrator => "administrator",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Role::ALL.iter().map(|role| role.as_str()).collect();
                format!("unknown role `{text}` (known: {})", known.join(", "))
            })
    }
}

/// An enrolled device, as requests see it after authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub id: DeviceId,
    pub team: String,
    pub role: Role,
    pub label: String,
    pub enrolled_at: String,
    pub revoked_at: Option<String>,
    /// Enrolled or rotated over HTTP by an administrator and not approved yet: it may ask who it
    /// is and rotate its own token, nothing else ([`crate::access::require`]).
    pub awaiting_approval: bool,
}

/// A device just enrolled, with the only copy of its token.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolled {
    pub device_id: DeviceId,
    pub team: String,
    pub role: Role,
    pub token: String,
}

const TOKEN_PREFIX: &str = "auxilio_";

fn hash_secret(secret: &[u8]) -> Vec<u8> {
    Sha256::digest(secret).to_vec()
}

/// Splits a token into the device id and the secret.
pub fn parse_token(token: &str) -> Result<(DeviceId, Vec<u8>), AuthError> {
    let rest = token
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(AuthError::Malformed)?;
    let (device, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    let device: DeviceId = device.parse().map_err(|_| AuthError::Malformed)?;
    let secret = bs58::decode(secret)
        .into_vec()
        .map_err(|_| AuthError::Malformed)?;
    if secret.len() != 32 {
        return Err(AuthError::Malformed);
    }
    Ok((device, secret))
}

fn valid_team_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Adds a team from the command line (see [`add_team_by`]).
pub fn add_team(conn: &Connection, name: &str) -> Result<(), DirectoryError> {
    add_team_by(conn, ADMIN_CLI, name)
}

pub fn add_team_by(conn: &Connection, actor: &str, name: &str) -> Result<(), DirectoryError> {
    if !valid_team_name(name) {
        return Err(DirectoryError::BadTeamName(name.to_string()));
    }
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO teams (name, created_at) VALUES (?1, ?2)",
        params![name, now_text()],
    )?;
    if inserted == 0 {
        return Err(DirectoryError::TeamExists(name.to_string()));
    }
    audit::record(conn, actor, "team.add", serde_json::json!({ "team": name }))?;
    Ok(())
}

pub fn list_teams(conn: &Connection) -> Result<Vec<String>, DirectoryError> {
    let mut statement = conn.prepare("SELECT name FROM teams ORDER BY name")?;
    let names = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(names)
}

/// How many teams this server holds (the health check's read).
pub fn team_count(conn: &Connection) -> Result<u64, rusqlite::Error> {
    conn.query_row("SELECT count(*) FROM teams", [], |row| row.get::<_, i64>(0))
        .map(i64::unsigned_abs)
}

/// The actor the command line writes into the audit log.
pub const ADMIN_CLI: &str = "admin-cli";

/// Enrols a device from the command line (see [`enroll_by`]).
pub fn enroll(
    conn: &Connection,
    team: &str,
    role: Role,
    label: &str,
) -> Result<Enrolled, DirectoryError> {
    enroll_by(conn, ADMIN_CLI, team, role, label)
}

/// Enrols a new device with a fresh id and secret, approved at once (the command line's way);
/// `actor` is who did it, for the audit log.
pub fn enroll_by(
    conn: &Connection,
    actor: &str,
    team: &str,
    role: Role,
    label: &str,
) -> Result<Enrolled, DirectoryError> {
    enroll_with(conn, actor, team, role, label, Approval::Approved)
}

/// Whether a device an enrolment or rotation gives may read and write case data at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    /// The command line's enrolments and rotations: the operator on the server is trusted with
    /// the data directory anyway.
    Approved,
    /// An administrator's over HTTP: the device awaits approval by a team lead of its team
    /// ([`approve_by`]), so holding an administrator's token alone never gives case access.
    AwaitingTeamLead,
}

/// [`enroll_by`], approved at once or awaiting a team lead's approval.
pub fn enroll_with(
    conn: &Connection,
    actor: &str,
    team: &str,
    role: Role,
    label: &str,
    approval: Approval,
) -> Result<Enrolled, DirectoryError> {
    let awaiting_approval = approval == Approval::AwaitingTeamLead;
    if !valid_label(label) {
        return Err(DirectoryError::BadLabel);
    }
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM teams WHERE name = ?1)",
        [team],
        |row| row.get(0),
    )?;
    if !exists {
        return Err(DirectoryError::NoSuchTeam(team.to_string()));
    }
    let device_id = DeviceId::random();
    let (secret, token) = new_token(device_id);
    conn.execute(
        "INSERT INTO devices (id, team, role, label, token_hash, enrolled_at, awaiting_approval) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![device_id.as_bytes(), team, role.as_str(), label, hash_secret(&secret), now_text(), awaiting_approval],
    )?;
    audit::record(
        conn,
        actor,
        "device.enroll",
        serde_json::json!({
            "device": device_id.to_string(), "team": team, "role": role,
            "awaiting_approval": awaiting_approval,
        }),
    )?;
    Ok(Enrolled {
        device_id,
        team: team.to_string(),
        role,
        token,
    })
}

/// A fresh secret for `device` and the token that carries it.
fn new_token(device: DeviceId) -> ([u8; 32], String) {
    let secret: [u8; 32] = auxilio_core::id::random_bytes();
    let token = format!(
        "{TOKEN_PREFIX}{device}_{}",
        bs58::encode(secret).into_string()
    );
    (secret, token)
}

/// Revokes a device from the command line (see [`revoke_by`]).
pub fn revoke(conn: &Connection, device: DeviceId) -> Result<(), DirectoryError> {
    revoke_by(conn, ADMIN_CLI, device)
}

/// Revokes a device: its very next request is refused with 401 and told to wipe its store.
pub fn revoke_by(conn: &Connection, actor: &str, device: DeviceId) -> Result<(), DirectoryError> {
    let found = find_device(conn, device)?.ok_or(DirectoryError::NoSuchDevice(device))?;
    if found.revoked_at.is_some() {
        return Err(DirectoryError::AlreadyRevoked(device));
    }
    conn.execute(
        "UPDATE devices SET revoked_at = ?2, next_token_hash = NULL WHERE id = ?1",
        params![device.as_bytes(), now_text()],
    )?;
    audit::record(
        conn,
        actor,
        "device.revoke",
        serde_json::json!({ "device": device.to_string(), "team": found.team }),
    )?;
    Ok(())
}

/// Gives an active device a new token at once, the old one failing from now on: for a token
/// that leaked. The new token must reach the device by hand (`auxilio device enrol` again).
/// The command line's way: the device is approved from now on (a device awaiting approval is
/// approved by it, as `actor`).
pub fn rotate_by(
    conn: &Connection,
    actor: &str,
    device: DeviceId,
) -> Result<String, DirectoryError> {
    rotate_with(conn, actor, device, Approval::Approved)
}

/// [`rotate_by`], approved at once or awaiting a team lead's approval: an administrator over
/// HTTP receives the new token, so the device awaits approval again before that token reads or
/// writes case data.
pub fn rotate_with(
    conn: &Connection,
    actor: &str,
    device: DeviceId,
    approval: Approval,
) -> Result<String, DirectoryError> {
    let awaiting_approval = approval == Approval::AwaitingTeamLead;
    let found = find_device(conn, device)?.ok_or(DirectoryError::NoSuchDevice(device))?;
    if found.revoked_at.is_some() {
        return Err(DirectoryError::AlreadyRevoked(device));
    }
    let (secret, token) = new_token(device);
    // Any pending self-rotated token goes too: it was asked for with a token now retired.
    conn.execute(
        "UPDATE devices SET token_hash = ?2, next_token_hash = NULL WHERE id = ?1",
        params![device.as_bytes(), hash_secret(&secret)],
    )?;
    if awaiting_approval {
        conn.execute(
            "UPDATE devices SET awaiting_approval = 1, approved_by = NULL, approved_at = NULL
             WHERE id = ?1",
            [device.as_bytes()],
        )?;
    } else if found.awaiting_approval {
        mark_approved(conn, actor, device)?;
    }
    audit::record(
        conn,
        actor,
        "device.rotate",
        serde_json::json!({
            "device": device.to_string(), "team": found.team,
            "awaiting_approval": awaiting_approval,
        }),
    )?;
    Ok(token)
}

fn mark_approved(conn: &Connection, actor: &str, device: DeviceId) -> Result<bool, DirectoryError> {
    let changed = conn.execute(
        "UPDATE devices SET awaiting_approval = 0, approved_by = ?2, approved_at = ?3
         WHERE id = ?1 AND awaiting_approval = 1",
        params![device.as_bytes(), actor, now_text()],
    )?;
    Ok(changed == 1)
}

/// Approves a device awaiting approval, with its audit row (`device.approve`), in the caller's
/// transaction: `actor` is a team lead of the device's team (the HTTP handler checks that) or
/// [`ADMIN_CLI`]. True if it was awaiting approval; approving an approved device changes nothing
/// and writes nothing, so a retry after a lost answer is harmless.
pub fn approve_by(
    conn: &Connection,
    actor: &str,
    device: DeviceId,
) -> Result<bool, DirectoryError> {
    let found = find_device(conn, device)?.ok_or(DirectoryError::NoSuchDevice(device))?;
    if found.revoked_at.is_some() {
        return Err(DirectoryError::AlreadyRevoked(device));
    }
    if !mark_approved(conn, actor, device)? {
        return Ok(false);
    }
    audit::record(
        conn,
        actor,
        "device.approve",
        serde_json::json!({ "device": device.to_string(), "team": found.team, "role": found.role }),
    )?;
    Ok(true)
}

/// A device's own rotation: the new token is valid alongside the old one until its first use,
/// which retires the old one ([`promote_next_token`]). A rotation whose answer is lost on the
/// way leaves the device with a working token; asking again replaces the pending one.
///
/// `presented` is the token the request authenticated with: the rotation happens only if it is
/// still the device's current token ([`DirectoryError::TokenSuperseded`] otherwise), so a request
/// that raced an administrator's rotation cannot plant a token of its own. Run it in the
/// transaction that commits its audit row.
pub fn begin_rotation(
    conn: &Connection,
    device: &Device,
    presented: &str,
) -> Result<String, DirectoryError> {
    let (id, presented_secret) =
        parse_token(presented).map_err(|_| DirectoryError::TokenSuperseded)?;
    if id != device.id {
        return Err(DirectoryError::TokenSuperseded);
    }
    let (secret, token) = new_token(device.id);
    let changed = conn.execute(
        "UPDATE devices SET next_token_hash = ?2
         WHERE id = ?1 AND revoked_at IS NULL AND token_hash = ?3",
        params![
            device.id.as_bytes(),
            hash_secret(&secret),
            hash_secret(&presented_secret)
        ],
    )?;
    if changed == 0 {
        return Err(DirectoryError::TokenSuperseded);
    }
    audit::record(
        conn,
        &device.id.to_string(),
        "device.rotate_self",
        serde_json::json!({ "device": device.id.to_string(), "team": device.team }),
    )?;
    Ok(token)
}

/// The first use of a rotated token: it becomes the device's only token. A compare-and-swap on
/// `presented` (the token the request used): true if `presented` is the device's current token
/// afterwards (promoted now, or by a concurrent request that used it too), false if it was
/// retired meanwhile (an administrator's rotation, a revocation, a newer self-rotation), and the
/// request must then be refused.
pub fn promote_next_token(conn: &Connection, presented: &str) -> Result<bool, DirectoryError> {
    let Ok((device, secret)) = parse_token(presented) else {
        return Ok(false);
    };
    let presented_hash = hash_secret(&secret);
    conn.execute(
        "UPDATE devices SET token_hash = next_token_hash, next_token_hash = NULL
         WHERE id = ?1 AND revoked_at IS NULL AND next_token_hash = ?2",
        params![device.as_bytes(), presented_hash],
    )?;
    let current: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE id = ?1 AND revoked_at IS NULL AND token_hash = ?2)",
        params![device.as_bytes(), presented_hash],
        |row| row.get(0),
    )?;
    Ok(current)
}

fn device_from_row(row: &rusqlite::Row<'_>) -> Result<(Device, Vec<u8>), rusqlite::Error> {
    let id: Vec<u8> = row.get("id")?;
    let role: String = row.get("role")?;
    let device = Device {
        id: DeviceId::from_slice(&id)
            .map_err(|e| rusqlite::Error::InvalidColumnName(e.to_string()))?,
        team: row.get("team")?,
        role: role.parse().map_err(rusqlite::Error::InvalidColumnName)?,
        label: row.get("label")?,
        enrolled_at: row.get("enrolled_at")?,
        revoked_at: row.get("revoked_at")?,
        awaiting_approval: row.get("awaiting_approval")?,
    };
    Ok((device, row.get("token_hash")?))
}

pub fn find_device(conn: &Connection, id: DeviceId) -> Result<Option<Device>, DirectoryError> {
    Ok(conn
        .query_row(
            "SELECT * FROM devices WHERE id = ?1",
            [id.as_bytes()],
            device_from_row,
        )
        .optional()?
        .map(|(device, _)| device))
}

pub fn list_devices(conn: &Connection) -> Result<Vec<Device>, DirectoryError> {
    let mut statement = conn.prepare("SELECT * FROM devices ORDER BY team, enrolled_at")?;
    let devices = statement
        .query_map([], device_from_row)?
        .map(|row| row.map(|(device, _)| device))
        .collect::<Result<_, _>>()?;
    Ok(devices)
}

/// The devices of one team (never their tokens), only those awaiting approval if
/// `awaiting_only`: what a team lead reviews before approving.
pub fn list_team_devices(
    conn: &Connection,
    team: &str,
    awaiting_only: bool,
) -> Result<Vec<Device>, DirectoryError> {
    let mut statement = conn.prepare(
        "SELECT * FROM devices WHERE team = ?1 AND (?2 = 0 OR (awaiting_approval = 1 AND revoked_at IS NULL))
         ORDER BY enrolled_at",
    )?;
    let devices = statement
        .query_map(params![team, awaiting_only], device_from_row)?
        .map(|row| row.map(|(device, _)| device))
        .collect::<Result<_, _>>()?;
    Ok(devices)
}

/// Which of a device's tokens a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUsed {
    Current,
    /// The token from the device's own rotation, used for the first time: promote it.
    Rotated,
}

/// The device a bearer token belongs to, if the token is valid and the device not revoked.
pub fn authenticate(
    conn: &Connection,
    token: &str,
) -> Result<Result<(Device, TokenUsed), AuthError>, rusqlite::Error> {
    let (id, secret) = match parse_token(token) {
        Ok(parts) => parts,
        Err(err) => return Ok(Err(err)),
    };
    let Some((device, stored_hash, next_hash)) = conn
        .query_row(
            "SELECT * FROM devices WHERE id = ?1",
            [id.as_bytes()],
            |row| {
                let (device, stored_hash) = device_from_row(row)?;
                Ok((
                    device,
                    stored_hash,
                    row.get::<_, Option<Vec<u8>>>("next_token_hash")?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(Err(AuthError::Invalid));
    };
    // Both sides are SHA-256 digests, so comparing them leaks nothing useful about the secret.
    let presented = hash_secret(&secret);
    let used = if presented == stored_hash {
        TokenUsed::Current
    } else if next_hash.is_some_and(|next| next == presented) {
        TokenUsed::Rotated
    } else {
        return Ok(Err(AuthError::Invalid));
    };
    if device.revoked_at.is_some() {
        return Ok(Err(AuthError::Revoked));
    }
    Ok(Ok((device, used)))
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
    fn an_enrolled_token_authenticates_until_revoked() {
        let (_dir, db) = database();
        db.write(|conn| {
            add_team(conn, "sonora").unwrap();
            let enrolled = enroll(conn, "sonora", Role::Field, "phone 1").unwrap();
            let (device, _) = authenticate(conn, &enrolled.token).unwrap().unwrap();
            assert_eq!(device.team, "sonora");
            revoke(conn, enrolled.device_id).unwrap();
            assert_eq!(
                authenticate(conn, &enrolled.token).unwrap(),
                Err(AuthError::Revoked)
            );
            Ok::<_, DirectoryError>(())
        })
        .unwrap();
    }

    #[test]
    fn a_self_rotation_keeps_the_old_token_until_the_new_one_is_used() {
        let (_dir, db) = database();
        db.write(|conn| {
            add_team(conn, "sonora").unwrap();
            let enrolled = enroll(conn, "sonora", Role::Field, "").unwrap();
            let (device, _) = authenticate(conn, &enrolled.token).unwrap().unwrap();
            let rotated = begin_rotation(conn, &device, &enrolled.token).unwrap();
            // The answer may have been lost: the old token still works.
            assert!(authenticate(conn, &enrolled.token).unwrap().is_ok());
            let (_, used) = authenticate(conn, &rotated).unwrap().unwrap();
            assert_eq!(used, TokenUsed::Rotated);
            assert!(promote_next_token(conn, &rotated).unwrap());
            assert_eq!(
                authenticate(conn, &enrolled.token).unwrap(),
                Err(AuthError::Invalid)
            );
            assert_eq!(
                authenticate(conn, &rotated).unwrap().unwrap().1,
                TokenUsed::Current
            );
            // An administrator's rotation retires the current token at once.
            let replaced = rotate_by(conn, ADMIN_CLI, device.id).unwrap();
            assert_eq!(
                authenticate(conn, &rotated).unwrap(),
                Err(AuthError::Invalid)
            );
            assert!(authenticate(conn, &replaced).unwrap().is_ok());
            Ok::<_, DirectoryError>(())
        })
        .unwrap();
    }

    #[test]
    fn a_self_rotation_or_promotion_that_lost_a_race_with_an_administrators_rotation_changes_nothing()
     {
        let (_dir, db) = database();
        db.write(|conn| {
            add_team(conn, "sonora").unwrap();
            let leaked = enroll(conn, "sonora", Role::Field, "").unwrap();
            let (device, _) = authenticate(conn, &leaked.token).unwrap().unwrap();
            // A rotation asked for before the administrator's, promoted after it.
            let pending = begin_rotation(conn, &device, &leaked.token).unwrap();
            let replaced = rotate_by(conn, ADMIN_CLI, device.id).unwrap();
            assert!(!promote_next_token(conn, &pending).unwrap());
            // A rotation authenticated before the administrator's, written after it.
            assert!(matches!(
                begin_rotation(conn, &device, &leaked.token),
                Err(DirectoryError::TokenSuperseded)
            ));
            assert!(authenticate(conn, &pending).unwrap().is_err());
            assert!(authenticate(conn, &leaked.token).unwrap().is_err());
            assert_eq!(
                authenticate(conn, &replaced).unwrap().unwrap().1,
                TokenUsed::Current
            );
            Ok::<_, DirectoryError>(())
        })
        .unwrap();
    }

    #[test]
    fn an_http_enrolment_or_rotation_awaits_approval_and_a_self_rotation_or_the_command_line_does_not()
     {
        let (_dir, db) = database();
        db.write(|conn| {
            add_team(conn, "sonora").unwrap();
            let awaiting = |token: &str| {
                authenticate(conn, token)
                    .unwrap()
                    .unwrap()
                    .0
                    .awaiting_approval
            };
            let phone = enroll(conn, "sonora", Role::Field, "").unwrap();
            assert!(!awaiting(&phone.token));
            let admins = enroll_with(
                conn,
                "admin",
                "sonora",
                Role::Field,
                "",
                Approval::AwaitingTeamLead,
            )
            .unwrap();
            assert!(awaiting(&admins.token));
            let device = authenticate(conn, &admins.token).unwrap().unwrap().0;
            let rotated = begin_rotation(conn, &device, &admins.token).unwrap();
            assert!(promote_next_token(conn, &rotated).unwrap());
            assert!(
                awaiting(&rotated),
                "a self-rotation keeps the device awaiting"
            );
            assert!(approve_by(conn, "lead", admins.device_id).unwrap());
            assert!(!approve_by(conn, "lead", admins.device_id).unwrap(), "once");
            assert!(!awaiting(&rotated));
            let taken =
                rotate_with(conn, "admin", phone.device_id, Approval::AwaitingTeamLead).unwrap();
            assert!(awaiting(&taken));
            let given = rotate_by(conn, ADMIN_CLI, phone.device_id).unwrap();
            assert!(!awaiting(&given));
            Ok::<_, DirectoryError>(())
        })
        .unwrap();
    }

    #[test]
    fn labels_are_capped_and_free_of_control_characters() {
        assert!(valid_label(""));
        assert!(valid_label(&"ñ".repeat(MAX_LABEL_CHARS)));
        assert!(!valid_label(&"x".repeat(MAX_LABEL_CHARS + 1)));
        assert!(!valid_label("phone\n3"));
        assert!(!valid_label("phone\u{1b}[31m"));
    }

    #[test]
    fn a_token_with_a_wrong_secret_or_shape_is_refused() {
        let (_dir, db) = database();
        db.write(|conn| {
            add_team(conn, "sonora").unwrap();
            let enrolled = enroll(conn, "sonora", Role::Field, "").unwrap();
            let forged = format!(
                "auxilio_{}_{}",
                enrolled.device_id,
                bs58::encode([7u8; 32]).into_string()
            );
            assert_eq!(
                authenticate(conn, &forged).unwrap(),
                Err(AuthError::Invalid)
            );
            assert_eq!(
                authenticate(conn, "hunter2").unwrap(),
                Err(AuthError::Malformed)
            );
            Ok::<_, DirectoryError>(())
        })
        .unwrap();
    }

    #[test]
    fn enrolling_into_a_missing_team_says_how_to_add_it() {
        let (_dir, db) = database();
        let err = db
            .write(|conn| enroll(conn, "nowhere", Role::Field, ""))
            .unwrap_err();
        assert!(
            err.to_string().contains("auxilio admin team add nowhere"),
            "{err}"
        );
    }
}
