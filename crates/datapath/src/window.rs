//! Which rows one run loads: the window on the change column.
//!
//! - **Next** (a job's regular run): the window starts at the watermark —
//!   the end of the last window the job loaded, kept in the destination's
//!   ledger — exclusive, or at the table's first row. It ends at the
//!   change column's current maximum, or sooner: at start + `size` (for
//!   timestamp and date columns) and at the `row_limit`-th row (rows that
//!   share that row's change value come along, so no value is ever split
//!   between two windows). Its end becomes the next watermark.
//! - **Explicit** `[start, end)` (a window asked for by hand, or a recorded
//!   one run again): the target's rows in that range are deleted and the
//!   range is loaded again, in the load's one transaction.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime};

use crate::Result;

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

/// A window, ready to load.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The source rows to load (an SQL condition).
    pub condition: String,
    pub start: Option<String>,
    pub end: Option<String>,
    pub ledger_key: String,
    /// Target rows to delete first (explicit windows).
    pub replace: Option<(String, String)>,
}

/// What the planner needs of a source: SQL spelled its way.
pub trait WindowSql {
    /// The change column, quoted.
    fn column(&self) -> String;
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

pub async fn plan<S: WindowSql>(
    s: &mut S,
    watermark: Option<String>,
    request: &WindowRequest,
) -> Result<Option<Plan>> {
    let col = s.column();
    match request {
        WindowRequest::Explicit { start, end, key } => {
            let (start, end) = if s.is_time() {
                match (parse_time(start), parse_time(end)) {
                    (Some(a), Some(b)) if a < b => (format_time(a), format_time(b)),
                    _ => {
                        return Err(crate::ImportError::Invalid(format!(
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
                condition: format!("{col} >= {a} AND {col} < {b}"),
                start: Some(start.clone()),
                end: Some(end.clone()),
                ledger_key: format!("explicit:{start}|{end}|{key}"),
                replace: Some((start.clone(), end.clone())),
            }))
        }
        WindowRequest::Next { size, row_limit } => {
            let table = s.table();
            let lower = watermark
                .as_ref()
                .map(|w| format!("{col} > {}", s.literal(w)));
            let where_lower = lower
                .as_ref()
                .map(|l| format!(" WHERE {l}"))
                .unwrap_or_default();
            let max = s
                .text(format!(
                    "SELECT {} FROM {table}{where_lower}",
                    s.as_text(&format!("max({col})"))
                ))
                .await?;
            let Some(mut upper) = max else {
                return Ok(None);
            };
            if let (Some(size), true) = (size, s.is_time()) {
                let base = match &watermark {
                    Some(w) => Some(w.clone()),
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
                let mut cond = vec![format!("{col} <= {}", s.literal(&upper))];
                cond.extend(lower.clone());
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
            let mut cond = vec![format!("{col} <= {}", s.literal(&upper))];
            cond.extend(lower);
            Ok(Some(Plan {
                condition: cond.join(" AND "),
                start: watermark.clone(),
                end: Some(upper),
                ledger_key: watermark.unwrap_or_default(),
                replace: None,
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
