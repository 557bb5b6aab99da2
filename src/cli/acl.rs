//! `cairn acl bootstrap|token ...|policy ...`: managing ACLs through the agent's HTTP API,
//! printing what Consul's `consul acl` prints (`-format=json` for the raw answer).

use serde_json::{json, Value};

use super::{encode_path, CliError, Client, ClientFlags};

#[derive(clap::Subcommand, Debug)]
pub enum AclCommand {
    /// Create the first management token (once).
    Bootstrap(AclOutput),
    /// Create, list, read or delete tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create, list, read or delete policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Replace one of the agent's own tokens (`default` or `agent`) without a restart.
    SetAgentToken(SetAgentToken),
}

#[derive(clap::Args, Debug)]
pub struct SetAgentToken {
    #[command(flatten)]
    pub client: ClientFlags,
    /// `default` (requests and DNS queries without a token) or `agent` (the agent's own
    /// registrations).
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// The token's secret ID; empty clears it.
    #[arg(value_name = "SECRET")]
    pub secret: String,
}

#[derive(clap::Args, Debug)]
pub struct AclOutput {
    #[command(flatten)]
    pub client: ClientFlags,
    /// `pretty` (default) or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "pretty", value_parser = ["pretty", "json"])]
    pub format: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    Create(TokenCreate),
    List(AclOutput),
    Read(ById),
    Delete(ById),
}

#[derive(clap::Args, Debug)]
pub struct TokenCreate {
    #[command(flatten)]
    pub out: AclOutput,
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
    /// A policy by name (repeatable).
    #[arg(long = "policy-name", value_name = "NAME")]
    pub policy_name: Vec<String>,
    /// A policy by ID (repeatable).
    #[arg(long = "policy-id", value_name = "ID")]
    pub policy_id: Vec<String>,
    /// A role by name (repeatable).
    #[arg(long = "role-name", value_name = "NAME")]
    pub role_name: Vec<String>,
    /// A service identity, `NAME` (repeatable).
    #[arg(long = "service-identity", value_name = "NAME")]
    pub service_identity: Vec<String>,
    /// The secret to use (a UUID); generated when absent.
    #[arg(long, value_name = "UUID")]
    pub secret: Option<String>,
    /// How long the token works (`30m`, `8h`); it never expires when absent.
    #[arg(long = "expires-ttl", value_name = "DURATION", value_parser = expires_ttl)]
    pub expires_ttl: Option<String>,
}

/// A token lifetime as the server takes it: a Go duration.
fn expires_ttl(text: &str) -> Result<String, String> {
    crate::model::parse_duration(text).map(|_| text.to_string())
}

#[derive(clap::Args, Debug)]
pub struct ById {
    #[command(flatten)]
    pub out: AclOutput,
    /// The token's accessor ID (or the policy's ID).
    #[arg(long, value_name = "ID")]
    pub id: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    Create(PolicyCreate),
    List(AclOutput),
    Read(PolicyRef),
    Delete(PolicyRef),
}

#[derive(clap::Args, Debug)]
pub struct PolicyCreate {
    #[command(flatten)]
    pub out: AclOutput,
    #[arg(long, value_name = "NAME")]
    pub name: String,
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
    /// The rules (HCL or JSON), or `@FILE` to read them from a file.
    #[arg(long, value_name = "RULES", default_value = "")]
    pub rules: String,
}

