//! Read views over one LMDB read transaction: every answer an HTTP or DNS read needs, taken
//! from a single consistent point in time.

use std::collections::{BTreeMap, BTreeSet};

use heed::{RoTxn, WithoutTls};

use super::codec::{self, index_key};
use super::rows;
use super::watch::Table;
use super::{SmTables, StoreError};
use crate::model::acl::{AclPolicy, AclRole, AclToken};
use crate::model::{CheckStatus, HealthCheck, KvEntry, Node, Service, Session};

/// A service instance with its node and every check that bears on its health.
#[derive(Debug, Clone)]
pub struct ServiceHealth {
    pub node: Node,
    pub service: Service,
    /// The node's own checks, then the instance's checks.
    pub checks: Vec<HealthCheck>,
}

impl ServiceHealth {
    /// The worst status among the checks; an instance without checks is passing.
    pub fn status(&self) -> CheckStatus {
        self.checks.iter().map(|c| c.status).max().unwrap_or(CheckStatus::Passing)
    }
}

pub struct ReadView<'e> {
    txn: RoTxn<'e, WithoutTls>,
    t: SmTables,
}

impl<'e> ReadView<'e> {
    pub(super) fn new(txn: RoTxn<'e, WithoutTls>, t: SmTables) -> Self {
        ReadView { txn, t }
    }

    fn index(&self, key: &[u8]) -> Result<u64, StoreError> {
        if !rows::storable(key) {
            return Ok(0);
        }
        match self.t.indexes.get(&self.txn, key)? {
            Some(bytes) => codec::decode_u64("sm_indexes", key, bytes),
            None => Ok(0),
        }
    }

    /// The index of the last write to `table`, as `X-Consul-Index` of list endpoints.
    pub fn table_index(&self, table: Table) -> Result<u64, StoreError> {
        self.index(&index_key::table(table.name()))
    }

    /// The index of the last write to nodes, services or checks ([`Topic::Catalog`]'s).
    ///
    /// [`Topic::Catalog`]: super::Topic::Catalog
    pub fn catalog_index(&self) -> Result<u64, StoreError> {
        let mut index = 0;
        for table in [Table::Nodes, Table::Services, Table::Checks] {
            index = index.max(self.table_index(table)?);
        }
        Ok(index)
    }

    /// A name's own index, or — when the name has none (it never existed, or its last
    /// instance went and the row with it) — `table`'s, as Consul reports for missing names.
    /// Never backwards: the write that removed the row also moved `table`'s index.
    fn name_index(&self, key: &[u8], table: Table) -> Result<u64, StoreError> {
        match self.index(key)? {
            0 => self.table_index(table),
            index => Ok(index),
        }
    }

    /// The index of the last write that changed anything about service `name`'s instances.
    pub fn service_index(&self, name: &str) -> Result<u64, StoreError> {
        self.name_index(&index_key::service(name), Table::Services)
    }

    /// The index of the last write that changed node `name`, its services or its checks.
    pub fn node_index(&self, name: &str) -> Result<u64, StoreError> {
        self.name_index(&index_key::node(name), Table::Nodes)
    }

    /// Like [`ReadView::service_index`], for catalog reads: check changes do not move it.
    pub fn catalog_service_index(&self, name: &str) -> Result<u64, StoreError> {
        self.name_index(&index_key::catalog_service(name), Table::Services)
    }

    /// Like [`ReadView::node_index`], for catalog reads: check changes do not move it.
    pub fn catalog_node_index(&self, name: &str) -> Result<u64, StoreError> {
        self.name_index(&index_key::catalog_node(name), Table::Nodes)
    }

