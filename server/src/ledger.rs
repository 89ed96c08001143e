//! The change ledger: takes a device's sync request, stores every acceptable change durably,
//! merges it into the encounter's document, and pages out what the device lacks.
//!
//! All of one request happens in one SQLite write transaction, committed before the response is
//! built: an acknowledgement means the change is on disk. Nothing is kept in memory between
//! requests; a document is loaded from SQLite only while its changes are merged, so memory is
//! bounded by the largest request, not by the number of encounters.

use std::collections::{HashMap, HashSet};

use automerge::{AutomergeError, Change};
use auxilio_core::document::{DocumentError, EncounterDocument, parse_change};
use auxilio_core::id::device_of_actor;
use auxilio_core::protocol::{
    self, MAX_REQUEST_ID_BYTES, MAX_RESUMED, MAX_VAULTS_PER_REQUEST, PROTOCOL_VERSION,
    RejectReason, Rejection, ResponseFrame, SyncRequest, SyncResponse, WantedChanges,
};
use auxilio_core::{DeviceId, EncounterId, SCHEMA_VERSION};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_bytes::ByteBuf;

use crate::access;
use crate::changes::{ChangesError, Outcome, load_document, stored_changes};
use crate::database::{Database, now_text};
use crate::directory::Device;
use crate::index;
use crate::purge;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The request itself is broken; nothing of it was stored.
    #[error("{0}")]
    BadRequest(String),
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
    /// The device's role may not sync (see [`crate::access`]).
    #[error("{0}")]
    Forbidden(String),
    /// The request uploads more encounters or changes than one request may; nothing of it was
    /// stored (see [`SyncCaps`]).
    #[error("{0}")]
    TooManyItems(String),
    /// The device has filed its day's ceiling of new encounters; nothing of the request was
    /// stored. The ceiling resets at the next UTC midnight, `retry_after_secs` from now.
    #[error(
        "this device has filed {filed} new encounters today and this request adds {adding}; the server takes at most {limit} a day from one device"
    )]
    DailyCeiling {
        filed: u64,
        adding: u64,
        limit: u64,
        retry_after_secs: u64,
    },
}

impl From<ChangesError> for LedgerError {
    fn from(err: ChangesError) -> Self {
        match err {
            ChangesError::Sqlite(err) => LedgerError::Sqlite(err),
            ChangesError::Corrupt(what) => LedgerError::Corrupt(what),
        }
    }
}

/// Ceilings on what devices upload, so that no request holds the single writer for long while
/// other devices wait, and no device (a broken app, a stolen token) files without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncCaps {
    /// Encounters one request may upload changes of.
    pub max_encounters_per_request: usize,
    /// Changes one request may upload.
    pub max_changes_per_request: usize,
    /// New encounters one device may file per UTC day.
    pub max_new_encounters_per_day: u64,
}

impl Default for SyncCaps {
    /// 500 encounters and 2,000 changes per request (what the app's pages hold at most), and
    /// 20,000 new encounters per device per day: far above any real patrol's day.
    fn default() -> Self {
        Self {
            max_encounters_per_request: protocol::MAX_ENCOUNTERS_PER_REQUEST,
            max_changes_per_request: protocol::MAX_CHANGES_PER_REQUEST,
            max_new_encounters_per_day: 20_000,
        }
    }
}

impl SyncCaps {
    /// No ceiling at all: for bulk loads and tests that call the ledger directly.
    pub fn unlimited() -> Self {
        Self {
            max_encounters_per_request: usize::MAX,
            max_changes_per_request: usize::MAX,
            max_new_encounters_per_day: u64::MAX,
        }
    }

    /// Refuses a request that uploads more encounters or changes than one request may, before
    /// anything of it is decoded or the writer is waited for.
    pub fn check_request(&self, request: &SyncRequest) -> Result<(), LedgerError> {
        let changes: usize = request.changes.iter().map(|g| g.changes.len()).sum();
        let encounters = request
            .changes
            .iter()
            .map(|g| g.encounter)
            .collect::<HashSet<_>>()
            .len();
        if encounters > self.max_encounters_per_request {
            return Err(LedgerError::TooManyItems(format!(
                "the request uploads changes of {encounters} encounters; at most {} per request",
                self.max_encounters_per_request
            )));
        }
        if changes > self.max_changes_per_request {
            return Err(LedgerError::TooManyItems(format!(
                "the request uploads {changes} changes; at most {} per request",
                self.max_changes_per_request
            )));
        }
        Ok(())
    }
}

