//! `AppError`: every way an HTTP request can fail, mapped to a status code and a JSON body
//! `{"error": "...", "hint": "..."}`. Internal failures are logged in full and answered with a
//! generic message, never with their details.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::access::AccessError;
use crate::directory::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    /// Refused over HTTP because it is done only on the server's own command line (see
    /// [`crate::access::managed_over_http`]).
    #[error("{0}")]
    CommandLineOnly(String),
    /// The device authenticated but awaits approval by a team lead of `team` (see
    /// [`crate::access::require`]): it reads and writes no case data until then.
    #[error("this device awaits approval by a team lead of {team}")]
    AwaitingApproval { team: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request contradicts the current state (a team that exists, a device already revoked).
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Over the device's (or the address's) request rate limit; see [`crate::rate_limit`].
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// More encounters or changes in one sync request than one request may carry.
    #[error("{0}")]
    TooManyItems(String),
    /// The device has filed its day's ceiling of new encounters.
    #[error("{message}")]
    DailyCeiling {
        message: String,
        retry_after_secs: u64,
    },
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    pub fn internal(err: impl std::fmt::Display) -> Self {
        AppError::Internal(err.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_)
            | AppError::CommandLineOnly(_)
            | AppError::AwaitingApproval { .. } => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests { .. } | AppError::DailyCeiling { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            AppError::TooManyItems(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            AppError::Unauthorized(AuthError::Revoked) => Some(
                "this device was revoked and must erase its data; an administrator can enrol it again as a new device",
            ),
            AppError::Unauthorized(_) => {
                Some("check the token printed by `auxilio admin device enroll`")
            }
            AppError::CommandLineOnly(_) => Some(
                "run `auxilio admin device enroll --team TEAM --role ROLE` or `auxilio admin device rotate DEVICE_ID` on the server itself, on its data directory",
            ),
            AppError::AwaitingApproval { .. } => Some(
                "ask a team lead of the device's team to approve it (`POST /v1/team/devices/DEVICE_ID/approve`), or the server's operator (`auxilio admin device approve DEVICE_ID`); nothing is synced until then and nothing on the device is lost",
            ),
            AppError::PayloadTooLarge { .. } => Some("send fewer changes per request"),
            AppError::TooManyRequests { .. } => {
                Some("wait as long as Retry-After says, then send the same request again")
            }
            AppError::TooManyItems(_) => Some(
                "nothing was stored; split the page into smaller requests and send them one after another (the app does this on its own)",
            ),
            AppError::DailyCeiling { .. } => Some(
                "nothing was stored; keep the records on the device and sync again after Retry-After (the next UTC day), or ask an administrator to raise `auxilio serve --max-new-encounters-per-day`",
            ),
            AppError::Internal(_) => Some("retry later; the server log has the details"),
            _ => None,
        }
    }
}

impl From<AccessError> for AppError {
    fn from(err: AccessError) -> Self {
        match err {
            AccessError::AwaitingApproval { team } => AppError::AwaitingApproval { team },
            AccessError::Forbidden(message) => AppError::Forbidden(message),
        }
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(err: rusqlite::Error) -> Self {
        AppError::internal(err)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let AppError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Some(hint) = self.hint() {
            body["hint"] = hint.into();
        }
        if matches!(self, AppError::Unauthorized(AuthError::Revoked)) {
            // A revoked device is a lost or stolen phone: its app erases its store on reading
            // this (see `client::sync_with`). Sent only to a caller that proved the device's
            // secret, so nobody can make a working phone wipe itself.
            body["wipe"] = true.into();
        }
        if matches!(self, AppError::AwaitingApproval { .. }) {
            // A phone app shows "waiting for your team lead" on reading this, and keeps its data.
            body["awaiting_approval"] = true.into();
        }
        let retry_after = match &self {
            AppError::TooManyRequests { retry_after_secs }
            | AppError::DailyCeiling {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        if let Some(retry_after_secs) = retry_after {
            body["retry_after_secs"] = retry_after_secs.into();
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"auxilio\""),
            );
        }
        if let Some(retry_after_secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}
