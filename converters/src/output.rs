//! Write-then-rename, the one implementation for every file phi-tui replaces (GGUFs, the model registry, sessions,
//! adapters, hub refs): a file appears complete or not at all. The data goes to a hidden temporary file in the same
//! directory (so the final rename stays on one filesystem and is atomic), and the temporary file is removed if
//! anything fails before the rename.
//!
//! One naming scheme: temporary files are named `.{output name}.{purpose}.tmp-{pid}` and listed in a process-wide
//! registry, so that a signal handler can remove them before the process dies ([`remove_temporary_files`]) and a
//! later run for the same output removes those that a killed run left behind (their pid no longer runs).
//!
//! One durability policy ([`rename_durably`]): the file is fsynced before the rename and its directory after, so
//! that after a crash the path holds the old file or the whole new one.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Buffer for the many small writes of a GGUF header; tensor chunks are larger and bypass it.
const WRITE_BUFFER: usize = 1 << 20;
/// The part of a temporary file's name before the pid.
const TEMP_MARK: &str = ".tmp-";

/// Every temporary file this process has not yet renamed or removed.
static TEMPORARY_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    TEMPORARY_FILES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every temporary file of this process. For a signal handler (on a thread of its own, not in the
/// signal's context) that is about to end the process: whatever was being written is abandoned.
pub fn remove_temporary_files() {
    for path in registry().drain(..) {
        let _ = std::fs::remove_file(&path);
    }
}

/// A temporary file next to an output: removed when dropped (unless [`TemporaryPath::keep`] was called, after the
/// file was renamed into place) and by [`remove_temporary_files`]. Creating one first removes what killed runs
/// left behind for the same output.
#[derive(Debug)]
pub struct TemporaryPath {
    path: PathBuf,
}

impl TemporaryPath {
    /// `.{name of final_path}.{purpose}.tmp-{pid}`, in `final_path`'s directory. The file is not created.
    pub fn new(final_path: &Path, purpose: &str) -> TemporaryPath {
        remove_stale_temporary_files(final_path);
        let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = final_path.with_file_name(format!(".{name}.{purpose}{TEMP_MARK}{}", std::process::id()));
        registry().push(path.clone());
        TemporaryPath { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the finished file over `final_path` ([`rename_durably`]); on failure it is removed.
    pub fn persist(self, final_path: &Path) -> io::Result<()> {
        rename_durably(&self.path, final_path)?;
        self.keep();
        Ok(())
    }

    /// The file has been renamed into place (or never existed): nothing to remove any more.
    pub fn keep(self) {
        unregister(&self.path);
        std::mem::forget(self);
    }
}

impl Drop for TemporaryPath {
    fn drop(&mut self) {
        unregister(&self.path);
        match std::fs::remove_file(&self.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %self.path.display(), %error, "could not remove a temporary file");
            }
            _ => {}
        }
    }
}

/// Writes `bytes` to `path` through a temporary file `.{name}.write-{n}.tmp-{pid}` (`n` keeps two writes of one
/// process apart) that [`rename_durably`] puts in place. The directory must exist.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let temp = TemporaryPath::new(path, &format!("write-{}", WRITES.fetch_add(1, Ordering::Relaxed)));
    File::create(temp.path())?.write_all(bytes)?;
    temp.persist(path)
}

/// The durability policy of every write-then-rename: `from` (a complete file) is fsynced, renamed over `to`, and
/// `to`'s directory fsynced, so that the rename itself survives a crash.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    // Opened for writing: some platforms refuse to sync a read-only handle.
    OpenOptions::new().write(true).open(from)?.sync_all()?;
    std::fs::rename(from, to)?;
    match File::open(parent_dir(to)).and_then(|dir| dir.sync_all()) {
        Ok(()) => {}
        // Not every platform or filesystem syncs directories; the rename has happened all the same.
        Err(error) => tracing::debug!(path = %to.display(), %error, "could not sync the directory"),
    }
    Ok(())
}