/// Refuses the request if its new encounters would take `device` past its day's ceiling, else
/// returns the ids that are new (not yet on this server) so [`count_new_encounters`] can count
/// those stored. Inside the request's transaction, before anything is stored.
fn check_daily_ceiling(
    tx: &Connection,
    device: &Device,
    uploads: &[Upload],
    caps: &SyncCaps,
) -> Result<Vec<EncounterId>, LedgerError> {
    if caps.max_new_encounters_per_day == u64::MAX {
        return Ok(Vec::new());
    }
    let mut new = Vec::new();
    for upload in uploads {
        if encounter_team(tx, upload.encounter)?.is_none() {
            new.push(upload.encounter);
        }
    }
    if new.is_empty() {
        return Ok(new);
    }
    let now = chrono::Utc::now();
    let filed: i64 = tx
        .query_row(
            "SELECT encounters FROM device_intake WHERE device = ?1 AND day = ?2",
            params![device.id.as_bytes(), now.date_naive().to_string()],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let filed = filed.unsigned_abs();
    let adding = new.len() as u64;
    if filed.saturating_add(adding) > caps.max_new_encounters_per_day {
        let midnight = now
            .date_naive()
            .succ_opt()
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .map_or(now, |at| at.and_utc());
        return Err(LedgerError::DailyCeiling {
            filed,
            adding,
            limit: caps.max_new_encounters_per_day,
            retry_after_secs: (midnight - now).num_seconds().max(1).unsigned_abs(),
        });
    }
    Ok(new)
}

/// Adds the encounters among `new` that the request stored to `device`'s count for today, and
/// forgets its earlier days.
fn count_new_encounters(
    tx: &Connection,
    device: &Device,
    new: &[EncounterId],
) -> Result<(), LedgerError> {
    let mut stored = 0i64;
    for id in new {
        stored += i64::from(encounter_team(tx, *id)?.is_some());
    }
    if stored == 0 {
        return Ok(());
    }
    let day = chrono::Utc::now().date_naive().to_string();
    tx.execute(
        "DELETE FROM device_intake WHERE device = ?1 AND day != ?2",
        params![device.id.as_bytes(), day],
    )?;
    tx.execute(
        "INSERT INTO device_intake (device, day, encounters) VALUES (?1, ?2, ?3)
         ON CONFLICT (device, day) DO UPDATE SET encounters = encounters + excluded.encounters",
        params![device.id.as_bytes(), day, stored],
    )?;
    Ok(())
}

/// Limits on what one response carries. A response stops adding changes past its limit (at
/// least one change is always sent, so a page always makes progress).
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// Bytes of change data per response when the device does not say what it wants.
    pub default_response_change_bytes: usize,
    /// The most a device may ask for (a phone on a LAN asks for large pages).
    pub max_response_change_bytes: usize,
}

/// The least a device may ask for: smaller pages cost more in headers than they save.
pub const MIN_RESPONSE_CHANGE_BYTES: usize = 4 * 1024;

/// At most this many missing changes are asked for in one response.
const MAX_WANTED: usize = 256;

impl Default for PageLimits {
    /// 512 KiB of changes per response unless the device asks otherwise: about 100 KB once
    /// compressed, a few seconds on a 2G link. Frames that arrive before a cut are kept, so a
    /// larger page costs little.
    fn default() -> Self {
        Self {
            default_response_change_bytes: 512 * 1024,
            max_response_change_bytes: 16 * 1024 * 1024,
        }
    }
}

impl PageLimits {
    /// Only `max_response_change_bytes` per response, whatever the device asks for.
    pub fn at_most(bytes: usize) -> Self {
        Self {
            default_response_change_bytes: bytes,
            max_response_change_bytes: bytes,
        }
    }

    /// The response size for a request asking for `wanted` bytes.
    fn for_request(&self, wanted: Option<u64>) -> usize {
        let ceiling = self.max_response_change_bytes;
        match wanted {
            None => self.default_response_change_bytes.min(ceiling),
            Some(bytes) => usize::try_from(bytes)
                .unwrap_or(usize::MAX)
                .clamp(MIN_RESPONSE_CHANGE_BYTES.min(ceiling), ceiling),
        }
    }
}

/// One encounter's uploaded changes, decoded.
#[derive(Debug)]
struct Upload {
    encounter: EncounterId,
    changes: Vec<Change>,
}

/// A sync request whose changes are decoded and checked for shape, ready to be stored. Decoding
/// happens before the database's write lock is taken, so a large or hostile body does not hold
/// up other devices' syncs.
#[derive(Debug)]
pub struct DecodedRequest {
    request: SyncRequest,
    uploads: Vec<Upload>,
}

