//! Deployment code archives: what a client uploads (tar.gz or zip), checked
//! before it is kept, and unpacked once per version on each worker.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    TarGz,
    Zip,
}

impl ArchiveFormat {
    pub fn detect(bytes: &[u8]) -> Result<ArchiveFormat, String> {
        match bytes {
            [0x1f, 0x8b, ..] => Ok(ArchiveFormat::TarGz),
            [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => Ok(ArchiveFormat::Zip),
            [] => Err("the uploaded archive is empty".into()),
            _ => Err("the upload is neither a tar.gz nor a zip archive".into()),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::Zip => "zip",
        }
    }

    pub fn from_key(key: &str) -> ArchiveFormat {
        if key.ends_with(".zip") {
            ArchiveFormat::Zip
        } else {
            ArchiveFormat::TarGz
        }
    }
}

/// Reads every entry of an archive without writing anything: a corrupt or
/// truncated upload is refused before it is kept.
pub fn check_archive(format: ArchiveFormat, bytes: &[u8]) -> Result<(), String> {
    match format {
        ArchiveFormat::TarGz => {
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
            let entries = archive
                .entries()
                .map_err(|e| format!("the tar.gz archive is unreadable: {e}"))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| format!("the tar.gz archive is corrupt: {e}"))?;
                std::io::copy(&mut entry, &mut std::io::sink())
                    .map_err(|e| format!("the tar.gz archive is corrupt: {e}"))?;
            }
            Ok(())
        }
        ArchiveFormat::Zip => {
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
                .map_err(|e| format!("the zip archive is unreadable: {e}"))?;
            for i in 0..zip.len() {
                let mut f = zip
                    .by_index(i)
                    .map_err(|e| format!("the zip archive is corrupt: {e}"))?;
                let mut sink = Vec::new();
                f.read_to_end(&mut sink)
                    .map_err(|e| format!("the zip archive is corrupt: {e}"))?;
            }
            Ok(())
        }
    }
}

/// Unpacks an archive into `dest` (made fresh through a temporary folder
/// renamed into place, so a half-unpacked tree is never used). Entries that
/// would land outside `dest` are refused.
pub fn unpack(format: ArchiveFormat, bytes: &[u8], dest: &Path) -> std::io::Result<()> {
    let tmp: PathBuf = dest.with_extension(format!("unpack.{}", rand::random::<u64>()));
    std::fs::create_dir_all(&tmp)?;
    let result = match format {
        ArchiveFormat::TarGz => {
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
            archive.set_preserve_permissions(false);
            archive.unpack(&tmp)
        }
        ArchiveFormat::Zip => zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .and_then(|mut z| z.extract(&tmp))
            .map_err(std::io::Error::other),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        // Another task unpacked the same version first: keep theirs.
        Err(_) if dest.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targz(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            Default::default(),
        ));
        for (name, body) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, body.as_bytes())
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn archives_are_detected_checked_and_unpacked() {
        let bytes = targz(&[
            ("main.py", "def handler(r, c): pass\n"),
            ("pkg/util.py", "X = 1\n"),
        ]);
        let format = ArchiveFormat::detect(&bytes).unwrap();
        assert_eq!(format, ArchiveFormat::TarGz);
        check_archive(format, &bytes).unwrap();
        let dir = std::env::temp_dir().join(format!("sluice-code-{}", rand::random::<u64>()));
        unpack(format, &bytes, &dir).unwrap();
        assert!(std::fs::read_to_string(dir.join("pkg/util.py"))
            .unwrap()
            .contains("X = 1"));
        let _ = std::fs::remove_dir_all(&dir);

        assert!(ArchiveFormat::detect(b"hello")
            .unwrap_err()
            .contains("neither"));
        assert!(check_archive(ArchiveFormat::TarGz, &bytes[..bytes.len() / 2]).is_err());
    }
}
