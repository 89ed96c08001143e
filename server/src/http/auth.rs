//! The bearer-token extractor: every authenticated handler takes an [`AuthenticatedDevice`].

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use crate::audit;
use crate::directory::{self, AuthError, Device, TokenUsed};
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
                let outcome = database.read(|conn| directory::authenticate(conn, &token))?;
                match outcome {
                    Ok((device, TokenUsed::Current)) => Ok(Ok(device)),
                    Ok((device, TokenUsed::Rotated)) => {
                        database.write(|conn| directory::promote_next_token(conn, device.id))
                            .map_err(AppError::internal)?;
                        Ok(Ok(device))
                    }
                    Err(AuthError::Revoked) => {
                        // A lost phone calling in: worth a line in the audit log (it is being
                        // told to wipe). Only a valid secret gets here, so nobody else can
                        // fill the log with these.
                        if let Ok((id, _)) = directory::parse_token(&token) {
                            database.write(|conn| {
                                audit::record(
                                    conn,
                                    &id.to_string(),
                                    "device.revoked_contact",
                                    serde_json::json!({ "device": id.to_string(), "told": "wipe" }),
                                )
                            })?;
                            tracing::warn!(device = %id, "a revoked device called in; told to wipe");
                        }
                        Ok(Err(AuthError::Revoked))
                    }
                    Err(other) => Ok(Err(other)),
                }
            })
            .await??;
        Ok(AuthenticatedDevice(device))
    }
}
