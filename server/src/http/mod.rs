//! The HTTP surface: one [`AppState`], one router per feature (health, device administration,
//! a team lead's approval of its team's devices, the audit log, sync, encounters, purge, map, export, the coordinators' event stream and map
//! page, the protection officers' vault), [`app`] to assemble them (tests drive it in process)
//! and [`serve`] to run it until a shutdown signal. Every `/v1/*` answer, errors included, says
//! `Cache-Control: no-store`: they are case data, credentials or refusals, never to be kept by a
//! browser or a proxy.

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
pub mod relay_keys;
mod sync;
mod team;
pub mod vault;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;
use tower_service::Service;

pub use auth::{AuthenticatedDevice, PresentedToken};
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
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted sync request body, in bytes (other routes take [`MAX_JSON_BODY_BYTES`]).
    pub max_request_bytes: usize,
    pub pages: PageLimits,
    /// Requests per device, and per address and per claimed device for requests that fail
    /// authentication.
    pub rate_limits: RateLimits,
    /// Reverse proxies (a TLS terminator) whose `X-Forwarded-For` is believed: a request from one
    /// of them is counted against the rightmost address in that header that is not itself a
    /// trusted proxy. From any other peer the header is ignored.
    pub trusted_proxies: Vec<IpAddr>,
    /// How long a client may take to send a request's headers before its connection is closed
    /// (a half-sent request otherwise holds a connection for ever).
    pub header_read_timeout: Duration,
    /// Between two keep-alives of a `/v1/events` stream, which also re-checks the token the
    /// stream was opened with ([`events::KEEP_ALIVE`] by default).
    pub events_keep_alive: Duration,
    /// Self-rotations (`POST /v1/token/rotate`) one device may make per hour; each writes an
    /// audit row, so this bounds what a device can make the audit log write. 0: no limit.
    pub self_rotations_per_hour: u32,
    /// Encounters and changes per sync request, and new encounters per device per day.
    pub caps: SyncCaps,
}

/// Default of [`ServerConfig::header_read_timeout`].
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Default of [`ServerConfig::self_rotations_per_hour`]: a phone rotates its token once in a while,
/// a retry after a lost answer a few times more.
pub const SELF_ROTATIONS_PER_HOUR: u32 = 10;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 * 1024 * 1024,
            pages: PageLimits::default(),
            rate_limits: RateLimits::default(),
            trusted_proxies: Vec::new(),
            header_read_timeout: HEADER_READ_TIMEOUT,
            events_keep_alive: events::KEEP_ALIVE,
            self_rotations_per_hour: SELF_ROTATIONS_PER_HOUR,
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
    /// Self-rotations per device ([`ServerConfig::self_rotations_per_hour`]).
    pub self_rotations: RateLimiter,
    /// `device.revoked_contact` audit rows per device: one a minute.
    pub revoked_contacts: RateLimiter,
}

/// How often a revoked device calling in is written to the audit log, at most (it is told to
/// wipe every time).
pub const REVOKED_CONTACT_AUDIT_EVERY: Duration = Duration::from_secs(60);

impl AppState {
    pub fn new(database: Database, config: ServerConfig) -> Self {
        Self {
            database: Arc::new(database),
            events: EventHub::default(),
            map_page: Arc::new(MapPageConfig::default()),
            rate_limiter: RateLimiter::new(config.rate_limits),
            self_rotations: RateLimiter::per_period(
                config.self_rotations_per_hour,
                Duration::from_secs(3600),
            ),
            revoked_contacts: RateLimiter::per_period(1, REVOKED_CONTACT_AUDIT_EVERY),
            config,
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
        .merge(team::router())
        .merge(audit_log::router())
        .merge(sync::router(state.config.max_request_bytes))
        .merge(encounters::router())
        .merge(purge::router())
        .merge(map::router())
        .merge(export::router())
        .merge(events::router())
        .merge(map_page::router())
        .merge(vault::router())
        .merge(relay_keys::router())
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed);
    with_body_limits(router)
        .layer(axum::middleware::from_fn(no_store_for_the_api))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `Cache-Control: no-store` on every `/v1/*` answer that does not set its own.
async fn no_store_for_the_api(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let api = request.uri().path().starts_with("/v1/");
    let mut response = next.run(request).await;
    if api {
        response
            .headers_mut()
            .entry(axum::http::header::CACHE_CONTROL)
            .or_insert(axum::http::HeaderValue::from_static("no-store"));
    }
    response
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
///
/// Each connection is HTTP/1.1 with a header-read timeout ([`ServerConfig::header_read_timeout`]):
/// a client that opens connections and sends half a request is cut off instead of holding them.
/// The client's address reaches the auth extractor as [`ConnectInfo`], which slows token
/// guessing per address.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let events = state.events.clone();
    let header_read_timeout = state.config.header_read_timeout;
    let router = app(state);
    // Connections hold a receiver each: `all_closed` resolves when the last one is dropped.
    let (all_closed, open_connection) = watch::channel(());
    let (stop_all, stop) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(%err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move { router.call(request.map(Body::new)).await }
        });
        let (open_connection, mut stop) = (open_connection.clone(), stop.clone());
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let mut connection = std::pin::pin!(
                builder
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
            );
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(err) = result {
                            tracing::debug!(%err, %peer, "connection ended with an error");
                        }
                        break;
                    }
                    changed = stop.changed(), if !stopping => {
                        stopping = true;
                        if changed.is_ok() {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(open_connection);
        });
    }
    // Event streams never finish by themselves: they are ended first, or the graceful shutdown
    // would wait for them forever.
    events.close();
    drop(listener);
    stop_all.send_replace(true);
    drop(open_connection);
    all_closed.closed().await;
    Ok(())
}
