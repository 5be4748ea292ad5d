//! `GET /api/v1/events/stream`: server-sent events, one `recorded` message per event once it is
//! stored (its JSON as in `/api/v1/events`), so the console's events page shows new events as
//! they arrive. A client that falls behind by more than the link's capacity gets a `skipped`
//! message (and reloads its list) instead of a queue that grows; a comment every
//! [`KEEP_ALIVE`] keeps proxies from closing an idle stream. Streams end when the daemon stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, ApiState, event_json};

pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[utoipa::path(get, path = "/api/v1/events/stream", security(("bearer" = [])),
    responses((status = 200, description = "Server-sent events: `recorded` (an event's JSON) and `skipped`", content_type = "text/event-stream", body = String),
        (status = 503, description = "This daemon records no events", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
pub(super) async fn events_stream(
    State(state): State<ApiState>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let recorded = state
        .recorded
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this daemon records no events"))?;
    let rx = recorded.subscribe();
    let stop = state.shutdown.clone();
    let stream = futures_util::stream::unfold((rx, stop), |(mut rx, stop)| async move {
        let item = tokio::select! {
            _ = stop.cancelled() => return None,
            got = rx.recv() => got,
        };
        let message = match item {
            Ok(stored) => SseEvent::default()
                .event("recorded")
                .id(stored.event.id.to_string())
                .data(event_json(&stored).to_string()),
            Err(RecvError::Lagged(n)) => {
                crate::telemetry::api::stream_skipped(n);
                SseEvent::default()
                    .event("skipped")
                    .data(serde_json::json!({ "skipped": n }).to_string())
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(message), (rx, stop)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
