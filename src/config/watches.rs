//! The `watches` key: Consul's watch definitions, checked as Consul's agent checks them.

use serde_json::Value;

use super::decode::{
    decode_bool, decode_datacenter, decode_list, decode_positive_duration, decode_str, decode_token, describe,
    Mismatch, Section,
};
use super::{quote, ConfigError};
use crate::watch::{Handler, HttpHandler, WatchDefinition, WatchSpec, WatchType};

/// Keys of a watch Consul documents that cairn accepts and ignores.
pub(super) const WATCH_NOT_IMPLEMENTED: &str = "";

/// One `watches` entry, checked as Consul's agent checks it (`watch.ParseExempt` and the
/// handler rules): a known type with only its own parameters, and exactly one handler.
pub(super) fn decode_watch(
    source: &str,
    path: String,
    value: &Value,
    warnings: &mut Vec<String>,
) -> Result<WatchDefinition, ConfigError> {
    let object = value.as_object().ok_or_else(|| ConfigError::WrongType {
        path: source.to_string(),
        key: path.clone(),
        expected: "a watch definition (an object)".to_string(),
        found: describe(value),
    })?;
    let invalid = |what: String| ConfigError::Invalid { what: format!("config {source}: {path}: {what}") };
    let mut s = Section::new(source, path.clone(), object);
    let kind = s.get("type", |v| {
        let name = decode_str(v, "a watch type")?;
        let types: Vec<&str> = WatchType::ALL.iter().map(|t| t.name()).collect();
        WatchType::parse(name).ok_or_else(|| Mismatch::bad_string(format!("one of {}", types.join(", ")), name))
    })?;
    let kind = kind.ok_or_else(|| invalid("\"type\" is required".to_string()))?;
    let mut spec = WatchSpec::new(kind);
    let mut given = Vec::new();
    let mut note = |key: &'static str, present: bool| {
        if present {
            given.push(key);
        }
    };
    spec.key = s.get("key", |v| decode_str(v, "a string").map(str::to_string))?;
    note("key", spec.key.is_some());
    spec.prefix = s.get("prefix", |v| decode_str(v, "a string").map(str::to_string))?;
    note("prefix", spec.prefix.is_some());
    spec.service = s.get("service", |v| decode_str(v, "a string").map(str::to_string))?;
    note("service", spec.service.is_some());
    let tags = s.get("tag", |v| match v {
        Value::String(tag) => Ok(vec![tag.clone()]),
        _ => decode_list(v, |t| decode_str(t, "a string").map(str::to_string)),
    })?;
    note("tag", tags.is_some());
    spec.tags = tags.unwrap_or_default();
    let passingonly = s.get("passingonly", decode_bool)?;
    note("passingonly", passingonly.is_some());
    spec.passingonly = passingonly.unwrap_or(false);
    spec.state = s.get("state", |v| {
        let state = decode_str(v, "a check state")?;
        match state {
            "any" | "passing" | "warning" | "critical" => Ok(state.to_string()),
            _ => Err(Mismatch::bad_string("one of any, passing, warning, critical", state)),
        }
    })?;
    note("state", spec.state.is_some());
    spec.filter = s.get("filter", |v| decode_str(v, "a filter expression").map(str::to_string))?;
    note("filter", spec.filter.is_some());
    if let Some(Err(e)) = spec.filter.as_deref().map(crate::filter::Filter::parse) {
        return Err(invalid(format!("\"filter\": {e}")));
    }
    if let Some(extra) = given.iter().find(|key| !kind.params().contains(key)) {
        return Err(invalid(format!("{} does not apply to a {} watch", quote(extra), quote(kind.name()))));
    }
    spec.stale = s.get("stale", decode_bool)?.unwrap_or(false);
    spec.datacenter = s.get("datacenter", decode_datacenter)?;
    spec.path().map_err(|param| invalid(format!("a {} watch needs {}", quote(kind.name()), quote(param))))?;

    let handler_type = s.get("handler_type", |v| {
        let name = decode_str(v, "a handler type")?;
        match name {
            "script" | "http" => Ok(name),
            _ => Err(Mismatch::bad_string("\"script\" or \"http\"", name)),
        }
    })?;
    let args = s.get("args", |v| {
        let args = decode_list(v, |a| decode_str(a, "a string").map(str::to_string))?;
        if args.is_empty() {
            return Err(Mismatch::new("a program and its arguments (a non-empty list)", v));
        }
        Ok(args)
    })?;
    let shell = s.get("handler", |v| decode_str(v, "a shell command").map(str::to_string))?;
    let http = match s.section("http_handler_config")? {
        Some(section) => Some(decode_http_handler(section, warnings)?),
        None => None,
    };
    let handler = match (handler_type, args, shell, http) {
        (Some("http"), None, None, Some(http)) => Handler::Http(http),
        (Some("http"), None, None, None) => {
            return Err(invalid("\"handler_type\": \"http\" needs \"http_handler_config\"".to_string()))
        }
        (_, _, _, Some(_)) if handler_type != Some("http") => {
            return Err(invalid("\"http_handler_config\" needs \"handler_type\": \"http\"".to_string()))
        }
        (Some("script") | None, Some(args), None, None) => Handler::Script { args, capture: true },
        (Some("script") | None, None, Some(command), None) => {
            warnings.push(format!(
                "config {source}: {path}: \"handler\" is deprecated; use \"args\" (a program and its arguments)"
            ));
            Handler::Script { args: vec!["/bin/sh".to_string(), "-c".to_string(), command], capture: true }
        }
        (_, None, None, None) => {
            return Err(invalid("needs a handler: \"args\" or \"http_handler_config\"".to_string()))
        }
        _ => {
            return Err(invalid(
                "only one handler allowed: \"args\", \"handler\" or \"http_handler_config\"".to_string(),
            ))
        }
    };
    let token = s.get("token", decode_token)?.map(crate::model::acl::Secret);
    s.finish(WATCH_NOT_IMPLEMENTED, warnings)?;
    Ok(WatchDefinition { spec, handler, token })
}

