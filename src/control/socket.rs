//! The control socket file: where it lives, binding it with mode 0600 and no moment at which
//! it is more open, replacing a stale one, and removing it again.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The socket's name inside the state directory.
pub const SOCKET_FILE: &str = "control.sock";
/// A private directory the socket is bound in before it is moved into place.
const STAGING_DIR: &str = ".control.sock.d";

/// Where the supervisor using `state_dir` listens.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on the control socket {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bound socket file, identified by device and inode so that removing it never removes a
/// file someone else put there since.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still ours. Harmless to call twice.
    pub fn remove(&self) {
        if let Ok(metadata) = fs::symlink_metadata(&self.path) {
            if (metadata.dev(), metadata.ino()) == self.identity {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Binds `control.sock` in `state_dir`, which the caller holds the lock of.
///
/// Whatever is at that path is left over from a supervisor that died without cleaning up (a
/// live one would hold the lock), so it is replaced. The socket is bound inside a fresh 0700
/// directory, made 0600, and only then renamed into place, so at no moment can anyone but
/// this user connect to it, whatever the permissions of the state directory.
pub(crate) fn bind(state_dir: &Path) -> Result<(UnixListener, SocketFile), ControlError> {
    let path = socket_path(state_dir);
    let bind_error = |source| ControlError::Bind {
        path: path.clone(),
        source,
    };
    remove_if_present(&path).map_err(bind_error)?;
    let staging = state_dir.join(STAGING_DIR);
    match fs::remove_dir_all(&staging) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(bind_error(error)),
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(bind_error)?;
    let staged = staging.join(SOCKET_FILE);
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
        fs::rename(&staged, &path)?;
        let metadata = fs::symlink_metadata(&path)?;
        Ok((listener, (metadata.dev(), metadata.ino())))
    });
    let _ = fs::remove_dir_all(&staging);
    let (listener, identity) = bound.map_err(bind_error)?;
    Ok((listener, SocketFile { path, identity }))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed a stale control socket");
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_0600_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stale = UnixListener::bind(socket_path(dir.path())).expect("stale socket");
        drop(stale);
        let (_listener, file) = bind(dir.path()).expect("binds over the stale socket");
        let metadata = fs::symlink_metadata(file.path()).expect("socket file");
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join(STAGING_DIR).exists());
        std::os::unix::net::UnixStream::connect(file.path()).expect("connectable");
        file.remove();
        assert!(!file.path().exists());
        file.remove();
    }

    #[test]
    fn a_file_that_replaced_ours_is_not_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_listener, file) = bind(dir.path()).expect("binds");
        fs::remove_file(file.path()).expect("remove");
        fs::write(file.path(), "someone else's").expect("write");
        file.remove();
        assert!(file.path().exists());
    }
}
