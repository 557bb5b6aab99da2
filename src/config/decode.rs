//! Reading one JSON object key by key (`Section`: unknown keys, did-you-mean) and the value
//! decoders, each giving what it expected and what it found.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{quote, ConfigError, LogLevel, RecursorStrategy, TlsVersion};
use crate::model::parse_duration;

pub(super) fn set_if_some<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

/// One JSON object of a config source, read key by key. Every key asked for is recorded as
/// known, which is what [`Section::finish`] checks the object's keys against.
pub(super) struct Section<'a> {
    pub(super) source: &'a str,
    /// Dotted path of this object ("" at the top level).
    pub(super) path: String,
    pub(super) object: &'a Map<String, Value>,
    pub(super) known: Vec<&'static str>,
}

impl<'a> Section<'a> {
    pub(super) fn new(source: &'a str, path: String, object: &'a Map<String, Value>) -> Self {
        Section { source, path, object, known: Vec::new() }
    }

    pub(super) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn get<T>(
        &mut self,
        key: &'static str,
        decode: impl FnOnce(&'a Value) -> Result<T, Mismatch>,
    ) -> Result<Option<T>, ConfigError> {
        self.known.push(key);
        let Some(value) = self.object.get(key) else {
            return Ok(None);
        };
        decode(value).map(Some).map_err(|m| ConfigError::WrongType {
            path: self.source.to_string(),
            key: self.key_path(key) + &m.at,
            expected: m.expected,
            found: m.found,
        })
    }

    pub(super) fn set<T>(
        &mut self,
        key: &'static str,
        target: &mut T,
        decode: impl FnOnce(&'a Value) -> Result<T, Mismatch>,
    ) -> Result<(), ConfigError> {
        set_if_some(target, self.get(key, decode)?);
        Ok(())
    }

    pub(super) fn section(&mut self, key: &'static str) -> Result<Option<Section<'a>>, ConfigError> {
        let object = self.get(key, |v| v.as_object().ok_or_else(|| Mismatch::new("an object", v)))?;
        Ok(object.map(|object| Section::new(self.source, self.key_path(key), object)))
    }

    /// Warns once per key Consul documents but cairn ignores; fails on the first other key
    /// that was not asked for.
    pub(super) fn finish(self, not_implemented: &str, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        let not_implemented = not_implemented.split_whitespace();
        for key in self.object.keys() {
            if self.known.contains(&key.as_str()) {
                continue;
            }
            if not_implemented.clone().any(|k| k == key) {
                warnings.push(format!(
                    "config {}: key {} is not implemented by cairn yet and is ignored",
                    self.source,
                    quote(&self.key_path(key))
                ));
                continue;
            }
            let candidates = self.known.iter().copied().chain(not_implemented);
            return Err(ConfigError::UnknownKey {
                path: self.source.to_string(),
                key: self.key_path(key),
                suggestion: closest(key, candidates).map(str::to_string),
            });
        }
        Ok(())
    }
}

/// The candidate nearest to a mistyped key, if near enough to be a plausible typo.
pub(super) fn closest<'c>(key: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let limit = 2.max(key.chars().count() / 3);
    candidates
        .map(|c| {
            let distance = if c.eq_ignore_ascii_case(key) { 0 } else { levenshtein(key, c) };
            (distance, c)
        })
        .filter(|&(distance, _)| distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, c)| c)
}

pub(super) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// What a value should have been and what it was; the `Section` adds file and key.
pub(super) struct Mismatch {
    pub(super) expected: String,
    pub(super) found: String,
    /// Appended to the key path: `[2]` for a list element, `.web` for a map entry.
    pub(super) at: String,
}

impl Mismatch {
    /// The value has the wrong JSON type: show its type and value.
    pub(super) fn new(expected: impl Into<String>, found: &Value) -> Self {
        Mismatch { expected: expected.into(), found: describe(found), at: String::new() }
    }

    /// The value is a string of the right type but not allowed: show just the string.
    pub(super) fn bad_string(expected: impl Into<String>, found: &str) -> Self {
        Mismatch { expected: expected.into(), found: quote(found), at: String::new() }
    }
}

pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("string {}", quote(s)),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

pub(super) fn decode_str<'v>(value: &'v Value, expected: &str) -> Result<&'v str, Mismatch> {
    value.as_str().ok_or_else(|| Mismatch::new(expected, value))
}

pub(super) fn decode_bool(value: &Value) -> Result<bool, Mismatch> {
    value.as_bool().ok_or_else(|| Mismatch::new("true or false", value))
}

