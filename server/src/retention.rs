//! Retention: each category of data has a period, after which it is purged on its own (the
//! brief's data-protection rule 5), by `auxilio serve` every `--retention-every` seconds and by
//! `auxilio admin retention run`.
//!
//! | category          | kept                                                    | default   |
//! |-------------------|---------------------------------------------------------|-----------|
//! | identity vault    | N days after the UASC hand-over, else after closure      | 30 days   |
//! | whole encounter   | N days after it occurred (`occurred_at`, see below)      | 1825 days |
//!
//! A vault's period starts at the hand-over once every UASC casualty of the encounter has a
//! `uasc.handed_over_at` (the latest of them); otherwise at the encounter's closure (its
//! `ended_at`, or when the server last merged a change if it has none); an open encounter whose
//! children are not all handed over keeps its vault. A period of 0 days turns that category's
//! purge off (a mistyped 0 must not erase everything at once).
//!
//! Periods count from the server's time. A device's time (`started_at` through the index's
//! `occurred_at`, `ended_at`, `handed_over_at`) counts only as far as
//! [`crate::device_time::plausible`] allows: at most
//! [`crate::device_time::MAX_OFFLINE_GAP_DAYS`] before the server first received the encounter
//! and not in the future. An encounter's period starts at its first receipt when its start is
//! further back than that (and never earlier than its first receipt less the gap); a hand-over dated outside it is treated as no hand-over, an `ended_at` outside it as
//! none (the server's last merge is the closure); the index flags all three `clock_suspect` for
//! a person to look at. A phone whose clock says 2016 erases nothing.
//!
//! Each purge is an ordinary [`crate::purge`] purge audited as actor `retention`, so devices drop
//! their copies the same way. A sweep works in batches of [`BATCH`] purges, one transaction
//! each, releasing the writer between them, so syncs are never held up for long.

use auxilio_core::EncounterId;
use auxilio_core::protocol::PurgeKind;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value as Json;

use crate::changes;
use crate::database::Database;
use crate::device_time;
use crate::purge::{self, PurgeError, PurgeReport};

/// The audit log's actor for purges the retention policy made.
pub const ACTOR: &str = "retention";

/// Purges per transaction: small enough that a sync waits at most a fraction of a second.
pub const BATCH: usize = 64;

/// How long each category is kept, in days; 0 keeps it forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub vault_days: u32,
    pub encounter_days: u32,
}

impl Default for Policy {
    /// An identity vault 30 days after hand-over; a whole encounter five years after it
    /// occurred.
    fn default() -> Self {
        Self {
            vault_days: 30,
            encounter_days: 1825,
        }
    }
}

/// One purge the policy calls for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Due {
    pub encounter: EncounterId,
    pub kind: PurgeKind,
    /// Goes to the audit log: which rule, and from when.
    pub reason: String,
}

fn text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The server's times of one encounter: when it first received it, and when it last merged a
/// change into it.
struct ServerTimes {
    received_at: String,
    updated_at: String,
}

/// When an encounter's vault period starts (see the module doc), from its merged record and the
/// server's times of it, at `now`.
fn vault_period_start(
    record: &Json,
    server: &ServerTimes,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, &'static str)> {
    let received = parse_time(&server.received_at)?;
    let device_time = |value: &Json| {
        value
            .as_str()
            .and_then(parse_time)
            .filter(|t| device_time::plausible(*t, received, now))
    };
    let hand_overs: Vec<Option<DateTime<Utc>>> = record["casualties"]
        .as_object()
        .into_iter()
        .flat_map(|casualties| casualties.values())
        .filter(|casualty| casualty["uasc"].is_object())
        .map(|casualty| device_time(&casualty["uasc"]["handed_over_at"]))
        .collect();
    if !hand_overs.is_empty() && hand_overs.iter().all(Option::is_some) {
        return hand_overs
            .into_iter()
            .flatten()
            .max()
            .map(|t| (t, "hand-over"));
    }
    if record["status"].as_str() == Some("closed") {
        let closed = device_time(&record["ended_at"]).or_else(|| parse_time(&server.updated_at))?;
        return Some((closed, "closure"));
    }
    None
}

