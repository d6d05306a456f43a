//! Connections an administrator declares for an organization by name —
//! the sources its jobs may read, the warehouses its action runs write,
//! the buckets their exports go to —
//! kept the same way: a row per (organization, name), the URL sealed.

use super::*;

pub(crate) struct Named {
    pub table: &'static str,
    /// What one is called in a "not found".
    pub kind: &'static str,
}

pub(crate) const SOURCES: Named = Named {
    table: "sources",
    kind: "source",
};

pub(crate) const WAREHOUSES: Named = Named {
    table: "warehouses",
    kind: "warehouse",
};

impl Named {
    /// Stores `c`; one of its name already there is replaced when
    /// `replace`, else refused ([`StoreError::Conflict`]).
    pub async fn put(&self, store: &SqlStore, c: &NamedConnection, replace: bool) -> Result<()> {
        let mut tx = store.begin().await?;
        if replace {
            sqlx::query(&format!(
                "DELETE FROM {} WHERE organization_id = $1 AND name = $2",
                self.table
            ))
            .bind(c.organization_id.as_str())
            .bind(&c.name)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(&format!(
            "INSERT INTO {} (organization_id, name, url_sealed, url_shown, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
            self.table
        ))
        .bind(c.organization_id.as_str())
        .bind(&c.name)
        .bind(&c.url_sealed)
        .bind(&c.url_shown)
        .bind(micros(c.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn of(&self, store: &SqlStore, org: &OrganizationId) -> Result<Vec<NamedConnection>> {
        let rows = sqlx::query(&format!(
            "SELECT organization_id, name, url_sealed, url_shown, created_at FROM {} \
             WHERE organization_id = $1 ORDER BY name",
            self.table
        ))
        .bind(org.as_str())
        .fetch_all(&store.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(NamedConnection {
                    organization_id: OrganizationId::parse(
                        &row.try_get::<String, _>("organization_id")?,
                    )?,
                    name: row.try_get("name")?,
                    url_sealed: row.try_get("url_sealed")?,
                    url_shown: row.try_get("url_shown")?,
                    created_at: ts(row, "created_at")?,
                })
            })
            .collect()
    }

    pub async fn remove(&self, store: &SqlStore, org: &OrganizationId, name: &str) -> Result<()> {
        let done = sqlx::query(&format!(
            "DELETE FROM {} WHERE organization_id = $1 AND name = $2",
            self.table
        ))
        .bind(org.as_str())
        .bind(name)
        .execute(&store.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "{} {name} of organization {org}",
                self.kind
            )));
        }
        Ok(())
    }
}

pub(crate) const BUCKETS: Named = Named {
    table: "buckets",
    kind: "bucket",
};