/// A watch's `http_handler_config`: `path` (the URL), `method` (POST), `header`
/// (name → list of values), `timeout` (10s), `tls_skip_verify`.
pub(super) fn decode_http_handler(mut s: Section<'_>, warnings: &mut Vec<String>) -> Result<HttpHandler, ConfigError> {
    let url = s.get("path", |v| {
        let url = decode_str(v, "an http:// or https:// URL")?;
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(url.to_string()),
            _ => Err(Mismatch::bad_string("an http:// or https:// URL", url)),
        }
    })?;
    let method = s.get("method", |v| {
        let method = decode_str(v, "an HTTP method")?;
        http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| Mismatch::bad_string("an HTTP method such as \"POST\"", method))
    })?;
    let headers = s.get("header", |v| {
        let object = v.as_object().ok_or_else(|| Mismatch::new("an object of header name to list of values", v))?;
        let mut headers = Vec::new();
        for (name, values) in object {
            let at = |mut m: Mismatch| {
                m.at = format!(".{name}{}", m.at);
                m
            };
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(at(Mismatch::bad_string("a list of values under a valid header name", name)));
            }
            let values = decode_list(values, |value| {
                let value = decode_str(value, "a string")?;
                http::HeaderValue::from_str(value)
                    .map(|_| value.to_string())
                    .map_err(|_| Mismatch::bad_string("a header value (visible ASCII)", value))
            })
            .map_err(at)?;
            headers.extend(values.into_iter().map(|value| (name.clone(), value)));
        }
        Ok(headers)
    })?;
    let timeout = s.get("timeout", decode_positive_duration)?;
    let tls_skip_verify = s.get("tls_skip_verify", decode_bool)?;
    let url = url.ok_or_else(|| ConfigError::Invalid {
        what: format!("config {}: {}: \"path\" (the URL to call) is required", s.source, s.path),
    })?;
    s.finish("", warnings)?;
    Ok(HttpHandler {
        url,
        method: method.unwrap_or(http::Method::POST),
        headers: headers.unwrap_or_default(),
        timeout: timeout.unwrap_or(crate::watch::HTTP_HANDLER_TIMEOUT),
        tls_skip_verify: tls_skip_verify.unwrap_or(false),
    })
}
