//! The log of what happened to servers, pools and the agent (drains begun and ended, deadlines
//! reached, enables): the last [`MAX_EVENTS`], shared with the snapshot
//! without copying until the next event.

use std::{collections::VecDeque, sync::Arc};

use crate::model::{Event, EventKind, Subject};

pub const MAX_EVENTS: usize = 1000;

#[derive(Default)]
pub struct EventLog {
    events: Arc<VecDeque<Event>>,
    next_id: u64,
}

impl EventLog {
    pub fn push(&mut self, now_ms: u64, subject: Subject, kind: EventKind, message: String) {
        log::info!("{subject} {}: {message}", kind.label());
        self.next_id += 1;
        let events = Arc::make_mut(&mut self.events);
        events.push_back(Event { id: self.next_id, time_ms: now_ms, subject, kind, message });
        while events.len() > MAX_EVENTS {
            events.pop_front();
        }
    }

    /// The events, oldest first, as they are now.
    pub fn shared(&self) -> Arc<VecDeque<Event>> {
        Arc::clone(&self.events)
    }
}
