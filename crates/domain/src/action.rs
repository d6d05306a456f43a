//! The Tailer-style action API's data operations: configuration files as
//! Tailer writes them (table-to-table and context today), checked and
//! parsed into a task DAG, the template variables, job ids, and the run
//! statuses the API reports (mapped onto the one run state machine).
//!
//! Checking a file answers every problem at once, each with the field's
//! path (`workflow[2].sql_file`) and what was expected — the rules Tailer's
//! SDK applies before it deploys.

use std::collections::{BTreeMap, BTreeSet};

pub use chrono::NaiveDate;

use chrono::Datelike;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::RunStatus;

/// One thing wrong with a configuration: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        path: path.into(),
        message: message.into(),
    }
}

/// The environments Tailer knows.
pub const ENVIRONMENTS: [&str; 4] = ["PROD", "PREPROD", "STAGING", "DEV"];

/// The configuration types of the action API: table-to-table
/// configurations run; contexts hold constants; workflows launch a target
/// when the jobs they await have succeeded.
pub const TABLE_TO_TABLE: &str = "table-to-table";
pub const CONTEXT: &str = "context";
pub const WORKFLOW: &str = "workflow";
pub const TABLE_TO_STORAGE: &str = "table-to-storage";
pub const STORAGE_TO_STORAGE: &str = "storage-to-storage";

/// A run's status as the action API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionStatus {
    Running,
    Success,
    /// Succeeded, with a `warning` task that failed.
    Warning,
    Failed,
    /// A failed run someone looked at (`set_run_status`).
    Checked,
    NoMatch,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Running => "RUNNING",
            ActionStatus::Success => "SUCCESS",
            ActionStatus::Warning => "WARNING",
            ActionStatus::Failed => "FAILED",
            ActionStatus::Checked => "CHECKED",
            ActionStatus::NoMatch => "NO_MATCH",
        }
    }

    pub fn parse(s: &str) -> Option<ActionStatus> {
        Some(match s {
            "RUNNING" => ActionStatus::Running,
            "SUCCESS" => ActionStatus::Success,
            "WARNING" => ActionStatus::Warning,
            "FAILED" => ActionStatus::Failed,
            "CHECKED" => ActionStatus::Checked,
            "NO_MATCH" => ActionStatus::NoMatch,
            _ => return None,
        })
    }

    /// The action status of a run in `status` — the one mapping:
    ///
    /// | run status | action status |
    /// |---|---|
    /// | SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, CANCELING | RUNNING |
    /// | SUCCEEDED | SUCCESS (WARNING when a `warning` task failed) |
    /// | FAILED, CANCELLED, REJECTED | FAILED |
    ///
    /// `CHECKED` and `NO_MATCH` are set on a run, not derived.
    pub fn of(status: RunStatus, warned: bool) -> ActionStatus {
        match status {
            RunStatus::Succeeded if warned => ActionStatus::Warning,
            RunStatus::Succeeded => ActionStatus::Success,
            RunStatus::Failed | RunStatus::Cancelled | RunStatus::Rejected => ActionStatus::Failed,
            _ => ActionStatus::Running,
        }
    }
}

/// What a failed task does to its run (Tailer's `criticality`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Criticality {
    /// The run stops and fails.
    Critical,
    /// The run goes on; it ends WARNING.
    Warning,
    /// The run goes on as if the task had succeeded.
    Transparent,
    /// The task's dependents are skipped; the run succeeds.
    Break,
    /// The task's dependents are skipped; the run succeeds, and workflows
    /// watching it do not fire.
    Stop,
}

/// How a query's rows meet its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteDisposition {
    #[serde(rename = "WRITE_TRUNCATE")]
    Truncate,
    #[serde(rename = "WRITE_APPEND")]
    Append,
    #[serde(rename = "WRITE_EMPTY")]
    Empty,
}

impl WriteDisposition {
    fn parse(s: &str) -> Option<WriteDisposition> {
        Some(match s {
            "WRITE_TRUNCATE" => WriteDisposition::Truncate,
            "WRITE_APPEND" => WriteDisposition::Append,
            "WRITE_EMPTY" => WriteDisposition::Empty,
            _ => return None,
        })
    }
}

/// Where a table is: the warehouse a Google Cloud project name stands for,
/// and the schema a BigQuery dataset stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRef {
    pub project: String,
    pub dataset: String,
    pub table: String,
}

/// A column of a DDL file (`bq_table_schema`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdlColumn {
    pub name: String,
    /// The BigQuery type (`STRING`, `INTEGER`, `NUMERIC`, `DATE`, …).
    pub bq_type: String,
    pub required: bool,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskKind {
    /// A query whose rows go to `table`, or a script (no table).
    Sql {
        sql: String,
        table: Option<TableRef>,
        write: WriteDisposition,
        temporary: bool,
    },
    CreateTable {
        table: TableRef,
        columns: Vec<DdlColumn>,
        force_delete: bool,
    },
    CopyTable {
        source: TableRef,
        destination: TableRef,
        /// strftime format of a date suffix added to the destination's name.
        date_suffix: Option<String>,
    },
    DeleteTable {
        table: TableRef,
    },
    /// A check: each statement answers a row whose first column is true
    /// when the expectation holds.
    Expectation {
        sql: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub kind: TaskKind,
    pub criticality: Criticality,
    pub description: Option<String>,
}

/// A table-to-table configuration, checked: its tasks in `workflow` order,
/// and each task's parents (indexes into `tasks`) from `task_dependencies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableToTable {
    /// As deployed (`<account>_<context>_<id>` under a context).
    pub configuration_id: String,
    pub account: String,
    pub environment: String,
    pub short_description: Option<String>,
    pub activated: bool,
    pub archived: bool,
    pub start_date: Option<NaiveDate>,
    /// A cron expression (UTC); None: launched only.
    pub schedule: Option<String>,
    pub max_active_runs: u32,
    pub task_concurrency: u32,
    /// Where a task that names no table (a script, an expectation) runs.
    pub default_project: String,
    pub default_dataset: String,
    pub tasks: Vec<Task>,
    pub parents: Vec<Vec<usize>>,
}

impl TableToTable {
    /// The id the action API names it by: `<configuration_id>_<ENV>`
    /// (a context's deployed id already carries its context).
    pub fn api_id(&self) -> String {
        format!("{}_{}", self.configuration_id, self.environment)
    }

    /// Tailer's job id: `gbq-to-gbq|<configuration_id>_<ENV>`.
    pub fn job_id(&self) -> String {
        format!("gbq-to-gbq|{}", self.api_id())
    }
}

/// A context: constants by name, substituted into the configurations
/// deployed with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub configuration_id: String,
    pub account: String,
    pub environment: String,
    pub parameters: BTreeMap<String, Value>,
}

impl Context {
    /// `{{FD_CONTEXT}}`: `<account>_<context id>`.
    pub fn qualified(&self) -> String {
        format!("{}_{}", self.account, self.configuration_id)
    }
}

