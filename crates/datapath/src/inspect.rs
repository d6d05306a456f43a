//! Looking at a source without loading anything: its columns with their
//! types, and a sample value of a column. Validation (a dry run) is built
//! on these; nothing here writes.

use crate::dest::Dest;
use crate::source::Source;
use crate::types::{Kind, TableName};
use crate::Result;

/// What a column can stand for, as validation asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Time,
    Number,
    Bool,
    Text,
    Json,
    Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceColumn {
    pub name: String,
    /// The type as the destination (PostgreSQL) spells it.
    pub sql_type: String,
    pub class: Class,
}

fn class(kind: Kind) -> Class {
    match kind {
        Kind::Date | Kind::Timestamp | Kind::TimestampTz => Class::Time,
        Kind::SmallInt
        | Kind::Int
        | Kind::BigInt
        | Kind::Real
        | Kind::Double
        | Kind::Numeric(_) => Class::Number,
        Kind::Bool => Class::Bool,
        Kind::Json => Class::Json,
        Kind::Bytes => Class::Bytes,
        Kind::Text | Kind::Time => Class::Text,
    }
}

/// Runs `work` on a thread of its own, with its own runtime, so that the
/// future callers hold is Send whatever the database drivers' futures are.
async fn isolated<T, F, Fut>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::ImportError::Invalid(format!("cannot look at the source: {e}")))?;
        rt.block_on(work())
    })
    .await
    .map_err(|e| crate::ImportError::Invalid(format!("looking at the source stopped: {e}")))?
}

/// The columns of a source table; an empty list when it does not exist.
pub async fn columns(url: &str, table: &str) -> Result<Vec<SourceColumn>> {
    let (url, table) = (url.to_owned(), table.to_owned());
    isolated(move || async move {
        let t = TableName::parse(&table)?;
        let mut src = Source::open(&url, &table).await?;
        Ok(src
            .columns(&t)
            .await?
            .into_iter()
            .map(|c| SourceColumn {
                sql_type: c.kind.postgres(),
                class: class(c.kind),
                name: c.name,
            })
            .collect())
    })
    .await
}

/// The first non-NULL value of a column, as text (for diagnostics).
pub async fn sample(url: &str, table: &str, column: &str) -> Result<Option<String>> {
    let (url, table, column) = (url.to_owned(), table.to_owned(), column.to_owned());
    isolated(move || async move {
        let t = TableName::parse(&table)?;
        let mut src = Source::open(&url, &table).await?;
        src.sample(&t, &column).await
    })
    .await
}

/// Checks that a destination answers (and can be written later): connects,
/// writes nothing.
pub async fn destination(url: &str) -> Result<()> {
    let url = url.to_owned();
    isolated(move || async move { Dest::open(&url).await.map(|_| ()) }).await
}
