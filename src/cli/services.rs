//! `cairn services register FILE...` and `cairn services deregister -id ID | FILE...`.
//!
//! Files hold service definitions as config files do (`{"service": {...}}` or
//! `{"services": [...]}`) or one bare definition; they are checked here first, so an error
//! names the file and field before anything is sent.

use std::path::PathBuf;

use serde_json::Value;

use super::{CliError, Client, ClientFlags};
use crate::model::agent::{decode_service, ScriptPolicy, Strictness};

#[derive(clap::Subcommand, Debug)]
pub enum ServicesCommand {
    /// Register services from definition files with the local agent.
    Register(ServicesRegister),
    /// Deregister a service by ID, or the services defined in files.
    Deregister(ServicesDeregister),
}

#[derive(clap::Args, Debug)]
pub struct ServicesRegister {
    #[command(flatten)]
    pub client: ClientFlags,
    /// Service definition files (JSON).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ServicesDeregister {
    #[command(flatten)]
    pub client: ClientFlags,
    /// ID of the service to deregister.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Service definition files whose services to deregister.
    #[arg(value_name = "FILE", conflicts_with = "id")]
    pub files: Vec<PathBuf>,
}

pub fn run(command: ServicesCommand) -> Result<(), CliError> {
    match command {
        ServicesCommand::Register(args) => {
            let definitions = read_definitions(&args.files)?;
            let client = Client::new(&args.client)?;
            for (name, definition) in definitions {
                client.put("/v1/agent/service/register", Some(&definition))?;
                println!("Registered service: {name}");
            }
            Ok(())
        }
        ServicesCommand::Deregister(args) => {
            let ids: Vec<String> = match (&args.id, args.files.is_empty()) {
                (Some(id), _) => vec![id.clone()],
                (None, false) => read_definitions(&args.files)?.into_iter().map(|(_, d)| service_id(&d)).collect(),
                (None, true) => return Err(CliError::Usage("give -id ID or definition files".into())),
            };
            let client = Client::new(&args.client)?;
            for id in ids {
                client.put(&format!("/v1/agent/service/deregister/{}", super::encode_path(&id)), None)?;
                println!("Deregistered service: {id}");
            }
            Ok(())
        }
    }
}

/// Every definition in `files`, validated, with its service name.
fn read_definitions(files: &[PathBuf]) -> Result<Vec<(String, Value)>, CliError> {
    let mut out = Vec::new();
    for path in files {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("{shown}: cannot read: {e}")))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("{shown}: invalid JSON: {e}")))?;
        let mut blocks = Vec::new();
        match (&value.get("service"), &value.get("services")) {
            (None, None) => blocks.push(("definition".to_string(), value.clone())),
            (service, services) => {
                if let Some(s) = service {
                    blocks.push(("service".to_string(), (*s).clone()));
                }
                match services {
                    Some(Value::Array(items)) => {
                        blocks.extend(items.iter().enumerate().map(|(i, v)| (format!("services[{i}]"), v.clone())));
                    }
                    Some(_) => return Err(CliError::Usage(format!("{shown}: services must be a list"))),
                    None => {}
                }
            }
        }
        for (key, block) in blocks {
            let reg = decode_service(&block, Strictness::Strict, ScriptPolicy::Refused)
                .map_err(|e| CliError::Usage(format!("{shown}: {key}: {e}")))?;
            out.push((reg.service.name, block));
        }
    }
    Ok(out)
}

fn service_id(definition: &Value) -> String {
    decode_service(definition, Strictness::Lenient, ScriptPolicy::Allowed).map(|r| r.service.id).unwrap_or_default()
}
