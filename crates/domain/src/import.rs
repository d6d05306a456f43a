//! Table import jobs: a source table, a column mapping and a destination
//! table, queried again and again in windows of the change column.
//!
//! A job's runs are its **queries** (Arize's word): each loads one window
//! and records when it was made, the window, how many records it loaded, its
//! status (a [`RunStatus`]: queries move through the one run state machine)
//! and its error. A query is made of **tasks** — extract, consolidate, load,
//! complete — each with a status, a table, a record count and messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::*;
use crate::run::RunStatus;
use crate::time::Timestamp;

/// Whether the scheduler queries a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Active,
    Paused,
    Deleted,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Active => "active",
            JobStatus::Paused => "paused",
            JobStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        match s {
            "active" => Some(JobStatus::Active),
            "paused" => Some(JobStatus::Paused),
            "deleted" => Some(JobStatus::Deleted),
            _ => None,
        }
    }
}

/// How a query treats the destination table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// Append the window's rows (the change column passed the watermark).
    #[default]
    Incremental,
    /// Load the whole table into a new table and swap it in.
    Destructive,
    /// Like incremental, but a row replaces the target's row with the same
    /// key ([`JobSpec::key`], else the mapping's `predictionId`).
    Merge,
}

impl LoadMode {
    /// The mode a job made from a mapping alone loads in: incremental
    /// when the mapping names a change timestamp, else the whole table
    /// each time.
    pub fn for_mapping(mapping: &Mapping) -> LoadMode {
        if mapping.change_timestamp.is_some() {
            LoadMode::Incremental
        } else {
            LoadMode::Destructive
        }
    }

    /// Whether loads of this mode read windows of the change column.
    pub fn windowed(self) -> bool {
        self != LoadMode::Destructive
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoadMode::Incremental => "incremental",
            LoadMode::Destructive => "destructive",
            LoadMode::Merge => "merge",
        }
    }
}

impl std::str::FromStr for LoadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<LoadMode, String> {
        match s {
            "incremental" => Ok(LoadMode::Incremental),
            "destructive" | "full" => Ok(LoadMode::Destructive),
            "merge" => Ok(LoadMode::Merge),
            other => Err(format!(
                "mode must be incremental, merge or destructive, got `{other}`"
            )),
        }
    }
}

/// Which source columns a job loads, in the words of the Arize-style importer's `schema`.
/// Single fields name one column each; `features`, `tags` and `shapValues`
/// are prefixes selecting every column that starts with them; the `…List`
/// fields name columns one by one; `exclude` drops columns a prefix chose.
/// A mapping with no field loads every column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mapping {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_score: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_score: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relevance_score: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relevance_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features_list: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags_list: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shap_values: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
}

/// One finding of a validation: what is wrong, where, and a value seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// A stable code: `column_not_found`, `prefix_matches_nothing`,
    /// `change_column_not_timestamp`, `table_not_found`, …
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
}

impl Diagnostic {
    pub fn new(code: &str, message: impl Into<String>, column: Option<&str>) -> Diagnostic {
        Diagnostic {
            code: code.to_owned(),
            message: message.into(),
            column: column.map(str::to_owned),
            sample: None,
        }
    }
}

