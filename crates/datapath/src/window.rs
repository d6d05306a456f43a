//! Which rows one run loads: the window on the change column.
//!
//! - **Next** (a job's regular run): the window starts at the watermark —
//!   the end of the last window the job loaded, kept in the destination's
//!   ledger — *inclusive*, or at the table's first row. Rows that share the
//!   watermark's value may arrive after it was loaded (a batch insert
//!   shares one `now()`). The ledger keeps how many source rows had the
//!   window's end value (`boundary_rows`); when that count has moved, the
//!   boundary is read again: the target's rows at the watermark are
//!   replaced by the source's, in the load's transaction, and each boundary
//!   row lands once. When it has not, the window starts past the watermark
//!   (the cheap path: no row of the target is touched), and a run that
//!   finds nothing past it loads nothing. The window ends at the change column's current maximum, or
//!   sooner: at start + `size` (for timestamp and date columns) and at the
//!   `row_limit`-th row past the watermark (rows that share that row's
//!   change value come along, so no value is ever split between two
//!   windows). Its end becomes the next watermark. A `lookback` starts the
//!   window that long before the watermark (merge by key only: the rows
//!   read again replace themselves), for rows that arrive late with older
//!   change values.
//! - **Explicit** `[start, end)` (a window asked for by hand, or a recorded
//!   one run again): the target's rows in that range are deleted and the
//!   range is loaded again, in the load's one transaction.
//!
//! Rows whose change value is NULL belong to no window: an import fails
//! naming their count unless its [`NullChange`] says to exclude them (they
//! are counted and reported) or to include them in every window (merge by
//! key, so they replace themselves).

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime};

use crate::{ImportError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum WindowRequest {
    Next {
        size: Option<Duration>,
        row_limit: Option<u64>,
    },
    Explicit {
        start: String,
        end: String,
        /// Names this request in the ledger: the same key loads once.
        key: String,
    },
}

impl Default for WindowRequest {
    fn default() -> Self {
        WindowRequest::Next {
            size: None,
            row_limit: None,
        }
    }
}

/// What an import does with source rows whose change value is NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NullChange {
    /// Refuse the window, naming how many rows have no change value.
    #[default]
    Fail,
    /// Leave them out (and report how many were left out).
    Exclude,
    /// Load them with every window (merge by key only).
    Include,
}

impl std::str::FromStr for NullChange {
    type Err = String;
    fn from_str(s: &str) -> Result<NullChange, String> {
        match s {
            "fail" => Ok(NullChange::Fail),
            "exclude" => Ok(NullChange::Exclude),
            "include" => Ok(NullChange::Include),
            other => Err(format!(
                "null change must be fail, exclude or include, got `{other}`"
            )),
        }
    }
}

/// Where the job's last regular window ended, read from the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    pub end: String,
    /// How many source rows had the change value `end` when it was loaded
    /// (None: a ledger row written before sluice counted them).
    pub boundary_rows: Option<i64>,
}

/// The target rows a window replaces, deleted in the load's transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Replace {
    /// `[start, end)`: a window run again by hand.
    Range(String, String),
    /// The rows whose change value is the watermark: read again with it.
    At(String),
}

/// A window, ready to load.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The source rows to load (an SQL condition).
    pub condition: String,
    pub start: Option<String>,
    pub end: Option<String>,
    /// Whether the window's end is excluded (`[start, end)`, by hand) or
    /// included (`[start, end]`, a regular window).
    pub end_exclusive: bool,
    /// Whether the start is excluded: a regular window past a watermark
    /// whose rows are not read again, `(start, end]`.
    pub start_exclusive: bool,
    pub ledger_key: String,
    /// Target rows to delete first.
    pub replace: Option<Replace>,
    /// Source rows at the window's end value, for the ledger.
    pub boundary_rows: Option<i64>,
    /// Source rows with no change value (counted when the import excludes
    /// or includes them).
    pub null_rows: u64,
    /// Whether those rows load with this window (included) or not.
    pub nulls_loaded: bool,
}

/// How a regular window is shaped beyond its request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shape {
    pub nulls: NullChange,
    /// Read again this long before the watermark (time columns, merge).
    pub lookback: Option<Duration>,
}

