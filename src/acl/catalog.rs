//! Who may change the catalog: Consul's rules for a registration or a deregistration, the
//! same whether it arrives over HTTP (`/v1/catalog/register`) or from a client agent's
//! anti-entropy over the server RPC.

use super::{Access, Authorizer, Resource};
use crate::model::{Command, DeregisterRequest, RegisterRequest};
use crate::store::{ReadView, StoreError};

/// What a token lacks for a write: `Permission denied: lacks service:write on "web"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Permission denied: lacks {}:write on {name:?}", resource.rule_name())]
pub struct Denied {
    pub resource: Resource,
    pub name: String,
}

/// Why a catalog write may not be applied.
#[derive(Debug, thiserror::Error)]
pub enum CatalogRefusal {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("only catalog registrations and deregistrations are accepted here")]
    NotCatalog,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn need(authz: &Authorizer, resource: Resource, name: &str) -> Result<(), Denied> {
    if authz.allows(resource, name, Access::Write) {
        Ok(())
    } else {
        Err(Denied { resource, name: name.to_string() })
    }
}

/// Whether `authz` may apply `command`, a [`Command::Register`] or [`Command::Deregister`]
/// (anything else is [`CatalogRefusal::NotCatalog`]). `view` is the state it would apply to.
pub fn authorize(authz: &Authorizer, view: &ReadView<'_>, command: &Command) -> Result<(), CatalogRefusal> {
    match command {
        Command::Register(r) => authorize_register(authz, view, r),
        Command::Deregister(d) => authorize_deregister(authz, view, d),
        _ => Err(CatalogRefusal::NotCatalog),
    }
}

/// Write on the service registered, and on the node unless only the service (and its own
/// checks) change on a node that exists already (`SkipNodeUpdate`).
pub fn authorize_register(authz: &Authorizer, view: &ReadView<'_>, r: &RegisterRequest) -> Result<(), CatalogRefusal> {
    if !authz.enabled() {
        return Ok(());
    }
    if let Some(s) = &r.service {
        need(authz, Resource::Service, &s.service)?;
    }
    let own_checks_only =
        r.checks.iter().all(|c| r.service.as_ref().is_some_and(|s| !c.service_id.is_empty() && c.service_id == s.id));
    if !(r.skip_node_update && own_checks_only && view.node(&r.node)?.is_some()) {
        need(authz, Resource::Node, &r.node)?;
    }
    Ok(())
}

/// Write on the service removed (or the service a removed check belongs to), on the node
/// for anything else.
pub fn authorize_deregister(
    authz: &Authorizer,
    view: &ReadView<'_>,
    d: &DeregisterRequest,
) -> Result<(), CatalogRefusal> {
    if !authz.enabled() {
        return Ok(());
    }
    let service_id = match (&d.service_id, &d.check_id) {
        (Some(service), _) => Some(service.clone()),
        (None, Some(check)) => view.check(&d.node, check)?.map(|c| c.service_id).filter(|s| !s.is_empty()),
        (None, None) => None,
    };
    if let Some(id) = service_id {
        if let Some(service) = view.service(&d.node, &id)? {
            return Ok(need(authz, Resource::Service, &service.service)?);
        }
    }
    Ok(need(authz, Resource::Node, &d.node)?)
}