/// Whether `s` is an account code: six digits (`000099`).
pub fn account_code(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Task ids: a letter, then letters, digits and `_`, ending on a letter or
/// digit (Tailer's SDK pattern `^[a-zA-Z][a-zA-Z0-9_]+[a-zA-Z0-9]$`).
pub fn valid_task_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() >= 3
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// The names reserved for sluice's own substitution (never a constant).
fn reserved(name: &str) -> bool {
    name.starts_with("FD_") || name == "TEMPLATE_CURRENT_DATE"
}

/// Substitutes `{{name}}` in a configuration's text with the context's
/// constants, as Tailer's SDK does: a quoted `"{{x}}"` becomes the JSON
/// value itself (objects too), an embedded `{{x}}` the raw value (strings
/// and numbers only). `{{FD_ENV}}`, `{{FD_ACCOUNT}}` and `{{FD_CONTEXT}}`
/// are set here; other `FD_*` and `TEMPLATE_CURRENT_DATE` stay for the
/// run. An unknown constant is a problem.
pub fn substitute_constants(
    text: &str,
    context: Option<&Context>,
    environment: &str,
    account: &str,
) -> Result<String, Vec<Problem>> {
    let mut builtins = BTreeMap::new();
    builtins.insert("FD_ENV".to_owned(), Value::String(environment.to_owned()));
    builtins.insert("FD_ACCOUNT".to_owned(), Value::String(account.to_owned()));
    if let Some(c) = context {
        builtins.insert("FD_CONTEXT".to_owned(), Value::String(c.qualified()));
    }
    let lookup = |name: &str| -> Option<Value> {
        builtins
            .get(name)
            .cloned()
            .or_else(|| context.and_then(|c| c.parameters.get(name).cloned()))
    };
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        let name = &rest[start + 2..start + 2 + len];
        let end = start + 2 + len + 2;
        let quoted = out.ends_with('"') || rest[..start].ends_with('"');
        let whole = quoted && rest[end..].starts_with('"') && rest[..start].ends_with('"');
        if reserved(name) && lookup(name).is_none()
            || name.contains(char::is_whitespace)
            || name.is_empty()
        {
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        match lookup(name) {
            Some(value) if whole => {
                // `"{{x}}"`: the value replaces the string, quotes and all.
                out.push_str(&rest[..start - 1]);
                out.push_str(&value.to_string());
                rest = &rest[end + 1..];
            }
            Some(Value::String(s)) => {
                out.push_str(&rest[..start]);
                // Inside a JSON string: escaped as JSON would.
                let escaped = Value::String(s).to_string();
                out.push_str(&escaped[1..escaped.len() - 1]);
                rest = &rest[end..];
            }
            Some(v @ Value::Number(_)) | Some(v @ Value::Bool(_)) => {
                out.push_str(&rest[..start]);
                out.push_str(&v.to_string());
                rest = &rest[end..];
            }
            Some(_) => {
                problems.push(problem(
                    format!("{{{{{name}}}}}"),
                    "an object or array constant can only stand alone in quotes (\"{{x}}\")",
                ));
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            }
            None => {
                problems.push(problem(
                    format!("{{{{{name}}}}}"),
                    match context {
                        Some(c) => {
                            format!("no constant `{name}` in context {}", c.configuration_id)
                        }
                        None => format!("constant `{name}` needs a context: deploy with --context"),
                    },
                ));
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            }
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Substitutes `{{FD_TIME}}` (hhmmss) with `time`'s.
pub fn substitute_time(text: &str, time: chrono::NaiveTime) -> String {
    text.replace("{{FD_TIME}}", &time.format("%H%M%S").to_string())
}

/// Substitutes the run's date variables: `{{FD_DATE}}` (YYYYMMDD),
/// `{{FD_DATE_YEAR_4}}`, `{{FD_DATE_YEAR_2}}`, `{{FD_DATE_MONTH}}`,
/// `{{FD_DATE_DAY}}`, and `{{TEMPLATE_CURRENT_DATE}}` (YYYY-MM-DD).
pub fn substitute_date(text: &str, date: NaiveDate) -> String {
    text.replace("{{FD_DATE}}", &date.format("%Y%m%d").to_string())
        .replace("{{FD_DATE_YEAR_4}}", &format!("{:04}", date.year()))
        .replace("{{FD_DATE_YEAR_2}}", &format!("{:02}", date.year() % 100))
        .replace("{{FD_DATE_MONTH}}", &format!("{:02}", date.month()))
        .replace("{{FD_DATE_DAY}}", &format!("{:02}", date.day()))
        .replace(
            "{{TEMPLATE_CURRENT_DATE}}",
            &date.format("%Y-%m-%d").to_string(),
        )
}

/// Reads the configuration's type and identity, whatever its type.
pub fn identity(doc: &Value) -> Result<(String, String, String, String), Vec<Problem>> {
    let mut problems = Vec::new();
    let text = |field: &str, problems: &mut Vec<Problem>| match doc.get(field) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            problems.push(problem(field, "expected a non-empty string"));
            String::new()
        }
        None => {
            problems.push(problem(field, "required"));
            String::new()
        }
    };
    if !doc.is_object() {
        return Err(vec![problem("$", "expected a JSON object")]);
    }
    let kind = text("configuration_type", &mut problems);
    let id = text("configuration_id", &mut problems);
    let env = text("environment", &mut problems);
    let account = text("account", &mut problems);
    if !env.is_empty() && !ENVIRONMENTS.contains(&env.as_str()) {
        problems.push(problem(
            "environment",
            format!("expected one of {}, got `{env}`", ENVIRONMENTS.join(", ")),
        ));
    }
    if !account.is_empty() && !account_code(&account) {
        problems.push(problem(
            "account",
            format!("expected a 6-digit account code, got `{account}`"),
        ));
    }
    if !id.is_empty() && (id.len() > 200 || id.contains(['/', '|', '\0'])) {
        problems.push(problem(
            "configuration_id",
            "expected at most 200 characters, none of them `/`, `|` or NUL",
        ));
    }
    if problems.is_empty() {
        Ok((kind, id, env, account))
    } else {
        Err(problems)
    }
}

/// Parses a context configuration.
pub fn parse_context(doc: &Value) -> Result<Context, Vec<Problem>> {
    let (_, id, environment, account) = identity(doc)?;
    let mut problems = Vec::new();
    let mut parameters = BTreeMap::new();
    match doc.get("parameters") {
        Some(Value::Object(map)) => {
            for (name, p) in map {
                let path = format!("parameters.{name}");
                if reserved(name) || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    problems.push(problem(
                        &path,
                        "a constant's name is letters, digits and `_`, and not FD_* or \
                         TEMPLATE_CURRENT_DATE",
                    ));
                    continue;
                }
                match p.get("value") {
                    Some(v) => {
                        parameters.insert(name.clone(), v.clone());
                    }
                    None => problems.push(problem(format!("{path}.value"), "required")),
                }
            }
        }
        Some(_) => problems.push(problem(
            "parameters",
            "expected an object keyed by constant name",
        )),
        None => problems.push(problem("parameters", "required")),
    }
    if problems.is_empty() {
        Ok(Context {
            configuration_id: id,
            account,
            environment,
            parameters,
        })
    } else {
        Err(problems)
    }
}

/// The files a configuration names (`sql_file`, `ddl_file`), which the
/// deployer reads beside it.
pub fn files_named(doc: &Value) -> Vec<String> {
    let mut files = export_files(doc);
    if let Some(Value::Array(tasks)) = doc.get("workflow") {
        for t in tasks {
            for field in ["sql_file", "ddl_file"] {
                if let Some(Value::String(f)) = t.get(field) {
                    files.push(f.clone());
                }
            }
        }
    }
    files
}

/// Parses and checks a table-to-table configuration. `files` holds the
/// text of each file it names (constants already substituted); `deployed_id`
/// is the id it is deployed under.
pub fn parse_table_to_table(
    doc: &Value,
    files: &BTreeMap<String, String>,
    deployed_id: &str,
) -> Result<TableToTable, Vec<Problem>> {
    let (kind, _, environment, account) = identity(doc)?;
    let mut p = Vec::new();
    if kind != TABLE_TO_TABLE {
        p.push(problem(
            "configuration_type",
            format!("expected `{TABLE_TO_TABLE}`, got `{kind}`"),
        ));
        return Err(p);
    }
    let f = Fields { doc, prefix: "" };
    let activated = f.boolean("activated", true, &mut p);
    let archived = f.boolean("archived", false, &mut p);
    let short_description = f.opt_text("short_description", &mut p);
    let start_date = f.opt_text("start_date", &mut p).and_then(|s| {
        let parts: Vec<Option<u32>> = s.split(',').map(|x| x.trim().parse().ok()).collect();
        match parts.as_slice() {
            [Some(y), Some(m), Some(d)] => NaiveDate::from_ymd_opt(*y as i32, *m, *d),
            _ => None,
        }
        .or_else(|| {
            p.push(problem(
                "start_date",
                format!("expected \"YYYY, MM, DD\", got `{s}`"),
            ));
            None
        })
    });
    if doc.get("schedule_interval").is_none() {
        p.push(problem("schedule_interval", "required"));
    }
    let schedule = f.schedule("schedule_interval", &mut p);
    let max_active_runs = f.count("max_active_runs", 1, &mut p);
    let task_concurrency = f.count("task_concurrency", 5, &mut p);
    let default_project = f.text("default_gcp_project_id", &mut p);
    let default_dataset = f.text("default_bq_dataset", &mut p);
    let default_write = f.disposition("default_write_disposition", None, &mut p);

    let mut tasks = Vec::new();
    match doc.get("workflow") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, t) in list.iter().enumerate() {
                let prefix = format!("workflow[{i}].");
                let tf = Fields {
                    doc: t,
                    prefix: &prefix,
                };
                if let Some(task) = tf.task(
                    files,
                    &default_project,
                    &default_dataset,
                    default_write,
                    &mut p,
                ) {
                    tasks.push(task);
                }
            }
        }
        Some(Value::Array(_)) => p.push(problem("workflow", "expected at least one task")),
        Some(_) => p.push(problem("workflow", "expected an array of tasks")),
        None => p.push(problem("workflow", "required")),
    }
    twice("workflow", tasks.iter().map(|t| t.id.as_str()), &mut p);
    let deps: Vec<String> = match doc.get("task_dependencies") {
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d {
                Value::String(s) => Some(s.clone()),
                _ => {
                    p.push(problem(
                        format!("task_dependencies[{i}]"),
                        "expected a string",
                    ));
                    None
                }
            })
            .collect(),
        Some(_) => {
            p.push(problem("task_dependencies", "expected an array of strings"));
            Vec::new()
        }
        None => {
            p.push(problem("task_dependencies", "required"));
            Vec::new()
        }
    };
    let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let parents = match dependencies(&deps, &ids) {
        Ok(parents) => parents,
        Err(mut more) => {
            p.append(&mut more);
            Vec::new()
        }
    };
    // A warning or transparent parent with a critical child is refused.
    for (child, ps) in parents.iter().enumerate() {
        for &parent in ps {
            let soft = matches!(
                tasks[parent].criticality,
                Criticality::Warning | Criticality::Transparent
            );
            if soft && tasks[child].criticality == Criticality::Critical {
                p.push(problem(
                    "task_dependencies",
                    format!(
                        "task `{}` is critical but its parent `{}` is {}: a failure the \
                         parent lets through would fail the child",
                        tasks[child].id,
                        tasks[parent].id,
                        format!("{:?}", tasks[parent].criticality).to_lowercase()
                    ),
                ));
            }
        }
    }
    if !p.is_empty() {
        return Err(p);
    }
    Ok(TableToTable {
        configuration_id: deployed_id.to_owned(),
        account,
        environment,
        short_description,
        activated,
        archived,
        start_date,
        schedule,
        max_active_runs,
        task_concurrency,
        default_project,
        default_dataset,
        tasks,
        parents,
    })
}

