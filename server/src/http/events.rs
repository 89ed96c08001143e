//! `GET /v1/events`: a Server-Sent Events stream that tells coordinators which encounters changed,
//! so the map page refreshes without reloading.
//!
//! The sync handler publishes one [`EncountersChanged`] after each commit that stored new changes.
//! The [`EventHub`] is a bounded `tokio::sync::broadcast` channel: a sync never waits for a
//! subscriber. A subscriber that falls more than [`CHANNEL_CAPACITY`] events behind gets one
//! `resync` event instead of the ones it missed (it then re-reads what it shows).
//!
//! Events name encounter ids and teams only, never the content of a record: whoever reads the
//! stream must still fetch the encounters through the scoped query API. Coordinators hear of every
//! team, team leads of their own team only. The token the stream was opened with is checked again
//! at every keep-alive ([`super::ServerConfig::events_keep_alive`]), so a stream ends within one
//! interval once that token stops working: the device revoked, its token rotated by an
//! administrator, or superseded by the device's own rotated token on its first use.

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

use super::{AppState, AuthenticatedDevice, PresentedToken};
use crate::access::{self, Permission, TeamScope};
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

impl EncountersChanged {
    /// The event for what one sync stored: each encounter with its team.
    pub fn from_stored(stored: Vec<(EncounterId, String)>) -> Self {
        let mut teams: Vec<String> = stored.iter().map(|(_, team)| team.clone()).collect();
        teams.sort();
        teams.dedup();
        Self {
            ids: stored.into_iter().map(|(id, _)| id).collect(),
            teams,
        }
    }
}

/// One published event, keeping which team each id belongs to so that a subscriber scoped to one
/// team (a team lead) hears of its own team's encounters only.
#[derive(Debug)]
pub struct Published {
    stored: Vec<(EncounterId, String)>,
}

impl Published {
    /// What `scope` may hear of this event, or `None` if nothing.
    fn for_scope(&self, scope: &TeamScope) -> Option<EncountersChanged> {
        let visible: Vec<(EncounterId, String)> = self
            .stored
            .iter()
            .filter(|(_, team)| scope.includes(team))
            .cloned()
            .collect();
        (!visible.is_empty()).then(|| EncountersChanged::from_stored(visible))
    }
}

/// The publishing side of `/v1/events`, shared by every handler through [`AppState`].
#[derive(Debug, Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<Published>>,
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
    pub fn publish(&self, stored: Vec<(EncounterId, String)>) {
        if stored.is_empty() {
            return;
        }
        // An error only means nobody is subscribed right now.
        let _ = self.sender.send(Arc::new(Published { stored }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
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
    /// The token the stream was opened with: when it stops working, the stream ends.
    token: String,
    scope: TeamScope,
    receiver: broadcast::Receiver<Arc<Published>>,
    closing: watch::Receiver<bool>,
    keep_alive: tokio::time::Interval,
    started: bool,
}

async fn events(
    State(state): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    PresentedToken(token): PresentedToken,
) -> Result<Response, AppError> {
    access::require(&device, Permission::ReadMap)?;
    let mut keep_alive = tokio::time::interval(state.config.events_keep_alive);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the stream sends `ready` instead.
    keep_alive.reset();
    let subscription = Subscription {
        receiver: state.events.subscribe(),
        closing: state.events.closing.subscribe(),
        state,
        device: device.id,
        token,
        scope: access::team_scope(&device),
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
                Ok(published) => match published.for_scope(&sub.scope) {
                    Some(changed) => Event::default()
                        .event("encounters")
                        .json_data(&changed)
                        .unwrap_or_else(|_| Event::default().event("resync").data("{}")),
                    // Another team's news: a team lead's stream says nothing of it.
                    None => Event::default().comment("keep-alive"),
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(device = %sub.device, missed, "event subscriber lagged");
                    Event::default().event("resync").data(format!("{{\"missed\":{missed}}}"))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = sub.keep_alive.tick() => {
                if !token_still_works(&sub.state, &sub.token).await {
                    tracing::info!(device = %sub.device, "event stream closed: its token was revoked, rotated or superseded");
                    return None;
                }
                Event::default().comment("keep-alive")
            }
            _ = sub.closing.changed() => return None,
        };
        Some((Ok(event), sub))
    })
}

/// Whether the token the stream was opened with still authenticates its device (a failed read
/// keeps the stream: the next request the page makes checks its token anyway). A token that is
/// still current while the device's own rotated token waits for its first use still works.
async fn token_still_works(state: &AppState, token: &str) -> bool {
    let token = token.to_string();
    state
        .blocking(move |database| {
            database
                .read(|conn| directory::authenticate(conn, &token))
                .map_err(AppError::internal)
        })
        .await
        .map(|outcome| outcome.is_ok())
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
            hub.publish(vec![(id, "sonora".into())]);
        }
        assert!(matches!(
            receiver.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
        let next = receiver.recv().await.unwrap();
        assert_eq!(next.for_scope(&TeamScope::All).unwrap().ids, vec![id]);
        assert_eq!(next.for_scope(&TeamScope::Only("altar".into())), None);
    }

    #[tokio::test]
    async fn nothing_is_published_for_a_sync_that_stored_nothing() {
        let hub = EventHub::default();
        let mut receiver = hub.subscribe();
        hub.publish(vec![]);
        assert!(matches!(
            receiver.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
    }
}
