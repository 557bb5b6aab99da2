//! Which user events this agent keeps for `/v1/event/list` (the [`EventLog`]): those whose
//! filters match it, as Consul decides.
//!
//! A filter is a regular expression: `node_filter` against this agent's node name,
//! `service_filter` against the names of its local services, `tag_filter` against the tags
//! of a service that matched. An event whose filter is not a valid expression matches
//! nothing (the firing agent refuses such filters, so only a foreign sender makes one).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checks::LocalAgent;
use crate::gossip::event::{EventLog, UserEvent};

/// Received events waiting to be filtered; the gossip task drops one when full.
pub const EVENTS_QUEUED_MAX: usize = 256;

/// Whether `event` is meant for this agent (`node` and its local services).
pub fn matches(event: &UserEvent, node: &str, local: &LocalAgent) -> bool {
    let regex = |pattern: &str| regex::Regex::new(pattern).ok();
    if !event.node_filter.is_empty() && !regex(&event.node_filter).is_some_and(|r| r.is_match(node)) {
        return false;
    }
    if event.service_filter.is_empty() {
        return true;
    }
    let (Some(service), tag) = (regex(&event.service_filter), &event.tag_filter) else { return false };
    let tag = if tag.is_empty() { None } else { Some(regex(tag)) };
    local.read(|state| {
        state.services.values().any(|s| {
            service.is_match(&s.spec.name)
                && match &tag {
                    None => true,
                    Some(Some(t)) => s.spec.tags.iter().any(|x| t.is_match(x)),
                    Some(None) => false,
                }
        })
    })
}

/// Keeps the events gossip delivers that match this agent, until `shutdown`.
pub async fn keep(
    log: Arc<EventLog>,
    mut received: mpsc::Receiver<UserEvent>,
    node: String,
    local: LocalAgent,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = received.recv() => match next { Some(e) => e, None => return },
        };
        if matches(&event, &node, &local) {
            tracing::debug!(name = %event.name, id = %event.id_string(), "user event received");
            log.push(event);
        }
    }
}
