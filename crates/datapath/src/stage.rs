//! Staging: where a run's extracted batches are written, as delimited
//! files, with a manifest beside them.
//!
//! Every batch is PostgreSQL's text COPY format — one row a line, fields
//! separated by tabs, `\N` for NULL, backslash escapes — whatever the
//! source, and the manifest (`manifest.json`) lists the batches, their
//! rows and bytes, and the columns with their destination types. The
//! engine gives the data path a [`Stage`] over its object storage (a local
//! folder, or any S3-compatible store).

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

/// Object storage for one run's batches.
pub trait Stage: Send + Sync {
    /// Writes `bytes` as `name` under this run's prefix; answers where.
    fn put(&self, name: String, bytes: Vec<u8>) -> BoxFuture<'_, std::io::Result<String>>;
}

/// A [`Stage`] an [`ImportSpec`](crate::ImportSpec) can carry.
#[derive(Clone)]
pub struct StageHandle(pub Arc<dyn Stage>);

impl fmt::Debug for StageHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StageHandle")
    }
}

/// One staged batch, as the manifest lists it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Staged {
    pub object: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The manifest of a run's batches.
pub(crate) fn manifest(
    source: &str,
    target: &str,
    columns: &[(String, String)],
    batches: &[Staged],
) -> Vec<u8> {
    let doc = serde_json::json!({
        "format": "postgresql-text-copy",
        "source": source,
        "target": target,
        "columns": columns.iter().map(|(n, t)| serde_json::json!({"name": n, "type": t})).collect::<Vec<_>>(),
        "batches": batches.iter().map(|b| serde_json::json!({
            "object": b.object, "rows": b.rows, "bytes": b.bytes
        })).collect::<Vec<_>>(),
        "rows": batches.iter().map(|b| b.rows).sum::<u64>(),
    });
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

/// The name of batch `n` (1-based).
pub(crate) fn batch_name(n: u64) -> String {
    format!("batch-{n:06}.tsv")
}
