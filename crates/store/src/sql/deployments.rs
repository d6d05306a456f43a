//! [`DeploymentStore`] over SQL: deployments and versions.

use super::*;
use crate::DeploymentStore;

#[async_trait]
impl DeploymentStore for SqlStore {
    async fn create_deployment(&self, dep: &Deployment) -> Result<()> {
        sqlx::query(
            "INSERT INTO deployments (id, organization_id, name, description, \
             default_environment, creator, created_at, modified_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(dep.id.as_str())
        .bind(dep.organization_id.as_str())
        .bind(&dep.name)
        .bind(&dep.description)
        .bind(env_text(&dep.default_environment))
        .bind(dep.creator.as_ref().map(|u| u.as_str().to_owned()))
        .bind(micros(dep.created_at))
        .bind(micros(dep.modified_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn get_deployment(&self, org: &OrganizationId, id: &DeploymentId) -> Result<Deployment> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE organization_id = $1 AND id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("deployment", id))?;
        deployment_from_row(&row)
    }

    async fn list_deployments(&self, org: &OrganizationId) -> Result<Vec<Deployment>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE organization_id = $1 \
             ORDER BY seq DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(org.as_str())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn update_deployment(&self, dep: &Deployment) -> Result<()> {
        let done = sqlx::query(
            "UPDATE deployments SET name = $1, description = $2, default_environment = $3, \
             modified_at = $4 WHERE organization_id = $5 AND id = $6",
        )
        .bind(&dep.name)
        .bind(&dep.description)
        .bind(env_text(&dep.default_environment))
        .bind(micros(dep.modified_at))
        .bind(dep.organization_id.as_str())
        .bind(dep.id.as_str())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("deployment", &dep.id));
        }
        Ok(())
    }

    async fn set_deployment_limits(
        &self,
        org: &OrganizationId,
        id: &DeploymentId,
        limits: &RunLimits,
        now: Timestamp,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE deployments SET limits = $1, modified_at = $2 \
             WHERE organization_id = $3 AND id = $4",
        )
        .bind(serde_json::to_string(limits)?)
        .bind(micros(now))
        .bind(org.as_str())
        .bind(id.as_str())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("deployment", id));
        }
        Ok(())
    }

    async fn delete_deployment(&self, org: &OrganizationId, id: &DeploymentId) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM deployments WHERE organization_id = $1 AND id = $2")
            .bind(org.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("deployment", id));
        }
        sqlx::query("DELETE FROM versions WHERE deployment_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_version(&self, ver: &Version) -> Result<()> {
        sqlx::query(
            "INSERT INTO versions (id, organization_id, deployment_id, version, handler, image, \
             user_parameters, archive, created_at, modified_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(ver.id.as_str())
        .bind(ver.organization_id.as_str())
        .bind(ver.deployment_id.as_str())
        .bind(&ver.version)
        .bind(&ver.handler)
        .bind(&ver.image)
        .bind(env_text(&ver.user_parameters))
        .bind(ver.archive.clone())
        .bind(micros(ver.created_at))
        .bind(micros(ver.modified_at))
        .execute(&self.write)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!(
                "version `{}` already exists in deployment {}",
                ver.version, ver.deployment_id
            )),
            other => other,
        })?;
        Ok(())
    }

    async fn get_version(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &VersionId,
    ) -> Result<Version> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions \
             WHERE organization_id = $1 AND deployment_id = $2 AND id = $3"
        );
        let row = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(dep.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("version", id))?;
        version_from_row(&row)
    }

    async fn get_deployment_version(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        ver: &VersionId,
    ) -> Result<(Deployment, Option<Version>)> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let of = |table: &str, columns: &str, prefix: &str| {
                columns
                    .split(',')
                    .map(|c| format!("{table}.{c} AS {prefix}{c}", c = c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "SELECT {}, {} FROM deployments d LEFT JOIN versions v \
                 ON v.organization_id = d.organization_id AND v.deployment_id = d.id \
                 AND v.id = $3 WHERE d.organization_id = $1 AND d.id = $2",
                of("d", DEPLOYMENT_COLUMNS, ""),
                of("v", VERSION_COLUMNS, "v_"),
            )
        });
        let row = sqlx::query(&SQL)
            .bind(org.as_str())
            .bind(dep.as_str())
            .bind(ver.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("deployment", dep))?;
        let version = match row.try_get::<Option<String>, _>("v_id")? {
            Some(_) => Some(version_from(&row, "v_")?),
            None => None,
        };
        Ok((deployment_from_row(&row)?, version))
    }

    async fn list_versions(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
    ) -> Result<Vec<Version>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions \
             WHERE organization_id = $1 AND deployment_id = $2 ORDER BY seq DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(dep.as_str())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn set_version_archive(
        &self,
        id: &VersionId,
        archive: &str,
        now: Timestamp,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE versions SET archive = $1, modified_at = $2 WHERE id = $3 AND archive IS NULL",
        )
        .bind(archive)
        .bind(micros(now))
        .bind(id.as_str())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT id FROM versions WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.read)
                    .await?;
            return Err(match exists {
                Some(_) => StoreError::Conflict(format!(
                    "version {id} has its code already: a version's code never changes; \
                     make a new version for new code"
                )),
                None => not_found("version", id),
            });
        }
        Ok(())
    }

    async fn delete_version(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &VersionId,
    ) -> Result<()> {
        let done = sqlx::query(
            "DELETE FROM versions WHERE organization_id = $1 AND deployment_id = $2 AND id = $3",
        )
        .bind(org.as_str())
        .bind(dep.as_str())
        .bind(id.as_str())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("version", id));
        }
        Ok(())
    }
}
