//! CSV and JSONL files as a source: `file:///folder` with the file as the
//! table (`orders.csv`, `events.jsonl` or `.ndjson`).
//!
//! A file has no declared types, so they are read from the values: the
//! file is read in batches, each batch's columns get the narrowest kind that
//! holds all their values (boolean, bigint, double, date, timestamp,
//! timestamptz, jsonb for JSON objects and arrays, else text), and the
//! batches' kinds are merged — a column that is bigint in one batch and
//! double in the next is double; any other disagreement makes it text.
//! Those widenings are reported as schema changes. A second pass streams
//! the rows with the merged kinds.
//!
//! Windows: the rows whose change column is past the watermark (or in the
//! explicit `[start, end)`), up to the file's largest value; a row limit or
//! a window size does not apply to files (their rows are not ordered).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::types::{invalid, Col, Kind, Val};
use crate::window::{format_time, parse_time};
use crate::Result;

/// Rows a batch of the first pass holds.
const BATCH_ROWS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Jsonl,
}

/// A file source, after its first pass.
pub(crate) struct FileSource {
    path: PathBuf,
    format: Format,
    /// The columns, in the file's order, with merged kinds.
    pub cols: Vec<Col>,
    /// Widenings across batches, as schema changes.
    pub changes: Vec<String>,
    /// Which rows to load: (after, up to) or [from, to) on the change column.
    filter: Option<Filter>,
}

#[derive(Debug, Clone)]
enum Filter {
    /// `[from, upto]` (or `(from, upto]` when not `inclusive`), and the
    /// rows with no value when `nulls`.
    After {
        column: usize,
        from: Option<String>,
        inclusive: bool,
        upto: String,
        nulls: bool,
    },
    Between {
        column: usize,
        from: String,
        to: String,
    },
}

/// The path a `file://` URL and a table name point at.
pub(crate) fn path_of(url: &str, table: &str) -> Result<PathBuf> {
    let dir = url
        .strip_prefix("file://")
        .ok_or_else(|| invalid(format!("`{url}` is not a file:// URL")))?;
    // Only plain names: an absolute table or `..` would leave the folder.
    if table.is_empty()
        || Path::new(table)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid(format!("file `{table}` must be inside {dir}")));
    }
    Ok(Path::new(dir).join(table))
}

fn format_of(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Ok(Format::Csv),
        Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
        _ => Err(invalid(format!(
            "file {} is neither .csv nor .jsonl/.ndjson",
            path.display()
        ))),
    }
}

/// The narrowest kind of one value.
pub(crate) fn kind_of(v: &str) -> Kind {
    if v == "true" || v == "false" {
        Kind::Bool
    } else if v.parse::<i64>().is_ok() {
        Kind::BigInt
    } else if v.parse::<f64>().is_ok_and(f64::is_finite) {
        Kind::Double
    } else if v.len() == 10 && chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok() {
        Kind::Date
    } else if parse_time(v).is_some() {
        let zoned = v.ends_with('Z') || v[10.min(v.len())..].contains(['+', '-']);
        if zoned {
            Kind::TimestampTz
        } else {
            Kind::Timestamp
        }
    } else if (v.starts_with('{') && v.ends_with('}')) || (v.starts_with('[') && v.ends_with(']')) {
        if serde_json::from_str::<serde_json::Value>(v).is_ok() {
            Kind::Json
        } else {
            Kind::Text
        }
    } else {
        Kind::Text
    }
}

/// The kind that holds both; None when only text does.
pub(crate) fn merge(a: Kind, b: Kind) -> Kind {
    use Kind::*;
    match (a, b) {
        (x, y) if x == y => x,
        (BigInt, Double) | (Double, BigInt) => Double,
        (Date, Timestamp) | (Timestamp, Date) => Timestamp,
        (Date | Timestamp, TimestampTz) | (TimestampTz, Date | Timestamp) => TimestampTz,
        _ => Text,
    }
}

/// One row of a file: each column's name and value (None: NULL).
type Record = Vec<(String, Option<String>)>;

/// Reads a file row by row: CSV (a header line, then records) or JSONL
/// (one object a line; its keys are the columns, in first-seen order).
struct Rows {
    format: Format,
    csv: Option<csv::Reader<std::fs::File>>,
    lines: Option<std::io::Lines<std::io::BufReader<std::fs::File>>>,
    header: Vec<String>,
    line: u64,
}

