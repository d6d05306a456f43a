//! The Arize-style importer's mutations, each translated onto `engine::control`.

use async_graphql::{Context, Enum, InputObject, Object, Result, SimpleObject, ID};
use sluice_domain::*;
use sluice_engine::control::{ControlError, JobChange, NewJob, Validation};

use crate::ids;
use crate::objects::{
    control, gql, holder, JobStatusEnum, ModelEnvironment, ModelType, SpaceObj, TableImportJob,
    TableStore,
};

#[derive(InputObject, Default, Clone)]
#[graphql(name = "TableImportSchemaInputType")]
pub struct SchemaInput {
    prediction_id: Option<String>,
    timestamp: Option<String>,
    prediction_label: Option<String>,
    prediction_score: Option<String>,
    prediction_scores: Option<String>,
    actual_label: Option<String>,
    actual_score: Option<String>,
    actual_scores: Option<String>,
    threshold_scores: Option<String>,
    prediction_group_id: Option<String>,
    rank: Option<String>,
    relevance_score: Option<String>,
    relevance_label: Option<String>,
    version: Option<String>,
    batch_id: Option<String>,
    change_timestamp: Option<String>,
    features: Option<String>,
    features_list: Option<Vec<String>>,
    tags: Option<String>,
    tags_list: Option<Vec<String>>,
    shap_values: Option<String>,
    exclude: Option<Vec<String>>,
    embedding_features: Option<Vec<EmbeddingFeatureInput>>,
    prediction_object_detection: Option<ObjectDetectionInput>,
    actual_object_detection: Option<ObjectDetectionInput>,
}

#[derive(InputObject, Clone)]
pub struct EmbeddingFeatureInput {
    feature_name: String,
    vector_col: String,
    raw_data_col: Option<String>,
    link_to_data_col: Option<String>,
}

#[derive(InputObject, Clone)]
pub struct ObjectDetectionInput {
    bounding_boxes_coordinates_column_name: String,
    bounding_boxes_categories_column_name: String,
    bounding_boxes_scores_column_name: Option<String>,
}

impl SchemaInput {
    fn mapping(self) -> Result<Mapping> {
        let unsupported = [
            ("predictionScores", self.prediction_scores.is_some()),
            ("actualScores", self.actual_scores.is_some()),
            ("thresholdScores", self.threshold_scores.is_some()),
            (
                "embeddingFeatures",
                self.embedding_features
                    .as_ref()
                    .is_some_and(|e| !e.is_empty()),
            ),
            (
                "predictionObjectDetection",
                self.prediction_object_detection.is_some(),
            ),
            (
                "actualObjectDetection",
                self.actual_object_detection.is_some(),
            ),
        ];
        for (field, v) in unsupported {
            if v {
                return Err(gql(ControlError::BadRequest(format!(
                    "schema.{field} is not supported by sluice's table imports yet"
                ))));
            }
        }
        Ok(Mapping {
            prediction_id: self.prediction_id,
            timestamp: self.timestamp,
            prediction_label: self.prediction_label,
            prediction_score: self.prediction_score,
            actual_label: self.actual_label,
            actual_score: self.actual_score,
            prediction_group_id: self.prediction_group_id,
            rank: self.rank,
            relevance_score: self.relevance_score,
            relevance_label: self.relevance_label,
            version: self.version,
            batch_id: self.batch_id,
            change_timestamp: self.change_timestamp,
            features: self.features,
            features_list: self.features_list,
            tags: self.tags,
            tags_list: self.tags_list,
            shap_values: self.shap_values,
            exclude: self.exclude,
        })
    }
}

#[derive(InputObject, Default, Clone)]
#[graphql(name = "TableIngestionParametersInputType")]
pub struct IngestionInput {
    row_limit: Option<i64>,
    refresh_interval_minutes: Option<i64>,
    query_window_size_hours: Option<i64>,
}

