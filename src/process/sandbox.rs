//! Owns the executor's surroundings: the probe for a command sandbox (bubblewrap in PID and
//! mount namespaces), the config directory a command must not see, and the `[executor]`
//! settings as they reach workers through their environment.
//!
//! The model's shell commands run in the executor worker, whose environment holds the API key.
//! An allowlisted environment for the command is not enough: `/proc/$PPID/environ` is one read
//! away, and making the worker non-dumpable does not stop root or `CAP_SYS_PTRACE`. So the
//! worker wraps every command in `bwrap` (agents_py/mnemosyne/agents/sandbox.py builds the
//! command line), and the supervisor checks at start that bwrap can make the namespaces here.
//! When it cannot, commands are refused, unless `[executor] allow_unsandboxed_commands` says to
//! run them anyway; either way the supervisor says so once, at start. [`probe_sandbox`] is the
//! one probe, for `supervise` and, later, `doctor`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::config::ExecutorConfig;
use crate::process::WorkerEnvironment;

/// The bubblewrap binary, looked up on `PATH`.
pub const BWRAP_PROGRAM: &str = "bwrap";

/// How long the probe's sandbox gets to start and exit; it takes milliseconds.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The probe's shell script: it runs inside the sandbox and fails unless `/proc` shows only the
/// sandbox's own processes (bwrap's init as 1, this shell as 2).
const PROBE_SCRIPT: &str = "test -d /proc/1 && test -d /proc/2 && test ! -d /proc/3";

/// Environment variables through which the supervisor configures the executor's tools; the
/// names are read in agents_py/mnemosyne/agents/ (`workspace.py`, `sandbox.py`, `optimizer.py`)
/// and orchestration/agents/methods.py.
pub const WORKSPACE_ROOT_ENV: &str = "MNEMOSYNE_WORKSPACE_ROOT";
pub const SKILL_DIRS_ENV: &str = "MNEMOSYNE_SKILL_DIRS";
pub const MAX_TOOL_TURNS_ENV: &str = "MNEMOSYNE_MAX_TOOL_TURNS";
pub const COMMAND_SANDBOX_ENV: &str = "MNEMOSYNE_COMMAND_SANDBOX";
pub const BWRAP_ENV: &str = "MNEMOSYNE_BWRAP";
pub const COMMAND_HIDE_ENV: &str = "MNEMOSYNE_COMMAND_HIDE";

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxProbe {
    /// bwrap made PID and mount namespaces with a fresh `/proc`.
    Available { bwrap: PathBuf },
    /// No sandbox can be made; `reason` is a lowercase fragment for a log line.
    Unavailable { reason: String },
}

/// Whether the executor's commands run, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandMode {
    Sandboxed {
        bwrap: PathBuf,
    },
    /// No sandbox, and the config does not allow commands without one.
    Refused,
    /// No sandbox, and the config allows commands without one.
    Unsandboxed,
}

impl CommandMode {
    pub fn decide(probe: &SandboxProbe, allow_unsandboxed: bool) -> Self {
        match probe {
            SandboxProbe::Available { bwrap } => CommandMode::Sandboxed {
                bwrap: bwrap.clone(),
            },
            SandboxProbe::Unavailable { .. } if allow_unsandboxed => CommandMode::Unsandboxed,
            SandboxProbe::Unavailable { .. } => CommandMode::Refused,
        }
    }

    /// The value of `MNEMOSYNE_COMMAND_SANDBOX` for workers.
    fn env_value(&self) -> &'static str {
        match self {
            CommandMode::Sandboxed { .. } => "bwrap",
            CommandMode::Refused => "refuse",
            CommandMode::Unsandboxed => "off",
        }
    }
}

/// Looks for bwrap on `path_var` (the value of `PATH`) and runs a command in the sandbox the
/// executor would use, minus the file system details: new PID and mount namespaces and a fresh
/// `/proc`. Never fails; what went wrong is the [`SandboxProbe::Unavailable`] reason.
pub async fn probe_sandbox(path_var: Option<&OsStr>) -> SandboxProbe {
    let Some(bwrap) = find_program(BWRAP_PROGRAM, path_var) else {
        return SandboxProbe::Unavailable {
            reason: format!(
                "{BWRAP_PROGRAM} (bubblewrap) is not on PATH; install it, e.g. \
                 `apt-get install bubblewrap`"
            ),
        };
    };
    let mut command = tokio::process::Command::new(&bwrap);
    command
        .args([
            "--unshare-pid",
            "--unshare-ipc",
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--",
            "/bin/sh",
            "-c",
            PROBE_SCRIPT,
        ])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let unavailable = |what: String| SandboxProbe::Unavailable {
        reason: format!("{} {what}", bwrap.display()),
    };
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return unavailable(format!("could not be started: {error}")),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output()).await {
        Err(_) => unavailable(format!(
            "did not finish a trial sandbox within {}s",
            PROBE_TIMEOUT.as_secs()
        )),
        Ok(Err(error)) => unavailable(format!("could not be waited for: {error}")),
        Ok(Ok(output)) if output.status.success() => SandboxProbe::Available { bwrap },
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said = stderr.trim();
            let said = if said.is_empty() {
                String::new()
            } else {
                format!(": {}", said.lines().last().unwrap_or(said))
            };
            unavailable(format!(
                "cannot make PID and mount namespaces here ({}){said}",
                output.status
            ))
        }
    }
}