/// Names each task id of `ids` used more than once.
fn twice<'a>(path: &str, ids: impl Iterator<Item = &'a str>, p: &mut Vec<Problem>) {
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id) {
            p.push(problem(path, format!("task id `{id}` is used twice")));
        }
    }
}

/// The fields of one JSON object, read with their path for problems.
struct Fields<'a> {
    doc: &'a Value,
    prefix: &'a str,
}

impl Fields<'_> {
    fn path(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    /// A schedule: `"None"` (or nothing) for none, else a five-field cron
    /// expression.
    fn schedule(&self, field: &str, p: &mut Vec<Problem>) -> Option<String> {
        let s = self
            .opt_text(field, p)
            .filter(|s| !s.is_empty() && s != "None" && s != "none")?;
        if cron_fields(&s).is_none() {
            p.push(problem(
                self.path(field),
                format!("expected \"None\" or a cron expression of 5 fields, got `{s}`"),
            ));
        }
        Some(s)
    }

    fn opt_text(&self, field: &str, p: &mut Vec<Problem>) -> Option<String> {
        match self.doc.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                p.push(problem(self.path(field), "expected a string"));
                None
            }
        }
    }

    fn text(&self, field: &str, p: &mut Vec<Problem>) -> String {
        match self.opt_text(field, p) {
            Some(s) if !s.is_empty() => s,
            Some(_) => {
                p.push(problem(self.path(field), "expected a non-empty string"));
                String::new()
            }
            None => {
                if self.doc.get(field).is_none() {
                    p.push(problem(self.path(field), "required"));
                }
                String::new()
            }
        }
    }

    fn boolean(&self, field: &str, default: bool, p: &mut Vec<Problem>) -> bool {
        match self.doc.get(field) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                p.push(problem(self.path(field), "expected true or false"));
                default
            }
        }
    }

    fn count(&self, field: &str, default: u32, p: &mut Vec<Problem>) -> u32 {
        match self.doc.get(field) {
            None | Some(Value::Null) => default,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=1000).contains(&n) => n as u32,
                _ => {
                    p.push(problem(
                        self.path(field),
                        format!("expected a whole number from 1 to 1000, got {v}"),
                    ));
                    default
                }
            },
        }
    }

    fn disposition(
        &self,
        field: &str,
        default: Option<WriteDisposition>,
        p: &mut Vec<Problem>,
    ) -> Option<WriteDisposition> {
        let s = match (self.doc.get(field), default) {
            (None, Some(d)) => return Some(d),
            (None, None) => {
                p.push(problem(self.path(field), "required"));
                return None;
            }
            (Some(_), _) => self.text(field, p),
        };
        WriteDisposition::parse(&s).or_else(|| {
            p.push(problem(
                self.path(field),
                format!("expected WRITE_TRUNCATE, WRITE_APPEND or WRITE_EMPTY, got `{s}`"),
            ));
            None
        })
    }

    fn file<'f>(
        &self,
        field: &str,
        files: &'f BTreeMap<String, String>,
        p: &mut Vec<Problem>,
    ) -> Option<&'f String> {
        let name = self.text(field, p);
        if name.is_empty() {
            return None;
        }
        files.get(&name).or_else(|| {
            p.push(problem(
                self.path(field),
                format!("file `{name}` was not found beside the configuration"),
            ));
            None
        })
    }

    fn table(
        &self,
        table_field: &str,
        project: &str,
        dataset: &str,
        p: &mut Vec<Problem>,
    ) -> TableRef {
        TableRef {
            project: self
                .opt_text("gcp_project_id", p)
                .unwrap_or_else(|| project.to_owned()),
            dataset: self
                .opt_text("bq_dataset", p)
                .unwrap_or_else(|| dataset.to_owned()),
            table: self.text(table_field, p),
        }
    }

    fn task(
        &self,
        files: &BTreeMap<String, String>,
        project: &str,
        dataset: &str,
        write: Option<WriteDisposition>,
        p: &mut Vec<Problem>,
    ) -> Option<Task> {
        if !self.doc.is_object() {
            p.push(problem(
                self.prefix.trim_end_matches('.'),
                "expected a task object",
            ));
            return None;
        }
        let id = self.text("id", p);
        if !id.is_empty() && !valid_task_id(&id) {
            p.push(problem(
                self.path("id"),
                format!(
                    "`{id}` is not a task id: a letter, then letters, digits or `_`, ending on a \
                     letter or digit (^[a-zA-Z][a-zA-Z0-9_]+[a-zA-Z0-9]$)"
                ),
            ));
        }
        let criticality = match self.opt_text("criticality", p).as_deref() {
            None | Some("critical") => Criticality::Critical,
            Some("warning") => Criticality::Warning,
            Some("transparent") => Criticality::Transparent,
            Some("break") => Criticality::Break,
            Some("stop") => Criticality::Stop,
            Some(other) => {
                p.push(problem(
                    self.path("criticality"),
                    format!(
                        "expected critical, warning, transparent, break or stop, got `{other}`"
                    ),
                ));
                Criticality::Critical
            }
        };
        let task_type = self
            .opt_text("task_type", p)
            .unwrap_or_else(|| "sql".into());
        let kind = match task_type.as_str() {
            "sql" => {
                let sql = self.file("sql_file", files, p).cloned();
                let table = self.opt_text("table_name", p).map(|t| TableRef {
                    project: self
                        .opt_text("gcp_project_id", p)
                        .unwrap_or_else(|| project.to_owned()),
                    dataset: self
                        .opt_text("bq_dataset", p)
                        .unwrap_or_else(|| dataset.to_owned()),
                    table: t,
                });
                let write = self.disposition("write_disposition", write, p);
                TaskKind::Sql {
                    sql: sql.unwrap_or_default(),
                    table,
                    write: write.unwrap_or(WriteDisposition::Truncate),
                    temporary: self.boolean("temporary_table", false, p),
                }
            }
            "create_gbq_table" => {
                let table = self.table("bq_table", project, dataset, p);
                let columns = self
                    .file("ddl_file", files, p)
                    .map(|text| ddl_columns(text, &self.path("ddl_file"), p))
                    .unwrap_or_default();
                TaskKind::CreateTable {
                    table,
                    columns,
                    force_delete: self.boolean("force_delete", false, p),
                }
            }
            "copy_gbq_table" => {
                let source = TableRef {
                    project: self.text("source_gcp_project_id", p),
                    dataset: self.text("source_bq_dataset", p),
                    table: self.text("source_bq_table", p),
                };
                let destination = self.table("destination_bq_table", project, dataset, p);
                let date_suffix = self
                    .boolean("destination_bq_table_date_suffix", false, p)
                    .then(|| {
                        self.opt_text("destination_bq_table_date_suffix_format", p)
                            .unwrap_or_else(|| "%Y%m%d".into())
                    });
                TaskKind::CopyTable {
                    source,
                    destination,
                    date_suffix,
                }
            }
            "delete_gbq_table" => TaskKind::DeleteTable {
                table: TableRef {
                    project: self
                        .opt_text("gcp_project_id", p)
                        .unwrap_or_else(|| project.to_owned()),
                    dataset: self.text("bq_dataset", p),
                    table: self.text("bq_table", p),
                },
            },
            "expectation" => TaskKind::Expectation {
                sql: self.file("sql_file", files, p).cloned().unwrap_or_default(),
            },
            other => {
                p.push(problem(
                    self.path("task_type"),
                    format!(
                        "expected sql, create_gbq_table, copy_gbq_table, delete_gbq_table or \
                         expectation, got `{other}`"
                    ),
                ));
                return None;
            }
        };
        Some(Task {
            id,
            kind,
            criticality,
            description: self.opt_text("short_description", p),
        })
    }
}