impl Mapping {
    /// The single-column fields, by their Arize names.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("predictionId", &self.prediction_id),
            ("timestamp", &self.timestamp),
            ("predictionLabel", &self.prediction_label),
            ("predictionScore", &self.prediction_score),
            ("actualLabel", &self.actual_label),
            ("actualScore", &self.actual_score),
            ("predictionGroupId", &self.prediction_group_id),
            ("rank", &self.rank),
            ("relevanceScore", &self.relevance_score),
            ("relevanceLabel", &self.relevance_label),
            ("version", &self.version),
            ("batchId", &self.batch_id),
            ("changeTimestamp", &self.change_timestamp),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
    }

    fn prefixes(&self) -> Vec<(&'static str, &str)> {
        [
            ("features", &self.features),
            ("tags", &self.tags),
            ("shapValues", &self.shap_values),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
    }

    fn lists(&self) -> Vec<(&'static str, &[String])> {
        [
            ("featuresList", &self.features_list),
            ("tagsList", &self.tags_list),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    /// True when the mapping names nothing: every column is loaded.
    pub fn is_all(&self) -> bool {
        self.fields().is_empty()
            && self.prefixes().is_empty()
            && self.lists().iter().all(|(_, l)| l.is_empty())
    }

    /// The source columns this mapping loads, in the source's order, or
    /// every problem found (each naming the field and the column).
    pub fn select(&self, columns: &[String]) -> Result<Vec<String>, Vec<Diagnostic>> {
        if self.is_all() {
            let excluded = self.exclude.clone().unwrap_or_default();
            return Ok(columns
                .iter()
                .filter(|c| !excluded.contains(c))
                .cloned()
                .collect());
        }
        let has = |c: &str| columns.iter().any(|x| x == c);
        let mut problems = Vec::new();
        let mut wanted: Vec<&str> = Vec::new();
        for (field, col) in self.fields() {
            if has(col) {
                wanted.push(col);
            } else {
                problems.push(Diagnostic::new(
                    "column_not_found",
                    format!("schema.{field}: column `{col}` is not in the source table"),
                    Some(col),
                ));
            }
        }
        let excluded = self.exclude.clone().unwrap_or_default();
        for x in &excluded {
            if !has(x) {
                problems.push(Diagnostic::new(
                    "column_not_found",
                    format!("schema.exclude: column `{x}` is not in the source table"),
                    Some(x),
                ));
            }
        }
        for (field, prefix) in self.prefixes() {
            let matched: Vec<&str> = columns
                .iter()
                .map(String::as_str)
                .filter(|c| c.starts_with(prefix) && !excluded.iter().any(|x| x == c))
                .collect();
            if matched.is_empty() {
                problems.push(Diagnostic::new(
                    "prefix_matches_nothing",
                    format!("schema.{field}: no column of the source table starts with `{prefix}`"),
                    None,
                ));
            }
            wanted.extend(matched);
        }
        for (field, list) in self.lists() {
            for col in list {
                if has(col) {
                    wanted.push(col);
                } else {
                    problems.push(Diagnostic::new(
                        "column_not_found",
                        format!("schema.{field}: column `{col}` is not in the source table"),
                        Some(col),
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(columns
            .iter()
            .filter(|c| wanted.contains(&c.as_str()))
            .cloned()
            .collect())
    }
}

/// When and how much a job queries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngestionParams {
    /// At most this many rows a query (rows sharing the last row's change
    /// value come along). None or 0: no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_limit: Option<u64>,
    /// A job queries again this long after its last query. Default 60.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_interval_minutes: Option<u64>,
    /// A window ends at its start + this; None or 0: at now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_window_size_hours: Option<f64>,
    /// Each window starts this long before the watermark, for rows that
    /// arrive late with older change values (merge by key only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookback_minutes: Option<u64>,
    /// What a query does with source rows whose change value is NULL
    /// (default: fail, naming their count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub null_change: Option<NullChange>,
}

/// What a query does with source rows whose change value is NULL: they
/// belong to no window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NullChange {
    /// The query fails, naming how many rows have no change value.
    #[default]
    Fail,
    /// They are left out, and counted in every query's report.
    Exclude,
    /// They load with every window (merge by key, so they replace
    /// themselves).
    Include,
}

impl IngestionParams {
    pub const DEFAULT_REFRESH_MINUTES: u64 = 60;

    pub fn refresh(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            60 * self
                .refresh_interval_minutes
                .unwrap_or(Self::DEFAULT_REFRESH_MINUTES),
        )
    }

    /// What is wrong with these parameters, if anything.
    pub fn check(&self) -> Result<(), crate::Invalid> {
        if let Some(h) = self.query_window_size_hours {
            if !h.is_finite() || h < 0.0 {
                return Err(format!(
                    "tableIngestionParameters.queryWindowSizeHours must be 0 or more, got {h}"
                )
                .into());
            }
        }
        if self.refresh_interval_minutes == Some(0) {
            return Err(
                "tableIngestionParameters.refreshIntervalMinutes must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// What a job moves: everything but where (the connections are sealed
/// apart, see [`ImportJob`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// `schema.table` or `table` in the source.
    pub table: String,
    /// `schema.table` or `table` in the destination.
    pub target: String,
    #[serde(default)]
    pub mode: LoadMode,
    /// The column whose growth marks new rows; the mapping's
    /// `changeTimestamp` when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_column: Option<String>,
    /// The column that identifies a row (merge); the mapping's
    /// `predictionId` when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub mapping: Mapping,
    #[serde(default)]
    pub ingestion: IngestionParams,
    /// Free-form labels a face keeps with the job (the Arize-style table importer: model name,
    /// model type, environment, table store and its config).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Value>,
}

impl JobSpec {
    /// A job that queries only the windows asked for, never on a schedule
    /// (the Arize-style importer's triggered ongoing jobs): the label `triggered`.
    pub fn triggered(&self) -> bool {
        self.labels.get("triggered") == Some(&Value::Bool(true))
    }

    pub fn key(&self) -> Option<&str> {
        self.key
            .as_deref()
            .or(self.mapping.prediction_id.as_deref())
            .filter(|c| !c.is_empty())
    }

    pub fn change_column(&self) -> Option<&str> {
        self.mapping
            .change_timestamp
            .as_deref()
            .or(self.change_column.as_deref())
            .filter(|c| !c.is_empty())
    }
}

/// A connection an administrator declared for an organization by name: a
/// source its jobs may read ([`SourceGrant`]), a warehouse its action runs
/// write ([`crate::action::Warehouse`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedConnection {
    pub organization_id: OrganizationId,
    pub name: String,
    /// The URL, sealed like a job's connections (it may hold a password).
    pub url_sealed: String,
    /// The URL without its password.
    pub url_shown: String,
    pub created_at: Timestamp,
}

/// A source an administrator declared for an organization's jobs
/// (`sluice source add`): jobs of that organization may read it, or
/// anything under it.
pub type SourceGrant = NamedConnection;

#[derive(Debug, Clone, PartialEq)]
pub struct ImportJob {
    pub seq: i64,
    pub id: JobId,
    pub organization_id: OrganizationId,
    /// The space (Arize-style) the job belongs to; empty: the default space.
    pub space: String,
    pub name: String,
    pub status: JobStatus,
    pub spec: JobSpec,
    /// The connection URLs, sealed (encrypted); only a worker opens them.
    pub source_sealed: String,
    pub destination_sealed: String,
    /// The URLs with their passwords taken out, for showing.
    pub source_shown: String,
    pub destination_shown: String,
    /// Names the destination table (see the control layer): no two live
    /// jobs share one. None for jobs made before sluice kept it.
    pub destination_key: Option<String>,
    /// When the scheduler makes the next query (None: not scheduled).
    pub next_query_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
}

/// Arize's warehouses by the scheme of a job's source: sluice stores
/// their jobs but has no connector for them yet.
pub const WAREHOUSES: [(&str, &str); 3] = [
    ("bigquery://", "BigQuery"),
    ("snowflake://", "Snowflake"),
    ("databricks://", "Databricks"),
];

/// The warehouse a source URL names, if it names one.
/// The destination table a model's rows load into: its name in lower case,
/// every other character `_` (`My Test Model` → `my_test_model`), never
/// empty nor starting with a digit.
pub fn table_for_model(model: &str) -> String {
    let s: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches('_').to_owned();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("model_{s}")
    } else {
        s
    }
}

/// One of sluice's own stores, which a source names by URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnStore {
    PostgreSQL,
    MySQL,
    SQLite,
    Files,
}

impl OwnStore {
    /// The URL schemes a source of this store may have.
    pub fn schemes(self) -> &'static [&'static str] {
        match self {
            OwnStore::PostgreSQL => &["postgres://", "postgresql://"],
            OwnStore::MySQL => &["mysql://", "mariadb://"],
            OwnStore::SQLite => &["sqlite:"],
            OwnStore::Files => &["file://"],
        }
    }
}

/// Where a table import reads, as the faces describe it: a table of one of
/// the warehouses the Arize-style importer names, or of one of sluice's own
/// stores.
#[derive(Debug, Clone, PartialEq)]
pub enum TableSource {
    BigQuery {
        project_id: String,
        dataset: String,
        table_name: String,
    },
    Snowflake {
        account_id: String,
        database: String,
        schema: String,
        table_name: String,
    },
    Databricks {
        host_name: String,
        endpoint: String,
        port: String,
        token: Option<String>,
        catalog: String,
        schema: String,
        table_name: String,
    },
    Own {
        store: OwnStore,
        url: String,
        table_name: String,
    },
}

/// A source as a job keeps it: the URL it reads, the table, and the labels
/// its faces show (`projectId`, `dataset`).
#[derive(Debug, Clone, PartialEq)]
pub struct LocatedSource {
    pub url: String,
    pub table: String,
    pub labels: BTreeMap<String, Value>,
}

/// What is wrong with a source's field (named as the faces name it, e.g.
/// `projectId`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceProblem {
    pub field: &'static str,
    pub problem: String,
}

impl TableSource {
    /// The source's URL, table and labels, every field checked.
    pub fn locate(self) -> Result<LocatedSource, SourceProblem> {
        fn need(field: &'static str, value: &str) -> Result<(), SourceProblem> {
            if value.trim().is_empty() {
                return Err(SourceProblem {
                    field,
                    problem: "must not be empty".into(),
                });
            }
            Ok(())
        }
        let mut labels = BTreeMap::new();
        let (url, table) = match self {
            TableSource::BigQuery {
                project_id,
                dataset,
                table_name,
            } => {
                need("projectId", &project_id)?;
                need("dataset", &dataset)?;
                need("tableName", &table_name)?;
                let url = format!("bigquery://{project_id}/{dataset}");
                labels.insert("projectId".into(), project_id.into());
                labels.insert("dataset".into(), dataset.into());
                (url, table_name)
            }
            TableSource::Snowflake {
                account_id,
                database,
                schema,
                table_name,
            } => {
                need("accountID", &account_id)?;
                need("database", &database)?;
                need("schema", &schema)?;
                need("tableName", &table_name)?;
                labels.insert("dataset".into(), format!("{database}.{schema}").into());
                (
                    format!("snowflake://{account_id}/{database}/{schema}"),
                    table_name,
                )
            }
            TableSource::Databricks {
                host_name,
                endpoint,
                port,
                token,
                catalog,
                schema,
                table_name,
            } => {
                need("hostName", &host_name)?;
                need("endpoint", &endpoint)?;
                need("catalog", &catalog)?;
                need("databricksSchema", &schema)?;
                need("tableName", &table_name)?;
                if port.parse::<u16>().is_err() {
                    return Err(SourceProblem {
                        field: "port",
                        problem: format!("must be a port number, got `{port}`"),
                    });
                }
                labels.insert("dataset".into(), format!("{catalog}.{schema}").into());
                let token = token.map(|t| format!("token:{t}@")).unwrap_or_default();
                (
                    format!(
                        "databricks://{token}{host_name}:{port}{endpoint}?catalog={catalog}&schema={schema}"
                    ),
                    table_name,
                )
            }
            TableSource::Own {
                store,
                url,
                table_name,
            } => {
                need("url", &url)?;
                need("tableName", &table_name)?;
                if !store.schemes().iter().any(|s| url.starts_with(s)) {
                    return Err(SourceProblem {
                        field: "url",
                        problem: format!("must start with {}", store.schemes().join(" or ")),
                    });
                }
                (url, table_name)
            }
        };
        Ok(LocatedSource { url, table, labels })
    }
}

pub fn warehouse_of(source: &str) -> Option<&'static str> {
    WAREHOUSES
        .iter()
        .find(|(scheme, _)| source.starts_with(scheme))
        .map(|(_, name)| *name)
}

impl ImportJob {
    /// The kind of store the job reads: one of Arize's warehouses, or
    /// sluice's own — `PostgreSQL`, `MySQL`, `SQLite` or `Files`.
    pub fn store_name(&self) -> &'static str {
        let s = &self.source_shown;
        if let Some(w) = warehouse_of(s) {
            w
        } else if s.starts_with("postgres") {
            "PostgreSQL"
        } else if s.starts_with("mysql") || s.starts_with("mariadb") {
            "MySQL"
        } else if s.starts_with("sqlite") {
            "SQLite"
        } else {
            "Files"
        }
    }
}

