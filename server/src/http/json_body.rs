//! [`JsonBody`]: the extractor for JSON request bodies. It reads at most the route's body limit
//! (64 KiB, [`super::MAX_JSON_BODY_BYTES`], unless the route sets its own) and answers in the
//! API's own terms: 413 naming the limit, 400 naming what is wrong with the JSON, both as
//! [`AppError`] JSON bodies (axum's own rejections are plain text).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::MAX_JSON_BODY_BYTES;
use crate::error::AppError;

/// A JSON body of type `T`, for any route that takes one.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(AppError::PayloadTooLarge {
                    limit: MAX_JSON_BODY_BYTES,
                })
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(AppError::BadRequest(
                "send the body as JSON with `Content-Type: application/json`".into(),
            )),
            Err(other) => Err(AppError::BadRequest(other.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::post;

    use super::*;
    use crate::http::with_body_limits;

    async fn echo(JsonBody(value): JsonBody<serde_json::Value>) -> axum::Json<serde_json::Value> {
        axum::Json(value)
    }

    /// Posts `body` as JSON to a router limited like the app's, over a real socket.
    async fn post_json(body: Vec<u8>) -> (u16, serde_json::Value) {
        let router = with_body_limits(Router::new().route("/echo", post(echo)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut response = agent
                .post(format!("http://{address}/echo"))
                .header("Content-Type", "application/json")
                .send(&body[..])
                .unwrap();
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_vec().unwrap();
            (status, serde_json::from_slice(&body).unwrap())
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversize_json_body_gets_413_naming_the_limit() {
        let small = serde_json::to_vec(&serde_json::json!({"note": "x".repeat(1000)})).unwrap();
        let (status, body) = post_json(small).await;
        assert_eq!(status, 200, "{body}");

        let large =
            serde_json::to_vec(&serde_json::json!({"note": "x".repeat(MAX_JSON_BODY_BYTES)}))
                .unwrap();
        let (status, body) = post_json(large).await;
        assert_eq!(status, 413, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(&format!(
                "larger than the limit of {MAX_JSON_BODY_BYTES} bytes"
            )),
            "{body}"
        );

        let (status, body) = post_json(b"{\"note\": ".to_vec()).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].is_string());
    }
}
