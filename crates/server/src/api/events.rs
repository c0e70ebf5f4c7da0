//! `/api/v1/events`: the event log, and its stream (Server-Sent Events).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tresor_api::requests::EventQuery;
use tresor_api::views::Event;
use tresor_core::access::Privilege;

use super::{authorize, ApiError, ApiQuery, AppState};
use crate::service::parse_lang;
use crate::store::EventFilter;

/// The store's filter of a query, from `after_id` on, at most `limit`.
fn filter(q: EventQuery, after_id: Option<i64>, limit: Option<u32>) -> EventFilter {
    EventFilter {
        vm: q.vm,
        host: q.host,
        provider: q.provider,
        event_type: q.event_type,
        since: q.since,
        after_id,
        limit,
    }
}

/// `GET /api/v1/events`.
pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing events")?;
    let lang = parse_lang(q.lang.as_deref())?;
    let (after, limit) = (q.after, q.limit);
    Ok(Json(s.events().list(&filter(q, after, limit), lang)?))
}

/// `GET /api/v1/events/stream`: the events as they happen (Server-Sent Events), from the one
/// after `after` (or from now), filtered like the list. Browsers reconnect with
/// `Last-Event-ID`, which is honoured.
pub(super) async fn stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as Sent, KeepAlive, Sse};
    authorize(&s, &headers, Privilege::SystemView, "Following events")?;
    let lang = parse_lang(q.lang.as_deref())?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let start = match resume.or(q.after) {
        Some(a) => a,
        None => s.events().last_id()?,
    };
    let filter = filter(q, Some(start), Some(500));
    let stream = futures_util::stream::unfold(
        (s, filter, std::collections::VecDeque::new()),
        move |(s, mut filter, mut queue)| async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    let e: Event = e;
                    let sent = Sent::default()
                        .id(e.id.to_string())
                        .event("event")
                        .data(serde_json::to_string(&e).unwrap_or_default());
                    return Some((Ok::<_, std::convert::Infallible>(sent), (s, filter, queue)));
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                match s.events().list(&filter, lang) {
                    Ok(events) => {
                        if let Some(last) = events.last() {
                            filter.after_id = Some(last.id);
                        }
                        queue.extend(events);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read events for a stream");
                        return None;
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
