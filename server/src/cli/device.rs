//! `auxilio device`: behaves like the phone app, on a store file. Everything but `init` and
//! `sync` works with no network; `relay` needs only a link to a teammate's device.

use std::io::Read;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use auxilio_core::edit::FieldEdit;
use auxilio_core::relay::{RelayReport, RelayRole, relay_over};
use auxilio_core::relay_auth::RelayAuthError;
use auxilio_core::store::{Enrolment, StoreError};
use auxilio_core::vault::VaultContents;
use auxilio_core::{DeviceStore, Encounter, EncounterId};
use clap::{Args, Subcommand};

use super::{print_json, print_line};
use crate::client;

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The device's store file (created if missing).
    #[arg(long, env = "AUXILIO_STORE")]
    store: PathBuf,
    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Enrol this store with a server and token (needs the server once; checks the token).
    #[command(
        after_help = "Example:\n  auxilio device --store phone.db init --server http://127.0.0.1:8080 --token auxilio_..."
    )]
    Init {
        #[arg(long)]
        server: String,
        #[arg(long)]
        token: String,
        /// Pseudonymous staff id written into new encounters.
        #[arg(long, default_value = "")]
        agent: String,
    },
    /// Log a new encounter from a JSON file (or - for stdin); prints its id.
    #[command(
        after_help = "Example:\n  echo '{\"services\":[\"rescue\"],\"terrain\":\"river\",\"counts\":{\"m\":{\"18-59\":2}}}' \\\n    | auxilio device --store phone.db log -"
    )]
    Log {
        /// Path of a JSON file, or - to read standard input.
        file: String,
    },
    /// Change fields of an encounter: PATH=VALUE, PATH+=VALUE (add to a set or list), PATH-=VALUE.
    #[command(
        after_help = "Examples:\n  auxilio device --store phone.db edit ID --set status=closed\n  auxilio device --store phone.db edit ID --set counts.m.18-59=3 --set services+=first_aid\n  auxilio device --store phone.db edit ID --set 'notes=found near the bridge'"
    )]
    Edit {
        id: EncounterId,
        #[arg(long = "set", required = true, value_name = "PATH=VALUE")]
        edits: Vec<FieldEdit>,
    },
    /// Seal names and family contacts of a UASC or missing-person case to the protection
    /// officers' keys (learned at sync). Only the sealed envelope is kept; it uploads at the
    /// next sync, and this device cannot read it back.
    #[command(
        after_help = "Example:\n  echo '{\"names\":[\"Ana Pérez\"],\"family_contacts\":[{\"name\":\"Rosa Pérez\",\"relation\":\"mother\",\"phone\":\"+502 5555 0101\"}]}' \\\n    | auxilio device --store phone.db vault ENCOUNTER_ID --file -"
    )]
    Vault {
        id: EncounterId,
        /// Path of a JSON file (names, family_contacts, notes), or - to read standard input.
        #[arg(long)]
        file: String,
    },
    /// List the encounters in this store.
    #[command(after_help = "Example:\n  auxilio device --store phone.db list --json")]
    List,
    /// Show one encounter with its conflicts and unsynced changes.
    #[command(after_help = "Example:\n  auxilio device --store phone.db show ID")]
    Show { id: EncounterId },
    /// Send unsynced changes and fetch what the team has logged; prints one JSON line of figures.
    #[command(
        after_help = "Example:\n  auxilio device --store phone.db sync\n  auxilio device --store phone.db sync --server http://10.0.0.2:8080\n  auxilio device --store phone.db sync --attempts 30 --page-bytes 65536   # a link that keeps dropping"
    )]
    Sync {
        /// Use (and remember) this server address instead of the enrolled one.
        #[arg(long)]
        server: Option<String>,
        /// Give up after this many failed attempts in a row (a weak link drops; each retry
        /// waits longer, up to 8 s). 1 gives up at once.
        #[arg(long, default_value_t = client::SyncOptions::default().max_failed_attempts, value_parser = clap::value_parser!(u32).range(1..))]
        attempts: u32,
        /// The largest page, in bytes of changes, each way (pages halve after a cut and grow
        /// back); large pages suit a fast, reliable link.
        #[arg(long, default_value_t = client::SyncOptions::default().max_page_bytes)]
        page_bytes: usize,
    },
    /// Get a new token from the server and keep it; the old one stops working once the new one
    /// is used (a cut mid-way never locks the device out).
    #[command(after_help = "Example:\n  auxilio device --store phone.db rotate-token")]
    RotateToken,
    /// Exchange encounters directly with a teammate's device, no server needed: each gets what
    /// the other lacks, and uploads the other's unsynced changes when it next syncs.
    #[command(
        after_help = "Both devices must have synced with signal since the other was enrolled, so each knows\nthe other's relay key; a device that never synced refuses to relay.\n\nExamples (start the listening device first):\n  auxilio device --store phone2.db relay --listen                 # 127.0.0.1:7070\n  auxilio device --store phone1.db relay --connect 127.0.0.1:7070\n  auxilio device --store phone2.db relay --listen 192.168.49.1:7070  # a Wi-Fi Direct link\n  auxilio device --store phone1.db relay --connect 192.168.49.1:7070 --json"
    )]
    Relay {
        /// Wait for one device to connect, relay with it, and exit. Listens on the loopback
        /// interface (127.0.0.1) unless given a HOST:PORT; a bare PORT, or nothing, stays on
        /// loopback (port 7070 by default).
        #[arg(
            long,
            value_name = "[HOST:]PORT",
            num_args = 0..=1,
            default_missing_value = DEFAULT_RELAY_PORT,
            conflicts_with = "connect",
            required_unless_present = "connect"
        )]
        listen: Option<String>,
        /// Connect to a device waiting with `relay --listen` at this address.
        #[arg(long, value_name = "ADDR")]
        connect: Option<String>,
    },
}

