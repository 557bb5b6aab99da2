//! `cairn catalog services|nodes`, printing what Consul's `consul catalog` prints.

use super::{encode_path, print_table, CliError, Client, ClientFlags};

#[derive(clap::Subcommand, Debug)]
pub enum CatalogCommand {
    /// List services (with -tags, their tags).
    Services(CatalogServices),
    /// List nodes (with -service, those providing it).
    Nodes(CatalogNodes),
}

#[derive(clap::Args, Debug)]
pub struct CatalogServices {
    #[command(flatten)]
    pub client: ClientFlags,
    #[arg(long)]
    pub tags: bool,
}

#[derive(clap::Args, Debug)]
pub struct CatalogNodes {
    #[command(flatten)]
    pub client: ClientFlags,
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

pub fn run(command: CatalogCommand) -> Result<(), CliError> {
    match command {
        CatalogCommand::Services(a) => {
            let services = Client::new(&a.client)?.get_json("/v1/catalog/services")?;
            let mut rows = Vec::new();
            for (name, tags) in services.as_object().into_iter().flatten() {
                let mut row = vec![name.clone()];
                if a.tags {
                    let mut tags: Vec<&str> =
                        tags.as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
                    tags.sort_unstable();
                    row.push(tags.join(","));
                }
                rows.push(row);
            }
            print_table(&rows);
            Ok(())
        }
        CatalogCommand::Nodes(a) => {
            let client = Client::new(&a.client)?;
            let nodes = match &a.service {
                Some(service) => client.get_json(&format!("/v1/catalog/service/{}", encode_path(service)))?,
                None => client.get_json("/v1/catalog/nodes")?,
            };
            let mut rows = vec![["Node", "ID", "Address", "DC"].map(String::from).to_vec()];
            let mut seen = std::collections::BTreeSet::new();
            for node in nodes.as_array().into_iter().flatten() {
                let name = node["Node"].as_str().unwrap_or("").to_string();
                if !seen.insert(name.clone()) {
                    continue;
                }
                let id: String = node["ID"].as_str().unwrap_or("").chars().take(8).collect();
                let address = node["Address"].as_str().unwrap_or("").to_string();
                let dc = node["Datacenter"].as_str().unwrap_or("").to_string();
                rows.push(vec![name, id, address, dc]);
            }
            if rows.len() == 1 {
                if let Some(service) = &a.service {
                    return Err(CliError::Usage(format!("No nodes match the given query: service {service:?}")));
                }
            }
            print_table(&rows);
            Ok(())
        }
    }
}
