//! `sluice`: one binary whose subcommands are roles and admin commands.
//!
//! - `sluice serve`: API, scheduler and a worker in one process (SQLite by
//!   default; PostgreSQL with `--database-url postgres://…`).
//! - `sluice worker`: a worker (and scheduler) joining a PostgreSQL-backed cluster.
//! - `sluice import`, `sluice job …`: table imports, one-shot and persistent.
//! - `sluice org create`, `sluice user create`, `sluice auth get-token`:
//!   administration against the same store, safe while `serve` runs.

mod config;
mod job;
mod source;
mod space;

use sluice_engine::shutdown::Shutdown;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use sluice_engine::actions::ActionRunner;
use sluice_engine::auth::Keys;
use sluice_engine::blob::Blobs;
use sluice_engine::control::{Control, Settings};
use sluice_engine::importer::Importer;
use sluice_engine::worker::Worker;
use sluice_engine::{dispatcher, scheduler, EngineConfig, Wakers};
use sluice_store::MetadataStore;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A self-hosted data-ingestion control plane and run engine"
)]
struct Cli {
    /// How log lines are written to standard error: `text` (colour codes
    /// only at a terminal) or `json` (one object per line, its fields as
    /// keys, for a log collector).
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone)]
pub(crate) struct StoreArgs {
    /// Where sluice keeps its SQLite metadata, objects and working folders.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// The metadata store: sqlite://FILE or postgres://USER@HOST/DB
    /// (default: sqlite in the data dir). A password here shows in the
    /// process list: give it in SLUICE_DATABASE_URL or --database-url-file.
    #[arg(long, env = "SLUICE_DATABASE_URL")]
    database_url: Option<String>,
    /// A file holding the metadata store's URL (with its password).
    #[arg(
        long,
        env = "SLUICE_DATABASE_URL_FILE",
        conflicts_with = "database_url"
    )]
    database_url_file: Option<PathBuf>,
}

/// The store this process opened, named in every "not found" it prints.
static STORE_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl StoreArgs {
    fn url(&self) -> String {
        self.database_url
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("sluice.db").display()))
    }

    /// Where jobs may read: never sluice's own data (the data dir, the
    /// metadata store); through the API only what `allowed` or a declared
    /// source allows.
    fn sources(&self, admin: bool, allowed: Vec<String>) -> sluice_engine::control::SourcePolicy {
        sluice_engine::control::SourcePolicy {
            allowed,
            private_dirs: std::iter::once(self.data_dir.clone())
                .chain(self.warehouse())
                .collect(),
            store_url: Some(self.url()),
            admin,
        }
    }

    /// The embedded warehouse's folder: each organization's file is in it.
    fn warehouse(&self) -> Option<PathBuf> {
        Some(self.data_dir.join("warehouse"))
    }

    /// Makes every configured path absolute, once, against the folder the
    /// command started in: user code runs in folders of its own, and a
    /// path stored in a job must mean the same thing to the server.
    fn resolved(mut self) -> anyhow::Result<StoreArgs> {
        self.data_dir = absolute(&self.data_dir)?;
        if let Some(file) = self.database_url_file.take() {
            let url = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read --database-url-file {}", file.display()))?;
            self.database_url = Some(url.trim().to_owned());
        } else if let Some(url) = &self.database_url {
            let on_command_line = std::env::args().any(|a| a.starts_with("--database-url"))
                && std::env::var("SLUICE_DATABASE_URL").ok().as_deref() != Some(url.as_str());
            if on_command_line && redact(url) != *url {
                tracing::warn!(
                    "the metadata store's password is on the command line, where every local \
                     user (and user code without a sandbox) can read it: give the URL in \
                     SLUICE_DATABASE_URL or --database-url-file instead"
                );
            }
        }
        if let Some(url) = &self.database_url {
            self.database_url = Some(absolute_sqlite_url(url)?);
        }
        Ok(self)
    }

    /// Opens the store, creating it when it does not exist: for the roles
    /// (`serve`, `worker`).
    async fn create_or_open(&self) -> anyhow::Result<Arc<dyn MetadataStore>> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create the data dir {}", self.data_dir.display()))?;
        self.open_store(true).await
    }

    /// Opens a store that exists: admin commands never make a new empty
    /// one (in the wrong folder, that would only answer "not found").
    async fn open(&self) -> anyhow::Result<Arc<dyn MetadataStore>> {
        self.open_store(false).await
    }

    async fn open_store(&self, create: bool) -> anyhow::Result<Arc<dyn MetadataStore>> {
        let url = self.url();
        let _ = STORE_NAME.set(redact(&url));
        let store = if create {
            sluice_store::open(&url).await
        } else {
            sluice_store::open_existing(&url).await
        };
        let store = store.with_context(|| {
            format!(
                "cannot open the metadata store {}{}",
                redact(&url),
                if create {
                    ""
                } else {
                    " (start `sluice serve` once to create it, or point --data-dir / \
                     SLUICE_DATA_DIR or --database-url at the server's)"
                }
            )
        })?;
        Ok(Arc::new(store))
    }
}

