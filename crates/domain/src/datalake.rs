//! Datalake channels, their files, and triggers.
//!
//! A file's arrival is recorded as a [`TriggerEvent`] for every trigger
//! watching its channel, in the same transaction that stores the file. The
//! dispatcher turns each event into exactly one run; the event then names
//! that run. A trigger deleted before its event is dispatched leaves the
//! event SKIPPED: deleting a trigger stops new runs at once.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::ids::*;
use crate::model::Environment;
use crate::time::Timestamp;

/// The prefix of the metadata keys a file carries (`x-abeja-meta-filename`).
pub const META_PREFIX: &str = "x-abeja-meta-";

/// The key of a run's `input_data` that names a datalake file.
pub const DATALAKE_INPUT: &str = "$datalake:1";

#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub id: ChannelId,
    pub organization_id: OrganizationId,
    pub name: String,
    pub description: String,
    /// `datalake` or `file`, as the client says; both behave alike here.
    pub storage_type: String,
    pub archived: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A file stored in a channel. Its bytes live in object storage under `object`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatalakeFile {
    /// Store order: keyset pagination walks this.
    pub seq: i64,
    pub channel_id: ChannelId,
    pub file_id: FileId,
    pub organization_id: OrganizationId,
    pub content_type: String,
    /// `x-abeja-meta-*` keys (lowercase) to values, decoded.
    pub metadata: BTreeMap<String, String>,
    pub size: i64,
    pub object: String,
    /// `1day`, `1week`, `1month`, `6months` or `1year`, when asked for.
    pub lifetime: Option<String>,
    /// The run whose output this file is, for files a run wrote.
    pub source_run_id: Option<RunId>,
    pub uploaded_at: Timestamp,
}

impl DatalakeFile {
    /// `<channel>/<file>`, as a run's `input_data` names it.
    pub fn path(&self) -> String {
        format!("{}/{}", self.channel_id, self.file_id)
    }
}

/// Parses `<channel>/<file>` as a run's `input_data` names a datalake file.
pub fn parse_datalake_path(path: &str) -> Result<(ChannelId, FileId), IdError> {
    let (channel, file) = path.split_once('/').ok_or_else(|| IdError {
        kind: "datalake file",
        value: path.to_owned(),
        expected: "`<channel id>/<file id>`",
    })?;
    Ok((ChannelId::parse(channel)?, FileId::parse(file)?))
}

/// A trigger: each file arriving in `input_channel_id` after the trigger
/// was created starts one run of `version_id`; what the run returns goes
/// to `output_channel_id` when one is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub id: TriggerId,
    pub organization_id: OrganizationId,
    pub deployment_id: DeploymentId,
    pub version_id: VersionId,
    pub input_channel_id: ChannelId,
    pub output_channel_id: Option<ChannelId>,
    pub models: Value,
    pub environment: Environment,
    pub retry_count: i32,
    pub distribution: Option<i64>,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    /// Set when deleted: the trigger starts nothing more, its runs stay.
    pub deleted_at: Option<Timestamp>,
}

/// What became of one (trigger, file) arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// Recorded, not yet turned into a run.
    Pending,
    /// Its run exists (`run_id`).
    Dispatched,
    /// Its trigger was deleted first, or its run could not be made (`note`).
    Skipped,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "PENDING",
            EventState::Dispatched => "DISPATCHED",
            EventState::Skipped => "SKIPPED",
        }
    }

    pub fn parse(s: &str) -> Option<EventState> {
        Some(match s {
            "PENDING" => EventState::Pending,
            "DISPATCHED" => EventState::Dispatched,
            "SKIPPED" => EventState::Skipped,
            _ => return None,
        })
    }
}

/// The durable record that a file arrived for a trigger: the outbox the
/// dispatcher drains, and the answer to "which run did this file start?".
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerEvent {
    pub seq: i64,
    pub trigger_id: TriggerId,
    pub organization_id: OrganizationId,
    pub channel_id: ChannelId,
    pub file_id: FileId,
    pub state: EventState,
    pub run_id: Option<RunId>,
    pub note: Option<String>,
    pub created_at: Timestamp,
    pub dispatched_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datalake_paths_name_a_channel_and_a_file() {
        let (c, f) = parse_datalake_path(
            "2222222222222/20190101T000000-e8286a2a-100a-4a40-a7de-5c9a5794b76c",
        )
        .unwrap();
        assert_eq!(c.as_str(), "2222222222222");
        assert!(f.as_str().starts_with("20190101T000000-"));
        assert!(parse_datalake_path("2222222222222").is_err());
        assert!(
            parse_datalake_path("22/20190101T000000-e8286a2a-100a-4a40-a7de-5c9a5794b76c").is_err()
        );
        assert!(parse_datalake_path("2222222222222/x").is_err());
    }

    #[test]
    fn event_states_round_trip() {
        for s in [
            EventState::Pending,
            EventState::Dispatched,
            EventState::Skipped,
        ] {
            assert_eq!(EventState::parse(s.as_str()), Some(s));
        }
        assert_eq!(EventState::parse("DONE"), None);
    }
}
