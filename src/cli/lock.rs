//! `cairn lock [-n N] PREFIX -- COMMAND ARGS...`: runs a command while holding a lock in KV
//! (or one of N slots of a semaphore), as `consul lock` does, with Consul's key layout so
//! that both tools (and the client libraries' lock helpers) contend for the same locks:
//!
//! - lock: the session acquires `PREFIX/.lock` (flags [`LOCK_FLAG`]);
//! - semaphore: each contender acquires `PREFIX/<session>` with its session, and the holders
//!   are listed in `PREFIX/.lock` as `{"Limit": N, "Holders": {"<session>": true}}`, changed
//!   only by check-and-set; a holder whose contender key lost its session is pruned.
//!
//! The child runs with `CAIRN_LOCK_HELD=true` (and `CONSUL_LOCK_HELD=true`); SIGINT, SIGTERM
//! and SIGHUP are passed on to it. The session is renewed at half its TTL. If the lock is
//! lost (the session invalidated, the key taken), the child is terminated (SIGTERM, then
//! SIGKILL after [`KILL_GRACE`]) and `cairn lock` exits 1. Otherwise it releases the lock,
//! destroys its session and exits with the child's status.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{encode_path, Answer, CliError, Client, ClientFlags};

/// Flags Consul's lock helpers put on the keys they manage (api/lock.go, api/semaphore.go).
pub const LOCK_FLAG: u64 = 0x2ddccbc058a50c18;
pub const SEMAPHORE_FLAG: u64 = 0xe0f69a2baa414de0;
/// The session's TTL (Consul's lock default); renewed at half of it.
const SESSION_TTL: Duration = Duration::from_secs(15);
/// Blocking reads wait up to this long before asking again.
const BLOCKING_WAIT: Duration = Duration::from_secs(60);
/// After a failed attempt while nobody holds the lock (a lock delay), the next one waits.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long a child may take to exit after SIGTERM before it is killed.
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct LockFlags {
    #[command(flatten)]
    pub client: ClientFlags,
    /// Holders allowed at once: above 1, a semaphore.
    #[arg(short = 'n', long = "n", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Name of the session (shown by /v1/session/list).
    #[arg(long, default_value = "cairn lock")]
    pub name: String,
    /// Give up when the lock is not held within this long (e.g. `30s`; 0 waits forever).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// The KV prefix the lock lives under.
    pub prefix: String,
    /// The command to run while holding the lock, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    crate::model::parse_duration(text)
}

/// Runs the command under the lock; the exit code to leave with.
pub fn run(flags: LockFlags) -> Result<u8, CliError> {
    let client = Client::with_timeout(&flags.client, None)?;
    client.block_on(Locker::new(&client, &flags).run(&flags))
}

struct Locker<'c> {
    client: &'c Client,
    prefix: String,
    limit: u32,
    session: String,
}

/// Why holding the lock ended early.
enum Ended {
    /// The child exited with this code.
    Child(u8),
    /// The lock was lost; the child was terminated.
    Lost(String),
}

