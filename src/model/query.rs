//! Prepared queries (`/v1/query`): a stored service lookup with its filters and its
//! failover to other datacenters, run by ID or name over HTTP and DNS (`name.query.consul`).
//! Stored as JSON in Consul's field names, so the stored form is the API's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One prepared query. `ID` is its key; `Name` (optional) is unique among queries, case
/// aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct PreparedQuery {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    /// A session the query lives as long as (accepted and stored; cairn does not end the
    /// query with it).
    pub session: String,
    pub token: String,
    pub service: QueryService,
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What a query looks up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryService {
    /// The service name (required).
    pub service: String,
    pub failover: QueryFailover,
    /// Only instances whose checks all pass (else passing and warning).
    pub only_passing: bool,
    /// Accepted and stored; cairn keeps no coordinates, so results are shuffled instead.
    pub near: String,
    /// Every tag must be on the instance; `!tag` must not be (case-insensitive).
    pub tags: Vec<String>,
    pub node_meta: BTreeMap<String, String>,
    pub service_meta: BTreeMap<String, String>,
    /// Checks that do not count towards an instance's health.
    #[serde(rename = "IgnoreCheckIDs")]
    pub ignore_check_ids: Vec<String>,
}

/// Where a query looks when its own datacenter has no healthy instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryFailover {
    /// The N nearest other datacenters (by round trip), first.
    pub nearest_n: u32,
    /// Then these, in order (those already tried are skipped).
    pub datacenters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryDns {
    /// The TTL of DNS answers (`"10s"`); empty: the service's TTL.
    #[serde(rename = "TTL")]
    pub ttl: String,
}

/// Every field name of a definition, as Consul spells them.
const FIELD_NAMES: &[&str] = &[
    "ID",
    "Name",
    "Session",
    "Token",
    "Service",
    "Failover",
    "NearestN",
    "Datacenters",
    "OnlyPassing",
    "Near",
    "Tags",
    "NodeMeta",
    "ServiceMeta",
    "IgnoreCheckIDs",
    "DNS",
    "TTL",
    "CreateIndex",
    "ModifyIndex",
];
/// Fields whose values are the user's maps: their keys are left as they are.
const MAP_FIELDS: &[&str] = &["NodeMeta", "ServiceMeta"];

impl PreparedQuery {
    /// A definition from a request body, read as Consul (Go) reads JSON: field names in any
    /// case (py-consul sends `service`, `onlypassing`, `nearestn`), `null` as absent, fields
    /// cairn does not know ignored (`Template` among them: templates are not supported).
    pub fn from_request(mut value: serde_json::Value) -> Result<PreparedQuery, serde_json::Error> {
        canonicalize(&mut value);
        serde_json::from_value(value)
    }

    /// Why the definition cannot be stored, if it cannot (Consul's checks and words).
    pub fn invalid(&self) -> Option<String> {
        if self.service.service.is_empty() {
            return Some("Must provide a Service name to query".into());
        }
        if uuid::Uuid::parse_str(&self.name).is_ok() {
            return Some("Query name cannot be a UUID".into());
        }
        if self.name.len() > 256 || self.service.service.len() > 256 {
            return Some("Query and service names are at most 256 bytes".into());
        }
        if !self.dns.ttl.is_empty() && super::parse_duration(&self.dns.ttl).is_err() {
            return Some(format!("Bad DNS TTL '{}'", self.dns.ttl));
        }
        None
    }
}

/// Renames keys to [`FIELD_NAMES`]' spelling (case aside) and drops `null`s, recursively,
/// except inside [`MAP_FIELDS`].
fn canonicalize(value: &mut serde_json::Value) {
    let serde_json::Value::Object(object) = value else { return };
    let entries = std::mem::take(object);
    for (key, mut value) in entries {
        if value.is_null() {
            continue;
        }
        let key = FIELD_NAMES.iter().find(|name| name.eq_ignore_ascii_case(&key)).map_or(key, |name| name.to_string());
        if !MAP_FIELDS.contains(&key.as_str()) {
            canonicalize(&mut value);
        }
        object.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_is_consuls_and_pinned() {
        let query = PreparedQuery {
            id: "8f246b77-f3e1-ff88-5b48-8ec93abf3e05".into(),
            name: "redis".into(),
            service: QueryService {
                service: "redis".into(),
                failover: QueryFailover { nearest_n: 1, datacenters: vec!["dc2".into()] },
                only_passing: true,
                tags: vec!["primary".into(), "!canary".into()],
                ..Default::default()
            },
            dns: QueryDns { ttl: "10s".into() },
            create_index: 5,
            modify_index: 6,
            ..Default::default()
        };
        let json = serde_json::to_string(&query).expect("encode");
        assert_eq!(
            json,
            r#"{"ID":"8f246b77-f3e1-ff88-5b48-8ec93abf3e05","Name":"redis","Session":"","Token":"","Service":{"Service":"redis","Failover":{"NearestN":1,"Datacenters":["dc2"]},"OnlyPassing":true,"Near":"","Tags":["primary","!canary"],"NodeMeta":{},"ServiceMeta":{},"IgnoreCheckIDs":[]},"DNS":{"TTL":"10s"},"CreateIndex":5,"ModifyIndex":6}"#
        );
        assert_eq!(serde_json::from_str::<PreparedQuery>(&json).expect("decode"), query);
        assert_eq!(query.invalid(), None);
        let unnamed = PreparedQuery { service: QueryService::default(), ..query.clone() };
        assert_eq!(unnamed.invalid().as_deref(), Some("Must provide a Service name to query"));
        let uuid_name = PreparedQuery { name: query.id.clone(), ..query.clone() };
        assert!(uuid_name.invalid().is_some());
        let bad_ttl = PreparedQuery { dns: QueryDns { ttl: "soon".into() }, ..query };
        assert_eq!(bad_ttl.invalid().as_deref(), Some("Bad DNS TTL 'soon'"));
    }

    /// What py-consul sends: lowercase names, nulls, a template; meta keys kept as given.
    #[test]
    fn request_bodies_are_read_as_go_reads_them() {
        let body = serde_json::json!({
            "name": "q", "token": null, "template": {"type": "name_prefix_match"},
            "service": {"service": "redis", "onlypassing": true, "tags": ["a"],
                        "failover": {"nearestn": 2, "DATACENTERS": ["dc2"]},
                        "nodemeta": {"name": "x"}},
            "dns": {"ttl": "5s"}
        });
        let query = PreparedQuery::from_request(body).expect("decodes");
        assert_eq!(query.name, "q");
        assert_eq!(query.service.service, "redis");
        assert!(query.service.only_passing);
        assert_eq!(query.service.failover, QueryFailover { nearest_n: 2, datacenters: vec!["dc2".into()] });
        assert_eq!(query.service.node_meta, [("name".to_string(), "x".to_string())].into());
        assert_eq!(query.dns.ttl, "5s");
        assert!(PreparedQuery::from_request(serde_json::json!({"Service": {"Service": 5}})).is_err());
    }
}
