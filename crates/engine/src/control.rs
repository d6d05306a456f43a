//! The use cases: what a face may ask of sluice. Each face (REST, CLI, …)
//! parses its wire format, calls one function here and maps the result; the
//! rules (who may act on what, what a valid run is, how logs page) live here
//! and below, never in a face.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use sluice_domain::time::{self, Timestamp};
use sluice_domain::*;
use sluice_store::{LogQuery, MetadataStore, StoreError};

use crate::auth::{self, Credential, Keys, Principal};
use crate::blob::Blobs;
use crate::code;
use crate::Wakers;

mod actions;
mod api_sources;
mod console;
mod datalake;
pub use actions::{
    next_time, schedule_of, ConfigurationFiles, ConfigurationRef, WorkflowState,
    EMBEDDED as EMBEDDED_WAREHOUSE,
};
pub(crate) use datalake::{datalake_inputs, InputError};
mod imports;
pub mod input;
mod sources;
mod spaces;

pub use api_sources::{
    duration_secs, ApiRunDetail, ApiRunView, ApiRunsPage, ApiRunsQuery, Durations, RunMessage,
};
pub use console::SESSION_SECS;
pub use datalake::{
    EventsPage, FilesPage, ListFiles, NewChannel, NewTriggerRequest, TriggerView, Upload,
};
pub use imports::{JobChange, NewJob, Validation};
pub use sources::SourcePolicy;
pub use spaces::KeyHolder;

/// What went wrong, in the terms a face maps to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Internal(String),
    /// This server cannot serve now (its store does not answer).
    #[error("{0}")]
    Unavailable(String),
    /// The metadata store failed (its error, with its cause, kept).
    #[error("{0}")]
    Store(#[source] StoreError),
    /// A file could not be read or written.
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
}

impl ControlError {
    /// Whether the server, not the caller, is at fault (a 500): its
    /// message stays in the server's log.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            ControlError::Internal(_) | ControlError::Store(_) | ControlError::Io(_)
        )
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ControlError::NotFound(format!("{what} not found")),
            StoreError::Conflict(m) => ControlError::Conflict(m),
            StoreError::LeaseLost(_) | StoreError::Transition(_) => {
                ControlError::Conflict(e.to_string())
            }
            other => ControlError::Store(other),
        }
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

/// Limits and sizes the control service applies.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Runs per page of a run list.
    pub page_size: u32,
    /// Log events per page.
    pub log_page_size: u32,
    /// How many queues `distribution` values are spread over, per deployment.
    pub queues: u32,
    pub max_upload_bytes: usize,
    /// The largest file a datalake channel accepts.
    pub max_file_bytes: usize,
    pub upload_url_ttl_secs: i64,
    pub token_ttl_secs: i64,
    /// The folder of the embedded warehouse (`<data_dir>/warehouse`): each
    /// organization's jobs that name no destination load into its own file
    /// there, `<org id>.db`, so no name can reach another organization's
    /// tables. None: no embedded warehouse.
    pub warehouse: Option<std::path::PathBuf>,
    /// Where jobs may read.
    pub sources: SourcePolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            page_size: 100,
            log_page_size: 100,
            queues: 8,
            max_upload_bytes: 256 << 20,
            max_file_bytes: 256 << 20,
            upload_url_ttl_secs: 3600,
            token_ttl_secs: 30 * 24 * 3600,
            warehouse: None,
            sources: SourcePolicy::default(),
        }
    }
}

pub struct Control {
    store: Arc<dyn MetadataStore>,
    blobs: Blobs,
    keys: Keys,
    sealer: crate::secrets::Sealer,
    settings: Settings,
    wakers: Arc<Wakers>,
}

/// A deployment as a client creates or changes it.
#[derive(Debug, Default, Clone)]
pub struct DeploymentChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub default_environment: Option<Value>,
}

#[derive(Debug, Default, Clone)]
pub struct NewVersionRequest {
    pub version: String,
    pub handler: String,
    pub image: String,
    pub user_parameters: Option<Value>,
}

