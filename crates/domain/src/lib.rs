//! sluice's domain: the words every other crate speaks.
//!
//! - [`ids`]: the identifiers of organizations, users, deployments, versions,
//!   runs and triggers, in the formats the seed APIs use.
//! - [`run`]: the ONE run state machine. Every other crate asks
//!   [`run::RunStatus::transition`] before it moves a run; nothing else decides.
//! - [`model`]: the records the store keeps and the faces show.
//! - [`datalake`]: channels, their files, and the triggers that turn a
//!   file's arrival into a run.
//! - [`time`]: the one timestamp format of the wire.
//!
//! This crate is pure: no I/O, no async, no SQL, no HTTP.

pub mod datalake;
pub mod ids;
pub mod model;
pub mod run;
pub mod time;

pub use datalake::*;
pub use ids::{
    ChannelId, DeploymentId, FileId, IdError, OrganizationId, RunId, TriggerId, UserId, VersionId,
};
pub use model::*;
pub use run::{AttemptEnd, RetryPolicy, RunStatus, TransitionError};
