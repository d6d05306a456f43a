//! HTTP API sources on the data path: a resource's pages fetched and
//! flattened into rows ([`flatten`]), staged as JSONL batch files with a
//! manifest per extraction part (each batch's columns and the kinds its
//! values have), the batches' structures consolidated into one blueprint
//! per table (kinds merged the way the file source merges them, widenings
//! reported as schema changes), the batches aligned to it in one
//! consolidated file per table, and that file loaded by the one load
//! pipeline ([`crate::LoadSession`]) — no second copy of it.
//!
//! The stage is a folder of its own per run:
//!
//! ```text
//! <stage>/batches/<table>/<part>-<n>.jsonl   flattened rows
//! <stage>/manifests/<part>.json               per table: its batches, rows, columns
//! <stage>/blueprints/<table>.json             the consolidated columns
//! <stage>/tables/<table>.jsonl                the batches joined
//! ```

pub mod flatten;
pub mod http;

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sluice_domain::api_source::{
    param_text, select, ApiSourceConfig, Incremental, Paginator, Param, Resource,
};

use crate::files::{kind_of, merge};
use crate::types::{invalid, Kind};
use crate::Result;
pub use http::Http;

/// Rows a batch file holds at most (a page's rows are a batch of their
/// own anyway).
const BATCH_ROWS: u64 = 50_000;

/// A kind as a manifest names it.
fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Bool => "bool",
        Kind::BigInt | Kind::Int | Kind::SmallInt => "bigint",
        Kind::Double | Kind::Real | Kind::Numeric(_) => "double",
        Kind::Date => "date",
        Kind::Timestamp => "timestamp",
        Kind::TimestampTz => "timestamptz",
        Kind::Json => "json",
        _ => "text",
    }
}

fn kind_named(s: &str) -> Kind {
    match s {
        "bool" => Kind::Bool,
        "bigint" => Kind::BigInt,
        "double" => Kind::Double,
        "date" => Kind::Date,
        "timestamp" => Kind::Timestamp,
        "timestamptz" => Kind::TimestampTz,
        "json" => Kind::Json,
        _ => Kind::Text,
    }
}

/// The type a column is given in the warehouse.
pub fn warehouse_type(kind: &str) -> String {
    kind_named(kind).postgres()
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> crate::ImportError {
    move |e| invalid(format!("{what}: {e}"))
}

/// A run's stage folder.
#[derive(Debug, Clone)]
pub struct Stage {
    pub dir: PathBuf,
}

impl Stage {
    pub fn new(dir: PathBuf) -> Stage {
        Stage { dir }
    }

    /// Empties the stage (an extraction starting again).
    pub fn clear(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(invalid(format!(
                "clearing the stage {}: {e}",
                self.dir.display()
            ))),
        }
    }

    /// Where the load pipeline reads a consolidated table (`file://`).
    pub fn tables_url(&self) -> String {
        format!("file://{}", self.dir.join("tables").display())
    }

    /// The manifests of every extraction part, in the order they were
    /// written.
    fn manifests(&self) -> Result<Vec<Value>> {
        let dir = self.dir.join("manifests");
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).map_err(io(p.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| invalid(format!("manifest {}: {e}", p.display())))
            })
            .collect()
    }

    /// Every table the extraction staged rows for, in first-staged order.
    pub fn tables(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for m in self.manifests()? {
            for t in m["tables"].as_array().into_iter().flatten() {
                let name = t["table"].as_str().unwrap_or_default().to_owned();
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }
}

/// A column of a blueprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    /// bool, bigint, double, date, timestamp, timestamptz, json or text.
    pub kind: String,
}

/// The consolidated structure of one table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Blueprint {
    pub table: String,
    pub columns: Vec<Column>,
    pub batches: u64,
    pub rows: u64,
    /// Widenings between batches, as schema changes.
    pub changes: Vec<String>,
}

