//! `sluice job …`: persistent table import jobs from a `job.toml`.
//!
//! ```toml
//! name = "orders"
//! source = "postgres://app:${ORDERS_PASSWORD}@db/shop"   # ${VAR} from the environment
//! table = "sales.orders"
//! destination = "postgres://warehouse/analytics"         # default: the embedded warehouse
//! target = "orders"
//! mode = "incremental"                                   # or "merge" (with key), "destructive"
//!
//! [schema]                     # the Arize-style importer's mapping; leave out to load every column
//! predictionId = "order_id"
//! timestamp = "ordered_at"
//! features = "feature_"        # a prefix: every column starting with it
//! exclude = ["feature_secret"]
//! changeTimestamp = "updated_at"
//!
//! [ingestion]
//! rowLimit = 50000
//! refreshIntervalMinutes = 60
//! queryWindowSizeHours = 24
//! ```

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_domain::time;
use sluice_domain::*;
use sluice_engine::control::{Control, JobChange, NewJob, Validation};
use sluice_store::JobFilter;

use crate::{print_error, Bar, EngineArgs, StoreArgs};

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum JobCommand {
    /// Create a job from a job.toml (validated against the source first;
    /// nothing is stored when it does not validate).
    Create {
        /// The job.toml to read.
        #[arg(long)]
        file: PathBuf,
        /// Validate only: connect, check the table, the mapping and the
        /// types, and write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        common: Common,
    },
    /// An organization's jobs.
    List {
        /// Deleted jobs too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        common: Common,
    },
    /// One job.
    Show {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Change a job's mapping, ingestion parameters, mode or name from a
    /// job.toml (its connections and tables stay).
    Update {
        id: String,
        /// The job.toml to read.
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Query a job now, here: its next window, or [--start, --end) (the
    /// rows there are replaced). With --detach, leave it to the server.
    Run {
        id: String,
        /// The start of a window to load again by hand, [START, END)
        /// (e.g. 2024-08-20T01:00:00Z): its rows in the target are replaced.
        #[arg(long, requires = "end")]
        start: Option<String>,
        /// The end (exclusive) of the window --start begins.
        #[arg(long, requires = "start")]
        end: Option<String>,
        /// Queue the query for the server instead of running it here.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// A job's queries, newest first.
    Queries {
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        common: Common,
    },
    /// A query's tasks: extract, consolidate, load, complete.
    Tasks {
        query: String,
        #[command(flatten)]
        common: Common,
    },
    /// Cancel a query (a running load rolls back).
    Cancel {
        query: String,
        #[command(flatten)]
        common: Common,
    },
    /// Stop making queries (waiting ones are cancelled).
    Pause {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Make queries again; the next one is due at once.
    Resume {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a job: no more queries; it stays readable as deleted.
    Delete {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// The organization the job belongs to.
    #[arg(long, env = "SLUICE_ORG")]
    org: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// A job.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: Option<String>,
    #[serde(default)]
    space: String,
    source: Option<String>,
    table: Option<String>,
    destination: Option<String>,
    target: Option<String>,
    mode: Option<LoadMode>,
    change_column: Option<String>,
    key: Option<String>,
    schema: Option<Mapping>,
    ingestion: Option<IngestionParams>,
    labels: Option<BTreeMap<String, Value>>,
}

/// `${VAR}` replaced by the environment's value (secrets stay out of files).
fn expand(field: &str, s: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            bail!("{field}: `${{` without a closing `}}`");
        };
        let var = &rest[i + 2..i + j];
        let val = std::env::var(var)
            .with_context(|| format!("{field}: environment variable {var} is not set"))?;
        out.push_str(&val);
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn read_file(path: &PathBuf) -> anyhow::Result<JobFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn job_json(job: &ImportJob, counts: (i64, i64, i64)) -> Value {
    json!({
        "id": job.id,
        "name": job.name,
        "status": job.status.as_str(),
        "space": job.space,
        "source": job.source_shown,
        "table": job.spec.table,
        "destination": job.destination_shown,
        "target": job.spec.target,
        "mode": job.spec.mode.as_str(),
        "change_column": job.spec.change_column(),
        "key": job.spec.key(),
        "schema": job.spec.mapping,
        "ingestion": job.spec.ingestion,
        "labels": job.spec.labels,
        "next_query_at": job.next_query_at.map(|t| time::format(&t)),
        "created_at": time::format(&job.created_at),
        "modified_at": time::format(&job.modified_at),
        "queries": {"succeeded": counts.0, "failed": counts.1, "pending": counts.2},
    })
}

fn query_json(q: &Query) -> Value {
    json!({
        "id": q.id,
        "job_id": q.job_id,
        "status": q.status.as_str(),
        "trigger": q.trigger.as_str(),
        "requested_start": q.requested.as_ref().map(|r| &r.0),
        "requested_end": q.requested.as_ref().map(|r| &r.1),
        "window_start": q.window_start,
        "window_end": q.window_end,
        "records": q.records,
        "error": q.error,
        "attempt": q.attempt,
        "created_at": time::format(&q.created_at),
        "started_at": q.started_at.map(|t| time::format(&t)),
        "finished_at": q.finished_at.map(|t| time::format(&t)),
    })
}

fn print_diagnostics(v: &Validation) {
    for d in &v.diagnostics {
        let mut line = format!("  {}: {}", d.code, d.message);
        if let Some(s) = &d.sample {
            line.push_str(&format!(" (a value: {s:?})"));
        }
        eprintln!("{line}");
    }
}

fn validation_json(v: &Validation) -> Value {
    json!({
        "valid": v.ok(),
        "columns": v.columns,
        "diagnostics": v.diagnostics,
    })
}

fn print_job(job: &ImportJob, counts: (i64, i64, i64)) {
    println!(
        "{}  {}  {}  {}.{} -> {}  every {} min  queries: {} ok, {} failed, {} pending",
        job.id,
        job.status.as_str(),
        job.name,
        job.source_shown,
        job.spec.table,
        job.spec.target,
        job.spec.ingestion.refresh().as_secs() / 60,
        counts.0,
        counts.1,
        counts.2
    );
}

fn print_query(q: &Query) {
    let window = match (&q.window_start, &q.window_end) {
        (Some(a), Some(b)) => format!("({a}, {b}]"),
        (None, Some(b)) => format!("up to {b}"),
        _ => "-".into(),
    };
    println!(
        "{}  {:<9}  {:<8}  {} records  window {window}  {}{}",
        q.id,
        q.status.as_str(),
        q.trigger.as_str(),
        q.records,
        time::format(&q.created_at),
        q.error
            .as_ref()
            .map(|e| format!("  error: {e}"))
            .unwrap_or_default()
    );
}

async fn open(common: &Common) -> anyhow::Result<(Arc<Control>, OrganizationId)> {
    let (control, _, _) = crate::control(&common.store).await?;
    let org = OrganizationId::parse(&common.org)?;
    control.organization(&org).await.map_err(print_error)?;
    Ok((control, org))
}

pub async fn run(command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Create {
            file,
            dry_run,
            common,
        } => {
            let f = read_file(&file)?;
            let need = |v: Option<String>, what: &str| {
                v.filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| anyhow::anyhow!("{}: `{what}` is missing", file.display()))
            };
            // Paths in URLs mean what they mean here, stored absolute.
            let source = crate::absolute_url(&expand("source", &need(f.source, "source")?)?)?;
            let destination = f
                .destination
                .map(|d| crate::absolute_url(&expand("destination", &d)?))
                .transpose()?;
            let spec = JobSpec {
                table: need(f.table, "table")?,
                target: need(f.target, "target")?,
                mode: f.mode.unwrap_or_default(),
                change_column: f.change_column,
                key: f.key,
                mapping: f.schema.unwrap_or_default(),
                ingestion: f.ingestion.unwrap_or_default(),
                labels: f.labels.unwrap_or_default(),
            };
            let (control, org) = open(&common).await?;
            let new = NewJob {
                name: f.name.unwrap_or_default(),
                space: f.space,
                source,
                destination,
                spec,
                number_taken_target: false,
            };
            let (job, v) = control
                .create_job(&org, new, dry_run)
                .await
                .map_err(print_error)?;
            if common.json {
                let mut out = validation_json(&v);
                if let Some(job) = &job {
                    out["job"] = job_json(job, (0, 0, 0));
                }
                println!("{out}");
            } else if let Some(job) = &job {
                println!("created job {} ({})", job.id, job.name);
            } else if v.ok() {
                println!(
                    "valid: {} columns would load: {}",
                    v.columns.len(),
                    v.columns.join(", ")
                );
            }
            if !v.ok() {
                if !common.json {
                    eprintln!(
                        "{}",
                        if job.is_some() {
                            "the job is stored, but:"
                        } else {
                            "the job does not validate (nothing was stored):"
                        }
                    );
                    print_diagnostics(&v);
                }
                if job.is_none() {
                    std::process::exit(1);
                }
            }
        }
        JobCommand::List { all, common } => {
            let (control, org) = open(&common).await?;
            let filter = JobFilter {
                organization: org,
                space: None,
                search: None,
                include_deleted: all,
            };
            let mut after = None;
            let mut out = Vec::new();
            loop {
                let page = control
                    .list_jobs(
                        &filter,
                        PageRequest {
                            after,
                            forward: true,
                            limit: 500,
                        },
                    )
                    .await
                    .map_err(print_error)?;
                for job in page.items {
                    let counts = control.query_counts(&job.id).await.map_err(print_error)?;
                    if common.json {
                        out.push(job_json(&job, counts));
                    } else {
                        print_job(&job, counts);
                    }
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            if common.json {
                println!("{}", Value::Array(out));
            }
        }
        JobCommand::Show { id, common } => {
            let (control, org) = open(&common).await?;
            let job = control.get_job(&org, &id).await.map_err(print_error)?;
            let counts = control.query_counts(&job.id).await.map_err(print_error)?;
            if common.json {
                println!("{}", job_json(&job, counts));
            } else {
                print_job(&job, counts);
            }
        }
        JobCommand::Update { id, file, common } => {
            let f = read_file(&file)?;
            if f.source.is_some()
                || f.table.is_some()
                || f.destination.is_some()
                || f.target.is_some()
            {
                bail!(
                    "{}: a job's source, table, destination and target cannot change; \
                     create a new job instead",
                    file.display()
                );
            }
            let (control, org) = open(&common).await?;
            let change = JobChange {
                name: f.name,
                mapping: f.schema,
                ingestion: f.ingestion,
                mode: f.mode,
                labels: f.labels,
            };
            let (job, v) = control
                .update_job(&org, &id, change)
                .await
                .map_err(print_error)?;
            if !v.accepts() {
                if common.json {
                    println!("{}", validation_json(&v));
                } else {
                    eprintln!("the change does not validate (nothing was saved):");
                    print_diagnostics(&v);
                }
                std::process::exit(1);
            }
            let counts = control.query_counts(&job.id).await.map_err(print_error)?;
            if common.json {
                println!("{}", job_json(&job, counts));
            } else {
                println!("updated job {}", job.id);
            }
        }
        JobCommand::Run {
            id,
            start,
            end,
            detach,
            common,
            engine,
        } => {
            let (control, org) = open(&common).await?;
            let window = start.zip(end);
            if detach {
                let q = control
                    .run_job(&org, &id, window, None)
                    .await
                    .map_err(print_error)?;
                if common.json {
                    println!("{}", query_json(&q));
                } else {
                    println!("query {} queued", q.id);
                }
                return Ok(());
            }
            let data_dir = crate::absolute(&common.store.data_dir)?;
            let config = engine.config(data_dir)?;
            let importer = control.importer(&config, format!("cli-{}", std::process::id()));
            let q = control
                .run_job(
                    &org,
                    &id,
                    window,
                    Some((importer.name(), importer.lease_ttl())),
                )
                .await
                .map_err(print_error)?;
            let mut bar = Bar {
                started: Instant::now(),
                on_terminal: std::io::stderr().is_terminal() && !common.json,
            };
            let status = importer.execute(q.clone(), &mut bar).await;
            if bar.on_terminal {
                eprintln!();
            }
            let q = control
                .get_query(&org, q.id.as_str())
                .await
                .map_err(print_error)?;
            if common.json {
                println!("{}", query_json(&q));
            } else {
                print_query(&q);
            }
            if status != RunStatus::Succeeded {
                std::process::exit(1);
            }
        }
        JobCommand::Queries { id, limit, common } => {
            let (control, org) = open(&common).await?;
            let page = control
                .list_queries(
                    &org,
                    &id,
                    PageRequest {
                        after: None,
                        forward: false,
                        limit: limit.clamp(1, 10_000),
                    },
                )
                .await
                .map_err(print_error)?;
            if common.json {
                println!(
                    "{}",
                    Value::Array(page.items.iter().map(query_json).collect())
                );
            } else {
                for q in &page.items {
                    print_query(q);
                }
            }
        }
        JobCommand::Tasks { query, common } => {
            let (control, org) = open(&common).await?;
            let tasks = control
                .query_tasks(&org, &query)
                .await
                .map_err(print_error)?;
            if common.json {
                println!("{}", serde_json::to_value(&tasks)?);
            } else {
                for t in &tasks {
                    println!(
                        "{} {:<11} {:<9} {} records  {}",
                        t.seq, t.name, t.status, t.records, t.table
                    );
                    for m in &t.messages {
                        println!("    {m}");
                    }
                }
            }
        }
        JobCommand::Cancel { query, common } => {
            let (control, org) = open(&common).await?;
            let q = control
                .cancel_query(&org, &query)
                .await
                .map_err(print_error)?;
            if common.json {
                println!("{}", query_json(&q));
            } else {
                print_query(&q);
            }
        }
        JobCommand::Pause { id, common } => status(&id, common, JobStatus::Paused).await?,
        JobCommand::Resume { id, common } => status(&id, common, JobStatus::Active).await?,
        JobCommand::Delete { id, common } => status(&id, common, JobStatus::Deleted).await?,
    }
    Ok(())
}

async fn status(id: &str, common: Common, status: JobStatus) -> anyhow::Result<()> {
    let (control, org) = open(&common).await?;
    let job = control
        .set_job_status(&org, id, status)
        .await
        .map_err(print_error)?;
    let counts = control.query_counts(&job.id).await.map_err(print_error)?;
    if common.json {
        println!("{}", job_json(&job, counts));
    } else {
        println!("job {} is {}", job.id, job.status.as_str());
    }
    Ok(())
}