/// `path` made absolute against the current folder (it need not exist).
pub(crate) fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path)
        .with_context(|| format!("cannot resolve the path {}", path.display()))?;
    // Drop `.` parts so the path prints as a user expects.
    Ok(abs.components().collect())
}

/// A `sqlite://` or `file://` URL with its path made absolute; any other
/// URL unchanged.
pub(crate) fn absolute_url(url: &str) -> anyhow::Result<String> {
    match url.strip_prefix("file://") {
        Some(path) if !path.is_empty() => Ok(format!(
            "file://{}",
            absolute(std::path::Path::new(path))?.display()
        )),
        _ => absolute_sqlite_url(url),
    }
}

/// A `sqlite://` URL with its file made absolute; any other URL unchanged.
pub(crate) fn absolute_sqlite_url(url: &str) -> anyhow::Result<String> {
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return Ok(url.to_owned());
    };
    let (file, query) = match rest.split_once('?') {
        Some((f, q)) => (f, format!("?{q}")),
        None => (rest, String::new()),
    };
    if file.is_empty() || file == ":memory:" {
        return Ok(url.to_owned());
    }
    Ok(format!(
        "sqlite://{}{query}",
        absolute(std::path::Path::new(file))?.display()
    ))
}

#[derive(Args, Clone)]
pub(crate) struct EngineArgs {
    /// Runs this process executes at once (default: 8 per core, at least 16).
    #[arg(long, env = "SLUICE_WORKER_SLOTS")]
    worker_slots: Option<usize>,
    /// Action API runs (table-to-table, file moves, exports) this process
    /// executes at once.
    #[arg(long, env = "SLUICE_ACTION_SLOTS", default_value_t = 8)]
    action_slots: usize,
    /// A worker that does not renew its lease for this long loses its runs.
    #[arg(long, env = "SLUICE_LEASE_TTL_SECS", default_value_t = 15)]
    lease_ttl_secs: u64,
    /// How often leases are renewed.
    #[arg(long, env = "SLUICE_HEARTBEAT_MS", default_value_t = 3000)]
    heartbeat_ms: u64,
    /// How often the store is polled for work without a wake-up.
    #[arg(long, env = "SLUICE_POLL_MS", default_value_t = 200)]
    poll_ms: u64,
    /// The first retry waits this long; each next one twice as long.
    #[arg(long, env = "SLUICE_RETRY_BASE_MS", default_value_t = 1000)]
    retry_base_ms: u64,
    /// No retry waits longer than this.
    #[arg(long, env = "SLUICE_RETRY_CAP_MS", default_value_t = 60_000)]
    retry_cap_ms: u64,
    /// An attempt running longer than this is killed and fails.
    #[arg(long, env = "SLUICE_RUN_TIMEOUT_SECS", default_value_t = 3600)]
    run_timeout_secs: u64,
    /// On SIGTERM or SIGINT, work under way has this long (seconds) to
    /// finish before runs still going are handed back to the queue.
    #[arg(
        long = "shutdown-grace",
        env = "SLUICE_SHUTDOWN_GRACE_SECS",
        default_value_t = 30
    )]
    pub(crate) shutdown_grace_secs: u64,
    /// The Python interpreter that runs deployment code.
    #[arg(long, env = "SLUICE_PYTHON", default_value = "python3")]
    python: String,
    /// How a run's process starts: `fork` (from a warm interpreter per code
    /// version that imported the handler's module once) or `fresh` (a new
    /// interpreter per run). See docs/user-code.md.
    #[arg(long, env = "SLUICE_USER_CODE", default_value = "fork", value_parser = ["fork", "fresh"])]
    user_code: String,
    /// Warm interpreters (code versions) one worker keeps at most.
    #[arg(long, env = "SLUICE_WARM_VERSIONS", default_value_t = 16)]
    warm_versions: usize,
    /// A warm interpreter without a run for this long is stopped.
    #[arg(long, env = "SLUICE_WARM_IDLE_SECS", default_value_t = 600)]
    warm_idle_secs: u64,
    /// Where code archives and datalake files live: s3://bucket/prefix
    /// (endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP) or file:///path
    /// (default: the `objects` folder of the data dir).
    #[arg(long, env = "SLUICE_OBJECT_STORE")]
    object_store: Option<String>,
    /// Limit each run's process to this much address space, in MiB.
    #[arg(long, env = "SLUICE_RUN_MEMORY_MB")]
    run_memory_mb: Option<u64>,
    /// Limit each run's process to this many CPU seconds.
    #[arg(long, env = "SLUICE_RUN_CPU_SECONDS")]
    run_cpu_seconds: Option<u64>,
    /// Limit each run's process to this many open files.
    #[arg(long, env = "SLUICE_RUN_OPEN_FILES")]
    run_open_files: Option<u64>,
}

