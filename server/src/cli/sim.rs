//! `auxilio sim`: simulates a field deployment and prints one JSON line of figures.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::print_json;
use crate::link_simulator::LinkProfile;
use crate::simulation::{SimulationConfig, SimulationTarget, simulate};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Simulated phones.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Encounters each phone logs offline.
    #[arg(long, default_value_t = 20)]
    encounters: usize,
    /// Edits each phone makes offline to its own encounters.
    #[arg(long, default_value_t = 5)]
    edits: usize,
    /// Link between phones and server: lan, 3g, 2g or 2g-dropping (2G that cuts 30% of
    /// connections at a random byte).
    #[arg(long, default_value = "lan", value_parser = parse_link)]
    link: LinkProfile,
    /// Overrides the link's chance that a connection is cut (0 to 1).
    #[arg(long)]
    cut_probability: Option<f64>,
    /// Phones per team (a team sees only its own encounters).
    #[arg(long, default_value_t = 10)]
    team_size: usize,
    /// Half of each team relays its encounters phone-to-phone to a teammate first and reaches
    /// signal only later.
    #[arg(long)]
    relay: bool,
    /// Phones syncing at the same time.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seed of the generated encounters and of the link's cuts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Data directory of a running server to simulate against (new teams named sim-<run>-<n>
    /// are added there); needs --server. Without it, a server is started on a temporary
    /// directory and removed afterwards.
    #[arg(long, requires = "server")]
    data: Option<PathBuf>,
    /// Address of that running server, e.g. http://127.0.0.1:8080.
    #[arg(long, requires = "data")]
    server: Option<String>,
}

fn parse_link(name: &str) -> Result<LinkProfile, String> {
    LinkProfile::named(name).ok_or_else(|| {
        format!(
            "unknown link `{name}`; use one of: {}",
            LinkProfile::NAMES.join(", ")
        )
    })
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.team_size == 0 {
        bail!("--devices and --team-size must be at least 1");
    }
    let mut link = args.link;
    if let Some(probability) = args.cut_probability {
        if !(0.0..=1.0).contains(&probability) {
            bail!("--cut-probability must be between 0 and 1, not {probability}");
        }
        link.cut_probability = probability;
        if link.cut_within_bytes == 0 {
            link.cut_within_bytes = 6_000;
        }
    }
    let target = match (args.data, args.server) {
        (Some(data_dir), Some(server_url)) => SimulationTarget::Running {
            data_dir,
            server_url,
        },
        _ => SimulationTarget::OwnServer {
            data_dir: None,
            listen: ([127, 0, 0, 1], 0).into(),
        },
    };
    let config = SimulationConfig {
        devices: args.devices,
        encounters_per_device: args.encounters,
        edits_per_device: args.edits,
        link,
        team_size: args.team_size,
        relay: args.relay,
        concurrency: args.concurrency,
        seed: args.seed,
        teams: Vec::new(),
    };
    let report =
        simulate(config, target, &|line| eprintln!("{line}")).context("the simulation stopped")?;
    print_json(&report);
    if !report.converged || report.lost > 0 || report.duplicated > 0 {
        bail!(
            "the deployment did not end consistent (converged {}, lost {}, duplicated {}): this is a bug, please report it with the command line",
            report.converged,
            report.lost,
            report.duplicated
        );
    }
    Ok(())
}
