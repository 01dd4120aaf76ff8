"""Where the executor's shell commands run: a bubblewrap sandbox that cannot reach the key.

A command is written by the model, so it is treated as hostile. The worker's environment holds
the provider's API key, and an allowlisted environment alone does not keep it in: the worker's
`/proc/PID/environ`, and the supervisor's one `/proc` lookup further, are readable by a process
of the same user, and by root whatever the dumpable flag says. So each command runs under
`bwrap` (bubblewrap) in PID and mount namespaces of its own, with a fresh `/proc` in which it
sees no process but its own. Its file system is built up from nothing:

- the system's directories (`SYSTEM_DIRS`), read-only;
- a fresh, empty `/tmp`, `/dev` with only the standard devices, and an empty, writable `$HOME`;
- the workspace, read-write, at its real path, which is also the working directory;
- nothing else: not the operator's home, not the supervisor's state directory, not the config
  directory where the age identity and secrets live. Those two, and any directory the
  supervisor names in `MNEMOSYNE_COMMAND_HIDE`, are covered with an empty tmpfs even where
  they lie inside one of the directories above.

The supervisor probes for bubblewrap at start (src/process/sandbox.rs) and tells workers what
it found in `MNEMOSYNE_COMMAND_SANDBOX`: `bwrap` (with the binary in `MNEMOSYNE_BWRAP`),
`refuse` (no sandbox could be made, so commands are refused), or `off` (none could be made and
the config allows commands to run without one). A worker started by something else, with the
variable unset, uses bwrap if it is on `PATH` and refuses commands otherwise.
"""

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SANDBOX_ENV = "MNEMOSYNE_COMMAND_SANDBOX"
BWRAP_ENV = "MNEMOSYNE_BWRAP"
HIDE_ENV = "MNEMOSYNE_COMMAND_HIDE"

# Mounted read-only when present; a symbolic link (`/bin -> usr/bin` on merged-/usr systems)
# is recreated as the same link.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")

REFUSED_NO_SANDBOX = (
    "run_command is disabled: commands run only in a sandbox, and none could be made on this "
    "machine (the supervisor said why when it started). The file tools still work."
)


@dataclass(frozen=True)
class Sandbox:
    """How to wrap a command in bubblewrap."""

    bwrap: str
    # Directories a command must not see, covered with an empty tmpfs.
    hidden: tuple[Path, ...] = ()
    # Mounted as an empty, writable tmpfs, so tools that keep caches there still work.
    home: Path | None = None

    def wrap(self, argv: Sequence[str], workspace: Path) -> list[str]:
        """The argv running `argv` in the sandbox, with `workspace` (a real path) writable."""
        workspace = Path(os.path.realpath(workspace))
        args = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--die-with-parent"]
        for directory in SYSTEM_DIRS:
            if os.path.islink(directory):
                args += ["--symlink", os.readlink(directory), directory]
            elif os.path.isdir(directory):
                args += ["--ro-bind", directory, directory]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        if self.home is not None and self.home.is_absolute() and self.home != Path("/"):
            args += ["--tmpfs", str(self.home)]
        # A hidden directory outside the workspace is covered before the workspace is mounted
        # (the state directory holds the workspaces by default); one inside it, after.
        hidden = _existing_real_dirs(self.hidden)
        inside = [path for path in hidden if path == workspace or workspace in path.parents]
        for path in hidden:
            if path not in inside:
                args += ["--tmpfs", str(path)]
        args += ["--bind", str(workspace), str(workspace)]
        for path in inside:
            args += ["--tmpfs", str(path)]
        args += ["--chdir", str(workspace), "--", *argv]
        return args


@dataclass(frozen=True)
class CommandPolicy:
    """Whether and how commands run: in `sandbox`, or refused with `refusal`, or neither
    (unsandboxed, which only an explicit `off` gives)."""

    sandbox: Sandbox | None = None
    refusal: str | None = None


def command_policy(environ: Mapping[str, str]) -> CommandPolicy:
    """The policy the worker's environment asks for; see the module's documentation."""
    mode = environ.get(SANDBOX_ENV, "").strip().lower()
    if mode == "off":
        return CommandPolicy()
    if mode == "refuse":
        return CommandPolicy(refusal=REFUSED_NO_SANDBOX)
    bwrap = environ.get(BWRAP_ENV, "").strip() or shutil.which("bwrap", path=environ.get("PATH"))
    if not bwrap:
        return CommandPolicy(refusal=REFUSED_NO_SANDBOX)
    hidden = _hidden_paths(environ)
    if hidden is None:
        # Set by the supervisor, so this is a bug; guessing which directories were meant
        # could expose one, so no command runs.
        return CommandPolicy(refusal=f"run_command is disabled: {HIDE_ENV} is not a JSON list")
    home = environ.get("HOME", "").strip()
    return CommandPolicy(
        sandbox=Sandbox(bwrap=bwrap, hidden=hidden, home=Path(home) if home else None)
    )


def _hidden_paths(environ: Mapping[str, str]) -> tuple[Path, ...] | None:
    raw = environ.get(HIDE_ENV, "").strip()
    if not raw:
        return ()
    try:
        paths = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
        return None
    return tuple(Path(path) for path in paths if path)


def _existing_real_dirs(paths: Sequence[Path]) -> list[Path]:
    """Each existing absolute directory, by its real path: that is where it appears in the
    sandbox, because the workspace is mounted at its real path and the system's links are
    recreated as they are."""
    found: list[Path] = []
    for path in paths:
        if not path.is_absolute() or not os.path.isdir(path):
            continue
        real = Path(os.path.realpath(path))
        if real != Path("/") and real not in found:
            found.append(real)
    return found