impl IngestionInput {
    fn params(self, base: &IngestionParams) -> Result<IngestionParams> {
        let non_negative = |field: &str, v: Option<i64>| -> Result<Option<u64>> {
            match v {
                Some(n) if n < 0 => Err(gql(ControlError::BadRequest(format!(
                    "tableIngestionParameters.{field} must be 0 or more, got {n}"
                )))),
                Some(n) => Ok(Some(n as u64)),
                None => Ok(None),
            }
        };
        let p = IngestionParams {
            row_limit: non_negative("rowLimit", self.row_limit)?.or(base.row_limit),
            refresh_interval_minutes: non_negative(
                "refreshIntervalMinutes",
                self.refresh_interval_minutes,
            )?
            .or(base.refresh_interval_minutes),
            query_window_size_hours: non_negative(
                "queryWindowSizeHours",
                self.query_window_size_hours,
            )?
            .map(|h| h as f64)
            .or(base.query_window_size_hours),
            ..base.clone()
        };
        p.check().map_err(|m| gql(ControlError::BadRequest(m.0)))?;
        Ok(p)
    }
}

#[derive(InputObject)]
pub struct BigQueryTableConfig {
    project_id: String,
    dataset: String,
    table_name: String,
}

#[derive(InputObject)]
pub struct SnowflakeTableConfig {
    #[graphql(name = "accountID")]
    account_id: String,
    schema: String,
    database: String,
    table_name: String,
}

#[derive(InputObject)]
pub struct DatabricksTableConfig {
    host_name: String,
    endpoint: String,
    port: String,
    token: Option<String>,
    azure_resource_id: Option<String>,
    azure_tenant_id: Option<String>,
    catalog: String,
    databricks_schema: String,
    table_name: String,
}

/// A table in one of sluice's own stores: `url` is the database's
/// (`postgres://…`, `mysql://…`, `sqlite://…`) or the folder's
/// (`file:///…`); the password in it is sealed at rest.
#[derive(InputObject)]
pub struct SluiceTableConfig {
    url: String,
    table_name: String,
}

