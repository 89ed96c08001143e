//! `auxilio serve`: opens the data directory, binds, serves until Ctrl-C or SIGTERM, and runs
//! the retention policy on its own every `--retention-every` seconds.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{DataDirArg, RetentionArgs};
use crate::http::{AppState, MapPageConfig, ServerConfig, serve};
use crate::ledger::{PageLimits, SyncCaps};
use crate::rate_limit::RateLimits;
use crate::retention::{self, Policy};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data: DataDirArg,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080", env = "AUXILIO_LISTEN")]
    listen: SocketAddr,
    /// Largest accepted sync request body in bytes (other routes take at most 64 KiB).
    #[arg(long, default_value_t = ServerConfig::default().max_request_bytes)]
    max_request_bytes: usize,
    /// Requests a device may make per minute, sustained; over it the server answers 429 with
    /// Retry-After (the device's sync waits and carries on). The same limit slows requests with
    /// bad tokens, per client address and per device id they claim (valid tokens are always
    /// served). 0 turns rate limiting off.
    #[arg(long, default_value_t = RateLimits::default().per_minute, value_name = "REQUESTS")]
    rate_limit_per_minute: u32,
    /// Requests a device may make at once after a quiet spell, above the per-minute rate.
    #[arg(long, default_value_t = RateLimits::default().burst, value_name = "REQUESTS")]
    rate_limit_burst: u32,
    /// A reverse proxy (TLS terminator) in front of the server, by IP address; repeat for each.
    /// Only from these is `X-Forwarded-For` believed (its rightmost address that is not a trusted
    /// proxy is the client, for the bad-token limit); from anyone else it is ignored.
    #[arg(long = "trusted-proxy", value_name = "IP")]
    trusted_proxies: Vec<IpAddr>,
    /// Seconds a client may take to send a request's headers before its connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = ServerConfig::default().header_read_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout: u64,
    /// Token rotations a device may ask for itself per hour (each is audited); 0: no limit.
    #[arg(long, value_name = "ROTATIONS", default_value_t = ServerConfig::default().self_rotations_per_hour)]
    self_rotations_per_hour: u32,
    /// Bytes of changes per sync response for a device that does not ask for a size (a device
    /// may ask for anything from 4 KiB to --max-page-bytes).
    #[arg(long, default_value_t = PageLimits::default().default_response_change_bytes)]
    page_bytes: usize,
    /// The largest sync response page a device may ask for, in bytes of changes.
    #[arg(long, default_value_t = PageLimits::default().max_response_change_bytes)]
    max_page_bytes: usize,
    /// Encounters one sync request may upload changes of; over it the server answers 413 and
    /// the app splits its page.
    #[arg(long, default_value_t = SyncCaps::default().max_encounters_per_request, value_name = "ENCOUNTERS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_encounters_per_request: usize,
    /// Changes one sync request may upload (413 over it, as above).
    #[arg(long, default_value_t = SyncCaps::default().max_changes_per_request, value_name = "CHANGES", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_changes_per_request: usize,
    /// New encounters one device may file per UTC day; over it the server answers 429 with
    /// Retry-After (the next UTC midnight), stores nothing of the request, and the app keeps its
    /// records for a later sync.
    #[arg(long, default_value_t = SyncCaps::default().max_new_encounters_per_day, value_name = "ENCOUNTERS", value_parser = clap::value_parser!(u64).range(1..))]
    max_new_encounters_per_day: u64,
    /// Raster tiles for the coordinators' map page at `/`, as a URL template
    /// (e.g. 'https://tile.example.org/{z}/{x}/{y}.png'; `{s}` for subdomains). The coordinators'
    /// browsers fetch them directly. Without it the page draws the bundled country outlines,
    /// which need no internet.
    #[arg(long, env = "AUXILIO_TILE_URL", value_name = "URL")]
    tile_url: Option<String>,
    /// The credit the tile provider requires, shown under the map (e.g. '© OpenStreetMap
    /// contributors').
    #[arg(
        long,
        env = "AUXILIO_TILE_ATTRIBUTION",
        value_name = "TEXT",
        requires = "tile_url"
    )]
    tile_attribution: Option<String>,
    #[command(flatten)]
    retention: RetentionArgs,
    /// Seconds between retention sweeps (the first runs at start).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    retention_every: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Checked before the data directory is opened: a typo in the template is reported at once.
    let map_page = MapPageConfig::new(args.tile_url.clone(), args.tile_attribution.clone())
        .map_err(anyhow::Error::msg)?;
    let database = args.data.open(true)?;
    let config = ServerConfig {
        max_request_bytes: args.max_request_bytes,
        pages: PageLimits {
            default_response_change_bytes: args.page_bytes.min(args.max_page_bytes),
            max_response_change_bytes: args.max_page_bytes,
        },
        rate_limits: RateLimits {
            per_minute: args.rate_limit_per_minute,
            burst: args.rate_limit_burst,
        },
        trusted_proxies: args.trusted_proxies.clone(),
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
        self_rotations_per_hour: args.self_rotations_per_hour,
        caps: SyncCaps {
            max_encounters_per_request: args.max_encounters_per_request,
            max_changes_per_request: args.max_changes_per_request,
            max_new_encounters_per_day: args.max_new_encounters_per_day,
        },
        ..ServerConfig::default()
    };
    let state = AppState::new(database, config).with_map_page(map_page);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}: is another server using it? choose another with --listen",
                    args.listen
                )
            })?;
        let address = listener.local_addr()?;
        // One plain line on stdout so scripts (and the tests) learn the port chosen for :0.
        println!("auxilio listening on http://{address}");
        tracing::info!("coordinators' map page: http://{address}/");
        tracing::info!(%address, data = %args.data.data.display(), "serving");
        let policy = args.retention.policy();
        tracing::info!(
            ?policy,
            every_seconds = args.retention_every,
            "retention policy"
        );
        tokio::spawn(run_retention(
            state.clone(),
            policy,
            Duration::from_secs(args.retention_every),
        ));
        serve(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Sweeps what the retention policy says is due, every `every`, for as long as the server runs.
/// The work runs on a blocking thread, one batch per hold of the writer.
async fn run_retention(state: AppState, policy: Policy, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let database = state.database.clone();
        let swept = tokio::task::spawn_blocking(move || {
            retention::sweep(&database, policy, chrono::Utc::now())
        })
        .await;
        match swept {
            Ok(Ok(purged)) if !purged.is_empty() => {
                tracing::info!(
                    purged = purged.len(),
                    "retention sweep purged encounters or vaults"
                );
                state.events.publish(
                    purged
                        .into_iter()
                        .filter(|p| p.kind == auxilio_core::protocol::PurgeKind::Whole)
                        .map(|p| (p.encounter, p.team))
                        .collect(),
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::error!(%err, "retention sweep failed; it runs again at the next interval")
            }
            Err(err) => tracing::error!(%err, "retention sweep stopped"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing open requests");
}
