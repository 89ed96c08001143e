//! `auxilio admin`: teams, devices, the audit log, the protection officers' vault keys, purges
//! and the retention policy, straight on the data directory's database.

use auxilio_core::protocol::PurgeKind;
use auxilio_core::{DeviceId, EncounterId};
use clap::{Args, Subcommand};

use super::{DataDirArg, RetentionArgs, print_json, print_line};
use crate::audit;
use crate::database::Database;
use crate::directory::{self, Role};
use crate::purge::{self, PurgeReport};
use crate::retention;
use crate::vault;

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    data: DataDirArg,
    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Teams: the unit of access for field devices.
    #[command(
        subcommand,
        after_help = "Examples:\n  auxilio admin team add sonora\n  auxilio admin team list --json"
    )]
    Team(TeamCommand),
    /// Devices: enrol (prints the token once), approve, rotate, revoke, list.
    #[command(
        subcommand,
        after_help = "Examples:\n  auxilio admin device enroll --team sonora --role field\n  auxilio admin device list\n  auxilio admin device approve DEVICE_ID\n  auxilio admin device revoke DEVICE_ID"
    )]
    Device(DeviceCommand),
    /// The protection officers' public keys that devices seal identity vaults to.
    #[command(
        subcommand,
        after_help = "Examples:\n  auxilio vault keygen --out officer.key   # on the officer's own machine\n  auxilio admin vault-key add age1... --label \"DIF Sonora officer\"\n  auxilio admin vault-key list\n  auxilio admin vault-key retire age1..."
    )]
    VaultKey(VaultKeyCommand),
    /// The audit log: export it for an auditor, or check that nobody edited it.
    #[command(
        subcommand,
        after_help = "Examples:\n  auxilio admin audit verify\n  auxilio admin audit head >> /mnt/elsewhere/audit-heads.txt\n  auxilio admin audit verify --expect-head 1234:9f2c...\n  auxilio admin audit export --format csv > audit.csv"
    )]
    Audit(AuditCommand),
    /// Erase an encounter (or only its identity vault) from the server's stored history:
    /// changes, merged document, index rows, map and stats counts, vault envelopes. Devices
    /// drop their copies at their next sync; the reason goes to the audit log.
    #[command(
        after_help = "Examples:\n  auxilio admin purge 7Yq3...Kd --reason \"consent withdrawn (request 2026-114)\"\n  auxilio admin purge 7Yq3...Kd --vault-only --reason \"child handed over to DIF\" --data /var/lib/auxilio"
    )]
    Purge {
        /// The encounter's id, as `auxilio device list` or GET /v1/encounters show it.
        encounter: EncounterId,
        /// Erase only the identity vault (sealed envelopes); the record stays.
        #[arg(long)]
        vault_only: bool,
        /// Why, for the audit log (required; do not repeat what is erased).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// The retention policy: what `auxilio serve` purges on its own.
    #[command(
        subcommand,
        after_help = "Examples:\n  auxilio admin retention run --dry-run\n  auxilio admin retention run --retain-vault-days 30 --retain-encounter-days 1825"
    )]
    Retention(RetentionCommand),
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Purge now everything the policy says is due (each purge audited as `retention`).
    #[command(
        after_help = "Examples:\n  auxilio admin retention run --dry-run\n  auxilio admin retention run --retain-encounter-days 3650 --json"
    )]
    Run {
        #[command(flatten)]
        policy: RetentionArgs,
        /// Print what would be purged, and purge nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum VaultKeyCommand {
    /// Add a protection officer's public key (age1..., from `auxilio vault keygen`): devices seal
    /// new vaults to it from their next sync.
    #[command(
        after_help = "Example:\n  auxilio admin vault-key add age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p --label \"DIF Sonora officer\""
    )]
    Add {
        public_key: String,
        /// Whose key it is (shown to administrators only).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List the keys, retired ones included.
    #[command(after_help = "Example:\n  auxilio admin vault-key list --json")]
    List,
    /// Retire a key: devices stop sealing to it at their next sync. The vaults already sealed to
    /// it open only with it until an officer holding it runs `auxilio vault reseal`, which moves
    /// them to the current keys.
    #[command(after_help = "Example:\n  auxilio admin vault-key retire age1...")]
    Retire { public_key: String },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the chain: exits non-zero if a row was edited, added or removed around the server
    /// (every such row is named), or if the anchored head is no longer in the log.
    #[command(
        after_help = "Examples:\n  auxilio admin audit verify --data /var/lib/auxilio --audit-key /etc/auxilio/audit-key\n  auxilio admin audit verify --expect-head 1234:9f2c..."
    )]
    Verify {
        /// A head printed earlier by `auxilio admin audit head` and kept away from this
        /// machine: that row must still be in the log with that hash.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<audit::Head>,
    },
    /// Print the newest row as SEQ:HASH, to keep somewhere else (another machine, paper) and
    /// check later with `verify --expect-head`: then even someone holding the database and the
    /// key cannot rewrite the rows up to it unnoticed.
    #[command(
        after_help = "Example:\n  auxilio admin audit head --data /var/lib/auxilio >> /mnt/usb/audit-heads.txt"
    )]
    Head,
    /// Print the log (all of it, or after row SEQ) as JSON lines or CSV on stdout.
    #[command(
        after_help = "Example:\n  auxilio admin audit export --format csv --after 1200 > audit.csv"
    )]
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: AuditFormat,
        /// Only rows after this `seq`.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuditFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
