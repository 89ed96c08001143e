//! Retention: each category of data has a period, after which it is purged on its own (the
//! brief's data-protection rule 5), by `auxilio serve` every `--retention-every` seconds and by
//! `auxilio admin retention run`.
//!
//! | category          | kept                                                    | default   |
//! |-------------------|---------------------------------------------------------|-----------|
//! | identity vault    | N days after the UASC hand-over, else after closure      | 30 days   |
//! | whole encounter   | N days after it occurred (`occurred_at`)                 | 1825 days |
//!
//! A vault's period starts at the hand-over once every UASC casualty of the encounter has a
//! `uasc.handed_over_at` (the latest of them); otherwise at the encounter's closure (its
//! `ended_at`, or when the server last merged a change if it has none); an open encounter whose
//! children are not all handed over keeps its vault. A period of 0 days turns that category's
//! purge off (a mistyped 0 must not erase everything at once).
//!
//! Each purge is an ordinary [`crate::purge`] purge audited as actor `retention`, so devices drop
//! their copies the same way. A sweep works in batches of [`BATCH`] purges, one transaction
//! each, releasing the writer between them, so syncs are never held up for long.

use auxilio_core::EncounterId;
use auxilio_core::protocol::PurgeKind;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde_json::Value as Json;

use crate::database::Database;
use crate::ledger;
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

/// When an encounter's vault period starts (see the module doc), from its merged record and the
/// time the server last merged a change into it.
fn vault_period_start(record: &Json, updated_at: &str) -> Option<(DateTime<Utc>, &'static str)> {
    let hand_overs: Vec<Option<DateTime<Utc>>> = record["casualties"]
        .as_object()
        .into_iter()
        .flat_map(|casualties| casualties.values())
        .filter(|casualty| casualty["uasc"].is_object())
        .map(|casualty| {
            casualty["uasc"]["handed_over_at"]
                .as_str()
                .and_then(parse_time)
        })
        .collect();
    if !hand_overs.is_empty() && hand_overs.iter().all(Option::is_some) {
        return hand_overs
            .into_iter()
            .flatten()
            .max()
            .map(|t| (t, "hand-over"));
    }
    if record["status"].as_str() == Some("closed") {
        let closed = record["ended_at"]
            .as_str()
            .and_then(parse_time)
            .or_else(|| parse_time(updated_at))?;
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
        let cutoff = text(now - Duration::days(i64::from(policy.encounter_days)));
        let mut statement = conn.prepare_cached(
            "SELECT id, occurred_at FROM encounters WHERE occurred_at < ?1 ORDER BY occurred_at LIMIT ?2",
        )?;
        let rows = statement.query_map(
            rusqlite::params![cutoff, i64::try_from(limit).unwrap_or(i64::MAX)],
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
            let updated_at: Option<String> = conn
                .query_row(
                    "SELECT updated_at FROM encounters WHERE id = ?1",
                    [encounter.as_bytes()],
                    |row| row.get(0),
                )
                .optional()?;
            let (Some(updated_at), Some(document)) =
                (updated_at, ledger::load_document(conn, encounter)?)
            else {
                continue;
            };
            if let Some((start, event)) = vault_period_start(&document.to_json(), &updated_at)
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
    conn: &mut Connection,
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<Vec<PurgeReport>, PurgeError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut purged = Vec::new();
    for due in due(&tx, policy, now, BATCH)? {
        purged.push(purge::purge_in(
            &tx,
            due.encounter,
            due.kind,
            &due.reason,
            ACTOR,
        )?);
    }
    tx.commit()?;
    if !purged.is_empty() {
        purge::clear_files(conn)?;
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
        let batch = database.write(|conn| sweep_batch(conn, policy, now))?;
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

    #[test]
    fn a_vault_period_starts_when_every_child_is_handed_over() {
        let record = serde_json::json!({"status": "open", "casualties": {
            "p1": {"uasc": {"handed_over_at": "2026-01-05T00:00:00Z"}},
            "p2": {"uasc": {"handed_over_at": "2026-01-09T00:00:00Z"}},
            "p3": {"sex": "m"}
        }});
        assert_eq!(
            vault_period_start(&record, "2026-02-01T00:00:00Z"),
            Some((at("2026-01-09T00:00:00Z"), "hand-over"))
        );
    }

    #[test]
    fn a_vault_with_a_child_not_handed_over_waits_for_closure() {
        let mut record = serde_json::json!({"status": "open", "casualties": {
            "p1": {"uasc": {"handed_over_at": "2026-01-05T00:00:00Z"}},
            "p2": {"uasc": {"dif_unit": "Hermosillo"}}
        }});
        assert_eq!(vault_period_start(&record, "2026-02-01T00:00:00Z"), None);
        record["status"] = "closed".into();
        assert_eq!(
            vault_period_start(&record, "2026-02-01T00:00:00Z"),
            Some((at("2026-02-01T00:00:00Z"), "closure"))
        );
        record["ended_at"] = "2026-01-20T00:00:00Z".into();
        assert_eq!(
            vault_period_start(&record, "2026-02-01T00:00:00Z"),
            Some((at("2026-01-20T00:00:00Z"), "closure"))
        );
    }
}