#[derive(clap::Args, Debug)]
pub struct PolicyRef {
    #[command(flatten)]
    pub out: AclOutput,
    #[arg(long, value_name = "ID", conflicts_with = "name", required_unless_present = "name")]
    pub id: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

pub fn run(command: AclCommand) -> Result<(), CliError> {
    match command {
        AclCommand::Bootstrap(out) => {
            let token = put_json(&Client::new(&out.client)?, "/v1/acl/bootstrap", None)?;
            show(&out, &token, print_token);
        }
        AclCommand::Token(TokenCommand::Create(a)) => {
            let links = |ids: &[String], names: &[String]| -> Vec<Value> {
                ids.iter().map(|id| json!({"ID": id})).chain(names.iter().map(|n| json!({"Name": n}))).collect()
            };
            let mut body = json!({
                "Description": a.description,
                "Policies": links(&a.policy_id, &a.policy_name),
                "Roles": links(&[], &a.role_name),
                "ServiceIdentities": a.service_identity.iter().map(|s| json!({"ServiceName": s})).collect::<Vec<_>>(),
            });
            if let Some(secret) = &a.secret {
                body["SecretID"] = json!(secret);
            }
            if let Some(ttl) = &a.expires_ttl {
                body["ExpirationTTL"] = json!(ttl);
            }
            let token = put_json(&Client::new(&a.out.client)?, "/v1/acl/token", Some(&body))?;
            show(&a.out, &token, print_token);
        }
        AclCommand::Token(TokenCommand::List(out)) => {
            let tokens = Client::new(&out.client)?.get_json("/v1/acl/tokens")?;
            print_each(&out, &tokens, print_token);
        }
        AclCommand::Token(TokenCommand::Read(a)) => {
            let token = Client::new(&a.out.client)?.get_json(&format!("/v1/acl/token/{}", encode_path(&a.id)))?;
            show(&a.out, &token, print_token);
        }
        AclCommand::Token(TokenCommand::Delete(a)) => {
            delete(&Client::new(&a.out.client)?, &format!("/v1/acl/token/{}", encode_path(&a.id)))?;
            println!("Token {:?} deleted successfully", a.id);
        }
        AclCommand::Policy(PolicyCommand::Create(a)) => {
            let rules = match a.rules.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| CliError::Usage(format!("-rules @{path}: cannot read the file: {e}")))?,
                None => a.rules.clone(),
            };
            let body = json!({"Name": a.name, "Description": a.description, "Rules": rules});
            let policy = put_json(&Client::new(&a.out.client)?, "/v1/acl/policy", Some(&body))?;
            show(&a.out, &policy, print_policy);
        }
        AclCommand::Policy(PolicyCommand::List(out)) => {
            let policies = Client::new(&out.client)?.get_json("/v1/acl/policies")?;
            print_each(&out, &policies, print_policy);
        }
        AclCommand::Policy(PolicyCommand::Read(a)) => {
            let policy = Client::new(&a.out.client)?.get_json(&policy_path(&a))?;
            show(&a.out, &policy, print_policy);
        }
        AclCommand::SetAgentToken(a) => {
            let path = format!("/v1/agent/token/{}", encode_path(&a.kind));
            Client::new(&a.client)?.put(&path, Some(&json!({"Token": a.secret})))?;
            println!("ACL token {:?} set successfully", a.kind);
        }
        AclCommand::Policy(PolicyCommand::Delete(a)) => {
            let client = Client::new(&a.out.client)?;
            let id = match &a.id {
                Some(id) => id.clone(),
                None => client.get_json(&policy_path(&a))?["ID"].as_str().unwrap_or_default().to_string(),
            };
            delete(&client, &format!("/v1/acl/policy/{}", encode_path(&id)))?;
            println!("Policy {id:?} deleted successfully");
        }
    }
    Ok(())
}

fn policy_path(a: &PolicyRef) -> String {
    match (&a.id, &a.name) {
        (Some(id), _) => format!("/v1/acl/policy/{}", encode_path(id)),
        (None, name) => format!("/v1/acl/policy/name/{}", encode_path(name.as_deref().unwrap_or_default())),
    }
}

fn put_json(client: &Client, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
    let text = client.put(path, body)?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("the agent answered {path} with invalid JSON: {e}")))
}

fn delete(client: &Client, path: &str) -> Result<(), CliError> {
    client.request(reqwest::Method::DELETE, path, None)?.success()?;
    Ok(())
}

/// `value` as `-format` asks: JSON, or `pretty`'s text.
fn show(out: &AclOutput, value: &Value, pretty: impl Fn(&Value)) {
    if out.format == "json" {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        pretty(value);
    }
}

/// A list as [`show`] shows one element, a blank line between elements.
fn print_each(out: &AclOutput, list: &Value, pretty: fn(&Value)) {
    show(out, list, |list| {
        for (i, item) in list.as_array().into_iter().flatten().enumerate() {
            if i > 0 {
                println!();
            }
            pretty(item);
        }
    });
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn print_token(token: &Value) {
    println!("AccessorID:       {}", text(&token["AccessorID"]));
    println!("SecretID:         {}", text(&token["SecretID"]));
    println!("Description:      {}", text(&token["Description"]));
    println!("Local:            {}", token["Local"].as_bool().unwrap_or(false));
    println!("Create Time:      {}", text(&token["CreateTime"]));
    if let Some(at) = token["ExpirationTime"].as_str() {
        println!("Expiration Time:  {at}");
    }
    let policies: Vec<&Value> = token["Policies"].as_array().into_iter().flatten().collect();
    if !policies.is_empty() {
        println!("Policies:");
        for p in policies {
            println!("   {} - {}", text(&p["ID"]), text(&p["Name"]));
        }
    }
    let identities: Vec<&Value> = token["ServiceIdentities"].as_array().into_iter().flatten().collect();
    if !identities.is_empty() {
        println!("Service Identities:");
        for s in identities {
            println!("   {} (Datacenters: all)", text(&s["ServiceName"]));
        }
    }
}

fn print_policy(policy: &Value) {
    println!("ID:           {}", text(&policy["ID"]));
    println!("Name:         {}", text(&policy["Name"]));
    println!("Description:  {}", text(&policy["Description"]));
    let datacenters: Vec<&str> =
        policy["Datacenters"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    println!("Datacenters:  {}", datacenters.join(", "));
    println!("Rules:");
    println!("{}", text(&policy["Rules"]));
}