enum TeamCommand {
    /// Add a team.
    #[command(after_help = "Example:\n  auxilio admin team add sonora")]
    Add {
        /// Letters, digits, `-` or `_`.
        name: String,
    },
    /// List teams.
    #[command(after_help = "Example:\n  auxilio admin team list --json")]
    List,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Enrol a device and print its token (shown only this once: store it on the device).
    #[command(
        after_help = "Example:\n  auxilio admin device enroll --team sonora --role field --label \"phone 3\""
    )]
    Enroll {
        #[arg(long)]
        team: String,
        #[arg(long, value_enum)]
        role: Role,
        /// A note for administrators (never shown to devices): at most 100 characters, no
        /// control characters.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a device (a lost or stolen phone): its next request is refused with 401 and it is
    /// told to erase its store.
    #[command(after_help = "Example:\n  auxilio admin device revoke DEVICE_ID")]
    Revoke { device_id: DeviceId },
    /// Give a device a new token now (its token leaked); the old one fails from now on. Put the
    /// new token on the device with `auxilio device init` (same store: nothing is lost).
    #[command(after_help = "Example:\n  auxilio admin device rotate DEVICE_ID")]
    Rotate { device_id: DeviceId },
    /// Approve a device awaiting approval (an administrator enrolled it, or rotated its token,
    /// over HTTP): from now on it syncs and reads its team's records. A team lead of its team
    /// does the same with POST /v1/team/devices/DEVICE_ID/approve.
    #[command(
        after_help = "Examples:\n  auxilio admin device list          # awaiting devices say so\n  auxilio admin device approve DEVICE_ID --data /var/lib/auxilio"
    )]
    Approve { device_id: DeviceId },
    /// List devices (never their tokens).
    #[command(after_help = "Example:\n  auxilio admin device list --json")]
    List,
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::Audit(command) = args.command {
        let database = args.data.open(false)?;
        return run_audit(&database, command, args.json);
    }
    // Adding a team or enrolling a device may start a new data directory; anything else works
    // on an existing one, so a mistyped --data is an error rather than an empty answer.
    let creates = matches!(
        args.command,
        AdminCommand::Team(TeamCommand::Add { .. })
            | AdminCommand::Device(DeviceCommand::Enroll { .. })
    );
    let database = args.data.open(creates)?;
    let (json, text) = match args.command {
        AdminCommand::Purge {
            encounter,
            vault_only,
            reason,
        } => run_purge(&database, encounter, vault_only, &reason)?,
        AdminCommand::Retention(RetentionCommand::Run { policy, dry_run }) => {
            run_retention(&database, policy.policy(), dry_run)?
        }
        command => run_directory(&database, command)?,
    };
    if args.json {
        print_json(&json);
    } else if !text.is_empty() {
        print_line(&text);
    }
    Ok(())
}

fn describe_purge(report: &PurgeReport) -> String {
    match report.kind {
        PurgeKind::Whole => format!(
            "encounter {} (team {}) purged: {} stored changes, its document, index rows and map and stats counts, {} identity envelopes removed; devices drop their copies at their next sync",
            report.encounter, report.team, report.changes_removed, report.vault_envelopes_removed
        ),
        PurgeKind::VaultOnly => format!(
            "identity vault of encounter {} (team {}) purged: {} envelopes removed; the record stays",
            report.encounter, report.team, report.vault_envelopes_removed
        ),
    }
}

fn run_purge(
    database: &Database,
    encounter: EncounterId,
    vault_only: bool,
    reason: &str,
) -> anyhow::Result<(serde_json::Value, String)> {
    let kind = if vault_only {
        PurgeKind::VaultOnly
    } else {
        PurgeKind::Whole
    };
    let report = purge::purge(database, encounter, kind, reason, directory::ADMIN_CLI)?;
    Ok((serde_json::to_value(&report)?, describe_purge(&report)))
}