/// Decodes every change of the request, so a malformed request is refused whole before anything
/// is written. Groups naming the same encounter are joined and repeated changes dropped, so a
/// clumsy client's request is still stored exactly once.
pub fn decode(request: SyncRequest) -> Result<DecodedRequest, LedgerError> {
    if request
        .request_id
        .as_ref()
        .is_some_and(|id| id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES)
    {
        return Err(LedgerError::BadRequest(format!(
            "request_id must be 1 to {MAX_REQUEST_ID_BYTES} bytes"
        )));
    }
    if request.resume.len() > MAX_RESUMED {
        return Err(LedgerError::BadRequest(format!(
            "resume names {} requests; at most {MAX_RESUMED} are answered",
            request.resume.len()
        )));
    }
    if request.vaults.len() > MAX_VAULTS_PER_REQUEST {
        return Err(LedgerError::BadRequest(format!(
            "the request carries {} sealed vaults; at most {MAX_VAULTS_PER_REQUEST} per request",
            request.vaults.len()
        )));
    }
    let mut uploads: Vec<Upload> = Vec::new();
    let mut position_of: HashMap<EncounterId, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for group in &request.changes {
        for (index, bytes) in group.changes.iter().enumerate() {
            let bad = |reason: String| {
                LedgerError::BadRequest(format!(
                    "change {index} of encounter {} is not an acceptable Automerge change: {reason}",
                    group.encounter
                ))
            };
            if protocol::is_compressed_change(bytes) {
                return Err(bad(
                    "compressed changes are not accepted; send them uncompressed".into(),
                ));
            }
            let change = parse_change(bytes).map_err(|err| bad(err.to_string()))?;
            if !seen.insert(change.hash()) {
                continue;
            }
            let position = *position_of.entry(group.encounter).or_insert_with(|| {
                uploads.push(Upload {
                    encounter: group.encounter,
                    changes: Vec::new(),
                });
                uploads.len() - 1
            });
            uploads[position].changes.push(change);
        }
    }
    Ok(DecodedRequest { request, uploads })
}

/// The hash of the change at log position `seq` (empty for position 0), purged changes included:
/// a device whose cursor points at a purged change still holds everything up to it.
fn hash_at(conn: &Connection, seq: u64) -> Result<Vec<u8>, rusqlite::Error> {
    if seq == 0 {
        return Ok(Vec::new());
    }
    conn.query_row(
        "SELECT hash FROM changes WHERE seq = ?1
         UNION ALL SELECT hash FROM purged_changes WHERE seq = ?1 LIMIT 1",
        [i64::try_from(seq).unwrap_or(-1)],
        |row| row.get(0),
    )
    .optional()
    .map(Option::unwrap_or_default)
}

/// The team encounter `id` belongs to, or `None` if the server holds no such encounter.
pub fn encounter_team(tx: &Connection, id: EncounterId) -> Result<Option<String>, rusqlite::Error> {
    tx.query_row(
        "SELECT team FROM encounters WHERE id = ?1",
        [id.as_bytes()],
        |row| row.get(0),
    )
    .optional()
}

fn reject(encounter: EncounterId, reason: RejectReason, message: String) -> Rejection {
    tracing::info!(%encounter, ?reason, %message, "changes refused");
    Rejection {
        encounter,
        reason,
        message,
    }
}

/// The one answer for an encounter id a device may not file changes under, whatever the cause
/// (a first change that does not name it, or an id another team holds): the same reason and
/// words for each, so the answer does not tell whether some other team's encounter has this id.
fn not_usable(id: EncounterId) -> Rejection {
    reject(
        id,
        RejectReason::InvalidChange,
        format!(
            "this device may not file changes under encounter {id}: a new encounter's first change is `create encounter {id}` from the device's own app; check the id the changes are filed under"
        ),
    )
}