/// The first executable file named `name` in the directories of `path_var`.
fn find_program(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The config directory, where the age identity and secrets live: `MNEMOSYNE_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/mnemosyne`, else `~/.config/mnemosyne`. `var` looks up a variable, so
/// tests need not change the process environment. Empty values count as unset.
pub fn config_dir(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |name: &str| var(name).filter(|value| !value.is_empty());
    if let Some(dir) = var("MNEMOSYNE_CONFIG_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(dir).join("mnemosyne"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".config").join("mnemosyne"))
}

/// Everything about the executor that workers learn from their environment.
#[derive(Debug, Clone)]
pub struct ExecutorSetup {
    pub workspace_root: PathBuf,
    pub skill_dirs: Vec<PathBuf>,
    pub max_tool_turns: u32,
    pub mode: CommandMode,
    /// Directories no command may see.
    pub hidden: Vec<PathBuf>,
}

impl ExecutorSetup {
    /// `state_dir` is the supervisor's; `cwd` resolves relative paths from the config.
    pub fn new(
        config: &ExecutorConfig,
        state_dir: &Path,
        cwd: &Path,
        config_dir: Option<PathBuf>,
        mode: CommandMode,
    ) -> Self {
        let absolute = |path: &Path| cwd.join(path);
        let state_dir = absolute(state_dir);
        let workspace_root = config
            .workspace_dir
            .as_deref()
            .map_or_else(|| state_dir.join("workspaces"), absolute);
        let mut hidden = vec![state_dir];
        hidden.extend(config_dir.map(|dir| absolute(&dir)));
        Self {
            workspace_root,
            skill_dirs: config.skill_dirs.iter().map(|dir| absolute(dir)).collect(),
            max_tool_turns: config.max_tool_turns,
            mode,
            hidden,
        }
    }

    /// Sets the workers' variables (see the `*_ENV` constants).
    pub fn apply(&self, env: &mut WorkerEnvironment) {
        env.set(WORKSPACE_ROOT_ENV, self.workspace_root.as_os_str());
        if !self.skill_dirs.is_empty() {
            // Validated free of ':' by config.rs.
            let joined = std::env::join_paths(&self.skill_dirs)
                .expect("config validation keeps ':' out of skill_dirs");
            env.set(SKILL_DIRS_ENV, joined);
        }
        env.set(MAX_TOOL_TURNS_ENV, self.max_tool_turns.to_string());
        env.set(COMMAND_SANDBOX_ENV, self.mode.env_value());
        if let CommandMode::Sandboxed { bwrap } = &self.mode {
            env.set(BWRAP_ENV, bwrap.as_os_str());
        }
        let hidden: Vec<String> = self
            .hidden
            .iter()
            .map(|path| path.to_string_lossy().into_owned())
            .collect();
        env.set(
            COMMAND_HIDE_ENV,
            serde_json::to_string(&hidden).expect("a list of strings always serializes"),
        );
    }
}

/// For `supervise`: probes, says at start what the executor's commands will do, and puts the
/// `[executor]` settings into `env`. bwrap is looked up on the workers' `PATH`, which is where
/// they would look for it too.
pub async fn prepare_executor(
    env: &mut WorkerEnvironment,
    config: &ExecutorConfig,
    state_dir: &Path,
) -> ExecutorSetup {
    let path_var = env.get("PATH").cloned();
    let probe = probe_sandbox(path_var.as_deref()).await;
    let mode = CommandMode::decide(&probe, config.allow_unsandboxed_commands);
    match (&probe, &mode) {
        (SandboxProbe::Available { bwrap }, _) => {
            tracing::debug!(bwrap = %bwrap.display(), "executor commands run in a sandbox");
        }
        (SandboxProbe::Unavailable { reason }, CommandMode::Unsandboxed) => tracing::warn!(
            "no sandbox for the executor's commands ({reason}); they run UNSANDBOXED because \
             [executor] allow_unsandboxed_commands is set, and can read the API key"
        ),
        (SandboxProbe::Unavailable { reason }, _) => tracing::error!(
            "no sandbox for the executor's commands ({reason}); run_command is refused. \
             Set [executor] allow_unsandboxed_commands = true to run them without one"
        ),
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let setup = ExecutorSetup::new(
        config,
        state_dir,
        &cwd,
        config_dir(|name| std::env::var_os(name)),
        mode,
    );
    setup.apply(env);
    setup
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    #[test]
    fn the_config_directory_is_the_variable_then_xdg_then_home() {
        let all = [
            ("MNEMOSYNE_CONFIG_DIR", "/c"),
            ("XDG_CONFIG_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(config_dir(vars(&all)), Some(PathBuf::from("/c")));
        assert_eq!(
            config_dir(vars(&all[1..])),
            Some(PathBuf::from("/x/mnemosyne"))
        );
        assert_eq!(
            config_dir(vars(&[("XDG_CONFIG_HOME", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.config/mnemosyne"))
        );
        assert_eq!(config_dir(vars(&[])), None);
    }

    #[test]
    fn commands_are_refused_without_a_sandbox_unless_the_config_allows_them() {
        let none = SandboxProbe::Unavailable {
            reason: "no bwrap".into(),
        };
        let bwrap = PathBuf::from("/usr/bin/bwrap");
        let some = SandboxProbe::Available {
            bwrap: bwrap.clone(),
        };
        assert_eq!(CommandMode::decide(&none, false), CommandMode::Refused);
        assert_eq!(CommandMode::decide(&none, true), CommandMode::Unsandboxed);
        // Allowing unsandboxed commands never turns a working sandbox off.
        assert_eq!(
            CommandMode::decide(&some, true),
            CommandMode::Sandboxed { bwrap }
        );
    }

    fn value(env: &WorkerEnvironment, key: &str) -> Option<String> {
        env.get(key)
            .map(|value| value.to_string_lossy().into_owned())
    }

    #[test]
    fn workers_get_the_workspace_under_the_state_dir_and_the_dirs_to_hide() {
        let setup = ExecutorSetup::new(
            &ExecutorConfig::default(),
            Path::new("state"),
            Path::new("/run/here"),
            Some(PathBuf::from("/h/.config/mnemosyne")),
            CommandMode::Sandboxed {
                bwrap: PathBuf::from("/usr/bin/bwrap"),
            },
        );
        let mut env = WorkerEnvironment::default();
        setup.apply(&mut env);
        assert_eq!(
            value(&env, WORKSPACE_ROOT_ENV).as_deref(),
            Some("/run/here/state/workspaces")
        );
        assert_eq!(value(&env, SKILL_DIRS_ENV), None);
        assert_eq!(value(&env, MAX_TOOL_TURNS_ENV).as_deref(), Some("16"));
        assert_eq!(value(&env, COMMAND_SANDBOX_ENV).as_deref(), Some("bwrap"));
        assert_eq!(value(&env, BWRAP_ENV).as_deref(), Some("/usr/bin/bwrap"));
        assert_eq!(
            value(&env, COMMAND_HIDE_ENV).as_deref(),
            Some(r#"["/run/here/state","/h/.config/mnemosyne"]"#)
        );
    }

    #[test]
    fn configured_workspace_skills_and_turns_reach_the_workers() {
        let config = ExecutorConfig {
            workspace_dir: Some(PathBuf::from("ws")),
            skill_dirs: vec![PathBuf::from("skills"), PathBuf::from("/opt/skills")],
            max_tool_turns: 3,
            allow_unsandboxed_commands: true,
        };
        let setup = ExecutorSetup::new(
            &config,
            Path::new("/state"),
            Path::new("/cwd"),
            None,
            CommandMode::Unsandboxed,
        );
        let mut env = WorkerEnvironment::default();
        setup.apply(&mut env);
        assert_eq!(value(&env, WORKSPACE_ROOT_ENV).as_deref(), Some("/cwd/ws"));
        assert_eq!(
            value(&env, SKILL_DIRS_ENV).as_deref(),
            Some("/cwd/skills:/opt/skills")
        );
        assert_eq!(value(&env, MAX_TOOL_TURNS_ENV).as_deref(), Some("3"));
        assert_eq!(value(&env, COMMAND_SANDBOX_ENV).as_deref(), Some("off"));
        assert_eq!(value(&env, BWRAP_ENV), None);
        assert_eq!(
            value(&env, COMMAND_HIDE_ENV).as_deref(),
            Some(r#"["/state"]"#)
        );
    }

    #[test]
    fn a_missing_bwrap_is_reported_with_how_to_install_it() {
        let empty = tempfile::tempdir().expect("temp dir");
        let probe = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(probe_sandbox(Some(empty.path().as_os_str())));
        match probe {
            SandboxProbe::Unavailable { reason } => {
                assert!(reason.contains("apt-get install bubblewrap"), "{reason}");
            }
            other => panic!("expected no sandbox, got {other:?}"),
        }
    }
}
