//! Where Mnemosyne keeps files on this machine.

use std::path::PathBuf;

/// The cache directory (for the unpacked worker package): `MNEMOSYNE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/mnemosyne`, else `~/.cache/mnemosyne`, else a per-user temp directory.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("MNEMOSYNE_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("mnemosyne");
    }
    if let Some(home) = var("HOME") {
        return home.join(".cache").join("mnemosyne");
    }
    std::env::temp_dir().join(format!("mnemosyne-cache-{}", nix::unistd::getuid()))
}
