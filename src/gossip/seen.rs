//! A set that remembers the most recent `capacity` items it was given, forgetting the oldest
//! first: the replay nonces of the envelope and the broadcasts foca relays.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

pub struct RecentSet<T> {
    items: HashSet<T>,
    order: VecDeque<T>,
    capacity: usize,
}

impl<T: Hash + Eq + Clone> RecentSet<T> {
    pub fn new(capacity: usize) -> RecentSet<T> {
        RecentSet { items: HashSet::new(), order: VecDeque::new(), capacity }
    }

    /// Records `item`; false if it is remembered already.
    pub fn insert(&mut self, item: T) -> bool {
        if !self.items.insert(item.clone()) {
            return false;
        }
        self.order.push_back(item);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.items.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn remembers_the_most_recent_items_only() {
        let mut set = super::RecentSet::new(2);
        assert!(set.insert(1) && set.insert(2));
        assert!(!set.insert(1), "a repeat is refused");
        assert!(set.insert(3), "room is made by forgetting the oldest");
        assert!(set.insert(1), "1 was forgotten");
        assert!(!set.insert(3));
    }
}