/// What the policy calls for at `now`, at most `limit` purges: whole encounters first (oldest
/// first), then vaults.
pub fn due(
    conn: &Connection,
    policy: Policy,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Due>, PurgeError> {
    let mut out = Vec::new();
    if policy.encounter_days > 0 {
        let period = Duration::days(i64::from(policy.encounter_days));
        let cutoff = text(now - period);
        // From `occurred_at` (the device's start) when it is not suspect, else from when the
        // server first received the encounter; and never earlier than the offline gap before
        // that (rows indexed before suspect starts were flagged: `auxilio reindex` flags them).
        let received_cutoff =
            text(now - period + Duration::days(device_time::MAX_OFFLINE_GAP_DAYS));
        let mut statement = conn.prepare_cached(
            "SELECT id, CASE WHEN clock_suspect THEN received_at ELSE occurred_at END
             FROM encounters
             WHERE occurred_at < ?1 AND (clock_suspect = 0 OR received_at < ?1) AND received_at < ?3
             ORDER BY occurred_at LIMIT ?2",
        )?;
        let rows = statement.query_map(
            rusqlite::params![
                cutoff,
                i64::try_from(limit).unwrap_or(i64::MAX),
                received_cutoff
            ],
            |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?)),
        )?;
        for row in rows {
            let (id, occurred_at) = row?;
            let Ok(encounter) = EncounterId::from_slice(&id) else {
                continue;
            };
            out.push(Due {
                encounter,
                kind: PurgeKind::Whole,
                reason: format!(
                    "retention: encounters are kept {} days after they occurred (this one {occurred_at})",
                    policy.encounter_days
                ),
            });
        }
    }
    if policy.vault_days > 0 {
        let cutoff = now - Duration::days(i64::from(policy.vault_days));
        for encounter in purge::encounters_with_vault(conn)? {
            if out.len() >= limit {
                break;
            }
            if out.iter().any(|d| d.encounter == encounter) {
                continue;
            }
            let server_times: Option<ServerTimes> = conn
                .query_row(
                    "SELECT received_at, updated_at FROM encounters WHERE id = ?1",
                    [encounter.as_bytes()],
                    |row| {
                        Ok(ServerTimes {
                            received_at: row.get(0)?,
                            updated_at: row.get(1)?,
                        })
                    },
                )
                .optional()?;
            let (Some(server_times), Some(document)) =
                (server_times, changes::load_document(conn, encounter)?)
            else {
                continue;
            };
            if let Some((start, event)) =
                vault_period_start(&document.to_json(), &server_times, now)
                && start < cutoff
            {
                out.push(Due {
                    encounter,
                    kind: PurgeKind::VaultOnly,
                    reason: format!(
                        "retention: identity vaults are kept {} days after {event} (this one {})",
                        policy.vault_days,
                        text(start)
                    ),
                });
            }
        }
    }
    out.truncate(limit);
    Ok(out)
}

/// Purges one batch of what is due, in one transaction, then clears the write-ahead log.
/// Returns what it purged; fewer than [`BATCH`] means nothing more is due.
pub fn sweep_batch(
    database: &Database,
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<Vec<PurgeReport>, PurgeError> {
    let purged = database.write(|tx| {
        let mut purged = Vec::new();
        for due in due(tx, policy, now, BATCH)? {
            purged.push(purge::purge_in(
                tx,
                due.encounter,
                due.kind,
                &due.reason,
                ACTOR,
            )?);
        }
        Ok::<_, PurgeError>(purged)
    })?;
    if !purged.is_empty() {
        purge::clear_files(database)?;
    }
    Ok(purged)
}

/// Purges everything due at `now`, batch by batch, taking the writer for one batch at a time.
pub fn sweep(
    database: &Database,
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<Vec<PurgeReport>, PurgeError> {
    let mut purged = Vec::new();
    loop {
        let batch = sweep_batch(database, policy, now)?;
        let last = batch.len() < BATCH;
        purged.extend(batch);
        if last {
            return Ok(purged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        parse_time(text).unwrap()
    }

    fn server(received_at: &str, updated_at: &str) -> ServerTimes {
        ServerTimes {
            received_at: received_at.into(),
            updated_at: updated_at.into(),
        }
    }

    #[test]
    fn a_hand_over_dated_years_before_the_server_received_the_case_starts_no_period() {
        let record = serde_json::json!({"status": "open", "casualties": {
            "p1": {"uasc": {"handed_over_at": "2020-01-01T00:00:00Z"}}
        }});
        let times = server("2026-01-10T00:00:00Z", "2026-01-10T00:00:00Z");
        assert_eq!(
            vault_period_start(&record, &times, at("2026-03-01T00:00:00Z")),
            None
        );
        let mut plausible = record.clone();
        plausible["casualties"]["p1"]["uasc"]["handed_over_at"] = "2026-01-02T00:00:00Z".into();
        assert_eq!(
            vault_period_start(&plausible, &times, at("2026-03-01T00:00:00Z")),
            Some((at("2026-01-02T00:00:00Z"), "hand-over"))
        );
    }

    #[test]
    fn a_vault_period_starts_when_every_child_is_handed_over() {
        let record = serde_json::json!({"status": "open", "casualties": {
            "p1": {"uasc": {"handed_over_at": "2026-01-05T00:00:00Z"}},
            "p2": {"uasc": {"handed_over_at": "2026-01-09T00:00:00Z"}},
            "p3": {"sex": "m"}
        }});
        assert_eq!(
            vault_period_start(
                &record,
                &server("2026-01-04T00:00:00Z", "2026-02-01T00:00:00Z"),
                at("2026-02-01T00:00:00Z")
            ),
            Some((at("2026-01-09T00:00:00Z"), "hand-over"))
        );
    }

    #[test]
    fn a_vault_with_a_child_not_handed_over_waits_for_closure() {
        let mut record = serde_json::json!({"status": "open", "casualties": {
            "p1": {"uasc": {"handed_over_at": "2026-01-05T00:00:00Z"}},
            "p2": {"uasc": {"dif_unit": "Hermosillo"}}
        }});
        let times = server("2026-01-04T00:00:00Z", "2026-02-01T00:00:00Z");
        let now = at("2026-02-02T00:00:00Z");
        assert_eq!(vault_period_start(&record, &times, now), None);
        record["status"] = "closed".into();
        assert_eq!(
            vault_period_start(&record, &times, now),
            Some((at("2026-02-01T00:00:00Z"), "closure"))
        );
        record["ended_at"] = "2026-01-20T00:00:00Z".into();
        assert_eq!(
            vault_period_start(&record, &times, now),
            Some((at("2026-01-20T00:00:00Z"), "closure"))
        );
        // A closing time years before the server saw the case counts as the server's instead.
        record["ended_at"] = "2019-01-20T00:00:00Z".into();
        assert_eq!(
            vault_period_start(&record, &times, now),
            Some((at("2026-02-01T00:00:00Z"), "closure"))
        );
    }
}
