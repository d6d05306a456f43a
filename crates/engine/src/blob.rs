//! Object storage for code archives and datalake files: a folder inside the
//! data dir.
//!
//! Writes go to a temporary file that is renamed into place, so a reader
//! never sees half an object. Keys are relative paths such as
//! `code/ver-…/source.tar.gz`; a key that would leave the folder is refused.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn new(root: impl Into<PathBuf>) -> LocalBlobs {
        LocalBlobs { root: root.into() }
    }

    pub fn path(&self, key: &str) -> std::io::Result<PathBuf> {
        let rel = Path::new(key);
        if key.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("object key `{key}` is not a plain relative path"),
            ));
        }
        Ok(self.root.join(rel))
    }

    pub async fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let tmp = path.with_extension(format!("tmp.{}", rand::random::<u64>()));
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, &path).await
    }

    /// Removes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Copies an object to a local file. (A copy, not a link: the code that
    /// reads it may write to it, and the object must stay as uploaded.)
    pub async fn copy_to(&self, key: &str, dest: &Path) -> std::io::Result<()> {
        tokio::fs::copy(self.path(key)?, dest).await.map(|_| ())
    }

    pub async fn get(&self, key: &str) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.path(key)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_round_trip_and_keys_stay_inside() {
        let dir = std::env::temp_dir().join(format!("sluice-blob-{}", rand::random::<u64>()));
        let blobs = LocalBlobs::new(&dir);
        blobs.put("code/a/source.tar.gz", b"abc").await.unwrap();
        assert_eq!(blobs.get("code/a/source.tar.gz").await.unwrap(), b"abc");
        assert!(blobs.put("../escape", b"x").await.is_err());
        assert!(blobs.put("/abs", b"x").await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
