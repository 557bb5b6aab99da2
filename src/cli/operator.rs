//! `cairn members`, `join`, `force-leave`, `keygen` and `cairn operator raft list-peers`,
//! `remove-peer` and `transfer-leader`,
//! printing what Consul's do.

use super::{print_table, CliError, Client, ClientFlags};

#[derive(clap::Subcommand, Debug)]
pub enum OperatorCommand {
    /// Raft operations.
    #[command(subcommand)]
    Raft(RaftCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum RaftCommand {
    /// List the Raft servers and which one leads.
    ListPeers(ClientFlags),
    /// Remove a server from the Raft configuration (by -id or -address).
    RemovePeer(PeerFlags),
    /// Hand leadership to another server (-id), or to the most caught-up one.
    TransferLeader(PeerFlags),
}

/// Which server an operator command is about.
#[derive(clap::Args, Debug)]
pub struct PeerFlags {
    #[command(flatten)]
    pub client: ClientFlags,
    /// The server's node ID (as `list-peers` shows it) or node name.
    #[arg(long)]
    pub id: Option<String>,
    /// The server's Raft address, ip:port (remove-peer only).
    #[arg(long)]
    pub address: Option<String>,
}

impl PeerFlags {
    fn query(&self) -> String {
        let mut query = Vec::new();
        if let Some(id) = &self.id {
            query.push(format!("id={}", super::encode_path(id)));
        }
        if let Some(address) = &self.address {
            query.push(format!("address={}", super::encode_path(address)));
        }
        if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        }
    }
}

/// Consul's member status names by number.
fn status_name(n: u64) -> &'static str {
    match n {
        1 => "alive",
        2 => "leaving",
        3 => "left",
        4 => "failed",
        _ => "none",
    }
}

/// `cairn members` flags.
#[derive(clap::Args, Debug)]
pub struct MembersFlags {
    #[command(flatten)]
    pub client: ClientFlags,
    /// Show every tag of each member instead of the summary columns.
    #[arg(long)]
    pub detailed: bool,
    /// List the WAN pool: the servers of every datacenter, named `node.dc` (empty on a
    /// client agent).
    #[arg(long)]
    pub wan: bool,
}