/// Metadata consolidation: every batch's columns of `table` merged into
/// one blueprint, kept in the stage.
pub fn consolidate_metadata(stage: &Stage, table: &str) -> Result<Blueprint> {
    let mut order: Vec<String> = Vec::new();
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    let mut changes = Vec::new();
    let (mut batches, mut rows) = (0u64, 0u64);
    for m in stage.manifests()? {
        let part = m["part"].as_str().unwrap_or_default().to_owned();
        for t in m["tables"].as_array().into_iter().flatten() {
            if t["table"] != table {
                continue;
            }
            for b in t["batches"].as_array().into_iter().flatten() {
                batches += 1;
                rows += b["rows"].as_u64().unwrap_or(0);
                for c in b["columns"].as_array().into_iter().flatten() {
                    let name = c[0].as_str().unwrap_or_default().to_owned();
                    let k = kind_named(c[1].as_str().unwrap_or_default());
                    match kinds.get(&name).copied() {
                        None => {
                            order.push(name.clone());
                            kinds.insert(name, k);
                        }
                        Some(old) => {
                            let m = merge(old, k);
                            if m != old {
                                changes.push(format!(
                                    "column {name} widened from {} to {} (batch {} of {part}: page {})",
                                    kind_name(old),
                                    kind_name(m),
                                    b["file"].as_str().unwrap_or_default(),
                                    b["page"].as_u64().unwrap_or(0)
                                ));
                                kinds.insert(name, m);
                            }
                        }
                    }
                }
            }
        }
    }
    let blueprint = Blueprint {
        table: table.to_owned(),
        columns: order
            .into_iter()
            .map(|name| Column {
                kind: kind_name(kinds[&name]).to_owned(),
                name,
            })
            .collect(),
        batches,
        rows,
        changes,
    };
    let dir = stage.dir.join("blueprints");
    std::fs::create_dir_all(&dir).map_err(io(dir.display()))?;
    let path = dir.join(format!("{table}.json"));
    let text = serde_json::to_string_pretty(&blueprint).expect("a blueprint is JSON");
    std::fs::write(&path, text).map_err(io(path.display()))?;
    Ok(blueprint)
}

/// Table consolidation: every batch of `table`, in order, in one file the
/// load reads with the blueprint's columns (a row's missing columns are
/// NULL there); answers its rows. The batches are JSONL already: they are
/// joined, not parsed again.
pub fn consolidate_table(stage: &Stage, blueprint: &Blueprint) -> Result<u64> {
    let table = &blueprint.table;
    let dir = stage.dir.join("tables");
    std::fs::create_dir_all(&dir).map_err(io(dir.display()))?;
    let path = dir.join(format!("{table}.jsonl"));
    let tmp = dir.join(format!("{table}.jsonl.part"));
    let mut out = BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&tmp).map_err(io(tmp.display()))?,
    );
    let mut rows = 0u64;
    for m in stage.manifests()? {
        for t in m["tables"].as_array().into_iter().flatten() {
            if t["table"] != table.as_str() {
                continue;
            }
            for b in t["batches"].as_array().into_iter().flatten() {
                let file = stage
                    .dir
                    .join("batches")
                    .join(table)
                    .join(b["file"].as_str().unwrap_or_default());
                let mut input = std::fs::File::open(&file).map_err(io(file.display()))?;
                std::io::copy(&mut input, &mut out).map_err(io(file.display()))?;
                rows += b["rows"].as_u64().unwrap_or(0);
            }
        }
    }
    out.into_inner()
        .map_err(|e| invalid(format!("{}: {e}", tmp.display())))?
        .sync_all()
        .map_err(io(tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(io(path.display()))?;
    Ok(rows)
}

/// A parent record a child resource is fetched for: the resolved value
/// and the fields it includes.
#[derive(Debug, Clone)]
pub struct ParentRef {
    pub value: String,
    pub include: Vec<(String, Value)>,
}

/// What one extraction part did.
#[derive(Debug, Default)]
pub struct Part {
    pub name: String,
    pub records: u64,
    pub pages: u64,
    /// Rows staged per table.
    pub tables: BTreeMap<String, u64>,
    pub messages: Vec<String>,
}

/// One table's batch being written.
struct Open {
    file: BufWriter<std::fs::File>,
    name: String,
    rows: u64,
    kinds: BTreeMap<String, Kind>,
    order: Vec<String>,
    /// The resource's page its rows came from.
    page: u64,
}

/// The walk of one resource's pages (for each of its parents' records,
/// when it has a parent), part by part.
pub struct Walk<'a> {
    config: &'a ApiSourceConfig,
    resource: &'a Resource,
    stage: Stage,
    /// The resource's table (normalized name).
    pub table: String,
    /// Parents left to fetch for (a child resource), the one being fetched.
    parents: std::vec::IntoIter<ParentRef>,
    current: Option<ParentRef>,
    /// The next request: its URL and query (None: the current walk ended).
    next: Option<(String, Vec<(String, String)>)>,
    page_no: u64,
    started: bool,
    /// Where the incremental cursor starts (exclusive), and the largest
    /// value seen.
    cursor_after: Option<String>,
    pub cursor_max: Option<String>,
    /// The children's parents, gathered from this resource's records.
    pub children_need: Vec<(String, String, Vec<String>)>,
    pub for_children: BTreeMap<String, Vec<ParentRef>>,
    parts: u32,
    pub records: u64,
}