#[derive(InputObject)]
pub struct CreateTableImportJobInput {
    space_id: ID,
    model_name: String,
    model_version: Option<String>,
    model_type: ModelType,
    model_environment_name: ModelEnvironment,
    table_store: TableStore,
    big_query_table_config: Option<BigQueryTableConfig>,
    snowflake_table_config: Option<SnowflakeTableConfig>,
    databricks_table_config: Option<DatabricksTableConfig>,
    postgres_table_config: Option<SluiceTableConfig>,
    mysql_table_config: Option<SluiceTableConfig>,
    sqlite_table_config: Option<SluiceTableConfig>,
    file_table_config: Option<SluiceTableConfig>,
    schema: SchemaInput,
    batch_id: Option<String>,
    table_ingestion_parameters: Option<IngestionInput>,
    dry_run: Option<bool>,
    client_mutation_id: Option<String>,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum ValidationStatus {
    #[graphql(name = "SUCCESS")]
    Success,
    #[graphql(name = "FAILURE")]
    Failure,
}

#[derive(SimpleObject)]
pub struct ValidationError {
    code: String,
    message: String,
    column: Option<String>,
    sample: Option<String>,
}

#[derive(SimpleObject)]
pub struct ValidationResult {
    validation_status: ValidationStatus,
    /// The first problem found (null when valid).
    error: Option<ValidationError>,
    /// Every problem found.
    errors: Vec<ValidationError>,
}

fn validation_result(v: &Validation) -> ValidationResult {
    let errors: Vec<ValidationError> = v
        .diagnostics
        .iter()
        .map(|d| ValidationError {
            code: d.code.clone(),
            message: d.message.clone(),
            column: d.column.clone(),
            sample: d.sample.clone(),
        })
        .collect();
    ValidationResult {
        validation_status: if errors.is_empty() {
            ValidationStatus::Success
        } else {
            ValidationStatus::Failure
        },
        error: errors.first().map(|e| ValidationError {
            code: e.code.clone(),
            message: e.message.clone(),
            column: e.column.clone(),
            sample: e.sample.clone(),
        }),
        errors,
    }
}

#[derive(SimpleObject)]
pub struct CreateTableImportJobPayload {
    table_import_job: Option<TableImportJob>,
    space: Option<SpaceObj>,
    validation_result: ValidationResult,
    client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct TableImportJobPayload {
    table_import_job: TableImportJob,
    client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct JobIdInput {
    job_id: ID,
    client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct UpdateTableIngestionParametersInput {
    job_id: ID,
    table_ingestion_parameters: IngestionInput,
    client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct UpdateTableImportJobInput {
    job_id: ID,
    job_status: Option<JobStatusEnum>,
    model_version: Option<String>,
    schema: Option<SchemaInput>,
    table_ingestion_parameters: Option<IngestionInput>,
    client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct CreateTriggeredOngoingTableRunInput {
    job_id: ID,
    query_start: String,
    query_end: String,
    client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct CreateTriggeredOngoingTableRunPayload {
    /// The query made for the window.
    query_id: String,
    client_mutation_id: Option<String>,
}

/// A job id as Arize's documents and client send it: the global node id or
/// the plain `jobId`.
fn job_id(id: &ID) -> String {
    match ids::parse(id) {
        Some((kind, raw)) if kind == "TableImportJob" => raw,
        _ => id.to_string(),
    }
}

fn bad(m: impl Into<String>) -> async_graphql::Error {
    gql(ControlError::BadRequest(m.into()))
}

fn need(field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        return Err(bad(format!("{field} must not be empty")));
    }
    Ok(())
}

/// The source a create input names (the config its `tableStore` asks
/// for), located by the domain's rules; a problem names the input's field.
fn source_of(input: &mut CreateTableImportJobInput) -> Result<LocatedSource> {
    let store = input.table_store;
    let missing =
        |field: &str, store: &str| bad(format!("{field} is required when tableStore is {store}"));
    let own = |cfg: Option<SluiceTableConfig>, kind: OwnStore, field: &'static str, store: &str| {
        let cfg = cfg.ok_or_else(|| missing(field, store))?;
        Ok::<_, async_graphql::Error>((
            field,
            TableSource::Own {
                store: kind,
                url: cfg.url,
                table_name: cfg.table_name,
            },
        ))
    };
    let (field, source) = match store {
        TableStore::BigQuery => {
            let c = input
                .big_query_table_config
                .take()
                .ok_or_else(|| missing("bigQueryTableConfig", "BigQuery"))?;
            (
                "bigQueryTableConfig",
                TableSource::BigQuery {
                    project_id: c.project_id,
                    dataset: c.dataset,
                    table_name: c.table_name,
                },
            )
        }
        TableStore::Snowflake => {
            let c = input
                .snowflake_table_config
                .take()
                .ok_or_else(|| missing("snowflakeTableConfig", "Snowflake"))?;
            (
                "snowflakeTableConfig",
                TableSource::Snowflake {
                    account_id: c.account_id,
                    database: c.database,
                    schema: c.schema,
                    table_name: c.table_name,
                },
            )
        }
        TableStore::Databricks => {
            let c = input
                .databricks_table_config
                .take()
                .ok_or_else(|| missing("databricksTableConfig", "Databricks"))?;
            // Kept by Arize for Azure; a connector would use them.
            let _ = (&c.azure_resource_id, &c.azure_tenant_id);
            (
                "databricksTableConfig",
                TableSource::Databricks {
                    host_name: c.host_name,
                    endpoint: c.endpoint,
                    port: c.port,
                    token: c.token,
                    catalog: c.catalog,
                    schema: c.databricks_schema,
                    table_name: c.table_name,
                },
            )
        }
        TableStore::PostgreSQL => own(
            input.postgres_table_config.take(),
            OwnStore::PostgreSQL,
            "postgresTableConfig",
            "PostgreSQL",
        )?,
        TableStore::MySQL => own(
            input.mysql_table_config.take(),
            OwnStore::MySQL,
            "mysqlTableConfig",
            "MySQL",
        )?,
        TableStore::SQLite => own(
            input.sqlite_table_config.take(),
            OwnStore::SQLite,
            "sqliteTableConfig",
            "SQLite",
        )?,
        TableStore::Files => own(
            input.file_table_config.take(),
            OwnStore::Files,
            "fileTableConfig",
            "Files",
        )?,
    };
    source
        .locate()
        .map_err(|p| bad(format!("{field}.{} {}", p.field, p.problem)))
}

async fn create(
    ctx: &Context<'_>,
    mut input: CreateTableImportJobInput,
    triggered: bool,
) -> Result<CreateTableImportJobPayload> {
    let c = control(ctx);
    let who = holder(ctx);
    let space_raw = match ids::parse(&input.space_id) {
        Some((kind, raw)) if kind == "Space" => raw,
        _ => input.space_id.to_string(),
    };
    let space = c.space_for(who, &space_raw).await.map_err(gql)?;
    need("modelName", &input.model_name)?;
    let LocatedSource {
        url: source,
        table,
        mut labels,
    } = source_of(&mut input)?;
    labels.insert("modelName".into(), input.model_name.clone().into());
    labels.insert("modelType".into(), input.model_type.as_str().into());
    labels.insert(
        "modelEnvironmentName".into(),
        input.model_environment_name.as_str().into(),
    );
    if let Some(v) = &input.model_version {
        labels.insert("modelVersion".into(), v.clone().into());
    }
    if let Some(b) = &input.batch_id {
        labels.insert("batchId".into(), b.clone().into());
    }
    if triggered {
        labels.insert("triggered".into(), true.into());
    }
    let mapping = input.schema.clone().mapping()?;
    let ingestion = input
        .table_ingestion_parameters
        .take()
        .unwrap_or_default()
        .params(&IngestionParams::default())?;
    let spec = JobSpec {
        table,
        target: table_for_model(&input.model_name),
        mode: LoadMode::for_mapping(&mapping),
        change_column: None,
        key: None,
        mapping,
        ingestion,
        labels,
    };
    let new = NewJob {
        name: input.model_name.clone(),
        space: space.job_key(),
        source,
        destination: None,
        spec,
        // A model may be fed by several jobs: each loads its own table.
        number_taken_target: true,
    };
    let (job, validation) = c
        .create_job(&who.organization, new, input.dry_run.unwrap_or(false))
        .await
        .map_err(gql)?;
    Ok(CreateTableImportJobPayload {
        table_import_job: job.map(TableImportJob::new),
        space: Some(SpaceObj(space)),
        validation_result: validation_result(&validation),
        client_mutation_id: input.client_mutation_id,
    })
}

pub struct MutationRoot;

#[Object(name = "Mutation")]
impl MutationRoot {
    /// Validates a job and, unless `dryRun`, creates it (active; its first
    /// query is due at once).
    async fn create_table_import_job(
        &self,
        ctx: &Context<'_>,
        input: CreateTableImportJobInput,
    ) -> Result<CreateTableImportJobPayload> {
        create(ctx, input, false).await
    }

    /// A job that queries only the windows asked for
    /// (`createTriggeredOngoingTableRun`), never on a schedule.
    async fn create_triggered_ongoing_table_import_job(
        &self,
        ctx: &Context<'_>,
        input: CreateTableImportJobInput,
    ) -> Result<CreateTableImportJobPayload> {
        create(ctx, input, true).await
    }

    /// A query of the window [queryStart, queryEnd) (its rows are replaced).
    async fn create_triggered_ongoing_table_run(
        &self,
        ctx: &Context<'_>,
        input: CreateTriggeredOngoingTableRunInput,
    ) -> Result<CreateTriggeredOngoingTableRunPayload> {
        let id = allowed_job(ctx, &input.job_id).await?.id.to_string();
        let q = control(ctx)
            .run_job(
                &holder(ctx).organization,
                &id,
                Some((input.query_start, input.query_end)),
                None,
            )
            .await
            .map_err(gql)?;
        Ok(CreateTriggeredOngoingTableRunPayload {
            query_id: q.id.to_string(),
            client_mutation_id: input.client_mutation_id,
        })
    }

    async fn pause_table_import_job(
        &self,
        ctx: &Context<'_>,
        input: JobIdInput,
    ) -> Result<TableImportJobPayload> {
        status(ctx, input, JobStatus::Paused).await
    }

    async fn start_table_import_job(
        &self,
        ctx: &Context<'_>,
        input: JobIdInput,
    ) -> Result<TableImportJobPayload> {
        status(ctx, input, JobStatus::Active).await
    }

    async fn delete_table_import_job(
        &self,
        ctx: &Context<'_>,
        input: JobIdInput,
    ) -> Result<TableImportJobPayload> {
        status(ctx, input, JobStatus::Deleted).await
    }

    async fn update_table_ingestion_parameters(
        &self,
        ctx: &Context<'_>,
        input: UpdateTableIngestionParametersInput,
    ) -> Result<TableImportJobPayload> {
        let c = control(ctx);
        let org = &holder(ctx).organization;
        let job = allowed_job(ctx, &input.job_id).await?;
        let id = job.id.to_string();
        let params = input
            .table_ingestion_parameters
            .params(&job.spec.ingestion)?;
        let change = JobChange {
            ingestion: Some(params),
            ..JobChange::default()
        };
        let (job, _) = c.update_job(org, &id, change).await.map_err(gql)?;
        Ok(TableImportJobPayload {
            table_import_job: TableImportJob::new(job),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Changes a job's status, model version, schema and ingestion
    /// parameters; a new schema is validated against the table first.
    async fn update_table_import_job(
        &self,
        ctx: &Context<'_>,
        input: UpdateTableImportJobInput,
    ) -> Result<TableImportJobPayload> {
        let c = control(ctx);
        let org = &holder(ctx).organization;
        let job = allowed_job(ctx, &input.job_id).await?;
        let id = job.id.to_string();
        let mut labels = job.spec.labels.clone();
        if let Some(v) = &input.model_version {
            labels.insert("modelVersion".into(), v.clone().into());
        }
        let change = JobChange {
            mapping: input.schema.map(SchemaInput::mapping).transpose()?,
            ingestion: input
                .table_ingestion_parameters
                .map(|p| p.params(&job.spec.ingestion))
                .transpose()?,
            labels: Some(labels),
            ..JobChange::default()
        };
        let (mut job, v) = c.update_job(org, &id, change).await.map_err(gql)?;
        if let Some(d) = v.blocking().next() {
            return Err(bad(format!(
                "the new schema does not validate: {}",
                d.message
            )));
        }
        if let Some(s) = input.job_status {
            let status = match s {
                JobStatusEnum::Active => JobStatus::Active,
                JobStatusEnum::Inactive => JobStatus::Paused,
                JobStatusEnum::Deleted => JobStatus::Deleted,
            };
            job = c.set_job_status(org, &id, status).await.map_err(gql)?;
        }
        Ok(TableImportJobPayload {
            table_import_job: TableImportJob::new(job),
            client_mutation_id: input.client_mutation_id,
        })
    }
}

/// The job `id` names, when the caller's key may act on it (its
/// organization, and its space for a key of one space).
async fn allowed_job(ctx: &Context<'_>, id: &ID) -> Result<ImportJob> {
    control(ctx)
        .job_for_key(holder(ctx), &job_id(id))
        .await
        .map_err(gql)
}

async fn status(
    ctx: &Context<'_>,
    input: JobIdInput,
    status: JobStatus,
) -> Result<TableImportJobPayload> {
    let id = allowed_job(ctx, &input.job_id).await?.id.to_string();
    let job = control(ctx)
        .set_job_status(&holder(ctx).organization, &id, status)
        .await
        .map_err(gql)?;
    Ok(TableImportJobPayload {
        table_import_job: TableImportJob::new(job),
        client_mutation_id: input.client_mutation_id,
    })
}
