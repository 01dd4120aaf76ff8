"""Test harness: paths of the repository, and a worker process driven over NDJSON pipes.

Every wait here has an upper bound (DEFAULT_TIMEOUT_S unless a test asks for less), so a broken
worker fails a test instead of hanging the suite.
"""

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema

from mnemosyne.runtime import wire

TESTS_DIR = Path(__file__).resolve().parent
AGENTS_PY = TESTS_DIR.parent
REPO_ROOT = AGENTS_PY.parent
PROTOCOL_DIR = REPO_ROOT / "protocol"
FIXTURE_WORKERS = REPO_ROOT / "tests" / "fixtures" / "workers"

DEFAULT_TIMEOUT_S = 10.0
AGENT_MODULE = "mnemosyne.orchestration.agents"


def load_schema(sender: wire.Sender) -> jsonschema.Draft202012Validator:
    path = PROTOCOL_DIR / "schema" / f"{sender.value}-message.schema.json"
    return jsonschema.Draft202012Validator(json.loads(path.read_text(encoding="utf-8")))


WORKER_SCHEMA = load_schema(wire.Sender.WORKER)


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the supervisor would give a worker, pointed at this checkout."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(AGENTS_PY),
        "PYTHONUNBUFFERED": "1",
        "PYTHONUTF8": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    env.update(extra or {})
    return env


def agent_argv(role: str = "executor") -> list[str]:
    return [sys.executable, "-m", AGENT_MODULE, "--role", role]


def fixture_argv(name: str, *args: str) -> list[str]:
    return [sys.executable, str(FIXTURE_WORKERS / f"{name}.py"), *args]


class WorkerProcess:
    """A worker (or any process) whose stdin, stdout and stderr the test holds."""

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=worker_env(env),
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr = bytearray()
        self._stdout_pump = threading.Thread(target=self._pump_stdout, daemon=True)
        self._stderr_pump = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stdout_pump.start()
        self._stderr_pump.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip(b"\n"))
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(65536):
            self._stderr += chunk

    # -- reading ------------------------------------------------------------------------------

    def read_line(self, timeout: float = DEFAULT_TIMEOUT_S) -> bytes | None:
        """The next raw stdout line without its newline; None once stdout has closed."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no stdout line within {timeout} s; stderr so far:\n{self.stderr_text()}"
            ) from None

    def assert_silent(self, within: float) -> None:
        """Asserts that no stdout line arrives within `within` seconds (a bounded non-event)."""
        try:
            line = self._lines.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"expected no output, got {line!r}")

    def read_message(self, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """The next stdout line, which must be a valid worker message (decoder and schema)."""
        line = self.read_line(timeout)
        assert line is not None, f"stdout closed; stderr:\n{self.stderr_text()}"
        return assert_valid_worker_line(line)

    def expect(self, kind: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        message = self.read_message(timeout)
        assert message["type"] == kind, f"expected {kind}, got {message}"
        return message

    def start(self, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reads the hello and ready every worker starts with."""
        return self.expect("hello", timeout), self.expect("ready", timeout)

    def remaining_lines(self, timeout: float = DEFAULT_TIMEOUT_S) -> list[bytes]:
        """Every stdout line until stdout closes."""
        lines = []
        while (line := self.read_line(timeout)) is not None:
            lines.append(line)
        return lines

    # -- writing ------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: Mapping[str, Any]) -> None:
        self.send_raw(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def request(
        self,
        request_id: str,
        method: str,
        params: Any = None,
        deadline_ms: int = 30_000,
        **extra: Any,
    ) -> None:
        message = {"type": "request", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send({**message, "deadline_ms": deadline_ms, **extra})

    def response(self, request_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Reads up to the response to `request_id`, skipping its progress notifications."""
        while True:
            message = self.read_message(timeout)
            if message["type"] == "progress" and message["id"] == request_id:
                continue
            assert message["type"] == "response" and message["id"] == request_id, message
            return message

    def call(self, request_id: str, method: str, params: Any = None, **extra: Any) -> Any:
        """Sends a request and returns its response."""
        self.request(request_id, method, params, **extra)
        return self.response(request_id)

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()

    # -- ending -------------------------------------------------------------------------------

    def wait(self, timeout: float = DEFAULT_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process still running after {timeout} s; stderr:\n{self.stderr_text()}"
            ) from None

    def stderr_text(self, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """What the process wrote to stderr; complete once the process has exited."""
        if self.proc.poll() is not None:
            self._stderr_pump.join(timeout)
        return self._stderr.decode("utf-8", "replace")

    def kill(self) -> None:
        """Kills the whole process group (grandchildren included) and reaps the process."""
        # Even after the leader has exited, the group lives on while a grandchild is in it, and
        # the kernel does not hand out a live group's id as a new pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=DEFAULT_TIMEOUT_S)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def assert_valid_worker_line(line: bytes) -> dict[str, Any]:
    """Asserts that a stdout line is a valid worker message for both the decoder and schema."""
    decoded = wire.decode_line(line, wire.Sender.WORKER)
    assert decoded.kind is wire.LineKind.MESSAGE, f"{decoded.kind}: {decoded.reason}: {line!r}"
    assert decoded.message is not None
    errors = [error.message for error in WORKER_SCHEMA.iter_errors(decoded.message)]
    assert not errors, f"schema rejects {line!r}: {errors}"
    return decoded.message


def pid_gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts: it runs no more code)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def wait_until_gone(pid: int, timeout: float) -> bool:
    """Polls until `pid` has exited; False if it is still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_gone(pid):
            return True
        time.sleep(0.02)
    return pid_gone(pid)


def iter_example_lines(direction: str, validity: str) -> Iterator[tuple[str, int, bytes]]:
    """(file name, line number, line) for every line of the protocol example files."""
    folder = PROTOCOL_DIR / "examples" / validity
    for path in sorted(folder.glob(f"{direction}-*.ndjson")):
        for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
            if line:
                yield path.name, number, line