/// The port `relay --listen` uses when given none.
const DEFAULT_RELAY_PORT: &str = "7070";

/// Where `relay --listen VALUE` listens: a bare port stays on the loopback interface, which only
/// this machine reaches; another interface must be named.
fn listen_address(value: &str) -> String {
    let value = value.trim();
    if value.is_empty() {
        format!("127.0.0.1:{DEFAULT_RELAY_PORT}")
    } else if value.chars().all(|c| c.is_ascii_digit()) {
        format!("127.0.0.1:{value}")
    } else {
        value.to_string()
    }
}

/// How long connecting, or waiting for the other device mid-exchange, may take: a phone-to-phone
/// link is slow at worst, never silent for minutes.
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RELAY_IO_TIMEOUT: Duration = Duration::from_secs(600);

/// Opens the relay's connection: accepts one on `listen`, or makes one to `connect`.
fn relay_stream(
    listen: Option<String>,
    connect: Option<String>,
) -> anyhow::Result<(TcpStream, RelayRole)> {
    let (stream, role) = match (listen, connect) {
        (Some(address), _) => {
            let address = listen_address(&address);
            let listener = TcpListener::bind(&address)
                .with_context(|| format!("cannot listen on {address}"))?;
            eprintln!(
                "waiting for one device to connect on {} (run `relay --connect` on it)",
                listener.local_addr()?
            );
            let (stream, peer) = listener
                .accept()
                .context("no device could connect to relay")?;
            eprintln!("relaying with {peer}");
            (stream, RelayRole::Responder)
        }
        (None, Some(address)) => {
            let target = address
                .to_socket_addrs()
                .with_context(|| format!("`{address}` is not an address (HOST:PORT)"))?
                .next()
                .with_context(|| format!("`{address}` names no address"))?;
            let stream = TcpStream::connect_timeout(&target, RELAY_CONNECT_TIMEOUT)
                .with_context(|| {
                    format!(
                        "could not connect to {address}; start `relay --listen` on the other device first"
                    )
                })?;
            eprintln!("relaying with {target}");
            (stream, RelayRole::Initiator)
        }
        (None, None) => bail!("say where to relay: --listen ADDR or --connect ADDR"),
    };
    stream.set_read_timeout(Some(RELAY_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(RELAY_IO_TIMEOUT))?;
    Ok((stream, role))
}

fn print_relay_report(report: &RelayReport, json: bool) {
    if json {
        print_json(report);
        return;
    }
    print_line(&format!(
        "relayed with device {}: sent {} changes, received {} new ({} to upload from here at the next sync)",
        report.peer, report.sent, report.received, report.queued_for_upload
    ));
    for id in &report.refused_encounters {
        print_line(&format!(
            "refused encounter {id}: its changes do not make a record of this team"
        ));
    }
}

fn read_encounter(file: &str) -> anyhow::Result<Encounter> {
    read_json_object(file, "an encounter")
}

/// Reads one JSON object from `file` (or standard input for `-`) as a `T`, naming the field
/// that does not fit.
fn read_json_object<T: serde::de::DeserializeOwned>(file: &str, what: &str) -> anyhow::Result<T> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    // One JSON object and nothing else: a second record or trailing text in the file would
    // otherwise be dropped without a word.
    let value: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .with_context(|| format!("{file} is not one JSON object"))?;
    if !value.is_object() {
        bail!(
            "{file} must hold one JSON object ({what}), not {}",
            json_kind(&value)
        );
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        anyhow::anyhow!("{file}: field `{path}`: {}", err.into_inner())
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Null => "null",
        serde_json::Value::Object(_) => "an object",
    }
}

