//! The schema's objects: each reads through `engine::control`.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ErrorExtensions, Interface, Object, Result, SimpleObject, ID};
use sluice_domain::time;
use sluice_domain::*;
use sluice_engine::control::{Control, ControlError, KeyHolder};
use tokio::sync::OnceCell;

use crate::ids;

/// A control error as a GraphQL error, with `extensions.code`.
pub(crate) fn gql(e: ControlError) -> async_graphql::Error {
    let code = match &e {
        ControlError::BadRequest(_) => "BAD_USER_INPUT",
        ControlError::Unauthorized(_) => "UNAUTHENTICATED",
        ControlError::Forbidden(_) => "FORBIDDEN",
        ControlError::NotFound(_) => "NOT_FOUND",
        ControlError::Conflict(_) => "CONFLICT",
        ControlError::TooLarge(_) => "BAD_USER_INPUT",
        ControlError::Unavailable(_) => "UNAVAILABLE",
        ControlError::Internal(_) | ControlError::Store(_) | ControlError::Io(_) => {
            "INTERNAL_SERVER_ERROR"
        }
    };
    let message = if e.is_internal() {
        // A database's own words stay in the server's log.
        tracing::error!(error = %e, "a GraphQL operation failed");
        "internal error (the server's log has it)".to_owned()
    } else {
        e.to_string()
    };
    async_graphql::Error::new(message).extend_with(|_, x| x.set("code", code))
}

pub(crate) fn control<'a>(ctx: &Context<'a>) -> &'a Arc<Control> {
    ctx.data_unchecked::<Arc<Control>>()
}

pub(crate) fn holder<'a>(ctx: &Context<'a>) -> &'a KeyHolder {
    ctx.data_unchecked::<KeyHolder>()
}

/// At most this many items a page.
const MAX_FIRST: i32 = 100;

/// `first`/`after` checked: the page size and the keyset key.
fn page(first: Option<i32>, after: Option<String>) -> Result<PageRequest> {
    let limit = first.unwrap_or(10);
    if !(0..=MAX_FIRST).contains(&limit) {
        return Err(gql(ControlError::BadRequest(format!(
            "`first` must be between 0 and {MAX_FIRST}, got {limit}"
        ))));
    }
    let after = match after.filter(|a| !a.is_empty()) {
        Some(a) => Some(ids::parse_cursor(&a).ok_or_else(|| {
            gql(ControlError::BadRequest(format!(
                "`after` is not a cursor of this list: {a}"
            )))
        })?),
        None => None,
    };
    Ok(PageRequest {
        after,
        forward: true,
        limit: limit as u32,
    })
}

/// Extra fields of a connection.
#[derive(SimpleObject)]
pub struct Total {
    total_count: i64,
}

type Page<T> = Connection<String, T, Total>;

fn connection<T: async_graphql::OutputType, S>(
    items: Vec<S>,
    next: Option<i64>,
    total: i64,
    seq: impl Fn(&S) -> i64,
    mut node: impl FnMut(S) -> T,
) -> Page<T> {
    let mut c =
        Connection::with_additional_fields(false, next.is_some(), Total { total_count: total });
    c.edges = items
        .into_iter()
        .map(|s| Edge::new(ids::cursor(seq(&s)), node(s)))
        .collect();
    c
}

pub struct QueryRoot;

#[Object(name = "Query")]
impl QueryRoot {
    /// The account the API key belongs to.
    async fn account(&self) -> Account {
        Account
    }

