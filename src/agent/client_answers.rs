//! What a server answers client agents with: their forwarded HTTP requests through this
//! agent's own router, their DNS queries through this agent's DNS service, and their own
//! catalog writes and reads checked against the token they present.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::acl::{Access, AclResolver, Resource};
use crate::cluster::{ClientAnswers, HttpAnswer, HttpCall, FORWARDED_BODY_BYTES_MAX};
use crate::dns::wire::Transport;
use crate::dns::DnsService;
use crate::model::acl::Secret;
use crate::model::Command;
use crate::store::Store;

pub struct ServerAnswers {
    pub router: axum::Router,
    pub dns: Arc<DnsService>,
    pub acl: Arc<AclResolver>,
    pub store: Store,
}

impl ClientAnswers for ServerAnswers {
    fn http(&self, call: HttpCall, body: Vec<u8>) -> BoxFuture<'static, (HttpAnswer, Vec<u8>)> {
        Box::pin(crate::http::answer_forwarded(self.router.clone(), call, body, FORWARDED_BODY_BYTES_MAX))
    }

    fn dns(&self, packet: Vec<u8>, tcp: bool) -> BoxFuture<'static, Vec<u8>> {
        let dns = Arc::clone(&self.dns);
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        Box::pin(async move { dns.reply_for_client(&packet, transport).await })
    }

    fn authorize_agent_writes(&self, commands: &[Command], tokens: &[Option<Secret>]) -> Vec<Result<(), String>> {
        let view = match self.store.read() {
            Ok(view) => view,
            Err(e) => return vec![Err(e.to_string()); commands.len()],
        };
        commands
            .iter()
            .zip(tokens)
            .map(|(command, token)| {
                let token = self.acl.resolve(token.as_ref().map(|t| t.0.as_str())).map_err(|e| e.to_string())?;
                crate::acl::catalog::authorize(&token.authorizer, &view, command).map_err(|e| e.to_string())
            })
            .collect()
    }

    fn authorize_node_read(&self, token: Option<&Secret>, node: &str) -> Result<(), String> {
        let token = self.acl.resolve(token.map(|t| t.0.as_str())).map_err(|e| e.to_string())?;
        if token.authorizer.allows(Resource::Node, node, Access::Read) {
            Ok(())
        } else {
            Err(format!("Permission denied: lacks node:read on {node:?}"))
        }
    }
}
