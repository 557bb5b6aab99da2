//! Agent-local service and check definitions: what `PUT /v1/agent/service/register`,
//! `PUT /v1/agent/check/register` and the `service`/`services` blocks of config files
//! describe, decoded and validated once into typed specs.
//!
//! Field names match Consul's leniently: any case, with or without underscores, so the
//! API's `DeregisterCriticalServiceAfter` and the config's `deregister_critical_service_after`
//! are one field. Free-form maps (`Meta`, `Header`) keep their keys as given.
//!
//! These specs are also the agent's persisted local state (`checks::persist`): fields are
//! only ever added, with defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::acl::Secret;
pub use super::catalog::ServiceAddress;
use super::{parse_duration, CheckStatus, Weights};

/// Consul's minimum check interval; shorter ones are raised to it, as Consul does.
pub const INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Default timeout of HTTP and TCP checks (Consul's).
pub const PROBE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default timeout of script checks (Consul's).
pub const SCRIPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// The server's own catalog entries (its self-registration); local definitions cannot take
/// these IDs, or anti-entropy and the self-registration would overwrite each other.
pub const RESERVED_SERVICE_ID: &str = "consul";
pub const RESERVED_CHECK_ID: &str = "serfHealth";
/// Longest ID or name accepted; longer ones could not be catalog keys.
const NAME_BYTES_MAX: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub weights: Weights,
    #[serde(default)]
    pub enable_tag_override: bool,
    /// `TaggedAddresses` as registered (agent answers add Consul's `lan_ipv4`/`wan_ipv4` or
    /// `_ipv6` defaults from an IP `address`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    /// The ACL token the agent keeps it in the catalog with (`Token` of the definition, else
    /// the token that registered it through the API); never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

impl ServiceSpec {
    /// The tagged addresses an agent answers with: the registered ones, plus — when
    /// `address` is an IP — `lan_ipv4` and `wan_ipv4` (or `lan_ipv6`, `wan_ipv6`) with the
    /// service's address and port, unless registered, as Consul's agent adds them.
    pub fn tagged_addresses_with_defaults(&self) -> BTreeMap<String, ServiceAddress> {
        let mut all = self.tagged_addresses.clone();
        let family = match self.address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => "ipv4",
            Ok(std::net::IpAddr::V6(_)) => "ipv6",
            Err(_) => return all,
        };
        for scope in ["lan", "wan"] {
            all.entry(format!("{scope}_{family}"))
                .or_insert_with(|| ServiceAddress { address: self.address.clone(), port: self.port });
        }
        all
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub id: String,
    pub name: String,
    /// Empty for a node-level check.
    #[serde(default)]
    pub service_id: String,
    #[serde(default)]
    pub notes: String,
    pub kind: CheckKind,
    /// Time between runs of HTTP, TCP and script checks; zero for the others.
    #[serde(default)]
    pub interval: Duration,
    #[serde(default)]
    pub timeout: Duration,
    pub initial_status: CheckStatus,
    #[serde(default)]
    pub success_before_passing: u32,
    #[serde(default)]
    pub failures_before_warning: u32,
    #[serde(default)]
    pub failures_before_critical: u32,
    #[serde(default)]
    pub deregister_critical_after: Option<Duration>,
    /// As [`ServiceSpec::token`]; a service's checks have the service's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// Passing, warning or critical as the application says, critical when not told for `ttl`.
    Ttl {
        ttl: Duration,
    },
    Http {
        url: String,
        method: String,
        headers: BTreeMap<String, Vec<String>>,
        body: String,
        tls_skip_verify: bool,
    },
    Tcp {
        address: String,
    },
    /// A program run without a shell: exit 0 passing, 1 warning, anything else critical.
    Script {
        args: Vec<String>,
    },
    /// Set by the agent itself (maintenance mode); nothing runs.
    Maintenance,
}

impl CheckKind {
    /// Consul's `Type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Script { .. } => "script",
            CheckKind::Maintenance => "maintenance",
        }
    }
}

/// A service with the checks that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRegistration {
    pub service: ServiceSpec,
    pub checks: Vec<CheckSpec>,
}

/// How to treat fields a definition does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// API bodies: ignored, as Consul ignores them (clients send `Kind`, `Proxy`, ...).
    Lenient,
    /// Config files: an error naming the field, like any unknown config key.
    Strict,
}

/// Where scripts may come from: config files only, and only with `enable_local_script_checks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptPolicy {
    Allowed,
    Refused,
}