/// What made a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryTrigger {
    /// The refresh interval came round.
    Schedule,
    /// Asked for by hand (the next window).
    Manual,
    /// An explicit window [start, end), asked for by hand or by an event.
    Window,
}

impl QueryTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryTrigger::Schedule => "schedule",
            QueryTrigger::Manual => "manual",
            QueryTrigger::Window => "window",
        }
    }

    pub fn parse(s: &str) -> Option<QueryTrigger> {
        match s {
            "schedule" => Some(QueryTrigger::Schedule),
            "manual" => Some(QueryTrigger::Manual),
            "window" => Some(QueryTrigger::Window),
            _ => None,
        }
    }
}

/// One query of a job: one window loaded (or tried).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub seq: i64,
    pub id: QueryId,
    pub job_id: JobId,
    pub organization_id: OrganizationId,
    pub status: RunStatus,
    pub trigger: QueryTrigger,
    /// The window asked for (explicit windows): [start, end).
    pub requested: Option<(String, String)>,
    /// The window loaded: after start (or from the first row) up to end.
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    pub records: i64,
    pub error: Option<String>,
    pub attempt: i32,
    pub lease_owner: Option<String>,
    pub lease_token: i64,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

impl Query {
    /// A new query of a job, RUNNABLE and claimed by nobody, made by
    /// `trigger` for the window `requested` (None: the next one).
    pub fn new(
        job_id: JobId,
        organization_id: OrganizationId,
        trigger: QueryTrigger,
        requested: Option<(String, String)>,
        now: Timestamp,
    ) -> Query {
        Query {
            seq: 0,
            id: QueryId::generate(),
            job_id,
            organization_id,
            status: RunStatus::Runnable,
            trigger,
            requested,
            window_start: None,
            window_end: None,
            records: 0,
            error: None,
            attempt: 0,
            lease_owner: None,
            lease_token: 0,
            created_at: now,
            started_at: None,
            finished_at: None,
        }
    }
}

