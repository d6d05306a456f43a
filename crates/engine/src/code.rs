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
    pub(crate) fn detect(bytes: &[u8]) -> Result<ArchiveFormat, String> {
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

/// Reads every entry of an archive without writing anything, and refuses
/// before anything is kept: a corrupt or truncated archive, an entry whose
/// path is absolute or climbs out (`..`), a link (symbolic or hard), a
/// device or pipe, and an archive larger than `max_unpacked` bytes when
/// unpacked (a zip bomb).
pub fn check_archive(
    format: ArchiveFormat,
    bytes: &[u8],
    max_unpacked: usize,
) -> Result<(), String> {
    let mut total = 0usize;
    // Reads one entry to its end, counting what the whole archive unpacks to.
    let mut drain = |name: &str, entry: &mut dyn Read, corrupt: &str| {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("{corrupt}: {e}"))?;
            if n == 0 {
                return Ok::<(), String>(());
            }
            total = total.saturating_add(n);
            if total > max_unpacked {
                return Err(format!(
                    "the archive unpacks to more than {max_unpacked} bytes (at `{name}`)"
                ));
            }
        }
    };
    match format {
        ArchiveFormat::TarGz => {
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
            let entries = archive
                .entries()
                .map_err(|e| format!("the tar.gz archive is unreadable: {e}"))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| format!("the tar.gz archive is corrupt: {e}"))?;
                let path = entry
                    .path()
                    .map_err(|e| format!("the tar.gz archive is corrupt: {e}"))?
                    .into_owned();
                let name = path.display().to_string();
                check_entry_path(&path)?;
                let kind = entry.header().entry_type();
                if !(kind.is_file()
                    || kind.is_dir()
                    || kind.is_pax_global_extensions()
                    || kind.is_pax_local_extensions()
                    || kind.is_gnu_longname())
                {
                    return Err(format!(
                        "`{name}` is a {}: an archive holds files and folders only",
                        if kind.is_symlink() || kind.is_hard_link() {
                            "link"
                        } else {
                            "special file"
                        }
                    ));
                }
                drain(&name, &mut entry, "the tar.gz archive is corrupt")?;
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
                let name = f.name().to_owned();
                check_entry_path(Path::new(&name))?;
                if f.enclosed_name().is_none() {
                    return Err(format!("`{name}` would land outside the code's folder"));
                }
                if f.is_symlink() {
                    return Err(format!(
                        "`{name}` is a link: an archive holds files and folders only"
                    ));
                }
                drain(&name, &mut f, "the zip archive is corrupt")?;
            }
            Ok(())
        }
    }
}

/// An entry's path must stay inside the folder it unpacks into.
fn check_entry_path(path: &Path) -> Result<(), String> {
    use std::path::Component;
    let bad = path.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    });
    if bad || path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(format!(
            "`{}` would land outside the code's folder: absolute paths and `..` are refused",
            path.display()
        ));
    }
    Ok(())
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
        check_archive(format, &bytes, 1 << 20).unwrap();
        let dir = std::env::temp_dir().join(format!("sluice-code-{}", rand::random::<u64>()));
        unpack(format, &bytes, &dir).unwrap();
        assert!(std::fs::read_to_string(dir.join("pkg/util.py"))
            .unwrap()
            .contains("X = 1"));
        let _ = std::fs::remove_dir_all(&dir);

        assert!(ArchiveFormat::detect(b"hello")
            .unwrap_err()
            .contains("neither"));
        assert!(check_archive(ArchiveFormat::TarGz, &bytes[..bytes.len() / 2], 1 << 20).is_err());
        // Too large when unpacked.
        let big = targz(&[("big.txt", &"x".repeat(10_000))]);
        let err = check_archive(ArchiveFormat::TarGz, &big, 5_000).unwrap_err();
        assert!(err.contains("more than 5000 bytes"), "{err}");
    }

    #[test]
    fn archives_with_escaping_paths_or_links_are_refused() {
        let mut raw = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            Default::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        // Written by hand: the tar crate refuses to write `..` itself.
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../escape.txt");
        header.set_cksum();
        raw.append(&header, &b"bad"[..]).unwrap();
        let climbing = raw.into_inner().unwrap().finish().unwrap();
        let err = check_archive(ArchiveFormat::TarGz, &climbing, 1 << 20).unwrap_err();
        assert!(
            err.contains("../escape.txt") && err.contains("outside"),
            "{err}"
        );

        let mut linked = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            Default::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        linked
            .append_link(&mut header, "key", "/etc/passwd")
            .unwrap();
        let linked = linked.into_inner().unwrap().finish().unwrap();
        let err = check_archive(ArchiveFormat::TarGz, &linked, 1 << 20).unwrap_err();
        assert!(err.contains("`key` is a link"), "{err}");

        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("../../evil.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, b"x").unwrap();
        let zipped = zip.finish().unwrap().into_inner();
        let err = check_archive(ArchiveFormat::Zip, &zipped, 1 << 20).unwrap_err();
        assert!(err.contains("outside"), "{err}");
    }
}