/// A device uploads changes it wrote, and changes relayed to it by a teammate's phone: their
/// author must be an active device of the uploader's team, not awaiting approval (refused, its
/// changes stay on the relaying phone and go again once it is approved). Returns why not, if not.
fn check_author(
    tx: &Connection,
    uploader: &Device,
    change: &Change,
) -> Result<Result<(), String>, LedgerError> {
    let Some(author) = device_of_actor(change.actor_id()) else {
        return Ok(Err(format!(
            "change {} was written by actor {}, which is not an Auxilio device's",
            change.hash(),
            change.actor_id()
        )));
    };
    if author == uploader.id {
        return Ok(Ok(()));
    }
    let author_row: Option<(String, Option<String>, String, bool)> = tx
        .query_row(
            "SELECT team, revoked_at, role, awaiting_approval FROM devices WHERE id = ?1",
            [author.as_bytes()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    Ok(match author_row {
        // Only a device whose role syncs writes encounter documents: a coordinator's, an
        // auditor's or an administrator's name on a change would be a forgery by the uploader.
        Some((team, None, _, true)) if team == uploader.team => Err(format!(
            "change {} was written by device {author}, which awaits approval by a team lead of `{team}`",
            change.hash()
        )),
        Some((team, None, role, false)) if team == uploader.team => {
            match role.parse::<crate::directory::Role>() {
                Ok(role) if access::allows(role, access::Permission::Sync) => Ok(()),
                _ => Err(format!(
                    "change {} names device {author} as its author, a {role} device, which does not write encounters; only devices that sync (field, team lead) author changes",
                    change.hash()
                )),
            }
        }
        Some((_, Some(_), _, _)) => Err(format!(
            "change {} was written by device {author}, which has been revoked",
            change.hash()
        )),
        _ => Err(format!(
            "change {} was written by device {author}, which is not a device of team `{}`",
            change.hash(),
            uploader.team
        )),
    })
}

/// Why a merged document may not be stored under `team`, if it names another one: an encounter
/// never moves between teams by sync, or a device could hand its record (health data included)
/// to a team that should not see it, or push one out of its own team's view. Every concurrent
/// value counts, not only the one shown, since the next edit may make any of them win. A
/// document naming no team yet (its first change has not arrived) is not refused; the index
/// flags a complete one without a team.
fn team_change(document: &EncounterDocument, team: &str) -> Option<String> {
    let values = document.team_values();
    let other = values.iter().find(|value| value.as_deref() != Some(team))?;
    let named = match other {
        Some(other) => format!("team `{other}`"),
        None => "a team that is not text".to_string(),
    };
    Some(if values.len() > 1 {
        format!(
            "the record would hold {named} beside `{team}` (concurrent edits); encounters stay with the team that filed them: set `team={team}`"
        )
    } else {
        format!(
            "the record would name {named}, but the encounter belongs to `{team}`; encounters stay with the team that filed them: set `team={team}`"
        )
    })
}

/// Stores one encounter's uploaded changes; returns the hashes now durably stored, or why not.
fn ingest_encounter(
    tx: &Transaction<'_>,
    device: &Device,
    uploader_actor: Option<&[u8]>,
    upload: Upload,
    aggregates: index::facts::Aggregates,
) -> Result<Result<Vec<ByteBuf>, Rejection>, LedgerError> {
    let id = upload.encounter;
    // Checked first: whoever sends them, a purged encounter's changes are never stored again.
    if let Some(purged_at) = purge::whole_purge_time(tx, id)? {
        return Ok(Err(reject(
            id,
            RejectReason::Purged,
            format!("encounter {id} was purged on {purged_at}; drop this device's copy"),
        )));
    }
    // Whatever encounter it is filed under: a change of a purged encounter (kept on an old
    // backup of a phone) would put the purged text back on disk and on teammates' phones.
    if let Some(message) = purge::purged_change_in(tx, &upload.changes)? {
        return Ok(Err(reject(id, RejectReason::Purged, message)));
    }
    for change in &upload.changes {
        if let Err(message) = check_author(tx, device, change)? {
            return Ok(Err(reject(id, RejectReason::WrongAuthor, message)));
        }
    }
    // A document's first change names its encounter (see `EncounterDocument::create`): one filed
    // under another id would make a copy of that encounter and block the real one.
    let expected_message = format!("create encounter {id}");
    if upload
        .changes
        .iter()
        .any(|c| c.deps().is_empty() && c.message() != Some(expected_message.as_str()))
    {
        return Ok(Err(not_usable(id)));
    }
    let existing_team = encounter_team(tx, id)?;
    let team = existing_team.clone().unwrap_or_else(|| device.team.clone());
    if !device.may_see_team(&team) {
        // Answered exactly like an id refused for its first change: whether another team holds
        // an encounter with this id is not disclosed.
        return Ok(Err(not_usable(id)));
    }

    let hashes: Vec<ByteBuf> = upload
        .changes
        .iter()
        .map(|c| ByteBuf::from(c.hash().0.to_vec()))
        .collect();
    let mut fresh = Vec::new();
    for change in upload.changes {
        let stored_under: Option<Vec<u8>> = tx
            .query_row(
                "SELECT encounter FROM changes WHERE hash = ?1",
                [change.hash().0.as_slice()],
                |row| row.get(0),
            )
            .optional()?;
        match stored_under {
            None => fresh.push(change),
            Some(encounter) if encounter == id.as_bytes() => {}
            Some(_) => {
                return Ok(Err(reject(
                    id,
                    RejectReason::InvalidChange,
                    format!(
                        "change {} is already stored under another encounter",
                        change.hash()
                    ),
                )));
            }
        }
    }
    if fresh.is_empty() {
        return Ok(Ok(hashes));
    }

    let mut document = load_document(tx, id)?.unwrap_or_else(EncounterDocument::empty);
    if let Err(err) = document.apply_changes(fresh.clone()) {
        // Refused for this encounter only: the device's other encounters still get through.
        let reason = match err {
            DocumentError::Automerge(AutomergeError::DuplicateSeqNumber(..)) => {
                RejectReason::ActorReused
            }
            _ => RejectReason::InvalidChange,
        };
        return Ok(Err(reject(
            id,
            reason,
            format!("the changes cannot be merged into the stored document: {err}"),
        )));
    }
    if let Some(found) = document.schema_version().filter(|v| *v > SCHEMA_VERSION) {
        return Ok(Err(reject(
            id,
            RejectReason::UnknownSchemaVersion,
            format!(
                "schema version {found} is newer than this server's {SCHEMA_VERSION}; the device keeps the changes until the server is upgraded"
            ),
        )));
    }
    if let Some(message) = team_change(&document, &team) {
        return Ok(Err(reject(id, RejectReason::TeamChanged, message)));
    }

    // Checked before anything is stored: a document that saves but does not load again would
    // make every later sync of the encounter fail.
    let saved = match document.save_checked() {
        Ok(saved) => saved,
        Err(err) => {
            return Ok(Err(reject(
                id,
                RejectReason::InvalidChange,
                format!("the changes merge into a document that cannot be stored: {err}"),
            )));
        }
    };

    let received_at = now_text();
    for change in &fresh {
        let author = device_of_actor(change.actor_id()).unwrap_or(device.id);
        tx.execute(
            "INSERT INTO changes (encounter, team, hash, change, device, actor, received_at,
                                  uploader, uploader_actor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                id.as_bytes(),
                team,
                change.hash().0.as_slice(),
                change.raw_bytes(),
                author.as_bytes(),
                change.actor_id().to_bytes(),
                received_at,
                device.id.as_bytes(),
                uploader_actor,
            ],
        )?;
    }
    let complete = document.missing_dependencies().is_empty();
    if existing_team.is_none() {
        tx.execute(
            "INSERT INTO encounters (id, team, document, complete, received_at, updated_at, occurred_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5)",
            params![id.as_bytes(), team, saved, complete, received_at],
        )?;
    } else {
        tx.execute(
            "UPDATE encounters SET document = ?2, complete = ?3, updated_at = ?4 WHERE id = ?1",
            params![id.as_bytes(), saved, complete, received_at],
        )?;
    }
    index::update_with(tx, id, &team, &document, aggregates)?;
    Ok(Ok(hashes))
}

/// A device whose changes an encounter holds, and the devices that uploaded them: itself, or a
/// teammate's phone that relayed them. A relayed change is accepted only from a device of the
/// author's team whose role syncs ([`check_author`]); the record view shows both, so a person
/// reading it can tell who wrote a value from who sent it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Author {
    pub device: DeviceId,
    pub uploaded_by: Vec<DeviceId>,
}

