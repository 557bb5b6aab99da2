//! `cairn kv get|put|delete`, printing what Consul's `consul kv` prints.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::Method;

use super::{encode_path, CliError, Client, ClientFlags};

#[derive(clap::Subcommand, Debug)]
pub enum KvCommand {
    /// Print a key's value (or, with -recurse, every key:value under a prefix).
    Get(KvGet),
    /// Write a value (`-` reads it from stdin, `@FILE` from a file).
    Put(KvPut),
    /// Delete a key (or, with -recurse, every key under a prefix).
    Delete(KvDelete),
}

#[derive(clap::Args, Debug)]
pub struct KvGet {
    #[command(flatten)]
    pub client: ClientFlags,
    #[arg(long)]
    pub recurse: bool,
    /// Print values base64-encoded.
    #[arg(long)]
    pub base64: bool,
    /// Print every field of the entry (indexes, flags, the session holding its lock).
    #[arg(long)]
    pub detailed: bool,
    #[arg(default_value = "")]
    pub key: String,
}

#[derive(clap::Args, Debug)]
pub struct KvPut {
    #[command(flatten)]
    pub client: ClientFlags,
    /// Write only if the key's ModifyIndex is -modify-index (0: only if absent).
    #[arg(long)]
    pub cas: bool,
    #[arg(long = "modify-index", value_name = "N")]
    pub modify_index: Option<u64>,
    /// The value given is base64: decode it before writing.
    #[arg(long)]
    pub base64: bool,
    #[arg(long, value_name = "N")]
    pub flags: Option<u64>,
    pub key: String,
    #[arg(default_value = "")]
    pub value: String,
}

#[derive(clap::Args, Debug)]
pub struct KvDelete {
    #[command(flatten)]
    pub client: ClientFlags,
    #[arg(long)]
    pub recurse: bool,
    #[arg(long)]
    pub cas: bool,
    #[arg(long = "modify-index", value_name = "N")]
    pub modify_index: Option<u64>,
    #[arg(default_value = "")]
    pub key: String,
}

pub fn run(command: KvCommand) -> Result<(), CliError> {
    match command {
        KvCommand::Get(a) => get(a),
        KvCommand::Put(a) => put(a),
        KvCommand::Delete(a) => delete(a),
    }
}

fn show(value: &[u8], base64: bool) -> String {
    if base64 {
        STANDARD.encode(value)
    } else {
        String::from_utf8_lossy(value).into_owned()
    }
}

fn get(a: KvGet) -> Result<(), CliError> {
    let client = Client::new(&a.client)?;
    let path = format!("/v1/kv/{}", encode_path(&a.key));
    if a.recurse {
        let answer = client.request(Method::GET, &format!("{path}?recurse"), None)?;
        if answer.status == 404 {
            return Ok(());
        }
        let entries: serde_json::Value = serde_json::from_slice(&answer.success()?.body)
            .map_err(|e| CliError::Usage(format!("invalid answer from the agent: {e}")))?;
        for entry in entries.as_array().into_iter().flatten() {
            let value = entry["Value"].as_str().and_then(|v| STANDARD.decode(v).ok()).unwrap_or_default();
            println!("{}:{}", entry["Key"].as_str().unwrap_or(""), show(&value, a.base64));
        }
        return Ok(());
    }
    if a.key.is_empty() {
        return Err(CliError::Usage("Error! Missing KEY argument".into()));
    }
    let query = if a.detailed { "" } else { "?raw" };
    let answer = client.request(Method::GET, &format!("{path}{query}"), None)?;
    if answer.status == 404 {
        return Err(CliError::Usage(format!("Error! No key exists at: {}", a.key)));
    }
    let body = answer.success()?.body;
    if !a.detailed {
        println!("{}", show(&body, a.base64));
        return Ok(());
    }
    let entries: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| CliError::Usage(format!("invalid answer from the agent: {e}")))?;
    let entry = &entries[0];
    let value = entry["Value"].as_str().and_then(|v| STANDARD.decode(v).ok()).unwrap_or_default();
    let number = |field: &str| entry[field].as_u64().unwrap_or(0).to_string();
    let rows = [
        ("CreateIndex", number("CreateIndex")),
        ("Flags", number("Flags")),
        ("Key", entry["Key"].as_str().unwrap_or_default().to_string()),
        ("LockIndex", number("LockIndex")),
        ("ModifyIndex", number("ModifyIndex")),
        ("Session", entry["Session"].as_str().unwrap_or("-").to_string()),
        ("Value", show(&value, a.base64)),
    ];
    super::print_table(&rows.map(|(name, value)| vec![name.to_string(), value]));
    Ok(())
}

fn put(a: KvPut) -> Result<(), CliError> {
    if a.cas && a.modify_index.is_none() {
        return Err(CliError::Usage("Must specify -modify-index with -cas!".into()));
    }
    let value: Vec<u8> = match a.value.as_str() {
        "-" => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .map_err(|e| CliError::Usage(format!("Error! Cannot read stdin: {e}")))?;
            bytes
        }
        v if v.starts_with('@') => {
            std::fs::read(&v[1..]).map_err(|e| CliError::Usage(format!("Error! Cannot read {}: {e}", &v[1..])))?
        }
        v => v.as_bytes().to_vec(),
    };
    let value = if a.base64 {
        STANDARD.decode(&value).map_err(|e| CliError::Usage(format!("Error! Cannot base64-decode the value: {e}")))?
    } else {
        value
    };
    let mut query = Vec::new();
    if a.cas {
        query.push(format!("cas={}", a.modify_index.unwrap_or(0)));
    }
    if let Some(flags) = a.flags {
        query.push(format!("flags={flags}"));
    }
    let path = format!("/v1/kv/{}?{}", encode_path(&a.key), query.join("&"));
    let answer = Client::new(&a.client)?.request(Method::PUT, &path, Some(value))?.success()?;
    if answer.body.trim_ascii() == b"false" {
        return Err(CliError::Usage(format!("Error! Did not write to {}: CAS failed", a.key)));
    }
    println!("Success! Data written to: {}", a.key);
    Ok(())
}

fn delete(a: KvDelete) -> Result<(), CliError> {
    if a.cas && a.modify_index.is_none() {
        return Err(CliError::Usage("Must specify -modify-index with -cas!".into()));
    }
    if a.cas && a.recurse {
        return Err(CliError::Usage("Cannot specify both -cas and -recurse!".into()));
    }
    let mut path = format!("/v1/kv/{}", encode_path(&a.key));
    if a.recurse {
        path.push_str("?recurse");
    } else if a.cas {
        path.push_str(&format!("?cas={}", a.modify_index.unwrap_or(0)));
    }
    let answer = Client::new(&a.client)?.request(Method::DELETE, &path, None)?.success()?;
    if answer.body.trim_ascii() == b"false" {
        return Err(CliError::Usage(format!("Error! Did not delete key {}: CAS failed", a.key)));
    }
    if a.recurse {
        println!("Success! Deleted keys with prefix: {}", a.key);
    } else {
        println!("Success! Deleted key: {}", a.key);
    }
    Ok(())
}