/// Compares two cursor values: as numbers when both are, else as text.
pub fn cursor_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.cmp(b),
    }
}

impl<'a> Walk<'a> {
    /// `cursor_after`: the largest cursor value an earlier run loaded
    /// (incremental resources; records up to it are not loaded again).
    /// `parents`: for a child resource, its parents' records.
    pub fn new(
        config: &'a ApiSourceConfig,
        resource: &'a Resource,
        stage: Stage,
        cursor_after: Option<String>,
        parents: Vec<ParentRef>,
    ) -> Walk<'a> {
        let children_need = config
            .resources
            .iter()
            .filter_map(|r| {
                let (_, parent, field) = r.parent()?;
                (parent == resource.name).then(|| {
                    (
                        r.name.clone(),
                        field.to_owned(),
                        r.include_from_parent.clone(),
                    )
                })
            })
            .collect();
        Walk {
            config,
            resource,
            stage,
            table: flatten::normalize(&resource.name),
            parents: parents.into_iter(),
            current: None,
            next: None,
            page_no: 0,
            started: false,
            cursor_after,
            cursor_max: None,
            children_need,
            for_children: BTreeMap::new(),
            parts: 0,
            records: 0,
        }
    }

    fn paginator(&self) -> &Paginator {
        self.resource
            .endpoint
            .paginator
            .as_ref()
            .unwrap_or(&self.config.client.paginator)
    }

    fn incremental(&self) -> Option<&Incremental> {
        self.resource.endpoint.incremental.as_ref()
    }

    /// The first request of the walk for the current parent (or the only
    /// walk of a resource without one).
    fn first_request(&mut self, http: &Http) -> (String, Vec<(String, String)>) {
        let ep = &self.resource.endpoint;
        let mut path = ep.path.clone();
        let mut query = Vec::new();
        for (name, p) in &ep.params {
            match p {
                Param::Value(v) => query.push((name.clone(), v.clone())),
                Param::Resolve { .. } => {
                    let v = self
                        .current
                        .as_ref()
                        .map(|c| c.value.clone())
                        .unwrap_or_default();
                    path = path.replace(&format!("{{{name}}}"), &encode_path(&v));
                }
            }
        }
        if let Some(inc) = self.incremental() {
            let start = self
                .cursor_after
                .clone()
                .or_else(|| inc.initial_value.clone());
            if let Some(s) = start {
                query.retain(|(k, _)| k != &inc.start_param);
                query.push((inc.start_param.clone(), s));
            }
            if let (Some(p), Some(v)) = (&inc.end_param, &inc.end_value) {
                query.push((p.clone(), v.clone()));
            }
        }
        match self.paginator() {
            Paginator::PageNumber {
                page_param,
                base_page,
                ..
            } => {
                query.push((page_param.clone(), base_page.to_string()));
            }
            Paginator::Offset {
                limit,
                offset,
                offset_param,
                limit_param,
                ..
            } => {
                query.push((offset_param.clone(), offset.to_string()));
                query.push((limit_param.clone(), limit.to_string()));
            }
            _ => {}
        }
        (http.url(&path), query)
    }

    /// Moves to the next parent; false when there is none left (or the
    /// resource has no parent and its one walk was made).
    fn next_walk(&mut self, http: &Http) -> bool {
        if self.resource.parent().is_some() {
            match self.parents.next() {
                Some(p) => self.current = Some(p),
                None => return false,
            }
        } else if self.started {
            return false;
        }
        self.started = true;
        self.next = Some(self.first_request(http));
        true
    }

    /// Whether pages are left to fetch.
    pub fn more(&mut self, http: &Http) -> bool {
        self.next.is_some() || self.next_walk(http)
    }

    /// Fetches up to `max_pages` pages into one extraction part; None when
    /// the resource has no pages left.
    pub async fn part(
        &mut self,
        http: &mut Http,
        max_pages: u64,
        cancelled: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<Part>> {
        if self.next.is_none() && !self.next_walk(http) {
            return Ok(None);
        }
        self.parts += 1;
        let name = if self.parts == 1 {
            self.resource.name.clone()
        } else {
            format!("{} (part {})", self.resource.name, self.parts)
        };
        let mut part = Part {
            name: name.clone(),
            ..Part::default()
        };
        let part_key = format!("{:04}-{:05}", self.resource_index(), self.parts);
        let mut open: BTreeMap<String, Open> = BTreeMap::new();
        let mut batches: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let before = http.messages.len();
        let mut rows = Vec::new();
        while part.pages < max_pages {
            if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(crate::ImportError::Cancelled);
            }
            let Some((url, query)) = self.next.take() else {
                if !self.next_walk(http) {
                    break;
                }
                continue;
            };
            self.page_no += 1;
            let what = format!(
                "{} page {} ({})",
                self.resource.name,
                self.page_no,
                path_of(&url)
            );
            let page = http
                .fetch(
                    &self.resource.endpoint.method,
                    &url,
                    &query,
                    self.resource.endpoint.json.as_ref(),
                    &what,
                )
                .await?;
            part.pages += 1;
            let records = self.records(&page.body, &what)?;
            let count = records.len();
            for record in records {
                if let Some(inc) = self.incremental() {
                    let cursor = select(record, &inc.cursor_path)
                        .filter(|v| !v.is_null())
                        .map(param_text);
                    if let (Some(c), Some(after)) = (&cursor, &self.cursor_after) {
                        if cursor_cmp(c, after) != std::cmp::Ordering::Greater {
                            continue;
                        }
                    }
                    if let Some(c) = cursor {
                        if self
                            .cursor_max
                            .as_ref()
                            .is_none_or(|m| cursor_cmp(&c, m) == std::cmp::Ordering::Greater)
                        {
                            self.cursor_max = Some(c);
                        }
                    }
                }
                self.stage_record(record, &mut rows, &mut open, &mut batches, &part_key)?;
                part.records += 1;
            }
            self.next = self.next_request(&url, &query, &page, count);
            // A page is a batch: its kinds are merged with the others' at
            // metadata consolidation, which reports each widening.
            for (table, o) in std::mem::take(&mut open) {
                close(o, &table, &mut batches)?;
            }
        }
        for (table, o) in std::mem::take(&mut open) {
            close(o, &table, &mut batches)?;
        }
        for (table, list) in &batches {
            let n: u64 = list.iter().map(|b| b["rows"].as_u64().unwrap_or(0)).sum();
            part.tables.insert(table.clone(), n);
        }
        part.messages = http.messages[before..].to_vec();
        self.records += part.records;
        // The manifest last: a part without one staged nothing.
        let manifest = json!({
            "part": name,
            "resource": self.resource.name,
            "tables": batches.into_iter().map(|(table, list)| json!({"table": table, "batches": list})).collect::<Vec<_>>(),
        });
        let dir = self.stage.dir.join("manifests");
        std::fs::create_dir_all(&dir).map_err(io(dir.display()))?;
        let path = dir.join(format!("{part_key}.json"));
        std::fs::write(&path, manifest.to_string()).map_err(io(path.display()))?;
        Ok(Some(part))
    }

    fn resource_index(&self) -> usize {
        self.config
            .resources
            .iter()
            .position(|r| r.name == self.resource.name)
            .unwrap_or(0)
    }

    /// The records of a page: the data selector's list, or the body when
    /// it is a list, or the first list under a usual key.
    fn records<'v>(&self, body: &'v Value, what: &str) -> Result<Vec<&'v Value>> {
        if let Some(sel) = &self.resource.endpoint.data_selector {
            return match select(body, sel) {
                Some(Value::Array(a)) => Ok(a.iter().collect()),
                Some(Value::Null) | None => Ok(Vec::new()),
                Some(one) => Ok(vec![one]),
            };
        }
        Ok(match body {
            Value::Array(a) => a.iter().collect(),
            Value::Null => Vec::new(),
            Value::Object(o) => {
                let usual = [
                    "data", "items", "results", "records", "entries", "objects", "rows", "values",
                ];
                match usual
                    .iter()
                    .find_map(|k| o.get(*k).and_then(Value::as_array))
                {
                    Some(a) => a.iter().collect(),
                    None => match o
                        .values()
                        .filter_map(Value::as_array)
                        .collect::<Vec<_>>()
                        .as_slice()
                    {
                        [one] => one.iter().collect(),
                        _ => vec![body],
                    },
                }
            }
            _ => return Err(invalid(format!("{what}: the answer holds no records"))),
        })
    }

    fn stage_record(
        &mut self,
        record: &Value,
        rows: &mut Vec<flatten::Row>,
        open: &mut BTreeMap<String, Open>,
        batches: &mut BTreeMap<String, Vec<Value>>,
        part_key: &str,
    ) -> Result<()> {
        let pk = &self.resource.primary_key;
        let id = if pk.is_empty() {
            format!("{:032x}", rand::random::<u128>())
        } else {
            let values: Vec<String> = pk
                .iter()
                .map(|k| select(record, k).map(param_text).unwrap_or_default())
                .collect();
            let mut parts: Vec<&str> = vec![self.table.as_str()];
            parts.extend(values.iter().map(String::as_str));
            flatten::stable_id(&parts)
        };
        let mut extra = Vec::new();
        if let Some(current) = &self.current {
            extra.extend(current.include.iter().cloned());
        }
        for (child, field, include) in &self.children_need {
            if let Some(v) = select(record, field).filter(|v| !v.is_null()) {
                let parent = self.table.clone();
                let include = include
                    .iter()
                    .filter_map(|f| {
                        select(record, f)
                            .map(|v| (format!("_{}_{}", parent, flatten::normalize(f)), v.clone()))
                    })
                    .collect();
                self.for_children
                    .entry(child.clone())
                    .or_default()
                    .push(ParentRef {
                        value: param_text(v),
                        include,
                    });
            }
        }
        rows.clear();
        flatten::flatten(&self.table, record, &id, &extra, rows);
        for (table, row) in rows.drain(..) {
            if !open.contains_key(&table) {
                let n = batches.get(&table).map_or(0, Vec::len) + 1;
                let dir = self.stage.dir.join("batches").join(&table);
                std::fs::create_dir_all(&dir).map_err(io(dir.display()))?;
                let name = format!("{part_key}-{n:04}.jsonl");
                let path = dir.join(&name);
                let file = std::fs::File::create(&path).map_err(io(path.display()))?;
                open.insert(
                    table.clone(),
                    Open {
                        file: BufWriter::with_capacity(1 << 16, file),
                        name,
                        rows: 0,
                        kinds: BTreeMap::new(),
                        order: Vec::new(),
                        page: self.page_no,
                    },
                );
            }
            let o = open.get_mut(&table).expect("opened above");
            for (k, v) in &row {
                let kind = match v {
                    Value::Null => continue,
                    Value::Bool(_) => Kind::Bool,
                    Value::Number(n) if n.is_i64() || n.is_u64() => {
                        if n.is_i64() {
                            Kind::BigInt
                        } else {
                            Kind::Double
                        }
                    }
                    Value::Number(_) => Kind::Double,
                    // A JSON text stays text unless it is a date or a time
                    // (which start `YYYY-`: nothing else is parsed).
                    Value::String(s) if looks_dated(s) => match kind_of(s) {
                        k @ (Kind::Date | Kind::Timestamp | Kind::TimestampTz) => k,
                        _ => Kind::Text,
                    },
                    Value::String(_) => Kind::Text,
                    _ => Kind::Json,
                };
                match o.kinds.get_mut(k) {
                    Some(old) => *old = merge(*old, kind),
                    None => {
                        o.order.push(k.clone());
                        o.kinds.insert(k.clone(), kind);
                    }
                }
            }
            serde_json::to_writer(&mut o.file, &row)
                .map_err(|e| invalid(format!("staging a row: {e}")))?;
            o.file.write_all(b"\n").map_err(io("staging a row"))?;
            o.rows += 1;
            if o.rows >= BATCH_ROWS {
                let full = open.remove(&table).expect("present");
                close(full, &table, batches)?;
            }
        }
        Ok(())
    }

    /// The request for the next page, as the paginator says (None: the
    /// walk for this parent ended).
    fn next_request(
        &self,
        url: &str,
        query: &[(String, String)],
        page: &http::Page,
        count: usize,
    ) -> Option<(String, Vec<(String, String)>)> {
        let set = |q: &[(String, String)], k: &str, v: String| {
            let mut q: Vec<(String, String)> = q.iter().filter(|(n, _)| n != k).cloned().collect();
            q.push((k.to_owned(), v));
            q
        };
        match self.paginator() {
            Paginator::SinglePage => None,
            Paginator::Auto => {
                if let Some(next) = http::link(&page.headers, "next") {
                    return Some((next, Vec::new()));
                }
                match page.body.get("next").and_then(Value::as_str) {
                    Some(n) if n.starts_with("http") => Some((n.to_owned(), Vec::new())),
                    _ => None,
                }
            }
            Paginator::JsonLink { next_url_path } => match select(&page.body, next_url_path) {
                Some(Value::String(n)) if !n.is_empty() => {
                    Some((absolute(&page.url, n), Vec::new()))
                }
                _ => None,
            },
            Paginator::HeaderLink { links_next_key } => http::link(&page.headers, links_next_key)
                .map(|n| (absolute(&page.url, &n), Vec::new())),
            Paginator::Cursor {
                cursor_path,
                cursor_param,
            } => match select(&page.body, cursor_path) {
                Some(Value::Null) | None => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(v) => Some((url.to_owned(), set(query, cursor_param, param_text(v)))),
            },
            Paginator::PageNumber {
                page_param,
                base_page,
                total_path,
                maximum_page,
            } => {
                if count == 0 {
                    return None;
                }
                let current: i64 = query
                    .iter()
                    .find(|(k, _)| k == page_param)
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(*base_page);
                let next = current + 1;
                if let Some(total) = total_path
                    .as_ref()
                    .and_then(|p| select(&page.body, p))
                    .and_then(Value::as_i64)
                {
                    if next >= total + base_page {
                        return None;
                    }
                }
                if maximum_page.is_some_and(|m| next >= m) {
                    return None;
                }
                Some((url.to_owned(), set(query, page_param, next.to_string())))
            }
            Paginator::Offset {
                limit,
                offset_param,
                total_path,
                maximum_offset,
                ..
            } => {
                if count == 0 || (count as i64) < *limit {
                    return None;
                }
                let current: i64 = query
                    .iter()
                    .find(|(k, _)| k == offset_param)
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let next = current + limit;
                if let Some(total) = total_path
                    .as_ref()
                    .and_then(|p| select(&page.body, p))
                    .and_then(Value::as_i64)
                {
                    if next >= total {
                        return None;
                    }
                }
                if maximum_offset.is_some_and(|m| next >= m) {
                    return None;
                }
                Some((url.to_owned(), set(query, offset_param, next.to_string())))
            }
        }
    }
}