impl Rows {
    fn open(path: &Path, format: Format) -> Result<Rows> {
        let file = std::fs::File::open(path)
            .map_err(|e| invalid(format!("cannot open {}: {e}", path.display())))?;
        let mut rows = Rows {
            format,
            csv: None,
            lines: None,
            header: vec![],
            line: 0,
        };
        match format {
            Format::Csv => {
                let mut r = csv::ReaderBuilder::new().flexible(false).from_reader(file);
                rows.header = r
                    .headers()
                    .map_err(|e| invalid(format!("{}: the header: {e}", path.display())))?
                    .iter()
                    .map(str::to_owned)
                    .collect();
                rows.line = 1;
                rows.csv = Some(r);
            }
            Format::Jsonl => rows.lines = Some(std::io::BufReader::new(file).lines()),
        }
        Ok(rows)
    }

    /// The next row as values by column name (JSONL may add columns).
    fn next(&mut self, path: &Path) -> Result<Option<Record>> {
        self.line += 1;
        match self.format {
            Format::Csv => {
                let Some(r) = self.csv.as_mut() else {
                    return Ok(None);
                };
                let mut rec = csv::StringRecord::new();
                match r.read_record(&mut rec) {
                    Ok(false) => Ok(None),
                    Ok(true) => Ok(Some(
                        self.header
                            .iter()
                            .zip(rec.iter())
                            .map(|(h, v)| (h.clone(), (!v.is_empty()).then(|| v.to_owned())))
                            .collect(),
                    )),
                    Err(e) => Err(invalid(format!(
                        "{} line {}: {e}",
                        path.display(),
                        self.line
                    ))),
                }
            }
            Format::Jsonl => loop {
                let Some(lines) = self.lines.as_mut() else {
                    return Ok(None);
                };
                let Some(line) = lines.next() else {
                    return Ok(None);
                };
                let line = line.map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                if line.trim().is_empty() {
                    self.line += 1;
                    continue;
                }
                let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
                    .map_err(|e| {
                    invalid(format!(
                        "{} line {}: not a JSON object: {e}",
                        path.display(),
                        self.line
                    ))
                })?;
                return Ok(Some(
                    obj.into_iter()
                        .map(|(k, v)| {
                            let text = match v {
                                serde_json::Value::Null => None,
                                serde_json::Value::String(s) => Some(s),
                                other => Some(other.to_string()),
                            };
                            (k, text)
                        })
                        .collect(),
                ));
            },
        }
    }
}

impl FileSource {
    /// A file whose columns are known (a staged table's blueprint): not
    /// read for them.
    pub(crate) fn declared(url: &str, table: &str, cols: Vec<Col>) -> Result<FileSource> {
        let path = path_of(url, table)?;
        let format = format_of(&path)?;
        Ok(FileSource {
            path,
            format,
            cols,
            changes: vec![],
            filter: None,
        })
    }

    /// Opens a file and reads it once for its columns and their kinds.
    pub(crate) fn open(url: &str, table: &str) -> Result<FileSource> {
        let path = path_of(url, table)?;
        let format = format_of(&path)?;
        if !path.is_file() {
            return Ok(FileSource {
                path,
                format,
                cols: vec![],
                changes: vec![],
                filter: None,
            });
        }
        let mut rows = Rows::open(&path, format)?;
        let mut order: Vec<String> = rows.header.clone();
        let mut merged: BTreeMap<String, Kind> = BTreeMap::new();
        let mut batch: BTreeMap<String, Kind> = BTreeMap::new();
        let mut changes = Vec::new();
        let (mut n, mut batch_no) = (0usize, 1u64);
        let mut fold = |batch: &mut BTreeMap<String, Kind>, batch_no: u64| {
            for (col, k) in std::mem::take(batch) {
                match merged.get(&col).copied() {
                    None => {
                        merged.insert(col, k);
                    }
                    Some(old) => {
                        let m = merge(old, k);
                        if m != old {
                            changes.push(format!(
                                "column {col} widened from {} to {} (batch {batch_no})",
                                old.postgres(),
                                m.postgres()
                            ));
                            merged.insert(col, m);
                        }
                    }
                }
            }
        };
        while let Some(row) = rows.next(&path)? {
            for (col, v) in row {
                if !order.contains(&col) {
                    order.push(col.clone());
                }
                if let Some(v) = v {
                    let k = kind_of(&v);
                    let e = batch.entry(col).or_insert(k);
                    *e = merge(*e, k);
                }
            }
            n += 1;
            if n % BATCH_ROWS == 0 {
                fold(&mut batch, batch_no);
                batch_no += 1;
            }
        }
        fold(&mut batch, batch_no);
        let cols = order
            .into_iter()
            .map(|name| Col {
                kind: merged.get(&name).copied().unwrap_or(Kind::Text),
                name,
                not_null: false,
                exact: None,
            })
            .collect();
        Ok(FileSource {
            path,
            format,
            cols,
            changes,
            filter: None,
        })
    }

