//! `GET /healthz`: is the server up and its database readable.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::error::AppError;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    let changes: i64 = state
        .blocking(|database| {
            Ok(database.read(|conn| {
                conn.query_row("SELECT count(*) FROM changes", [], |row| row.get(0))
            })?)
        })
        .await?;
    Ok(Json(
        serde_json::json!({ "status": "ok", "changes": changes }),
    ))
}
