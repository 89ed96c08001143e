//! `GET /v1/events`: a Server-Sent Events stream that tells coordinators which encounters changed,
//! so the map page refreshes without reloading.
//!
//! The sync handler publishes one [`EncountersChanged`] after each commit that stored new changes.
//! The [`EventHub`] is a bounded `tokio::sync::broadcast` channel: a sync never waits for a
//! subscriber. A subscriber that falls more than [`CHANNEL_CAPACITY`] events behind gets one
//! `resync` event instead of the ones it missed (it then re-reads what it shows).
//!
//! Events name encounter ids and teams only, never the content of a record: whoever reads the
//! stream must still fetch the encounters through the scoped query API. Only coordinators may
//! subscribe (they see every team). Revocation is checked again at every keep-alive, so a revoked
//! coordinator's open stream ends within one interval rather than living on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use auxilio_core::EncounterId;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CACHE_CONTROL;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::{AppState, AuthenticatedDevice};
use crate::directory;
use crate::error::AppError;

/// Events a subscriber may fall behind by before it is told to resync. Each event is small (ids
/// of one sync request), so this bounds memory at a few hundred KB even with large syncs.
pub const CHANNEL_CAPACITY: usize = 256;

/// Between keep-alive comments: proxies and browsers drop connections that stay silent for long.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What one committed sync request stored: the encounters that have new changes and their teams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncountersChanged {
    pub ids: Vec<EncounterId>,
    pub teams: Vec<String>,
}

/// The publishing side of `/v1/events`, shared by every handler through [`AppState`].
#[derive(Debug, Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<EncountersChanged>>,
    /// Flips to true when the server shuts down, ending every open stream: a graceful shutdown
    /// waits for open responses, and an event stream would otherwise never finish.
    closing: Arc<watch::Sender<bool>>,
}

impl Default for EventHub {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        let (closing, _) = watch::channel(false);
        Self {
            sender,
            closing: Arc::new(closing),
        }
    }
}

impl EventHub {
    /// Whether anyone listens; publishing is skipped (and its query with it) when nobody does.
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Tells every subscriber; never blocks (a full channel drops its oldest event and lagging
    /// subscribers learn that they lagged).
    pub fn publish(&self, changed: EncountersChanged) {
        if changed.ids.is_empty() {
            return;
        }
        // An error only means nobody is subscribed right now.
        let _ = self.sender.send(Arc::new(changed));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EncountersChanged>> {
        self.sender.subscribe()
    }

    /// Ends every open stream (at shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(events))
}

/// What the stream's loop waits on between two items.
struct Subscription {
    state: AppState,
    device: auxilio_core::DeviceId,
    receiver: broadcast::Receiver<Arc<EncountersChanged>>,
    closing: watch::Receiver<bool>,
    keep_alive: tokio::time::Interval,
    started: bool,
}

async fn events(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
) -> Result<Response, AppError> {
    super::map::require_coordinator(&device, "the event stream")?;
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the stream sends `ready` instead.
    keep_alive.reset();
    let subscription = Subscription {
        receiver: state.events.subscribe(),
        closing: state.events.closing.subscribe(),
        state,
        device: device.id,
        keep_alive,
        started: false,
    };
    let mut response = Sse::new(event_stream(subscription)).into_response();
    // Tells reverse proxies (nginx) not to buffer the stream, which would delay every event.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn event_stream(subscription: Subscription) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(subscription, |mut sub| async move {
        if !sub.started {
            // Sent at once so a client knows it is subscribed: anything stored from now on
            // reaches it, so it can read the current state without missing an update.
            sub.started = true;
            return Some((Ok(Event::default().event("ready").data("{}")), sub));
        }
        if *sub.closing.borrow() {
            return None;
        }
        let event = tokio::select! {
            received = sub.receiver.recv() => match received {
                Ok(changed) => Event::default()
                    .event("encounters")
                    .json_data(changed.as_ref())
                    .unwrap_or_else(|_| Event::default().event("resync").data("{}")),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(device = %sub.device, missed, "event subscriber lagged");
                    Event::default().event("resync").data(format!("{{\"missed\":{missed}}}"))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = sub.keep_alive.tick() => {
                if !still_enrolled(&sub.state, sub.device).await {
                    tracing::info!(device = %sub.device, "event stream closed: device revoked");
                    return None;
                }
                Event::default().comment("keep-alive")
            }
            _ = sub.closing.changed() => return None,
        };
        Some((Ok(event), sub))
    })
}

/// Whether the subscriber's device is still enrolled and not revoked (a failed read keeps the
/// stream: the next request the page makes checks its token anyway).
async fn still_enrolled(state: &AppState, device: auxilio_core::DeviceId) -> bool {
    state
        .blocking(move |database| {
            database
                .read(|conn| directory::find_device(conn, device))
                .map_err(AppError::internal)
        })
        .await
        .map(|found| found.is_some_and(|d| d.revoked_at.is_none()))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_to_resync_and_publishing_never_blocks() {
        let hub = EventHub::default();
        let mut receiver = hub.subscribe();
        let id: EncounterId = EncounterId::random();
        for _ in 0..CHANNEL_CAPACITY + 10 {
            hub.publish(EncountersChanged {
                ids: vec![id],
                teams: vec!["sonora".into()],
            });
        }
        assert!(matches!(
            receiver.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
        assert_eq!(receiver.recv().await.unwrap().ids, vec![id]);
    }

    #[tokio::test]
    async fn nothing_is_published_for_a_sync_that_stored_nothing() {
        let hub = EventHub::default();
        let mut receiver = hub.subscribe();
        hub.publish(EncountersChanged {
            ids: vec![],
            teams: vec![],
        });
        assert!(matches!(
            receiver.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
    }
}
