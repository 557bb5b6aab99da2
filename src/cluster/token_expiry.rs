//! ACL tokens with an `ExpirationTime` are deleted by the leader once it passes, as Consul
//! reaps them. Every server already refuses an expired token by its own clock
//! (`AclResolver`); the deletion is what wakes blocking queries still waiting with it (they
//! end with 403) and keeps expired tokens out of lists.
//!
//! The task reads the tokens when this server becomes leader and whenever the ACL table
//! changes, and sleeps until the next expiration (at most [`TICK_MAX`], so a clock that
//! jumps is noticed).

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::model::acl::AclToken;
use crate::model::Command;
use crate::store::{StoreError, Table, Topic};

/// The task wakes at least this often while leading.
const TICK_MAX: Duration = Duration::from_secs(60);
/// After a deletion could not be committed, the next attempt waits this long.
const DELETE_RETRY: Duration = Duration::from_secs(2);
/// Expired tokens deleted at once.
const DELETES_AT_ONCE: usize = 64;

/// The tokens expired at `now` (at most [`DELETES_AT_ONCE`]), and how long until the next
/// one of the others expires.
fn due(tokens: &[AclToken], now: SystemTime) -> (Vec<String>, Option<Duration>) {
    let mut expired = Vec::new();
    let mut next: Option<Duration> = None;
    for token in tokens {
        let Some(at) = token.expires_at() else { continue };
        match at.duration_since(now) {
            Ok(wait) if !wait.is_zero() => next = Some(next.map_or(wait, |n| n.min(wait))),
            _ if expired.len() < DELETES_AT_ONCE => expired.push(token.accessor_id.clone()),
            _ => next = Some(Duration::ZERO),
        }
    }
    (expired, next)
}

fn read_tokens(cluster: &Cluster) -> Result<Vec<AclToken>, StoreError> {
    cluster.store.read()?.acl_tokens()
}

/// Deletes expired tokens while this server leads, until `shutdown`.
pub(super) async fn run(cluster: Cluster, shutdown: CancellationToken) {
    let mut metrics = cluster.raft.metrics();
    let mut changes = cluster.store.watches().subscribe(Topic::Table(Table::Acl));
    loop {
        let leading = {
            let m = metrics.borrow_and_update();
            m.running_state.is_ok() && m.current_leader == Some(cluster.config.node_id)
        };
        let mut wait = TICK_MAX;
        if leading {
            let reader = cluster.clone();
            match tokio::task::spawn_blocking(move || read_tokens(&reader)).await {
                Ok(Ok(tokens)) => {
                    let (expired, next) = due(&tokens, SystemTime::now());
                    if let Some(next) = next {
                        wait = wait.min(next);
                    }
                    if !expired.is_empty() && !delete(&cluster, expired).await {
                        wait = DELETE_RETRY;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the ACL tokens to find expired ones");
                    wait = DELETE_RETRY;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the ACL token reader stopped");
                    wait = DELETE_RETRY;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            _ = changes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Deletes `accessors`; whether every deletion was committed.
async fn delete(cluster: &Cluster, accessors: Vec<String>) -> bool {
    let writes = accessors.iter().map(|id| cluster.write(Command::AclTokenDelete { accessor_id: id.clone() }));
    let mut all = true;
    for (id, result) in accessors.iter().zip(futures_util::future::join_all(writes).await) {
        match result {
            Ok(_) => tracing::info!(accessor = %id, "ACL token expired; deleted"),
            Err(e) => {
                all = false;
                tracing::warn!(accessor = %id, error = %e, "cannot delete an expired ACL token yet")
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::acl::format_rfc3339;

    fn token(id: &str, expires: Option<SystemTime>) -> AclToken {
        AclToken { accessor_id: id.into(), expiration_time: expires.map(format_rfc3339), ..AclToken::default() }
    }

    #[test]
    fn expired_tokens_are_due_and_the_next_expiration_sets_the_wait() {
        let now = SystemTime::now();
        let tokens = [
            token("forever", None),
            token("gone", Some(now - Duration::from_secs(5))),
            token("soon", Some(now + Duration::from_secs(30))),
            token("later", Some(now + Duration::from_secs(300))),
            AclToken {
                accessor_id: "garbled".into(),
                expiration_time: Some("yesterday".into()),
                ..AclToken::default()
            },
        ];
        let (expired, next) = due(&tokens, now);
        assert_eq!(expired, ["gone", "garbled"]);
        let next = next.expect("a next expiration");
        assert!(next > Duration::from_secs(28) && next <= Duration::from_secs(30), "{next:?}");
        assert_eq!(due(&tokens[..1], now), (Vec::new(), None));
    }

    #[test]
    fn deletions_are_bounded_and_the_rest_wait_for_the_next_round() {
        let past = SystemTime::now() - Duration::from_secs(1);
        let tokens: Vec<AclToken> = (0..DELETES_AT_ONCE + 3).map(|i| token(&i.to_string(), Some(past))).collect();
        let (expired, next) = due(&tokens, SystemTime::now());
        assert_eq!(expired.len(), DELETES_AT_ONCE);
        assert_eq!(next, Some(Duration::ZERO));
    }
}