/// What the planner needs of a source: SQL spelled its way.
pub trait WindowSql {
    /// The change column, quoted.
    fn column(&self) -> String;
    /// The change column as conditions compare it with [`Self::literal`]s
    /// (a SQLite text time is compared as a time, whatever its spelling).
    fn compared(&self) -> String {
        self.column()
    }
    /// A literal of the change column's type.
    fn literal(&self, value: &str) -> String;
    /// The source table, quoted.
    fn table(&self) -> String;
    fn is_time(&self) -> bool;
    /// The first column of the first row of `sql`, as text.
    fn text(&mut self, sql: String) -> impl std::future::Future<Output = Result<Option<String>>>;
    /// `expr` as text in this dialect.
    fn as_text(&self, expr: &str) -> String;
}

/// Reads a timestamp or date as any of the three databases print it.
pub fn parse_time(v: &str) -> Option<NaiveDateTime> {
    let v = v.trim();
    if let Ok(t) = DateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.naive_utc());
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.naive_utc());
    }
    let plain = v.trim_end_matches('Z').replace('T', " ");
    NaiveDateTime::parse_from_str(&plain, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(&plain, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
}

/// A time as all three databases read it back.
pub fn format_time(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Counts the rows of `sql`'s `count(*)` through the text channel.
async fn count<S: WindowSql>(s: &mut S, condition: &str) -> Result<i64> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {condition}",
        s.as_text("count(*)"),
        s.table()
    );
    let n = s.text(sql).await?.unwrap_or_default();
    n.trim()
        .parse()
        .map_err(|_| ImportError::Invalid(format!("the source counted `{n}` rows")))
}

/// The rows with no change value: refused, or counted and excluded or
/// included as `nulls` says. Answers the count and the condition that
/// brings them into the window (include).
pub(crate) fn null_rows_rule(nulls: NullChange, n: u64, column: &str) -> Result<Option<String>> {
    match nulls {
        _ if n == 0 => Ok(None),
        NullChange::Fail => Err(ImportError::Invalid(format!(
            "{n} source rows have no change value ({column} IS NULL) and belong to no window: \
             set null_change = \"exclude\" to leave them out (counted in every report) or \
             \"include\" to load them with every window (merge mode with a key)"
        ))),
        NullChange::Exclude => Ok(None),
        NullChange::Include => Ok(Some(format!("{column} IS NULL"))),
    }
}