/// The columns of a DDL file (`bq_table_schema`).
fn ddl_columns(text: &str, path: &str, p: &mut Vec<Problem>) -> Vec<DdlColumn> {
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            p.push(problem(path, format!("the DDL file is not JSON: {e}")));
            return Vec::new();
        }
    };
    let Some(Value::Array(schema)) = doc.get("bq_table_schema") else {
        p.push(problem(
            format!("{path}: bq_table_schema"),
            "required: an array of {name, type, description, mode}",
        ));
        return Vec::new();
    };
    let mut cols = Vec::new();
    for (i, c) in schema.iter().enumerate() {
        let at = format!("{path}: bq_table_schema[{i}]");
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        let ty = c.get("type").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() || ty.is_empty() {
            p.push(problem(at, "a column needs a name and a type"));
            continue;
        }
        if bq_type(ty).is_none() {
            p.push(problem(
                format!("{at}.type"),
                format!("`{ty}` is not a BigQuery type sluice maps"),
            ));
        }
        cols.push(DdlColumn {
            name: name.to_owned(),
            bq_type: ty.to_ascii_uppercase(),
            required: c.get("mode").and_then(Value::as_str) == Some("REQUIRED"),
            description: c
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
    }
    cols
}

/// A BigQuery type in the warehouse's words: (PostgreSQL, SQLite).
///
/// | BigQuery | PostgreSQL | SQLite |
/// |---|---|---|
/// | STRING | text | TEXT |
/// | INTEGER, INT64 | bigint | INTEGER |
/// | FLOAT, FLOAT64 | double precision | REAL |
/// | NUMERIC, BIGNUMERIC | numeric | NUMERIC |
/// | BOOLEAN, BOOL | boolean | INTEGER |
/// | DATE | date | TEXT |
/// | DATETIME | timestamp | TEXT |
/// | TIMESTAMP | timestamptz | TEXT |
/// | TIME | time | TEXT |
/// | BYTES | bytea | BLOB |
/// | JSON, RECORD, STRUCT | jsonb | TEXT |
pub fn bq_type(ty: &str) -> Option<(&'static str, &'static str)> {
    Some(match ty.to_ascii_uppercase().as_str() {
        "STRING" => ("text", "TEXT"),
        "INTEGER" | "INT64" => ("bigint", "INTEGER"),
        "FLOAT" | "FLOAT64" => ("double precision", "REAL"),
        "NUMERIC" | "BIGNUMERIC" | "DECIMAL" => ("numeric", "NUMERIC"),
        "BOOLEAN" | "BOOL" => ("boolean", "INTEGER"),
        "DATE" => ("date", "TEXT"),
        "DATETIME" => ("timestamp", "TEXT"),
        "TIMESTAMP" => ("timestamptz", "TEXT"),
        "TIME" => ("time", "TEXT"),
        "BYTES" => ("bytea", "BLOB"),
        "JSON" | "RECORD" | "STRUCT" => ("jsonb", "TEXT"),
        _ => return None,
    })
}

/// Parses `task_dependencies` (Airflow's bitshift syntax: `a >> b` runs b
/// after a, `a, b` and `[a, b]` are groups run side by side; several
/// strings make one DAG) into each task's parents. Every id must be one of
/// `ids`, and the graph must have no cycle.
pub fn dependencies(deps: &[String], ids: &[&str]) -> Result<Vec<Vec<usize>>, Vec<Problem>> {
    let mut parents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); ids.len()];
    let mut problems = Vec::new();
    for (i, line) in deps.iter().enumerate() {
        let path = format!("task_dependencies[{i}]");
        let mut previous: Option<Vec<usize>> = None;
        for stage in line.split(">>") {
            let names: Vec<&str> = stage
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(str::trim)
                .collect();
            if names.iter().any(|n| n.is_empty() || n.contains(['[', ']'])) {
                problems.push(problem(
                    &path,
                    format!("`{}` is not a task or a [group] of tasks", stage.trim()),
                ));
                previous = None;
                continue;
            }
            let mut group = Vec::new();
            for n in names {
                match ids.iter().position(|id| *id == n) {
                    Some(k) => group.push(k),
                    None => problems.push(problem(&path, format!("task `{n}` is not in workflow"))),
                }
            }
            if let Some(prev) = &previous {
                for &child in &group {
                    parents[child].extend(prev.iter().copied());
                }
            }
            previous = Some(group);
        }
    }
    if problems.is_empty() {
        if let Some(cycle) = find_cycle(&parents) {
            problems.push(problem(
                "task_dependencies",
                format!(
                    "the tasks depend on each other in a circle: {}",
                    cycle
                        .iter()
                        .map(|&k| ids[k])
                        .collect::<Vec<_>>()
                        .join(" >> ")
                ),
            ));
        }
    }
    if problems.is_empty() {
        Ok(parents
            .into_iter()
            .map(|s| s.into_iter().collect())
            .collect())
    } else {
        Err(problems)
    }
}