    fn compare(kind: Kind, a: &str, b: &str) -> std::cmp::Ordering {
        match kind {
            Kind::Date | Kind::Timestamp | Kind::TimestampTz => parse_time(a).cmp(&parse_time(b)),
            _ => a
                .parse::<f64>()
                .ok()
                .partial_cmp(&b.parse::<f64>().ok())
                .unwrap_or(std::cmp::Ordering::Equal),
        }
    }

    fn spelled(kind: Kind, v: &str) -> String {
        match kind {
            Kind::Timestamp | Kind::TimestampTz => parse_time(v)
                .map(format_time)
                .unwrap_or_else(|| v.to_owned()),
            _ => v.to_owned(),
        }
    }

    /// Plans the window: rows after `watermark` up to the largest change
    /// value, or the explicit [start, end). None: nothing new.
    pub(crate) fn plan(
        &mut self,
        change: &Col,
        watermark: Option<crate::window::Watermark>,
        request: &crate::WindowRequest,
        shape: crate::window::Shape,
    ) -> Result<Option<crate::window::Plan>> {
        use crate::window::{Plan, Replace};
        let column = self
            .cols
            .iter()
            .position(|c| c.name == change.name)
            .ok_or_else(|| invalid(format!("no column {}", change.name)))?;
        let kind = change.kind;
        if let crate::WindowRequest::Explicit { start, end, key } = request {
            let (from, to) = (Self::spelled(kind, start), Self::spelled(kind, end));
            self.filter = Some(Filter::Between {
                column,
                from: from.clone(),
                to: to.clone(),
            });
            return Ok(Some(Plan {
                condition: String::new(),
                start: Some(from.clone()),
                end: Some(to.clone()),
                end_exclusive: true,
                start_exclusive: false,
                ledger_key: format!("explicit:{from}|{to}|{key}"),
                replace: Some(Replace::Range(from, to)),
                boundary_rows: None,
                null_rows: 0,
                nulls_loaded: false,
            }));
        }
        if shape.lookback.is_some() {
            return Err(invalid(
                "a lookback is not offered for files: every run reads the whole file anyway",
            ));
        }
        // One pass: the largest value at or past the watermark, how many
        // rows hold it and the watermark's value, and the rows with none.
        let from = watermark.as_ref().map(|w| Self::spelled(kind, &w.end));
        let mut rows = Rows::open(&self.path, self.format)?;
        let (mut upper, mut at_upper, mut at_from, mut nulls) = (None::<String>, 0i64, 0i64, 0u64);
        while let Some(row) = rows.next(&self.path)? {
            let Some(v) = row
                .into_iter()
                .find(|(c, _)| *c == change.name)
                .and_then(|(_, v)| v)
            else {
                nulls += 1;
                continue;
            };
            if from
                .as_ref()
                .is_some_and(|f| Self::compare(kind, &v, f).is_eq())
            {
                at_from += 1;
            }
            if from
                .as_ref()
                .is_some_and(|f| Self::compare(kind, &v, f).is_lt())
            {
                continue;
            }
            match upper.as_ref().map(|u| Self::compare(kind, &v, u)) {
                None | Some(std::cmp::Ordering::Greater) => {
                    upper = Some(v);
                    at_upper = 1;
                }
                Some(std::cmp::Ordering::Equal) => at_upper += 1,
                Some(std::cmp::Ordering::Less) => {}
            }
        }
        let with_nulls = crate::window::null_rows_rule(shape.nulls, nulls, &change.name)?;
        let Some(upto) = upper.map(|u| Self::spelled(kind, &u)) else {
            return Ok(None);
        };
        let boundary_moved = watermark
            .as_ref()
            .is_some_and(|w| w.boundary_rows != Some(at_from));
        if let Some(f) = &from {
            if &upto == f && !boundary_moved {
                return Ok(None);
            }
        }
        self.filter = Some(Filter::After {
            column,
            from: from.clone(),
            // Past the watermark only, unless its rows are read again.
            inclusive: boundary_moved,
            upto: upto.clone(),
            nulls: with_nulls.is_some(),
        });
        Ok(Some(Plan {
            condition: String::new(),
            start: from.clone(),
            end: Some(upto),
            end_exclusive: false,
            start_exclusive: from.is_some() && !boundary_moved,
            ledger_key: watermark
                .as_ref()
                .map(|w| format!("{}#{}", w.end, w.boundary_rows.unwrap_or(-1)))
                .unwrap_or_default(),
            replace: from.filter(|_| boundary_moved).map(Replace::At),
            boundary_rows: Some(at_upper),
            null_rows: nulls,
            nulls_loaded: with_nulls.is_some(),
        }))
    }

