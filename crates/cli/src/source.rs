//! `sluice source …`: the sources an organization's jobs may read when
//! they are made through the API (the GraphQL face). The administrator's
//! own commands may name any source but sluice's own data.

use clap::Subcommand;
use serde_json::json;

use crate::{print_error, StoreArgs};

#[derive(Subcommand)]
pub enum SourceCommand {
    /// Let an organization's jobs read a database or a folder: the URL
    /// (sealed at rest, its password never shown again) and anything under
    /// it — a database server URL without a database allows each of its
    /// databases, a file:// folder each file in it.
    Add {
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// A name for the source.
        name: String,
        /// postgres://USER[:PASSWORD]@HOST[:PORT]/[DB], mysql://…,
        /// sqlite:///FILE or file:///FOLDER.
        url: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// An organization's sources, passwords hidden.
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
    /// Take a source back: no new job may read it (jobs made with it keep
    /// their connection until deleted).
    Remove {
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn source(command: SourceCommand) -> anyhow::Result<()> {
    match command {
        SourceCommand::Add {
            org,
            name,
            url,
            json,
            store,
        } => {
            let (control, _, _) = crate::control(&store).await?;
            let s = control
                .add_source(&org, &name, &url)
                .await
                .map_err(print_error)?;
            if json {
                println!("{}", json!({"name": s.name, "url": s.url_shown}));
            } else {
                println!("source {} of organization {org}: {}", s.name, s.url_shown);
            }
        }
        SourceCommand::List { org, json, store } => {
            let (control, _, _) = crate::control(&store).await?;
            let all = control.list_sources(&org).await.map_err(print_error)?;
            if json {
                let list: Vec<_> = all
                    .iter()
                    .map(|s| json!({"name": s.name, "url": s.url_shown}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for s in &all {
                    println!("{}\t{}", s.name, s.url_shown);
                }
            }
        }
        SourceCommand::Remove { org, name, store } => {
            let (control, _, _) = crate::control(&store).await?;
            control
                .remove_source(&org, &name)
                .await
                .map_err(print_error)?;
            println!("source {name} of organization {org} removed");
        }
    }
    Ok(())
}