pub fn members(flags: &MembersFlags) -> Result<(), CliError> {
    let path = if flags.wan { "/v1/agent/members?wan=1" } else { "/v1/agent/members" };
    let members = Client::new(&flags.client)?.get_json(path)?;
    if flags.detailed {
        let mut rows = vec![["Node", "Address", "Status", "Tags"].map(String::from).to_vec()];
        for m in members.as_array().into_iter().flatten() {
            let tags = m["Tags"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",");
            rows.push(vec![
                m["Name"].as_str().unwrap_or("").to_string(),
                format!("{}:{}", m["Addr"].as_str().unwrap_or(""), m["Port"]),
                status_name(m["Status"].as_u64().unwrap_or(0)).to_string(),
                tags,
            ]);
        }
        print_table(&rows);
        return Ok(());
    }
    let mut rows = vec![["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition", "Segment"]
        .map(String::from)
        .to_vec()];
    for m in members.as_array().into_iter().flatten() {
        let tags = &m["Tags"];
        let role = if tags["role"] == "consul" { "server" } else { "client" };
        let build = tags["build"].as_str().unwrap_or("").split(':').next().unwrap_or("").to_string();
        rows.push(vec![
            m["Name"].as_str().unwrap_or("").to_string(),
            format!("{}:{}", m["Addr"].as_str().unwrap_or(""), m["Port"]),
            status_name(m["Status"].as_u64().unwrap_or(0)).to_string(),
            role.to_string(),
            build,
            m["ProtocolCur"].to_string(),
            tags["dc"].as_str().unwrap_or("").to_string(),
            "default".to_string(),
            "<all>".to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// `cairn join ADDR...`: asks the local agent to join the pool through each address.
#[derive(clap::Args, Debug)]
pub struct JoinFlags {
    #[command(flatten)]
    pub client: ClientFlags,
    /// Join the WAN pool through a server of another datacenter (the agent must be a
    /// server); the default port is then 8302.
    #[arg(long)]
    pub wan: bool,
    /// Gossip address of a member (host or host:port; default port 8301).
    #[arg(required = true, value_name = "ADDR")]
    pub addrs: Vec<String>,
}

pub fn join(flags: &JoinFlags) -> Result<(), CliError> {
    let client = Client::new(&flags.client)?;
    let mut joined = 0;
    for addr in &flags.addrs {
        let wan = if flags.wan { "?wan=1" } else { "" };
        match client.put(&format!("/v1/agent/join/{addr}{wan}"), None) {
            Ok(_) => joined += 1,
            Err(e) => eprintln!("cairn: join {addr}: {e}"),
        }
    }
    if joined == 0 {
        return Err(CliError::Usage("could not join through any address".into()));
    }
    println!("Successfully joined cluster by contacting {joined} nodes.");
    Ok(())
}

/// `cairn force-leave NODE`: a failed member becomes left (and leaves the catalog).
#[derive(clap::Args, Debug)]
pub struct ForceLeaveFlags {
    #[command(flatten)]
    pub client: ClientFlags,
    /// Also remove the member from the member list at once.
    #[arg(long)]
    pub prune: bool,
    /// A member of the WAN pool (`node.dc`).
    #[arg(long)]
    pub wan: bool,
    #[arg(value_name = "NODE")]
    pub node: String,
}

pub fn force_leave(flags: &ForceLeaveFlags) -> Result<(), CliError> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("prune", flags.prune), ("wan", flags.wan)].iter().filter(|(_, on)| *on).map(|(k, _)| (*k, "1")))
        .finish();
    let path = format!("/v1/agent/force-leave/{}?{query}", super::encode_path(&flags.node));
    Client::new(&flags.client)?.put(&path, None)?;
    Ok(())
}

/// `cairn keyring`: list (the default) or rotate the gossip keys of every member.
#[derive(clap::Args, Debug)]
pub struct KeyringFlags {
    #[command(flatten)]
    pub client: ClientFlags,
    /// List the keys in use and how many members hold each (the default).
    #[arg(long, conflicts_with_all = ["install", "use_key", "remove"])]
    pub list: bool,
    /// Install a new key on every member (it opens packets; the primary still seals).
    #[arg(long, value_name = "KEY", conflicts_with_all = ["use_key", "remove"])]
    pub install: Option<String>,
    /// Make an installed key the primary on every member.
    #[arg(long = "use", value_name = "KEY", conflicts_with = "remove")]
    pub use_key: Option<String>,
    /// Remove a (non-primary) key from every member.
    #[arg(long, value_name = "KEY")]
    pub remove: Option<String>,
}

pub fn keyring(flags: &KeyringFlags) -> Result<(), CliError> {
    let client = Client::new(&flags.client)?;
    let (method, key, done) = match (&flags.install, &flags.use_key, &flags.remove) {
        (Some(k), _, _) => (reqwest::Method::POST, k, "Installing new gossip encryption key..."),
        (_, Some(k), _) => (reqwest::Method::PUT, k, "Changing primary gossip encryption key..."),
        (_, _, Some(k)) => (reqwest::Method::DELETE, k, "Removing gossip encryption key..."),
        _ => {
            let rings = client.get_json("/v1/operator/keyring")?;
            println!("==> Gathering installed encryption keys...");
            for ring in rings.as_array().into_iter().flatten() {
                let nodes = ring["NumNodes"].as_u64().unwrap_or(0);
                let pool = if ring["WAN"] == true { "WAN" } else { "LAN" };
                println!("\n{} ({pool}):", ring["Datacenter"].as_str().unwrap_or(""));
                for (key, count) in ring["Keys"].as_object().into_iter().flatten() {
                    let primary = ring["PrimaryKeys"].get(key).is_some_and(|c| c == count);
                    let mark = if primary { "  [primary]" } else { "" };
                    println!("  {key}  [{}/{nodes}]{mark}", count.as_u64().unwrap_or(0));
                }
            }
            return Ok(());
        }
    };
    println!("==> {done}");
    let body = serde_json::json!({ "Key": key }).to_string().into_bytes();
    client.request(method, "/v1/operator/keyring", Some(body))?.success()?;
    Ok(())
}

/// `cairn event -name NAME [PAYLOAD]`: fires a user event to every member.
#[derive(clap::Args, Debug)]
pub struct EventFlags {
    #[command(flatten)]
    pub client: ClientFlags,
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Only nodes whose name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub node: Option<String>,
    /// Only nodes with a service whose name matches.
    #[arg(long, value_name = "REGEX")]
    pub service: Option<String>,
    /// With -service: only services with a matching tag.
    #[arg(long, value_name = "REGEX")]
    pub tag: Option<String>,
    #[arg(value_name = "PAYLOAD")]
    pub payload: Option<String>,
}

pub fn event(flags: &EventFlags) -> Result<(), CliError> {
    let mut query: Vec<(&str, &str)> = Vec::new();
    for (key, value) in [("node", &flags.node), ("service", &flags.service), ("tag", &flags.tag)] {
        if let Some(v) = value {
            query.push((key, v));
        }
    }
    let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
    let path = format!("/v1/event/fire/{}?{query}", super::encode_path(&flags.name));
    let body = flags.payload.clone().map(String::into_bytes);
    let answer = Client::new(&flags.client)?.request(reqwest::Method::PUT, &path, body)?.success()?;
    let event: serde_json::Value = serde_json::from_slice(&answer.body)
        .map_err(|e| CliError::Usage(format!("the agent answered with invalid JSON: {e}")))?;
    println!("Event ID: {}", event["ID"].as_str().unwrap_or(""));
    Ok(())
}

/// `cairn monitor [-log-level L]`: streams the agent's log until interrupted.
#[derive(clap::Args, Debug)]
pub struct MonitorFlags {
    #[command(flatten)]
    pub client: ClientFlags,
    /// trace, debug, info, warn or err.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

pub fn monitor(flags: &MonitorFlags) -> Result<(), CliError> {
    use std::io::Write;
    // A streamed answer has no overall deadline (connecting still has one).
    let client = Client::with_timeout(&flags.client, None)?;
    let path = format!("/v1/agent/monitor?loglevel={}", super::encode_path(&flags.log_level));
    let mut out = std::io::stdout().lock();
    client.stream(&path, |chunk| {
        let _ = out.write_all(chunk);
        let _ = out.flush();
    })
}

/// `cairn keygen`: a new gossip encryption key for `encrypt`.
pub fn keygen() {
    println!("{}", crate::gossip::GossipKey::generate().to_base64());
}

pub fn run(command: OperatorCommand) -> Result<(), CliError> {
    match command {
        OperatorCommand::Raft(RaftCommand::ListPeers(flags)) => {
            let config = Client::new(&flags)?.get_json("/v1/operator/raft/configuration")?;
            let mut rows = vec![["Node", "ID", "Address", "State", "Voter", "RaftProtocol"].map(String::from).to_vec()];
            for s in config["Servers"].as_array().into_iter().flatten() {
                let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
                let state = if s["Leader"] == true { "leader" } else { "follower" };
                rows.push(vec![
                    text("Node"),
                    text("ID"),
                    text("Address"),
                    state.into(),
                    s["Voter"].to_string(),
                    text("ProtocolVersion"),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        OperatorCommand::Raft(RaftCommand::RemovePeer(flags)) => {
            if flags.id.is_none() == flags.address.is_none() {
                return Err(CliError::Usage("remove-peer needs exactly one of -id or -address".into()));
            }
            let client = Client::new(&flags.client)?;
            client
                .request(reqwest::Method::DELETE, &format!("/v1/operator/raft/peer{}", flags.query()), None)?
                .success()?;
            println!("Removed peer with {}", flags.id.as_deref().or(flags.address.as_deref()).unwrap_or(""));
            Ok(())
        }
        OperatorCommand::Raft(RaftCommand::TransferLeader(flags)) => {
            if flags.address.is_some() {
                return Err(CliError::Usage("transfer-leader takes -id, not -address".into()));
            }
            let client = Client::with_timeout(&flags.client, Some(std::time::Duration::from_secs(30)))?;
            let path = format!("/v1/operator/raft/transfer-leader{}", flags.query());
            client.request(reqwest::Method::POST, &path, None)?.success()?;
            println!("Success");
            Ok(())
        }
    }
}
