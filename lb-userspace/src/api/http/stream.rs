//! `GET /api/v1/events/stream`: the event log, live, as server-sent events.
//! Each event is one `message` with `id:` its event id and `data:` the
//! event as in `GET /api/v1/events`. A client that reconnects with
//! `Last-Event-ID` (as browsers do) or `?since=ID` gets what it missed
//! first (as far as the log keeps it); otherwise only events from now on.

use std::{collections::VecDeque, convert::Infallible, sync::Arc};

use axum::{
    extract::{RawQuery, State},
    http::HeaderMap,
    response::{
        IntoResponse as _, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use tokio::sync::watch;

use super::{Web, resources};
use crate::{
    agent::{runtime::stopped, snapshot::Snapshot},
    api::wire,
    model::{Event, Request},
};

pub async fn events(State(web): State<Arc<Web>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let since = match wire::query_fields(query.as_deref()).and_then(|fields| wire::events(String::new(), &fields)) {
        Ok(Request::Events { since }) => since,
        Ok(_) => unreachable!("wire::events reads an events request"),
        Err(e) => return resources::answer(Err(e)),
    };
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()?.trim().parse().ok());
    let snapshots = web.ops.subscribe();
    let newest = snapshots.borrow().events.back().map_or(0, |e| e.id);
    let follow = Follow {
        snapshots,
        shutdown: web.shutdown.clone(),
        after: last_event_id.or(since).unwrap_or(newest),
        pending: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        let sse = SseEvent::default().id(event.id.to_string()).json_data(&event).unwrap_or_default();
        Some((Ok::<_, Infallible>(sse), follow))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// Follows the snapshots' event log from event id `after`.
struct Follow {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: watch::Receiver<bool>,
    after: u64,
    pending: VecDeque<Event>,
}

impl Follow {
    /// The next event; none once the agent stops.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.after = event.id;
                return Some(event);
            }
            let log = Arc::clone(&self.snapshots.borrow_and_update().events);
            self.pending.extend(log.iter().filter(|e| e.id > self.after).cloned());
            if !self.pending.is_empty() {
                continue;
            }
            tokio::select! {
                changed = self.snapshots.changed() => changed.ok()?,
                () = stopped(&mut self.shutdown) => return None,
            }
        }
    }
}
