//! The coordinator's map page at `/`, its assets under `/assets/`, and `/config.json`.
//!
//! Everything the page needs is compiled into the binary (`include_bytes!` of `server/assets/`),
//! so a server copied alone to a laptop in a field office serves a working map with no internet
//! and no files beside it: Leaflet (vendored, versioned path), a basemap of country outlines from
//! Natural Earth, and the page's own HTML, CSS and JavaScript (no build step). With
//! `auxilio serve --tile-url`, the page draws those tiles instead of the outlines.
//!
//! The page and its assets are public: they hold no data. The page asks for a coordinator token
//! and sends it only in `Authorization` headers to the scoped JSON API, never in a URL (URLs end
//! up in logs, histories and `Referer` headers). The Content-Security-Policy keeps the page to its
//! own origin (plus the configured tile server for images), so injected content could neither
//! load scripts nor send a token elsewhere.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tower_http::compression::CompressionLayer;

use super::AppState;
use crate::error::AppError;

/// How the page draws its basemap, set by `auxilio serve --tile-url` and `--tile-attribution`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MapPageConfig {
    /// A raster tile URL template (`https://tiles.example.org/{z}/{x}/{y}.png`); `None` draws the
    /// bundled country outlines.
    pub tile_url: Option<String>,
    /// Credit shown under the map for the tiles (most tile services require one).
    pub tile_attribution: Option<String>,
}

impl MapPageConfig {
    /// Checks a tile URL template: http(s), with `{z}`, `{x}` and `{y}`.
    pub fn new(tile_url: Option<String>, tile_attribution: Option<String>) -> Result<Self, String> {
        if let Some(url) = &tile_url {
            if tile_origin(url).is_none() {
                return Err(format!(
                    "--tile-url {url:?} must start with http:// or https:// and name a host"
                ));
            }
            for placeholder in ["{z}", "{x}", "{y}"] {
                if !url.contains(placeholder) {
                    return Err(format!(
                        "--tile-url {url:?} lacks {placeholder}; write it like https://tiles.example.org/{{z}}/{{x}}/{{y}}.png"
                    ));
                }
            }
            if url
                .chars()
                .any(|c| c.is_whitespace() || c == '\'' || c == ';')
            {
                return Err(format!("--tile-url {url:?} contains a space, quote or `;`"));
            }
        }
        Ok(Self {
            tile_url,
            tile_attribution,
        })
    }

    /// The Content-Security-Policy of the page: its own origin only, and images from the tile
    /// server when one is configured.
    fn content_security_policy(&self) -> String {
        let tiles = self
            .tile_url
            .as_deref()
            .and_then(tile_origin)
            .map(|origin| format!(" {origin}"))
            .unwrap_or_default();
        format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:{tiles}; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    }
}

/// `scheme://host[:port]` of a tile URL template, as a CSP source; Leaflet's `{s}` subdomain
/// placeholder becomes a `*.` wildcard.
fn tile_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest.split('/').next()?;
    if host.is_empty() || host.contains('@') {
        return None;
    }
    let host = host.replace("{s}", "*");
    if host.contains(['{', '}']) {
        return None;
    }
    Some(format!("{scheme}://{host}"))
}

/// One embedded file.
#[derive(Debug)]
struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    /// Vendored files live under a versioned path, so browsers may keep them for a year; the
    /// page's own files change with the server and are revalidated by ETag.
    immutable: bool,
    etag: String,
}

macro_rules! asset {
    ($path:literal, $content_type:literal) => {
        (
            $path,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $path)).as_slice(),
            $content_type,
        )
    };
}

static INDEX_HTML: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/index.html"));

