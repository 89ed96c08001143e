//! The coordinator's views over all teams: `GET /v1/map` (clusters and points for a box and a
//! zoom), `GET /v1/stats` (totals and breakdowns) and `GET /v1/hotspots` (where rescues and
//! injuries concentrate). Coordinators only: a field device is refused with 403.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};

use super::{AppState, AuthenticatedDevice};
use crate::directory::{Device, Role};
use crate::error::AppError;
use crate::index::filter::Filter;
use crate::index::hotspots::{self, DEFAULT_HOTSPOT_ZOOM};
use crate::index::map::{self, MAX_ZOOM, MapAnswer};
use crate::index::stats::{self, Period, StatsAnswer};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/map", get(map_view))
        .route("/v1/stats", get(stats_view))
        .route("/v1/hotspots", get(hotspots_view))
}

/// Refuses every device but a coordinator's, saying why.
pub fn require_coordinator(device: &Device, what: &str) -> Result<(), AppError> {
    if device.role == Role::Coordinator {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!(
            "{what} is for coordinators; this device is a {} device of team `{}`",
            device.role, device.team
        )))
    }
}

/// The query's parameters as pairs, or a 400 saying what is wrong with them.
pub fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, AppError> {
    query
        .map(|Query(pairs)| pairs)
        .map_err(|e| AppError::BadRequest(e.body_text()))
}

/// The closest hotspot zoom allowed without a box (cells of about 5 km).
const MAX_ZOOM_WITHOUT_BBOX: u32 = 12;

fn parse_zoom(text: &str) -> Result<u32, AppError> {
    text.parse().ok().filter(|z| *z <= MAX_ZOOM).ok_or_else(|| {
        AppError::BadRequest(format!(
            "`zoom={text}` must be a whole number from 0 to {MAX_ZOOM}"
        ))
    })
}

async fn map_view(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<MapAnswer>, AppError> {
    require_coordinator(&device, "the map")?;
    let (filter, others) =
        Filter::parse(&query_pairs(query)?, &["zoom"]).map_err(AppError::BadRequest)?;
    let bbox = filter.bbox.ok_or_else(|| {
        AppError::BadRequest(
            "`bbox` is required: minLon,minLat,maxLon,maxLat in degrees, e.g. -112,30,-104,33"
                .into(),
        )
    })?;
    let zoom_text = others.get("zoom").ok_or_else(|| {
        AppError::BadRequest(format!(
            "`zoom` is required: a whole number from 0 to {MAX_ZOOM}"
        ))
    })?;
    let zoom = parse_zoom(zoom_text)?;
    map::check_view(bbox, zoom).map_err(AppError::BadRequest)?;
    let answer = state
        .blocking(move |database| Ok(database.read(|conn| map::query(conn, &filter, bbox, zoom))?))
        .await?;
    Ok(Json(answer))
}

async fn stats_view(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<StatsAnswer>, AppError> {
    require_coordinator(&device, "the stats")?;
    let (filter, others) =
        Filter::parse(&query_pairs(query)?, &["period"]).map_err(AppError::BadRequest)?;
    let period = match others.get("period") {
        Some(text) => Period::parse(text).map_err(AppError::BadRequest)?,
        None => Period::Day,
    };
    let answer = state
        .blocking(move |database| Ok(database.read(|conn| stats::query(conn, &filter, period))?))
        .await?;
    Ok(Json(answer))
}

async fn hotspots_view(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    require_coordinator(&device, "the hotspots")?;
    let (filter, others) =
        Filter::parse(&query_pairs(query)?, &["zoom"]).map_err(AppError::BadRequest)?;
    let zoom = match (others.get("zoom"), filter.bbox) {
        (Some(text), _) => parse_zoom(text)?,
        (None, Some(bbox)) => hotspots::zoom_for(bbox),
        (None, None) => DEFAULT_HOTSPOT_ZOOM,
    };
    match filter.bbox {
        Some(bbox) => map::check_view(bbox, zoom).map_err(AppError::BadRequest)?,
        // Without a box the cells cover all the data: fine cells would be millions.
        None if zoom > MAX_ZOOM_WITHOUT_BBOX => {
            return Err(AppError::BadRequest(format!(
                "`zoom={zoom}` needs a `bbox`: without one, hotspots cover all the data at zoom {MAX_ZOOM_WITHOUT_BBOX} or lower"
            )));
        }
        None => {}
    }
    let answer = state
        .blocking(move |database| Ok(database.read(|conn| hotspots::query(conn, &filter, zoom))?))
        .await?;
    Ok(Json(answer))
}
