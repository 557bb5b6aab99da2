//! Consul DNS names → what they ask for. Pure: labels in, [`Lookup`] out.
//!
//! Forms (labels before the domain, case-insensitive; `[dc]` is one datacenter label, or
//! `<dc>.dc`):
//! `[tag.]name.service[.dc]`, `_name._tag.service[.dc]` (RFC 2782; `_tcp`/`_udp` mean any
//! tag), `_name._tag` (SRV shorthand), `node.node[.dc]`, `hexip.addr[.dc]`,
//! `query.query[.dc]`. The domain apex itself is [`Lookup::Apex`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a name inside the domain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The domain itself (SOA, NS).
    Apex,
    Service {
        name: String,
        tag: Option<String>,
    },
    Node {
        name: String,
    },
    Addr {
        ip: IpAddr,
    },
    /// A prepared query, by ID or name (lowercase): its execution answers (on a server's
    /// slow path), NXDOMAIN for an unknown one.
    PreparedQuery {
        name: String,
    },
    /// A name in a datacenter other than ours (lowercase): a server of that datacenter
    /// answers it, or NXDOMAIN when none is known.
    OtherDatacenter {
        datacenter: String,
    },
    /// Not a name cairn serves (NXDOMAIN).
    Unknown,
}

const KINDS: [&str; 4] = ["service", "node", "addr", "query"];

/// Parses `labels` (lowercase, leftmost first, without the domain) for datacenter `dc`.
pub fn parse(labels: &[&str], dc: &str) -> Lookup {
    if labels.is_empty() {
        return Lookup::Apex;
    }
    let Some((kind_at, datacenter)) = find_kind(labels) else {
        return parse_rfc2782_shorthand(labels);
    };
    if let Some(other) = datacenter.filter(|d| !d.eq_ignore_ascii_case(dc)) {
        return Lookup::OtherDatacenter { datacenter: other.to_string() };
    }
    let prefix = &labels[..kind_at];
    if prefix.is_empty() {
        return Lookup::Unknown;
    }
    match labels[kind_at] {
        "service" => parse_service(prefix),
        "node" => Lookup::Node { name: prefix.join(".") },
        "addr" => match prefix {
            [hex] => decode_hex_ip(hex).map_or(Lookup::Unknown, |ip| Lookup::Addr { ip }),
            _ => Lookup::Unknown,
        },
        _ => Lookup::PreparedQuery { name: prefix.join(".") },
    }
}

/// Finds the kind label: last, before one datacenter label, or before `<dc>.dc`.
fn find_kind<'a>(labels: &[&'a str]) -> Option<(usize, Option<&'a str>)> {
    let n = labels.len();
    let is_kind = |i: usize| KINDS.contains(&labels[i]);
    if is_kind(n - 1) {
        return Some((n - 1, None));
    }
    if n >= 2 && is_kind(n - 2) {
        return Some((n - 2, Some(labels[n - 1])));
    }
    if n >= 3 && labels[n - 1] == "dc" && is_kind(n - 3) {
        return Some((n - 3, Some(labels[n - 2])));
    }
    None
}

fn parse_service(prefix: &[&str]) -> Lookup {
    // RFC 2782: `_name._tag`.
    if let [name, tag] = prefix {
        if let (Some(name), Some(tag)) = (name.strip_prefix('_'), tag.strip_prefix('_')) {
            return rfc2782(name, tag);
        }
    }
    let (name, tags) = prefix.split_last().expect("prefix is not empty");
    if name.is_empty() {
        return Lookup::Unknown;
    }
    let tag = (!tags.is_empty()).then(|| tags.join("."));
    Lookup::Service { name: name.to_string(), tag }
}

fn rfc2782(name: &str, tag: &str) -> Lookup {
    if name.is_empty() || tag.is_empty() {
        return Lookup::Unknown;
    }
    let tag = (tag != "tcp" && tag != "udp").then(|| tag.to_string());
    Lookup::Service { name: name.to_string(), tag }
}

/// `_name._tag.<domain>`: the SRV shorthand without `.service`.
fn parse_rfc2782_shorthand(labels: &[&str]) -> Lookup {
    match labels {
        [name, tag] => match (name.strip_prefix('_'), tag.strip_prefix('_')) {
            (Some(name), Some(tag)) => rfc2782(name, tag),
            _ => Lookup::Unknown,
        },
        _ => Lookup::Unknown,
    }
}

/// Decodes the `.addr` label: 8 hex digits for IPv4, 32 for IPv6.
pub fn decode_hex_ip(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16).ok().map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// The `.addr` label for `ip` (inverse of [`decode_hex_ip`]).
pub fn encode_hex_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Lookup) {
        let labels: Vec<&str> = if name.is_empty() { vec![] } else { name.split('.').collect() };
        assert_eq!(parse(&labels, "dc1"), expected, "{name}");
    }

    fn service(name: &str, tag: Option<&str>) -> Lookup {
        Lookup::Service { name: name.into(), tag: tag.map(str::to_string) }
    }

    #[test]
    fn every_form_parses() {
        check("", Lookup::Apex);
        check("redis.service", service("redis", None));
        check("master.redis.service", service("redis", Some("master")));
        check("v1.blue.redis.service", service("redis", Some("v1.blue")));
        check("redis.service.dc1", service("redis", None));
        check("master.redis.service.dc1.dc", service("redis", Some("master")));
        let dc2 = || Lookup::OtherDatacenter { datacenter: "dc2".into() };
        check("redis.service.dc2", dc2());
        check("redis.service.dc2.dc", dc2());
        check("web1.node.dc2", dc2());
        check("_redis._tcp.service", service("redis", None));
        check("_redis._udp.service.dc1", service("redis", None));
        check("_redis._master.service", service("redis", Some("master")));
        check("_redis._tcp", service("redis", None));
        check("web1.node", Lookup::Node { name: "web1".into() });
        check("web1.node.dc1", Lookup::Node { name: "web1".into() });
        check("7f000001.addr.dc1", Lookup::Addr { ip: "127.0.0.1".parse().unwrap() });
        check("20010db8000000000000000000000001.addr.dc1", Lookup::Addr { ip: "2001:db8::1".parse().unwrap() });
        check("7f0001.addr.dc1", Lookup::Unknown);
        check("zz000001.addr", Lookup::Unknown);
        check("nightly.query", Lookup::PreparedQuery { name: "nightly".into() });
        check("service", Lookup::Unknown);
        check("something.else", Lookup::Unknown);
        check("node.service", service("node", None));
    }

    #[test]
    fn hex_ip_round_trips() {
        for ip in ["10.1.2.3", "::1", "fe80::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(decode_hex_ip(&encode_hex_ip(ip)), Some(ip));
        }
    }
}
