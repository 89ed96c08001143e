//! `auxilio admin`: teams and devices, straight on the data directory's database.

use auxilio_core::DeviceId;
use clap::{Args, Subcommand};

use super::{DataDirArg, print_json, print_line};
use crate::directory::{self, Role};

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
