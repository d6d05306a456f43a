//! sluice's domain: the words every other crate speaks.
//!
//! - [`ids`]: the identifiers of organizations, users, deployments, versions,
//!   runs and triggers, in the formats the APIs sluice is compatible with use.
//! - [`run`]: the ONE run state machine. Every other crate asks
//!   [`run::RunStatus::transition`] before it moves a run; nothing else decides.
//! - [`model`]: the records the store keeps and the faces show.
//! - [`datalake`]: channels, their files, and the triggers that turn a
//!   file's arrival into a run.
//! - [`import`]: table import jobs, their queries (runs) and tasks, and
//!   Arize's column mapping.
//! - [`space`]: spaces, their models, API keys (the Arize-style importer's GraphQL face).
//! - [`action`]: the Tailer-style action API's configurations (their task
//!   DAG, template variables, job ids) and run statuses.
//! - [`time`]: the one timestamp format of the wire.
//!
//! This crate is pure: no I/O, no async, no SQL, no HTTP.

pub mod action;
pub mod api_source;
pub mod datalake;
pub mod ids;
pub mod import;
pub mod model;
pub mod run;
pub mod space;
pub mod time;

pub use datalake::*;
pub use ids::{
    ApiKeyId, ChannelId, DeploymentId, FileId, IdError, JobId, ModelId, OrganizationId, QueryId,
    RunId, SpaceId, TriggerId, UserId, VersionId,
};
pub use import::*;
pub use model::*;
pub use run::{AttemptEnd, RetryPolicy, RunStatus, TransitionError};
pub use space::{ApiKey, Model, Space, MODEL_TYPES};

/// Input that breaks one of sluice's rules, with a message that says what
/// and where: what every check a face passes its input through answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(message: String) -> Invalid {
        Invalid(message)
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Invalid {
        Invalid(message.to_owned())
    }
}

/// The message, to read and match on.
impl std::ops::Deref for Invalid {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for Invalid {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<Invalid> for String {
    fn from(e: Invalid) -> String {
        e.0
    }
}
