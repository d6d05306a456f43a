//! The records sluice keeps: organizations and users, deployments and their
//! code versions, runs, their attempts and their log events.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::*;
use crate::run::RunStatus;
use crate::time::Timestamp;

/// A flat map of environment variable names to values, as JSON.
pub type Environment = Map<String, Value>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    pub id: OrganizationId,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: UserId,
    pub organization_id: OrganizationId,
    pub email: String,
    /// SHA-256 of the personal access token, hex; the token itself is never kept.
    pub token_hash: String,
    pub created_at: Timestamp,
    /// Tokens signed in an older generation are revoked.
    pub token_generation: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub id: DeploymentId,
    pub organization_id: OrganizationId,
    pub name: String,
    pub description: String,
    pub default_environment: Environment,
    pub creator: Option<UserId>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    /// Limits of each of its runs, set by an administrator; the server's
    /// own limits still apply (the tighter of the two wins).
    pub limits: RunLimits,
}

/// Resource limits of a run's process; `None`: no limit of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
}

impl RunLimits {
    /// Each limit the tighter of the two.
    pub fn tighter(self, other: RunLimits) -> RunLimits {
        fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        RunLimits {
            memory_mb: min(self.memory_mb, other.memory_mb),
            cpu_seconds: min(self.cpu_seconds, other.cpu_seconds),
            open_files: min(self.open_files, other.open_files),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub id: VersionId,
    pub organization_id: OrganizationId,
    pub deployment_id: DeploymentId,
    pub version: String,
    pub handler: String,
    pub image: String,
    pub user_parameters: Environment,
    /// Where the uploaded code archive lives in object storage, once uploaded.
    pub archive: Option<String>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
}

/// A handler as `module:function` (`main:handler`, `pkg.sub:run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub module: String,
    pub function: String,
}

impl Handler {
    pub fn parse(s: &str) -> Result<Handler, crate::Invalid> {
        let ident = |p: &str| {
            !p.is_empty()
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        match s.split_once(':') {
            Some((module, function)) if module.split('.').all(ident) && ident(function) => {
                Ok(Handler {
                    module: module.to_owned(),
                    function: function.to_owned(),
                })
            }
            _ => {
                Err(format!("handler `{s}` must be `module:function`, e.g. `main:handler`").into())
            }
        }
    }
}

/// What a client asks for when it submits a run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: RunId,
    pub organization_id: OrganizationId,
    pub deployment_id: DeploymentId,
    pub version_id: VersionId,
    pub trigger_id: Option<TriggerId>,
    pub input_data: Value,
    pub models: Value,
    pub output_template: Value,
    pub environment: Environment,
    pub retry_count: i32,
    pub distribution: Option<i64>,
    /// The client's idempotency key: a second submit with the same key
    /// answers the first run instead of creating another.
    pub idempotency_key: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Store order: keyset pagination walks this.
    pub seq: i64,
    pub id: RunId,
    pub organization_id: OrganizationId,
    pub deployment_id: DeploymentId,
    pub version_id: VersionId,
    pub trigger_id: Option<TriggerId>,
    pub status: RunStatus,
    pub input_data: Value,
    pub models: Value,
    pub output_template: Value,
    pub environment: Environment,
    pub retry_count: i32,
    pub distribution: Option<i64>,
    /// Attempts started so far.
    pub attempt: i32,
    /// The fencing token of the current lease: only the holder of this value
    /// may write to the run.
    pub lease_token: i64,
    pub lease_owner: Option<String>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// One try of a run on one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RunAttempt {
    pub run_id: RunId,
    pub attempt: i32,
    pub worker: String,
    /// When the worker claimed the run (STARTING).
    pub started_at: Timestamp,
    /// When the code's process was running (RUNNING).
    pub running_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// `RUNNING` while it runs; then SUCCEEDED, FAILED, CANCELLED or LOST
    /// (its worker stopped heart-beating).
    pub outcome: String,
    pub error: Option<String>,
}

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    pub seq: i64,
    pub timestamp: Timestamp,
    pub message: String,
}

/// A worker's hold on a run: the run, its attempt and the fencing token that
/// every later write must present.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub run: Run,
    pub attempt: i32,
    pub token: i64,
}

/// How an attempt ended, as its worker saw it. (A run being cancelled ends
/// CANCELLED when its stopped code reports a failure.)
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Succeeded,
    Failed {
        error: String,
    },
    /// The run's input cannot be used; the run fails without a retry.
    Invalid {
        error: String,
    },
    /// The worker shut down first: the run goes back to the queue.
    HandedBack {
        why: String,
    },
}

/// A page of a keyset-ordered list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Continue after this `seq` (exclusive), in the page's direction.
    pub after: Option<i64>,
    /// Oldest first when true; newest first otherwise.
    pub forward: bool,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The key to continue from, when there may be more.
    pub next: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_are_module_colon_function() {
        assert_eq!(
            Handler::parse("main:handler").unwrap(),
            Handler {
                module: "main".into(),
                function: "handler".into()
            }
        );
        Handler::parse("pkg.sub_mod:run2").unwrap();
        for bad in [
            "main",
            "main:",
            ":handler",
            "ma-in:handler",
            "main:handler()",
            "1x:y",
            "a..b:c",
        ] {
            let err = Handler::parse(bad).unwrap_err();
            assert!(err.contains("module:function"), "{bad}: {err}");
        }
    }
}
