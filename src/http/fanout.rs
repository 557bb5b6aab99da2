//! Identical blocking queries answered together. When many clients wait with the same request
//! (10,000 watchers of one key), the first runs through the router and the others park their
//! connection beside it; one write wakes one query, and its encoded response is written to
//! every parked connection in one tight loop of non-blocking `writev`s — no task wake-up,
//! routing, handler or response building per watcher. What a watcher costs the server is then
//! close to what the kernel costs to send it its answer (bench/README.md, "write floor").
//!
//! Freshness: a connection may join a group only while its leader's query is waiting
//! ([`GroupWake::is_waiting`]); the leader marks itself reading before every read of the state.
//! So a joiner's answer is always read after the joiner arrived, as if it had run alone: a
//! client that wrote and then asks with an old index sees its write.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// A group's leader query says here whether it is waiting for a change (others may join) or
/// reading the state (they may not). Carried to the handler as a request extension.
#[derive(Debug, Default)]
pub struct GroupWake {
    waiting: AtomicBool,
}

impl GroupWake {
    /// The query waits for a change: a request arriving now is answered by its next read.
    pub fn waiting(&self) {
        self.waiting.store(true, Ordering::SeqCst);
    }

    /// The query is about to read the state: a request arriving now may need a later read.
    pub fn reading(&self) {
        self.waiting.store(false, Ordering::SeqCst);
    }

    fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// One encoded response: head and body, written to every member; its status and route are
/// what the members' requests are counted under.
pub(super) struct Encoded {
    pub head: Vec<u8>,
    pub body: Bytes,
    pub status: u16,
    pub route: String,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// The bytes from `offset` on, as at most two slices.
    pub fn slices_from(&self, offset: usize) -> [IoSlice<'_>; 2] {
        let head = self.head.get(offset..).unwrap_or_default();
        let body = self.body.get(offset.saturating_sub(self.head.len())..).unwrap_or_default();
        [IoSlice::new(head), IoSlice::new(body)]
    }
}

/// What a parked connection is told once its group's answer is out.
pub(super) enum Delivery {
    /// Written whole.
    Sent(Arc<Encoded>),
    /// The socket's buffer filled: the connection writes the rest itself.
    Rest { encoded: Arc<Encoded>, offset: usize },
    /// The connection failed: close it.
    Failed,
    /// The leader's answer cannot be shared (it streams, or the leader ended without one):
    /// run the request alone.
    RunAlone,
}

struct Member {
    id: u64,
    stream: Arc<TcpStream>,
    done: oneshot::Sender<Delivery>,
    /// One of `limits.max_blocking_queries`, as if the member's query ran alone.
    _permit: OwnedSemaphorePermit,
}

struct Group {
    wake: Arc<GroupWake>,
    members: Vec<Member>,
}

/// What a groupable request does.
pub(super) enum Role {
    /// Run the request, then hand its answer to [`FanOut::finish`].
    Lead(Arc<GroupWake>),
    /// Wait for the leader's answer; `id` names this member to [`FanOut::leave`].
    Joined { answer: oneshot::Receiver<Delivery>, id: u64 },
    /// Run the request alone (its group is reading, or no blocking-query permit is left:
    /// running it gives the usual answer).
    Alone,
}

/// The open groups, by request (see [`super::h1`] for what makes two requests the same).
#[derive(Default)]
pub(super) struct FanOut {
    groups: Mutex<HashMap<Vec<u8>, Group>>,
    next_member: AtomicU64,
}

impl FanOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a group of `key` is waiting now (a request joining it must first be as fresh
    /// as if it ran alone: its consistency barrier).
    pub fn has_waiting(&self, key: &[u8]) -> bool {
        self.lock().get(key).is_some_and(|g| g.wake.is_waiting())
    }

    /// Joins the group of `key` if its leader is waiting, else leads a new one when there is
    /// none. `permit` is asked for only when joining.
    pub fn enter(
        &self,
        key: Vec<u8>,
        stream: &Arc<TcpStream>,
        permit: impl FnOnce() -> Option<OwnedSemaphorePermit>,
    ) -> Role {
        let mut groups = self.lock();
        match groups.get_mut(&key) {
            Some(group) if group.wake.is_waiting() => {
                let Some(permit) = permit() else { return Role::Alone };
                let (done, answer) = oneshot::channel();
                let id = self.next_member.fetch_add(1, Ordering::Relaxed);
                group.members.push(Member { id, stream: Arc::clone(stream), done, _permit: permit });
                Role::Joined { answer, id }
            }
            Some(_) => Role::Alone,
            None => {
                let wake = Arc::new(GroupWake::default());
                groups.insert(key, Group { wake: Arc::clone(&wake), members: Vec::new() });
                Role::Lead(wake)
            }
        }
    }

    /// Takes member `id` out of the group of `key` (its client went away); its permit is
    /// released. Nothing happens if its answer is already on its way.
    pub fn leave(&self, key: &[u8], id: u64) {
        let mut groups = self.lock();
        if let Some(group) = groups.get_mut(key) {
            group.members.retain(|m| m.id != id);
        }
    }

    /// Closes the group `wake` leads if nobody joined it (its leader's client went away);
    /// whether it did.
    pub fn close_if_alone(&self, key: &[u8], wake: &Arc<GroupWake>) -> bool {
        let mut groups = self.lock();
        match groups.get(key) {
            Some(group) if Arc::ptr_eq(&group.wake, wake) && group.members.is_empty() => {
                groups.remove(key);
                true
            }
            _ => false,
        }
    }

    /// Closes the group `wake` leads and sends `encoded` (`None`: the answer cannot be
    /// shared; each member runs its request alone) to its members, in the order they came;
    /// the number of members.
    pub fn finish(&self, key: &[u8], wake: &Arc<GroupWake>, encoded: Option<&Arc<Encoded>>) -> usize {
        let members = {
            let mut groups = self.lock();
            match groups.get(key) {
                Some(group) if Arc::ptr_eq(&group.wake, wake) => groups.remove(key).map(|g| g.members),
                _ => None,
            }
        };
        let members = members.unwrap_or_default();
        let count = members.len();
        // Every answer is written before any member is woken: woken tasks would compete with
        // this loop for the core, and each write would wait behind them.
        let mut woken = Vec::with_capacity(count);
        for Member { stream, done, _permit, .. } in members {
            let delivery = match encoded {
                Some(encoded) => send_now(&stream, encoded),
                None => Delivery::RunAlone,
            };
            // Released before the member goes on: its connection is its own again (hyper may
            // take it over), and its query no longer counts as blocking.
            drop((stream, _permit));
            woken.push((done, delivery));
        }
        for (done, delivery) in woken {
            // A member whose task is gone has nothing left to do.
            let _ = done.send(delivery);
        }
        count
    }
}

/// Writes as much of `encoded` as the socket takes without waiting.
pub(super) fn send_now(stream: &TcpStream, encoded: &Arc<Encoded>) -> Delivery {
    let mut offset = 0;
    while offset < encoded.len() {
        match stream.try_write_vectored(&encoded.slices_from(offset)) {
            Ok(0) => return Delivery::Failed,
            Ok(n) => offset += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Delivery::Rest { encoded: Arc::clone(encoded), offset }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Delivery::Failed,
        }
    }
    Delivery::Sent(Arc::clone(encoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_head_then_body_from_any_offset() {
        let encoded =
            Encoded { head: b"HEAD".to_vec(), body: Bytes::from_static(b"body"), status: 200, route: String::new() };
        let joined = |offset| {
            let [a, b] = encoded.slices_from(offset);
            [&a[..], &b[..]].concat()
        };
        assert_eq!(joined(0), b"HEADbody");
        assert_eq!(joined(3), b"Dbody");
        assert_eq!(joined(4), b"body");
        assert_eq!(joined(6), b"dy");
        assert_eq!(joined(8), b"");
    }

    #[tokio::test]
    async fn members_join_only_while_the_leader_waits() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, _server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let stream = Arc::new(client.expect("connect"));
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = || Arc::clone(&permits).try_acquire_owned().ok();
        let fanout = FanOut::default();
        let Role::Lead(wake) = fanout.enter(b"k".to_vec(), &stream, permit) else { panic!("the first leads") };
        assert!(matches!(fanout.enter(b"k".to_vec(), &stream, permit), Role::Alone), "the leader is reading");
        wake.waiting();
        let Role::Joined { answer, .. } = fanout.enter(b"k".to_vec(), &stream, permit) else { panic!("joins") };
        assert!(matches!(fanout.enter(b"k".to_vec(), &stream, permit), Role::Alone), "no permit left");
        assert!(matches!(fanout.enter(b"other".to_vec(), &stream, permit), Role::Lead(_)));
        let encoded = Arc::new(Encoded {
            head: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            body: Bytes::new(),
            status: 200,
            route: String::new(),
        });
        assert_eq!(fanout.finish(b"k", &wake, Some(&encoded)), 1);
        assert!(matches!(answer.await, Ok(Delivery::Sent(_))));
        assert_eq!(permits.available_permits(), 1, "the member's permit is back");
        let Role::Lead(again) = fanout.enter(b"k".to_vec(), &stream, permit) else { panic!("a new group") };
        // A member whose client left is taken out, and its permit returned.
        again.waiting();
        let Role::Joined { id, .. } = fanout.enter(b"k".to_vec(), &stream, permit) else { panic!("joins") };
        assert_eq!(permits.available_permits(), 0);
        assert!(!fanout.close_if_alone(b"k", &again), "a member is waiting");
        fanout.leave(b"k", id);
        assert_eq!(permits.available_permits(), 1);
        assert!(fanout.close_if_alone(b"k", &again), "alone now");
        assert!(!fanout.has_waiting(b"k"));
    }
}
