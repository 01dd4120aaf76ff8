//! Embeds the Python worker package (`agents_py/mnemosyne`) in the binary, so an installed
//! `mnemosyne` can start its workers with no checkout and no PYTHONPATH set by the user.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets the manifest dir"));
    let package = root.join("agents_py");
    println!(
        "cargo:rerun-if-changed={}",
        package.join("mnemosyne").display()
    );
    let mut files = Vec::new();
    collect(&package.join("mnemosyne"), &package, &mut files);
    files.sort();

    // FNV-1a over paths and contents: a stable name for the unpacked copy of this exact code.
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    let mut source = String::from("pub(crate) static FILES: &[(&str, &[u8])] = &[\n");
    for relative in &files {
        let absolute = package.join(relative);
        println!("cargo:rerun-if-changed={}", absolute.display());
        let contents = fs::read(&absolute).expect("embedded package file is readable");
        for byte in relative.as_bytes().iter().chain(&[0]).chain(&contents) {
            digest ^= u64::from(*byte);
            digest = digest.wrapping_mul(0x0100_0000_01b3);
        }
        writeln!(
            source,
            "    ({relative:?}, include_bytes!({:?})),",
            absolute.display().to_string()
        )
        .expect("writing to a string cannot fail");
    }
    source.push_str("];\n");
    writeln!(source, "pub(crate) const DIGEST: &str = \"{digest:016x}\";")
        .expect("writing to a string cannot fail");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("embedded_python.rs"), source).expect("OUT_DIR is writable");
}

/// Collects the package's source files, relative to `base`, skipping caches and bytecode.
fn collect(dir: &Path, base: &Path, files: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "__pycache__" && !name.starts_with('.') {
                println!("cargo:rerun-if-changed={}", path.display());
                collect(&path, base, files);
            }
        } else if [".py", ".md", ".json", ".toml", ".txt"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            let relative = path.strip_prefix(base).expect("walked below base");
            files.push(relative.to_string_lossy().into_owned());
        }
    }
}
