//! The coordinator's views over all teams: `GET /v1/map` (clusters and points for a box and a
//! zoom), `GET /v1/stats` (totals and breakdowns) and `GET /v1/hotspots` (where rescues and
//! injuries concentrate). Coordinators see every team, team leads their own; every other role is
//! refused with 403.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};

use super::{AppState, AuthenticatedDevice};
use crate::access::{self, Permission};
use crate::directory::Device;
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

/// Checks that the device may do `permission`, then parses the query's filter, narrowed to the
/// device's team when its role reaches only one (a team lead): asking for another team is a 403,
/// not an empty answer, so a misconfigured page is noticed.
pub fn scoped_filter(
    device: &Device,
    permission: Permission,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    extra_parameters: &[&str],
) -> Result<(Filter, BTreeMap<String, String>), AppError> {
    access::require(device, permission)?;
    let (mut filter, others) =
        Filter::parse(&query_pairs(query)?, extra_parameters).map_err(AppError::BadRequest)?;
    if let Some(own) = access::team_scope(device).team() {
        match &filter.team {
            Some(asked) if asked != own => {
                return Err(AppError::Forbidden(format!(
                    "a {} device sees its own team `{own}` only, not `{asked}`",
                    device.role
                )));
            }
            _ => filter.team = Some(own.to_string()),
        }
    }
    Ok((filter, others))
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
    let (filter, others) = scoped_filter(&device, Permission::ReadMap, query, &["zoom"])?;
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
    let (filter, others) = scoped_filter(&device, Permission::ReadMap, query, &["period"])?;
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
    let (filter, others) = scoped_filter(&device, Permission::ReadMap, query, &["zoom"])?;
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
