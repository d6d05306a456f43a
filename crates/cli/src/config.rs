//! `sluice config …` and `sluice warehouse …`: the Tailer-style action
//! API's configurations (Tailer's `tailer deploy configuration`) and the
//! warehouses their Google Cloud project names stand for.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use sluice_domain::action;
use sluice_engine::control::ConfigurationFiles;

use crate::{print_error, StoreArgs};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Deploy a configuration file (table-to-table or context): the SQL
    /// and DDL files it names are read beside it, a context's constants
    /// substituted. Deploying an id again replaces it; runs keep the
    /// version they ran.
    Deploy {
        /// The configuration file (JSON).
        file: std::path::PathBuf,
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// The context whose constants it uses (NO_CONTEXT: none).
        #[arg(long)]
        context: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// An organization's configurations (archived ones with --archived).
    List {
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// List archived configurations too.
        #[arg(long)]
        archived: bool,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// A configuration as deployed (its current version).
    Show {
        /// Its id as the action API names it (`<configuration_id>_<ENV>`).
        id: String,
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// A configuration's switches and its latest runs with their tasks.
    Status {
        id: String,
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// How many of its latest runs to show.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The connections configurations name: warehouses (`gcp_project_id`)
/// and buckets (`gcs_dest_bucket`).
#[derive(Subcommand)]
pub enum NamedCommand {
    /// Declare what a name configurations use stands for: a warehouse is
    /// `embedded` or postgres://USER[:PASSWORD]@HOST[:PORT]/DB (its user must
    /// be able to create roles and schemas); a bucket is `local` (a folder of
    /// the organization's under the data dir), file:///FOLDER or
    /// s3://BUCKET/PREFIX. Sealed at rest; replaces one of the same name.
    Add {
        /// The name configurations use.
        name: String,
        /// What it stands for (see above).
        url: String,
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// An organization's, passwords hidden.
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
    /// Take one back: configurations naming it fail until it is declared
    /// again.
    Remove {
        name: String,
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Which kind of named connection a command acts on.
#[derive(Clone, Copy)]
pub enum Named {
    Warehouse,
    Bucket,
}

impl Named {
    fn word(self) -> &'static str {
        match self {
            Named::Warehouse => "warehouse",
            Named::Bucket => "bucket",
        }
    }
}

pub async fn named(kind: Named, command: NamedCommand) -> anyhow::Result<()> {
    match command {
        NamedCommand::Add {
            name,
            url,
            org,
            store,
        } => {
            let (control, _, _) = crate::control(&store).await?;
            let added = match kind {
                Named::Warehouse => control.add_warehouse(&org, &name, &url).await,
                Named::Bucket => control.add_bucket(&org, &name, &url).await,
            }
            .map_err(print_error)?;
            println!(
                "{} {} of {org}: {}",
                kind.word(),
                added.name,
                added.url_shown
            );
        }
        NamedCommand::List { org, json, store } => {
            let (control, _, _) = crate::control(&store).await?;
            let list = match kind {
                Named::Warehouse => control.warehouses(&org).await,
                Named::Bucket => control.buckets(&org).await,
            }
            .map_err(print_error)?;
            if json {
                let out: Vec<_> = list
                    .iter()
                    .map(|c| json!({"name": c.name, "url": c.url_shown}))
                    .collect();
                println!("{}", serde_json::Value::Array(out));
            } else {
                for c in list {
                    println!("{:<24} {}", c.name, c.url_shown);
                }
            }
        }
        NamedCommand::Remove { name, org, store } => {
            let (control, _, _) = crate::control(&store).await?;
            match kind {
                Named::Warehouse => control.remove_warehouse(&org, &name).await,
                Named::Bucket => control.remove_bucket(&org, &name).await,
            }
            .map_err(print_error)?;
            println!("{} {name} of {org} removed", kind.word());
        }
    }
    Ok(())
}

/// Reads a configuration file and the files it names, beside it.
fn read_files(file: &Path) -> anyhow::Result<ConfigurationFiles> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut files = BTreeMap::new();
    if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) {
        let folder = file.parent().unwrap_or(Path::new("."));
        for name in action::files_named(&doc) {
            // A name with constants in it is read once they are known: the
            // control layer names it missing otherwise.
            if let Ok(t) = std::fs::read_to_string(folder.join(&name)) {
                files.insert(name, t);
            }
        }
    }
    Ok(ConfigurationFiles { text, files })
}

pub async fn config(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Deploy {
            file,
            org,
            context,
            json,
            store,
        } => {
            let files = read_files(&file)?;
            let (control, _, _) = crate::control(&store).await?;
            let c = control
                .deploy_configuration(&org, &files, context.as_deref())
                .await
                .map_err(print_error)?;
            if json {
                println!(
                    "{}",
                    json!({"id": c.api_id, "configuration_type": c.configuration_type,
                           "version": c.version, "job_id": job_id(&c)})
                );
            } else {
                println!("Configuration successfully deployed with ID : {}", c.api_id);
                if let Some(job) = job_id(&c) {
                    println!("job id : {job} (version {})", c.version);
                }
            }
        }
        ConfigCommand::List {
            org,
            archived,
            json,
            store,
        } => {
            let (control, _, _) = crate::control(&store).await?;
            let mut list = control
                .list_configurations(&org)
                .await
                .map_err(print_error)?;
            list.retain(|c| archived || !c.archived);
            if json {
                let out: Vec<_> = list
                    .iter()
                    .map(|c| {
                        json!({"id": c.api_id, "configuration_type": c.configuration_type,
                               "environment": c.environment, "version": c.version,
                               "activated": c.activated, "archived": c.archived})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(out));
            } else {
                for c in list {
                    println!(
                        "{:<16} {:<48} v{:<3} {}{}",
                        c.configuration_type,
                        c.api_id,
                        c.version,
                        if c.activated { "activated" } else { "disabled" },
                        if c.archived { ", archived" } else { "" }
                    );
                }
            }
        }
        ConfigCommand::Show { id, org, store } => {
            let (control, _, _) = crate::control(&store).await?;
            let c = control
                .configuration_named(&org, &id)
                .await
                .map_err(print_error)?;
            println!("{}", serde_json::to_string_pretty(&c.body)?);
        }
        ConfigCommand::Status {
            id,
            org,
            runs,
            json,
            store,
        } => {
            let (control, _, _) = crate::control(&store).await?;
            let c = control
                .configuration_named(&org, &id)
                .await
                .map_err(print_error)?;
            if c.configuration_type == action::WORKFLOW {
                let state = control.workflow_of(&c).await.map_err(print_error)?;
                let w = &state.workflow;
                if json {
                    let jobs: serde_json::Map<String, serde_json::Value> = state
                        .awaited
                        .iter()
                        .map(|(j, r)| (j.clone(), json!(u8::from(r.is_some()))))
                        .collect();
                    println!(
                        "{}",
                        json!({"id": c.api_id, "version": c.version, "activated": c.activated,
                               "archived": c.archived, "authorized_job_ids": jobs,
                               "target_dag": {"configuration_type": w.target_type,
                                              "configuration_id": w.target_id}})
                    );
                } else {
                    println!(
                        "workflow {} (v{}): {}{}, fires {}",
                        c.api_id,
                        c.version,
                        if c.activated { "activated" } else { "disabled" },
                        if c.archived { ", archived" } else { "" },
                        w.target_id
                    );
                    for (job, run) in &state.awaited {
                        println!(
                            "  {job} ({}){}",
                            u8::from(run.is_some()),
                            run.as_ref()
                                .map(|r| format!("  run {r}"))
                                .unwrap_or_default()
                        );
                    }
                }
                return Ok(());
            }
            let list = control.runs_of(&c, runs, None).await.map_err(print_error)?;
            let mut out = Vec::new();
            for r in &list {
                let tasks = control.action_tasks(&r.id).await.map_err(print_error)?;
                out.push((r, tasks));
            }
            if json {
                let runs: Vec<_> = out
                    .iter()
                    .map(|(r, tasks)| {
                        json!({"run_id": r.id, "status": r.action_status().as_str(),
                               "run_status": r.status.as_str(), "attempt": r.attempt,
                               "execution_date": r.execution_date.to_string(),
                               "error": r.error, "tasks": tasks})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"id": c.api_id, "version": c.version, "activated": c.activated,
                           "archived": c.archived, "runs": runs})
                );
            } else {
                println!(
                    "{} (v{}): {}{}",
                    c.api_id,
                    c.version,
                    if c.activated { "activated" } else { "disabled" },
                    if c.archived { ", archived" } else { "" }
                );
                for (r, tasks) in out {
                    println!(
                        "run {} {} (attempt {}, {}){}",
                        r.id,
                        r.action_status().as_str(),
                        r.attempt,
                        r.execution_date,
                        r.error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                    for t in tasks {
                        println!(
                            "  {:<32} {:<9} {:>8} rows  {}",
                            t.task_id,
                            t.status,
                            t.rows,
                            t.messages.join("; ")
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn job_id(c: &action::Deployed) -> Option<String> {
    [action::TABLE_TO_TABLE, action::TABLE_TO_STORAGE]
        .contains(&c.configuration_type.as_str())
        .then(|| action::job_id(&c.configuration_type, &c.api_id))
}
