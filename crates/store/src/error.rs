//! The store's errors, and the one place database errors are mapped.

use sluice_domain::{IdError, TransitionError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A worker's write with a fencing token that is no longer the run's.
    #[error("the lease on {0} is no longer held by this worker")]
    LeaseLost(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL `{0}`: expected sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    /// A command that must not create a store found none.
    #[error("{0}")]
    NoStore(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            // 23505 (PostgreSQL) and 2067/1555 (SQLite): a unique key is taken.
            if db.is_unique_violation() {
                return StoreError::Conflict(db.message().to_owned());
            }
        }
        StoreError::Database(e)
    }
}

impl From<IdError> for StoreError {
    fn from(e: IdError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