/// A definition that cannot be used; `field` is the dotted path (`Checks[1].Interval`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if field.is_empty() { String::new() } else { format!("field {field}: ") })]
pub struct DefinitionError {
    pub field: String,
    pub message: String,
}

fn error(field: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError { field: field.to_string(), message: message.into() }
}

/// Decodes a service definition (API body or config block) with its checks.
pub fn decode_service(
    value: &Value,
    strictness: Strictness,
    scripts: ScriptPolicy,
) -> Result<ServiceRegistration, DefinitionError> {
    let mut f = Fields::new(value, "")?;
    let name = f.string(&["name"])?.unwrap_or_default();
    if name.is_empty() {
        return Err(error(&f.path("Name"), "missing service name"));
    }
    check_name(&f.path("Name"), &name)?;
    let id = f.string(&["id"])?.filter(|id| !id.is_empty()).unwrap_or_else(|| name.clone());
    check_name(&f.path("ID"), &id)?;
    if id == RESERVED_SERVICE_ID {
        return Err(error(&f.path("ID"), "\"consul\" is the server's own service and cannot be registered locally"));
    }
    let default = Weights::default();
    let weights = match f.object(&["weights"])? {
        Some(mut w) => {
            let passing = w.int(&["passing"])?.unwrap_or(default.passing.into());
            let warning = w.int(&["warning"])?.unwrap_or(default.warning.into());
            w.finish(strictness, &[])?;
            if !(1..=65535).contains(&passing) || !(0..=65535).contains(&warning) {
                return Err(error(&f.path("Weights"), "Passing must be 1..65535 and Warning 0..65535"));
            }
            Weights { passing: passing as i32, warning: warning as i32 }
        }
        None => default,
    };
    let port = match f.int(&["port"])? {
        Some(p) if (0..=65535).contains(&p) => p as u16,
        Some(p) => return Err(error(&f.path("Port"), format!("must be 0..65535, got {p}"))),
        None => 0,
    };
    let mut tags = f.strings(&["tags"])?.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    tags.retain(|t| seen.insert(t.clone()));
    let service = ServiceSpec {
        id: id.clone(),
        name: name.clone(),
        tags,
        address: f.string(&["address"])?.unwrap_or_default(),
        port,
        meta: f.string_map(&["meta"])?.unwrap_or_default(),
        weights,
        enable_tag_override: f.bool(&["enabletagoverride"])?.unwrap_or(false),
        tagged_addresses: decode_tagged_addresses(&mut f, strictness)?,
        token: f.string(&["token"])?.filter(|t| !t.is_empty()).map(Secret),
    };
    let mut raw_checks = Vec::new();
    if let Some((path, check)) = f.entry(&["check"]) {
        raw_checks.push((path, check));
    }
    if let Some((path, checks)) = f.entry(&["checks"]) {
        let Value::Array(items) = checks else {
            return Err(error(&path, format!("must be a list of checks, got {}", describe(checks))));
        };
        for (i, item) in items.iter().enumerate() {
            raw_checks.push((format!("{path}[{i}]"), item));
        }
    }
    let several = raw_checks.len() > 1;
    let mut checks = Vec::with_capacity(raw_checks.len());
    for (n, (path, raw)) in raw_checks.into_iter().enumerate() {
        let default_id = if several { format!("service:{id}:{}", n + 1) } else { format!("service:{id}") };
        let mut check = decode_check_at(raw, &path, strictness, scripts, Some(&default_id))?;
        if check.name.is_empty() {
            check.name = format!("Service '{name}' check");
        }
        check.service_id = id.clone();
        check.token = check.token.or_else(|| service.token.clone());
        if checks.iter().any(|c: &CheckSpec| c.id == check.id) {
            return Err(error(&path, format!("duplicate check ID {:?}", check.id)));
        }
        checks.push(check);
    }
    f.finish(strictness, SERVICE_FIELDS_IGNORED)?;
    Ok(ServiceRegistration { service, checks })
}

/// Decodes a check registered on its own (`PUT /v1/agent/check/register`): `Name` is
/// required and `CheckID` defaults to it.
pub fn decode_check(
    value: &Value,
    strictness: Strictness,
    scripts: ScriptPolicy,
) -> Result<CheckSpec, DefinitionError> {
    let check = decode_check_at(value, "", strictness, scripts, None)?;
    if check.name.is_empty() {
        return Err(error("Name", "missing check name"));
    }
    Ok(check)
}