pub(super) fn decode_uint<T: TryFrom<u64>>(value: &Value, min: u64, max: u64) -> Result<T, Mismatch> {
    let mismatch = || Mismatch::new(format!("an integer from {min} to {max}"), value);
    let n = value.as_u64().filter(|n| (min..=max).contains(n)).ok_or_else(mismatch)?;
    T::try_from(n).map_err(|_| mismatch())
}

pub(super) fn decode_u32(value: &Value) -> Result<u32, Mismatch> {
    decode_uint(value, 0, u32::MAX.into())
}

pub(super) fn decode_u64(value: &Value) -> Result<u64, Mismatch> {
    decode_uint(value, 0, u64::MAX)
}

pub(super) fn decode_port(value: &Value) -> Result<u16, Mismatch> {
    decode_uint(value, 0, u16::MAX.into()).map_err(|mut m| {
        // Consul disables a listener with -1; say plainly that cairn cannot.
        if value.as_i64().is_some_and(|n| n < 0) {
            m.expected += " (a negative port to disable a listener is not supported)";
        }
        m
    })
}

/// A port that Consul's `-1` turns off (`None`).
pub(super) fn decode_optional_port(value: &Value) -> Result<Option<u16>, Mismatch> {
    if value.as_i64() == Some(-1) {
        return Ok(None);
    }
    decode_uint(value, 0, u16::MAX.into()).map(Some).map_err(|mut m| {
        m.expected += " (or -1 to turn it off)";
        m
    })
}

pub(super) fn decode_path(value: &Value) -> Result<PathBuf, Mismatch> {
    match decode_str(value, "a path")? {
        "" => Err(Mismatch::bad_string("a non-empty path", "")),
        s => Ok(PathBuf::from(s)),
    }
}

pub(super) fn decode_node_name(value: &Value) -> Result<String, Mismatch> {
    match decode_str(value, "a node name")? {
        "" => Err(Mismatch::bad_string("a non-empty node name", "")),
        s => Ok(s.to_string()),
    }
}

pub(super) const DATACENTER_EXPECTED: &str = "a datacenter name of lowercase letters, digits, '-' and '_'";

pub(super) fn valid_datacenter(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(super) fn decode_datacenter(value: &Value) -> Result<String, Mismatch> {
    let s = decode_str(value, DATACENTER_EXPECTED)?;
    if valid_datacenter(s) {
        Ok(s.to_string())
    } else {
        Err(Mismatch::bad_string(DATACENTER_EXPECTED, s))
    }
}

pub(super) fn decode_node_id(value: &Value) -> Result<String, Mismatch> {
    const EXPECTED: &str = "a UUID (8-4-4-4-12 hex digits)";
    let s = decode_str(value, EXPECTED)?;
    let groups: Vec<&str> = s.split('-').collect();
    let shaped = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if shaped {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Mismatch::bad_string(EXPECTED, s))
    }
}

pub(super) fn decode_ip(value: &Value) -> Result<IpAddr, Mismatch> {
    const EXPECTED: &str = "an IP address";
    let s = decode_str(value, EXPECTED)?;
    s.parse().map_err(|_| {
        // Consul takes go-sockaddr templates here; cairn does not, which is worth saying.
        if s.contains("{{") {
            Mismatch::bad_string(format!("{EXPECTED} (templates are not supported)"), s)
        } else {
            Mismatch::bad_string(EXPECTED, s)
        }
    })
}

pub(super) fn decode_domain(value: &Value) -> Result<String, Mismatch> {
    const EXPECTED: &str = "a domain name such as \"consul\" or \"example.internal.\"";
    let s = decode_str(value, EXPECTED)?;
    let domain = s.to_ascii_lowercase();
    let name = domain.strip_suffix('.').unwrap_or(&domain);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(format!("{name}."))
    } else {
        Err(Mismatch::bad_string(EXPECTED, s))
    }
}

pub(super) fn decode_recursor(value: &Value) -> Result<SocketAddr, Mismatch> {
    const EXPECTED: &str = "an IP address or IP:port (\"[v6]:port\" for IPv6)";
    let s = decode_str(value, EXPECTED)?;
    let bare = s.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(s);
    s.parse::<SocketAddr>()
        .or_else(|_| bare.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| Mismatch::bad_string(EXPECTED, s))
}

pub(super) fn decode_cidr(value: &Value) -> Result<String, Mismatch> {
    const EXPECTED: &str = "a CIDR such as \"10.0.0.0/8\" or \"fd00::/8\"";
    let s = decode_str(value, EXPECTED)?;
    let valid = s.split_once('/').is_some_and(|(ip, prefix)| {
        let max = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => return false,
        };
        prefix.bytes().all(|b| b.is_ascii_digit()) && prefix.parse::<u8>().is_ok_and(|p| p <= max)
    });
    if valid {
        Ok(s.to_string())
    } else {
        Err(Mismatch::bad_string(EXPECTED, s))
    }
}

