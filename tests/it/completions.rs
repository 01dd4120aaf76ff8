//! `mnemosyne completions SHELL`: scripts a shell accepts, offering every verb a user types and
//! none of the internal ones.

use std::process::Command;

use crate::common::*;

fn completions(shell: &str) -> String {
    let output =
        run_client(Command::new(env!("CARGO_BIN_EXE_mnemosyne")).args(["completions", shell]));
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("a completion script is UTF-8")
}

#[test]
fn the_bash_script_parses_and_offers_the_verbs_but_not_the_warden() {
    let script = completions("bash");
    for verb in [
        "supervise",
        "agents",
        "restart",
        "stop",
        "start",
        "events",
        "logs",
        "submit",
    ] {
        assert!(script.contains(verb), "{verb} missing from:\n{script}");
    }
    assert!(script.contains("--state-dir") && script.contains("--keep-running"));
    assert!(!script.contains("warden"), "{script}");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mnemosyne.bash");
    std::fs::write(&path, &script).expect("the script is written");
    let check = run_client(Command::new("bash").arg("-n").arg(&path));
    assert!(check.status.success(), "bash -n: {check:?}");
}

#[test]
fn zsh_and_fish_scripts_name_the_binary_and_an_unknown_shell_is_a_usage_error() {
    assert!(completions("zsh").starts_with("#compdef mnemosyne"));
    assert!(completions("fish").contains("complete -c mnemosyne"));
    let output =
        run_client(Command::new(env!("CARGO_BIN_EXE_mnemosyne")).args(["completions", "tcsh"]));
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bash") && stderr.contains("zsh"),
        "{stderr}"
    );
}