    /// Reads the rows of the window, in batches, as values of `cols` (the
    /// selected columns).
    pub(crate) fn read(
        &self,
        cols: &[Col],
        batch_rows: usize,
        mut send: impl FnMut(Vec<Vec<Val>>) -> bool,
    ) -> Result<()> {
        let mut rows = Rows::open(&self.path, self.format)?;
        let mut batch = Vec::with_capacity(batch_rows);
        let kinds: Vec<Kind> = self.cols.iter().map(|c| c.kind).collect();
        let kinds = &kinds;
        while let Some(row) = rows.next(&self.path)? {
            let value = |name: &str| {
                row.iter()
                    .find(|(c, _)| c == name)
                    .and_then(|(_, v)| v.clone())
            };
            if let Some(f) = &self.filter {
                type Keep<'k> = (usize, &'k dyn Fn(&str) -> bool, bool);
                let (column, keep, keep_null): Keep = match f {
                    Filter::After {
                        column,
                        from,
                        inclusive,
                        upto,
                        nulls,
                    } => (
                        *column,
                        &move |v: &str| {
                            let k = kinds[*column];
                            from.as_ref().is_none_or(|a| {
                                let o = Self::compare(k, v, a);
                                o.is_gt() || (*inclusive && o.is_eq())
                            }) && Self::compare(k, v, upto).is_le()
                        },
                        *nulls,
                    ),
                    Filter::Between { column, from, to } => (
                        *column,
                        &move |v: &str| {
                            let k = kinds[*column];
                            Self::compare(k, v, from).is_ge() && Self::compare(k, v, to).is_lt()
                        },
                        false,
                    ),
                };
                match value(&self.cols[column].name) {
                    Some(v) if keep(&v) => {}
                    None if keep_null => {}
                    _ => continue,
                }
            }
            batch.push(
                cols.iter()
                    .map(|c| match value(&c.name) {
                        None => Val::Null,
                        Some(v) => match c.kind {
                            Kind::Timestamp | Kind::TimestampTz => {
                                Val::Text(Self::spelled(c.kind, &v))
                            }
                            _ => Val::Text(v),
                        },
                    })
                    .collect(),
            );
            if batch.len() >= batch_rows {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_rows));
                if !send(full) {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() {
            send(batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_get_the_narrowest_kind_and_batches_merge() {
        assert_eq!(kind_of("12"), Kind::BigInt);
        assert_eq!(kind_of("1.5"), Kind::Double);
        assert_eq!(kind_of("true"), Kind::Bool);
        assert_eq!(kind_of("2026-01-01"), Kind::Date);
        assert_eq!(kind_of("2026-01-01 10:00:00"), Kind::Timestamp);
        assert_eq!(kind_of("2026-01-01T10:00:00Z"), Kind::TimestampTz);
        assert_eq!(kind_of("{\"a\": 1}"), Kind::Json);
        assert_eq!(kind_of("hello"), Kind::Text);
        assert_eq!(merge(Kind::BigInt, Kind::Double), Kind::Double);
        assert_eq!(merge(Kind::Date, Kind::TimestampTz), Kind::TimestampTz);
        assert_eq!(merge(Kind::BigInt, Kind::Bool), Kind::Text);
    }
}
