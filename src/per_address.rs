//! Open connections counted per client address, for the listeners that cap them (HTTP, DNS
//! TCP, server RPC): a slot is taken at accept and given back when its guard drops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per address; addresses with none are not kept.
#[derive(Default, Clone)]
pub struct PerAddress(Arc<Mutex<HashMap<IpAddr, u32>>>);

/// One connection's share of its address's count.
pub struct AddressSlot {
    counts: PerAddress,
    ip: IpAddr,
}

impl PerAddress {
    /// A slot for one more connection from `ip`, unless it already has `max`.
    pub fn try_take(&self, ip: IpAddr, max: u32) -> Option<AddressSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot { counts: self.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_address_and_given_back_on_drop() {
        let counts = PerAddress::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = counts.try_take(a, 2).expect("first");
        let second = counts.try_take(a, 2).expect("second");
        assert!(counts.try_take(a, 2).is_none(), "a third from the same address");
        assert!(counts.try_take(b, 2).is_some(), "another address has its own count");
        drop(first);
        assert!(counts.try_take(a, 2).is_some(), "a dropped slot is given back");
        drop(second);
    }
}
