//! Typed row access shared by `apply` (inside its write transaction) and `ReadView`, so the
//! two read catalog rows the same way.

use heed::{RoTxn, WithoutTls};

use super::{codec, prefix_rows, RawDb, SmTables, StoreError};
use crate::model::{HealthCheck, KvEntry, Node, Service, Session};

type Txn<'t> = RoTxn<'t, WithoutTls>;

/// LMDB's key size limit. A longer name can never have been stored, so lookups of one find
/// nothing instead of failing the request.
pub(super) use crate::backup::KEY_BYTES_MAX;

pub(super) fn storable(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= KEY_BYTES_MAX
}

pub(super) fn node(t: &SmTables, txn: &Txn<'_>, name: &str) -> Result<Option<Node>, StoreError> {
    json_row(t.nodes, "sm_nodes", txn, name.as_bytes())
}

pub(super) fn session(t: &SmTables, txn: &Txn<'_>, id: &str) -> Result<Option<Session>, StoreError> {
    json_row(t.sessions, "sm_sessions", txn, id.as_bytes())
}

pub(super) fn prepared_query(
    t: &SmTables,
    txn: &Txn<'_>,
    id: &str,
) -> Result<Option<crate::model::PreparedQuery>, StoreError> {
    json_row(t.prepared_queries, "sm_prepared_queries", txn, id.as_bytes())
}

pub(super) fn service(t: &SmTables, txn: &Txn<'_>, node: &str, id: &str) -> Result<Option<Service>, StoreError> {
    pair_row(t.services, "sm_services", txn, node, id)
}

pub(super) fn check(t: &SmTables, txn: &Txn<'_>, node: &str, id: &str) -> Result<Option<HealthCheck>, StoreError> {
    pair_row(t.checks, "sm_checks", txn, node, id)
}

/// The row of `db` keyed `node \0 id`, decoded.
fn pair_row<T: serde::de::DeserializeOwned>(
    db: RawDb,
    table: &'static str,
    txn: &Txn<'_>,
    node: &str,
    id: &str,
) -> Result<Option<T>, StoreError> {
    json_row(db, table, txn, &codec::pair_key(node, id))
}

/// The JSON row of `db` at `key`, decoded; `None` also for a key no row can have.
pub(super) fn json_row<T: serde::de::DeserializeOwned>(
    db: RawDb,
    table: &'static str,
    txn: &Txn<'_>,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    if !storable(key) {
        return Ok(None);
    }
    match db.get(txn, key)? {
        Some(bytes) => Ok(Some(codec::decode_json(table, key, bytes)?)),
        None => Ok(None),
    }
}

pub(super) fn node_services(t: &SmTables, txn: &Txn<'_>, node: &str) -> Result<Vec<Service>, StoreError> {
    node_rows(t.services, "sm_services", txn, node)
}

pub(super) fn node_checks(t: &SmTables, txn: &Txn<'_>, node: &str) -> Result<Vec<HealthCheck>, StoreError> {
    node_rows(t.checks, "sm_checks", txn, node)
}

/// The checks on `node` that belong to the node itself or to one of `service_ids`. Only
/// those rows are decoded in full: a node may hold thousands of checks, and one write
/// touches a few.
pub(super) fn node_checks_of(
    t: &SmTables,
    txn: &Txn<'_>,
    node: &str,
    service_ids: &std::collections::HashSet<&str>,
) -> Result<Vec<HealthCheck>, StoreError> {
    #[derive(serde::Deserialize)]
    struct Owner<'a> {
        #[serde(rename = "ServiceID", default, borrow)]
        service_id: std::borrow::Cow<'a, str>,
    }
    let mut out = Vec::new();
    let prefix = codec::pair_prefix(node);
    if !storable(&prefix) {
        return Ok(out);
    }
    for row in t.checks.prefix_iter(txn, &prefix)? {
        let (key, bytes) = row?;
        let owner: Owner<'_> = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            table: "sm_checks",
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })?;
        if owner.service_id.is_empty() || service_ids.contains(owner.service_id.as_ref()) {
            out.push(codec::decode_json("sm_checks", key, bytes)?);
        }
    }
    Ok(out)
}

/// Every row of `db` keyed `node \0 ...`, decoded.
fn node_rows<T: serde::de::DeserializeOwned>(
    db: RawDb,
    table: &'static str,
    txn: &Txn<'_>,
    node: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let prefix = codec::pair_prefix(node);
    if !storable(&prefix) {
        return Ok(out);
    }
    for row in db.prefix_iter(txn, &prefix)? {
        let (key, bytes) = row?;
        out.push(codec::decode_json(table, key, bytes)?);
    }
    Ok(out)
}

pub(super) fn kv_get(t: &SmTables, txn: &Txn<'_>, key: &str) -> Result<Option<KvEntry>, StoreError> {
    if !storable(key.as_bytes()) {
        return Ok(None);
    }
    match t.kv.get(txn, key.as_bytes())? {
        Some(bytes) => Ok(Some(codec::decode_kv(key.as_bytes(), bytes)?)),
        None => Ok(None),
    }
}

pub(super) fn kv_list(t: &SmTables, txn: &Txn<'_>, prefix: &str) -> Result<Vec<KvEntry>, StoreError> {
    let mut out = Vec::new();
    for row in prefix_rows(t.kv, txn, prefix.as_bytes())? {
        let (key, bytes) = row?;
        out.push(codec::decode_kv(key, bytes)?);
    }
    Ok(out)
}
