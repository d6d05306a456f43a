//! The destination table: its name, its making, and its consolidation
//! with the source's columns.

use super::*;

pub(super) fn dest_table(t: &TableName) -> String {
    match &t.schema {
        Some(s) => format!("{}.{}", q(s, false), q(&t.table, false)),
        None => q(&t.table, false),
    }
}

pub(super) fn create_sql(dest: &Dest, table: &str, cols: &[Col]) -> String {
    let defs = cols
        .iter()
        .map(|c| {
            let ty = match dest {
                Dest::Postgres(_) => c.kind.postgres(),
                Dest::Sqlite(_) => c.kind.sqlite().to_owned(),
            };
            format!(
                "{} {ty}{}",
                q(&c.name, false),
                if c.not_null { " NOT NULL" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("CREATE TABLE IF NOT EXISTS {table} ({defs})")
}

/// Makes the live table when it is missing, or adds the source's new
/// columns to it; answers the schema changes.
pub(super) async fn consolidate(
    dst: &mut Dest,
    target: &TableName,
    live: &str,
    cols: &[Col],
) -> Result<Vec<String>> {
    let existing: Vec<String> = match dst {
        Dest::Postgres(c) => crate::postgres::columns(c, target)
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect(),
        Dest::Sqlite(c) => {
            let rows = sqlx::query(&format!("PRAGMA table_info({})", q(&target.table, false)))
                .fetch_all(&mut *c)
                .await
                .map_err(db(format!("reading the columns of {live}")))?;
            rows.iter()
                .map(|r| r.try_get::<String, _>("name"))
                .collect::<Result<_, _>>()
                .map_err(db(format!("reading the columns of {live}")))?
        }
    };
    if existing.is_empty() {
        let create = create_sql(dst, live, cols);
        dst.raw(&create)
            .await
            .map_err(db(format!("creating {live}")))?;
        return Ok(vec![format!("created {live}")]);
    }
    let mut changes = Vec::new();
    for c in cols.iter().filter(|c| !existing.contains(&c.name)) {
        let ty = match dst {
            Dest::Postgres(_) => c.kind.postgres(),
            Dest::Sqlite(_) => c.kind.sqlite().to_owned(),
        };
        dst.raw(&format!(
            "ALTER TABLE {live} ADD COLUMN {} {ty}",
            q(&c.name, false)
        ))
        .await
        .map_err(db(format!("adding column {} to {live}", c.name)))?;
        changes.push(format!("new column {} {ty}", c.name));
    }
    for e in existing
        .iter()
        .filter(|e| !cols.iter().any(|c| &c.name == *e))
    {
        changes.push(format!(
            "column {e} is not in the source: its new rows hold NULL"
        ));
    }
    Ok(changes)
}
