"""Running one shell command for the executor: in the workspace, bounded, and fully reaped.

The command runs as `/bin/sh -c COMMAND` with the workspace as its working directory, stdin
from /dev/null (a command that waits for input would otherwise wait for the worker's protocol
stream) and in a session, hence a process group, of its own. When it overruns its timeout, or
the request is cancelled, the whole group gets SIGKILL, so `sleep 1000 &` or a test runner's
workers go with it. After a normal exit the group is killed too: a background process left
behind would hold the output pipes open and outlive the request it belonged to.

Both output streams are read continuously, keeping the first and the last
`OUTPUT_LIMIT_BYTES / 2` of each, because a child whose pipe is not drained blocks on write and
only looks hung (the older design's spawner had exactly that bug).

The child's environment is an allowlist: the worker's own environment carries the provider's
API key, which a command such as `env` would otherwise hand straight back to the model.
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
    command: str, cwd: Path, timeout_s: float, environ: Mapping[str, str]
) -> CommandResult:
    """Runs `command` in `cwd`; no process of its group is alive when it returns, and the
    shell has been reaped, including when it is cancelled."""
    # Pipes of our own rather than asyncio's: `Process.wait()` on asyncio's pipes waits for
    # them to close as well, so a background process holding them would keep a finished
    # command waiting until its timeout.
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    pipes = [os.fdopen(out_read, "rb", buffering=0), os.fdopen(err_read, "rb", buffering=0)]
    try:
        try:
            process = await asyncio.create_subprocess_exec(
                SHELL,
                "-c",
                command,
                cwd=cwd,
                env=command_env(environ),
                stdin=asyncio.subprocess.DEVNULL,
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
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                timed_out = True
                # Killed before the shell is reaped, so its pid still names this group.
                _kill_group(process.pid)
                await asyncio.wait_for(process.wait(), KILL_REAP_S)
            await asyncio.wait(readers, timeout=POST_EXIT_DRAIN_S)
        finally:
            _kill_group(process.pid)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            if process.returncode is None:
                # Cancelled while the shell ran: reap it now, or it stays a zombie.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), KILL_REAP_S)
    finally:
        for pipe in pipes:
            pipe.close()
    assert process.returncode is not None
    return CommandResult(process.returncode, timed_out, out.text(), err.text())


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
