//! The `auxilio` command line: argument definitions and dispatch. Each subcommand lives in its
//! own module; `main.rs` only calls [`run`].

mod admin;
mod demo;
mod device;
mod reindex;
mod serve;
mod sim;
mod vault;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::database::Database;
use crate::retention::Policy;

/// Default data directory of the server (and of `admin`).
pub const DEFAULT_DATA_DIR: &str = "./auxilio-data";

#[derive(Debug, Parser)]
#[command(
    name = "auxilio",
    version,
    about = "Offline-first sync for rescue and first-aid field teams",
    long_about = "Auxilio keeps field teams' encounter records in sync over weak links: devices log \
                  encounters offline, sync when they reach signal, and the server merges everything \
                  into one picture for coordinators.",
    after_help = "Examples:\n  auxilio serve\n  auxilio admin team add sonora\n  auxilio admin device enroll --team sonora --role field\n  auxilio device --store phone.db init --server http://127.0.0.1:8080 --token auxilio_...\n  auxilio device --store phone.db sync"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "AUXILIO_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sync server.
    #[command(
        after_help = "Examples:\n  auxilio serve\n  auxilio serve --data /var/lib/auxilio --listen 127.0.0.1:9000\n  auxilio serve --rate-limit-per-minute 1200 --rate-limit-burst 240\n  auxilio serve --listen 127.0.0.1:8080 --trusted-proxy 127.0.0.1   # behind nginx on the same host\n  auxilio serve --max-new-encounters-per-day 50000 --max-encounters-per-request 200"
    )]
    Serve(serve::ServeArgs),
    /// Manage teams, devices and vault keys, purge encounters, run the retention policy (works
    /// directly on the data directory, server running or not).
    #[command(
        after_help = "Examples:\n  auxilio admin team add sonora\n  auxilio admin device enroll --team sonora --role field --label \"phone 3\"\n  auxilio admin device revoke DEVICE_ID --json\n  auxilio admin vault-key add age1... --label \"protection officer\"\n  auxilio admin purge ENCOUNTER_ID --reason \"consent withdrawn\"\n  auxilio admin retention run --dry-run"
    )]
    Admin(admin::AdminArgs),
    /// Rebuild merged documents and query indexes from the stored changes (server may run).
    #[command(
        after_help = "Examples:\n  auxilio reindex\n  auxilio reindex --data /var/lib/auxilio --json"
    )]
    Reindex(reindex::ReindexArgs),
    /// Act as a field device: log and edit encounters offline, relay with a teammate, then sync.
    #[command(
        after_help = "Examples:\n  auxilio device --store phone.db init --server http://127.0.0.1:8080 --token auxilio_...\n  auxilio device --store phone.db log encounter.json\n  auxilio device --store phone.db edit ID --set status=closed --set counts.m.18-59=3\n  auxilio device --store phone.db relay --connect 192.168.49.1:7070\n  auxilio device --store phone.db sync"
    )]
    Device(device::DeviceArgs),
    /// Simulate a field deployment (phones, offline work, a weak link) and print its figures as
    /// one JSON line: devices, encounters, converged, lost, duplicated, requests, round trips,
    /// bytes up and down against the raw-change floor, wall time.
    #[command(after_help = "Examples:
  auxilio sim --devices 50 --encounters 40 --link lan
  auxilio sim --devices 12 --encounters 20 --link 2g-dropping --relay
  auxilio sim --data /var/lib/auxilio --server http://127.0.0.1:8080 --devices 5")]
    Sim(sim::SimArgs),
    /// Run a server with simulated teams around the Sonoran desert and the Río Bravo logging
    /// and syncing over a dropping 2G link, to see data flow.
    #[command(after_help = "Examples:
  auxilio demo
  auxilio demo --listen 127.0.0.1:9000 --rounds 5 --interval 1")]
    Demo(demo::DemoArgs),
    /// The protection officer's tools for sealed identity vaults: make a key, open a vault,
    /// reseal every vault to the current keys (key rotation).
    #[command(after_help = "Examples:
  auxilio vault keygen --out officer.key
  auxilio vault open ENCOUNTER_ID --server http://127.0.0.1:8080 --token auxilio_... --identity officer.key
  auxilio vault reseal --server http://127.0.0.1:8080 --token auxilio_... --identity old.key")]
    Vault(vault::VaultArgs),
}