fn find_cycle(parents: &[BTreeSet<usize>]) -> Option<Vec<usize>> {
    // 0: not seen, 1: on the path, 2: done.
    fn visit(
        k: usize,
        parents: &[BTreeSet<usize>],
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[k] = 1;
        path.push(k);
        for &p in &parents[k] {
            if state[p] == 1 {
                let from = path.iter().position(|x| *x == p).unwrap_or(0);
                let mut cycle: Vec<usize> = path[from..].to_vec();
                cycle.push(p);
                cycle.reverse();
                return Some(cycle);
            }
            if state[p] == 0 {
                if let Some(c) = visit(p, parents, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state[k] = 2;
        None
    }
    let mut state = vec![0u8; parents.len()];
    for k in 0..parents.len() {
        if state[k] == 0 {
            if let Some(c) = visit(k, parents, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The five fields of a cron expression, checked for shape (each field
/// `*`, numbers, ranges, lists and steps).
pub fn cron_fields(expr: &str) -> Option<[String; 5]> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let [a, b, c, d, e] = fields.as_slice() else {
        return None;
    };
    let ok = |f: &str| {
        !f.is_empty()
            && f.bytes()
                .all(|x| x.is_ascii_digit() || matches!(x, b'*' | b',' | b'-' | b'/'))
    };
    [a, b, c, d, e]
        .iter()
        .all(|f| ok(f))
        .then(|| [a, b, c, d, e].map(|s| s.to_string()))
}

/// How a table-to-storage task writes its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileFormat {
    /// CSV (else JSON, a row a line).
    pub csv: bool,
    pub header: bool,
    pub delimiter: String,
    pub gzip: bool,
}

/// One task of a table-to-storage configuration: a SELECT whose rows go to
/// a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportTask {
    pub task_id: String,
    pub sql: String,
    /// The warehouse the query runs in (`gcp_project_id`).
    pub project: String,
    /// The object store it writes to (`gcs_dest_bucket`).
    pub bucket: String,
    /// The folder in it (`gcs_dest_prefix`; date variables allowed).
    pub prefix: String,
    /// The file's name (`output_filename`; `{{FD_DATE}}`, `{{FD_TIME}}`).
    pub output_filename: String,
    pub format: FileFormat,
}

/// A table-to-storage configuration (version 3), checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableToStorage {
    pub configuration_id: String,
    pub account: String,
    pub environment: String,
    pub activated: bool,
    pub archived: bool,
    pub schedule: Option<String>,
    pub generate_top_file: bool,
    pub delete_dest_bucket_content: bool,
    pub tasks: Vec<ExportTask>,
}

/// The files a table-to-storage configuration names (`sql_file` of its
/// tasks).
fn export_files(doc: &Value) -> Vec<String> {
    doc.get("tasks")
        .and_then(Value::as_array)
        .map(|tasks| {
            tasks
                .iter()
                .filter_map(|t| t.get("sql_file").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses and checks a table-to-storage configuration (version 3): the
/// globals are each task's defaults.
pub fn parse_table_to_storage(
    doc: &Value,
    files: &BTreeMap<String, String>,
    deployed_id: &str,
) -> Result<TableToStorage, Vec<Problem>> {
    let (kind, _, environment, account) = identity(doc)?;
    let mut p = Vec::new();
    if kind != TABLE_TO_STORAGE {
        return Err(vec![problem(
            "configuration_type",
            format!("expected `{TABLE_TO_STORAGE}`, got `{kind}`"),
        )]);
    }
    let f = Fields { doc, prefix: "" };
    if f.opt_text("version", &mut p).as_deref() != Some("3") {
        p.push(problem(
            "version",
            "sluice deploys version \"3\" table-to-storage files (tasks with their sql_file)",
        ));
    }
    let activated = f.boolean("activated", true, &mut p);
    let archived = f.boolean("archived", false, &mut p);
    let schedule = f.schedule("schedule_interval", &mut p);
    let generate_top_file = f.boolean("generate_top_file", false, &mut p);
    let delete_dest_bucket_content = f.boolean("delete_dest_bucket_content", false, &mut p);
    let mut tasks = Vec::new();
    match doc.get("tasks") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, t) in list.iter().enumerate() {
                let prefix = format!("tasks[{i}].");
                let tf = Fields {
                    doc: t,
                    prefix: &prefix,
                };
                // A task's field, else the configuration's.
                let text = |field: &str, p: &mut Vec<Problem>| {
                    tf.opt_text(field, p)
                        .or_else(|| f.opt_text(field, p))
                        .unwrap_or_default()
                };
                let task_id = tf.text("task_id", &mut p);
                if !task_id.is_empty() && !valid_task_id(&task_id) {
                    p.push(problem(
                        tf.path("task_id"),
                        format!(
                            "`{task_id}` is not a task id (^[a-zA-Z][a-zA-Z0-9_]+[a-zA-Z0-9]$)"
                        ),
                    ));
                }
                let sql = tf
                    .file("sql_file", files, &mut p)
                    .cloned()
                    .unwrap_or_default();
                let output_filename = tf.text("output_filename", &mut p);
                let required = |field: &str, p: &mut Vec<Problem>| {
                    let v = text(field, p);
                    if v.is_empty() {
                        p.push(problem(
                            tf.path(field),
                            "required (in the task or the configuration)",
                        ));
                    }
                    v
                };
                let project = required("gcp_project_id", &mut p);
                let bucket = required("gcs_dest_bucket", &mut p);
                let dest_prefix = required("gcs_dest_prefix", &mut p);
                let csv = match text("destination_format", &mut p).as_str() {
                    "" | "CSV" => true,
                    "NEWLINE_DELIMITED_JSON" | "JSON" => false,
                    other => {
                        p.push(problem(
                            tf.path("destination_format"),
                            format!("expected CSV or NEWLINE_DELIMITED_JSON, got `{other}` (AVRO and PARQUET are not written)"),
                        ));
                        true
                    }
                };
                let header = match tf
                    .doc
                    .get("print_header")
                    .or_else(|| doc.get("print_header"))
                {
                    None => true,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        p.push(problem(tf.path("print_header"), "expected true or false"));
                        true
                    }
                };
                let delimiter = match text("field_delimiter", &mut p) {
                    d if d.is_empty() => ",".to_owned(),
                    d if d.chars().count() == 1 => d,
                    d => {
                        p.push(problem(
                            tf.path("field_delimiter"),
                            format!("expected one character, got `{d}`"),
                        ));
                        ",".to_owned()
                    }
                };
                let gzip = match text("compression", &mut p).as_str() {
                    "" | "None" | "NONE" => false,
                    "GZIP" => true,
                    other => {
                        p.push(problem(
                            tf.path("compression"),
                            format!("expected None or GZIP, got `{other}`"),
                        ));
                        false
                    }
                };
                tasks.push(ExportTask {
                    task_id,
                    sql,
                    project,
                    bucket,
                    prefix: dest_prefix.trim_matches('/').to_owned(),
                    output_filename,
                    format: FileFormat {
                        csv,
                        header,
                        delimiter,
                        gzip,
                    },
                });
            }
        }
        Some(_) => p.push(problem("tasks", "expected a non-empty array of tasks")),
        None => p.push(problem("tasks", "required")),
    }
    twice("tasks", tasks.iter().map(|t| t.task_id.as_str()), &mut p);
    p.dedup();
    if !p.is_empty() {
        return Err(p);
    }
    Ok(TableToStorage {
        configuration_id: deployed_id.to_owned(),
        account,
        environment,
        activated,
        archived,
        schedule,
        generate_top_file,
        delete_dest_bucket_content,
        tasks,
    })
}

/// Where a storage-to-storage file comes from or goes: a bucket the
/// administrator declared, and a folder in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Place {
    pub bucket: String,
    pub prefix: String,
}

/// A storage-to-storage configuration (version 3), checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageToStorage {
    pub configuration_id: String,
    pub account: String,
    pub environment: String,
    pub activated: bool,
    pub archived: bool,
    pub templates: Vec<String>,
    pub source: Place,
    /// Where a copied file is archived in the source's bucket (None: not).
    pub archive_prefix: Option<String>,
    pub destinations: Vec<Place>,
    /// NONE, PROCESS, TRIGGER_FAILED_STATUS or TRIGGER_SUCCESS_STATUS.
    pub empty_file_policy: String,
    pub max_active_runs: u32,
}

impl StorageToStorage {
    /// The job id of a template's runs:
    /// `storage-to-storage|<account>|<configuration_id>|<ENV>|<template>`.
    pub fn job_id(&self, template: &str) -> String {
        format!(
            "storage-to-storage|{}|{}|{}|{template}",
            self.account, self.configuration_id, self.environment
        )
    }

    /// The first template `name` matches, and the file's date by it.
    pub fn matching(&self, name: &str) -> Option<(&str, Option<NaiveDate>)> {
        self.templates
            .iter()
            .find_map(|t| match_template(t, name).map(|d| (t.as_str(), d)))
    }
}

/// One piece of a filename template.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// `n` digits standing for a date part.
    Digits(usize, &'static str),
    /// `{{FD_BLOB_n}}`: any `n` characters.
    Any(usize),
}

fn pieces(template: &str) -> Option<Vec<Piece>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Piece::Text(rest[..start].to_owned()));
        }
        let end = rest[start..].find("}}")? + start;
        let var = &rest[start + 2..end];
        out.push(match var {
            "FD_DATE" => Piece::Digits(8, "date"),
            "FD_TIME" => Piece::Digits(6, "time"),
            "FD_DATE_YEAR_4" => Piece::Digits(4, "year4"),
            "FD_DATE_YEAR_2" => Piece::Digits(2, "year2"),
            "FD_DATE_MONTH" => Piece::Digits(2, "month"),
            "FD_DATE_DAY" => Piece::Digits(2, "day"),
            v => Piece::Any(
                v.strip_prefix("FD_BLOB_")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)?,
            ),
        });
        rest = &rest[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_owned()));
    }
    Some(out)
}

