//! Object storage for code archives and datalake files.
//!
//! By default a folder inside the data dir ([`LocalBlobs`]): writes go to a
//! temporary file that is renamed into place, so a reader never sees half an
//! object. With the `s3` feature, any S3-compatible store
//! (`--object-store s3://bucket/prefix`, credentials and endpoint from the
//! usual `AWS_*` variables), so workers on other machines need no shared
//! disk. Keys are relative paths such as `code/ver-…/source.tar.gz`; a key
//! that would leave its root is refused.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

/// Where objects live: one of the backends below, chosen at start.
#[derive(Debug, Clone)]
pub enum Blobs {
    Local(LocalBlobs),
    #[cfg(feature = "s3")]
    Remote(std::sync::Arc<dyn object_store::ObjectStore>),
}

fn check_key(key: &str) -> std::io::Result<&Path> {
    let rel = Path::new(key);
    if key.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("object key `{key}` is not a plain relative path"),
        ));
    }
    Ok(rel)
}

impl Blobs {
    pub fn local(root: impl Into<PathBuf>) -> Blobs {
        Blobs::Local(LocalBlobs::new(root))
    }

    /// The store a URL names: `s3://bucket[/prefix]` (with the `s3`
    /// feature) or `file:///path`.
    pub fn open(url: &str) -> Result<Blobs, sluice_domain::Invalid> {
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(Blobs::local(path));
        }
        #[cfg(feature = "s3")]
        if let Some(rest) = url.strip_prefix("s3://") {
            use object_store::aws::AmazonS3Builder;
            use object_store::prefix::PrefixStore;
            // s3://[KEY:SECRET@]BUCKET[/PREFIX][?endpoint=…&region=…]: what the
            // URL says wins over the AWS_* variables.
            let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (auth, rest) = match rest.rsplit_once('@') {
                Some((auth, rest)) if auth.contains(':') => (Some(auth), rest),
                _ => (None, rest),
            };
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "object store URL `{}` names no bucket",
                    crate::secrets::redact(url)
                )
                .into());
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(auth) = auth {
                let (key, secret) = auth.split_once(':').unwrap_or((auth, ""));
                builder = builder
                    .with_access_key_id(key)
                    .with_secret_access_key(secret);
            }
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                builder = match k {
                    "endpoint" => builder
                        .with_endpoint(v)
                        .with_allow_http(v.starts_with("http://")),
                    "region" => builder.with_region(v),
                    other => {
                        return Err(format!(
                            "object store URL: unknown parameter `{other}` (endpoint, region)"
                        )
                        .into())
                    }
                };
            }
            let s3 = builder.build().map_err(|e| {
                sluice_domain::Invalid(format!(
                    "cannot use object store {}: {e}",
                    crate::secrets::redact(url)
                ))
            })?;
            let prefix = prefix.trim_matches('/');
            return Ok(Blobs::Remote(if prefix.is_empty() {
                std::sync::Arc::new(s3)
            } else {
                std::sync::Arc::new(PrefixStore::new(s3, prefix))
            }));
        }
        Err(format!(
            "unsupported object store URL `{url}`: expected s3://bucket/prefix or file:///path"
        )
        .into())
    }

    pub async fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.put_owned(key, Bytes::copy_from_slice(bytes), Cache::Keep)
            .await
    }

    /// [`Blobs::put`] of bytes it may keep: written as they are, not
    /// copied first (a staged batch is the buffer the load sends).
    /// [`Cache::Drop`]: an object kept but not read soon (a staged batch)
    /// is written through to the local disk and left out of the page cache.
    pub async fn put_owned(&self, key: &str, bytes: Bytes, cache: Cache) -> std::io::Result<()> {
        match self {
            Blobs::Local(l) => l.put_owned(key, bytes, cache).await,
            #[cfg(feature = "s3")]
            Blobs::Remote(s) => {
                let path = remote_path(key)?;
                s.put(&path, bytes.into())
                    .await
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            }
        }
    }

    pub async fn get(&self, key: &str) -> std::io::Result<Vec<u8>> {
        match self {
            Blobs::Local(l) => l.get(key).await,
            #[cfg(feature = "s3")]
            Blobs::Remote(s) => {
                let got = s.get(&remote_path(key)?).await?;
                Ok(got.bytes().await?.to_vec())
            }
        }
    }

    /// Removes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> std::io::Result<()> {
        match self {
            Blobs::Local(l) => l.delete(key).await,
            #[cfg(feature = "s3")]
            Blobs::Remote(s) => match s.delete(&remote_path(key)?).await {
                Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The keys under `prefix` (a folder's), every depth.
    pub async fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        Ok(self
            .entries(prefix)
            .await?
            .into_iter()
            .map(|e| e.key)
            .collect())
    }

    /// The objects under `prefix` (a folder's), every depth, with their
    /// size and last change.
    pub async fn entries(&self, prefix: &str) -> std::io::Result<Vec<Entry>> {
        match self {
            Blobs::Local(l) => l.entries(prefix).await,
            #[cfg(feature = "s3")]
            Blobs::Remote(s) => {
                use futures_util::TryStreamExt;
                let prefix = match prefix {
                    "" => None,
                    p => Some(remote_path(p)?),
                };
                let objects: Vec<_> = s.list(prefix.as_ref()).try_collect().await?;
                Ok(objects
                    .into_iter()
                    .map(|o| Entry {
                        key: o.location.to_string(),
                        size: o.size,
                        changed: o.last_modified.timestamp_micros(),
                    })
                    .collect())
            }
        }
    }

    /// Copies an object to a local file. (A copy, not a link: the code that
    /// reads it may write to it, and the object must stay as uploaded.)
    pub async fn copy_to(&self, key: &str, dest: &Path) -> std::io::Result<()> {
        match self {
            Blobs::Local(l) => tokio::fs::copy(l.path(key)?, dest).await.map(|_| ()),
            #[cfg(feature = "s3")]
            Blobs::Remote(_) => tokio::fs::write(dest, self.get(key).await?).await,
        }
    }
}

#[cfg(feature = "s3")]
fn remote_path(key: &str) -> std::io::Result<object_store::path::Path> {
    check_key(key)?;
    object_store::path::Path::parse(key).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("object key `{key}`: {e}"),
        )
    })
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    /// When it last changed, in microseconds since the epoch.
    pub changed: i64,
}