/// One step of a query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryTask {
    pub query_id: QueryId,
    /// 1 extract, 2 consolidate, 3 load, 4 complete.
    pub seq: i32,
    pub name: String,
    /// RUNNING, SUCCEEDED, FAILED or SKIPPED.
    pub status: String,
    pub table: String,
    pub records: i64,
    pub messages: Vec<String>,
    #[serde(with = "crate::time::wire")]
    pub started_at: Timestamp,
    #[serde(with = "crate::time::wire_opt")]
    pub finished_at: Option<Timestamp>,
}

/// The tasks every query has, in order.
pub const TASKS: [&str; 4] = ["extract", "consolidate", "load", "complete"];

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefixes_select_columns_and_exclude_drops_them() {
        let m = Mapping {
            prediction_id: Some("prediction_id".into()),
            timestamp: Some("prediction_ts".into()),
            features: Some("feature_".into()),
            tags: Some("tag_".into()),
            exclude: Some(vec!["feature_secret".into()]),
            change_timestamp: Some("changed_at".into()),
            ..Mapping::default()
        };
        let source = cols(&[
            "prediction_id",
            "other",
            "feature_a",
            "feature_secret",
            "tag_x",
            "prediction_ts",
            "feature_b",
            "changed_at",
        ]);
        assert_eq!(
            m.select(&source).unwrap(),
            cols(&[
                "prediction_id",
                "feature_a",
                "tag_x",
                "prediction_ts",
                "feature_b",
                "changed_at"
            ])
        );
    }

    #[test]
    fn every_missing_column_is_named() {
        let m = Mapping {
            prediction_id: Some("pid".into()),
            features: Some("f_".into()),
            tags_list: Some(vec!["t1".into(), "nope".into()]),
            ..Mapping::default()
        };
        let problems = m.select(&cols(&["pid", "t1"])).unwrap_err();
        let codes: Vec<_> = problems
            .iter()
            .map(|d| (d.code.as_str(), d.column.clone()))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("prefix_matches_nothing", None),
                ("column_not_found", Some("nope".into()))
            ]
        );
        assert!(problems[1].message.contains("schema.tagsList"));
    }

    #[test]
    fn an_empty_mapping_loads_every_column() {
        assert!(Mapping::default().is_all());
        assert_eq!(
            Mapping::default().select(&cols(&["a", "b"])).unwrap(),
            cols(&["a", "b"])
        );
    }

    #[test]
    fn parameters_refuse_nonsense() {
        let p = IngestionParams {
            query_window_size_hours: Some(-1.0),
            ..Default::default()
        };
        assert!(p.check().unwrap_err().contains("queryWindowSizeHours"));
        assert_eq!(IngestionParams::default().refresh().as_secs(), 3600);
    }
}