/// Where `admin` and `serve` keep their data.
#[derive(Debug, clap::Args)]
struct DataDirArg {
    /// Data directory (holds auxilio.sqlite).
    #[arg(long = "data", global = true, default_value = DEFAULT_DATA_DIR, env = "AUXILIO_DATA")]
    data: PathBuf,
    /// The audit log's secret key (made, mode 0600, on first use): outside the data directory,
    /// the same file for `serve` and `admin`. Default: beside the data directory, named after
    /// it with `.audit-key` added (`./auxilio-data.audit-key`).
    #[arg(
        long = "audit-key",
        global = true,
        value_name = "FILE",
        env = "AUXILIO_AUDIT_KEY_FILE"
    )]
    audit_key: Option<PathBuf>,
}

/// The retention policy (see `auxilio_server::retention`), for `serve` and `admin retention run`.
#[derive(Debug, Clone, Copy, clap::Args)]
struct RetentionArgs {
    /// Days an identity vault is kept after the UASC hand-over (or, without one, after the
    /// encounter was closed); 0 keeps vaults until purged by hand.
    #[arg(long, value_name = "DAYS", default_value_t = Policy::default().vault_days)]
    retain_vault_days: u32,
    /// Days a whole encounter is kept after it occurred; 0 keeps encounters until purged by
    /// hand.
    #[arg(long, value_name = "DAYS", default_value_t = Policy::default().encounter_days)]
    retain_encounter_days: u32,
}

impl RetentionArgs {
    fn policy(self) -> Policy {
        Policy {
            vault_days: self.retain_vault_days,
            encounter_days: self.retain_encounter_days,
        }
    }
}

impl DataDirArg {
    /// Opens the database, creating the data directory when `may_create`; otherwise a directory
    /// that does not exist is an error (a mistyped `--data` is not a new, empty database).
    fn open(&self, may_create: bool) -> anyhow::Result<Database> {
        let open = if may_create {
            Database::open_with_audit_key
        } else {
            Database::open_existing_with_audit_key
        };
        open(&self.data, self.audit_key.as_deref())
            .with_context(|| format!("cannot open the data directory {}", self.data.display()))
    }
}

fn init_logging(format: LogFormat, quiet: bool) {
    // A simulation runs a server and many phones in one process: their per-request lines would
    // bury its progress, so it logs warnings only unless AUXILIO_LOG says otherwise.
    let default = if quiet {
        "warn"
    } else {
        "info,tower_http=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUXILIO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
        // The HTTP client's own tracing dumps request headers, bearer tokens included: never.
        .add_directive("ureq=warn".parse().expect("a valid directive"))
        .add_directive("ureq_proto=warn".parse().expect("a valid directive"));
    // Colours only for a person at a terminal; files and pipes get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Prints `value` as one JSON line on stdout.
/// Whether a JSON object was printed on stdout, so that a failure after it (sync with refused
/// changes, say) does not print a second one.
static PRINTED_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn print_json(value: &impl serde::Serialize) {
    print_line(&serde_json::to_string(value).expect("serialisable"));
    PRINTED_JSON.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Prints one line on stdout. A reader that went away (`auxilio device list | head`) ends the
/// command quietly instead of with a panic.
fn print_line(text: &str) {
    use std::io::Write;
    if let Err(err) = writeln!(std::io::stdout().lock(), "{text}") {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        panic!("cannot write to standard output: {err}");
    }
}

/// The error and its causes, each said once: several layers often repeat their cause's text.
fn error_message(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}

/// Parses the command line, runs the command, and turns an error into a message and exit code 1.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // `--json` promises one JSON object on stdout, even for a mistyped command line.
            let is_help = matches!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            );
            if !is_help && std::env::args().any(|arg| arg == "--json") {
                print_json(
                    &serde_json::json!({ "error": err.kind().to_string(), "usage": err.to_string() }),
                );
            }
            err.exit();
        }
    };
    init_logging(
        cli.log_format,
        matches!(cli.command, Command::Sim(_) | Command::Demo(_)),
    );
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Reindex(args) => reindex::run(args),
        Command::Device(args) => device::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Vault(args) => vault::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = error_message(&err);
            // `--json` promises one JSON object on stdout, failures included.
            if std::env::args().any(|arg| arg == "--json")
                && !PRINTED_JSON.load(std::sync::atomic::Ordering::Relaxed)
            {
                print_json(&serde_json::json!({ "error": message }));
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
