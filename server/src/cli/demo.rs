//! `auxilio demo`: a server and simulated field teams around the Sonoran desert and the Río
//! Bravo, logging and syncing in rounds over a dropping 2G link, so a newcomer sees data flow.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::database::Database;
use crate::directory::{self, Role};
use crate::link_simulator::LinkProfile;
use crate::simulation::{Deployment, SimulationConfig, SimulationTarget};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address the demo server listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Keep the demo's data in this directory (default: a temporary one, removed at the end).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Stop after this many rounds (default: run until Ctrl-C).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds between rounds.
    #[arg(long, default_value_t = 3.0)]
    interval: f64,
    /// Phones per team.
    #[arg(long, default_value_t = 2)]
    phones_per_team: usize,
}

/// The demo's teams and where they work (indexes into `simulation::PLACES`).
const TEAMS: &[(&str, usize)] = &[
    ("sonoyta", 0),
    ("altar", 1),
    ("ciudad-juarez", 4),
    ("piedras-negras", 5),
];

fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            eprintln!("stopping after this round…");
            flag.store(true, Ordering::SeqCst);
        }
    });
    stop
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let config = SimulationConfig {
        devices: TEAMS.len() * args.phones_per_team.max(1),
        team_size: args.phones_per_team.max(1),
        link: LinkProfile::named("2g-dropping").expect("a known profile"),
        teams: TEAMS.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        concurrency: 4,
        seed: u64::from(std::process::id()),
        ..SimulationConfig::default()
    };
    let target = SimulationTarget::OwnServer {
        data_dir: args.data.clone(),
        listen: args.listen,
    };
    let mut deployment = Deployment::start(config, target).with_context(|| {
        format!(
            "cannot start the demo on {}: is something else listening there? choose another with --listen",
            args.listen
        )
    })?;
    let database = Database::open_existing(deployment.data_dir())?;
    let coordinator = database
        .write(|conn| directory::enroll(conn, TEAMS[0].0, Role::Coordinator, "demo coordinator"))?;
    let url = format!("http://{}", args.listen);
    println!(
        "Auxilio demo: a server at {url} and {} phones in teams {}",
        TEAMS.len() * args.phones_per_team.max(1),
        TEAMS.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
    );
    println!(
        "The phones sync through a dropping 2G link ({}).",
        deployment.link_url()
    );
    println!("Watch the merged picture as a coordinator, with this token:");
    println!("  {}", coordinator.token);
    println!("  on the map: open {url}/ in a browser and sign in with the token (it updates live)");
    println!(
        "  or: curl -s -H 'Authorization: Bearer {}' '{url}/v1/encounters?limit=5'",
        coordinator.token
    );
    println!("Press Ctrl-C to stop.");

    let stop = stop_on_ctrl_c();
    let mut round = 0u32;
    while !stop.load(Ordering::SeqCst) && args.rounds.is_none_or(|rounds| round < rounds) {
        round += 1;
        deployment.work_offline(1 + (round as usize % 2), 1)?;
        let waiting = if round.is_multiple_of(3) {
            deployment.relay_within_teams()?
        } else {
            Vec::new()
        };
        deployment.sync_round(&waiting, &|_, _| {})?;
        let stats = deployment.link_stats();
        println!(
            "round {round}: the server holds {} encounters; {} phones relayed to a teammate and wait for signal; link so far: {} connections, {} cut, {} kB up, {} kB down",
            deployment.stored_encounters()?,
            waiting.len(),
            stats.connections,
            stats.cuts,
            stats.bytes_up / 1000,
            stats.bytes_down / 1000
        );
        std::thread::sleep(Duration::from_secs_f64(args.interval.max(0.0)));
    }
    println!("demo stopped after {round} rounds");
    Ok(())
}
