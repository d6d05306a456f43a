//! Staging: where a run's extracted batches are written, with a manifest
//! beside them, while they load.
//!
//! Between two PostgreSQL databases a batch is staged as it was read:
//! PostgreSQL's binary COPY data (`batch-000001.pgcopy`, …; the batches
//! in order are one `COPY … FROM STDIN (FORMAT binary)` stream, the first
//! holding its header, the last its trailer) — compact, and never encoded
//! twice. From other sources a batch is PostgreSQL's text COPY format
//! (`batch-000001.tsv`: one row a line, fields separated by tabs, `\N` for
//! NULL, backslash escapes), loadable one by one. The manifest
//! (`manifest.json`) names the format and lists the batches, their rows
//! and bytes, and the columns with their destination types. The engine
//! gives the data path a [`Stage`] over its object storage (a local
//! folder, or any S3-compatible store). Batches are written by a task of
//! their own beside the load, so staging does not slow it down.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::source::ReadAs;
use crate::{ImportError, Result};

/// Object storage for one run's batches.
pub trait Stage: Send + Sync {
    /// Writes `bytes` as `name` under this run's prefix; answers where.
    /// The bytes are the batch the load sends (shared, not copied).
    fn put(&self, name: String, bytes: Bytes) -> BoxFuture<'_, std::io::Result<String>>;
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
    /// The part of a load in parts that read it (each part's batches are
    /// a stream of their own); None for a one-stream load.
    pub part: Option<usize>,
}

/// How a run's batches are staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    BinaryCopy,
    TextCopy,
}

impl Format {
    /// The format of batches read as `read`.
    pub fn of(read: ReadAs) -> Format {
        match read {
            ReadAs::BinaryCopy => Format::BinaryCopy,
            ReadAs::Values => Format::TextCopy,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::BinaryCopy => "postgresql-binary-copy",
            Format::TextCopy => "postgresql-text-copy",
        }
    }

    /// The name of batch `n` (1-based), of part `part` (1-based) when
    /// the load is in parts.
    fn batch_name(self, part: Option<usize>, n: u64) -> String {
        let ext = match self {
            Format::BinaryCopy => "pgcopy",
            Format::TextCopy => "tsv",
        };
        match part {
            Some(p) => format!("part-{p:02}/batch-{n:06}.{ext}"),
            None => format!("batch-{n:06}.{ext}"),
        }
    }
}

/// A stage and the batches written to it.
type Written = (StageHandle, Vec<Staged>);

/// Writes a run's batches to its stage from a task of its own, in order,
/// while the load goes on; at most [`Stager::AHEAD`] batches wait for it
/// (then the load waits: memory stays bounded).
pub(crate) struct Stager {
    format: Format,
    part: Option<usize>,
    next: u64,
    tx: Option<mpsc::Sender<(String, Bytes, u64)>>,
    task: Option<JoinHandle<std::io::Result<Written>>>,
}

impl Stager {
    const AHEAD: usize = 4;

    /// A stager for a one-stream load (`part` None) or for one part of a
    /// load in parts (1-based), whose batches go under `part-NN/`.
    pub fn start(stage: StageHandle, format: Format, part: Option<usize>) -> Stager {
        let (tx, mut rx) = mpsc::channel::<(String, Bytes, u64)>(Self::AHEAD);
        let task = tokio::spawn(async move {
            let mut staged = Vec::new();
            while let Some((name, bytes, rows)) = rx.recv().await {
                let size = bytes.len() as u64;
                let object = stage.0.put(name, bytes).await?;
                staged.push(Staged {
                    object,
                    rows,
                    bytes: size,
                    part,
                });
            }
            Ok((stage, staged))
        });
        Stager {
            format,
            part,
            next: 1,
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// Queues the next batch; answers its name. A stage that failed fails
    /// the load here (or at [`Stager::finish`]).
    pub async fn put(&mut self, bytes: Bytes, rows: u64) -> Result<String> {
        let name = self.format.batch_name(self.part, self.next);
        self.next += 1;
        let sent = match &self.tx {
            Some(tx) => tx.send((name.clone(), bytes, rows)).await.is_ok(),
            None => false,
        };
        if !sent {
            // The task ended early: it failed.
            return Err(self.wait().await.err().unwrap_or_else(|| {
                ImportError::Stage(std::io::Error::other("the stage stopped"))
            }));
        }
        Ok(name)
    }

    /// Waits for every batch to be written, then writes the manifest;
    /// answers where it is.
    pub async fn finish(
        mut self,
        source: &str,
        target: &str,
        columns: &[(String, String)],
    ) -> Result<String> {
        let (stage, staged) = self.wait().await?;
        Manifest {
            format: self.format,
            source,
            target,
            columns,
            batches: &staged,
            parts: None,
        }
        .put(&stage)
        .await
    }

    /// Waits for every batch of this part to be written; answers them
    /// (the load in parts writes one manifest for all its parts).
    pub async fn finish_part(mut self) -> Result<(StageHandle, Vec<Staged>)> {
        self.wait().await
    }

    async fn wait(&mut self) -> Result<Written> {
        self.tx = None;
        let task = self.task.take().ok_or_else(|| {
            ImportError::Stage(std::io::Error::other("the stage was already waited for"))
        })?;
        task.await
            .map_err(|e| ImportError::Stage(std::io::Error::other(e.to_string())))?
            .map_err(ImportError::Stage)
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The manifest of a run's batches. A load in parts lists every part's
/// batches, each with its `part`, and says how many `parts` there were:
/// the batches of one part, in order, are one COPY stream.
pub(crate) struct Manifest<'a> {
    pub format: Format,
    pub source: &'a str,
    pub target: &'a str,
    pub columns: &'a [(String, String)],
    pub batches: &'a [Staged],
    pub parts: Option<usize>,
}

impl Manifest<'_> {
    /// Writes it beside the batches; answers where it is.
    pub async fn put(&self, stage: &StageHandle) -> Result<String> {
        stage
            .0
            .put("manifest.json".into(), self.to_json().into())
            .await
            .map_err(ImportError::Stage)
    }

    fn to_json(&self) -> Vec<u8> {
        let mut doc = serde_json::json!({
            "format": self.format.name(),
            "source": self.source,
            "target": self.target,
            "columns": self.columns.iter()
                .map(|(n, t)| serde_json::json!({"name": n, "type": t}))
                .collect::<Vec<_>>(),
            "batches": self.batches.iter().map(|b| {
                let mut batch = serde_json::json!({
                    "object": b.object, "rows": b.rows, "bytes": b.bytes
                });
                if let Some(part) = b.part {
                    batch["part"] = part.into();
                }
                batch
            }).collect::<Vec<_>>(),
            "rows": self.batches.iter().map(|b| b.rows).sum::<u64>(),
        });
        if let Some(parts) = self.parts {
            doc["parts"] = parts.into();
        }
        serde_json::to_vec_pretty(&doc).unwrap_or_default()
    }
}
