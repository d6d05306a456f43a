//! [`DatalakeStore`] over SQL: channels, files, triggers and the trigger
//! event ledger.

use std::collections::BTreeMap;

use super::*;
use crate::{DatalakeStore, FileQuery};

const CHANNEL_COLUMNS: &str =
    "id, organization_id, name, description, storage_type, archived, created_at, updated_at";

fn channel_from_row(row: &AnyRow) -> Result<Channel> {
    Ok(Channel {
        id: ChannelId::parse(&row.try_get::<String, _>("id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        storage_type: row.try_get("storage_type")?,
        archived: row.try_get::<i64, _>("archived")? != 0,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

const FILE_COLUMNS: &str = "seq, channel_id, file_id, organization_id, content_type, metadata, \
     size, object, lifetime, source_run_id, uploaded_at";

fn file_from_row(row: &AnyRow) -> Result<DatalakeFile> {
    let metadata: String = row.try_get("metadata")?;
    Ok(DatalakeFile {
        seq: row.try_get("seq")?,
        channel_id: ChannelId::parse(&row.try_get::<String, _>("channel_id")?)?,
        file_id: FileId::parse(&row.try_get::<String, _>("file_id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        content_type: row.try_get("content_type")?,
        metadata: serde_json::from_str(&metadata)?,
        size: row.try_get("size")?,
        object: row.try_get("object")?,
        lifetime: row.try_get("lifetime")?,
        source_run_id: row
            .try_get::<Option<String>, _>("source_run_id")?
            .map(|r| RunId::parse(&r))
            .transpose()?,
        uploaded_at: ts(row, "uploaded_at")?,
    })
}

const TRIGGER_COLUMNS: &str = "id, organization_id, deployment_id, version_id, input_channel_id, \
     output_channel_id, models, environment, retry_count, distribution, created_at, modified_at, \
     deleted_at";

fn trigger_from_row(row: &AnyRow) -> Result<Trigger> {
    Ok(Trigger {
        id: TriggerId::parse(&row.try_get::<String, _>("id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        deployment_id: DeploymentId::parse(&row.try_get::<String, _>("deployment_id")?)?,
        version_id: VersionId::parse(&row.try_get::<String, _>("version_id")?)?,
        input_channel_id: ChannelId::parse(&row.try_get::<String, _>("input_channel_id")?)?,
        output_channel_id: row
            .try_get::<Option<String>, _>("output_channel_id")?
            .map(|c| ChannelId::parse(&c))
            .transpose()?,
        models: parse_json(row, "models")?,
        environment: parse_env(row, "environment")?,
        retry_count: row.try_get::<i64, _>("retry_count")? as i32,
        distribution: row.try_get("distribution")?,
        created_at: ts(row, "created_at")?,
        modified_at: ts(row, "modified_at")?,
        deleted_at: opt_ts(row, "deleted_at")?,
    })
}

const EVENT_COLUMNS: &str =
    "seq, trigger_id, organization_id, channel_id, file_id, state, run_id, \
     note, created_at, dispatched_at";

fn event_from_row(row: &AnyRow) -> Result<TriggerEvent> {
    let state: String = row.try_get("state")?;
    Ok(TriggerEvent {
        seq: row.try_get("seq")?,
        trigger_id: TriggerId::parse(&row.try_get::<String, _>("trigger_id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        channel_id: ChannelId::parse(&row.try_get::<String, _>("channel_id")?)?,
        file_id: FileId::parse(&row.try_get::<String, _>("file_id")?)?,
        state: EventState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown event state `{state}`")))?,
        run_id: row
            .try_get::<Option<String>, _>("run_id")?
            .map(|r| RunId::parse(&r))
            .transpose()?,
        note: row.try_get("note")?,
        created_at: ts(row, "created_at")?,
        dispatched_at: opt_ts(row, "dispatched_at")?,
    })
}

/// Keyset page bounds: comparison, order and the starting key.
pub(super) fn keyset(page: PageRequest) -> (&'static str, &'static str, i64) {
    if page.forward {
        (">", "ASC", page.after.unwrap_or(0))
    } else {
        ("<", "DESC", page.after.unwrap_or(i64::MAX))
    }
}

pub(super) fn into_page<T>(mut items: Vec<T>, limit: u32, seq: impl Fn(&T) -> i64) -> Page<T> {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = if more { items.last().map(seq) } else { None };
    Page { items, next }
}

/// Stores a file and one PENDING event per live trigger on its channel,
/// inside `tx`. Answers the number of events.
async fn insert_file(tx: &mut Transaction<'static, Any>, file: &DatalakeFile) -> Result<u64> {
    let now = micros(file.uploaded_at);
    sqlx::query(
        "INSERT INTO datalake_files (channel_id, file_id, organization_id, content_type, \
         metadata, size, object, lifetime, source_run_id, uploaded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(file.channel_id.as_str())
    .bind(file.file_id.as_str())
    .bind(file.organization_id.as_str())
    .bind(file.content_type.as_str())
    .bind(serde_json::to_string(&file.metadata)?)
    .bind(file.size)
    .bind(file.object.as_str())
    .bind(file.lifetime.clone())
    .bind(file.source_run_id.as_ref().map(|r| r.as_str().to_owned()))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let events = sqlx::query(
        "INSERT INTO trigger_events (trigger_id, organization_id, channel_id, file_id, state, \
         created_at) SELECT id, organization_id, $1, $2, 'PENDING', $3 FROM triggers \
         WHERE input_channel_id = $1 AND deleted_at IS NULL",
    )
    .bind(file.channel_id.as_str())
    .bind(file.file_id.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(events)
}

#[async_trait]
impl DatalakeStore for SqlStore {
    async fn create_channel(&self, c: &Channel) -> Result<()> {
        sqlx::query(
            "INSERT INTO channels (id, organization_id, name, description, storage_type, \
             archived, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(c.id.as_str())
        .bind(c.organization_id.as_str())
        .bind(c.name.as_str())
        .bind(c.description.as_str())
        .bind(c.storage_type.as_str())
        .bind(c.archived as i64)
        .bind(micros(c.created_at))
        .bind(micros(c.updated_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn get_channel(&self, id: &ChannelId) -> Result<Channel> {
        let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("channel", id))?;
        channel_from_row(&row)
    }

    async fn list_channels(
        &self,
        org: &OrganizationId,
        include_archived: bool,
        offset: u32,
        limit: u32,
    ) -> Result<(Vec<Channel>, bool)> {
        let archived = if include_archived {
            ""
        } else {
            " AND archived = 0"
        };
        // The client pages channels by offset; an organization has few.
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels WHERE organization_id = $1{archived} \
             ORDER BY seq LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(limit as i64 + 1)
            .bind(offset as i64)
            .fetch_all(&self.read)
            .await?;
        let mut items = rows
            .iter()
            .map(channel_from_row)
            .collect::<Result<Vec<_>>>()?;
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        Ok((items, more))
    }

    async fn update_channel(&self, c: &Channel) -> Result<()> {
        let done = sqlx::query(
            "UPDATE channels SET name = $1, description = $2, archived = $3, updated_at = $4 \
             WHERE id = $5",
        )
        .bind(c.name.as_str())
        .bind(c.description.as_str())
        .bind(c.archived as i64)
        .bind(micros(c.updated_at))
        .bind(c.id.as_str())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("channel", &c.id));
        }
        Ok(())
    }

    async fn put_file(&self, file: &DatalakeFile) -> Result<u64> {
        let mut tx = self.begin().await?;
        let events = insert_file(&mut tx, file).await?;
        tx.commit().await?;
        Ok(events)
    }

    async fn get_file(&self, channel: &ChannelId, id: &FileId) -> Result<DatalakeFile> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM datalake_files WHERE channel_id = $1 AND file_id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(channel.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("file", format!("{channel}/{id}")))?;
        file_from_row(&row)
    }

    async fn list_files(&self, channel: &ChannelId, q: FileQuery) -> Result<Page<DatalakeFile>> {
        let (cmp, order, after) = keyset(q.page);
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM datalake_files WHERE channel_id = $1 AND seq {cmp} $2 \
             AND uploaded_at >= $3 AND uploaded_at < $4 ORDER BY seq {order} LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(channel.as_str())
            .bind(after)
            .bind(q.from.map(micros).unwrap_or(i64::MIN))
            .bind(q.to.map(micros).unwrap_or(i64::MAX))
            .bind(q.page.limit as i64 + 1)
            .fetch_all(&self.read)
            .await?;
        let items = rows.iter().map(file_from_row).collect::<Result<Vec<_>>>()?;
        Ok(into_page(items, q.page.limit, |f| f.seq))
    }

    async fn delete_file(&self, channel: &ChannelId, id: &FileId) -> Result<DatalakeFile> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM datalake_files WHERE channel_id = $1 AND file_id = $2{}",
            self.dialect.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(channel.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found("file", format!("{channel}/{id}")))?;
        let file = file_from_row(&row)?;
        sqlx::query("DELETE FROM datalake_files WHERE seq = $1")
            .bind(file.seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(file)
    }

    async fn set_file_metadata(
        &self,
        channel: &ChannelId,
        id: &FileId,
        metadata: &BTreeMap<String, String>,
    ) -> Result<DatalakeFile> {
        let done = sqlx::query(
            "UPDATE datalake_files SET metadata = $1 WHERE channel_id = $2 AND file_id = $3",
        )
        .bind(serde_json::to_string(metadata)?)
        .bind(channel.as_str())
        .bind(id.as_str())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("file", format!("{channel}/{id}")));
        }
        self.get_file(channel, id).await
    }

    async fn create_trigger(&self, t: &Trigger) -> Result<()> {
        sqlx::query(
            "INSERT INTO triggers (id, organization_id, deployment_id, version_id, \
             input_channel_id, output_channel_id, models, environment, retry_count, \
             distribution, created_at, modified_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(t.id.as_str())
        .bind(t.organization_id.as_str())
        .bind(t.deployment_id.as_str())
        .bind(t.version_id.as_str())
        .bind(t.input_channel_id.as_str())
        .bind(t.output_channel_id.as_ref().map(|c| c.as_str().to_owned()))
        .bind(json_text(&t.models))
        .bind(env_text(&t.environment))
        .bind(t.retry_count as i64)
        .bind(t.distribution)
        .bind(micros(t.created_at))
        .bind(micros(t.modified_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn get_trigger(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &TriggerId,
    ) -> Result<Trigger> {
        let sql = format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE organization_id = $1 \
             AND deployment_id = $2 AND id = $3 AND deleted_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(dep.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("trigger", id))?;
        trigger_from_row(&row)
    }

    async fn find_trigger(&self, id: &TriggerId) -> Result<Trigger> {
        let sql = format!("SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("trigger", id))?;
        trigger_from_row(&row)
    }

    async fn list_triggers(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
    ) -> Result<Vec<Trigger>> {
        let sql = format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE organization_id = $1 \
             AND deployment_id = $2 AND deleted_at IS NULL ORDER BY seq"
        );
        let rows = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(dep.as_str())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(trigger_from_row).collect()
    }

    async fn delete_trigger(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &TriggerId,
        now: Timestamp,
    ) -> Result<()> {
        let now = micros(now);
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE triggers SET deleted_at = $1, modified_at = $1 WHERE organization_id = $2 \
             AND deployment_id = $3 AND id = $4 AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(org.as_str())
        .bind(dep.as_str())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("trigger", id));
        }
        sqlx::query(
            "UPDATE trigger_events SET state = 'SKIPPED', dispatched_at = $1, \
             note = 'the trigger was deleted before a run was made' \
             WHERE trigger_id = $2 AND state = 'PENDING'",
        )
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_trigger_events(
        &self,
        trigger: &TriggerId,
        page: PageRequest,
    ) -> Result<Page<TriggerEvent>> {
        let (cmp, order, after) = keyset(page);
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM trigger_events WHERE trigger_id = $1 AND seq {cmp} $2 \
             ORDER BY seq {order} LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(trigger.as_str())
            .bind(after)
            .bind(page.limit as i64 + 1)
            .fetch_all(&self.read)
            .await?;
        let items = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(into_page(items, page.limit, |e| e.seq))
    }

    async fn pending_events(&self, limit: u32) -> Result<Vec<TriggerEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM trigger_events WHERE state = 'PENDING' \
             ORDER BY seq LIMIT $1"
        );
        let rows = sqlx::query(&sql)
            .bind(limit as i64)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn dispatch_event(
        &self,
        event: i64,
        run: &NewRun,
        queue: Option<&str>,
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        // The row lock this takes makes a second dispatcher wait, then find
        // the event no longer PENDING.
        let taken = sqlx::query(
            "UPDATE trigger_events SET state = 'DISPATCHED', run_id = $1, dispatched_at = $2 \
             WHERE seq = $3 AND state = 'PENDING'",
        )
        .bind(run.id.as_str())
        .bind(micros(now))
        .bind(event)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken == 0 {
            return Ok(false);
        }
        insert_run(&mut *tx, run, queue).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn skip_event(&self, event: i64, note: &str, now: Timestamp) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE trigger_events SET state = 'SKIPPED', note = $1, dispatched_at = $2 \
             WHERE seq = $3 AND state = 'PENDING'",
        )
        .bind(note)
        .bind(micros(now))
        .bind(event)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_with_output(
        &self,
        run: &RunId,
        token: i64,
        outcome: &AttemptOutcome,
        retry: RetryPolicy,
        now: Timestamp,
        tail: &[(Timestamp, String)],
        output: &DatalakeFile,
    ) -> Result<RunStatus> {
        let mut tx = self.begin().await?;
        let next = self
            .finish_in(&mut tx, run, token, outcome, retry, now, tail)
            .await?;
        if next == RunStatus::Succeeded {
            insert_file(&mut tx, output).await?;
        }
        tx.commit().await?;
        Ok(next)
    }
}
