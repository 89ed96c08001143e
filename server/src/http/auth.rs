//! The bearer-token extractor: every authenticated handler takes an [`AuthenticatedDevice`].
//! It also applies the request rate limits ([`crate::rate_limit`]): per device once the token is
//! checked, and per client address for requests whose token fails, so every authenticated
//! endpoint is covered and token guessing is slowed. A device's rotated token is promoted on its
//! first use, and a revoked device calling in is written to the audit log.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use crate::audit;
use crate::database::Database;
use crate::directory::{self, AuthError, Device, TokenUsed};
use crate::error::AppError;
use crate::rate_limit::{Client, Limited};

/// The device that sent the request, checked against the database on every request so a
/// revocation applies at once.
#[derive(Debug, Clone)]
pub struct AuthenticatedDevice(pub Device);

fn too_many(limited: Limited) -> AppError {
    // Whole seconds, rounded up: a client that waits what it is told is let through.
    let retry_after_secs =
        limited.retry_after.as_secs() + u64::from(limited.retry_after.subsec_nanos() > 0);
    AppError::TooManyRequests {
        retry_after_secs: retry_after_secs.max(1),
    }
}

fn bearer_token(parts: &Parts) -> Result<String, AuthError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
    Ok(header
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
        .to_string())
}

/// Checks `token` against the directory, promoting a rotated token on its first use and
/// auditing a revoked device's call.
fn check_token(database: &Database, token: &str) -> Result<Result<Device, AuthError>, AppError> {
    let outcome = database.read(|conn| directory::authenticate(conn, token))?;
    match outcome {
        Ok((device, TokenUsed::Current)) => Ok(Ok(device)),
        Ok((device, TokenUsed::Rotated)) => {
            database
                .write(|conn| directory::promote_next_token(conn, device.id))
                .map_err(AppError::internal)?;
            Ok(Ok(device))
        }
        Err(AuthError::Revoked) => {
            // A lost phone calling in: worth a line in the audit log (it is being told to wipe).
            // Only a valid secret gets here, so nobody else can fill the log with these.
            if let Ok((id, _)) = directory::parse_token(token) {
                database.transaction(|conn| {
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
}

impl FromRequestParts<AppState> for AuthenticatedDevice {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(Client::UnknownAddress, |info| Client::Address(info.0.ip()));
        let limiter = &state.rate_limiter;
        // An address that used up its failed attempts is answered before its token is looked up.
        limiter.check(address, Instant::now()).map_err(too_many)?;
        let authenticated = match bearer_token(parts) {
            Ok(token) => {
                state
                    .blocking(move |database| check_token(database, &token))
                    .await?
            }
            Err(missing) => Err(missing),
        };
        let device = match authenticated {
            Ok(device) => device,
            Err(err) => {
                // A request without any token costs the address too: it is what a scanner sends.
                if let Err(limited) = limiter.take(address, Instant::now()) {
                    tracing::warn!(?address, "failed authentications over the rate limit");
                    return Err(too_many(limited));
                }
                return Err(err.into());
            }
        };
        limiter
            .take(Client::Device(device.id), Instant::now())
            .map_err(|limited| {
                tracing::warn!(device = %device.id, "device over the rate limit");
                too_many(limited)
            })?;
        Ok(AuthenticatedDevice(device))
    }
}
