//! [`AccountStore`] over SQL: the server's secrets, organizations, users.

use super::*;
use crate::AccountStore;

#[async_trait]
impl AccountStore for SqlStore {
    async fn server_secret(&self, name: &str, candidate: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&self.write)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&self.write)
                .await?,
        )
    }

    async fn create_organization(&self, org: &Organization) -> Result<()> {
        sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(org.id.as_str())
            .bind(&org.name)
            .bind(micros(org.created_at))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn get_organization(&self, id: &OrganizationId) -> Result<Organization> {
        let row = sqlx::query("SELECT id, name, created_at FROM organizations WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("organization", id))?;
        Ok(Organization {
            id: OrganizationId::parse(&row.try_get::<String, _>("id")?)?,
            name: row.try_get("name")?,
            created_at: ts(&row, "created_at")?,
        })
    }

    async fn any_organization(&self) -> Result<bool> {
        let row = sqlx::query("SELECT id FROM organizations LIMIT 1")
            .fetch_optional(&self.read)
            .await?;
        Ok(row.is_some())
    }

    async fn create_user(&self, user: &User) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, organization_id, email, token_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(user.id.as_str())
        .bind(user.organization_id.as_str())
        .bind(&user.email)
        .bind(&user.token_hash)
        .bind(micros(user.created_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn get_user(&self, id: &UserId) -> Result<User> {
        let row = sqlx::query(
            "SELECT id, organization_id, email, token_hash, created_at, token_generation FROM users WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| not_found("user", id))?;
        user_from_row(&row)
    }

    async fn revoke_tokens(&self, id: &UserId) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE users SET token_generation = token_generation + 1 WHERE id = $1 \
             RETURNING token_generation",
        )
        .bind(id.as_str())
        .fetch_optional(&self.write)
        .await?
        .ok_or_else(|| not_found("user", id))?;
        Ok(row.try_get(0)?)
    }

    async fn users_of(&self, org: &OrganizationId) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT id, organization_id, email, token_hash, created_at, token_generation FROM users \
             WHERE organization_id = $1 ORDER BY created_at, id",
        )
        .bind(org.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn first_user(&self, org: &OrganizationId) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT id, organization_id, email, token_hash, created_at, token_generation FROM users \
             WHERE organization_id = $1 ORDER BY created_at, id LIMIT 1",
        )
        .bind(org.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }
}