    /// Raw `sm_meta` value (Raft metadata kept by `cluster`).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.t.meta.get(&self.txn, key.as_bytes())?.map(<[u8]>::to_vec))
    }

    pub fn node(&self, name: &str) -> Result<Option<Node>, StoreError> {
        rows::node(&self.t, &self.txn, name)
    }

    pub fn acl_token(&self, accessor: &str) -> Result<Option<AclToken>, StoreError> {
        super::acl::token(&self.t, &self.txn, accessor)
    }

    /// The token whose secret is `secret` (found by its hash, compared in constant time).
    pub fn acl_token_by_secret(&self, secret: &str) -> Result<Option<AclToken>, StoreError> {
        super::acl::token_by_secret(&self.t, &self.txn, secret)
    }

    pub fn acl_tokens(&self) -> Result<Vec<AclToken>, StoreError> {
        super::acl::all(&self.t, &self.txn, super::acl::TOKEN_PREFIX)
    }

    pub fn acl_policy(&self, id: &str) -> Result<Option<AclPolicy>, StoreError> {
        super::acl::policy(&self.t, &self.txn, id)
    }

    pub fn acl_policies(&self) -> Result<Vec<AclPolicy>, StoreError> {
        super::acl::all(&self.t, &self.txn, super::acl::POLICY_PREFIX)
    }

    pub fn acl_role(&self, id: &str) -> Result<Option<AclRole>, StoreError> {
        super::acl::role(&self.t, &self.txn, id)
    }

    pub fn acl_roles(&self) -> Result<Vec<AclRole>, StoreError> {
        super::acl::all(&self.t, &self.txn, super::acl::ROLE_PREFIX)
    }

    /// The index of the ACL bootstrap, once done.
    pub fn acl_bootstrapped(&self) -> Result<Option<u64>, StoreError> {
        super::acl::bootstrapped(&self.t, &self.txn)
    }

    pub fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.decode_all(self.t.nodes, "sm_nodes")
    }

    /// Every row of a table of JSON rows, in key order.
    fn decode_all<T: serde::de::DeserializeOwned>(
        &self,
        table: super::RawDb,
        name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for row in table.iter(&self.txn)? {
            let (key, bytes) = row?;
            out.push(codec::decode_json(name, key, bytes)?);
        }
        Ok(out)
    }

    pub fn service(&self, node: &str, id: &str) -> Result<Option<Service>, StoreError> {
        rows::service(&self.t, &self.txn, node, id)
    }

    pub fn check(&self, node: &str, id: &str) -> Result<Option<HealthCheck>, StoreError> {
        rows::check(&self.t, &self.txn, node, id)
    }

    pub fn node_services(&self, node: &str) -> Result<Vec<Service>, StoreError> {
        rows::node_services(&self.t, &self.txn, node)
    }

    pub fn node_checks(&self, node: &str) -> Result<Vec<HealthCheck>, StoreError> {
        rows::node_checks(&self.t, &self.txn, node)
    }

    pub fn all_checks(&self) -> Result<Vec<HealthCheck>, StoreError> {
        self.decode_all(self.t.checks, "sm_checks")
    }

    /// Every service instance, ordered by node then ID.
    pub fn all_services(&self) -> Result<Vec<Service>, StoreError> {
        self.decode_all(self.t.services, "sm_services")
    }

    /// Every service name with the union of its instances' tags.
    pub fn service_names(&self) -> Result<BTreeMap<String, BTreeSet<String>>, StoreError> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in self.t.services.iter(&self.txn)? {
            let (key, bytes) = row?;
            let service: Service = codec::decode_json("sm_services", key, bytes)?;
            out.entry(service.service).or_default().extend(service.tags);
        }
        Ok(out)
    }

    /// Instances of service `name`, ordered by node then ID.
    pub fn service_instances(&self, name: &str) -> Result<Vec<Service>, StoreError> {
        let mut out = Vec::new();
        let prefix = codec::pair_prefix(name);
        if !rows::storable(&prefix) {
            return Ok(out);
        }
        for row in self.t.service_names.prefix_iter(&self.txn, &prefix)? {
            let (key, _) = row?;
            let parts = codec::split_key(key);
            let [_, node, id] = parts.as_slice() else {
                return Err(StoreError::Corrupt {
                    table: "sm_service_names",
                    key: String::from_utf8_lossy(key).into_owned(),
                    reason: "expected three parts".into(),
                });
            };
            let service_key = codec::pair_key(node, id);
            if let Some(bytes) = self.t.services.get(&self.txn, &service_key)? {
                out.push(codec::decode_json("sm_services", &service_key, bytes)?);
            }
        }
        Ok(out)
    }

    /// Instances of service `name` with their node and checks. Each node's checks are read
    /// once, however many instances it holds.
    pub fn service_health(&self, name: &str) -> Result<Vec<ServiceHealth>, StoreError> {
        let mut by_node: BTreeMap<String, Vec<Service>> = BTreeMap::new();
        for service in self.service_instances(name)? {
            by_node.entry(service.node.clone()).or_default().push(service);
        }
        let mut out = Vec::new();
        for (node, services) in by_node {
            let Some(node_row) = self.node(&node)? else { continue };
            out.extend(with_checks(node_row, services, self.node_checks(&node)?));
        }
        Ok(out)
    }

    /// Instances on `node` of the services named in `names` (all of them for `None`), with
    /// their health: one read of the node's services and checks, however many names.
    pub fn node_service_health(
        &self,
        node: &str,
        names: Option<&BTreeSet<&str>>,
    ) -> Result<Vec<ServiceHealth>, StoreError> {
        let Some(node_row) = self.node(node)? else { return Ok(Vec::new()) };
        let Some(names) = names else {
            return Ok(with_checks(node_row, self.node_services(node)?, self.node_checks(node)?));
        };
        let mut services = Vec::new();
        for name in names {
            // `service_names` keys are `name \0 node \0 id`: the instances of `name` on `node`.
            let prefix = codec::triple_key(name, node, "");
            if !rows::storable(&prefix) {
                continue;
            }
            for row in self.t.service_names.prefix_iter(&self.txn, &prefix)? {
                let (key, _) = row?;
                let id = codec::split_key(key).pop().unwrap_or_default();
                services.extend(rows::service(&self.t, &self.txn, node, id)?);
            }
        }
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let ids = services.iter().map(|s| s.id.as_str()).collect();
        let checks = rows::node_checks_of(&self.t, &self.txn, node, &ids)?;
        Ok(with_checks(node_row, services, checks))
    }

    /// Every node holding a service instance with this ID.
    pub fn nodes_with_service_id(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for row in self.t.services.iter(&self.txn)? {
            let (key, _) = row?;
            if let [node, service_id] = codec::split_key(key).as_slice() {
                if *service_id == id {
                    out.push(node.to_string());
                }
            }
        }
        Ok(out)
    }

    pub fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        rows::session(&self.t, &self.txn, id)
    }

    pub fn prepared_query(&self, id: &str) -> Result<Option<crate::model::PreparedQuery>, StoreError> {
        rows::prepared_query(&self.t, &self.txn, id)
    }

    /// Every prepared query, ordered by ID.
    pub fn prepared_queries(&self) -> Result<Vec<crate::model::PreparedQuery>, StoreError> {
        self.decode_all(self.t.prepared_queries, "sm_prepared_queries")
    }

    /// The prepared query with ID `id_or_name`, else the one of that name (case aside).
    pub fn resolve_prepared_query(&self, id_or_name: &str) -> Result<Option<crate::model::PreparedQuery>, StoreError> {
        if let Some(query) = self.prepared_query(id_or_name)? {
            return Ok(Some(query));
        }
        Ok(self.prepared_queries()?.into_iter().find(|q| !q.name.is_empty() && q.name.eq_ignore_ascii_case(id_or_name)))
    }

    /// Every session, ordered by ID.
    pub fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        self.decode_all(self.t.sessions, "sm_sessions")
    }

    /// The sessions of `node`, ordered by ID.
    pub fn node_sessions(&self, node: &str) -> Result<Vec<Session>, StoreError> {
        let prefix = codec::session_ref::node_prefix(node);
        let mut out = Vec::new();
        if !rows::storable(&prefix) {
            return Ok(out);
        }
        for row in self.t.session_refs.prefix_iter(&self.txn, &prefix)? {
            let (key, _) = row?;
            out.extend(self.session(&codec::session_ref::tail(key, 2))?);
        }
        Ok(out)
    }

    /// Rows of the session reverse index (for tests: none may outlive its session).
    #[cfg(test)]
    pub fn session_refs_count(&self) -> Result<u64, StoreError> {
        Ok(self.t.session_refs.len(&self.txn)?)
    }

    pub fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        rows::kv_get(&self.t, &self.txn, key)
    }

    pub fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, StoreError> {
        rows::kv_list(&self.t, &self.txn, prefix)
    }

    /// Keys under `prefix`, without decoding values.
    pub fn kv_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for row in super::prefix_rows(self.t.kv, &self.txn, prefix.as_bytes())? {
            let (key, _) = row?;
            out.push(String::from_utf8_lossy(key).into_owned());
        }
        Ok(out)
    }

    /// `key`'s entry, with the index at which what a read of it returns last changed: its
    /// ModifyIndex, or the index that deleted it; 0 if it never existed.
    pub fn kv_get_indexed(&self, key: &str) -> Result<(Option<KvEntry>, u64), StoreError> {
        if let Some(entry) = self.kv_get(key)? {
            let index = entry.modify_index.max(self.restored()?);
            return Ok((Some(entry), index));
        }
        let index = match self.t.kv_tombstones.get(&self.txn, key.as_bytes())? {
            Some(bytes) => codec::decode_u64("sm_kv_tombstones", key.as_bytes(), bytes)?,
            None => self.kv_floor()?,
        };
        Ok((None, index))
    }

    /// The newest index of a reaped KV tombstone (0 if none was reaped).
    /// The least index a KV read reports: the newest reaped tombstone's, or the last
    /// restore's (rows keep their archived indexes; readers must never see less).
    fn kv_floor(&self) -> Result<u64, StoreError> {
        let reaped = self.index(&index_key::table(super::apply::KV_FLOOR))?;
        Ok(reaped.max(self.restored()?))
    }

    /// The last restore's index (0 if none).
    fn restored(&self) -> Result<u64, StoreError> {
        self.index(&index_key::table(super::apply::RESTORED))
    }

    /// The index at which anything under `prefix` last changed (writes and deletions).
    pub fn kv_prefix_index(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut max = self.kv_floor()?;
        for row in super::prefix_rows(self.t.kv, &self.txn, prefix.as_bytes())? {
            let (key, bytes) = row?;
            max = max.max(codec::decode_kv(key, bytes)?.modify_index);
        }
        for row in super::prefix_rows(self.t.kv_tombstones, &self.txn, prefix.as_bytes())? {
            let (key, bytes) = row?;
            max = max.max(codec::decode_u64("sm_kv_tombstones", key, bytes)?);
        }
        Ok(max)
    }
}

/// Pairs each of a node's `services` with its checks and the node's own checks.
fn with_checks(node: Node, services: Vec<Service>, checks: Vec<HealthCheck>) -> Vec<ServiceHealth> {
    let (node_checks, service_checks): (Vec<HealthCheck>, Vec<HealthCheck>) =
        checks.into_iter().partition(|c| c.service_id.is_empty());
    let mut by_service: std::collections::HashMap<String, Vec<HealthCheck>> = std::collections::HashMap::new();
    for check in service_checks {
        by_service.entry(check.service_id.clone()).or_default().push(check);
    }
    services
        .into_iter()
        .map(|service| {
            let mut checks = node_checks.clone();
            checks.extend(by_service.remove(&service.id).unwrap_or_default());
            ServiceHealth { node: node.clone(), service, checks }
        })
        .collect()
}
