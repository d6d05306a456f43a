//! Spaces, the models of a space, and API keys: the words of the Arize-style importer's
//! GraphQL face. An organization has spaces (one of them its default);
//! table import jobs live in a space and feed a model of it, named by the
//! job (`modelName`, `modelType`). An API key (`x-api-key`) acts for its
//! organization, and for one space when it names one.

use crate::ids::*;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    pub seq: i64,
    pub id: SpaceId,
    pub organization_id: OrganizationId,
    pub name: String,
    pub description: String,
    pub private: bool,
    /// The organization's default space (made with its first need).
    pub is_default: bool,
    pub created_at: Timestamp,
}

impl Space {
    /// How a job names this space: jobs of the default space name none
    /// (the CLI's jobs, which name no space, live there).
    pub fn job_key(&self) -> String {
        if self.is_default {
            String::new()
        } else {
            self.id.to_string()
        }
    }
}

/// A model a job feeds: made when the first job names it in its space.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub seq: i64,
    pub id: ModelId,
    pub organization_id: OrganizationId,
    pub space_id: SpaceId,
    pub name: String,
    /// `score_categorical`, `numeric`, `ranking`, `multi_class`,
    /// `object_detection` or `generative_llm`.
    pub model_type: String,
    pub created_at: Timestamp,
}

/// The model types of the Arize-style table importer.
pub const MODEL_TYPES: [&str; 6] = [
    "score_categorical",
    "numeric",
    "ranking",
    "multi_class",
    "object_detection",
    "generative_llm",
];

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub organization_id: OrganizationId,
    /// The one space the key may act on; None: every space of its organization.
    pub space_id: Option<SpaceId>,
    /// SHA-256 of the key (the key itself is shown once).
    pub key_hash: String,
    pub created_at: Timestamp,
}
