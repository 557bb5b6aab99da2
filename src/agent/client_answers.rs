//! What a server answers client agents with: their forwarded HTTP requests through this
//! agent's own router, their DNS queries through this agent's DNS service.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::cluster::{ClientAnswers, HttpAnswer, HttpCall, FORWARDED_BODY_BYTES_MAX};
use crate::dns::wire::Transport;
use crate::dns::DnsService;

pub struct ServerAnswers {
    pub router: axum::Router,
    pub dns: Arc<DnsService>,
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
}