    /// Any object by its global id.
    async fn node(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Node>> {
        let Some((kind, raw)) = ids::parse(&id) else {
            return Err(gql(ControlError::BadRequest(format!(
                "`{}` is not a node id",
                id.as_str()
            ))));
        };
        let who = holder(ctx);
        let c = control(ctx);
        Ok(match kind.as_str() {
            "AccountOrganization" => {
                let org = OrganizationId::parse(&raw).ok();
                match org {
                    Some(o) if o == who.organization => {
                        let org = c.organization_of(who).await.map_err(gql)?;
                        Some(Node::AccountOrganization(AccountOrganization(org)))
                    }
                    _ => None,
                }
            }
            // Another space's or organization's: not there for this key.
            "Space" => match c.space_for(who, &raw).await {
                Ok(s) => Some(Node::Space(SpaceObj(s))),
                Err(ControlError::NotFound(_) | ControlError::Forbidden(_)) => None,
                Err(e) => return Err(gql(e)),
            },
            "Model" => c
                .model(who, &raw)
                .await
                .map_err(gql)?
                .map(|m| Node::Model(ModelObj(m))),
            "TableImportJob" => match c.job_for_key(who, &raw).await {
                Ok(j) => Some(Node::TableImportJob(TableImportJob::new(j))),
                Err(ControlError::NotFound(_) | ControlError::Forbidden(_)) => None,
                Err(e) => return Err(gql(e)),
            },
            _ => None,
        })
    }
}

#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID"))]
pub enum Node {
    AccountOrganization(AccountOrganization),
    Space(SpaceObj),
    Model(ModelObj),
    TableImportJob(TableImportJob),
}

pub struct Account;

#[Object]
impl Account {
    /// The organizations the key may act on (its own).
    async fn organizations(
        &self,
        ctx: &Context<'_>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<AccountOrganization>> {
        let p = page(first, after)?;
        let who = holder(ctx);
        let org = control(ctx).organization_of(who).await.map_err(gql)?;
        let matches = search
            .filter(|s| !s.is_empty())
            .is_none_or(|s| org.name.to_lowercase().contains(&s.to_lowercase()));
        let shown = matches && p.after.is_none() && p.limit > 0;
        let items = if shown { vec![org] } else { vec![] };
        Ok(connection(
            items,
            None,
            matches as i64,
            |_| 1,
            AccountOrganization,
        ))
    }
}

pub struct AccountOrganization(Organization);

#[Object]
impl AccountOrganization {
    async fn id(&self) -> ID {
        ID(ids::global("AccountOrganization", self.0.id.as_str()))
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn created_at(&self) -> String {
        time::format(&self.0.created_at)
    }
    async fn description(&self) -> &str {
        ""
    }
    /// The organization's spaces, its default space first.
    async fn spaces(
        &self,
        ctx: &Context<'_>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<SpaceObj>> {
        let p = page(first, after)?;
        let found = control(ctx)
            .spaces(holder(ctx), search.as_deref(), p)
            .await
            .map_err(gql)?;
        let total = found.items.len() as i64;
        Ok(connection(
            found.items,
            found.next,
            total,
            |s| s.seq,
            SpaceObj,
        ))
    }
}

pub struct SpaceObj(pub Space);

#[Object(name = "Space")]
impl SpaceObj {
    async fn id(&self) -> ID {
        ID(ids::global("Space", self.0.id.as_str()))
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn created_at(&self) -> String {
        time::format(&self.0.created_at)
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn private(&self) -> bool {
        self.0.private
    }
    async fn models(
        &self,
        ctx: &Context<'_>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<ModelObj>> {
        let p = page(first, after)?;
        let found = control(ctx)
            .models(&self.0, search.as_deref(), p)
            .await
            .map_err(gql)?;
        let total = found.items.len() as i64;
        Ok(connection(
            found.items,
            found.next,
            total,
            |m| m.seq,
            ModelObj,
        ))
    }
    /// The space's table import jobs; `search` matches a job's name or id.
    async fn table_jobs(
        &self,
        ctx: &Context<'_>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<TableImportJob>> {
        let p = page(first, after)?;
        let c = control(ctx);
        let (found, total) = c.space_jobs(&self.0, search, p).await.map_err(gql)?;
        // The page's query counts in one look, not three a job.
        let ids: Vec<JobId> = found.items.iter().map(|j| j.id.clone()).collect();
        let mut counts = c.query_counts_of(&ids).await.map_err(gql)?;
        Ok(connection(
            found.items,
            found.next,
            total,
            |j| j.seq,
            |j| {
                let n = counts.remove(&j.id).unwrap_or_default();
                TableImportJob::with_counts(j, n)
            },
        ))
    }
}

pub struct ModelObj(pub Model);

#[Object(name = "Model")]
impl ModelObj {
    async fn id(&self) -> ID {
        ID(ids::global("Model", self.0.id.as_str()))
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn model_type(&self) -> ModelType {
        ModelType::parse(&self.0.model_type)
    }
    async fn created_at(&self) -> String {
        time::format(&self.0.created_at)
    }
    async fn is_demo_model(&self) -> bool {
        false
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(rename_items = "snake_case")]
pub enum ModelType {
    ScoreCategorical,
    Numeric,
    Ranking,
    MultiClass,
    ObjectDetection,
    GenerativeLlm,
}

impl ModelType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ModelType::ScoreCategorical => "score_categorical",
            ModelType::Numeric => "numeric",
            ModelType::Ranking => "ranking",
            ModelType::MultiClass => "multi_class",
            ModelType::ObjectDetection => "object_detection",
            ModelType::GenerativeLlm => "generative_llm",
        }
    }

    fn parse(s: &str) -> ModelType {
        match s {
            "numeric" => ModelType::Numeric,
            "ranking" => ModelType::Ranking,
            "multi_class" => ModelType::MultiClass,
            "object_detection" => ModelType::ObjectDetection,
            "generative_llm" => ModelType::GenerativeLlm,
            _ => ModelType::ScoreCategorical,
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(rename_items = "lowercase")]
pub enum ModelEnvironment {
    Production,
    Validation,
    Training,
    Tracing,
}

impl ModelEnvironment {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ModelEnvironment::Production => "production",
            ModelEnvironment::Validation => "validation",
            ModelEnvironment::Training => "training",
            ModelEnvironment::Tracing => "tracing",
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(rename_items = "lowercase")]
#[graphql(name = "JobStatus")]
pub enum JobStatusEnum {
    Active,
    Inactive,
    Deleted,
}

/// Where a job's table lives: Arize's warehouses (stored; their
/// connectors are not built) and sluice's own stores, which run.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum TableStore {
    #[graphql(name = "BigQuery")]
    BigQuery,
    #[graphql(name = "Snowflake")]
    Snowflake,
    #[graphql(name = "Databricks")]
    Databricks,
    #[graphql(name = "PostgreSQL")]
    PostgreSQL,
    #[graphql(name = "MySQL")]
    MySQL,
    #[graphql(name = "SQLite")]
    SQLite,
    #[graphql(name = "Files")]
    Files,
}

/// A job, with its query counts once they are known (a list page reads
/// them for all its jobs at once).
pub struct TableImportJob(Box<ImportJob>, OnceCell<(i64, i64, i64)>);

impl TableImportJob {
    pub(crate) fn new(job: ImportJob) -> TableImportJob {
        TableImportJob(Box::new(job), OnceCell::new())
    }

    fn with_counts(job: ImportJob, counts: (i64, i64, i64)) -> TableImportJob {
        TableImportJob(Box::new(job), OnceCell::new_with(Some(counts)))
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.0.spec.labels.get(key).and_then(|v| v.as_str())
    }
}

#[derive(SimpleObject)]
pub struct TableIngestionParameters {
    refresh_interval_seconds: i64,
    query_window_size_seconds: i64,
    row_limit: Option<i64>,
}

#[derive(SimpleObject)]
pub struct EmbeddingFeature {
    feature_name: String,
    vector_col: String,
    raw_data_col: Option<String>,
    link_to_data_col: Option<String>,
}

#[derive(SimpleObject)]
pub struct ObjectDetection {
    bounding_boxes_coordinates_column_name: String,
    bounding_boxes_categories_column_name: String,
    bounding_boxes_scores_column_name: Option<String>,
}

/// A job's column mapping, as the Arize-style table importer names its fields.
pub struct TableImportSchema(Mapping);

#[Object]
impl TableImportSchema {
    async fn prediction_id(&self) -> Option<&str> {
        self.0.prediction_id.as_deref()
    }
    async fn timestamp(&self) -> Option<&str> {
        self.0.timestamp.as_deref()
    }
    async fn prediction_label(&self) -> Option<&str> {
        self.0.prediction_label.as_deref()
    }
    async fn prediction_score(&self) -> Option<&str> {
        self.0.prediction_score.as_deref()
    }
    async fn actual_label(&self) -> Option<&str> {
        self.0.actual_label.as_deref()
    }
    async fn actual_score(&self) -> Option<&str> {
        self.0.actual_score.as_deref()
    }
    async fn prediction_group_id(&self) -> Option<&str> {
        self.0.prediction_group_id.as_deref()
    }
    async fn rank(&self) -> Option<&str> {
        self.0.rank.as_deref()
    }
    async fn relevance_score(&self) -> Option<&str> {
        self.0.relevance_score.as_deref()
    }
    async fn relevance_label(&self) -> Option<&str> {
        self.0.relevance_label.as_deref()
    }
    async fn version(&self) -> Option<&str> {
        self.0.version.as_deref()
    }
    async fn batch_id(&self) -> Option<&str> {
        self.0.batch_id.as_deref()
    }
    async fn change_timestamp(&self) -> Option<&str> {
        self.0.change_timestamp.as_deref()
    }
    async fn features(&self) -> Option<&str> {
        self.0.features.as_deref()
    }
    async fn features_list(&self) -> Option<&Vec<String>> {
        self.0.features_list.as_ref()
    }
    async fn tags(&self) -> Option<&str> {
        self.0.tags.as_deref()
    }
    async fn tags_list(&self) -> Option<&Vec<String>> {
        self.0.tags_list.as_ref()
    }
    async fn shap_values(&self) -> Option<&str> {
        self.0.shap_values.as_deref()
    }
    async fn exclude(&self) -> Option<&Vec<String>> {
        self.0.exclude.as_ref()
    }
    /// Not kept by sluice's mappings yet: always null.
    async fn prediction_scores(&self) -> Option<String> {
        None
    }
    /// Not kept by sluice's mappings yet: always null.
    async fn actual_scores(&self) -> Option<String> {
        None
    }
    /// Not kept by sluice's mappings yet: always null.
    async fn threshold_scores(&self) -> Option<String> {
        None
    }
    /// Not kept by sluice's mappings yet: always null.
    async fn embedding_features(&self) -> Option<Vec<EmbeddingFeature>> {
        None
    }
    /// Not kept by sluice's mappings yet: always null.
    async fn prediction_object_detection(&self) -> Option<ObjectDetection> {
        None
    }
    /// Not kept by sluice's mappings yet: always null.
    async fn actual_object_detection(&self) -> Option<ObjectDetection> {
        None
    }
}

#[Object]
impl TableImportJob {
    async fn id(&self) -> ID {
        ID(ids::global("TableImportJob", self.0.id.as_str()))
    }
    async fn job_id(&self) -> &str {
        self.0.id.as_str()
    }
    async fn job_status(&self) -> JobStatusEnum {
        match self.0.status {
            JobStatus::Active => JobStatusEnum::Active,
            JobStatus::Paused => JobStatusEnum::Inactive,
            JobStatus::Deleted => JobStatusEnum::Deleted,
        }
    }
    async fn created_at(&self) -> String {
        time::format(&self.0.created_at)
    }
    async fn model_name(&self) -> &str {
        self.label("modelName").unwrap_or(&self.0.name)
    }
    async fn model_id(&self, ctx: &Context<'_>) -> Result<ID> {
        let m = control(ctx).job_model(&self.0).await.map_err(gql)?;
        Ok(ID(ids::global("Model", m.id.as_str())))
    }
    async fn model_version(&self) -> Option<&str> {
        self.label("modelVersion")
    }
    async fn model_type(&self) -> ModelType {
        ModelType::parse(self.label("modelType").unwrap_or("score_categorical"))
    }
    async fn model_environment_name(&self) -> ModelEnvironment {
        match self.label("modelEnvironmentName") {
            Some("validation") => ModelEnvironment::Validation,
            Some("training") => ModelEnvironment::Training,
            Some("tracing") => ModelEnvironment::Tracing,
            _ => ModelEnvironment::Production,
        }
    }
    async fn schema(&self) -> TableImportSchema {
        TableImportSchema(self.0.spec.mapping.clone())
    }
    async fn batch_id(&self) -> Option<&str> {
        self.label("batchId")
    }
    /// The source table.
    async fn table(&self) -> &str {
        &self.0.spec.table
    }
    async fn table_store(&self) -> TableStore {
        match self.0.store_name() {
            "BigQuery" => TableStore::BigQuery,
            "Snowflake" => TableStore::Snowflake,
            "Databricks" => TableStore::Databricks,
            "PostgreSQL" => TableStore::PostgreSQL,
            "MySQL" => TableStore::MySQL,
            "SQLite" => TableStore::SQLite,
            _ => TableStore::Files,
        }
    }
    /// BigQuery's project (empty for other stores).
    async fn project_id(&self) -> &str {
        self.label("projectId").unwrap_or("")
    }
    /// BigQuery's dataset (empty for other stores).
    async fn dataset(&self) -> &str {
        self.label("dataset").unwrap_or("")
    }
    async fn total_queries_success_count(&self, ctx: &Context<'_>) -> Result<i64> {
        Ok(self.counts(ctx).await?.0)
    }
    async fn total_queries_failed_count(&self, ctx: &Context<'_>) -> Result<i64> {
        Ok(self.counts(ctx).await?.1)
    }
    async fn total_queries_pending_count(&self, ctx: &Context<'_>) -> Result<i64> {
        Ok(self.counts(ctx).await?.2)
    }
    async fn table_ingestion_parameters(&self) -> TableIngestionParameters {
        let p = &self.0.spec.ingestion;
        TableIngestionParameters {
            refresh_interval_seconds: p.refresh().as_secs() as i64,
            query_window_size_seconds: (p.query_window_size_hours.unwrap_or(0.0) * 3600.0) as i64,
            row_limit: p.row_limit.map(|n| n as i64),
        }
    }
    /// The job's queries (its runs), newest first.
    async fn queries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<TableImportJobQuery>> {
        let mut p = page(first, after)?;
        p.forward = false;
        let c = control(ctx);
        let found = c
            .list_queries(&self.0.organization_id, self.0.id.as_str(), p)
            .await
            .map_err(gql)?;
        let (ok, failed, pending) = c.query_counts(&self.0.id).await.map_err(gql)?;
        Ok(connection(
            found.items,
            found.next,
            ok + failed + pending,
            |q| q.seq,
            TableImportJobQuery,
        ))
    }
}

impl TableImportJob {
    /// (succeeded, failed, not yet ended) queries: read once per job.
    async fn counts(&self, ctx: &Context<'_>) -> Result<(i64, i64, i64)> {
        self.1
            .get_or_try_init(|| async { control(ctx).query_counts(&self.0.id).await })
            .await
            .copied()
            .map_err(gql)
    }
}

/// One query (run) of a job.
pub struct TableImportJobQuery(Query);

#[Object]
impl TableImportJobQuery {
    async fn query_id(&self) -> &str {
        self.0.id.as_str()
    }
    async fn created_at(&self) -> String {
        time::format(&self.0.created_at)
    }
    async fn records_processed_count(&self) -> i64 {
        self.0.records
    }
    async fn window_start_timestamp(&self) -> Option<&str> {
        self.0
            .window_start
            .as_deref()
            .or(self.0.requested.as_ref().map(|r| r.0.as_str()))
    }
    async fn window_end_timestamp(&self) -> Option<&str> {
        self.0
            .window_end
            .as_deref()
            .or(self.0.requested.as_ref().map(|r| r.1.as_str()))
    }
    /// The run status (SUCCEEDED, FAILED, RUNNING, …).
    async fn status(&self) -> &str {
        self.0.status.as_str()
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}
