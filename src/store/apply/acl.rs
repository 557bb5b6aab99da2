//! Applying the ACL commands: tokens, policies and roles, checked against each other here so
//! that every replica accepts or rejects a command alike.

use super::{ApplyTx, Outcome};
use crate::model::acl::{
    valid_acl_name, AclLink, AclPolicy, AclRole, AclToken, ANONYMOUS_TOKEN_ACCESSOR, ANONYMOUS_TOKEN_SECRET,
    GLOBAL_MANAGEMENT_POLICY_ID,
};
use crate::model::acl_rules::Rules;
use crate::model::CommandResult;
use crate::store::acl::{self as rows, POLICY_PREFIX, ROLE_PREFIX, TOKEN_PREFIX};
use crate::store::codec;
use crate::store::watch::Table;
use crate::store::StoreError;

fn reject(why: impl Into<String>) -> Result<Outcome, StoreError> {
    Ok(Outcome::Abort(CommandResult::Rejected(why.into())))
}

impl ApplyTx<'_, '_> {
    pub(super) fn acl_bootstrap(&mut self, token: &AclToken, initial: bool) -> Result<Outcome, StoreError> {
        if rows::bootstrapped(&self.t, self.txn)?.is_some() && !initial {
            return reject("ACL bootstrap no longer allowed");
        }
        if rows::policy(&self.t, self.txn, GLOBAL_MANAGEMENT_POLICY_ID)?.is_none() {
            let policy =
                AclPolicy { create_index: self.index, modify_index: self.index, ..AclPolicy::global_management() };
            self.put_json(&rows::key(POLICY_PREFIX, &policy.id), &policy)?;
        }
        if rows::token(&self.t, self.txn, ANONYMOUS_TOKEN_ACCESSOR)?.is_none() {
            let anonymous = AclToken {
                accessor_id: ANONYMOUS_TOKEN_ACCESSOR.into(),
                secret_id: ANONYMOUS_TOKEN_SECRET.into(),
                description: "Anonymous Token".into(),
                create_time: token.create_time.clone(),
                ..AclToken::default()
            };
            if let Outcome::Abort(result) = self.acl_token_set(&anonymous)? {
                return Ok(Outcome::Abort(result));
            }
        }
        if initial && rows::token_by_secret(&self.t, self.txn, &token.secret_id)?.is_some() {
            return Ok(Outcome::Commit(CommandResult::Done));
        }
        let token = AclToken {
            policies: vec![AclLink { id: GLOBAL_MANAGEMENT_POLICY_ID.into(), name: String::new() }],
            ..token.clone()
        };
        match self.acl_token_set(&token)? {
            Outcome::Commit(_) => {}
            abort => return Ok(abort),
        }
        if rows::bootstrapped(&self.t, self.txn)?.is_none() {
            self.t.acl.put(self.txn, rows::BOOTSTRAP_KEY, &codec::encode_u64(self.index))?;
        }
        Ok(Outcome::Commit(CommandResult::Done))
    }

    /// Creates or replaces a token. Its secret cannot change and no other token may have it;
    /// links are resolved to existing policies and roles (both ID and name stored).
    pub(super) fn acl_token_set(&mut self, token: &AclToken) -> Result<Outcome, StoreError> {
        if token.accessor_id.is_empty() || token.secret_id.is_empty() {
            return reject("a token needs an AccessorID and a SecretID");
        }
        let old = rows::token(&self.t, self.txn, &token.accessor_id)?;
        if let Some(old) = &old {
            if old.secret_id != token.secret_id {
                return reject("Cannot change the SecretID of a token");
            }
        } else if self.t.acl.get(self.txn, &rows::secret_key(&token.secret_id))?.is_some() {
            return reject("Invalid Token: SecretID is already in use");
        }
        let policies = match self.resolve_links(&token.policies, POLICY_PREFIX, "policy")? {
            Ok(links) => links,
            Err(why) => return reject(why),
        };
        let roles = match self.resolve_links(&token.roles, ROLE_PREFIX, "role")? {
            Ok(links) => links,
            Err(why) => return reject(why),
        };
        let stored = AclToken {
            policies,
            roles,
            create_index: old.as_ref().map_or(self.index, |o| o.create_index),
            create_time: old.as_ref().map_or_else(|| token.create_time.clone(), |o| o.create_time.clone()),
            modify_index: self.index,
            ..token.clone()
        };
        self.put_json(&rows::key(TOKEN_PREFIX, &token.accessor_id), &stored)?;
        self.t.acl.put(self.txn, &rows::secret_key(&token.secret_id), token.accessor_id.as_bytes())?;
        self.touch_table(Table::Acl)?;
        Ok(Outcome::Commit(CommandResult::Done))
    }

    pub(super) fn acl_token_delete(&mut self, accessor: &str) -> Result<Outcome, StoreError> {
        if accessor == ANONYMOUS_TOKEN_ACCESSOR {
            return reject("Delete operation not permitted on the anonymous token");
        }
        let Some(token) = rows::token(&self.t, self.txn, accessor)? else {
            return Ok(Outcome::Abort(CommandResult::Bool(false)));
        };
        self.t.acl.delete(self.txn, &rows::key(TOKEN_PREFIX, accessor))?;
        self.t.acl.delete(self.txn, &rows::secret_key(&token.secret_id))?;
        self.touch_table(Table::Acl)?;
        Ok(Outcome::Commit(CommandResult::Bool(true)))
    }

