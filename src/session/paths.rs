//! Where the session daemon lives: its directory, socket, lock and pid file, and the checks that keep other users
//! out of them.
//!
//! The directory is `$PHI_TUI_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/phi-tui` (the user's runtime dir), else `run/`
//! in the data dir. It is created with mode 0700, and must belong to this user; the socket in it has mode 0600.
//! The daemon holds an exclusive `flock` on `daemon.lock` for as long as it runs: whoever holds the lock is the one
//! daemon, a socket file without a lock holder is stale, and the kernel releases the lock however the daemon ends.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Overrides the directory (tests, or several independent sessions).
pub const RUNTIME_DIR_ENV: &str = "PHI_TUI_RUNTIME_DIR";

#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("{}: {what}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{}: owned by uid {owner}, not by this user (uid {uid}); the session daemon will not use it", path.display())]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "{} exists and is not a socket; it was left alone. Remove or rename it (or set {RUNTIME_DIR_ENV} to \
         another directory) so that the session daemon can listen there",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("no directory for the session daemon's socket: {0}")]
    NoDirectory(String),
}

/// The files of one session daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPaths {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub lock: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
}

impl SessionPaths {
    /// The paths for this user (see the module documentation).
    pub fn for_user() -> Result<Self, PathsError> {
        if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|d| !d.is_empty()) {
            return Self::in_dir(PathBuf::from(dir));
        }
        if let Some(runtime) = directories::BaseDirs::new().and_then(|dirs| dirs.runtime_dir().map(Path::to_path_buf)) {
            return Self::in_dir(runtime.join("phi-tui"));
        }
        let data = crate::config::data_dir().map_err(|e| PathsError::NoDirectory(e.to_string()))?;
        Self::in_dir(data.join("run"))
    }

    /// The paths in `dir`; the daemon's log goes to the data directory when there is one.
    pub fn in_dir(dir: PathBuf) -> Result<Self, PathsError> {
        let log = crate::config::data_dir().map_or_else(|_| dir.join("daemon.log"), |data| data.join("daemon.log"));
        Ok(Self {
            socket: dir.join("daemon.sock"),
            lock: dir.join("daemon.lock"),
            pid: dir.join("daemon.pid"),
            log,
            dir,
        })
    }

    /// Creates the directory (mode 0700) or checks the one there: it must be this user's; a looser mode is
    /// tightened.
    pub fn prepare_dir(&self) -> Result<(), PathsError> {
        let io_error = |what, source| PathsError::Io { what, path: self.dir.clone(), source };
        match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir) {
            Ok(()) => {}
            Err(e) => return Err(io_error("cannot create the directory", e)),
        }
        let metadata = std::fs::metadata(&self.dir).map_err(|e| io_error("cannot read the directory", e))?;
        let uid = effective_uid();
        if metadata.uid() != uid {
            return Err(PathsError::NotOwned { path: self.dir.clone(), owner: metadata.uid(), uid });
        }
        if metadata.mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io_error("cannot make the directory private", e))?;
        }
        Ok(())
    }

    /// Takes the daemon lock without waiting; `None` when another process holds it (a daemon runs or starts).
    pub fn try_lock(&self) -> Result<Option<DaemonLock>, PathsError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock)
            .map_err(|source| PathsError::Io { what: "cannot open the lock file", path: self.lock.clone(), source })?;
        // SAFETY: flock takes a file descriptor we own (`file` lives until the end of this function or in the
        // returned lock) and flags; it touches no memory of ours.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            return Ok(Some(DaemonLock { _file: file }));
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            source => Err(PathsError::Io { what: "cannot lock", path: self.lock.clone(), source }),
        }
    }

    /// Whether a daemon holds the lock now.
    pub fn daemon_running(&self) -> bool {
        self.lock.exists() && matches!(self.try_lock(), Ok(None))
    }

    /// Makes way for a new socket: removes a stale one (only call this holding the lock: then no daemon listens on
    /// it), refuses to touch anything that is not a socket.
    pub fn clear_stale_socket(&self) -> Result<(), PathsError> {
        match std::fs::symlink_metadata(&self.socket) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PathsError::Io { what: "cannot inspect", path: self.socket.clone(), source }),
            Ok(metadata) if metadata.file_type().is_socket() => {
                tracing::info!(socket = %self.socket.display(), "replacing a stale socket");
                std::fs::remove_file(&self.socket).map_err(|source| PathsError::Io {
                    what: "cannot remove the stale socket",
                    path: self.socket.clone(),
                    source,
                })
            }
            Ok(_) => Err(PathsError::NotASocket { path: self.socket.clone() }),
        }
    }

    /// The pid the running daemon wrote, if it is still running.
    pub fn daemon_pid(&self) -> Option<u32> {
        if !self.daemon_running() {
            return None;
        }
        std::fs::read_to_string(&self.pid).ok()?.trim().parse().ok()
    }
}

/// Held by the running daemon; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
