//! `sluice space …` and `sluice apikey create`: the Arize-style importer's spaces and the
//! API keys its GraphQL face takes (`x-api-key`).

use clap::Subcommand;
use serde_json::{json, Value};
use sluice_domain::time;
use sluice_domain::*;

use sluice_engine::control::KeyHolder;

use crate::{print_error, StoreArgs};

#[derive(Subcommand)]
pub enum SpaceCommand {
    /// Create a space in an organization (every organization also has a
    /// default space).
    Create {
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        name: String,
        /// What the space is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Mark the space private (shown as such to GraphQL clients).
        #[arg(long)]
        private: bool,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// An organization's spaces, the default one first.
    List {
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key (shown once) for an organization, or for one of
    /// its spaces only.
    Create {
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// Limit the key to this space (default: the whole organization).
        #[arg(long)]
        space: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn space_json(s: &Space) -> Value {
    json!({
        "id": s.id,
        "organization_id": s.organization_id,
        "name": s.name,
        "description": s.description,
        "private": s.private,
        "default": s.is_default,
        "created_at": time::format(&s.created_at),
    })
}

pub async fn space(command: SpaceCommand) -> anyhow::Result<()> {
    match command {
        SpaceCommand::Create {
            org,
            name,
            description,
            private,
            json,
            store,
        } => {
            let (control, _, _) = crate::control(&store).await?;
            let s = control
                .create_space(&org, &name, &description, private)
                .await
                .map_err(print_error)?;
            if json {
                println!("{}", space_json(&s));
            } else {
                println!("created space {} ({})", s.id, s.name);
            }
        }
        SpaceCommand::List { org, json, store } => {
            let (control, _, _) = crate::control(&store).await?;
            let org = OrganizationId::parse(&org)?;
            control.organization(&org).await.map_err(print_error)?;
            let all = KeyHolder {
                organization: org,
                space: None,
            };
            let mut spaces = Vec::new();
            let mut after = None;
            loop {
                let page = control
                    .spaces(
                        &all,
                        None,
                        PageRequest {
                            after,
                            forward: true,
                            limit: 500,
                        },
                    )
                    .await
                    .map_err(print_error)?;
                spaces.extend(page.items);
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            if json {
                println!("{}", Value::Array(spaces.iter().map(space_json).collect()));
            } else {
                for s in &spaces {
                    println!(
                        "{}  {}{}",
                        s.id,
                        s.name,
                        if s.is_default { "  (default)" } else { "" }
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn apikey(command: ApiKeyCommand) -> anyhow::Result<()> {
    let ApiKeyCommand::Create {
        org,
        space,
        json,
        store,
    } = command;
    let (control, _, _) = crate::control(&store).await?;
    let (key, record) = control
        .create_api_key(&org, space.as_deref())
        .await
        .map_err(print_error)?;
    if json {
        println!(
            "{}",
            json!({
                "id": record.id,
                "organization_id": record.organization_id,
                "space_id": record.space_id,
                "api_key": key,
                "created_at": time::format(&record.created_at),
            })
        );
    } else {
        println!("API key (shown once): {key}");
    }
    Ok(())
}
