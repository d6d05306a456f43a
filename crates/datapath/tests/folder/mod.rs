//! A stage over a folder, as the engine's local object storage is: the
//! tests' own [`sluice_datapath::Stage`].

pub struct Folder(pub std::path::PathBuf);

impl sluice_datapath::Stage for Folder {
    fn put(
        &self,
        name: String,
        bytes: bytes::Bytes,
    ) -> futures_util::future::BoxFuture<'_, std::io::Result<String>> {
        Box::pin(async move {
            let path = self.0.join(&name);
            std::fs::create_dir_all(path.parent().unwrap_or(&self.0))?;
            std::fs::write(&path, bytes)?;
            Ok(path.display().to_string())
        })
    }
}