/// Every author of encounter `id`'s stored changes with their uploaders, in the order each
/// first appears in the change log.
pub fn authors(conn: &Connection, id: EncounterId) -> Result<Vec<Author>, LedgerError> {
    let mut statement = conn.prepare_cached(
        "SELECT device, coalesce(uploader, device) FROM changes WHERE encounter = ?1
         GROUP BY device, coalesce(uploader, device) ORDER BY min(seq)",
    )?;
    let rows = statement.query_map([id.as_bytes()], |row| {
        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
    })?;
    let device_id = |bytes: &[u8]| {
        DeviceId::from_slice(bytes).map_err(|e| LedgerError::Corrupt(format!("a device id: {e}")))
    };
    let mut authors: Vec<Author> = Vec::new();
    for row in rows {
        let (author, uploader) = row?;
        let (author, uploader) = (device_id(&author)?, device_id(&uploader)?);
        match authors.iter_mut().find(|a| a.device == author) {
            Some(known) => known.uploaded_by.push(uploader),
            None => authors.push(Author {
                device: author,
                uploaded_by: vec![uploader],
            }),
        }
    }
    Ok(authors)
}

/// The log position of the last stored change (0 for an empty log). Read before and after a
/// sync under the writer lock, it brackets exactly the changes that sync stored.
pub fn log_end(conn: &Connection) -> Result<u64, LedgerError> {
    let end: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |row| {
        row.get(0)
    })?;
    Ok(end.max(0) as u64)
}

/// The encounters, each once and with its team, of the changes stored after log position
/// `after`: what a sync stored, for the coordinators' event stream.
pub fn encounters_stored_after(
    conn: &Connection,
    after: u64,
) -> Result<Vec<(EncounterId, String)>, LedgerError> {
    let mut statement = conn.prepare_cached(
        "SELECT encounter, team FROM changes WHERE seq > ?1 GROUP BY encounter ORDER BY min(seq)",
    )?;
    let rows = statement.query_map([after as i64], |row| {
        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, team) = row?;
        let id = EncounterId::from_slice(&id).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
        out.push((id, team));
    }
    Ok(out)
}

/// Stores a batch of changes exactly as a sync request from `device` would (same checks, same
/// tables, one transaction), but leaves the map and stats aggregates alone and answers only the
/// refusals. For bulk loads (the map benchmark, imports), which call
/// [`index::facts::recompute_aggregates`] once after the last batch, as [`rebuild`] does.
pub fn import(
    tx: &Transaction<'_>,
    device: &Device,
    request: &SyncRequest,
) -> Result<Vec<Rejection>, LedgerError> {
    let DecodedRequest { request, uploads } = decode(request.clone())?;
    let mut rejected = Vec::new();
    for upload in uploads {
        if let Err(rejection) = ingest_encounter(
            tx,
            device,
            request.actor.as_deref().map(Vec::as_slice),
            upload,
            index::facts::Aggregates::Skip,
        )? {
            rejected.push(rejection);
        }
    }
    Ok(rejected)
}

/// Handles one sync request from `device`: [`decode`], then [`sync_decoded`].
pub fn sync(
    tx: &Transaction<'_>,
    device: &Device,
    request: &SyncRequest,
    limits: PageLimits,
) -> Result<SyncResponse, LedgerError> {
    sync_decoded(
        tx,
        device,
        decode(request.clone())?,
        limits,
        &SyncCaps::unlimited(),
    )
}