/// Service fields Consul has and cairn accepts without acting on them.
const SERVICE_FIELDS_IGNORED: &[&str] = &[
    "kind",
    "proxy",
    "connect",
    "namespace",
    "partition",
    "socketpath",
    "locality",
    "enabletagoverride",
    "checks",
    "check",
];
const CHECK_FIELDS_IGNORED: &[&str] =
    &["output", "tlsservername", "outputmaxsize", "disableredirects", "type", "namespace", "partition"];
/// Check kinds Consul has and cairn does not run: refused rather than silently never run.
const CHECK_KINDS_UNSUPPORTED: &[(&str, &str)] = &[
    ("grpc", "GRPC"),
    ("h2ping", "H2PING"),
    ("dockercontainerid", "DockerContainerID"),
    ("aliasservice", "AliasService"),
    ("aliasnode", "AliasNode"),
    ("osservice", "OSService"),
    ("udp", "UDP"),
];

fn decode_check_at(
    value: &Value,
    path: &str,
    strictness: Strictness,
    scripts: ScriptPolicy,
    default_id: Option<&str>,
) -> Result<CheckSpec, DefinitionError> {
    let mut f = Fields::new(value, path)?;
    for (key, field) in CHECK_KINDS_UNSUPPORTED {
        if f.value(&[key]).is_some_and(|v| !matches!(v, Value::String(s) if s.is_empty())) {
            return Err(error(&f.path(field), format!("{field} checks are not supported by cairn")));
        }
    }
    let name = f.string(&["name"])?.unwrap_or_default();
    let id = f
        .string(&["checkid", "id"])?
        .filter(|id| !id.is_empty())
        .or_else(|| default_id.map(str::to_string))
        .unwrap_or_else(|| name.clone());
    check_name(&f.path("CheckID"), &id)?;
    check_name(&f.path("Name"), &name)?;
    if id == RESERVED_CHECK_ID || id.starts_with("_service_maintenance:") || id == "_node_maintenance" {
        return Err(error(&f.path("CheckID"), format!("{id:?} is reserved for the agent's own checks")));
    }
    let interval = f.duration(&["interval"])?;
    let timeout = f.duration(&["timeout"])?;
    let ttl = f.duration(&["ttl"])?;
    let http = f.string(&["http"])?.filter(|s| !s.is_empty());
    let tcp = f.string(&["tcp"])?.filter(|s| !s.is_empty());
    let args = f.strings(&["args", "scriptargs"])?.filter(|a| !a.is_empty());
    let method = f.string(&["method"])?.filter(|m| !m.is_empty());
    let headers = f.header_map(&["header"])?.unwrap_or_default();
    let body = f.string(&["body"])?.unwrap_or_default();
    let tls_skip_verify = f.bool(&["tlsskipverify"])?.unwrap_or(false);
    let kinds = [ttl.is_some(), http.is_some(), tcp.is_some(), args.is_some()];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err(error(path, "set only one of TTL, HTTP, TCP and Args"));
    }
    let needs_interval = |kind: &str| -> Result<Duration, DefinitionError> {
        match interval {
            Some(i) if !i.is_zero() => Ok(i.max(INTERVAL_MIN)),
            _ => Err(error(&f.path("Interval"), format!("must be set for {kind} checks (e.g. \"10s\")"))),
        }
    };
    let (kind, interval, default_timeout) = if let Some(ttl) = ttl {
        if ttl.is_zero() {
            return Err(error(&f.path("TTL"), "must be greater than 0"));
        }
        (CheckKind::Ttl { ttl }, Duration::ZERO, Duration::ZERO)
    } else if let Some(url) = http {
        let parsed: http::Uri = url.parse().map_err(|e| error(&f.path("HTTP"), format!("invalid URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            return Err(error(&f.path("HTTP"), format!("must be an http:// or https:// URL, got {url:?}")));
        }
        let method = method.unwrap_or_else(|| "GET".to_string()).to_ascii_uppercase();
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            return Err(error(&f.path("Method"), format!("invalid HTTP method {method:?}")));
        }
        let kind = CheckKind::Http { url, method, headers, body, tls_skip_verify };
        (kind, needs_interval("HTTP")?, PROBE_TIMEOUT_DEFAULT)
    } else if let Some(address) = tcp {
        let port_ok =
            address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(error(&f.path("TCP"), format!("must be host:port, got {address:?}")));
        }
        (CheckKind::Tcp { address }, needs_interval("TCP")?, PROBE_TIMEOUT_DEFAULT)
    } else if let Some(args) = args {
        if scripts == ScriptPolicy::Refused {
            return Err(error(
                &f.path("Args"),
                "script checks are disabled: they are allowed in config files with \
                 \"enable_local_script_checks\": true, and through the API only with \
                 \"enable_script_checks\": true",
            ));
        }
        (CheckKind::Script { args }, needs_interval("script")?, SCRIPT_TIMEOUT_DEFAULT)
    } else {
        return Err(error(path, "one of TTL, HTTP, TCP or Args must be set"));
    };
    let initial_status = match f.string(&["status"])?.filter(|s| !s.is_empty()) {
        Some(s) => CheckStatus::parse(&s)
            .ok_or_else(|| error(&f.path("Status"), format!("must be passing, warning or critical, got {s:?}")))?,
        None => CheckStatus::Critical,
    };
    let failures_before_critical = f.uint(&["failuresbeforecritical"])?.unwrap_or(0);
    let spec = CheckSpec {
        id,
        name,
        service_id: f.string(&["serviceid"])?.unwrap_or_default(),
        notes: f.string(&["notes"])?.unwrap_or_default(),
        kind,
        interval,
        timeout: timeout.filter(|t| !t.is_zero()).unwrap_or(default_timeout),
        initial_status,
        success_before_passing: f.uint(&["successbeforepassing"])?.unwrap_or(0),
        // Consul: defaults to FailuresBeforeCritical.
        failures_before_warning: f.uint(&["failuresbeforewarning"])?.unwrap_or(failures_before_critical),
        failures_before_critical,
        deregister_critical_after: f.duration(&["deregistercriticalserviceafter"])?.filter(|d| !d.is_zero()),
        token: f.string(&["token"])?.filter(|t| !t.is_empty()).map(Secret),
    };
    f.finish(strictness, CHECK_FIELDS_IGNORED)?;
    Ok(spec)
}

