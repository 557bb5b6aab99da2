//! Which address this agent tells other agents to reach it at, as Consul chooses it:
//! `advertise_addr`, else `bind_addr` unless it is a wildcard, else the host's one private
//! IPv4 address.
//!
//! With a wildcard bind and several candidate addresses the agent refuses to start, naming
//! them: a guessed address would make it unreachable from half the network, silently.

use std::net::{IpAddr, Ipv4Addr};

/// The address to advertise, or why none can be chosen.
pub fn advertise_ip(advertise: Option<IpAddr>, bind: IpAddr) -> Result<IpAddr, String> {
    if let Some(ip) = advertise {
        return Ok(ip);
    }
    if !bind.is_unspecified() {
        return Ok(bind);
    }
    choose(&host_ipv4_addresses())
}

/// Consul's rule over the host's IPv4 addresses: the one private (RFC 1918 or shared
/// 100.64/10) address; if there is none, the one other routable address; loopback only if
/// the host has nothing else (a single-host cluster).
pub fn choose(addresses: &[Ipv4Addr]) -> Result<IpAddr, String> {
    let routable: Vec<Ipv4Addr> = addresses
        .iter()
        .copied()
        .filter(|ip| !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
        .collect();
    let private: Vec<Ipv4Addr> = routable.iter().copied().filter(|ip| is_private(*ip)).collect();
    let candidates = if private.is_empty() { routable } else { private };
    match candidates.as_slice() {
        [] => {
            tracing::warn!("bind_addr is a wildcard and the host has no address but loopback; advertising 127.0.0.1");
            Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        [one] => Ok(IpAddr::V4(*one)),
        several => Err(format!(
            "bind_addr is a wildcard and the host has several addresses ({}): set bind_addr \
             (-bind) or advertise_addr (-advertise) to the one other agents reach this one at",
            several.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn is_private(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private() || (a == 100 && (64..128).contains(&b))
}

/// The IPv4 addresses of the host's interfaces that are up.
fn host_ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then free exactly once;
    // every pointer is checked for null before it is dereferenced, and `ifa_addr` is read as
    // `sockaddr_in` only when its family says AF_INET.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return found;
        }
        let mut cursor = head;
        while !cursor.is_null() {
            let entry = &*cursor;
            let up = entry.ifa_flags & libc::IFF_UP as u32 != 0;
            if up && !entry.ifa_addr.is_null() && i32::from((*entry.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                found.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cursor = entry.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn a_wildcard_bind_advertises_the_one_private_address() {
        let chosen = |list: &[&str]| choose(&list.iter().map(|s| ip(s)).collect::<Vec<_>>());
        assert_eq!(chosen(&["127.0.0.1", "10.1.2.3"]), Ok("10.1.2.3".parse().unwrap()));
        assert_eq!(chosen(&["127.0.0.1", "203.0.113.9", "192.168.1.5"]), Ok("192.168.1.5".parse().unwrap()));
        assert_eq!(chosen(&["127.0.0.1", "169.254.1.1", "100.72.0.4"]), Ok("100.72.0.4".parse().unwrap()));
        // No private address: the one routable one.
        assert_eq!(chosen(&["127.0.0.1", "192.0.2.2"]), Ok("192.0.2.2".parse().unwrap()));
        // Loopback only: a single-host cluster.
        assert_eq!(chosen(&["127.0.0.1"]), Ok("127.0.0.1".parse().unwrap()));
        let err = chosen(&["10.0.0.1", "172.17.0.1"]).unwrap_err();
        assert!(err.contains("10.0.0.1, 172.17.0.1") && err.contains("-advertise"), "{err}");
        assert_eq!(advertise_ip(None, "10.9.9.9".parse().unwrap()), Ok("10.9.9.9".parse().unwrap()));
        assert_eq!(
            advertise_ip(Some("10.1.1.1".parse().unwrap()), "0.0.0.0".parse().unwrap()),
            Ok("10.1.1.1".parse().unwrap())
        );
        assert!(!host_ipv4_addresses().is_empty(), "every host has at least loopback");
    }
}