pub fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let json = args.json;
    // `init` checks the token with the server before the store file is touched, so a failed
    // enrolment leaves nothing behind.
    if let DeviceCommand::Init {
        server,
        token,
        agent,
    } = &args.command
    {
        return init(&args.store, server, token, agent, json);
    }
    let mut store = DeviceStore::open(&args.store)
        .with_context(|| format!("cannot open the device store {}", args.store.display()))?;
    match args.command {
        DeviceCommand::Init { .. } => unreachable!("handled above"),
        DeviceCommand::Log { file } => {
            let encounter = read_encounter(&file)?;
            let id = store.log(encounter)?;
            if json {
                print_json(&serde_json::json!({ "id": id }));
            } else {
                print_line(&id.to_string());
            }
        }
        DeviceCommand::Edit { id, edits } => {
            let changed = store.edit(id, &edits)?;
            if json {
                print_json(&serde_json::json!({ "id": id, "changed": changed }));
            } else if changed {
                print_line(&format!("{id} updated"));
            } else {
                print_line(&format!(
                    "{id} unchanged (the record already had those values)"
                ));
            }
        }
        DeviceCommand::Vault { id, file } => {
            let contents: VaultContents = read_json_object(&file, "names and family contacts")?;
            let sealed = store.seal_vault(id, &contents)?;
            let envelope = auxilio_core::vault::hex(&sealed.id);
            if json {
                print_json(&serde_json::json!({
                    "encounter": id, "envelope": envelope, "recipients": sealed.recipients,
                    "sealed": true,
                }));
            } else {
                print_line(&format!(
                    "sealed to {} protection officer key(s) as envelope {envelope}; it uploads at the next `auxilio device sync` and this device cannot read it back",
                    sealed.recipients.len()
                ));
            }
        }
        DeviceCommand::RotateToken => {
            let who = client::rotate_token(&mut store)?;
            if json {
                print_json(&serde_json::json!({ "device_id": who.device_id, "rotated": true }));
            } else {
                print_line(&format!(
                    "device {} has a new token; the old one no longer works",
                    who.device_id
                ));
            }
        }
        DeviceCommand::List => {
            let encounters = store.list()?;
            if json {
                print_json(&serde_json::json!({ "encounters": encounters }));
            } else {
                for e in encounters {
                    let status = e.status.and_then(|s| serde_json::to_value(s).ok());
                    let mut line = format!(
                        "{}  {:<6} {:>4} people  {}",
                        e.id,
                        status.as_ref().and_then(|s| s.as_str()).unwrap_or("?"),
                        e.people,
                        e.services.join(",")
                    );
                    if e.pending_changes > 0 {
                        line.push_str(&format!("  ({} unsynced)", e.pending_changes));
                    }
                    if e.conflicts > 0 {
                        line.push_str(&format!("  ({} conflicts)", e.conflicts));
                    }
                    if let Some(refused) = &e.refused {
                        line.push_str(&format!("  (refused by the server: {refused})"));
                    }
                    if let Some(problem) = &e.problem {
                        line.push_str(&format!("  (unreadable: {problem})"));
                    }
                    print_line(&line);
                }
            }
        }
        DeviceCommand::Show { id } => match store.show(id) {
            Ok(view) if json => print_json(&view),
            Ok(view) => print_line(&serde_json::to_string_pretty(&view)?),
            // A record the schema cannot read is still shown, as stored, so it can be repaired.
            Err(StoreError::Document(err)) => {
                print_json(
                    &serde_json::json!({ "id": id, "unreadable": err.to_string(), "stored": store.raw(id)? }),
                );
                bail!(
                    "encounter {id} cannot be read as an encounter ({err}); it is shown as stored: fix the named field with `edit`"
                );
            }
            Err(other) => return Err(other.into()),
        },
        DeviceCommand::Sync {
            server,
            attempts,
            page_bytes,
        } => {
            if let Some(server) = server {
                store.set_server_url(&server)?;
            }
            let options = client::SyncOptions {
                max_failed_attempts: attempts,
                max_page_bytes: page_bytes.max(1),
                ..client::SyncOptions::default()
            };
            let report = client::sync_with(&mut store, options, |so_far| {
                eprintln!(
                    "round trip {}: {} uploaded, {} downloaded, {} bytes up, {} bytes down{}",
                    so_far.round_trips,
                    so_far.uploaded,
                    so_far.downloaded,
                    so_far.bytes_up,
                    so_far.bytes_down,
                    if so_far.retries > 0 {
                        format!(", {} cut off and retried", so_far.retries)
                    } else {
                        String::new()
                    }
                );
            })?;
            print_json(&report);
            if report.dropped + report.vaults_dropped > 0 {
                eprintln!(
                    "purged on the server, dropped from this device: {} encounter(s), {} identity vault(s)",
                    report.dropped, report.vaults_dropped
                );
            }
            if !report.vaults_rejected.is_empty() {
                eprintln!(
                    "the server refused {} sealed vault(s) (kept on this device, offered again next sync): {}",
                    report.vaults_rejected.len(),
                    report
                        .vaults_rejected
                        .iter()
                        .map(|r| r.reason.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            if !report.rejected.is_empty() {
                bail!(
                    "the server refused changes of {} encounter(s) (kept on this device): {}",
                    report.rejected.len(),
                    report
                        .rejected
                        .iter()
                        .map(|r| format!("{}: {}", r.encounter, r.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
        }
        DeviceCommand::Relay { listen, connect } => {
            // Refused before anyone waits on a connection that could not be used.
            store.enrolment()?.ok_or(StoreError::NotEnrolled)?;
            if store.team_relay_keys()?.is_none() {
                return Err(RelayAuthError::NotIntroduced.into());
            }
            let (mut stream, role) = relay_stream(listen, connect)?;
            let report = relay_over(&mut store, &mut stream, role)?;
            print_relay_report(&report, json);
            if !report.refused_encounters.is_empty() {
                bail!(
                    "refused {} encounter(s) from the other device (not records of this team); the rest is stored",
                    report.refused_encounters.len()
                );
            }
        }
    }
    Ok(())
}

/// `device init`: checks the token with the server, then records the enrolment in the store.
fn init(
    store_path: &std::path::Path,
    server: &str,
    token: &str,
    agent: &str,
    json: bool,
) -> anyhow::Result<()> {
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!("the server address must start with http:// or https:// (e.g. http://{server})");
    }
    let who = client::whoami(server, token)
        .context("enrolment needs the server once, to check the token")?;
    let enrolment = Enrolment {
        server_url: server.to_string(),
        token: token.to_string(),
        device_id: who.device_id,
        team: who.team,
        role: who.role.to_string(),
        agent: agent.to_string(),
    };
    let mut store = DeviceStore::open(store_path)
        .with_context(|| format!("cannot open the device store {}", store_path.display()))?;
    store.enrol(&enrolment)?;
    if json {
        print_json(&serde_json::json!({
            "device_id": enrolment.device_id, "team": enrolment.team, "role": enrolment.role,
            "server": enrolment.server_url, "approved": who.approved,
        }));
    } else {
        println!(
            "store {} enrolled as device {} ({} of team {})",
            store_path.display(),
            enrolment.device_id,
            enrolment.role,
            enrolment.team
        );
        if !who.approved {
            println!(
                "this device awaits approval by a team lead of {}: it syncs once approved (log encounters meanwhile; nothing is lost)",
                enrolment.team
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_listens_on_loopback_unless_told_another_interface() {
        assert_eq!(listen_address(DEFAULT_RELAY_PORT), "127.0.0.1:7070");
        assert_eq!(listen_address("7171"), "127.0.0.1:7171");
        assert_eq!(listen_address("192.168.49.1:7070"), "192.168.49.1:7070");
    }
}