pub(super) const DURATION_EXPECTED: &str = "a duration string such as \"10s\", \"1h30m\" or \"250ms\"";

pub(super) fn decode_duration(value: &Value) -> Result<Duration, Mismatch> {
    let s = decode_str(value, DURATION_EXPECTED)?;
    parse_duration(s).map_err(|reason| Mismatch {
        expected: DURATION_EXPECTED.to_string(),
        found: format!("{} ({reason})", quote(s)),
        at: String::new(),
    })
}

pub(super) fn decode_service_ttl(value: &Value) -> Result<Vec<(String, Duration)>, Mismatch> {
    const EXPECTED: &str = "an object of service name (or prefix ending in '*') to duration";
    let object = value.as_object().ok_or_else(|| Mismatch::new(EXPECTED, value))?;
    object
        .iter()
        .map(|(name, ttl)| {
            let at = |mut m: Mismatch| {
                m.at = format!(".{name}");
                m
            };
            let stem = name.strip_suffix('*').unwrap_or(name);
            if stem.contains('*') || name.is_empty() {
                return Err(at(Mismatch::bad_string("a service name, optionally ending in '*'", name)));
            }
            Ok((name.clone(), decode_duration(ttl).map_err(at)?))
        })
        .collect()
}

pub(super) fn decode_strategy(value: &Value) -> Result<RecursorStrategy, Mismatch> {
    const EXPECTED: &str = "\"sequential\" or \"random\"";
    match decode_str(value, EXPECTED)? {
        "sequential" => Ok(RecursorStrategy::Sequential),
        "random" => Ok(RecursorStrategy::Random),
        other => Err(Mismatch::bad_string(EXPECTED, other)),
    }
}

pub(super) const LOG_LEVEL_EXPECTED: &str = "one of trace, debug, info, warn, error";

pub(super) fn decode_log_level(value: &Value) -> Result<LogLevel, Mismatch> {
    let s = decode_str(value, LOG_LEVEL_EXPECTED)?;
    LogLevel::parse(s).ok_or_else(|| Mismatch::bad_string(LOG_LEVEL_EXPECTED, s))
}

/// A `-join`/`retry_join` address: `host`, `host:port`, an IP or `[v6]:port`.
pub(super) fn decode_join_addr(value: &Value) -> Result<String, Mismatch> {
    let s = decode_str(value, "an address (host or host:port)")?.trim();
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(Mismatch::new("an address (host or host:port)", value));
    }
    Ok(s.to_string())
}

pub(super) fn decode_encrypt_key(value: &Value) -> Result<String, Mismatch> {
    let s = decode_str(value, "a base64 key of 32 bytes (cairn keygen)")?;
    crate::gossip::GossipKey::from_base64(s)
        .map(|_| s.trim().to_string())
        .map_err(|_| Mismatch::new("a base64 key of 32 bytes (cairn keygen)", value))
}

pub(super) fn decode_positive_duration(value: &Value) -> Result<Duration, Mismatch> {
    decode_duration(value)
        .and_then(|d| if d.is_zero() { Err(Mismatch::new("a duration above 0", value)) } else { Ok(d) })
}

pub(super) fn decode_list<T>(
    value: &Value,
    decode_item: impl Fn(&Value) -> Result<T, Mismatch>,
) -> Result<Vec<T>, Mismatch> {
    let items = value.as_array().ok_or_else(|| Mismatch::new("a list", value))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            decode_item(item).map_err(|mut m| {
                m.at = format!("[{i}]");
                m
            })
        })
        .collect()
}

/// Consul's `tls_min_version` values; rustls speaks only TLS 1.2 and 1.3.
pub(super) fn decode_tls_version(value: &Value) -> Result<TlsVersion, Mismatch> {
    const EXPECTED: &str = "TLSv1_2 or TLSv1_3 (older versions are not supported)";
    match decode_str(value, EXPECTED)? {
        "TLSv1_2" | "tls12" => Ok(TlsVersion::Tls12),
        "TLSv1_3" | "tls13" => Ok(TlsVersion::Tls13),
        other => Err(Mismatch::bad_string(EXPECTED, other)),
    }
}

/// An ACL token's secret: 1 to 256 printable characters.
pub(super) fn decode_token(value: &Value) -> Result<String, Mismatch> {
    match value.as_str() {
        Some(t) if !t.is_empty() && t.len() <= 256 && !t.chars().any(char::is_control) => Ok(t.to_string()),
        _ => Err(Mismatch::new("a token (1 to 256 printable characters)", value)),
    }
}
