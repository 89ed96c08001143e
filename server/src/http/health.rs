//! `GET /healthz`: is the server up and its database readable.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::error::AppError;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// Answers only whether the database can be read: nothing about its contents, since anyone may
/// call it.
async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    state
        .blocking(|database| Ok(database.read(crate::directory::team_count)?))
        .await?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}