impl<'c> Locker<'c> {
    fn new(client: &'c Client, flags: &LockFlags) -> Locker<'c> {
        let prefix = flags.prefix.trim_matches('/').to_string();
        Locker { client, prefix, limit: flags.limit, session: String::new() }
    }

    fn lock_key(&self) -> String {
        format!("/v1/kv/{}/.lock", encode_path(&self.prefix))
    }

    fn contender_key(&self) -> String {
        format!("/v1/kv/{}/{}", encode_path(&self.prefix), self.session)
    }

    async fn put(&self, path: &str, body: Vec<u8>) -> Result<String, CliError> {
        let answer = self.client.call(Method::PUT, path, Some(body), None).await?.success()?;
        Ok(String::from_utf8_lossy(&answer.body).trim().to_string())
    }

    async fn run(mut self, flags: &LockFlags) -> Result<u8, CliError> {
        if self.prefix.is_empty() {
            return Err(CliError::Usage("Error! Missing PREFIX argument".into()));
        }
        let body = json!({"Name": flags.name, "TTL": format!("{}s", SESSION_TTL.as_secs()), "Behavior": "release"});
        let created = self.put("/v1/session/create", body.to_string().into_bytes()).await?;
        let created: Value = serde_json::from_str(&created)
            .map_err(|e| CliError::Usage(format!("invalid answer to session create: {e}")))?;
        self.session = match created["ID"].as_str() {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => return Err(CliError::Usage(format!("the agent created a session without an ID: {created}"))),
        };
        let (lost_tx, lost_rx) = watch::channel(None::<String>);
        // The renewer never completes: once the session is lost it says so and waits.
        let outcome = tokio::select! {
            outcome = self.hold_and_run(flags, lost_tx.clone(), lost_rx) => outcome,
            never = renew(self.client, &self.session, lost_tx) => match never {},
        };
        // Best effort: a session left behind ends with its TTL anyway.
        let _ = self.release().await;
        let _ = self.put(&format!("/v1/session/destroy/{}", self.session), Vec::new()).await;
        match outcome? {
            Ended::Child(code) => Ok(code),
            Ended::Lost(why) => Err(CliError::Usage(format!("Lock lost, child terminated: {why}"))),
        }
    }

    async fn hold_and_run(
        &self,
        flags: &LockFlags,
        lost_tx: watch::Sender<Option<String>>,
        mut lost_rx: watch::Receiver<Option<String>>,
    ) -> Result<Ended, CliError> {
        let mut stop = Signals::install()?;
        let acquire = async {
            if self.limit == 1 {
                self.acquire_lock().await
            } else {
                self.acquire_slot().await
            }
        };
        let limit = if flags.timeout.is_zero() { Duration::MAX } else { flags.timeout };
        tokio::select! {
            acquired = tokio::time::timeout(limit, acquire) => match acquired {
                Ok(result) => result?,
                Err(_) => return Err(CliError::Usage(format!("Lock acquisition timed out after {:?}", flags.timeout))),
            },
            signal = stop.next() => {
                return Err(CliError::Usage(format!("Shutdown triggered during lock acquisition ({signal})")))
            }
            _ = lost_rx.changed() => {
                let why = lost_rx.borrow().clone().unwrap_or_default();
                return Err(CliError::Usage(format!("Session lost during lock acquisition: {why}")));
            }
        }
        let monitor = self.monitor(lost_tx);
        tokio::pin!(monitor);
        let mut child = tokio::process::Command::new(&flags.command[0])
            .args(&flags.command[1..])
            .env("CAIRN_LOCK_HELD", "true")
            .env("CONSUL_LOCK_HELD", "true")
            .spawn()
            .map_err(|e| CliError::Usage(format!("Error! Cannot run {:?}: {e}", flags.command[0])))?;
        let pid = child.id().map(|p| p as i32);
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_err(|e| CliError::Usage(format!("Error! Waiting for the child: {e}")))?;
                    return Ok(Ended::Child(exit_code(status)));
                }
                signal = stop.next() => {
                    if let Some(pid) = pid {
                        // SAFETY: kill(2) on our own child's pid; no memory is involved.
                        unsafe { libc::kill(pid, signal) };
                    }
                }
                _ = &mut monitor => {}
                _ = lost_rx.changed() => {
                    let why = lost_rx.borrow().clone().unwrap_or_default();
                    terminate(&mut child, pid).await;
                    return Ok(Ended::Lost(why));
                }
            }
        }
    }

    /// Acquires `PREFIX/.lock`, waiting for its holder to let go.
    async fn acquire_lock(&self) -> Result<(), CliError> {
        let path = self.lock_key();
        loop {
            let answer = self.client.call(Method::GET, &path, None, None).await?;
            if answer.status == 200 {
                let entry = first_entry(&answer)?;
                if entry["Flags"].as_u64() != Some(LOCK_FLAG) {
                    return Err(CliError::Usage(format!(
                        "Error! {} exists and is not a lock",
                        path.trim_start_matches("/v1/kv/")
                    )));
                }
            }
            let acquire = format!("{path}?acquire={}&flags={LOCK_FLAG}", self.session);
            if self.put(&acquire, Vec::new()).await? == "true" {
                return Ok(());
            }
            // Wait until nobody holds it; a failure with no holder is a lock delay.
            let mut index = 0;
            loop {
                let answer = self.client.blocking_get(&path, index, BLOCKING_WAIT).await?;
                if answer.status == 404 || first_entry(&answer)?.get("Session").is_none() {
                    break;
                }
                index = answer.index.unwrap_or(0);
            }
            if index == 0 {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Takes a slot of the semaphore under PREFIX.
    async fn acquire_slot(&self) -> Result<(), CliError> {
        let contender = format!("{}?acquire={}&flags={SEMAPHORE_FLAG}", self.contender_key(), self.session);
        if self.put(&contender, Vec::new()).await? != "true" {
            return Err(CliError::Usage("Error! Cannot register as a contender of the semaphore".into()));
        }
        let tree = format!("/v1/kv/{}/?recurse", encode_path(&self.prefix));
        let mut index = 0;
        loop {
            let answer = self.client.blocking_get(&tree, index, BLOCKING_WAIT).await?;
            let entries = if answer.status == 404 { Value::Array(Vec::new()) } else { entries(&answer)? };
            let (mut state, cas) = self.semaphore_state(&entries)?;
            let live: Vec<&str> = entries
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| !e["Key"].as_str().unwrap_or_default().ends_with("/.lock"))
                .filter_map(|e| e["Session"].as_str())
                .collect();
            state.holders.retain(|id, _| live.contains(&id.as_str()));
            if state.holders.len() < self.limit as usize {
                state.holders.insert(self.session.clone(), true);
                let path = format!("{}?cas={cas}&flags={SEMAPHORE_FLAG}", self.lock_key());
                if self.put(&path, state.to_json()).await? == "true" {
                    return Ok(());
                }
                index = 0;
                continue;
            }
            index = answer.index.unwrap_or(0);
        }
    }

    /// The semaphore's `.lock` among `entries`, with the index to CAS it at (0: absent).
    fn semaphore_state(&self, entries: &Value) -> Result<(Semaphore, u64), CliError> {
        let lock =
            entries.as_array().into_iter().flatten().find(|e| e["Key"].as_str().is_some_and(|k| k.ends_with("/.lock")));
        let Some(lock) = lock else {
            return Ok((Semaphore { limit: self.limit, holders: BTreeMap::new() }, 0));
        };
        let state = Semaphore::parse(lock)?;
        if state.limit != self.limit {
            return Err(CliError::Usage(format!(
                "Error! Semaphore limit conflict (lock: {}, local: {})",
                state.limit, self.limit
            )));
        }
        Ok((state, lock["ModifyIndex"].as_u64().unwrap_or(0)))
    }

    /// Watches the lock until it is no longer ours, then says why on `lost`.
    async fn monitor(&self, lost: watch::Sender<Option<String>>) {
        let mut index = 0;
        loop {
            let why = match self.client.blocking_get(&self.lock_key(), index, BLOCKING_WAIT).await {
                Ok(answer) if answer.status == 404 => Some("the lock key was deleted".to_string()),
                Ok(answer) => match self.still_held(&answer) {
                    Ok(true) => {
                        index = answer.index.unwrap_or(0);
                        None
                    }
                    Ok(false) => Some("another session holds it now".to_string()),
                    Err(e) => Some(e.to_string()),
                },
                Err(e) => {
                    // The agent may be restarting: the session's TTL decides, not one error.
                    tracing::debug!(error = %e, "cannot watch the lock; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    None
                }
            };
            if let Some(why) = why {
                let _ = lost.send(Some(why));
                // Done watching; never completes, so the caller's select can keep polling it.
                return std::future::pending().await;
            }
        }
    }

    fn still_held(&self, answer: &Answer) -> Result<bool, CliError> {
        let entry = first_entry(answer)?;
        if self.limit == 1 {
            Ok(entry["Session"].as_str() == Some(self.session.as_str()))
        } else {
            Ok(Semaphore::parse(&entry)?.holders.contains_key(&self.session))
        }
    }

    /// Gives the lock (or the slot) back.
    async fn release(&self) -> Result<(), CliError> {
        if self.limit == 1 {
            self.put(&format!("{}?release={}&flags={LOCK_FLAG}", self.lock_key(), self.session), Vec::new()).await?;
            return Ok(());
        }
        for _ in 0..8 {
            let answer = self.client.call(Method::GET, &self.lock_key(), None, None).await?;
            if answer.status == 404 {
                break;
            }
            let lock = first_entry(&answer)?;
            let mut state = Semaphore::parse(&lock)?;
            if state.holders.remove(&self.session).is_none() {
                break;
            }
            let cas = lock["ModifyIndex"].as_u64().unwrap_or(0);
            let path = format!("{}?cas={cas}&flags={SEMAPHORE_FLAG}", self.lock_key());
            if self.put(&path, state.to_json()).await? == "true" {
                break;
            }
        }
        self.client.call(Method::DELETE, &self.contender_key(), None, None).await?.success()?;
        Ok(())
    }
}

/// `PREFIX/.lock` of a semaphore.
struct Semaphore {
    limit: u32,
    holders: BTreeMap<String, bool>,
}

impl Semaphore {
    fn parse(entry: &Value) -> Result<Semaphore, CliError> {
        let bad = |why: String| CliError::Usage(format!("Error! The semaphore's .lock is not one: {why}"));
        let bytes = entry["Value"].as_str().map(|v| STANDARD.decode(v)).transpose().map_err(|e| bad(e.to_string()))?;
        let value: Value = serde_json::from_slice(&bytes.unwrap_or_default()).map_err(|e| bad(e.to_string()))?;
        let limit =
            value["Limit"].as_u64().and_then(|l| u32::try_from(l).ok()).ok_or_else(|| bad("no Limit".into()))?;
        let holders = value["Holders"]
            .as_object()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.as_bool().unwrap_or(false))).collect())
            .unwrap_or_default();
        Ok(Semaphore { limit, holders })
    }

    fn to_json(&self) -> Vec<u8> {
        json!({"Limit": self.limit, "Holders": self.holders}).to_string().into_bytes()
    }
}