pub async fn plan<S: WindowSql>(
    s: &mut S,
    watermark: Option<Watermark>,
    request: &WindowRequest,
    shape: Shape,
) -> Result<Option<Plan>> {
    // `col` is selected and ordered; `cmp` is compared with literals.
    let (col, cmp) = (s.column(), s.compared());
    match request {
        WindowRequest::Explicit { start, end, key } => {
            let (start, end) = if s.is_time() {
                match (parse_time(start), parse_time(end)) {
                    (Some(a), Some(b)) if a < b => (format_time(a), format_time(b)),
                    _ => {
                        return Err(ImportError::Invalid(format!(
                            "window [{start}, {end}) is not two times, the first before the \
                             second, such as 2024-08-20T01:00:00Z"
                        )))
                    }
                }
            } else {
                (start.clone(), end.clone())
            };
            let (a, b) = (s.literal(&start), s.literal(&end));
            Ok(Some(Plan {
                condition: format!("{cmp} >= {a} AND {cmp} < {b}"),
                start: Some(start.clone()),
                end: Some(end.clone()),
                end_exclusive: true,
                start_exclusive: false,
                ledger_key: format!("explicit:{start}|{end}|{key}"),
                replace: Some(Replace::Range(start, end)),
                boundary_rows: None,
                null_rows: 0,
                nulls_loaded: false,
            }))
        }
        WindowRequest::Next { size, row_limit } => {
            let table = s.table();
            let at_or_after = watermark
                .as_ref()
                .map(|w| format!("{cmp} >= {}", s.literal(&w.end)));
            let where_lower = at_or_after
                .as_ref()
                .map(|l| format!(" WHERE {l}"))
                .unwrap_or_default();
            let max = s
                .text(format!(
                    "SELECT {} FROM {table}{where_lower}",
                    s.as_text(&format!("max({col})"))
                ))
                .await?;
            let null_rows = count(s, &format!("{col} IS NULL")).await?.max(0) as u64;
            let with_nulls = null_rows_rule(shape.nulls, null_rows, &col)?;
            let Some(mut upper) = max else {
                return Ok(None);
            };
            // The watermark's rows are read again only when their count
            // moved since they were loaded (rows arrived with that value):
            // otherwise the window starts past them, as cheap as before.
            let boundary_moved = match &watermark {
                Some(w) => {
                    let at = count(s, &format!("{cmp} = {}", s.literal(&w.end))).await?;
                    Some(at) != w.boundary_rows
                }
                None => false,
            };
            if let Some(w) = &watermark {
                if upper == w.end && !boundary_moved && shape.lookback.is_none() {
                    return Ok(None);
                }
            }
            if let (Some(size), true) = (size, s.is_time()) {
                let base = match &watermark {
                    Some(w) => Some(w.end.clone()),
                    None => {
                        s.text(format!(
                            "SELECT {} FROM {table}",
                            s.as_text(&format!("min({col})"))
                        ))
                        .await?
                    }
                };
                if let (Some(base), Some(top)) =
                    (base.as_deref().and_then(parse_time), parse_time(&upper))
                {
                    let capped = base + chrono::Duration::from_std(*size).unwrap_or_default();
                    if capped < top {
                        upper = format_time(capped);
                    }
                }
            }
            if let Some(limit) = row_limit.filter(|l| *l > 0) {
                // Counted past the watermark: its rows (read again or not) are
                // not what the limit is about.
                let mut cond = vec![format!("{cmp} <= {}", s.literal(&upper))];
                cond.extend(
                    watermark
                        .as_ref()
                        .map(|w| format!("{cmp} > {}", s.literal(&w.end))),
                );
                let nth = s
                    .text(format!(
                        "SELECT {} FROM {table} WHERE {} ORDER BY {col} LIMIT 1 OFFSET {}",
                        s.as_text(&col),
                        cond.join(" AND "),
                        limit - 1
                    ))
                    .await?;
                if let Some(nth) = nth {
                    upper = nth;
                }
            }
            let boundary_rows = count(s, &format!("{cmp} = {}", s.literal(&upper))).await?;
            let lower = match (&watermark, shape.lookback) {
                (Some(w), None) if !boundary_moved => {
                    Some(format!("{cmp} > {}", s.literal(&w.end)))
                }
                (Some(w), Some(back)) => {
                    let from = parse_time(&w.end).filter(|_| s.is_time()).ok_or_else(|| {
                        ImportError::Invalid(format!(
                            "a lookback needs a timestamp or date change column; {col} is not"
                        ))
                    })? - chrono::Duration::from_std(back).unwrap_or_default();
                    Some(format!("{cmp} >= {}", s.literal(&format_time(from))))
                }
                _ => at_or_after,
            };
            let mut cond = vec![format!("{cmp} <= {}", s.literal(&upper))];
            cond.extend(lower);
            let mut condition = cond.join(" AND ");
            let nulls_loaded = with_nulls.is_some();
            if let Some(nulls) = with_nulls {
                condition = format!("({condition}) OR {nulls}");
            }
            let ledger_key = match &watermark {
                None => String::new(),
                Some(w) => {
                    let key = format!("{}#{}", w.end, w.boundary_rows.unwrap_or(-1));
                    match shape.lookback {
                        // Every run reads the lookback again (it replaces
                        // by key): no two runs share a key.
                        Some(_) => format!("{key}#{:016x}", rand::random::<u64>()),
                        None => key,
                    }
                }
            };
            Ok(Some(Plan {
                condition,
                start: watermark.as_ref().map(|w| w.end.clone()),
                end: Some(upper),
                end_exclusive: false,
                start_exclusive: watermark.is_some() && !boundary_moved && shape.lookback.is_none(),
                ledger_key,
                replace: watermark
                    .filter(|_| boundary_moved)
                    .map(|w| Replace::At(w.end)),
                boundary_rows: Some(boundary_rows),
                null_rows,
                nulls_loaded,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_every_database_prints_them() {
        let want = "2026-01-01 09:30:00.000000";
        for v in [
            "2026-01-01 09:30:00",
            "2026-01-01 09:30:00.000000",
            "2026-01-01T09:30:00",
            "2026-01-01T09:30:00Z",
            "2026-01-01 09:30:00+00",
            "2026-01-01 18:30:00+09",
            "2026-01-01T09:30:00+00:00",
        ] {
            assert_eq!(format_time(parse_time(v).unwrap()), want, "{v}");
        }
        assert_eq!(
            format_time(parse_time("2026-01-01").unwrap()),
            "2026-01-01 00:00:00.000000"
        );
        assert!(parse_time("yesterday").is_none());
    }
}