/// How a run (or each run of a trigger) is run, as a request asks, checked.
pub(crate) struct RunOptions {
    pub retry_count: i32,
    pub distribution: Option<i64>,
    /// Alias → model id (`{}` when none).
    pub models: Value,
}

impl RunOptions {
    pub(crate) fn check(
        retry_count: Option<i64>,
        distribution: Option<i64>,
        models: Option<Value>,
    ) -> Result<RunOptions> {
        let retry_count = RetryPolicy::validate_retry_count(
            retry_count.unwrap_or(RetryPolicy::DEFAULT_RETRY_COUNT as i64),
        )
        .map_err(bad)?;
        if let Some(n) = distribution.filter(|n| *n < 0) {
            return Err(bad(format!("distribution must be 0 or more, got {n}")));
        }
        let models = models
            .filter(|m| !m.is_null())
            .unwrap_or_else(|| Value::Object(Default::default()));
        if !models.is_object() {
            return Err(bad("models must be an object of alias: model id"));
        }
        Ok(RunOptions {
            retry_count,
            distribution,
            models,
        })
    }
}

/// A run as a client submits it.
#[derive(Debug, Default, Clone)]
pub struct SubmitRun {
    pub version_id: String,
    pub input_data: Option<Value>,
    pub models: Option<Value>,
    pub output_template: Option<Value>,
    pub environment: Option<Value>,
    pub retry_count: Option<i64>,
    pub distribution: Option<i64>,
    pub idempotency_key: Option<String>,
}

/// A run with the version text its faces show beside it.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run: Run,
    pub model_version: Option<String>,
}

pub struct RunsPage {
    pub runs: Vec<RunView>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct LogsRequest {
    pub next_token: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
}

pub struct LogsPage {
    pub events: Vec<LogEvent>,
    pub next_token: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct RecentLogsRequest {
    pub next_forward_token: Option<String>,
    pub next_backward_token: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
}

pub struct RecentLogsPage {
    /// Newest first.
    pub events: Vec<LogEvent>,
    pub next_forward_token: String,
    pub next_backward_token: String,
}

fn bad(msg: impl Into<String>) -> ControlError {
    ControlError::BadRequest(msg.into())
}

/// An object of environment variables: names to strings (numbers and
/// booleans are accepted and kept as given).
fn environment(field: &str, value: Option<Value>) -> Result<Environment> {
    match value {
        None | Some(Value::Null) => Ok(Environment::new()),
        Some(Value::Object(map)) => {
            for (k, v) in &map {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(bad(format!("{field}: `{k}` is not a valid variable name")));
                }
                if v.is_object() || v.is_array() {
                    return Err(bad(format!(
                        "{field}.{k} must be a string, number or boolean"
                    )));
                }
            }
            Ok(map)
        }
        Some(other) => Err(bad(format!(
            "{field} must be an object of NAME: value, got {other}"
        ))),
    }
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<Timestamp>> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            time::parse(v).ok_or_else(|| {
                bad(format!(
                    "{field} `{v}` is not a time: expected YYYY-MM-DDTHH:MM:SS (UTC)"
                ))
            })
        })
        .transpose()
}

fn parse_token(field: &str, prefix: char, value: &str) -> Result<i64> {
    value
        .strip_prefix(prefix)
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            bad(format!(
                "{field} `{value}` is not a token this server gave out"
            ))
        })
}