impl EngineArgs {
    pub(crate) fn config(&self, data_dir: PathBuf) -> anyhow::Result<EngineConfig> {
        let mut c = EngineConfig::new(data_dir);
        if let Some(url) = self.object_store.as_deref().filter(|u| !u.is_empty()) {
            let url = match url.strip_prefix("file://") {
                Some(path) => format!("file://{}", absolute(std::path::Path::new(path))?.display()),
                None => url.to_owned(),
            };
            c.blobs = Blobs::open(&url).map_err(anyhow::Error::msg)?;
        }
        c.action_slots = self.action_slots.max(1);
        if let Some(n) = self.worker_slots {
            c.worker_slots = n.max(1);
        }
        c.lease_ttl = Duration::from_secs(self.lease_ttl_secs.max(1));
        c.heartbeat = Duration::from_millis(self.heartbeat_ms.max(10));
        c.poll = Duration::from_millis(self.poll_ms.max(1));
        c.retry.base = Duration::from_millis(self.retry_base_ms);
        c.retry.cap = Duration::from_millis(self.retry_cap_ms);
        c.run_timeout = Duration::from_secs(self.run_timeout_secs.max(1));
        c.python = self.python.clone();
        c.user_code = match self.user_code.as_str() {
            "fresh" => sluice_engine::UserCode::Fresh,
            _ => sluice_engine::UserCode::Fork,
        };
        c.warm_versions = self.warm_versions.max(1);
        c.warm_idle = Duration::from_secs(self.warm_idle_secs.max(1));
        c.limits = sluice_engine::sandbox::Limits {
            memory_bytes: self.run_memory_mb.map(|m| m << 20),
            cpu_seconds: self.run_cpu_seconds,
            open_files: self.run_open_files,
        };
        Ok(c)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, the scheduler and a worker.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        engine: EngineArgs,
        /// Address to listen on.
        #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// The URL clients reach this server at, for pre-signed URLs
        /// (default: the Host of each request).
        #[arg(long, env = "SLUICE_PUBLIC_URL")]
        public_url: Option<String>,
        /// Runs per page of a run list.
        #[arg(long, env = "SLUICE_PAGE_SIZE", default_value_t = 100)]
        page_size: u32,
        /// Events per page of a run's log.
        #[arg(long, env = "SLUICE_LOG_PAGE_SIZE", default_value_t = 100)]
        log_page_size: u32,
        /// The largest file a datalake channel accepts, in bytes.
        #[arg(long, env = "SLUICE_MAX_FILE_BYTES", default_value_t = 256 << 20)]
        max_file_bytes: usize,
        /// Serve the API and schedule runs, but run no code and no import
        /// query in this process (another `serve` or `worker` does).
        #[arg(long)]
        no_worker: bool,
        /// A connection that has not sent a request's headers within this
        /// many milliseconds is closed.
        #[arg(long, env = "SLUICE_HEADER_TIMEOUT_MS", default_value_t = 30_000)]
        header_timeout_ms: u64,
        /// A request whose body pauses longer than this many milliseconds
        /// fails with 408.
        #[arg(long, env = "SLUICE_BODY_TIMEOUT_MS", default_value_t = 60_000)]
        body_timeout_ms: u64,
        /// A source every organization's jobs may read through the API, and
        /// anything under it (repeat it, or separate URLs with commas);
        /// `sluice source add` declares one for a single organization.
        #[arg(long, env = "SLUICE_ALLOW_SOURCES", value_delimiter = ',')]
        allow_source: Vec<String>,
    },
    /// Join a PostgreSQL-backed cluster as a worker (and scheduler).
    Worker {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Organizations.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Users of an organization.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Tokens.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Copy a table from one database into another, exactly once.
    Import(ImportArgs),
    /// Triggers.
    Trigger {
        #[command(subcommand)]
        command: TriggerCommand,
    },
    /// Table import jobs: created from a job.toml, queried on their refresh
    /// interval by `sluice serve`, or by hand.
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// Spaces of an organization (Arize-style).
    Space {
        #[command(subcommand)]
        command: space::SpaceCommand,
    },
    /// API keys for the GraphQL face (`x-api-key`).
    Apikey {
        #[command(subcommand)]
        command: space::ApiKeyCommand,
    },
    /// The Tailer-style action API's configurations: deploy, list, show, status.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// The warehouses the action API's project names stand for.
    Warehouse {
        #[command(subcommand)]
        command: config::NamedCommand,
    },
    /// The object stores the action API's bucket names stand for.
    Bucket {
        #[command(subcommand)]
        command: config::NamedCommand,
    },
    /// Sources: the databases and folders an organization's jobs made
    /// through the API may read (add, remove), and HTTP API sources (dlt's
    /// rest_api configuration) with their runs (create, run, runs, …).
    Source {
        #[command(subcommand)]
        command: source::SourceCommand,
    },
    /// Deployments (administration).
    Deployment {
        #[command(subcommand)]
        command: DeploymentCommand,
    },
    /// Every HTTP route this build serves, and whether it takes credentials.
    Routes {
        /// Print the routes as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ImportArgs {
    /// The source database: postgres://user@host/db, mysql://user@host/db
    /// (or mariadb://), sqlite://path
    #[arg(long = "from")]
    from: String,
    /// The source table: schema.table or table.
    #[arg(long)]
    table: String,
    /// The destination database: postgres://user@host/db or sqlite://path
    /// (default with --org: that organization's embedded warehouse).
    #[arg(long = "to", required_unless_present = "org")]
    to: Option<String>,
    /// Load into this organization's embedded warehouse (when --to is not
    /// given): the file its jobs load into by default.
    #[arg(long, env = "SLUICE_ORG")]
    org: Option<String>,
    /// The data dir whose embedded warehouse --org names.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// The destination table (made with the source's column types when missing).
    #[arg(long)]
    target: String,
    /// incremental (append what passed the change column's watermark),
    /// merge (the same, each row replacing the target's row with its --key)
    /// or destructive (load a new table and swap it in). Default:
    /// incremental with --change-column, else destructive.
    #[arg(long)]
    mode: Option<sluice_datapath::Mode>,
    /// The column whose growth marks new rows.
    #[arg(long)]
    change_column: Option<String>,
    /// The column that identifies a row (--mode merge).
    #[arg(long)]
    key: Option<String>,
    /// The ledger's name for this import (default: "<table> -> <target>").
    #[arg(long)]
    job: Option<String>,
    /// Load at most this many hours of the change column in one run.
    #[arg(long)]
    window_size_hours: Option<f64>,
    /// Load at most about this many rows in one run (rows sharing the last
    /// row's change value come along).
    #[arg(long)]
    row_limit: Option<u64>,
    /// Load the window [START, END) of the change column again, replacing
    /// what the target holds there (e.g. 2024-08-20T01:00:00Z).
    #[arg(long, requires = "end")]
    start: Option<String>,
    /// Rows whose change column is NULL: fail (the default: the import is
    /// refused, naming their count), exclude (left out, counted) or include
    /// (loaded with every window; --mode merge).
    #[arg(long, default_value = "fail")]
    null_change: sluice_datapath::NullChange,
    /// Start each window this many minutes before the watermark, for rows
    /// that arrive late with older change values (--mode merge).
    #[arg(long)]
    lookback_minutes: Option<u64>,
    /// Let --mode destructive replace an existing table that sluice did
    /// not make for this import.
    #[arg(long)]
    replace_existing: bool,
    /// The end (exclusive) of the window --start begins.
    #[arg(long, requires = "start")]
    end: Option<String>,
    /// A full copy between two PostgreSQL databases (--mode destructive)
    /// is read and loaded in N parts (ranges of the source table's pages)
    /// over N pairs of connections, all reading one snapshot; 1: one
    /// stream. Default: one part per 64 MiB of table, at most one per
    /// core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=sluice_datapath::parts::MAX_PARTS as i64))]
    parallel: Option<u16>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// A key no other run of this command will use.
fn rand_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Rows, rows/s and ETA on a terminal, redrawn in place.
pub(crate) struct Bar {
    pub(crate) started: Instant,
    pub(crate) on_terminal: bool,
}

impl sluice_datapath::Progress for Bar {
    fn rows(&mut self, done: u64, estimate: Option<u64>) {
        if !self.on_terminal {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = match estimate {
            Some(total) if total > done && rate > 0.0 => {
                format!("  ETA {:.0} s", (total - done) as f64 / rate)
            }
            _ => String::new(),
        };
        let of = estimate
            .filter(|t| *t >= done)
            .map(|t| format!(" of ~{t}"))
            .unwrap_or_default();
        eprint!("\r{done} rows{of}  {rate:.0} rows/s{eta}   ");
    }
}

async fn import(
    args: ImportArgs,
    cancel: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if args.start.is_some() && args.change_column.is_none() {
        bail!("--start/--end name a window of the change column: give --change-column too");
    }
    let dest_url = match args.to {
        Some(to) => absolute_url(&to)?,
        None => {
            let org = sluice_domain::OrganizationId::parse(args.org.as_deref().unwrap_or(""))?;
            let dir = absolute(&args.data_dir)?.join("warehouse");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the warehouse {}", dir.display()))?;
            format!(
                "sqlite://{}",
                dir.join(format!("{}.db", org.as_str())).display()
            )
        }
    };
    let mode = args.mode.unwrap_or(if args.change_column.is_some() {
        sluice_datapath::Mode::Incremental
    } else {
        sluice_datapath::Mode::Destructive
    });
    let spec = sluice_datapath::ImportSpec {
        source_url: absolute_url(&args.from)?,
        source_table: args.table,
        dest_url,
        target: args.target,
        mode,
        change_column: args.change_column,
        job: args.job,
        window: match (args.start, args.end) {
            (Some(start), Some(end)) => sluice_datapath::WindowRequest::Explicit {
                start,
                end,
                key: format!("{:016x}", rand_key()),
            },
            _ => sluice_datapath::WindowRequest::Next {
                size: match args.window_size_hours {
                    Some(h) if h > 0.0 && h.is_finite() => {
                        Some(Duration::from_secs_f64(h * 3600.0))
                    }
                    Some(h) if h != 0.0 => bail!("--window-size-hours must be 0 or more, got {h}"),
                    _ => None,
                },
                row_limit: args.row_limit,
            },
        },
        columns: None,
        mapping: None,
        stage: None,
        cancel: Some(cancel),
        session: None,
        key: args.key,
        null_change: args.null_change,
        lookback: args
            .lookback_minutes
            .filter(|m| *m > 0)
            .map(|m| Duration::from_secs(m * 60)),
        replace_existing: args.replace_existing,
        batch: None,
        declared: None,
        parallel: args.parallel.map(usize::from),
    };
    let mut bar = Bar {
        started: Instant::now(),
        on_terminal: std::io::stderr().is_terminal() && !args.json,
    };
    let report = sluice_datapath::import(&spec, &mut bar).await?;
    if bar.on_terminal {
        eprintln!();
    }
    let secs = report.elapsed.as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({
                "job": spec.job(),
                "rows": report.rows,
                "window_start": report.window_start,
                "window_end": report.window_end,
                "window": report.window_text(),
                "already_loaded": report.already_loaded,
                "nothing_new": report.nothing_new,
                "reloaded": report.reloaded,
                "null_change_rows": report.null_change_rows,
                "parts": report.parts.max(1),
                "seconds": secs,
            })
        );
        return Ok(());
    }
    if let Some(why) = &report.reloaded {
        println!("{why}");
    }
    if report.null_change_rows > 0 {
        println!(
            "{} source rows have no change value ({})",
            report.null_change_rows,
            if spec.null_change == sluice_datapath::NullChange::Include {
                "loaded with the window"
            } else {
                "left out"
            }
        );
    }
    if report.already_loaded {
        println!(
            "{} -> {}: this window was loaded already; nothing loaded",
            spec.source_table, spec.target
        );
    } else if report.nothing_new {
        println!(
            "{} -> {}: nothing new{}; nothing loaded",
            spec.source_table,
            spec.target,
            report
                .window_end
                .as_ref()
                .map(|w| format!(" since {w}"))
                .unwrap_or_default()
        );
    } else {
        println!(
            "{} -> {}: {} rows in {:.2} s ({:.0} rows/s){}{}",
            spec.source_table,
            spec.target,
            report.rows,
            secs,
            report.rows as f64 / secs.max(1e-6),
            report
                .window_text()
                .map(|w| format!(", window {w}"))
                .unwrap_or_default(),
            match report.parts {
                n @ 2.. => format!(", in {n} parts"),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

#[derive(Subcommand)]
enum TriggerCommand {
    /// A trigger's event ledger: each file that arrived for it, and the
    /// run it started (or why none), oldest first.
    Events {
        trigger: String,
        /// Continue after this event (the `next_page_token` of the last page).
        #[arg(long)]
        after: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an organization.
    Create {
        name: String,
        /// Its account code (6 digits), which the action API's
        /// configurations carry.
        #[arg(long)]
        account: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Give an organization its account code (6 digits), which the action
    /// API's configurations carry.
    Account {
        org: String,
        account: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user and its personal access token (shown once).
    Create {
        /// The organization the user belongs to.
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// The user's e-mail address.
        email: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum DeploymentCommand {
    /// Set the limits of each run of a deployment (each one left out is
    /// none of its own); the server's --run-* limits still apply, the
    /// tighter wins. Prints the deployment's limits.
    Limits {
        /// The organization (env SLUICE_ORG).
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// The deployment.
        deployment: String,
        /// Address space of each run's process, in MiB.
        #[arg(long)]
        memory_mb: Option<u64>,
        /// CPU seconds of each run's process.
        #[arg(long)]
        cpu_seconds: Option<u64>,
        /// Open files of each run's process.
        #[arg(long)]
        open_files: Option<u64>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Print a JWT for an organization (and user): `User token : <jwt>`.
    GetToken {
        /// The organization the token acts for.
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// The user the token is for (default: the organization's first).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke every JWT signed so far for a user, or for every user of an
    /// organization: they answer 401 from now on (`get-token` makes new ones).
    Revoke {
        /// The organization whose users' tokens are revoked.
        #[arg(long, env = "SLUICE_ORG")]
        org: String,
        /// Only this user's tokens (default: every user of the organization).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

use sluice_engine::secrets::redact;

pub(crate) async fn control(
    store_args: &StoreArgs,
) -> anyhow::Result<(Arc<Control>, Arc<dyn MetadataStore>, Arc<Wakers>)> {
    let store_args = &store_args.clone().resolved()?;
    let store = store_args.open().await?;
    let keys = Keys::load(store.as_ref(), &store_args.data_dir)
        .await
        .context("cannot load the signing key")?;
    let wakers = Arc::new(Wakers::default());
    let blobs = Blobs::local(store_args.data_dir.join("objects"));
    let control = Control::new(
        store.clone(),
        blobs,
        keys,
        Settings {
            warehouse: store_args.warehouse(),
            // The administrator: any source but sluice's own data.
            sources: store_args.sources(true, Vec::new()),
            ..Settings::default()
        },
        wakers.clone(),
    );
    Ok((Arc::new(control), store, wakers))
}

/// A use case's error as the CLI prints it: a "not found" names the store
/// it looked in, so a command run against the wrong data dir says so.
pub(crate) fn print_error(e: sluice_engine::control::ControlError) -> anyhow::Error {
    match (&e, STORE_NAME.get()) {
        (sluice_engine::control::ControlError::NotFound(_), Some(store)) => {
            anyhow::anyhow!("{e} (in the store {store})")
        }
        _ => anyhow::anyhow!("{e}"),
    }
}

/// The runners of leased work a `serve` or `worker` process runs beside
/// its worker: table imports, action runs and API runs, named after the
/// process.
fn spawn_runners(
    db: &Arc<dyn MetadataStore>,
    sealer: &sluice_engine::secrets::Sealer,
    config: &EngineConfig,
    warehouse: Option<PathBuf>,
    role: &str,
    wakers: &Arc<Wakers>,
    shutdown: &Shutdown,
) -> Vec<tokio::task::JoinHandle<()>> {
    let name = format!("{role}-{}", std::process::id());
    let importer = Importer::new(
        db.clone(),
        sealer.clone(),
        config,
        name.clone(),
        wakers.clone(),
    );
    let importer = tokio::spawn(Arc::new(importer).run(shutdown.clone()));
    let actions = ActionRunner::new(
        db.clone(),
        sealer.clone(),
        config,
        warehouse.clone(),
        name.clone(),
        wakers.clone(),
    );
    let actions = tokio::spawn(Arc::new(actions).run(shutdown.clone()));
    let api_runs = sluice_engine::api_runs::ApiRunner::new(
        db.clone(),
        sealer.clone(),
        config,
        warehouse,
        name,
        wakers.clone(),
    );
    let api_runs = tokio::spawn(Arc::new(api_runs).run(shutdown.clone()));
    vec![importer, actions, api_runs]
}

/// Waits for the work a stopping process still owns to end (each loop
/// ends by itself once drained or handed back), then says so.
async fn stopped(tasks: Vec<tokio::task::JoinHandle<()>>, what: &str) {
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("{what} stopped");
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(outcome());
    // A stopped `serve` or `worker` does not wait for work it handed back
    // at the end of its grace period (a load's COMMIT still under way in a
    // blocking thread): the process ends, and that work with it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

async fn outcome() -> std::process::ExitCode {
    match run(Instant::now()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A message, never a backtrace: these are the user's errors.
            // Causes a message already spells out are not repeated.
            let mut text = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !text.contains(&cause) {
                    text = format!("{text}: {cause}");
                }
            }
            eprintln!("error: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(started: Instant) -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => log.json().with_current_span(true).init(),
        // Colour codes only for a person at a terminal, never in a file.
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match cli.command {
        Command::Serve {
            store,
            engine,
            listen,
            public_url,
            page_size,
            log_page_size,
            max_file_bytes,
            no_worker,
            header_timeout_ms,
            body_timeout_ms,
            allow_source,
        } => {
            sluice_engine::sandbox::harden_server();
            sluice_engine::memory::give_back_periodically(Duration::from_secs(2));
            let store = store.resolved()?;
            let db = store.create_or_open().await?;
            let keys = Keys::load(db.as_ref(), &store.data_dir)
                .await
                .context("cannot load the signing key")?;
            let wakers = Arc::new(Wakers::default());
            let config = engine.config(store.data_dir.clone())?;
            let settings = Settings {
                page_size: page_size.clamp(1, 1000),
                log_page_size: log_page_size.clamp(1, 10_000),
                max_file_bytes,
                warehouse: store.warehouse(),
                sources: store.sources(false, allow_source),
                ..Settings::default()
            };
            let sealer = keys.sealer();
            let control = Arc::new(Control::new(
                db.clone(),
                config.blobs.clone(),
                keys,
                settings,
                wakers.clone(),
            ));
            let shutdown = Shutdown::new();
            shutdown.on_signals(Duration::from_secs(engine.shutdown_grace_secs));
            tokio::spawn(scheduler::run(db.clone(), config.clone(), wakers.clone()));
            tokio::spawn(dispatcher::run(db.clone(), config.clone(), wakers.clone()));
            tokio::spawn(sluice_engine::bus::relay(
                db.clone(),
                wakers.clone(),
                shutdown.clone(),
            ));
            let mut work = Vec::new();
            if !no_worker {
                work = spawn_runners(
                    &db,
                    &sealer,
                    &config,
                    store.warehouse(),
                    "serve",
                    &wakers,
                    &shutdown,
                );
                let worker =
                    Worker::new(db.clone(), config, wakers).context("cannot prepare the worker")?;
                work.push(tokio::spawn(worker.run(shutdown.clone())));
            }
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(
                "sluice listening on http://{} (store {}, ready in {} ms)",
                listener.local_addr()?,
                redact(&store.url()),
                started.elapsed().as_millis()
            );
            if let Ok(false) = db.any_organization().await {
                tracing::info!(
                    "the store is new: make an organization with `sluice org create NAME`, then a \
                     user with `sluice user create --org ORG EMAIL` (it prints the user id and \
                     token to sign in at http://{}/ and to call the APIs with)",
                    listener.local_addr()?
                );
            }
            sluice_api::serve(
                listener,
                sluice_api::ApiState {
                    control,
                    public_url,
                },
                sluice_api::Timeouts {
                    header_read: Duration::from_millis(header_timeout_ms.max(1)),
                    body_idle: Duration::from_millis(body_timeout_ms.max(1)),
                },
                shutdown.clone(),
            )
            .await?;
            stopped(work, "sluice").await;
        }
        Command::Worker { store, engine } => {
            sluice_engine::sandbox::harden_server();
            sluice_engine::memory::give_back_periodically(Duration::from_secs(2));
            let store = store.resolved()?;
            if !store.url().starts_with("postgres") {
                bail!("`sluice worker` joins a PostgreSQL-backed cluster: give --database-url postgres://…");
            }
            let db = store.create_or_open().await?;
            let wakers = Arc::new(Wakers::default());
            let config = engine.config(store.data_dir.clone())?;
            let keys = Keys::load(db.as_ref(), &store.data_dir)
                .await
                .context("cannot load the server key")?;
            let shutdown = Shutdown::new();
            shutdown.on_signals(Duration::from_secs(engine.shutdown_grace_secs));
            tokio::spawn(scheduler::run(db.clone(), config.clone(), wakers.clone()));
            tokio::spawn(dispatcher::run(db.clone(), config.clone(), wakers.clone()));
            tokio::spawn(sluice_engine::bus::relay(
                db.clone(),
                wakers.clone(),
                shutdown.clone(),
            ));
            let mut work = spawn_runners(
                &db,
                &keys.sealer(),
                &config,
                store.warehouse(),
                "worker",
                &wakers,
                &shutdown,
            );
            let worker = Worker::new(db, config, wakers).context("cannot prepare the worker")?;
            tracing::info!("worker {} joined {}", worker.id(), redact(&store.url()));
            work.push(tokio::spawn(worker.run(shutdown)));
            stopped(work, "worker").await;
        }
        Command::Org {
            command:
                OrgCommand::Create {
                    name,
                    account,
                    json,
                    store,
                },
        } => {
            let (control, _, _) = control(&store).await?;
            let org = control
                .create_organization(&name)
                .await
                .map_err(print_error)?;
            if let Some(a) = &account {
                control
                    .set_account(org.id.as_str(), a)
                    .await
                    .map_err(print_error)?;
            }
            if json {
                println!(
                    "{}",
                    json!({"organization_id": org.id, "name": org.name, "account": account})
                );
            } else {
                println!("organization {} created: {}", org.id, org.name);
            }
        }
        Command::Org {
            command:
                OrgCommand::Account {
                    org,
                    account,
                    store,
                },
        } => {
            let (control, _, _) = control(&store).await?;
            control
                .set_account(&org, &account)
                .await
                .map_err(print_error)?;
            println!("organization {org} is account {account}");
        }
        Command::User {
            command:
                UserCommand::Create {
                    org,
                    email,
                    json,
                    store,
                },
        } => {
            let (control, _, _) = control(&store).await?;
            let (user, token) = control
                .create_user(&org, &email)
                .await
                .map_err(print_error)?;
            if json {
                println!(
                    "{}",
                    json!({"user_id": user.id, "organization_id": user.organization_id, "email": user.email, "personal_access_token": token})
                );
            } else {
                println!(
                    "user {} created in organization {}",
                    user.id, user.organization_id
                );
                println!("personal access token (shown once): {token}");
            }
        }
        Command::Auth {
            command: AuthCommand::GetToken { org, user, store },
        } => {
            let (control, _, _) = control(&store).await?;
            let token = control
                .issue_token(&org, user.as_deref())
                .await
                .map_err(print_error)?;
            // `User token :` is line 7, as Tailer's pipelines read it
            // (`sed '7q;d'`, or `awk '/User token :/ {print $4}'`).
            let ttl = control.settings().token_ttl_secs;
            let expires = sluice_domain::time::from_micros(
                (sluice_domain::time::now().timestamp() + ttl) * 1_000_000,
            );
            println!();
            println!("sluice");
            println!("Version : {}", env!("CARGO_PKG_VERSION"));
            println!("Organization : {org}");
            println!(
                "Expires : {} (in {} days)",
                expires.format("%Y-%m-%dT%H:%M:%SZ"),
                ttl / 86_400
            );
            println!();
            println!("User token : {token}");
            println!();
        }
        Command::Auth {
            command: AuthCommand::Revoke { org, user, store },
        } => {
            let (control, _, _) = control(&store).await?;
            let users = control
                .revoke_tokens(&org, user.as_deref())
                .await
                .map_err(print_error)?;
            for u in &users {
                println!("revoked every token of user {} ({})", u.id, u.email);
            }
            if users.is_empty() {
                println!("organization {org} has no user: nothing to revoke");
            }
        }
        Command::Import(args) => {
            let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let work = import(args, cancel.clone());
            tokio::pin!(work);
            tokio::select! {
                done = &mut work => done?,
                _ = tokio::signal::ctrl_c() => {
                    // The window still loading never commits (its
                    // transaction is rolled back); committed windows
                    // stay, each once. Asked to stop, a load in parts
                    // drops its table of parts first.
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                    let ended = tokio::time::timeout(Duration::from_secs(10), &mut work).await;
                    if let Ok(Ok(())) = ended {
                        // It had committed before it could stop.
                        return Ok(());
                    }
                    eprintln!(
                        "interrupted: the window being loaded was rolled back (nothing of it is in \
                         the destination); windows committed before stay, each once — run the same \
                         `sluice import` again to continue after the last one"
                    );
                    std::process::exit(130);
                }
            }
        }
        Command::Job { command } => job::run(command).await?,
        Command::Space { command } => space::space(command).await?,
        Command::Apikey { command } => space::apikey(command).await?,
        Command::Source { command } => source::source(command).await?,
        Command::Config { command } => config::config(command).await?,
        Command::Warehouse { command } => config::named(config::Named::Warehouse, command).await?,
        Command::Bucket { command } => config::named(config::Named::Bucket, command).await?,
        Command::Deployment {
            command:
                DeploymentCommand::Limits {
                    org,
                    deployment,
                    memory_mb,
                    cpu_seconds,
                    open_files,
                    store,
                },
        } => {
            let (control, _, _) = control(&store).await?;
            let limits = sluice_domain::RunLimits {
                memory_mb,
                cpu_seconds,
                open_files,
            };
            let d = control
                .set_deployment_limits(&org, &deployment, limits)
                .await
                .map_err(print_error)?;
            println!("{}", json!({"deployment_id": d.id, "limits": d.limits}));
        }
        Command::Routes { json } => {
            let routes = sluice_api::routes();
            if json {
                let list: Vec<_> = routes
                    .iter()
                    .map(|r| {
                        json!({"method": r.method.as_str(), "path": r.path, "public": r.public,
                               "page": r.page})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for r in &routes {
                    let how = match (r.public, r.page) {
                        (true, _) => "public",
                        (false, true) => "session (console page)",
                        (false, false) => "credentials",
                    };
                    println!("{:<7}{:<70}{how}", r.method.as_str(), r.path);
                }
            }
        }
        Command::Trigger {
            command:
                TriggerCommand::Events {
                    trigger,
                    after,
                    json,
                    store,
                },
        } => {
            let (control, _, _) = control(&store).await?;
            let id = sluice_domain::TriggerId::parse(&trigger)?;
            let page = control
                .events_of(&id, true, after.as_deref())
                .await
                .map_err(print_error)?;
            if json {
                let entries: Vec<_> = page
                    .events
                    .iter()
                    .map(sluice_api::wire::trigger_event)
                    .collect();
                println!(
                    "{}",
                    json!({"entries": entries, "next_page_token": page.next_page_token})
                );
            } else {
                for e in &page.events {
                    println!(
                        "{}  {}/{}  {:<10}  {}",
                        sluice_domain::time::format(&e.created_at),
                        e.channel_id,
                        e.file_id,
                        e.state.as_str(),
                        e.run_id
                            .as_ref()
                            .map(ToString::to_string)
                            .or(e.note.clone())
                            .unwrap_or_default()
                    );
                }
                if let Some(t) = page.next_page_token {
                    println!("more: --after {t}");
                }
            }
        }
    }
    Ok(())
}