/// Stores a decoded request's changes and builds the response, all in one transaction that
/// commits before the response exists. A request whose new encounters would pass the device's
/// daily ceiling (`caps`) is refused whole before anything is stored.
pub fn sync_decoded(
    tx: &Transaction<'_>,
    device: &Device,
    decoded: DecodedRequest,
    limits: PageLimits,
    caps: &SyncCaps,
) -> Result<SyncResponse, LedgerError> {
    if !access::allows(device.role, access::Permission::Sync) {
        // The HTTP handler refuses first; this keeps every other caller to the same rule.
        return Err(LedgerError::Forbidden(format!(
            "a {} device does not sync encounter documents",
            device.role
        )));
    }
    if device.awaiting_approval {
        return Err(LedgerError::Forbidden(format!(
            "device {} awaits approval by a team lead of `{}`",
            device.id, device.team
        )));
    }
    let DecodedRequest { request, uploads } = decoded;
    let uploaded: HashSet<Vec<u8>> = uploads
        .iter()
        .flat_map(|u| u.changes.iter().map(|c| c.hash().0.to_vec()))
        .collect();
    let new_encounters = check_daily_ceiling(tx, device, &uploads, caps)?;
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let touched: Vec<EncounterId> = uploads.iter().map(|u| u.encounter).collect();
    for upload in uploads {
        match ingest_encounter(
            tx,
            device,
            request.actor.as_deref().map(Vec::as_slice),
            upload,
            index::facts::Aggregates::Maintain,
        )? {
            Ok(hashes) => accepted.extend(hashes),
            Err(rejection) => rejected.push(rejection),
        }
    }
    count_new_encounters(tx, device, &new_encounters)?;
    // After the changes, so a vault travelling with its encounter's first changes finds it.
    let (vaults_accepted, vaults_rejected) =
        crate::vault::store_uploaded(tx, device, &request.vaults)?;
    let vault_recipients = crate::vault::current_recipients(tx)?;
    // A cursor is trusted only if it still names the same change: after a restore from backup
    // (or against another server) its position may hold another change or none, and the device
    // would silently skip what it never had. Then the device starts again from the beginning.
    let matches = request.cursor == 0
        || request.cursor_check.as_ref().is_some_and(|check| {
            hash_at(tx, request.cursor)
                .is_ok_and(|hash| !hash.is_empty() && hash == check.as_slice())
        });
    let cursor = if matches { request.cursor } else { 0 };
    if !matches {
        tracing::warn!(device = %device.id, cursor = request.cursor, "cursor does not match this server's history; sending everything again");
    }
    let resumed = resume_requests(tx, device, &request.resume, &mut accepted, &mut rejected)?;
    if let Some(request_id) = &request.request_id
        && !touched.is_empty()
    {
        record_outcome(tx, device, request_id, &accepted, &rejected)?;
    }
    let wanted = wanted_changes(tx, device, &touched)?;
    let (changes, cursor, more) = page(
        tx,
        device,
        request.actor.as_deref().map(Vec::as_slice),
        cursor,
        &uploaded,
        limits.for_request(request.max_response_bytes),
    )?;
    let cursor_check = ByteBuf::from(hash_at(tx, cursor)?);
    let (purges, purges_through, more_purges) =
        purge::notices_after(tx, &access::team_scope(device), request.purges_after)?;
    Ok(SyncResponse {
        protocol: PROTOCOL_VERSION,
        accepted,
        rejected,
        wanted,
        resumed,
        changes,
        cursor_check,
        cursor,
        more: more || more_purges,
        restarted: !matches,
        purges,
        purges_through,
        complete: true,
        vault_recipients,
        vaults_accepted,
        vaults_rejected,
    })
}

/// Earlier requests' outcomes a device keeps: it has at most one request in flight, and a few
/// more cover a run of cut retries.
const OUTCOMES_KEPT_PER_DEVICE: i64 = 16;

/// Remembers what request `request_id` of `device` stored and refused, in the transaction
/// that stores its changes, and forgets the device's older outcomes.
fn record_outcome(
    tx: &Connection,
    device: &Device,
    request_id: &[u8],
    accepted: &[ByteBuf],
    rejected: &[Rejection],
) -> Result<(), LedgerError> {
    let outcome = Outcome {
        accepted: accepted.to_vec(),
        rejected: rejected.to_vec(),
    };
    tx.execute(
        "INSERT OR REPLACE INTO request_outcomes (device, request_id, outcome) VALUES (?1, ?2, ?3)",
        params![device.id.as_bytes(), request_id, protocol::encode(&outcome)],
    )?;
    tx.execute(
        "DELETE FROM request_outcomes WHERE device = ?1 AND seq <= (
             SELECT seq FROM request_outcomes WHERE device = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
        params![device.id.as_bytes(), OUTCOMES_KEPT_PER_DEVICE],
    )?;
    Ok(())
}

