//! The worker package embedded in the binary, unpacked once per version into a cache
//! directory that the supervisor puts on the worker's PYTHONPATH.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/embedded_python.rs"));

/// Written last, so a directory without it is a half-finished unpack from a crashed run.
const COMPLETE_MARKER: &str = ".complete";

#[derive(Debug, thiserror::Error)]
#[error("could not unpack the embedded worker package into {dir}")]
pub struct PackageError {
    dir: PathBuf,
    #[source]
    source: io::Error,
}

/// Unpacks the embedded package below `cache_root` and returns the directory to put on
/// PYTHONPATH. Each build has its own directory, so a supervisor always runs workers from the
/// code it was built with and the protocol versions cannot drift apart.
pub fn unpack_embedded_package(cache_root: &Path) -> Result<PathBuf, PackageError> {
    let target = cache_root.join("python").join(DIGEST);
    if target.join(COMPLETE_MARKER).exists() {
        return Ok(target);
    }
    let fail = |source| PackageError {
        dir: target.clone(),
        source,
    };
    let staging = cache_root
        .join("python")
        .join(format!(".{DIGEST}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    for (relative, contents) in FILES {
        let path = staging.join(relative);
        fs::create_dir_all(path.parent().expect("package files live in a directory"))
            .map_err(fail)?;
        fs::write(&path, contents).map_err(fail)?;
    }
    fs::write(staging.join(COMPLETE_MARKER), DIGEST).map_err(fail)?;
    match fs::rename(&staging, &target) {
        Ok(()) => Ok(target),
        // Another supervisor finished the same unpack first; its copy is identical.
        Err(_) if target.join(COMPLETE_MARKER).exists() => {
            let _ = fs::remove_dir_all(&staging);
            Ok(target)
        }
        Err(source) => {
            // A half-finished directory from a crash is in the way: replace it.
            let _ = fs::remove_dir_all(&target);
            fs::rename(&staging, &target).map_err(|_| fail(source))?;
            Ok(target)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacking_twice_reuses_the_same_directory() {
        let cache = tempfile::tempdir().expect("temp dir");
        let first = unpack_embedded_package(cache.path()).expect("first unpack");
        let second = unpack_embedded_package(cache.path()).expect("second unpack");
        assert_eq!(first, second);
        assert!(first.join("mnemosyne/__init__.py").is_file());
        assert!(
            first
                .join("mnemosyne/orchestration/agents/__main__.py")
                .is_file()
        );
    }
}