/// Whether a text may be a date or a timestamp: `YYYY-MM-DD…`.
fn looks_dated(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[7] == b'-'
}

/// Closes a batch file and records it.
fn close(o: Open, table: &str, batches: &mut BTreeMap<String, Vec<Value>>) -> Result<()> {
    let page = o.page;
    // Flushed, not synced: a batch only matters once the stage is marked
    // complete, and consolidation syncs what it writes before that.
    o.file
        .into_inner()
        .map_err(|e| invalid(format!("staging {table}: {e}")))?;
    let columns: Vec<Value> = o
        .order
        .iter()
        .map(|c| json!([c, kind_name(o.kinds[c])]))
        .collect();
    batches
        .entry(table.to_owned())
        .or_default()
        .push(json!({"file": o.name, "page": page, "rows": o.rows, "columns": columns}));
    Ok(())
}

/// `next` (maybe relative) against the page's URL.
fn absolute(page: &str, next: &str) -> String {
    if next.starts_with("http://") || next.starts_with("https://") {
        return next.to_owned();
    }
    match reqwest::Url::parse(page).and_then(|u| u.join(next)) {
        Ok(u) => u.to_string(),
        Err(_) => next.to_owned(),
    }
}

/// The path of a URL, for messages (no query: it may hold a key).
fn path_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|_| url.split('?').next().unwrap_or(url).to_owned())
}

