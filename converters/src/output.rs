//! Writing an output file so that it either appears complete or not at all: the data goes to a hidden temporary
//! file in the same directory (so the final rename stays on one filesystem and is atomic), and the temporary
//! file is removed if anything fails before the rename.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

/// Buffer for the many small writes of a GGUF header; tensor chunks are larger and bypass it.
const WRITE_BUFFER: usize = 1 << 20;

/// A file being written under a temporary name; `commit` renames it into place, dropping it removes it.
pub(crate) struct PendingFile {
    temp_path: PathBuf,
    final_path: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl PendingFile {
    /// Creates `.{name}.tmp-{pid}` next to `final_path`. The pid keeps two concurrent runs apart; the `.tmp`
    /// infix lets an ignore rule (`*.gguf.tmp*`) match leftovers of a killed run.
    pub(crate) fn create(final_path: &Path) -> io::Result<PendingFile> {
        let temp_path = temp_path_for(final_path);
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp_path)?;
        Ok(PendingFile {
            temp_path,
            final_path: final_path.to_path_buf(),
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
        })
    }

    #[cfg(test)]
    pub(crate) fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    pub(crate) fn writer(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.writer.as_mut().ok_or_else(|| io::Error::other("output already committed"))
    }

    /// Flushes, closes and renames the file into place.
    pub(crate) fn commit(mut self) -> io::Result<()> {
        let writer = self.writer.take().ok_or_else(|| io::Error::other("output already committed"))?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        drop(file);
        std::fs::rename(&self.temp_path, &self.final_path)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            if let Err(error) = std::fs::remove_file(&self.temp_path) {
                tracing::warn!(path = %self.temp_path.display(), %error, "could not remove the temporary output");
            }
        }
    }
}

/// The temporary name used for `final_path`.
pub(crate) fn temp_path_for(final_path: &Path) -> PathBuf {
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    final_path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// The directory an output file goes into (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Why `path` cannot be an output file, if it cannot: its directory must exist and it must not be a directory.
/// Writability shows only when the file is created; this check is what can be said without creating anything.
pub(crate) fn check_output_path(path: &Path) -> Result<(), (PathBuf, String)> {
    let dir = parent_dir(path);
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err((dir.to_path_buf(), "output directory is not a directory".to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err((dir.to_path_buf(), "output directory does not exist".to_owned()))
        }
        Err(e) => return Err((dir.to_path_buf(), format!("output directory is not accessible: {e}"))),
    }
    if path.is_dir() {
        return Err((path.to_path_buf(), "output is a directory, not a file".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn dropped_file_leaves_nothing_and_committed_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.gguf");
        {
            let mut pending = PendingFile::create(&target).unwrap();
            pending.writer().unwrap().write_all(b"partial").unwrap();
            assert!(pending.temp_path().exists());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut pending = PendingFile::create(&target).unwrap();
        pending.writer().unwrap().write_all(b"done").unwrap();
        pending.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"done");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn output_path_checks_name_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (path, reason) = check_output_path(&dir.path().join("missing/out.gguf")).unwrap_err();
        assert!(path.ends_with("missing"), "{}", path.display());
        assert_eq!(reason, "output directory does not exist");
        assert!(check_output_path(dir.path()).is_err());
        assert!(check_output_path(&dir.path().join("out.gguf")).is_ok());
        assert_eq!(parent_dir(Path::new("out.gguf")), Path::new("."));
    }
}