impl Control {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        blobs: Blobs,
        keys: Keys,
        settings: Settings,
        wakers: Arc<Wakers>,
    ) -> Control {
        Control {
            store,
            blobs,
            sealer: keys.sealer(),
            keys,
            settings,
            wakers,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// An importer over this control's store and sealed connections, for
    /// a command that runs a job's query in its own process.
    pub fn importer(
        &self,
        config: &crate::EngineConfig,
        name: String,
    ) -> crate::importer::Importer {
        crate::importer::Importer::new(
            self.store.clone(),
            self.sealer.clone(),
            config,
            name,
            self.wakers.clone(),
        )
    }

    /// An API runner of this process (`sluice source run` runs its run
    /// itself).
    pub fn api_runner(
        &self,
        config: &crate::EngineConfig,
        name: String,
    ) -> crate::api_runs::ApiRunner {
        crate::api_runs::ApiRunner::new(
            self.store.clone(),
            self.sealer.clone(),
            config,
            self.settings.warehouse.clone(),
            name,
            self.wakers.clone(),
        )
    }

    /// Whether this server can serve: its metadata store answers within
    /// two seconds.
    /// The process's metrics, in Prometheus' text format.
    pub async fn metrics(&self) -> Result<String> {
        crate::metrics::METRICS
            .render(self.store.as_ref())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "metrics: the metadata store does not answer");
                ControlError::Unavailable(
                    "the metadata store does not answer (the server's log says why)".into(),
                )
            })
    }

    pub async fn ready(&self) -> Result<()> {
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // Its own words (hosts, users) stay in the server's log.
                tracing::warn!(error = %e, "readiness: the metadata store does not answer");
                Err(ControlError::Unavailable(
                    "the metadata store does not answer (the server's log says why)".into(),
                ))
            }
            Err(_) => Err(ControlError::Unavailable(
                "the metadata store did not answer within 2 s".into(),
            )),
        }
    }

    // ---- who is calling -------------------------------------------------

    /// Checks the `Authorization` header of a request.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal> {
        let header = header.ok_or_else(|| {
            ControlError::Unauthorized(
                "authentication required: send an Authorization header".into(),
            )
        })?;
        let unauthorized = |m: String| ControlError::Unauthorized(m);
        match Credential::parse(header).map_err(unauthorized)? {
            Credential::Bearer(jwt) => {
                let claims = self
                    .keys
                    .verify_jwt(&jwt, time::now().timestamp())
                    .map_err(unauthorized)?;
                let user = match self.store.get_user(&claims.user).await {
                    Ok(u) if u.organization_id == claims.organization => u,
                    Ok(_) | Err(StoreError::NotFound(_)) => {
                        return Err(unauthorized(format!(
                            "the JWT's user {} is not a user of organization {}",
                            claims.user, claims.organization
                        )))
                    }
                    Err(e) => return Err(e.into()),
                };
                if user.token_generation != claims.generation {
                    return Err(unauthorized(
                        "the JWT was revoked (`sluice auth revoke`): get a new one".into(),
                    ));
                }
                Ok(Principal {
                    organization: user.organization_id,
                    user: Some(user.id),
                })
            }
            Credential::UserToken { user, token } => {
                let invalid = || unauthorized("invalid user id or personal access token".into());
                let id = UserId::parse(&user).map_err(|_| invalid())?;
                let user = match self.store.get_user(&id).await {
                    Ok(u) => u,
                    Err(StoreError::NotFound(_)) => return Err(invalid()),
                    Err(e) => return Err(e.into()),
                };
                if user.token_hash != auth::token_hash(&token) {
                    return Err(invalid());
                }
                Ok(Principal {
                    organization: user.organization_id,
                    user: Some(user.id),
                })
            }
        }
    }

    /// The organization a path names, if the caller may act on it.
    pub fn authorize(&self, who: &Principal, org: &str) -> Result<OrganizationId> {
        let id = OrganizationId::parse(org).map_err(|e| ControlError::NotFound(e.to_string()))?;
        if id != who.organization {
            return Err(ControlError::Forbidden(format!(
                "these credentials belong to organization {} and may not act on organization {id}",
                who.organization
            )));
        }
        Ok(id)
    }

    // ---- administration (CLI) -------------------------------------------

    pub async fn create_organization(&self, name: &str) -> Result<Organization> {
        input::check_name("name", name).map_err(bad)?;
        let org = Organization {
            id: OrganizationId::generate(),
            name: name.to_owned(),
            created_at: time::now(),
        };
        self.store.create_organization(&org).await?;
        Ok(org)
    }

    /// Creates a user; answers it with its personal access token (shown once).
    pub async fn create_user(&self, org: &str, email: &str) -> Result<(User, String)> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        if !email.contains('@') {
            return Err(bad(format!("`{email}` is not an email address")));
        }
        let token = auth::new_personal_access_token();
        let user = User {
            id: UserId::generate(),
            organization_id: org,
            email: email.to_owned(),
            token_hash: auth::token_hash(&token),
            created_at: time::now(),
            token_generation: 0,
        };
        self.store.create_user(&user).await.map_err(|e| match e {
            StoreError::Conflict(_) => {
                ControlError::Conflict(format!("a user `{email}` already exists"))
            }
            e => e.into(),
        })?;
        Ok((user, token))
    }

    /// An organization, and the user of it `user` names (if it names one).
    async fn org_user(
        &self,
        org: &str,
        user: Option<&str>,
    ) -> Result<(OrganizationId, Option<User>)> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        let Some(u) = user else {
            return Ok((org, None));
        };
        let id = UserId::parse(u).map_err(|e| bad(e.to_string()))?;
        let user = self.store.get_user(&id).await?;
        if user.organization_id != org {
            return Err(bad(format!("user {id} is not in organization {org}")));
        }
        Ok((org, Some(user)))
    }

    /// A JWT for one user of an organization: the given one, else its first.
    pub async fn issue_token(&self, org: &str, user: Option<&str>) -> Result<String> {
        let user = match self.org_user(org, user).await? {
            (_, Some(user)) => user,
            (org, None) => self.store.first_user(&org).await?.ok_or_else(|| {
                bad(format!(
                    "organization {org} has no user: make one with `sluice user create --org {org} <email>`"
                ))
            })?,
        };
        Ok(self.keys.issue_jwt(
            &user.organization_id,
            &user.id,
            user.token_generation,
            time::now().timestamp(),
            self.settings.token_ttl_secs,
        ))
    }

    /// Revokes every JWT signed so far for the given users (by id), or for
    /// every user of `org`; answers the users whose tokens were revoked.
    pub async fn revoke_tokens(&self, org: &str, user: Option<&str>) -> Result<Vec<User>> {
        let users = match self.org_user(org, user).await? {
            (_, Some(user)) => vec![user],
            (org, None) => self.store.users_of(&org).await?,
        };
        for u in &users {
            self.store.revoke_tokens(&u.id).await?;
        }
        Ok(users)
    }

    /// A user, for showing who created something (`None` when gone).
    pub async fn user(&self, id: &UserId) -> Option<User> {
        self.store.get_user(id).await.ok()
    }

    // ---- deployments ----------------------------------------------------

    fn deployment_id(&self, dep: &str) -> Result<DeploymentId> {
        DeploymentId::parse(dep).map_err(|e| ControlError::NotFound(e.to_string()))
    }

    pub async fn create_deployment(
        &self,
        who: &Principal,
        org: &str,
        change: DeploymentChange,
    ) -> Result<Deployment> {
        let org = self.authorize(who, org)?;
        let name = change.name.unwrap_or_default();
        input::check_name("name", &name).map_err(bad)?;
        let now = time::now();
        let dep = Deployment {
            id: DeploymentId::generate(),
            organization_id: org,
            name,
            description: change.description.unwrap_or_default(),
            default_environment: environment("default_environment", change.default_environment)?,
            creator: who.user.clone(),
            created_at: now,
            modified_at: now,
            limits: RunLimits::default(),
        };
        self.store.create_deployment(&dep).await?;
        Ok(dep)
    }

    pub async fn get_deployment(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
    ) -> Result<Deployment> {
        let org = self.authorize(who, org)?;
        Ok(self
            .store
            .get_deployment(&org, &self.deployment_id(dep)?)
            .await?)
    }

    pub async fn list_deployments(&self, who: &Principal, org: &str) -> Result<Vec<Deployment>> {
        let org = self.authorize(who, org)?;
        Ok(self.store.list_deployments(&org).await?)
    }

    pub async fn update_deployment(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        change: DeploymentChange,
    ) -> Result<Deployment> {
        let mut d = self.get_deployment(who, org, dep).await?;
        if let Some(name) = change.name {
            input::check_name("name", &name).map_err(bad)?;
            d.name = name;
        }
        if let Some(description) = change.description {
            d.description = description;
        }
        if change.default_environment.is_some() {
            d.default_environment = environment("default_environment", change.default_environment)?;
        }
        d.modified_at = time::now();
        self.store.update_deployment(&d).await?;
        Ok(d)
    }

    /// Sets the limits of each run of a deployment (administrator): its
    /// runs get the tighter of these and the server's own.
    pub async fn set_deployment_limits(
        &self,
        org: &str,
        dep: &str,
        limits: RunLimits,
    ) -> Result<Deployment> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        let id = self.deployment_id(dep)?;
        if [limits.memory_mb, limits.cpu_seconds, limits.open_files].contains(&Some(0)) {
            return Err(bad("a limit must be 1 or more (leave it out for none)"));
        }
        let now = time::now();
        self.store
            .set_deployment_limits(&org, &id, &limits, now)
            .await?;
        Ok(self.store.get_deployment(&org, &id).await?)
    }

    pub async fn delete_deployment(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
    ) -> Result<DeploymentId> {
        let org = self.authorize(who, org)?;
        let id = self.deployment_id(dep)?;
        self.store.delete_deployment(&org, &id).await?;
        Ok(id)
    }

    // ---- versions -------------------------------------------------------

    fn version_id(&self, ver: &str) -> Result<VersionId> {
        VersionId::parse(ver).map_err(|e| ControlError::NotFound(e.to_string()))
    }

    pub async fn create_version(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        req: NewVersionRequest,
    ) -> Result<Version> {
        let d = self.get_deployment(who, org, dep).await?;
        input::check_name("version", &req.version).map_err(bad)?;
        if req.version.trim().is_empty() {
            return Err(bad("\"version\" is necessary, e.g. \"0.0.1\""));
        }
        Handler::parse(&req.handler).map_err(bad)?;
        let now = time::now();
        let ver = Version {
            id: VersionId::generate(),
            organization_id: d.organization_id,
            deployment_id: d.id,
            version: req.version,
            handler: req.handler,
            image: req.image,
            user_parameters: environment("user_parameters", req.user_parameters)?,
            archive: None,
            created_at: now,
            modified_at: now,
        };
        self.store.create_version(&ver).await.map_err(|e| match e {
            StoreError::Conflict(m) => bad(m),
            e => e.into(),
        })?;
        Ok(ver)
    }

    pub async fn get_version(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        ver: &str,
    ) -> Result<Version> {
        let org = self.authorize(who, org)?;
        Ok(self
            .store
            .get_version(&org, &self.deployment_id(dep)?, &self.version_id(ver)?)
            .await?)
    }

    pub async fn list_versions(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
    ) -> Result<Vec<Version>> {
        let d = self.get_deployment(who, org, dep).await?;
        Ok(self.store.list_versions(&d.organization_id, &d.id).await?)
    }

    pub async fn delete_version(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        ver: &str,
    ) -> Result<VersionId> {
        let org = self.authorize(who, org)?;
        let id = self.version_id(ver)?;
        self.store
            .delete_version(&org, &self.deployment_id(dep)?, &id)
            .await?;
        Ok(id)
    }

    fn presign(&self, purpose: &str, ver: &Version) -> String {
        let subject = format!("{}/{}/{}", ver.organization_id, ver.deployment_id, ver.id);
        self.keys.presign(
            purpose,
            &subject,
            time::now().timestamp() + self.settings.upload_url_ttl_secs,
        )
    }

    /// The token of a version's pre-signed upload URL.
    pub fn upload_token(&self, ver: &Version) -> String {
        self.presign("upload", ver)
    }

    /// The token of a version's pre-signed download URL.
    pub fn download_token(&self, ver: &Version) -> String {
        self.presign("download", ver)
    }

    async fn presigned_version(&self, purpose: &str, token: &str) -> Result<Version> {
        let subject = self
            .keys
            .verify_presigned(purpose, token, time::now().timestamp())
            .map_err(ControlError::Forbidden)?;
        let mut parts = subject.splitn(3, '/');
        let (Some(org), Some(dep), Some(ver)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ControlError::Forbidden("malformed signed URL".into()));
        };
        let org = OrganizationId::parse(org).map_err(|e| ControlError::Forbidden(e.to_string()))?;
        Ok(self
            .store
            .get_version(&org, &self.deployment_id(dep)?, &self.version_id(ver)?)
            .await?)
    }

    /// Stores the code archive PUT to a pre-signed upload URL: a tar.gz or a
    /// zip, checked to unpack before anything is kept.
    pub async fn accept_upload(&self, token: &str, body: &[u8]) -> Result<Version> {
        let ver = self.presigned_version("upload", token).await?;
        if body.len() > self.settings.max_upload_bytes {
            return Err(ControlError::TooLarge(format!(
                "the archive is {} bytes; the limit is {}",
                body.len(),
                self.settings.max_upload_bytes
            )));
        }
        if ver.archive.is_some() {
            return Err(ControlError::Conflict(format!(
                "version {} has its code already: an upload URL is good for one upload, and a \
                 version's code never changes; make a new version for new code",
                ver.id
            )));
        }
        let format = code::ArchiveFormat::detect(body).map_err(bad)?;
        code::check_archive(
            format,
            body,
            self.settings.max_upload_bytes.saturating_mul(8),
        )
        .map_err(bad)?;
        // A key of its own: an upload that loses a race to another changes
        // nothing the winner stored.
        let key = format!(
            "code/{}/{:016x}.{}",
            ver.id,
            rand::random::<u64>(),
            format.extension()
        );
        self.blobs.put(&key, body).await?;
        if let Err(e) = self
            .store
            .set_version_archive(&ver.id, &key, time::now())
            .await
        {
            let _ = self.blobs.delete(&key).await;
            return Err(e.into());
        }
        Ok(Version {
            archive: Some(key),
            ..ver
        })
    }

    /// The bytes behind a pre-signed download URL, with the archive's file name.
    pub async fn download(&self, token: &str) -> Result<(String, Vec<u8>)> {
        let ver = self.presigned_version("download", token).await?;
        let key = ver.archive.ok_or_else(|| {
            ControlError::NotFound(format!("version {} has no uploaded code", ver.id))
        })?;
        let name = key.rsplit('/').next().unwrap_or("source").to_owned();
        Ok((name, self.blobs.get(&key).await?))
    }

    // ---- runs -----------------------------------------------------------

    /// A deployment and the version of it a request names (`"version_id"`,
    /// necessary), read together; a version of another deployment is not
    /// found. A missing deployment is answered before a bad version id.
    pub(crate) async fn deployment_and_version(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        ver: Option<&str>,
    ) -> Result<(Deployment, Version)> {
        let checked = ver
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad("\"version_id\" is necessary"))
            .and_then(|v| VersionId::parse(v).map_err(|e| bad(e.to_string())));
        let ver_id = match checked {
            Ok(id) => id,
            Err(e) => {
                self.get_deployment(who, org, dep).await?;
                return Err(e);
            }
        };
        let org = self.authorize(who, org)?;
        let (d, ver) = self
            .store
            .get_deployment_version(&org, &self.deployment_id(dep)?, &ver_id)
            .await?;
        let ver = ver.ok_or_else(|| {
            ControlError::NotFound(format!("version {ver_id} not found in deployment {}", d.id))
        })?;
        Ok((d, ver))
    }

    pub async fn submit_run(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        req: SubmitRun,
    ) -> Result<RunView> {
        let (d, ver) = self
            .deployment_and_version(who, org, dep, Some(req.version_id.as_str()))
            .await?;
        if ver.archive.is_none() {
            return Err(bad(format!(
                "version {} has no code yet: PUT its archive to the version's upload_url first",
                ver.id
            )));
        }
        let options = RunOptions::check(req.retry_count, req.distribution, req.models)?;
        let input_data = req.input_data.unwrap_or(Value::Null);
        if !(input_data.is_null() || input_data.is_object()) {
            return Err(bad(
                "input_data must be an object such as {\"$datalake:1\": \"<channel>/<file>\"}",
            ));
        }
        match datalake_inputs(self.store.as_ref(), &d.organization_id, &input_data).await {
            Ok(_) => {}
            Err(InputError::Missing(why)) => return Err(ControlError::NotFound(why)),
            Err(InputError::Invalid(why)) => return Err(bad(why)),
            Err(InputError::Store(e)) => return Err(e.into()),
        }
        let new = NewRun {
            id: RunId::generate(),
            organization_id: d.organization_id.clone(),
            deployment_id: d.id.clone(),
            version_id: ver.id,
            trigger_id: None,
            input_data,
            models: options.models,
            output_template: req.output_template.unwrap_or(Value::Null),
            environment: environment("environment", req.environment)?,
            retry_count: options.retry_count,
            distribution: options.distribution,
            idempotency_key: req.idempotency_key,
            created_at: time::now(),
        };
        let queue = crate::queue_name(&d.id, new.distribution, self.settings.queues);
        let (run, created) = self.store.create_run(&new, queue.as_deref()).await?;
        if created {
            crate::bus::wake(&*self.store, &self.wakers, crate::bus::SCHEDULER).await;
        }
        Ok(RunView {
            run,
            model_version: Some(ver.version),
        })
    }

    fn run_id(&self, run: &str) -> Result<RunId> {
        RunId::parse(run).map_err(|e| ControlError::NotFound(e.to_string()))
    }

    /// A run of a deployment; a run of another deployment is not found here.
    async fn find_run(&self, who: &Principal, org: &str, dep: &str, run: &str) -> Result<Run> {
        let org = self.authorize(who, org)?;
        let dep = self.deployment_id(dep)?;
        let run = self.store.get_run(&org, &self.run_id(run)?).await?;
        if run.deployment_id != dep {
            return Err(ControlError::NotFound(format!(
                "run `{}` not found in deployment {dep}",
                run.id
            )));
        }
        Ok(run)
    }

    async fn views(&self, runs: Vec<Run>) -> Result<Vec<RunView>> {
        let mut versions: HashMap<VersionId, Option<String>> = HashMap::new();
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            if !versions.contains_key(&run.version_id) {
                let v = match self
                    .store
                    .get_version(&run.organization_id, &run.deployment_id, &run.version_id)
                    .await
                {
                    Ok(v) => Some(v.version),
                    Err(StoreError::NotFound(_)) => None,
                    Err(e) => return Err(e.into()),
                };
                versions.insert(run.version_id.clone(), v);
            }
            let model_version = versions[&run.version_id].clone();
            out.push(RunView { run, model_version });
        }
        Ok(out)
    }

    pub async fn get_run(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        run: &str,
    ) -> Result<RunView> {
        let run = self.find_run(who, org, dep, run).await?;
        Ok(self.views(vec![run]).await?.remove(0))
    }

    pub async fn run_attempts(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        run: &str,
    ) -> Result<Vec<RunAttempt>> {
        let run = self.find_run(who, org, dep, run).await?;
        Ok(self.store.list_attempts(&run.id).await?)
    }

    /// A page of a deployment's runs (of one trigger's, when given), newest
    /// first unless `forward`.
    pub async fn list_runs(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        trigger: Option<&TriggerId>,
        forward: bool,
        next_page_token: Option<&str>,
    ) -> Result<RunsPage> {
        let d = self.get_deployment(who, org, dep).await?;
        let after = next_page_token
            .filter(|t| !t.is_empty())
            .map(|t| parse_token("next_page_token", 'p', t))
            .transpose()?;
        let page = self
            .store
            .list_runs(
                &d.organization_id,
                &d.id,
                trigger,
                PageRequest {
                    after,
                    forward,
                    limit: self.settings.page_size,
                },
            )
            .await?;
        Ok(RunsPage {
            runs: self.views(page.items).await?,
            next_page_token: page.next.map(|n| format!("p{n}")),
        })
    }

    pub async fn cancel_run(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        run: &str,
    ) -> Result<RunView> {
        let run = self.find_run(who, org, dep, run).await?;
        let run = self
            .store
            .request_cancel(&run.organization_id, &run.id, time::now())
            .await?;
        crate::bus::wake(&*self.store, &self.wakers, crate::bus::SCHEDULER).await;
        Ok(self.views(vec![run]).await?.remove(0))
    }

    /// `/logs`: oldest first; `next_token` only while more remain.
    pub async fn logs(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        run: &str,
        req: LogsRequest,
    ) -> Result<LogsPage> {
        let run = self.find_run(who, org, dep, run).await?;
        let after = req
            .next_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| parse_token("next_token", 'n', t))
            .transpose()?;
        let limit = self.settings.log_page_size;
        let mut events = self
            .store
            .read_logs(
                &run.id,
                LogQuery {
                    after,
                    before: None,
                    descending: false,
                    start_time: parse_time("start_time", req.start_time.as_deref())?,
                    end_time: parse_time("end_time", req.end_time.as_deref())?,
                    limit: limit + 1,
                },
            )
            .await?;
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        let next_token = if more {
            events.last().map(|e| format!("n{}", e.seq))
        } else {
            None
        };
        Ok(LogsPage { events, next_token })
    }

    /// `/recentlogs`: newest first. Without a token, the newest page; with
    /// `next_backward_token`, the page before; with `next_forward_token`, the
    /// events that came after. Both tokens are always answered; a direction
    /// with nothing left answers an empty page and the same token.
    pub async fn recent_logs(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        run: &str,
        req: RecentLogsRequest,
    ) -> Result<RecentLogsPage> {
        let run = self.find_run(who, org, dep, run).await?;
        let forward = req.next_forward_token.as_deref().filter(|t| !t.is_empty());
        let backward = req.next_backward_token.as_deref().filter(|t| !t.is_empty());
        let base = LogQuery {
            after: None,
            before: None,
            descending: true,
            start_time: parse_time("start_time", req.start_time.as_deref())?,
            end_time: parse_time("end_time", req.end_time.as_deref())?,
            limit: self.settings.log_page_size,
        };
        let (query, bounds) = match (forward, backward) {
            (Some(f), _) => {
                let after = parse_token("next_forward_token", 'f', f)?;
                (
                    LogQuery {
                        after: Some(after),
                        descending: false,
                        ..base
                    },
                    (after, after + 1),
                )
            }
            (None, Some(b)) => {
                let before = parse_token("next_backward_token", 'b', b)?;
                (
                    LogQuery {
                        before: Some(before),
                        ..base
                    },
                    (before.saturating_sub(1), before),
                )
            }
            (None, None) => (base, (0, 0)),
        };
        let mut events = self.store.read_logs(&run.id, query).await?;
        if !query.descending {
            events.reverse();
        }
        let newest = events.first().map(|e| e.seq).unwrap_or(bounds.0);
        let oldest = events.last().map(|e| e.seq).unwrap_or(bounds.1);
        Ok(RecentLogsPage {
            events,
            next_forward_token: format!("f{newest}"),
            next_backward_token: format!("b{oldest}"),
        })
    }
}