/// Adds the outcomes of the earlier requests named in `resume` to this response; returns the
/// ids found. A request not found never committed, and its device sends its page again.
fn resume_requests(
    tx: &Connection,
    device: &Device,
    resume: &[ByteBuf],
    accepted: &mut Vec<ByteBuf>,
    rejected: &mut Vec<Rejection>,
) -> Result<Vec<ByteBuf>, LedgerError> {
    let mut statement =
        tx.prepare("SELECT outcome FROM request_outcomes WHERE device = ?1 AND request_id = ?2")?;
    let mut resumed = Vec::new();
    for request_id in resume {
        let outcome: Option<Vec<u8>> = statement
            .query_row(
                params![device.id.as_bytes(), request_id.as_slice()],
                |row| row.get(0),
            )
            .optional()?;
        let Some(outcome) = outcome else {
            continue;
        };
        let outcome: Outcome = ciborium::from_reader(outcome.as_slice())
            .map_err(|e| LedgerError::Corrupt(format!("a stored request outcome: {e}")))?;
        accepted.extend(outcome.accepted);
        rejected.extend(outcome.rejected);
        resumed.push(request_id.clone());
    }
    Ok(resumed)
}

/// Changes the server lacks that stored changes depend on, in the encounters this request
/// touched first and then in any other incomplete encounter `device` may see: a device holding
/// them (even long acknowledged) sends them next, so a change stored before its dependencies
/// (relayed, or re-sent after a server restore) does not wait forever.
fn wanted_changes(
    tx: &Connection,
    device: &Device,
    touched: &[EncounterId],
) -> Result<Vec<WantedChanges>, LedgerError> {
    let mut candidates: Vec<EncounterId> = touched.to_vec();
    let mut statement =
        tx.prepare("SELECT id, team FROM encounters WHERE complete = 0 ORDER BY id LIMIT 64")?;
    let incomplete = statement.query_map([], |row| {
        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?))
    })?;
    for row in incomplete {
        let (id, team) = row?;
        if device.may_see_team(&team)
            && let Ok(id) = EncounterId::from_slice(&id)
            && !candidates.contains(&id)
        {
            candidates.push(id);
        }
    }
    let mut wanted = Vec::new();
    let mut count = 0;
    for id in candidates {
        if count >= MAX_WANTED {
            break;
        }
        let complete: Option<bool> = tx
            .query_row(
                "SELECT complete FROM encounters WHERE id = ?1",
                [id.as_bytes()],
                |row| row.get(0),
            )
            .optional()?;
        if complete != Some(false) {
            continue;
        }
        let Some(mut document) = load_document(tx, id)? else {
            continue;
        };
        let hashes: Vec<ByteBuf> = document
            .missing_dependencies()
            .into_iter()
            .take(MAX_WANTED - count)
            .map(|hash| ByteBuf::from(hash.0.to_vec()))
            .collect();
        count += hashes.len();
        if !hashes.is_empty() {
            wanted.push(WantedChanges {
                encounter: id,
                hashes,
            });
        }
    }
    Ok(wanted)
}

/// The changes after `cursor` that `device` may see, skipping those its store wrote or uploaded
/// itself (`own_actor`) and those it has just sent, up to about `max_bytes` of change data.
fn page(
    tx: &Connection,
    device: &Device,
    own_actor: Option<&[u8]>,
    cursor: u64,
    skip: &HashSet<Vec<u8>>,
    max_bytes: usize,
) -> Result<(Vec<ResponseFrame>, u64, bool), LedgerError> {
    let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
    let last_seq: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |row| {
        row.get(0)
    })?;
    let scope = access::team_scope(device);
    let (sql, team_filter) = match scope.team() {
        None => (
            "SELECT seq, encounter, hash, change FROM changes
             WHERE seq > ?1 AND ?2 IS NULL
               AND (?3 IS NULL OR (actor != ?3 AND coalesce(uploader_actor, x'') != ?3))
             ORDER BY seq",
            None,
        ),
        Some(team) => (
            "SELECT seq, encounter, hash, change FROM changes
             WHERE seq > ?1 AND team = ?2
               AND (?3 IS NULL OR (actor != ?3 AND coalesce(uploader_actor, x'') != ?3))
             ORDER BY seq",
            Some(team),
        ),
    };
    let mut statement = tx.prepare(sql)?;
    let mut rows = statement.query(params![cursor, team_filter, own_actor])?;
    let mut frames: Vec<ResponseFrame> = Vec::new();
    let mut bytes = 0usize;
    let mut reached = cursor;
    let mut more = false;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let hash: Vec<u8> = row.get(2)?;
        if skip.contains(&hash) {
            reached = seq;
            continue;
        }
        let change: Vec<u8> = row.get(3)?;
        if bytes > 0 && bytes + change.len() > max_bytes {
            more = true;
            break;
        }
        reached = seq;
        bytes += change.len();
        let encounter = EncounterId::from_slice(&row.get::<_, Vec<u8>>(1)?)
            .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
        let through = u64::try_from(seq).unwrap_or(0);
        match frames.last_mut() {
            Some(frame) if frame.encounter == encounter => {
                frame.changes.push(ByteBuf::from(change));
                frame.through = through;
            }
            _ => frames.push(ResponseFrame {
                encounter,
                changes: vec![ByteBuf::from(change)],
                through,
            }),
        }
    }
    let new_cursor = if more { reached } else { last_seq };
    Ok((
        frames,
        u64::try_from(new_cursor.max(cursor)).unwrap_or(0),
        more,
    ))
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    pub encounters: u64,
    pub changes: u64,
    /// Encounters some of whose changes still wait for a change they depend on.
    pub incomplete: u64,
}