fn run_retention(
    database: &Database,
    policy: retention::Policy,
    dry_run: bool,
) -> anyhow::Result<(serde_json::Value, String)> {
    let now = chrono::Utc::now();
    if dry_run {
        let due = database.read(|conn| retention::due(conn, policy, now, usize::MAX))?;
        let text = if due.is_empty() {
            "nothing is due for purging".to_string()
        } else {
            due.iter()
                .map(|d| {
                    format!(
                        "would purge {} ({}): {}",
                        d.encounter,
                        d.kind.as_str(),
                        d.reason
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        return Ok((
            serde_json::json!({ "policy": policy, "dry_run": true, "due": due }),
            text,
        ));
    }
    let purged = retention::sweep(database, policy, now)?;
    let text = if purged.is_empty() {
        "nothing was due for purging".to_string()
    } else {
        purged
            .iter()
            .map(describe_purge)
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok((
        serde_json::json!({ "policy": policy, "dry_run": false, "purged": purged }),
        text,
    ))
}

/// Team and device commands: the change and its audit row commit together, and nothing is
/// printed (a token above all) before they have.
fn run_directory(
    database: &Database,
    command: AdminCommand,
) -> anyhow::Result<(serde_json::Value, String)> {
    // `write` begins immediate: a rotation reads the device then writes it, and a deferred
    // transaction would fail with "database is locked" if the running server wrote in between.
    database.write(|tx| -> anyhow::Result<(serde_json::Value, String)> {
        let output = match command {
            AdminCommand::Team(TeamCommand::Add { name }) => {
                directory::add_team(tx, &name)?;
                (serde_json::json!({ "team": name }), format!("team {name} added"))
            }
            AdminCommand::Team(TeamCommand::List) => {
                let teams = directory::list_teams(tx)?;
                let text = teams.join("\n");
                (serde_json::json!({ "teams": teams }), text)
            }
            AdminCommand::Device(DeviceCommand::Enroll { team, role, label }) => {
                let enrolled = directory::enroll(tx, &team, role, &label)?;
                let text = format!(
                    "device {} enrolled in team {} as {}\ntoken (shown only now; put it on the device):\n{}",
                    enrolled.device_id, enrolled.team, enrolled.role, enrolled.token
                );
                (serde_json::to_value(&enrolled)?, text)
            }
            AdminCommand::Device(DeviceCommand::Revoke { device_id }) => {
                directory::revoke(tx, device_id)?;
                (
                    serde_json::json!({ "device_id": device_id, "revoked": true }),
                    format!("device {device_id} revoked: its next request will be refused"),
                )
            }
            AdminCommand::VaultKey(VaultKeyCommand::Add { public_key, label }) => {
                let key = vault::add_key(tx, &public_key, &label)?;
                (
                    serde_json::json!({ "public_key": key, "label": label, "added": true }),
                    format!("vault key {key} added: devices seal new vaults to it from their next sync"),
                )
            }
            AdminCommand::VaultKey(VaultKeyCommand::List) => {
                let keys = vault::list_keys(tx)?;
                let text = keys
                    .iter()
                    .map(|k| {
                        let state = k.retired_at.as_deref().map_or("active".to_string(), |at| format!("retired {at}"));
                        format!("{}  {}  {}", k.public_key, state, k.label.as_deref().unwrap_or(""))
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                (serde_json::json!({ "keys": keys }), text)
            }
            AdminCommand::VaultKey(VaultKeyCommand::Retire { public_key }) => {
                let still_sealed = vault::retire_key(tx, &public_key)?;
                let mut text = format!("vault key {public_key} retired: devices stop sealing to it at their next sync");
                if still_sealed > 0 {
                    text.push_str(&format!(
                        "\n{still_sealed} stored vault(s) are still sealed to it: move them to the current keys with `auxilio vault reseal --identity THAT_KEY_FILE`"
                    ));
                }
                (
                    serde_json::json!({ "public_key": public_key, "retired": true, "envelopes_still_sealed_to_it": still_sealed }),
                    text,
                )
            }
            AdminCommand::Device(DeviceCommand::Approve { device_id }) => {
                let was_awaiting = directory::approve_by(tx, directory::ADMIN_CLI, device_id)?;
                let text = if was_awaiting {
                    format!("device {device_id} approved: it syncs and reads its team's records from now on")
                } else {
                    format!("device {device_id} was already approved; nothing changed")
                };
                (
                    serde_json::json!({ "device_id": device_id, "approved": true, "was_awaiting": was_awaiting }),
                    text,
                )
            }
            AdminCommand::Device(DeviceCommand::Rotate { device_id }) => {
                let token = directory::rotate_by(tx, directory::ADMIN_CLI, device_id)?;
                (
                    serde_json::json!({ "device_id": device_id, "token": token }),
                    format!(
                        "device {device_id} has a new token; the old one is refused from now on\nnew token (shown only now; put it on the device with `auxilio device init`):\n{token}"
                    ),
                )
            }
            AdminCommand::Audit(_) | AdminCommand::Purge { .. } | AdminCommand::Retention(_) => {
                unreachable!("handled by run_audit, run_purge and run_retention")
            }
            AdminCommand::Device(DeviceCommand::List) => {
                let devices = directory::list_devices(tx)?;
                let text = devices
                    .iter()
                    .map(|d| {
                        let state = match (&d.revoked_at, d.awaiting_approval) {
                            (Some(at), _) => format!("revoked {at}"),
                            (None, true) => "awaiting approval".to_string(),
                            (None, false) => "active".to_string(),
                        };
                        format!("{}  {:<12} {:<11} {}  {}", d.id, d.team, d.role, state, d.label)
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                (serde_json::json!({ "devices": devices }), text)
            }
        };
        Ok(output)
    })
}

/// What a failed [`audit::verify_anchored`] found, in words.
fn verify_problems(report: &audit::Verification) -> String {
    let list = |seqs: Vec<String>, total: u64| {
        let more = total.saturating_sub(seqs.len() as u64);
        let mut text = seqs.join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text
    };
    let mut problems = Vec::new();
    if report.broken_rows > 0 {
        let seqs = report.broken_seqs.iter().map(i64::to_string).collect();
        problems.push(format!("broken rows: {}", list(seqs, report.broken_rows)));
    }
    if report.missing_rows > 0 {
        let runs = report
            .missing_seqs
            .iter()
            .map(|[first, last]| {
                if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }
            })
            .collect();
        problems.push(format!(
            "missing rows: {} ({} rows)",
            list(runs, report.missing_seqs.len() as u64),
            report.missing_rows
        ));
    }
    if report.keyed_from_seq.is_none() {
        problems.push("the marker of where keyed rows begin was removed".to_string());
    }
    if let Some(anchor) = report.expected_head.as_ref().filter(|anchor| !anchor.holds) {
        let seq = anchor.expected.split(':').next().unwrap_or_default();
        problems.push(match &anchor.found {
            Some(found) => format!(
                "the anchored head row {seq} now has hash {found}, not the one written down: the log was rewritten"
            ),
            None => format!("the anchored head row {seq} is no longer in the log"),
        });
    }
    problems.join("; ")
}

fn run_audit(database: &Database, command: AuditCommand, json: bool) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { expect_head } => {
            let report =
                database.read(|conn| audit::verify_anchored(conn, expect_head.as_ref()))?;
            print_json(&serde_json::to_value(&report)?);
            if !report.intact() {
                anyhow::bail!(
                    "the audit log was altered outside the server ({}); keep a copy of this data directory as evidence and compare it with an earlier backup (if every keyed row is broken, check that --audit-key is the key this server writes with)",
                    verify_problems(&report)
                );
            }
            Ok(())
        }
        AuditCommand::Head => {
            let Some(head) = database.read(audit::head)? else {
                anyhow::bail!("the audit log is empty: there is no head to anchor yet");
            };
            if json {
                print_json(&head);
            } else {
                print_line(&head.to_string());
            }
            Ok(())
        }
        AuditCommand::Export { format, after } => {
            let mut after = after;
            let mut first_page = true;
            let mut rows = 0u64;
            // Page by page, so a long log is never all in memory.
            loop {
                let entries = database.read(|conn| audit::entries(conn, after, 5000))?;
                let Some(last) = entries.last() else { break };
                after = last.seq;
                rows += entries.len() as u64;
                let text = match format {
                    AuditFormat::Csv => {
                        let csv = audit::to_csv(&entries);
                        if first_page {
                            csv
                        } else {
                            csv.split_once('\n')
                                .map(|(_, rest)| rest.to_string())
                                .unwrap_or_default()
                        }
                    }
                    AuditFormat::Jsonl => entries
                        .iter()
                        .map(|entry| serde_json::to_string(entry).map(|line| line + "\n"))
                        .collect::<Result<String, _>>()?,
                };
                print!("{text}");
                first_page = false;
                eprint!("\r{rows} audit rows exported");
            }
            if first_page && matches!(format, AuditFormat::Csv) {
                print!("{}", audit::to_csv(&[]));
            }
            eprintln!("\r{rows} audit rows exported");
            Ok(())
        }
    }
}
