//! [`SpaceStore`] over SQL: spaces, models and API keys.

use super::datalake::{into_page, keyset};
use super::*;
use crate::SpaceStore;

const SPACE_COLUMNS: &str =
    "seq, id, organization_id, name, description, private, is_default, created_at";

fn space_from_row(row: &AnyRow) -> Result<Space> {
    Ok(Space {
        seq: row.try_get("seq")?,
        id: SpaceId::parse(&row.try_get::<String, _>("id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        private: row.try_get::<i64, _>("private")? != 0,
        is_default: row.try_get::<i64, _>("is_default")? != 0,
        created_at: ts(row, "created_at")?,
    })
}

const MODEL_COLUMNS: &str = "seq, id, organization_id, space_id, name, model_type, created_at";

fn model_from_row(row: &AnyRow) -> Result<Model> {
    Ok(Model {
        seq: row.try_get("seq")?,
        id: ModelId::parse(&row.try_get::<String, _>("id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        space_id: SpaceId::parse(&row.try_get::<String, _>("space_id")?)?,
        name: row.try_get("name")?,
        model_type: row.try_get("model_type")?,
        created_at: ts(row, "created_at")?,
    })
}

fn like(search: Option<&str>) -> Option<String> {
    search
        .filter(|s| !s.is_empty())
        .map(|s| format!("%{}%", s.to_lowercase()))
}

/// A keyset page of `table`'s rows owned by `$1` whose name contains `$2`.
fn named_page(table: &str, columns: &str, owner: &str, page: PageRequest) -> String {
    let (cmp, order, _) = keyset(page);
    format!(
        "SELECT {columns} FROM {table} WHERE {owner} = $1 \
         AND ($2 IS NULL OR lower(name) LIKE $2) AND seq {cmp} $3 ORDER BY seq {order} LIMIT $4"
    )
}

impl SqlStore {
    /// Runs a [`named_page`] query.
    async fn named_page<T>(
        &self,
        sql: &str,
        owner: &str,
        search: Option<&str>,
        page: PageRequest,
        from_row: fn(&AnyRow) -> Result<T>,
        seq: fn(&T) -> i64,
    ) -> Result<Page<T>> {
        let rows = sqlx::query(sql)
            .bind(owner)
            .bind(like(search))
            .bind(keyset(page).2)
            .bind(page.limit as i64 + 1)
            .fetch_all(&self.read)
            .await?;
        let items = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
        Ok(into_page(items, page.limit, seq))
    }

    async fn one_space(&self, sql: &str, key: &str) -> Result<Option<Space>> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(space_from_row).transpose()
    }
}

#[async_trait]
impl SpaceStore for SqlStore {
    async fn create_space(&self, space: &Space) -> Result<()> {
        sqlx::query(
            "INSERT INTO spaces (id, organization_id, name, description, private, is_default, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(space.id.as_str())
        .bind(space.organization_id.as_str())
        .bind(&space.name)
        .bind(&space.description)
        .bind(space.private as i64)
        .bind(space.is_default as i64)
        .bind(micros(space.created_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn default_space(&self, org: &OrganizationId, now: Timestamp) -> Result<Space> {
        let find = format!(
            "SELECT {SPACE_COLUMNS} FROM spaces WHERE organization_id = $1 AND is_default = 1"
        );
        if let Some(s) = self.one_space(&find, org.as_str()).await? {
            return Ok(s);
        }
        let space = Space {
            seq: 0,
            id: SpaceId::generate(),
            organization_id: org.clone(),
            name: "default".into(),
            description: "The organization's default space".into(),
            private: false,
            is_default: true,
            created_at: now,
        };
        match self.create_space(&space).await {
            // Another caller made it first: theirs is the one.
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        self.one_space(&find, org.as_str())
            .await?
            .ok_or_else(|| not_found("default space of organization", org))
    }

    async fn get_space(&self, id: &SpaceId) -> Result<Space> {
        let sql = format!("SELECT {SPACE_COLUMNS} FROM spaces WHERE id = $1");
        self.one_space(&sql, id.as_str())
            .await?
            .ok_or_else(|| not_found("space", id))
    }

    async fn list_spaces(
        &self,
        org: &OrganizationId,
        search: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Space>> {
        let sql = named_page("spaces", SPACE_COLUMNS, "organization_id", page);
        self.named_page(&sql, org.as_str(), search, page, space_from_row, |s| s.seq)
            .await
    }

    async fn model_for(
        &self,
        org: &OrganizationId,
        space: &SpaceId,
        name: &str,
        model_type: &str,
        now: Timestamp,
    ) -> Result<Model> {
        let find = format!("SELECT {MODEL_COLUMNS} FROM models WHERE space_id = $1 AND name = $2");
        let get = || async {
            let row = sqlx::query(&find)
                .bind(space.as_str())
                .bind(name)
                .fetch_optional(&self.read)
                .await?;
            row.as_ref().map(model_from_row).transpose()
        };
        if let Some(m) = get().await? {
            return Ok(m);
        }
        let made = sqlx::query(
            "INSERT INTO models (id, organization_id, space_id, name, model_type, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ModelId::generate().as_str())
        .bind(org.as_str())
        .bind(space.as_str())
        .bind(name)
        .bind(model_type)
        .bind(micros(now))
        .execute(&self.write)
        .await;
        match made.map_err(StoreError::from) {
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        get().await?.ok_or_else(|| not_found("model", name))
    }

    async fn get_model(&self, id: &ModelId) -> Result<Model> {
        let sql = format!("SELECT {MODEL_COLUMNS} FROM models WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref()
            .map(model_from_row)
            .transpose()?
            .ok_or_else(|| not_found("model", id))
    }

    async fn list_models(
        &self,
        space: &SpaceId,
        search: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Model>> {
        let sql = named_page("models", MODEL_COLUMNS, "space_id", page);
        self.named_page(&sql, space.as_str(), search, page, model_from_row, |m| {
            m.seq
        })
        .await
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, space_id, key_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.id.as_str())
        .bind(key.organization_id.as_str())
        .bind(key.space_id.as_ref().map(|s| s.as_str()))
        .bind(&key.key_hash)
        .bind(micros(key.created_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(
            "SELECT id, organization_id, space_id, key_hash, created_at FROM api_keys \
             WHERE key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(ApiKey {
            id: ApiKeyId::parse(&row.try_get::<String, _>("id")?)?,
            organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
            space_id: row
                .try_get::<Option<String>, _>("space_id")?
                .map(|s| SpaceId::parse(&s))
                .transpose()?,
            key_hash: row.try_get("key_hash")?,
            created_at: ts(&row, "created_at")?,
        }))
    }
}
