//! The bearer-token extractor: every authenticated handler takes an [`AuthenticatedDevice`].
//! It also applies the request rate limits ([`crate::rate_limit`]): per device once the token is
//! checked, and for requests whose token fails, per client address and per claimed device id, so
//! every authenticated endpoint is covered, token guessing is slowed, and a valid token is served
//! even from an address that is flooding bad ones. The client's address is the peer's, or behind a
//! configured trusted proxy the rightmost untrusted address of `X-Forwarded-For`
//! ([`client_address`]). A device's rotated token is promoted on its first use, and a revoked
//! device calling in is written to the audit log (once a minute at most per device).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use auxilio_core::DeviceId;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use crate::audit;
use crate::database::Database;
use crate::directory::{self, AuthError, Device, TokenUsed};
use crate::error::AppError;
use crate::rate_limit::{Client, Limited, RateLimiter};

/// The device that sent the request, checked against the database on every request so a
/// revocation applies at once.
#[derive(Debug, Clone)]
pub struct AuthenticatedDevice(pub Device);

/// The bearer token as the request presented it, for handlers that act on that very token (a
/// self-rotation's compare-and-swap, an event stream that ends when it is retired). Take it
/// alongside [`AuthenticatedDevice`], which checks it.
#[derive(Debug, Clone)]
pub struct PresentedToken(pub String);

impl FromRequestParts<AppState> for PresentedToken {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, AppError> {
        Ok(PresentedToken(bearer_token(parts)?))
    }
}

pub(super) fn too_many(limited: Limited) -> AppError {
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

/// Who a request comes from, for the failed-authentication limit: the peer's address, unless the
/// peer is a trusted proxy, in which case the rightmost address of `X-Forwarded-For` (every such
/// header, in order) that is not itself a trusted proxy. Entries to the left of it were written by
/// the client and are not believed. A header that cannot be read leaves the proxy's own address.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted_proxies: &[IpAddr],
) -> IpAddr {
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    let mut hops = forwarded_for
        .into_iter()
        .flat_map(|header| header.split(',').collect::<Vec<_>>())
        .collect::<Vec<_>>();
    hops.reverse();
    for hop in hops {
        match hop.trim().parse::<IpAddr>() {
            Ok(address) if trusted_proxies.contains(&address) => continue,
            Ok(address) => return address,
            Err(_) => return peer,
        }
    }
    peer
}

fn requester(parts: &Parts, trusted_proxies: &[IpAddr]) -> Client {
    let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
        return Client::UnknownAddress;
    };
    let forwarded = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>();
    Client::Address(client_address(peer.ip(), forwarded, trusted_proxies))
}

/// Checks `token` against the directory, promoting a rotated token on its first use (if it lost
/// a race with its own retirement, it is refused) and auditing a revoked device's call when
/// `audit_revoked` lets it.
fn check_token(
    database: &Database,
    token: &str,
    audit_revoked: impl FnOnce(DeviceId) -> bool,
) -> Result<Result<Device, AuthError>, AppError> {
    let outcome = database.read(|conn| directory::authenticate(conn, token))?;
    match outcome {
        Ok((device, TokenUsed::Current)) => Ok(Ok(device)),
        Ok((device, TokenUsed::Rotated)) => {
            let current = database
                .write(|conn| directory::promote_next_token(conn, token))
                .map_err(AppError::internal)?;
            Ok(if current {
                Ok(device)
            } else {
                Err(AuthError::Invalid)
            })
        }
        Err(AuthError::Revoked) => {
            // A lost phone calling in: worth a line in the audit log (it is being told to wipe).
            // Only a valid secret gets here, so nobody else can fill the log with these, and the
            // phone itself writes one a minute at most.
            if let Ok((id, _)) = directory::parse_token(token) {
                if audit_revoked(id) {
                    database.write(|conn| {
                        audit::record(
                            conn,
                            &id.to_string(),
                            "device.revoked_contact",
                            serde_json::json!({ "device": id.to_string(), "told": "wipe" }),
                        )
                    })?;
                }
                tracing::warn!(device = %id, "a revoked device called in; told to wipe");
            }
            Ok(Err(AuthError::Revoked))
        }
        Err(other) => Ok(Err(other)),
    }
}

/// Counts a failed authentication against the address and the device id the token claimed (if
/// any); over either limit, the answer is 429.
fn failed(
    limiter: &RateLimiter,
    address: Client,
    claimed: Option<DeviceId>,
    err: AuthError,
) -> AppError {
    let now = Instant::now();
    let by_address = limiter.take(address, now);
    let by_device = claimed.map_or(Ok(()), |id| limiter.take(Client::ClaimedDevice(id), now));
    match (by_address, by_device) {
        (Err(limited), _) | (_, Err(limited)) => {
            tracing::warn!(
                ?address,
                ?claimed,
                "failed authentications over the rate limit"
            );
            too_many(limited)
        }
        _ => err.into(),
    }
}

impl FromRequestParts<AppState> for AuthenticatedDevice {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let address = requester(parts, &state.config.trusted_proxies);
        let limiter = &state.rate_limiter;
        // A request without any token, or a malformed one, costs the address: it is what a
        // scanner sends. Nothing is looked up for it.
        let token = match bearer_token(parts) {
            Ok(token) => token,
            Err(missing) => return Err(failed(limiter, address, None, missing)),
        };
        let claimed = match directory::parse_token(&token) {
            Ok((id, _)) => id,
            Err(malformed) => return Err(failed(limiter, address, None, malformed)),
        };
        // A well-formed token is always checked, even from an address over its limit: only
        // failures are limited, so a valid token behind a busy NAT or proxy is served.
        let revoked_contacts = state.revoked_contacts.clone();
        let authenticated = state
            .blocking(move |database| {
                check_token(database, &token, |id| {
                    revoked_contacts
                        .take(Client::Device(id), Instant::now())
                        .is_ok()
                })
            })
            .await?;
        let device = match authenticated {
            Ok(device) => device,
            Err(err) => return Err(failed(limiter, address, Some(claimed), err)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy_and_only_its_rightmost_untrusted_hop() {
        let proxy = ip("10.0.0.2");
        let trusted = [proxy, ip("10.0.0.3")];
        let client = |peer: &str, headers: &[&str]| {
            client_address(ip(peer), headers.iter().copied(), &trusted)
        };
        assert_eq!(client("192.0.2.9", &["203.0.113.7"]), ip("192.0.2.9"));
        assert_eq!(client("10.0.0.2", &[]), proxy);
        assert_eq!(client("10.0.0.2", &["203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(
            client("10.0.0.2", &["198.51.100.1, 203.0.113.7, 10.0.0.3"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            client("10.0.0.2", &["198.51.100.1", "203.0.113.7"]),
            ip("203.0.113.7")
        );
        assert_eq!(client("10.0.0.2", &["203.0.113.7, garbage"]), proxy);
        assert_eq!(client("10.0.0.2", &["2001:db8::1"]), ip("2001:db8::1"));
    }
}