fn unregister(path: &Path) {
    registry().retain(|p| p != path);
}

/// Removes `.{name}.*.tmp-{pid}` files (and `..{name}.*.tmp-{pid}`, ...) next to `final_path` whose pid is not a running process (Linux: no
/// `/proc/{pid}`); elsewhere nothing is removed.
fn remove_stale_temporary_files(final_path: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!("{name}.");
    let Ok(entries) = std::fs::read_dir(parent_dir(final_path)) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        // Leading dots: a temporary file of a temporary file (the intermediate of a quantized output) counts too.
        let Some(rest) =
            file_name.strip_prefix('.').map(|n| n.trim_start_matches('.')).and_then(|n| n.strip_prefix(&prefix))
        else {
            continue;
        };
        let Some((_, pid)) = rest.rsplit_once(TEMP_MARK) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            tracing::info!(path = %entry.path().display(), "removing a temporary file left by an interrupted run");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A file being written under a temporary name; `commit` renames it into place, dropping it removes it.
pub(crate) struct PendingFile {
    temp: Option<TemporaryPath>,
    final_path: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl PendingFile {
    /// Creates `.{name}.part.tmp-{pid}` next to `final_path`. The pid keeps two concurrent runs apart; the `.tmp`
    /// infix lets an ignore rule (`*.gguf.*tmp*`) match leftovers.
    pub(crate) fn create(final_path: &Path) -> io::Result<PendingFile> {
        let temp = TemporaryPath::new(final_path, "part");
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(temp.path())?;
        Ok(PendingFile {
            temp: Some(temp),
            final_path: final_path.to_path_buf(),
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
        })
    }

    #[cfg(test)]
    pub(crate) fn temp_path(&self) -> &Path {
        self.temp.as_ref().map_or(Path::new(""), TemporaryPath::path)
    }

    pub(crate) fn writer(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.writer.as_mut().ok_or_else(|| io::Error::other("output already committed"))
    }

    /// Flushes, closes and renames the file into place ([`rename_durably`]).
    pub(crate) fn commit(mut self) -> io::Result<()> {
        let writer = self.writer.take().ok_or_else(|| io::Error::other("output already committed"))?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        drop(file);
        let temp = self.temp.take().ok_or_else(|| io::Error::other("output already committed"))?;
        temp.persist(&self.final_path)
    }
}

/// The directory an output file goes into (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Why `path` cannot be an output file, if it cannot: its directory must exist, and it must be a regular file if it
/// exists — a device, a FIFO or a socket would be replaced by a regular file by the final rename (`-o /dev/null`
/// would delete the device node). Writability shows only when the file is created; this check is what can be said
/// without creating anything.
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
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err((path.to_path_buf(), "output is a directory, not a file".to_owned())),
        Ok(meta) if !meta.is_file() => Err((
            path.to_path_buf(),
            "output is not a regular file (a device, FIFO or socket); the GGUF is written to a temporary file and \
             renamed into place, which would replace it"
                .to_owned(),
        )),
        _ => Ok(()),
    }
}

/// Whether two paths name the same existing file (hard links and symbolic links included).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

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
    fn write_atomically_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomically(&dir.path().join("missing/a.json"), b"x").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomically(&path, b"old").unwrap();
        // A temporary file that cannot be renamed over a directory: the rename fails after the data is written.
        let target = dir.path().join("sub");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), b"").unwrap();
        assert!(write_atomically(&target, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| !n.contains(TEMP_MARK)), "{names:?}");
    }

    #[test]
    fn temporary_names_follow_the_one_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let temp = TemporaryPath::new(&dir.path().join("out.gguf"), "f16");
        let name = temp.path().file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!(".out.gguf.f16{TEMP_MARK}{}", std::process::id()));
        std::fs::write(temp.path(), b"x").unwrap();
        temp.persist(&dir.path().join("out.gguf")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("out.gguf")).unwrap(), b"x");
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