/// Whether file `name` matches `template` (`*` matches every file); the
/// file's date when the template carries one: `{{FD_DATE}}` first, else
/// the year, month and day parts (a missing month or day is 01; a two-digit
/// year is 20YY).
pub fn match_template(template: &str, name: &str) -> Option<Option<NaiveDate>> {
    if template == "*" {
        return Some(None);
    }
    let pieces = pieces(template)?;
    let mut at = 0;
    let mut parts: BTreeMap<&str, &str> = BTreeMap::new();
    for p in &pieces {
        match p {
            Piece::Text(t) => {
                if !name[at..].starts_with(t.as_str()) {
                    return None;
                }
                at += t.len();
            }
            Piece::Digits(n, kind) => {
                let part = name.get(at..at + n)?;
                if !part.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                parts.insert(kind, part);
                at += n;
            }
            Piece::Any(n) => {
                let part = name.get(at..)?;
                let len: usize = part.chars().take(*n).map(char::len_utf8).sum();
                if part.chars().count() < *n {
                    return None;
                }
                at += len;
            }
        }
    }
    if at != name.len() {
        return None;
    }
    let date = if let Some(d) = parts.get("date") {
        NaiveDate::parse_from_str(d, "%Y%m%d").ok()
    } else {
        let year = match (parts.get("year4"), parts.get("year2")) {
            (Some(y), _) => y.parse::<i32>().ok(),
            (None, Some(y)) => y.parse::<i32>().ok().map(|y| 2000 + y),
            _ => None,
        };
        let part = |k: &str| {
            parts
                .get(k)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(1)
        };
        year.and_then(|y| NaiveDate::from_ymd_opt(y, part("month"), part("day")))
    };
    Some(date)
}

/// Parses and checks a storage-to-storage configuration (version 3).
pub fn parse_storage_to_storage(doc: &Value) -> Result<StorageToStorage, Vec<Problem>> {
    let (kind, configuration_id, environment, account) = identity(doc)?;
    if kind != STORAGE_TO_STORAGE {
        return Err(vec![problem(
            "configuration_type",
            format!("expected `{STORAGE_TO_STORAGE}`, got `{kind}`"),
        )]);
    }
    let mut p = Vec::new();
    let f = Fields { doc, prefix: "" };
    let activated = f.boolean("activated", true, &mut p);
    let archived = f.boolean("archived", false, &mut p);
    let max_active_runs = f.count("max_active_runs", 5, &mut p);
    let empty_file_policy = f
        .opt_text("empty_file_policy", &mut p)
        .unwrap_or_else(|| "NONE".into());
    if ![
        "NONE",
        "PROCESS",
        "TRIGGER_FAILED_STATUS",
        "TRIGGER_SUCCESS_STATUS",
    ]
    .contains(&empty_file_policy.as_str())
    {
        p.push(problem(
            "empty_file_policy",
            format!(
                "expected NONE, PROCESS, TRIGGER_FAILED_STATUS or TRIGGER_SUCCESS_STATUS, got \
                 `{empty_file_policy}`"
            ),
        ));
    }
    let mut templates = Vec::new();
    match doc.get("filename_templates") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, t) in list.iter().enumerate() {
                let path = format!("filename_templates[{i}].filename_template");
                match t.get("filename_template").and_then(Value::as_str) {
                    Some(x) if x == "*" || pieces(x).is_some() => templates.push(x.to_owned()),
                    Some(x) => p.push(problem(
                        path,
                        format!("`{x}`: a template's variables are FD_DATE, FD_TIME, FD_DATE_YEAR_4, FD_DATE_YEAR_2, FD_DATE_MONTH, FD_DATE_DAY and FD_BLOB_n"),
                    )),
                    None => p.push(problem(path, "required")),
                }
            }
        }
        _ => p.push(problem(
            "filename_templates",
            "required: an array of {filename_template}",
        )),
    }
    let place = |v: Option<&Value>,
                 path: &str,
                 bucket: [&str; 3],
                 prefix: [&str; 3],
                 p: &mut Vec<Problem>| {
        let Some(v) = v.filter(|v| v.is_object()) else {
            p.push(problem(path, "required: an object"));
            return None;
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("gcs");
        let (b, x) = match kind {
            "gcs" => (bucket[0], prefix[0]),
            "s3" => (bucket[1], prefix[1]),
            "local" => (bucket[2], prefix[2]),
            other => {
                p.push(problem(
                    format!("{path}.type"),
                    format!(
                        "expected gcs, s3 or local, got `{other}` (azure and sftp are not served)"
                    ),
                ));
                return None;
            }
        };
        let get = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let Some(bucket) = get(b).filter(|s| !s.is_empty()) else {
            p.push(problem(format!("{path}.{b}"), "required"));
            return None;
        };
        Some((
            Place {
                bucket,
                prefix: get(x).unwrap_or_default().trim_matches('/').to_owned(),
            },
            get("archive_prefix").filter(|a| !a.is_empty()),
        ))
    };
    let source = place(
        doc.get("source"),
        "source",
        ["gcs_source_bucket", "s3_source_bucket", "bucket"],
        ["gcs_source_prefix", "s3_source_prefix", "prefix"],
        &mut p,
    );
    let mut destinations = Vec::new();
    match doc.get("destinations") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, d) in list.iter().enumerate() {
                if let Some((place, _)) = place(
                    Some(d),
                    &format!("destinations[{i}]"),
                    ["gcs_destination_bucket", "s3_bucket", "bucket"],
                    ["gcs_destination_prefix", "s3_destination_prefix", "prefix"],
                    &mut p,
                ) {
                    destinations.push(place);
                }
            }
        }
        _ => p.push(problem("destinations", "required: a non-empty array")),
    }
    let (Some((source, archive_prefix)), true) = (source, p.is_empty()) else {
        return Err(p);
    };
    Ok(StorageToStorage {
        configuration_id,
        account,
        environment,
        activated,
        archived,
        templates,
        source,
        archive_prefix: archive_prefix.map(|a| a.trim_matches('/').to_owned()),
        destinations,
        empty_file_policy,
        max_active_runs,
    })
}

