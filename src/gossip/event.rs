//! User events (`/v1/event/fire`): small opaque messages spread to every member by gossip,
//! best effort, as Consul's. Each agent keeps the most recent ones that match it.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Name, payload and filters together at most (Consul's serf limit): an event must ride in
/// one gossip packet beside the membership updates.
pub const USER_EVENT_MAX_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserEvent {
    pub id: [u8; 16],
    pub name: String,
    pub payload: Vec<u8>,
    /// Regular expressions (empty: any): the node name; a local service's name; one of that
    /// service's tags.
    pub node_filter: String,
    pub service_filter: String,
    pub tag_filter: String,
    /// The sender's Lamport time for events.
    pub ltime: u64,
}

impl UserEvent {
    pub fn size(&self) -> usize {
        self.name.len()
            + self.payload.len()
            + self.node_filter.len()
            + self.service_filter.len()
            + self.tag_filter.len()
    }

    pub fn id_string(&self) -> String {
        uuid::Uuid::from_bytes(self.id).hyphenated().to_string()
    }

    /// Consul's blocking index for an event list: the two halves of the last event's ID
    /// XORed (clients compute it the same way to block on `/v1/event/list`).
    pub fn index(&self) -> u64 {
        let (a, b) = self.id.split_at(8);
        let half = |s: &[u8]| u64::from_be_bytes(s.try_into().unwrap_or_default());
        half(a) ^ half(b)
    }
}

/// Events kept per agent (Consul's ring buffer size); the oldest goes first.
pub const EVENTS_KEPT: usize = 256;
/// The kept events and the index of the newest (0 when none), which blocking lists wait on.
pub struct EventLog {
    events: Mutex<VecDeque<UserEvent>>,
    index: watch::Sender<u64>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog { events: Mutex::new(VecDeque::new()), index: watch::Sender::new(0) }
    }
}

impl EventLog {
    /// The kept events named `name` (all when `None`), oldest first, and the log's index.
    pub fn list(&self, name: Option<&str>) -> (Vec<UserEvent>, u64) {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let listed = events.iter().filter(|e| name.is_none_or(|n| e.name == n)).cloned().collect();
        (listed, *self.index.borrow())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// Keeps `event` (once per ID), dropping the oldest beyond [`EVENTS_KEPT`].
    pub fn push(&self, event: UserEvent) {
        let index = event.index();
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.iter().any(|e| e.id == event.id) {
            return;
        }
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(event);
        drop(events);
        self.index.send_replace(index);
    }
}