    pub(super) fn acl_policy_set(&mut self, policy: &AclPolicy) -> Result<Outcome, StoreError> {
        if policy.id.is_empty() || !valid_acl_name(&policy.name) {
            return reject(format!("Invalid Policy: invalid Name {:?}", policy.name));
        }
        if let Err(e) = Rules::parse(&policy.rules) {
            return reject(e.to_string());
        }
        let old = rows::policy(&self.t, self.txn, &policy.id)?;
        if policy.id == GLOBAL_MANAGEMENT_POLICY_ID {
            let unchanged =
                old.as_ref().is_some_and(|o| o.rules == policy.rules && o.datacenters == policy.datacenters);
            if !unchanged {
                return reject(
                    "Changing the Rules or Datacenters of the builtin global-management policy is not permitted",
                );
            }
        }
        let others: Vec<AclPolicy> = rows::all(&self.t, self.txn, POLICY_PREFIX)?;
        if others.iter().any(|o| o.id != policy.id && o.name == policy.name) {
            return reject(format!("Invalid Policy: A Policy with Name {:?} already exists", policy.name));
        }
        let stored = AclPolicy {
            create_index: old.as_ref().map_or(self.index, |o| o.create_index),
            modify_index: self.index,
            ..policy.clone()
        };
        self.put_json(&rows::key(POLICY_PREFIX, &policy.id), &stored)?;
        self.touch_table(Table::Acl)?;
        Ok(Outcome::Commit(CommandResult::Done))
    }

    pub(super) fn acl_policy_delete(&mut self, id: &str) -> Result<Outcome, StoreError> {
        if id == GLOBAL_MANAGEMENT_POLICY_ID {
            return reject("Delete operation not permitted on the builtin global-management policy");
        }
        if rows::policy(&self.t, self.txn, id)?.is_none() {
            return Ok(Outcome::Abort(CommandResult::Bool(false)));
        }
        self.t.acl.delete(self.txn, &rows::key(POLICY_PREFIX, id))?;
        self.touch_table(Table::Acl)?;
        Ok(Outcome::Commit(CommandResult::Bool(true)))
    }

    pub(super) fn acl_role_set(&mut self, role: &AclRole) -> Result<Outcome, StoreError> {
        if role.id.is_empty() || !valid_acl_name(&role.name) {
            return reject(format!("Invalid Role: invalid Name {:?}", role.name));
        }
        let others: Vec<AclRole> = rows::all(&self.t, self.txn, ROLE_PREFIX)?;
        if others.iter().any(|o| o.id != role.id && o.name == role.name) {
            return reject(format!("Invalid Role: A Role with Name {:?} already exists", role.name));
        }
        let policies = match self.resolve_links(&role.policies, POLICY_PREFIX, "policy")? {
            Ok(links) => links,
            Err(why) => return reject(why),
        };
        let old = rows::role(&self.t, self.txn, &role.id)?;
        let stored = AclRole {
            policies,
            create_index: old.as_ref().map_or(self.index, |o| o.create_index),
            modify_index: self.index,
            ..role.clone()
        };
        self.put_json(&rows::key(ROLE_PREFIX, &role.id), &stored)?;
        self.touch_table(Table::Acl)?;
        Ok(Outcome::Commit(CommandResult::Done))
    }

    pub(super) fn acl_role_delete(&mut self, id: &str) -> Result<Outcome, StoreError> {
        if rows::role(&self.t, self.txn, id)?.is_none() {
            return Ok(Outcome::Abort(CommandResult::Bool(false)));
        }
        self.t.acl.delete(self.txn, &rows::key(ROLE_PREFIX, id))?;
        self.touch_table(Table::Acl)?;
        Ok(Outcome::Commit(CommandResult::Bool(true)))
    }

    /// `links` with both ID and name filled from the policies (or roles) they name, without
    /// duplicates; `Err` names the first that does not exist.
    fn resolve_links(
        &self,
        links: &[AclLink],
        prefix: &[u8],
        kind: &str,
    ) -> Result<Result<Vec<AclLink>, String>, StoreError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Named {
            #[serde(rename = "ID")]
            id: String,
            name: String,
        }
        if links.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let known: Vec<Named> = rows::all(&self.t, self.txn, prefix)?;
        let mut out: Vec<AclLink> = Vec::with_capacity(links.len());
        for link in links {
            let found = if link.id.is_empty() {
                known.iter().find(|k| k.name == link.name)
            } else {
                known.iter().find(|k| k.id == link.id)
            };
            let Some(found) = found else {
                let what = if link.id.is_empty() { &link.name } else { &link.id };
                return Ok(Err(format!("cannot find {kind} {what:?}")));
            };
            if !out.iter().any(|l| l.id == found.id) {
                out.push(AclLink { id: found.id.clone(), name: found.name.clone() });
            }
        }
        Ok(Ok(out))
    }

    fn put_json<T: serde::Serialize>(&mut self, key: &[u8], value: &T) -> Result<(), StoreError> {
        self.t.acl.put(self.txn, key, &codec::encode_json(value))?;
        Ok(())
    }
}
