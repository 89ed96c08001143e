//! The HTTP surface: one [`AppState`], one router per feature (health, device administration,
//! the audit log, sync, encounters, purge, map, export, the coordinators' event stream and map
//! page, the protection officers' vault), [`app`] to assemble them (tests drive it in process)
//! and [`serve`] to run it until a shutdown signal.

mod admin;
mod audit_log;
mod auth;
mod encounters;
pub mod events;
mod export;
mod health;
pub mod json_body;
mod map;
pub mod map_page;
mod purge;
mod sync;
pub mod vault;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use auth::AuthenticatedDevice;
pub use events::{EncountersChanged, EventHub};
pub use json_body::JsonBody;
pub use map_page::MapPageConfig;

use crate::database::Database;
use crate::error::AppError;
use crate::ledger::{PageLimits, SyncCaps};
use crate::rate_limit::{RateLimiter, RateLimits};

/// The largest body of every route but `POST /v1/sync`: JSON commands and queries are a few
/// hundred bytes, and a body is read into memory before it is parsed.
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024;

/// Settings of a running server.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Largest accepted sync request body, in bytes (other routes take [`MAX_JSON_BODY_BYTES`]).
    pub max_request_bytes: usize,
    pub pages: PageLimits,
    /// Requests per device, and per address for requests that fail authentication.
    pub rate_limits: RateLimits,
    /// Encounters and changes per sync request, and new encounters per device per day.
    pub caps: SyncCaps,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 * 1024 * 1024,
            pages: PageLimits::default(),
            rate_limits: RateLimits::default(),
            caps: SyncCaps::default(),
        }
    }
}

/// Everything a request handler needs: cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub database: Arc<Database>,
    pub config: ServerConfig,
    /// Announces stored changes to coordinators' `/v1/events` streams.
    pub events: EventHub,
    pub map_page: Arc<MapPageConfig>,
    /// Token buckets per device and per address (see [`crate::rate_limit`]).
    pub rate_limiter: RateLimiter,
}

impl AppState {
    pub fn new(database: Database, config: ServerConfig) -> Self {
        Self {
            database: Arc::new(database),
            config,
            events: EventHub::default(),
            map_page: Arc::new(MapPageConfig::default()),
            rate_limiter: RateLimiter::new(config.rate_limits),
        }
    }

    /// The same state with the map page drawing `map_page`'s basemap.
    pub fn with_map_page(mut self, map_page: MapPageConfig) -> Self {
        self.map_page = Arc::new(map_page);
        self
    }

    /// Runs blocking database work on tokio's blocking threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, AppError> + Send + 'static,
    ) -> Result<T, AppError> {
        let database = self.database.clone();
        tokio::task::spawn_blocking(move || work(&database))
            .await
            .map_err(AppError::internal)?
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let router = Router::new()
        .merge(health::router())
        .merge(admin::router())
        .merge(audit_log::router())
        .merge(sync::router(state.config.max_request_bytes))
        .merge(encounters::router())
        .merge(purge::router())
        .merge(map::router())
        .merge(export::router())
        .merge(events::router())
        .merge(map_page::router())
        .merge(vault::router())
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed);
    with_body_limits(router)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Every route reads at most [`MAX_JSON_BODY_BYTES`] of body unless it sets its own limit (sync
/// does, on its route, which takes precedence).
fn with_body_limits<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
}

async fn no_such_route(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> AppError {
    AppError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let events = state.events.clone();
    // Event streams never finish by themselves: they are ended first, or the graceful shutdown
    // would wait for them forever.
    let shutdown = async move {
        shutdown.await;
        events.close();
    };
    // The client's address reaches the auth extractor, which slows token guessing per address.
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
