//! `cairn members` and `cairn operator raft list-peers`, printing what Consul's do.

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

pub fn members(flags: &ClientFlags) -> Result<(), CliError> {
    let members = Client::new(flags)?.get_json("/v1/agent/members")?;
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
    }
}