fn encode_path(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether a path exists in the stage: the marker written once the
/// extraction and both consolidations ended.
pub fn staged(stage: &Stage) -> bool {
    stage.dir.join("staged").is_file()
}

/// Marks the stage complete (see [`staged`]).
pub fn mark_staged(stage: &Stage) -> Result<()> {
    let p = stage.dir.join("staged");
    std::fs::create_dir_all(&stage.dir).map_err(io(stage.dir.display()))?;
    std::fs::File::create(&p)
        .and_then(|f| f.sync_all())
        .map_err(io(p.display()))?;
    std::fs::File::open(&stage.dir)
        .and_then(|d| d.sync_all())
        .map_err(io(stage.dir.display()))
}

/// A blueprint kept in the stage.
pub fn blueprint(stage: &Stage, table: &str) -> Result<Blueprint> {
    let p = stage.dir.join("blueprints").join(format!("{table}.json"));
    let text = std::fs::read_to_string(&p).map_err(io(p.display()))?;
    serde_json::from_str(&text).map_err(|e| invalid(format!("{}: {e}", p.display())))
}

/// The path of a stage folder for `run` under `root`.
pub fn stage_of(root: &Path, run: &str) -> Stage {
    Stage::new(root.join(run))
}

/// The columns a blueprint declares, for the load ([`crate::ImportSpec::declared`]).
pub fn declared_columns(blueprint: &Blueprint) -> Vec<crate::types::Col> {
    blueprint
        .columns
        .iter()
        .map(|c| crate::types::Col {
            name: c.name.clone(),
            kind: kind_named(&c.kind),
            not_null: false,
            exact: None,
        })
        .collect()
}

/// Where `job`'s cursor ended in the destination's ledger (the largest
/// cursor value its last load recorded); None when nothing was loaded, or
/// when `target` is gone (loaded again from the start).
pub async fn last_cursor(dest_url: &str, target: &str, job: &str) -> Result<Option<String>> {
    let (url, target, job) = (dest_url.to_owned(), target.to_owned(), job.to_owned());
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(crate::ImportError::Stopped)?
            .block_on(read_cursor(&url, &target, &job))
    })
    .await
    .map_err(|e| invalid(format!("reading the cursor stopped: {e}")))?
}

async fn read_cursor(dest_url: &str, target: &str, job: &str) -> Result<Option<String>> {
    let mut dst = crate::dest::Dest::open(dest_url).await?;
    crate::ledger::ensure(&mut dst).await?;
    let t = crate::types::TableName::parse(target)?;
    if dst.columns(&t).await?.is_empty() {
        return Ok(None);
    }
    Ok(crate::ledger::watermark(&mut dst, job)
        .await?
        .map(|w| w.end))
}