fn entries(answer: &Answer) -> Result<Value, CliError> {
    serde_json::from_slice(&answer.body).map_err(|e| CliError::Usage(format!("invalid answer from the agent: {e}")))
}

fn first_entry(answer: &Answer) -> Result<Value, CliError> {
    Ok(entries(answer)?.get(0).cloned().unwrap_or(Value::Null))
}

/// Renews `session` every half TTL until it is gone (404) or no renewal succeeded for a
/// whole TTL; then reports why on `lost`, and waits forever.
async fn renew(client: &Client, session: &str, lost: watch::Sender<Option<String>>) -> std::convert::Infallible {
    let path = format!("/v1/session/renew/{session}");
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(SESSION_TTL / 2).await;
        match client.call(Method::PUT, &path, None, Some(SESSION_TTL / 2)).await {
            Ok(answer) if answer.status == 404 => {
                let _ = lost.send(Some("the session was invalidated".into()));
                return std::future::pending().await;
            }
            Ok(answer) if (200..300).contains(&answer.status) => last_ok = tokio::time::Instant::now(),
            Ok(answer) => tracing::debug!(status = answer.status, "session renewal refused; retrying"),
            Err(e) => tracing::debug!(error = %e, "session renewal failed; retrying"),
        }
        if last_ok.elapsed() >= SESSION_TTL {
            let _ = lost.send(Some(format!("the session could not be renewed for {SESSION_TTL:?}")));
            return std::future::pending().await;
        }
    }
}

/// SIGTERM, then SIGKILL if the child has not exited within [`KILL_GRACE`].
async fn terminate(child: &mut tokio::process::Child, pid: Option<i32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        // As shells report it: 128 + the signal.
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

/// SIGINT, SIGTERM and SIGHUP, to stop waiting or to pass on to the child.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, CliError> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind| signal(kind).map_err(|e| CliError::Usage(format!("cannot listen for signals: {e}")));
        Ok(Signals {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
            hup: listen(SignalKind::hangup())?,
        })
    }

    /// The next signal's number.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}
