"""Running one shell command for the executor: in the workspace, bounded, and fully reaped.

The command runs as `/bin/sh -c COMMAND` with the workspace as its working directory, stdin
from /dev/null (a command that waits for input would otherwise wait for the worker's protocol
stream) and in a session, hence a process group, of its own. When it overruns its timeout, or
the request is cancelled, the whole group gets SIGKILL, so `sleep 1000 &` or a test runner's
workers go with it. After a normal exit the group is killed too: a background process left
behind would hold the output pipes open and outlive the request it belonged to. The shell is
reaped only after that: the exit is learnt from a pidfd (or `waitid` with `WNOWAIT`), which
leaves the shell a zombie, so its pid, the group's id, cannot be reused by an unrelated
process before the group is killed.

With a `Sandbox` (`mnemosyne.agents.sandbox`), the shell runs inside bubblewrap, which is then
the group's leader; killing the group kills the sandbox's first process, and with it the PID
namespace and everything in it.

Both output streams are read continuously, keeping the first and the last
`OUTPUT_LIMIT_BYTES / 2` of each, because a child whose pipe is not drained blocks on write and
only looks hung (the older design's spawner had exactly that bug).

The child's environment is an allowlist: the worker's own environment carries the provider's
API key, which a command such as `env` would otherwise hand straight back to the model. That
alone does not keep the key from a command (`/proc/$PPID/environ`); the sandbox does.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mnemosyne.agents.sandbox import Sandbox

SHELL = "/bin/sh"
# Each stream keeps this much of its output (head and tail halves).
OUTPUT_LIMIT_BYTES = 16 * 1024
# The longest timeout a command may ask for, and the one it gets when it asks for none.
MAX_TIMEOUT_S = 120.0
DEFAULT_TIMEOUT_S = 60.0
# After the shell exits, how long its output pipes get to reach EOF before the group is killed.
POST_EXIT_DRAIN_S = 1.0
# How long a SIGKILLed shell gets to be reaped; the kernel takes microseconds, so this only
# bounds a wait that cannot otherwise be bounded.
KILL_REAP_S = 5.0
READ_CHUNK_BYTES = 64 * 1024

# Variables a command inherits from the worker, with every `LC_*`: the supervisor's allowlist
# for workers (src/process/environment.rs), so a command sees what the worker was started
# with, minus the secrets and the role's own settings.
ENV_ALLOWLIST = (
    "HOME",
    "PATH",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "LANG",
    "TZ",
    "TMPDIR",
    "VIRTUAL_ENV",
)
FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class CommandResult:
    # The shell's exit status; negative when a signal ended it (-9 after a timeout).
    exit_code: int
    timed_out: bool
    stdout: str
    stderr: str


class _Capture:
    """The head and tail of a stream, and how many bytes fell between them."""

    def __init__(self, limit: int = OUTPUT_LIMIT_BYTES) -> None:
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        excess = len(self._tail) - self._tail_limit
        if excess > 0:
            del self._tail[:excess]
            self._dropped += excess

    def text(self) -> str:
        head = self._head.decode("utf-8", errors="replace")
        tail = self._tail.decode("utf-8", errors="replace")
        if self._dropped:
            return f"{head}\n[... {self._dropped} bytes left out ...]\n{tail}"
        return head + tail


def command_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = {
        key: value
        for key, value in environ.items()
        if key in ENV_ALLOWLIST or key.startswith("LC_")
    }
    env.setdefault("PATH", FALLBACK_PATH)
    return env


async def run_command(
    command: str,
    cwd: Path,
    timeout_s: float,
    environ: Mapping[str, str],
    sandbox: Sandbox | None = None,
) -> CommandResult:
    """Runs `command` in `cwd`, inside `sandbox` when one is given; no process of its group is
    alive when it returns, and the shell has been reaped, including when it is cancelled."""
    argv = [SHELL, "-c", command]
    if sandbox is not None:
        argv = sandbox.wrap(argv, cwd)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    pipes = [os.fdopen(out_read, "rb", buffering=0), os.fdopen(err_read, "rb", buffering=0)]
    try:
        try:
            # `subprocess` rather than asyncio's subprocesses: asyncio's child watcher reaps
            # the shell the moment it exits, and once it is reaped its pid, which is also the
            # group's id, may be handed to an unrelated process before the group is killed.
            # Nothing reaps a `Popen` until it is asked to, so the group is killed while its
            # leader is still a zombie holding the id.
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=command_env(environ),
                stdin=subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                start_new_session=True,
            )
        finally:
            # The child has its own copies; ours would keep the pipes from ever reaching EOF.
            os.close(out_write)
            os.close(err_write)
        out, err = _Capture(), _Capture()
        readers = [
            asyncio.create_task(_drain(pipes[0], out)),
            asyncio.create_task(_drain(pipes[1], err)),
        ]
        timed_out = False
        try:
            try:
                await asyncio.wait_for(_exited(process.pid), timeout_s)
            except TimeoutError:
                timed_out = True
                _kill_group(process.pid)
                await asyncio.wait_for(_exited(process.pid), KILL_REAP_S)
            await asyncio.wait(readers, timeout=POST_EXIT_DRAIN_S)
        finally:
            # The shell has exited but is not reaped (or, when cancelled, is still running),
            # so its pid still names this group and no other.
            _kill_group(process.pid)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await _reap(process)
    finally:
        for pipe in pipes:
            pipe.close()
    assert process.returncode is not None
    return CommandResult(process.returncode, timed_out, out.text(), err.text())


async def _exited(pid: int) -> None:
    """Returns once the child `pid` has exited, without reaping it."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        # No pidfds (a kernel before 5.3, or a seccomp filter that forbids them): a thread
        # waits instead. It cannot be cancelled, but every caller kills the group next, so it
        # ends soon after.
        await asyncio.to_thread(os.waitid, os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    # A pidfd becomes readable when its process exits; reading it does not reap.
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def _reap(process: subprocess.Popen[bytes]) -> None:
    """Reaps the shell, which has exited or just been sent SIGKILL with its group."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_exited(process.pid), KILL_REAP_S)
    # Returns at once for a process that has exited. Should the bounded wait above have run
    # out, which SIGKILL makes all but impossible, `subprocess` reaps it later.
    process.poll()


async def _drain(pipe: BinaryIO, capture: _Capture) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while chunk := await reader.read(READ_CHUNK_BYTES):
            capture.add(chunk)
    finally:
        transport.close()


def _kill_group(pgid: int) -> None:
    # ESRCH: the group is already empty, which is the usual case after a clean exit.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
