//! `auxilio admin`: teams, devices and the protection officers' vault keys, straight on the data
//! directory's database.

use auxilio_core::DeviceId;
use clap::{Args, Subcommand};

use super::{DataDirArg, print_json, print_line};
use crate::directory::{self, Role};
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
    /// Devices: enrol (prints the token once), revoke, list.
    #[command(
        subcommand,
        after_help = "Examples:\n  auxilio admin device enroll --team sonora --role field\n  auxilio admin device list\n  auxilio admin device revoke DEVICE_ID"
    )]
    Device(DeviceCommand),
    /// The protection officers' public keys that devices seal identity vaults to.
    #[command(
        subcommand,
        after_help = "Examples:\n  auxilio vault keygen --out officer.key   # on the officer's own machine\n  auxilio admin vault-key add age1... --label \"DIF Sonora officer\"\n  auxilio admin vault-key list\n  auxilio admin vault-key retire age1..."
    )]
    VaultKey(VaultKeyCommand),
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
        /// A note for administrators (never shown to devices).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a device: its next request is refused with 401.
    #[command(after_help = "Example:\n  auxilio admin device revoke DEVICE_ID")]
    Revoke { device_id: DeviceId },
    /// List devices (never their tokens).
    #[command(after_help = "Example:\n  auxilio admin device list --json")]
    List,
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    // Adding a team or enrolling a device may start a new data directory; anything else works
    // on an existing one, so a mistyped --data is an error rather than an empty answer.
    let creates = matches!(
        args.command,
        AdminCommand::Team(TeamCommand::Add { .. })
            | AdminCommand::Device(DeviceCommand::Enroll { .. })
    );
    let database = args.data.open(creates)?;
    // The change and its audit row commit together, and nothing is printed (a token above all)
    // before they have.
    let (json, text) = database.write(|conn| -> anyhow::Result<(serde_json::Value, String)> {
        let tx = conn.transaction()?;
        let output = match args.command {
            AdminCommand::Team(TeamCommand::Add { name }) => {
                directory::add_team(&tx, &name)?;
                (serde_json::json!({ "team": name }), format!("team {name} added"))
            }
            AdminCommand::Team(TeamCommand::List) => {
                let teams = directory::list_teams(&tx)?;
                let text = teams.join("\n");
                (serde_json::json!({ "teams": teams }), text)
            }
            AdminCommand::Device(DeviceCommand::Enroll { team, role, label }) => {
                let enrolled = directory::enroll(&tx, &team, role, &label)?;
                let text = format!(
                    "device {} enrolled in team {} as {}\ntoken (shown only now; put it on the device):\n{}",
                    enrolled.device_id, enrolled.team, enrolled.role, enrolled.token
                );
                (serde_json::to_value(&enrolled)?, text)
            }
            AdminCommand::Device(DeviceCommand::Revoke { device_id }) => {
                directory::revoke(&tx, device_id)?;
                (
                    serde_json::json!({ "device_id": device_id, "revoked": true }),
                    format!("device {device_id} revoked: its next request will be refused"),
                )
            }
            AdminCommand::VaultKey(VaultKeyCommand::Add { public_key, label }) => {
                let key = vault::add_key(&tx, &public_key, &label)?;
                (
                    serde_json::json!({ "public_key": key, "label": label, "added": true }),
                    format!("vault key {key} added: devices seal new vaults to it from their next sync"),
                )
            }
            AdminCommand::VaultKey(VaultKeyCommand::List) => {
                let keys = vault::list_keys(&tx)?;
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
                let still_sealed = vault::retire_key(&tx, &public_key)?;
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
            AdminCommand::Device(DeviceCommand::List) => {
                let devices = directory::list_devices(&tx)?;
                let text = devices
                    .iter()
                    .map(|d| {
                        let state = d.revoked_at.as_deref().map_or("active".to_string(), |at| format!("revoked {at}"));
                        format!("{}  {:<12} {:<11} {}  {}", d.id, d.team, d.role, state, d.label)
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                (serde_json::json!({ "devices": devices }), text)
            }
        };
        tx.commit()?;
        Ok(output)
    })?;
    if args.json {
        print_json(&json);
    } else if !text.is_empty() {
        print_line(&text);
    }
    Ok(())
}
