//! `sluice source …`: the sources an organization's jobs may read when
//! they are made through the API (the GraphQL face) — the administrator's
//! own commands may name any source but sluice's own data — and HTTP API
//! sources (dlt's `rest_api` configuration) with their runs.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sluice_api::api_runs::{detail_json, durations_json, run_json, source_json, task_json};
use sluice_domain::api_source::{status_label, RunType};
use sluice_domain::RunStatus;
use sluice_engine::control::{ApiRunView, ApiRunsQuery, Control};

use crate::{print_error, EngineArgs, StoreArgs};

/// What every API source command takes.
#[derive(Args, Clone)]
pub struct Common {
    /// The organization (env SLUICE_ORG).
    #[arg(long, env = "SLUICE_ORG")]
    org: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

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
    /// An organization's sources — databases and folders, and HTTP API
    /// sources — passwords and secrets hidden.
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
    /// Make an HTTP API source from a file (JSON or TOML): dlt's rest_api
    /// configuration (client, resource_defaults, resources) with `name`,
    /// `destination` (a declared warehouse; default: embedded) and
    /// `dataset`. Secrets are sealed at rest and never shown again.
    Create {
        /// The source file: JSON, or TOML (`.toml`).
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Replace an HTTP API source's file (runs keep what they ran).
    Update {
        /// The source file: JSON, or TOML (`.toml`); its `name` names the
        /// source it replaces.
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// An HTTP API source, its secrets hidden.
    Show {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete an HTTP API source and its runs' records (not while a run of
    /// it is active; its tables stay in the warehouse).
    Delete {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Run an HTTP API source: extraction, consolidation, ingestion. The
    /// run is executed by this command (a progress display on a terminal)
    /// or, with --detach, by a server or worker.
    Run {
        /// The API source's name.
        source: String,
        /// A destructive run: every table replaced (else incremental).
        #[arg(long)]
        destructive: bool,
        /// Only make the run; a server or worker executes it.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// The runs of an HTTP API source, filtered and sorted.
    Runs {
        /// The API source's name.
        source: String,
        /// incremental or destructive.
        #[arg(long = "type")]
        run_type: Option<String>,
        /// A status (Failed, Waiting to start, … or FAILED, RUNNABLE, …).
        #[arg(long)]
        status: Option<String>,
        /// id, type, status, created, started, finished, duration,
        /// records, tables or messages.
        #[arg(long)]
        sort: Option<String>,
        /// Ascending (default: descending).
        #[arg(long)]
        asc: bool,
        /// Runs shown at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        common: Common,
    },
    /// A run: its tasks, tables with their columns and record counts, and
    /// messages.
    RunShow {
        /// The run's id (its number).
        run: String,
        #[command(flatten)]
        common: Common,
    },
    /// Cancel a run: at once while it waits to start, else Canceling …
    /// until its work has stopped. Live tables stay as they were.
    Cancel {
        /// The run's id (its number).
        run: String,
        #[command(flatten)]
        common: Common,
    },
    /// Retry a run: only the most recent run of its source, only when it
    /// failed or was cancelled. The new run is executed by a server or
    /// worker (--detach) or here.
    Retry {
        /// The run's id (its number).
        run: String,
        /// Only make the new run; a server or worker executes it.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// A run's tasks that TEXT finds: an acronym of the task name (`mc`:
    /// metadata_consolidation), the name containing it, the status
    /// starting with it, the table or a message containing it.
    Search {
        /// The run's id (its number).
        run: String,
        text: String,
        #[command(flatten)]
        common: Common,
    },
    /// How long completed runs of a source took (p50, p95), incremental
    /// and destructive apart.
    Durations {
        /// The API source's name.
        source: String,
        /// The last N completed runs of each type.
        #[arg(long, default_value_t = 20)]
        last: usize,
        #[command(flatten)]
        common: Common,
    },
}

/// A source file: JSON, or TOML (by its extension, or when it is not JSON).
fn read_source_file(path: &std::path::Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let toml_first = path.extension().is_some_and(|e| e == "toml");
    if !toml_first {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            return Ok(v);
        }
    }
    match toml::from_str::<toml::Value>(&text) {
        Ok(t) => Ok(serde_json::to_value(t)?),
        Err(e) if toml_first => anyhow::bail!("{}: not TOML: {e}", path.display()),
        Err(_) => {
            let e = serde_json::from_str::<Value>(&text).expect_err("not JSON");
            anyhow::bail!("{}: neither JSON ({e}) nor TOML", path.display())
        }
    }
}

fn print_run_line(v: &Value) {
    println!(
        "run {}\t{}\t{}\t{} record(s)\t{} table(s)",
        v["id"],
        v["type"].as_str().unwrap_or(""),
        v["status_label"].as_str().unwrap_or(""),
        v["records"],
        v["tables"]
    );
}

/// Executes run `id` here (or follows it when a server has it), showing
/// progress on a terminal; prints its end and exits 1 unless it completed.
async fn execute(
    control: &Control,
    common: &Common,
    engine: &EngineArgs,
    id: &str,
) -> anyhow::Result<()> {
    let data_dir = crate::absolute(&common.store.data_dir)?;
    let config = engine.config(data_dir)?;
    let runner = control.api_runner(&config, format!("cli-{}", std::process::id()));
    let on_terminal = std::io::stderr().is_terminal() && !common.json;
    let org = common.org.clone();
    let watch = async {
        let mut shown = std::collections::BTreeMap::new();
        loop {
            if on_terminal {
                if let Ok(d) = control.api_run(&org, id).await {
                    for t in &d.tasks {
                        let line = format!(
                            "  {:<24} {:<22} {:<18} {:>10} record(s)",
                            t.name,
                            t.table.as_deref().unwrap_or(""),
                            status_label(t.status),
                            t.records
                        );
                        if shown.get(&t.position) != Some(&line) {
                            eprintln!("{line}");
                            shown.insert(t.position, line);
                        }
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    };
    let work = async {
        if !runner
            .run_one(id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            // A server or worker has it: follow it to its end.
            loop {
                let r = control.api_run(&org, id).await.map_err(print_error)?;
                if r.run.status.is_final() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::select! {
        done = work => done?,
        _ = watch => {}
    }
    let d = control.api_run(&org, id).await.map_err(print_error)?;
    if common.json {
        println!("{}", detail_json(&d));
    } else {
        println!(
            "run {} of {}: {}, {} record(s) in {} table(s){}",
            d.run.id,
            d.run.source,
            status_label(d.run.status),
            d.run.records,
            d.run.tables,
            d.run
                .error
                .as_deref()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
    }
    if d.run.status != RunStatus::Succeeded {
        std::process::exit(1);
    }
    Ok(())
}

enum Kind {
    Update,
    Other,
}

pub async fn source(command: SourceCommand) -> anyhow::Result<()> {
    let command_kind = match &command {
        SourceCommand::Update { .. } => Kind::Update,
        _ => Kind::Other,
    };
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
            let apis = control.api_sources(&org).await.map_err(print_error)?;
            if json {
                let list: Vec<_> = all
                    .iter()
                    .map(|s| json!({"name": s.name, "kind": "database", "url": s.url_shown}))
                    .chain(apis.iter().map(|s| {
                        let mut v = source_json(s);
                        v["kind"] = json!("api");
                        v
                    }))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for s in &all {
                    println!("{}\tdatabase\t{}", s.name, s.url_shown);
                }
                for s in &apis {
                    println!(
                        "{}\tapi\t{} of {}",
                        s.name,
                        s.dataset,
                        s.destination.as_deref().unwrap_or("embedded")
                    );
                }
            }
        }
        SourceCommand::Create { file, common } | SourceCommand::Update { file, common } => {
            let replace = matches!(command_kind, Kind::Update);
            let doc = read_source_file(&file)?;
            let (control, _, _) = crate::control(&common.store).await?;
            let s = control
                .put_api_source(&common.org, &doc, replace)
                .await
                .map_err(print_error)?;
            if common.json {
                println!("{}", source_json(&s));
            } else {
                println!(
                    "API source {} {} (tables in dataset {} of {})",
                    s.name,
                    if replace { "updated" } else { "created" },
                    s.dataset,
                    s.destination.as_deref().unwrap_or("the embedded warehouse")
                );
            }
        }
        SourceCommand::Show { name, common } => {
            let (control, _, _) = crate::control(&common.store).await?;
            let s = control
                .api_source(&common.org, &name)
                .await
                .map_err(print_error)?;
            let v = source_json(&s);
            if common.json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        SourceCommand::Delete { name, common } => {
            let (control, _, _) = crate::control(&common.store).await?;
            control
                .delete_api_source(&common.org, &name)
                .await
                .map_err(print_error)?;
            if common.json {
                println!("{}", json!({"deleted": name}));
            } else {
                println!("API source {name} deleted");
            }
        }
        SourceCommand::Run {
            source,
            destructive,
            detach,
            common,
            engine,
        } => {
            let (control, _, _) = crate::control(&common.store).await?;
            let run_type = if destructive {
                RunType::Destructive
            } else {
                RunType::Incremental
            };
            let run = control
                .start_api_run(&common.org, &source, run_type)
                .await
                .map_err(print_error)?;
            if run.status == RunStatus::Rejected || detach {
                let v = run_json(&ApiRunView {
                    messages: i64::from(run.error.is_some()),
                    run: run.clone(),
                });
                if common.json {
                    println!("{v}");
                } else {
                    print_run_line(&v);
                }
                if run.status == RunStatus::Rejected {
                    std::process::exit(1);
                }
                return Ok(());
            }
            execute(&control, &common, &engine, &run.id).await?;
        }
        SourceCommand::Runs {
            source,
            run_type,
            status,
            sort,
            asc,
            limit,
            common,
        } => {
            let (control, _, _) = crate::control(&common.store).await?;
            let q = ApiRunsQuery {
                run_type,
                status,
                sort,
                ascending: asc,
                limit: Some(limit),
                after: None,
            };
            let runs = control
                .api_runs(&common.org, &source, &q)
                .await
                .map_err(print_error)?;
            let list: Vec<Value> = runs.runs.iter().map(run_json).collect();
            if common.json {
                println!("{}", Value::Array(list));
            } else {
                for v in &list {
                    print_run_line(v);
                }
            }
        }
        SourceCommand::RunShow { run, common } => {
            let (control, _, _) = crate::control(&common.store).await?;
            let d = control
                .api_run(&common.org, &run)
                .await
                .map_err(print_error)?;
            let v = detail_json(&d);
            if common.json {
                println!("{v}");
            } else {
                print_run_line(&v);
                for t in &d.tasks {
                    println!(
                        "  {:<24} {:<22} {:<18} {:>10} record(s)  {}",
                        t.name,
                        t.table.as_deref().unwrap_or(""),
                        status_label(t.status),
                        t.records,
                        t.messages.join(" | ")
                    );
                }
                for t in &d.tables {
                    let cols: Vec<String> = t
                        .columns
                        .iter()
                        .map(|(n, ty)| format!("{n} {ty}"))
                        .collect();
                    println!(
                        "  table {} ({} record(s)): {}",
                        t.table,
                        t.records,
                        cols.join(", ")
                    );
                }
                if let Some(e) = &d.run.error {
                    println!("  {e}");
                }
            }
        }
        SourceCommand::Cancel { run, common } => {
            let (control, _, _) = crate::control(&common.store).await?;
            let status = control
                .cancel_api_run(&common.org, &run)
                .await
                .map_err(print_error)?;
            if common.json {
                println!(
                    "{}",
                    json!({"id": run, "status": status.as_str(), "status_label": status_label(status)})
                );
            } else {
                println!("run {run}: {}", status_label(status));
            }
        }
        SourceCommand::Retry {
            run,
            detach,
            common,
            engine,
        } => {
            let (control, _, _) = crate::control(&common.store).await?;
            let new = control
                .retry_api_run(&common.org, &run)
                .await
                .map_err(print_error)?;
            if detach || new.status == RunStatus::Rejected {
                let v = run_json(&ApiRunView {
                    messages: 0,
                    run: new,
                });
                if common.json {
                    println!("{v}");
                } else {
                    print_run_line(&v);
                }
                return Ok(());
            }
            execute(&control, &common, &engine, &new.id).await?;
        }
        SourceCommand::Search { run, text, common } => {
            let (control, _, _) = crate::control(&common.store).await?;
            let tasks = control
                .search_api_run(&common.org, &run, &text)
                .await
                .map_err(print_error)?;
            if common.json {
                println!("{}", Value::Array(tasks.iter().map(task_json).collect()));
            } else {
                for t in &tasks {
                    println!(
                        "{}\t{}\t{}\t{}",
                        t.name,
                        t.table.as_deref().unwrap_or(""),
                        status_label(t.status),
                        t.messages.join(" | ")
                    );
                }
            }
        }
        SourceCommand::Durations {
            source,
            last,
            common,
        } => {
            let (control, _, _) = crate::control(&common.store).await?;
            let d = control
                .api_run_durations(&common.org, &source, last)
                .await
                .map_err(print_error)?;
            if common.json {
                println!("{}", durations_json(&d));
            } else {
                for x in &d {
                    let f = |v: Option<f64>| {
                        v.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into())
                    };
                    println!(
                        "{}\t{} run(s)\tp50 {}\tp95 {}\tlast {}",
                        x.run_type,
                        x.runs,
                        f(x.p50_secs),
                        f(x.p95_secs),
                        f(x.last_completed_secs)
                    );
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
