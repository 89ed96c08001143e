//! The bearer-token extractor: every authenticated handler takes an [`AuthenticatedDevice`].

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use crate::directory::{self, AuthError, Device};
use crate::error::AppError;

/// The device that sent the request, checked against the database on every request so a
/// revocation applies at once.
#[derive(Debug, Clone)]
pub struct AuthenticatedDevice(pub Device);

impl FromRequestParts<AppState> for AuthenticatedDevice {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
        let token = header
            .to_str()
            .ok()
            // The scheme name is case-insensitive (RFC 9110).
            .and_then(|value| {
                value
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            })
            .map(|(_, token)| token.trim())
            .ok_or(AuthError::Missing)?
            .to_string();
        let device = state
            .blocking(move |database| {
                Ok(database.read(|conn| directory::authenticate(conn, &token))?)
            })
            .await??;
        Ok(AuthenticatedDevice(device))
    }
}