/// Whether an object written stays in the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// As any file written: read soon (an upload a run opens next).
    Keep,
    /// Kept but not read soon (a query's staged batches): written through
    /// to the disk, then its pages dropped. A query staging gigabytes
    /// would otherwise push the databases' own pages out of memory; and on
    /// a machine whose memory was never used (a new virtual machine, where
    /// the host backs each page at its first touch) each cached page is
    /// fresh memory, many times dearer than a page the cache gave back
    /// (`bench/import.py` prints both for this machine).
    Drop,
}

/// Waits until `file`'s data is on the disk (no cache flush of the device,
/// no metadata: not a durability promise), then drops its clean pages from
/// the page cache.
fn write_through(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is `file`'s, open for the call; both calls only read it.
    let written = unsafe {
        libc::sync_file_range(
            fd,
            0,
            0,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    if written != 0 {
        let e = std::io::Error::last_os_error();
        // A file system that cannot (EINVAL, ENOSYS, EOPNOTSUPP) keeps the
        // pages cached; a write that failed is the put's error.
        return match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(()),
            _ => Err(e),
        };
    }
    // Advice: a kernel that ignores it keeps the pages cached, no more.
    // SAFETY: as above.
    unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

/// Objects in a local folder.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn new(root: impl Into<PathBuf>) -> LocalBlobs {
        LocalBlobs { root: root.into() }
    }

    pub fn path(&self, key: &str) -> std::io::Result<PathBuf> {
        Ok(self.root.join(check_key(key)?))
    }

    /// Writes `bytes` to a temporary file beside `key`'s and renames it
    /// into place, on one blocking thread (one hop, not one a step).
    pub async fn put_owned(&self, key: &str, bytes: Bytes, cache: Cache) -> std::io::Result<()> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("tmp.{}", rand::random::<u64>()));
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            if cache == Cache::Drop {
                write_through(&file)?;
            }
            drop(file);
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Removes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub async fn get(&self, key: &str) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.path(key)?).await
    }

    /// The objects under `prefix`, every depth (none: the folder is
    /// missing). Temporary files of writes under way are not objects.
    pub async fn entries(&self, prefix: &str) -> std::io::Result<Vec<Entry>> {
        let top = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix)?
        };
        let mut keys = Vec::new();
        let mut folders = vec![top];
        while let Some(dir) = folders.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            while let Some(e) = entries.next_entry().await? {
                let kind = e.file_type().await?;
                if kind.is_dir() {
                    folders.push(e.path());
                } else if kind.is_file() {
                    let path = e.path();
                    // A write under way: `<name>.tmp.<n>` (see `put`).
                    let partial = path.to_string_lossy().contains(".tmp.");
                    if partial {
                        continue;
                    }
                    let meta = e.metadata().await?;
                    let changed = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_micros() as i64);
                    if let Ok(rel) = path.strip_prefix(&self.root) {
                        keys.push(Entry {
                            key: rel.to_string_lossy().into_owned(),
                            size: meta.len(),
                            changed,
                        });
                    }
                }
            }
        }
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `path`'s pages are in the page cache (`mincore`).
    fn cached_pages(path: &Path) -> usize {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a read-only shared map of an open file, unmapped below;
        // `mincore` writes one byte per page into a vector that long.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut resident = vec![0u8; len.div_ceil(page)];
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
            libc::munmap(map, len);
            resident.iter().filter(|b| **b & 1 == 1).count()
        }
    }

    #[tokio::test]
    async fn a_staged_object_is_written_through_and_left_out_of_the_page_cache() {
        let dir = std::env::temp_dir().join(format!("sluice-blob-{}", rand::random::<u64>()));
        let blobs = Blobs::local(&dir);
        let bytes = Bytes::from((0..4 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        for (key, cache) in [("kept", Cache::Keep), ("staged", Cache::Drop)] {
            blobs.put_owned(key, bytes.clone(), cache).await.unwrap();
            assert_eq!(blobs.get(key).await.unwrap(), bytes, "{key}");
        }
        // Read back above, so cached again: written anew to look.
        blobs
            .put_owned("kept", bytes.clone(), Cache::Keep)
            .await
            .unwrap();
        blobs
            .put_owned("staged", bytes.clone(), Cache::Drop)
            .await
            .unwrap();
        let pages = (4 << 20) / unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        assert_eq!(cached_pages(&dir.join("kept")), pages);
        assert_eq!(cached_pages(&dir.join("staged")), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn objects_round_trip_and_keys_stay_inside() {
        let dir = std::env::temp_dir().join(format!("sluice-blob-{}", rand::random::<u64>()));
        let blobs = Blobs::local(&dir);
        blobs.put("code/a/source.tar.gz", b"abc").await.unwrap();
        assert_eq!(blobs.get("code/a/source.tar.gz").await.unwrap(), b"abc");
        let copy = dir.join("copy");
        blobs.copy_to("code/a/source.tar.gz", &copy).await.unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"abc");
        blobs.delete("code/a/source.tar.gz").await.unwrap();
        blobs.delete("code/a/source.tar.gz").await.unwrap();
        assert!(blobs.get("code/a/source.tar.gz").await.is_err());
        assert!(blobs.put("../escape", b"x").await.is_err());
        assert!(blobs.put("/abs", b"x").await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn object_store_urls_are_checked() {
        assert!(matches!(Blobs::open("file:///tmp/x"), Ok(Blobs::Local(_))));
        let err = Blobs::open("ftp://host/x").unwrap_err();
        assert!(err.contains("s3://bucket/prefix"), "{err}");
    }
}