/// The job id of a configuration's runs, as Tailer forms them:
/// `gbq-to-gbq|<api id>` for table-to-table, `<type>|<api id>` otherwise.
pub fn job_id(configuration_type: &str, api_id: &str) -> String {
    match configuration_type {
        TABLE_TO_TABLE => format!("gbq-to-gbq|{api_id}"),
        other => format!("{other}|{api_id}"),
    }
}

/// A workflow (version 2): when every job of `authorized_job_ids` has
/// succeeded since it last fired, `target_dag` runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub configuration_id: String,
    pub account: String,
    pub environment: String,
    pub activated: bool,
    pub archived: bool,
    pub authorized_job_ids: Vec<String>,
    /// The target's configuration type and API id.
    pub target_type: String,
    pub target_id: String,
    /// A cron expression (UTC) at which the fired jobs are forgotten.
    pub reset_schedule: Option<String>,
}

/// Parses and checks a workflow configuration (version 2).
pub fn parse_workflow(doc: &Value) -> Result<Workflow, Vec<Problem>> {
    let (kind, configuration_id, environment, account) = identity(doc)?;
    let mut p = Vec::new();
    if kind != WORKFLOW {
        return Err(vec![problem(
            "configuration_type",
            format!("expected `{WORKFLOW}`, got `{kind}`"),
        )]);
    }
    let f = Fields { doc, prefix: "" };
    match f.opt_text("version", &mut p).as_deref() {
        Some("2") => {}
        other => p.push(problem(
            "version",
            format!(
                "sluice deploys version \"2\" workflows (target_dag an object), got {}",
                other
                    .map(|v| format!("\"{v}\""))
                    .unwrap_or_else(|| "none".into())
            ),
        )),
    }
    let activated = f.boolean("activated", true, &mut p);
    let archived = f.boolean("archived", false, &mut p);
    let reset_schedule = f.schedule("schedule_interval_reset", &mut p);
    let authorized_job_ids = match doc.get("authorized_job_ids") {
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .filter_map(|(i, j)| match j.as_str() {
                Some(s) if !s.is_empty() => Some(s.to_owned()),
                _ => {
                    p.push(problem(
                        format!("authorized_job_ids[{i}]"),
                        "expected a job id",
                    ));
                    None
                }
            })
            .collect(),
        Some(_) => {
            p.push(problem(
                "authorized_job_ids",
                "expected a non-empty array of job ids",
            ));
            Vec::new()
        }
        None => {
            p.push(problem("authorized_job_ids", "required"));
            Vec::new()
        }
    };
    let (target_type, target_id) = match doc.get("target_dag") {
        Some(t @ Value::Object(_)) => {
            let tf = Fields {
                doc: t,
                prefix: "target_dag.",
            };
            (
                tf.text("configuration_type", &mut p),
                tf.text("configuration_id", &mut p),
            )
        }
        Some(_) => {
            p.push(problem(
                "target_dag",
                "expected {configuration_type, configuration_id} (version 2)",
            ));
            (String::new(), String::new())
        }
        None => {
            p.push(problem("target_dag", "required"));
            (String::new(), String::new())
        }
    };
    if !target_type.is_empty() && target_type != TABLE_TO_TABLE {
        p.push(problem(
            "target_dag.configuration_type",
            format!("sluice runs table-to-table targets, got `{target_type}`"),
        ));
    }
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Workflow {
        configuration_id,
        account,
        environment,
        activated,
        archived,
        authorized_job_ids,
        target_type,
        target_id,
        reset_schedule,
    })
}

/// A run id as Tailer forms them: `YYYYMMDD-HHMMSS-<uuid>`.
pub fn new_run_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let mut b: [u8; 16] = rand::random();
    // A version 4 UUID, as Tailer's are.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}-{}",
        now.format("%Y%m%d-%H%M%S"),
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A duration as Tailer prints it: `H:MM:SS.ffffff`.
pub fn duration_text(micros: i64) -> String {
    let micros = micros.max(0);
    let secs = micros / 1_000_000;
    format!(
        "{}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        micros % 1_000_000
    )
}

/// A warehouse an administrator declared for an organization
/// (`sluice warehouse add`): what a configuration's Google Cloud project
/// name (`gcp_project_id`) stands for — `embedded`, or a PostgreSQL URL.
pub type Warehouse = crate::NamedConnection;

/// A configuration as deployed: its latest version's body (the parsed
/// configuration as JSON) and its switches.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployed {
    pub organization_id: crate::OrganizationId,
    pub configuration_type: String,
    /// The id the action API names it by (`<configuration_id>_<ENV>` for
    /// table-to-table).
    pub api_id: String,
    pub configuration_id: String,
    pub account: String,
    pub environment: String,
    pub version: i64,
    pub activated: bool,
    pub archived: bool,
    pub max_active_runs: u32,
    pub body: Value,
    pub next_run_at: Option<crate::time::Timestamp>,
    pub created_at: crate::time::Timestamp,
    pub modified_at: crate::time::Timestamp,
}

/// One run of a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRun {
    pub seq: i64,
    /// `YYYYMMDD-HHMMSS-<uuid>`.
    pub id: String,
    pub organization_id: crate::OrganizationId,
    pub configuration_type: String,
    pub api_id: String,
    /// The configuration's version this run runs (kept when it is
    /// deployed again).
    pub version: i64,
    pub job_id: String,
    /// The run's logical date (`{{FD_DATE}}`).
    pub execution_date: NaiveDate,
    /// What the run works on: a storage-to-storage run's file.
    pub input: Option<String>,
    pub status: RunStatus,
    /// A status set by hand (`CHECKED`), which the API reports instead.
    pub reported: Option<ActionStatus>,
    /// A `warning` task failed.
    pub warned: bool,
    /// A `stop` task failed: the run succeeded, and workflows awaiting it
    /// do not count it.
    pub stopped: bool,
    pub error: Option<String>,
    pub attempt: i32,
    pub lease_owner: Option<String>,
    pub lease_token: i64,
    pub created_at: crate::time::Timestamp,
    pub started_at: Option<crate::time::Timestamp>,
    pub finished_at: Option<crate::time::Timestamp>,
    pub modified_at: crate::time::Timestamp,
}

impl ActionRun {
    /// A new run (PENDING) of configuration `c`'s current version, for the
    /// logical date `date`.
    pub fn new(c: &Deployed, date: NaiveDate, now: crate::time::Timestamp) -> ActionRun {
        ActionRun {
            seq: 0,
            id: new_run_id(now),
            organization_id: c.organization_id.clone(),
            configuration_type: c.configuration_type.clone(),
            api_id: c.api_id.clone(),
            version: c.version,
            job_id: job_id(&c.configuration_type, &c.api_id),
            execution_date: date,
            input: None,
            status: RunStatus::Pending,
            reported: None,
            warned: false,
            stopped: false,
            error: None,
            attempt: 0,
            lease_owner: None,
            lease_token: 0,
            created_at: now,
            started_at: None,
            finished_at: None,
            modified_at: now,
        }
    }

    /// The status the action API reports.
    pub fn action_status(&self) -> ActionStatus {
        self.reported
            .unwrap_or_else(|| ActionStatus::of(self.status, self.warned))
    }
}

