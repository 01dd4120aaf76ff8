"""Whether bubblewrap can sandbox commands on this machine, for tests that need it or not.

Tests that prove what a sandboxed command cannot reach skip, saying why, where there is no
sandbox to test; tests of everything else run commands with unsandboxed commands explicitly
allowed there (`command_environ`), as an operator's config would.
"""

import functools
import os
import shutil
import subprocess

from mnemosyne.agents.sandbox import SANDBOX_ENV

PROBE_TIMEOUT_S = 10.0


@functools.cache
def bwrap_problem() -> str | None:
    """None when bwrap makes PID and mount namespaces here, else why it does not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap (bubblewrap) is not installed; scripts/test installs it when it can"
    argv = [bwrap, "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    try:
        done = subprocess.run(
            [*argv, "--", "/bin/true"], capture_output=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap could not run: {error}"
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()
        return f"bwrap cannot make namespaces here: {said or done.returncode}"
    return None


def command_environ() -> dict[str, str]:
    """The test process's environment, with unsandboxed commands allowed where bwrap cannot
    make a sandbox."""
    environ = dict(os.environ)
    if bwrap_problem() is not None:
        environ[SANDBOX_ENV] = "off"
    return environ
