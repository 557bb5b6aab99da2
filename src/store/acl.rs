//! Where ACL tokens, policies and roles live in `sm_acl`, and reading them back (shared by
//! `apply` and `ReadView`).
//!
//! Keys: `t\0accessor` → token, `s\0sha256(secret)` → accessor, `p\0id` → policy,
//! `r\0id` → role, `bootstrap` → the index of the bootstrap. A secret is found through its
//! hash and then compared with the stored one in constant time, so neither the lookup nor the
//! comparison tells a guesser how close they came.

use heed::{RoTxn, WithoutTls};
use subtle::ConstantTimeEq;

use super::rows::json_row;
use super::{codec, prefix_rows, SmTables, StoreError};
use crate::model::acl::{AclPolicy, AclRole, AclToken};

type Txn<'t> = RoTxn<'t, WithoutTls>;

pub(super) const TABLE: &str = "sm_acl";
pub(super) const BOOTSTRAP_KEY: &[u8] = b"bootstrap";
pub(super) const TOKEN_PREFIX: &[u8] = b"t\0";
pub(super) const POLICY_PREFIX: &[u8] = b"p\0";
pub(super) const ROLE_PREFIX: &[u8] = b"r\0";

pub(super) fn key(prefix: &[u8], id: &str) -> Vec<u8> {
    [prefix, id.as_bytes()].concat()
}

pub(super) fn secret_key(secret: &str) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    [b"s\0".as_slice(), digest.as_ref()].concat()
}

pub(super) fn token(t: &SmTables, txn: &Txn<'_>, accessor: &str) -> Result<Option<AclToken>, StoreError> {
    json_row(t.acl, TABLE, txn, &key(TOKEN_PREFIX, accessor))
}

/// The token whose secret is `secret`.
pub(super) fn token_by_secret(t: &SmTables, txn: &Txn<'_>, secret: &str) -> Result<Option<AclToken>, StoreError> {
    let Some(accessor) = t.acl.get(txn, &secret_key(secret))? else {
        return Ok(None);
    };
    let accessor = String::from_utf8_lossy(accessor).into_owned();
    let token = token(t, txn, &accessor)?;
    Ok(token.filter(|token| bool::from(token.secret_id.as_bytes().ct_eq(secret.as_bytes()))))
}

pub(super) fn policy(t: &SmTables, txn: &Txn<'_>, id: &str) -> Result<Option<AclPolicy>, StoreError> {
    json_row(t.acl, TABLE, txn, &key(POLICY_PREFIX, id))
}

pub(super) fn role(t: &SmTables, txn: &Txn<'_>, id: &str) -> Result<Option<AclRole>, StoreError> {
    json_row(t.acl, TABLE, txn, &key(ROLE_PREFIX, id))
}

/// Every row under `prefix`, decoded, in key order.
pub(super) fn all<T: serde::de::DeserializeOwned>(
    t: &SmTables,
    txn: &Txn<'_>,
    prefix: &[u8],
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in prefix_rows(t.acl, txn, prefix)? {
        let (key, bytes) = row?;
        out.push(codec::decode_json(TABLE, key, bytes)?);
    }
    Ok(out)
}

/// The index at which ACLs were bootstrapped, if they were.
pub(super) fn bootstrapped(t: &SmTables, txn: &Txn<'_>) -> Result<Option<u64>, StoreError> {
    t.acl.get(txn, BOOTSTRAP_KEY)?.map(|bytes| codec::decode_u64(TABLE, BOOTSTRAP_KEY, bytes)).transpose()
}

/// Whether a row of `sm_acl` (from a backup archive, before a restore) reads back as what its
/// key says it holds.
pub(super) fn check_row(key: &[u8], value: &[u8]) -> Result<(), String> {
    let json =
        |what: fn(&[u8]) -> bool| if what(value) { Ok(()) } else { Err("an ACL row that does not decode".to_string()) };
    if key == BOOTSTRAP_KEY {
        return codec::decode_u64(TABLE, key, value).map(drop).map_err(|e| e.to_string());
    }
    if key.starts_with(TOKEN_PREFIX) {
        json(|v| serde_json::from_slice::<AclToken>(v).is_ok())
    } else if key.starts_with(POLICY_PREFIX) {
        json(|v| serde_json::from_slice::<crate::model::acl::AclPolicy>(v).is_ok())
    } else if key.starts_with(ROLE_PREFIX) {
        json(|v| serde_json::from_slice::<crate::model::acl::AclRole>(v).is_ok())
    } else {
        Ok(())
    }
}