/// One task of a run: its status, times, rows written and messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionTask {
    pub run_id: String,
    pub task_id: String,
    /// Its place in the configuration's `workflow`.
    pub position: i32,
    /// WAITING, RUNNING, SUCCEEDED, FAILED, SKIPPED.
    pub status: String,
    pub attempt: i32,
    pub started_at: Option<crate::time::Timestamp>,
    pub finished_at: Option<crate::time::Timestamp>,
    pub rows: i64,
    pub messages: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ttt(deps: Value, workflow: Value) -> Value {
        json!({
            "configuration_type": "table-to-table",
            "configuration_id": "000099_orders",
            "account": "000099",
            "environment": "DEV",
            "start_date": "2024, 1, 1",
            "schedule_interval": "None",
            "default_gcp_project_id": "dlk",
            "default_bq_dataset": "sales",
            "default_write_disposition": "WRITE_TRUNCATE",
            "task_dependencies": deps,
            "workflow": workflow,
        })
    }

    fn files() -> BTreeMap<String, String> {
        let mut f = BTreeMap::new();
        f.insert("a.sql".into(), "SELECT 1 AS x".into());
        f.insert(
            "t_DDL.json".into(),
            r#"{"bq_table_description":"d","bq_table_schema":[{"name":"day","type":"DATE","description":"x"},{"name":"n","type":"INTEGER","description":"y","mode":"REQUIRED"}]}"#.into(),
        );
        f
    }

    #[test]
    fn dependencies_follow_airflow_bitshift_groups_and_commas() {
        let ids = ["a", "b", "c", "d", "h", "e"];
        let parents = dependencies(&["[a, d] >> h >> [b, e]".into(), "a, c".into()], &ids).unwrap();
        assert_eq!(parents[4], vec![0, 3]); // h after a and d
        assert_eq!(parents[1], vec![4]); // b after h
        assert_eq!(parents[5], vec![4]);
        assert!(parents[2].is_empty()); // c beside a
        let err = dependencies(&["a >> zz".into()], &ids).unwrap_err();
        assert_eq!(err[0].message, "task `zz` is not in workflow");
        let err = dependencies(&["a >> b".into(), "b >> a".into()], &ids).unwrap_err();
        assert!(err[0].message.contains("circle"), "{err:?}");
    }

    #[test]
    fn a_table_to_table_file_parses_into_tasks_and_parents() {
        let doc = ttt(
            json!(["make_t >> fill_t >> check_t"]),
            json!([
                {"id": "make_t", "task_type": "create_gbq_table", "bq_table": "t", "ddl_file": "t_DDL.json"},
                {"id": "fill_t", "sql_file": "a.sql", "table_name": "t", "write_disposition": "WRITE_APPEND"},
                {"id": "check_t", "task_type": "expectation", "sql_file": "a.sql", "criticality": "warning"},
            ]),
        );
        let c = parse_table_to_table(&doc, &files(), "000099_orders").unwrap();
        assert_eq!(c.job_id(), "gbq-to-gbq|000099_orders_DEV");
        assert_eq!(c.parents, vec![vec![], vec![0], vec![1]]);
        assert_eq!(c.task_concurrency, 5);
        assert_eq!(c.max_active_runs, 1);
        match &c.tasks[0].kind {
            TaskKind::CreateTable { columns, .. } => {
                assert_eq!(columns[1].bq_type, "INTEGER");
                assert!(columns[1].required);
            }
            other => panic!("{other:?}"),
        }
        match &c.tasks[1].kind {
            TaskKind::Sql { write, table, .. } => {
                assert_eq!(*write, WriteDisposition::Append);
                assert_eq!(table.as_ref().unwrap().dataset, "sales");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let mut doc = ttt(
            json!(["bad-id >> nope"]),
            json!([
                {"id": "bad-id", "sql_file": "missing.sql", "table_name": "t"},
                {"id": "ok_task", "task_type": "teleport"},
            ]),
        );
        doc.as_object_mut().unwrap().remove("default_bq_dataset");
        let problems = parse_table_to_table(&doc, &files(), "x").unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |s: &str| text.iter().any(|t| t.contains(s));
        assert!(has("default_bq_dataset: required"), "{text:?}");
        assert!(has("workflow[0].id: `bad-id` is not a task id"), "{text:?}");
        assert!(
            has("workflow[0].sql_file: file `missing.sql` was not found"),
            "{text:?}"
        );
        assert!(has("workflow[1].task_type: expected sql"), "{text:?}");
        assert!(has("task `nope` is not in workflow"), "{text:?}");
    }

    #[test]
    fn constants_substitute_as_the_sdk_does() {
        let ctx = Context {
            configuration_id: "ctx".into(),
            account: "000099".into(),
            environment: "DEV".into(),
            parameters: [
                ("dlk".to_string(), json!("acme-dlk")),
                ("runs".to_string(), json!(2)),
                ("obj".to_string(), json!({"a": 1})),
            ]
            .into_iter()
            .collect(),
        };
        let text = r#"{"p": "{{dlk}}", "n": "{{runs}}", "o": "{{obj}}", "t": "x_{{dlk}}_{{FD_ENV}}", "d": "{{FD_DATE}}", "c": "{{FD_CONTEXT}}"}"#;
        let out = substitute_constants(text, Some(&ctx), "DEV", "000099").unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["p"], "acme-dlk");
        assert_eq!(v["n"], 2);
        assert_eq!(v["o"], json!({"a": 1}));
        assert_eq!(v["t"], "x_acme-dlk_DEV");
        assert_eq!(v["d"], "{{FD_DATE}}");
        assert_eq!(v["c"], "000099_ctx");
        let err = substitute_constants("{{nope}}", Some(&ctx), "DEV", "000099").unwrap_err();
        assert!(err[0].message.contains("no constant `nope`"), "{err:?}");
    }

    #[test]
    fn dates_and_durations_print_as_tailer_does() {
        let d = NaiveDate::from_ymd_opt(2020, 12, 30).unwrap();
        assert_eq!(
            substitute_date(
                "t_{{FD_DATE}} {{TEMPLATE_CURRENT_DATE}} {{FD_DATE_YEAR_2}}",
                d
            ),
            "t_20201230 2020-12-30 20"
        );
        assert_eq!(duration_text(84_002_519), "0:01:24.002519");
        assert_eq!(duration_text(3_723_000_001), "1:02:03.000001");
        assert!(valid_task_id("fill_orders_agg"));
        assert!(!valid_task_id("fill-orders"));
        assert!(!valid_task_id("ab_"));
    }

    #[test]
    fn filename_templates_match_and_date_their_files() {
        let d = |y, m, day| Some(Some(NaiveDate::from_ymd_opt(y, m, day).unwrap()));
        assert_eq!(
            match_template(
                "orders_{{FD_DATE}}_{{FD_TIME}}.csv",
                "orders_20240131_235959.csv"
            ),
            d(2024, 1, 31)
        );
        assert_eq!(
            match_template("orders_{{FD_DATE}}.csv", "orders_2024013.csv"),
            None
        );
        assert_eq!(
            match_template("orders_{{FD_DATE}}.csv", "stores_20240131.csv"),
            None
        );
        assert_eq!(
            match_template(
                "s_{{FD_DATE_YEAR_2}}{{FD_DATE_MONTH}}_{{FD_BLOB_3}}.txt",
                "s_2403_abc.txt"
            ),
            d(2024, 3, 1)
        );
        assert_eq!(match_template("s_{{FD_BLOB_3}}.txt", "s_ab.txt"), None);
        assert_eq!(match_template("*", "anything"), Some(None));
        assert_eq!(match_template("plain.csv", "plain.csv"), Some(None));
    }

    #[test]
    fn run_statuses_map_onto_the_action_statuses() {
        assert_eq!(
            ActionStatus::of(RunStatus::Succeeded, false),
            ActionStatus::Success
        );
        assert_eq!(
            ActionStatus::of(RunStatus::Succeeded, true),
            ActionStatus::Warning
        );
        assert_eq!(
            ActionStatus::of(RunStatus::Cancelled, false),
            ActionStatus::Failed
        );
        assert_eq!(
            ActionStatus::of(RunStatus::Pending, false),
            ActionStatus::Running
        );
    }
}
