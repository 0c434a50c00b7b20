//! The bearer token of the HTTP front-end: 32 random bytes (hex) in `http-token` in the config directory, mode
//! 0600, made on first use. Whoever can read that file can use the session; nobody else can.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::session::paths::effective_uid;

/// The token file's name in the config directory.
pub const TOKEN_FILE: &str = "http-token";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: {what}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{}: owned by uid {owner}, not by this user (uid {uid}); the HTTP front-end will not use it", path.display())]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error("{}: not a token (expected 64 hex digits); remove it and a new one is made", path.display())]
    Malformed { path: PathBuf },
}

/// Reads the token in `dir`, making it (and `dir`) first if there is none. A file readable by others is made
/// private again.
pub fn load_or_create(dir: &Path) -> Result<String, TokenError> {
    let path = dir.join(TOKEN_FILE);
    let io_error = |what, source| TokenError::Io { what, path: path.clone(), source };
    match read(&path) {
        Ok(token) => return Ok(token),
        Err(TokenError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create the config directory", e))?;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|e| io_error("cannot read random bytes from /dev/urandom", e))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Written in full under a private name, then linked into place: a reader never sees a partial token, and of
    // two processes making one at once, the first link wins and the other reads it.
    let temporary = dir.join(format!(".{TOKEN_FILE}.{}", std::process::id()));
    let write = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(format!("{token}\n").as_bytes()).and_then(|()| file.sync_all()));
    if let Err(e) = write {
        let _ = std::fs::remove_file(&temporary);
        return Err(io_error("cannot write the token", e));
    }
    let linked = std::fs::hard_link(&temporary, &path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(io_error("cannot write the token", e)),
    }
}

fn read(path: &Path) -> Result<String, TokenError> {
    let io_error = |what, source| TokenError::Io { what, path: path.to_path_buf(), source };
    let metadata = std::fs::metadata(path).map_err(|e| io_error("cannot read the token", e))?;
    let uid = effective_uid();
    if metadata.uid() != uid {
        return Err(TokenError::NotOwned { path: path.to_path_buf(), owner: metadata.uid(), uid });
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error("cannot make the token private", e))?;
    }
    let text = std::fs::read_to_string(path).map_err(|e| io_error("cannot read the token", e))?;
    let token = text.trim();
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::Malformed { path: path.to_path_buf() });
    }
    Ok(token.to_owned())
}

/// Compares a presented token with the real one in time that does not depend on where they differ.
pub fn matches(presented: &str, token: &str) -> bool {
    let (a, b) = (presented.as_bytes(), token.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = dir.path().join("config");
        let token = load_or_create(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.len(), 64);
        let path = config.join(TOKEN_FILE);
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load_or_create(&config).ok().as_deref(), Some(token.as_str()));
        // Loosened by someone: made private again, same token.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(load_or_create(&config).ok().as_deref(), Some(token.as_str()));
        assert_eq!(mode(&path), 0o600);
        assert!(matches(&token, &token) && !matches("x", &token) && !matches(&token[1..], &token));
        std::fs::write(&path, "short").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(load_or_create(&config), Err(TokenError::Malformed { .. })));
    }
}