fn check_name(field: &str, value: &str) -> Result<(), DefinitionError> {
    if value.contains('\0') {
        return Err(error(field, "must not contain NUL characters"));
    }
    if value.len() > NAME_BYTES_MAX {
        return Err(error(field, format!("is longer than {NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Lowercase without `_` and `-`: the form field names are matched in.
fn normalize(key: &str) -> String {
    key.chars().filter(|c| *c != '_' && *c != '-').map(|c| c.to_ascii_lowercase()).collect()
}

/// `TaggedAddresses`: `{"name": {"Address": "...", "Port": N}}`.
fn decode_tagged_addresses(
    f: &mut Fields<'_>,
    strictness: Strictness,
) -> Result<BTreeMap<String, ServiceAddress>, DefinitionError> {
    let Some(all) = f.object(&["taggedaddresses"])? else { return Ok(BTreeMap::new()) };
    let mut out = BTreeMap::new();
    for (name, value) in all.object {
        let mut one = Fields::new(value, &all.path(name))?;
        let address = one.string(&["address"])?.unwrap_or_default();
        let port = match one.int(&["port"])? {
            Some(p) if (0..=65535).contains(&p) => p as u16,
            Some(p) => return Err(error(&one.path("Port"), format!("must be 0..65535, got {p}"))),
            None => 0,
        };
        one.finish(strictness, &[])?;
        out.insert(name.clone(), ServiceAddress { address, port });
    }
    Ok(out)
}

/// One JSON object read field by field, matching names leniently; records what was read so
/// [`Fields::finish`] can find unknown fields.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: String,
    used: Vec<String>,
}

impl<'a> Fields<'a> {
    fn new(value: &'a Value, prefix: &str) -> Result<Self, DefinitionError> {
        match value {
            Value::Object(object) => Ok(Fields { object, prefix: prefix.to_string(), used: Vec::new() }),
            other => Err(error(prefix, format!("must be an object, got {}", describe(other)))),
        }
    }

    /// The dotted path of `field` under this object, for messages.
    fn path(&self, field: &str) -> String {
        if self.prefix.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.prefix)
        }
    }

    /// The first of `names` (normalized spellings) present and not null, with its path as
    /// the client spelled it.
    fn entry(&mut self, names: &[&str]) -> Option<(String, &'a Value)> {
        self.used.extend(names.iter().map(|n| n.to_string()));
        let object = self.object;
        let (key, value) = object.iter().find(|(k, v)| !v.is_null() && names.contains(&normalize(k).as_str()))?;
        Some((self.path(key), value))
    }

    fn value(&mut self, names: &[&str]) -> Option<&'a Value> {
        self.entry(names).map(|(_, value)| value)
    }

    fn typed<T>(
        &mut self,
        names: &[&str],
        expected: &str,
        get: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, DefinitionError> {
        let Some((path, value)) = self.entry(names) else { return Ok(None) };
        get(value).map(Some).ok_or_else(|| error(&path, format!("must be {expected}, got {}", describe(value))))
    }

    fn string(&mut self, names: &[&str]) -> Result<Option<String>, DefinitionError> {
        self.typed(names, "a string", |v| v.as_str().map(str::to_string))
    }

    fn bool(&mut self, names: &[&str]) -> Result<Option<bool>, DefinitionError> {
        self.typed(names, "a boolean", Value::as_bool)
    }

    fn int(&mut self, names: &[&str]) -> Result<Option<i64>, DefinitionError> {
        self.typed(names, "an integer", Value::as_i64)
    }

    fn uint(&mut self, names: &[&str]) -> Result<Option<u32>, DefinitionError> {
        self.typed(names, "a non-negative integer", |v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
    }

    fn strings(&mut self, names: &[&str]) -> Result<Option<Vec<String>>, DefinitionError> {
        self.typed(names, "a list of strings", |v| {
            v.as_array()?.iter().map(|s| s.as_str().map(str::to_string)).collect()
        })
    }

    fn string_map(&mut self, names: &[&str]) -> Result<Option<BTreeMap<String, String>>, DefinitionError> {
        self.typed(names, "an object of strings", |v| {
            v.as_object()?.iter().map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
        })
    }

    /// `{"Name": ["value", ...]}`; a single string is taken as a one-value list.
    fn header_map(&mut self, names: &[&str]) -> Result<Option<BTreeMap<String, Vec<String>>>, DefinitionError> {
        self.typed(names, "an object of header name to a list of values", |v| {
            v.as_object()?
                .iter()
                .map(|(k, v)| {
                    let values = match v {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(items) => {
                            items.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()?
                        }
                        _ => return None,
                    };
                    Some((k.clone(), values))
                })
                .collect()
        })
    }

    /// A Go duration string (`"10s"`), or a number of nanoseconds as Go clients may send.
    fn duration(&mut self, names: &[&str]) -> Result<Option<Duration>, DefinitionError> {
        let Some((path, value)) = self.entry(names) else { return Ok(None) };
        match value {
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => {
                parse_duration(s).map(Some).map_err(|reason| error(&path, format!("invalid duration {s:?}: {reason}")))
            }
            Value::Number(n) => n
                .as_u64()
                .map(|nanos| Some(Duration::from_nanos(nanos)))
                .ok_or_else(|| error(&path, format!("must be a duration such as \"10s\", got {n}"))),
            other => Err(error(&path, format!("must be a duration such as \"10s\", got {}", describe(other)))),
        }
    }

    fn object(&mut self, names: &[&str]) -> Result<Option<Fields<'a>>, DefinitionError> {
        let Some((path, value)) = self.entry(names) else { return Ok(None) };
        Fields::new(value, &path).map(Some)
    }

    /// In strict mode, fails on the first field neither read nor listed in `ignored`.
    fn finish(self, strictness: Strictness, ignored: &[&str]) -> Result<(), DefinitionError> {
        if strictness == Strictness::Lenient {
            return Ok(());
        }
        for key in self.object.keys() {
            let n = normalize(key);
            if !self.used.contains(&n) && !ignored.contains(&n.as_str()) {
                return Err(error(&self.path(key), "unknown field"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: Value) -> Result<ServiceRegistration, String> {
        decode_service(&value, Strictness::Lenient, ScriptPolicy::Refused).map_err(|e| e.to_string())
    }

    #[test]
    fn api_and_config_spellings_decode_alike() {
        let api = service(json!({
            "Name": "web", "Port": 80, "Tags": ["a", "a", "b"],
            "Check": {"HTTP": "http://127.0.0.1:1/h", "Interval": "5s", "DeregisterCriticalServiceAfter": "1s"},
            "Kind": "", "Proxy": null
        }))
        .expect("api form");
        let config = decode_service(
            &json!({"name": "web", "port": 80, "tags": ["a", "b"],
                    "check": {"http": "http://127.0.0.1:1/h", "interval": "5s", "deregister_critical_service_after": "1s"}}),
            Strictness::Strict,
            ScriptPolicy::Refused,
        )
        .expect("config form");
        assert_eq!(api, config);
        assert_eq!(api.service.tags, ["a", "b"]);
        let check = &api.checks[0];
        assert_eq!(check.id, "service:web");
        assert_eq!(check.name, "Service 'web' check");
        assert_eq!(check.service_id, "web");
        assert_eq!(check.initial_status, CheckStatus::Critical);
        assert_eq!(check.timeout, PROBE_TIMEOUT_DEFAULT);
        assert_eq!(check.deregister_critical_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn several_checks_get_numbered_ids_and_thresholds_default_as_consul() {
        let reg = service(json!({"Name": "db", "ID": "db1", "Checks": [
            {"TTL": "30s", "Status": "passing"},
            {"TCP": "localhost:5432", "Interval": "200ms", "FailuresBeforeCritical": 3},
        ]}))
        .expect("decodes");
        assert_eq!(reg.checks[0].id, "service:db1:1");
        assert_eq!(reg.checks[0].initial_status, CheckStatus::Passing);
        assert_eq!(reg.checks[1].id, "service:db1:2");
        assert_eq!(reg.checks[1].interval, INTERVAL_MIN, "raised to Consul's minimum");
        assert_eq!(reg.checks[1].failures_before_warning, 3);
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let cases = [
            (json!({"Port": 1}), "field Name: missing service name"),
            (json!({"Name": "w", "Port": 70000}), "field Port: must be 0..65535, got 70000"),
            (json!({"Name": "w", "Port": "80"}), "field Port: must be an integer, got a string"),
            (json!({"Name": "w", "Check": {"HTTP": "http://x/"}}), "field Check.Interval: must be set for HTTP checks"),
            (json!({"Name": "w", "Check": {"TTL": "abc"}}), "field Check.TTL: invalid duration \"abc\""),
            (json!({"Name": "w", "Checks": [{"TTL": "1s"}, {}]}), "field Checks[1]: one of TTL, HTTP, TCP or Args"),
            (json!({"Name": "w", "Check": {"TCP": "nohost", "Interval": "1s"}}), "field Check.TCP: must be host:port"),
            (
                json!({"Name": "w", "Check": {"HTTP": "ftp://x/", "Interval": "1s"}}),
                "field Check.HTTP: must be an http",
            ),
            (json!({"Name": "w", "Check": {"TTL": "1s", "Status": "ok"}}), "field Check.Status: must be passing"),
            (json!({"Name": "w", "Check": {"GRPC": "x:1", "Interval": "1s"}}), "GRPC checks are not supported"),
            (json!({"Name": "w", "Check": {"Args": ["/bin/true"], "Interval": "1s"}}), "script checks are disabled"),
            (json!({"Name": "w", "Weights": {"Passing": 0}}), "field Weights: Passing must be 1..65535"),
            (json!(["w"]), "must be an object, got a list"),
            (json!({"Name": "consul"}), "field ID: \"consul\" is the server's own service"),
            (
                json!({"Name": "w", "Check": {"CheckID": "serfHealth", "TTL": "1s"}}),
                "reserved for the agent's own checks",
            ),
        ];
        for (input, expected) in cases {
            let err = service(input.clone()).expect_err(&input.to_string());
            assert!(err.contains(expected), "{input}: {err:?} should contain {expected:?}");
        }
    }

    #[test]
    fn strict_mode_rejects_unknown_fields_with_their_path() {
        let err = decode_service(
            &json!({"name": "w", "check": {"ttl": "5s", "intervall": "1s"}}),
            Strictness::Strict,
            ScriptPolicy::Refused,
        )
        .expect_err("unknown field");
        assert_eq!(err.to_string(), "field check.intervall: unknown field");
    }

    #[test]
    fn standalone_checks_need_a_name_and_default_their_id_to_it() {
        let check = decode_check(&json!({"Name": "mem", "TTL": "10s"}), Strictness::Lenient, ScriptPolicy::Refused)
            .expect("decodes");
        assert_eq!((check.id.as_str(), check.kind.type_name()), ("mem", "ttl"));
        let err =
            decode_check(&json!({"TTL": "10s"}), Strictness::Lenient, ScriptPolicy::Refused).expect_err("no name");
        assert_eq!(err.to_string(), "field Name: missing check name");
        let script = decode_check(
            &json!({"Name": "s", "Args": ["/bin/true"], "Interval": "1s"}),
            Strictness::Strict,
            ScriptPolicy::Allowed,
        )
        .expect("allowed in config");
        assert_eq!(script.timeout, SCRIPT_TIMEOUT_DEFAULT);
    }
}