/// Every file served under `/assets/`, by path.
static ASSETS: LazyLock<HashMap<&'static str, Asset>> = LazyLock::new(|| {
    let files: [(&str, &[u8], &str); 12] = [
        asset!("app.js", "text/javascript; charset=utf-8"),
        asset!("app.css", "text/css; charset=utf-8"),
        asset!("favicon.svg", "image/svg+xml"),
        asset!("basemap/countries.geojson", "application/geo+json"),
        asset!(
            "vendor/leaflet-1.9.4/leaflet.js",
            "text/javascript; charset=utf-8"
        ),
        asset!(
            "vendor/leaflet-1.9.4/leaflet.css",
            "text/css; charset=utf-8"
        ),
        asset!("vendor/leaflet-1.9.4/LICENSE", "text/plain; charset=utf-8"),
        asset!("vendor/leaflet-1.9.4/images/layers.png", "image/png"),
        asset!("vendor/leaflet-1.9.4/images/layers-2x.png", "image/png"),
        asset!("vendor/leaflet-1.9.4/images/marker-icon.png", "image/png"),
        asset!(
            "vendor/leaflet-1.9.4/images/marker-icon-2x.png",
            "image/png"
        ),
        asset!("vendor/leaflet-1.9.4/images/marker-shadow.png", "image/png"),
    ];
    files
        .into_iter()
        .map(|(path, bytes, content_type)| {
            (
                path,
                Asset {
                    bytes,
                    content_type,
                    immutable: path.starts_with("vendor/"),
                    etag: etag_of(bytes),
                },
            )
        })
        .collect()
});

static INDEX_ETAG: LazyLock<String> = LazyLock::new(|| etag_of(INDEX_HTML));

fn etag_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

pub fn router() -> Router<AppState> {
    // Compressed here only: the basemap and Leaflet shrink to a third, which matters to a
    // coordinator on a weak link. Sync bodies have their own coding, and an event stream must
    // not be buffered by a compressor.
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/config.json", get(page_config))
        .route("/assets/{*path}", get(asset))
        .layer(CompressionLayer::new())
}

/// Headers every response of the page carries.
fn security_headers(headers: &mut HeaderMap) {
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn not_modified(request: &HeaderMap, etag: &str) -> bool {
    request
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        })
}

async fn index(State(state): State<AppState>, request: HeaderMap) -> Response {
    let mut response = if not_modified(&request, &INDEX_ETAG) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        INDEX_HTML.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&INDEX_ETAG) {
        headers.insert(ETAG, etag);
    }
    if let Ok(policy) = HeaderValue::from_str(&state.map_page.content_security_policy()) {
        headers.insert(CONTENT_SECURITY_POLICY, policy);
    }
    security_headers(headers);
    response
}

/// The page's settings: not secret, so readable without a token (the page needs them before
/// sign-in to draw the basemap).
async fn page_config(State(state): State<AppState>) -> Response {
    let mut response = axum::Json(state.map_page.as_ref().clone()).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(response.headers_mut());
    response
}

async fn asset(Path(path): Path<String>, request: HeaderMap) -> Result<Response, AppError> {
    let asset = ASSETS
        .get(path.as_str())
        .ok_or_else(|| AppError::NotFound(format!("no such asset: /assets/{path}")))?;
    let mut response = if not_modified(&request, &asset.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(if asset.immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(ETAG, etag);
    }
    security_headers(headers);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_urls_are_checked_and_their_origin_allowed_for_images() {
        let config = MapPageConfig::new(
            Some("https://{s}.tiles.example.org/{z}/{x}/{y}.png".into()),
            None,
        )
        .unwrap();
        assert!(
            config
                .content_security_policy()
                .contains("img-src 'self' data: https://*.tiles.example.org;")
        );
        assert!(
            MapPageConfig::default()
                .content_security_policy()
                .contains("img-src 'self' data:;")
        );
        for bad in [
            "ftp://tiles.example.org/{z}/{x}/{y}.png",
            "https://tiles.example.org/{z}/{x}.png",
            "tiles.example.org/{z}/{x}/{y}.png",
            "https://tiles.example.org/{z}/{x}/{y}.png; script-src *",
        ] {
            assert!(MapPageConfig::new(Some(bad.into()), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_embedded_asset_is_present_and_vendor_files_are_immutable() {
        assert!(ASSETS.len() >= 12);
        for (path, asset) in ASSETS.iter() {
            assert!(!asset.bytes.is_empty(), "{path} is empty");
            assert_eq!(asset.immutable, path.starts_with("vendor/"));
        }
        // The basemap stays small enough for a weak link.
        assert!(ASSETS["basemap/countries.geojson"].bytes.len() < 400 * 1024);
    }
}