/// Rebuilds every encounter's merged document and index columns from the stored changes alone,
/// `batch` encounters per transaction; `progress` sees (done, total) after each batch. This is
/// what makes the `changes` table the only thing that must never be lost.
pub fn rebuild(
    database: &Database,
    batch: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<RebuildReport, LedgerError> {
    let encounters: Vec<(Vec<u8>, String, String, String)> = database.read(|conn| {
        let mut statement = conn.prepare(
            "SELECT encounter, min(team), min(received_at), max(received_at) FROM changes
             GROUP BY encounter ORDER BY min(seq)",
        )?;
        statement
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<_, rusqlite::Error>>()
    })?;
    let total = encounters.len() as u64;
    let mut report = RebuildReport::default();
    for chunk in encounters.chunks(batch.max(1)) {
        // Each batch commits on its own: what a stopped rebuild committed stays valid.
        report = database.write(|tx| rebuild_batch(tx, chunk, report))?;
        progress(report.encounters, total);
    }
    // The aggregates were left alone above, so the map and stats kept answering from the old
    // ones; they are remade from the refreshed facts in one transaction.
    database.write(|tx| index::facts::recompute_aggregates(tx))?;
    Ok(report)
}

/// Rebuilds one batch of [`rebuild`] in the caller's transaction, adding to `report`.
fn rebuild_batch(
    tx: &Transaction<'_>,
    chunk: &[(Vec<u8>, String, String, String)],
    mut report: RebuildReport,
) -> Result<RebuildReport, LedgerError> {
    for (id, team, first_received, last_received) in chunk {
        let id = EncounterId::from_slice(id).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
        let changes = stored_changes(tx, id)?;
        report.changes += changes.len() as u64;
        let mut document = EncounterDocument::empty();
        document
            .apply_changes(changes)
            .map_err(|e| LedgerError::Corrupt(format!("encounter {id}: {e}")))?;
        let complete = document.missing_dependencies().is_empty();
        report.incomplete += u64::from(!complete);
        tx.execute(
            "INSERT INTO encounters (id, team, document, complete, received_at, updated_at, occurred_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5)
             ON CONFLICT (id) DO UPDATE SET team = excluded.team, document = excluded.document,
                 complete = excluded.complete, received_at = excluded.received_at,
                 updated_at = excluded.updated_at",
            params![id.as_bytes(), team, document.save(), complete, first_received, last_received],
        )?;
        index::update_with(tx, id, team, &document, index::facts::Aggregates::Skip)?;
        report.encounters += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use auxilio_core::protocol::EncounterChanges;

    fn request(groups: &[(EncounterId, usize)]) -> SyncRequest {
        SyncRequest {
            protocol: PROTOCOL_VERSION,
            cursor_check: None,
            actor: None,
            cursor: 0,
            changes: groups
                .iter()
                .map(|(encounter, n)| EncounterChanges {
                    encounter: *encounter,
                    changes: vec![ByteBuf::from(vec![0u8]); *n],
                })
                .collect(),
            request_id: None,
            resume: vec![],
            max_response_bytes: None,
            purges_after: 0,
            vaults: vec![],
        }
    }

    #[test]
    fn a_request_over_either_per_request_ceiling_is_refused_and_one_at_them_is_not() {
        let caps = SyncCaps {
            max_encounters_per_request: 2,
            max_changes_per_request: 3,
            ..SyncCaps::default()
        };
        let (a, b, c) = (
            EncounterId::random(),
            EncounterId::random(),
            EncounterId::random(),
        );
        // Groups naming the same encounter count once.
        assert!(
            caps.check_request(&request(&[(a, 1), (b, 1), (a, 1)]))
                .is_ok()
        );
        let too_many_encounters = caps.check_request(&request(&[(a, 1), (b, 1), (c, 1)]));
        assert!(
            matches!(&too_many_encounters, Err(LedgerError::TooManyItems(m)) if m.contains("3 encounters; at most 2")),
            "{too_many_encounters:?}"
        );
        let too_many_changes = caps.check_request(&request(&[(a, 4)]));
        assert!(
            matches!(&too_many_changes, Err(LedgerError::TooManyItems(m)) if m.contains("4 changes; at most 3")),
            "{too_many_changes:?}"
        );
    }
}
