//! `auxilio serve`: opens the data directory, binds, serves until Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;

use super::DataDirArg;
use crate::http::{AppState, MapPageConfig, ServerConfig, serve};
use crate::ledger::PageLimits;
use crate::rate_limit::RateLimits;

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
    /// bad tokens, per client address. 0 turns rate limiting off.
    #[arg(long, default_value_t = RateLimits::default().per_minute, value_name = "REQUESTS")]
    rate_limit_per_minute: u32,
    /// Requests a device may make at once after a quiet spell, above the per-minute rate.
    #[arg(long, default_value_t = RateLimits::default().burst, value_name = "REQUESTS")]
    rate_limit_burst: u32,
    /// Bytes of changes per sync response for a device that does not ask for a size (a device
    /// may ask for anything from 4 KiB to --max-page-bytes).
    #[arg(long, default_value_t = PageLimits::default().default_response_change_bytes)]
    page_bytes: usize,
    /// The largest sync response page a device may ask for, in bytes of changes.
    #[arg(long, default_value_t = PageLimits::default().max_response_change_bytes)]
    max_page_bytes: usize,
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
        serve(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
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
