"""The worker runtime: one asyncio loop that speaks protocol v1 with the supervisor.

It owns the request lifecycle on the worker side: `hello` and `ready` at start, dispatching
requests to handler tasks (several at once), answering pings while handlers run, cancellation
with exactly one response per request, graceful shutdown on `shutdown` or stdin EOF, and exiting
when the supervisor dies.

Threads, and why: stdin is read by a thread so that any kind of fd works and so that a line
reader never sits on the loop; the parent watchdog is a thread so that it still fires when a
handler blocks the loop forever (that worker is hung, and must not outlive its supervisor).
Everything else happens on the loop thread. A handler that blocks the loop stops the pongs,
which is exactly what the supervisor's heartbeat is there to notice.

Writes to the protocol stream are synchronous and serialised by the stream's lock. The
supervisor always drains the worker's stdout, so a blocked write means it is gone or wedged,
and the heartbeat settles that case too.
"""

import asyncio
import contextlib
import importlib.metadata
import inspect
import logging
import os
import platform
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

import mnemosyne
from mnemosyne.runtime import wire
from mnemosyne.runtime.stdio import ProtocolStream, take_protocol_stream

log = logging.getLogger("mnemosyne.runtime")

Handler = Callable[[Any, "RequestContext"], Awaitable[Any]]
Methods = Mapping[str, Handler]

EXIT_OK = 0
# The worker lost its supervisor (parent death): nobody is left to read an exit code.
EXIT_ORPHANED = 1
# EX_DATAERR: the supervisor sent a line over the limit, which it promises never to do, so the
# stream cannot be trusted; crashing makes the supervisor restart the worker.
EXIT_OVERSIZE_INPUT = 65
# EX_CONFIG: the supervisor does not restart a worker that exits with it until asked.
EXIT_CONFIG = 78

# After stdin EOF, in-flight work gets this long to finish before it is cancelled. The
# supervisor sends SIGTERM about a second after closing stdin, so this stays well below that,
# leaving cancelled handlers time to unwind and answer.
EOF_GRACE_S = 0.5
# How long cancelled handlers get to unwind before the worker exits without them.
CANCEL_GRACE_S = 1.0
PARENT_POLL_INTERVAL_S = 1.0
READ_CHUNK_BYTES = 64 * 1024
# Lines the reader thread may hand to the loop before it waits, bounding memory when the loop
# is slower than the supervisor.
INBOX_SLOTS = 64
TRACEBACK_LINES = 20

# Whether an error code may succeed when the same request is sent again (protocol README).
RETRYABLE = {
    "invalid_request": False,
    "method_not_found": False,
    "invalid_params": False,
    "cancelled": True,
    "deadline_exceeded": True,
    "shutting_down": True,
    "rate_limited": True,
    "provider_unavailable": True,
    "provider_error": False,
    "config": False,
    "internal": False,
}


class RequestError(Exception):
    """Raised by a handler to answer its request with a specific protocol error."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = RETRYABLE.get(code, False) if retryable is None else retryable
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return _error(self.code, self.message, retryable=self.retryable, details=self.details)


def _error(
    code: str,
    message: str,
    *,
    retryable: bool | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "retryable": RETRYABLE.get(code, False) if retryable is None else retryable,
    }
    if details is not None:
        body["details"] = details
    return body


class RequestContext:
    """What a handler knows about the request it serves, and how it talks back."""

    def __init__(
        self, worker: "Worker", id: str, method: str, delivery: int, deadline: float
    ) -> None:
        self._worker = worker
        self.id = id
        self.method = method
        # How many times the supervisor has delivered this request (2+ after a worker was lost).
        self.delivery = delivery
        # The deadline on the event loop's clock (`asyncio.get_running_loop().time()`).
        self.deadline = deadline

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline - asyncio.get_running_loop().time()

    async def progress(
        self, message: str | None = None, fraction: float | None = None, data: Any = None
    ) -> None:
        """Sends a `progress` notification, unless the request has already been answered."""
        self._worker.send_progress(self.id, message, fraction, data)

    def write_raw_line(self, data: bytes) -> None:
        """Writes `data` and a newline to the protocol stream as they are, unchecked.

        Only for fixtures that must misbehave on the wire on purpose.
        """
        self._worker.stream.write_line(data)


@dataclass
class _InFlight:
    task: asyncio.Task[Any]
    context: RequestContext
    cancel_message: str | None = None


@dataclass(frozen=True)
class _EndOfInput:
    partial: bytes | None


def run_worker(
    role: str,
    methods: Methods | Callable[[], Methods] | None = None,
    provider: str | None = None,
) -> int:
    """Runs a worker until it is told to stop; returns the process exit code.

    `methods` maps method names to async handlers `handler(params, ctx)`; the diagnostic methods
    are always served as well. It may also be a function returning that mapping: it is called
    after `hello` has been sent, so a role can import heavy dependencies there and any noise
    they make still lands on stderr. Takes the protocol stream if the caller has not yet.
    """
    stream = take_protocol_stream()
    configure_logging()
    try:
        limit = wire.max_line_bytes()
    except ValueError as error:
        fatal("config", str(error))
    start_parent_watchdog()
    worker = Worker(stream, limit)
    worker.send(hello_message(role, provider))

    # Imported here because diagnostics imports this module for RequestContext.
    from mnemosyne.runtime import diagnostics

    table: dict[str, Handler] = dict(diagnostics.METHODS)
    if callable(methods):
        methods = methods()
    table.update(methods or {})
    return worker.run(table)


def hello_message(
    role: str, provider: str | None = None, protocol: int | None = None
) -> dict[str, Any]:
    """The `hello` this process sends; `protocol` is overridable for test fixtures only."""
    return {
        "type": "hello",
        "protocol": mnemosyne.PROTOCOL_VERSION if protocol is None else protocol,
        "role": role,
        "pid": os.getpid(),
        "python": platform.python_version(),
        "package": mnemosyne.__version__,
        "anthropic": _installed_version("anthropic"),
        "provider": provider,
    }


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def configure_logging() -> None:
    """Sends Python logging to stderr, which the supervisor drains into its own logs."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    # No timestamp: the supervisor stamps every stderr line it re-emits.
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def fatal(code: str, message: str) -> NoReturn:
    """Sends a `fatal` message and exits with 78, which the supervisor does not restart.

    Usable at any time, even before `hello` and from any thread.
    """
    stream = take_protocol_stream()
    print(f"fatal ({code}): {message}", file=sys.stderr)
    try:
        limit = wire.max_line_bytes()
    except ValueError:
        limit = wire.DEFAULT_MAX_LINE_BYTES
    with contextlib.suppress(OSError, ValueError):
        line = wire.encode_message({"type": "fatal", "code": code, "message": message}, limit)
        stream.write_line(line)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    # os._exit rather than SystemExit: fatal may be called from a handler task or a thread,
    # where SystemExit would be caught or lost, and nothing else is worth finishing now.
    os._exit(EXIT_CONFIG)


def send_log(
    level: str,
    message: str,
    *,
    logger: str | None = None,
    fields: dict[str, Any] | None = None,
) -> None:
    """Sends a structured `log` message, which the supervisor re-emits under the agent's span.

    `level` is one of debug, info, warning, error. Failures to send are reported on stderr and
    otherwise ignored: a log record is never worth crashing for.
    """
    record: dict[str, Any] = {"type": "log", "level": level, "message": message}
    if logger is not None:
        record["logger"] = logger
    if fields is not None:
        record["fields"] = fields
    try:
        limit = wire.max_line_bytes()
        take_protocol_stream().write_line(wire.encode_message(record, limit))
    except (OSError, ValueError, TypeError) as error:
        print(f"could not send log record: {error}", file=sys.stderr)


def start_parent_watchdog() -> None:
    """Exits the process promptly once the supervisor is gone.

    Stdin EOF usually says so first, but not always: EOF never comes while another process
    still holds the pipe's write end. So a thread polls: the worker exits when its parent pid
    changes (it was re-parented), or when MNEMOSYNE_SUPERVISOR_PID names a process other than
    the parent (a launcher in between) and that process has died. Comparing against the parent
    seen at start, never against 1, keeps a deliberately daemonised worker alive.
    """
    initial_parent = os.getppid()
    raw = os.environ.get("MNEMOSYNE_SUPERVISOR_PID", "")
    supervisor = int(raw) if raw.isdigit() and int(raw) > 0 else None
    if supervisor == initial_parent:
        supervisor = None

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_INTERVAL_S)
            if os.getppid() != initial_parent:
                reason = f"parent process {initial_parent} is gone"
            elif supervisor is not None and not _process_alive(supervisor):
                reason = f"supervisor process {supervisor} is gone"
            else:
                continue
            print(f"exiting: {reason}", file=sys.stderr, flush=True)
            os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="mnemosyne-parent-watchdog", daemon=True).start()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A dead process stays visible as a zombie until its parent reaps it.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


class Worker:
    """The request loop of one worker process; see the module docstring."""

    def __init__(self, stream: ProtocolStream, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self._methods: dict[str, Handler] = {}
        self._inflight: dict[str, _InFlight] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit: asyncio.Future[int] | None = None
        self._inbox_slots = threading.BoundedSemaphore(INBOX_SLOTS)
        self._stopping = False
        self._drain_deadline: float | None = None
        self._drain_task: asyncio.Task[None] | None = None
        # Once the worker has decided to exit, it writes nothing more.
        self._closed = False
        self._wire_lost = False
        self.stray_lines = 0
        self.unknown_messages = 0
        self.violations = 0

    # -- running ------------------------------------------------------------------------------

    def run(self, methods: Mapping[str, Handler]) -> int:
        self._methods = dict(methods)
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(self._serve(loop))
        finally:
            self._closed = True
            _cancel_leftovers(loop)
            loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> int:
        self._loop = loop
        self._exit = loop.create_future()
        self.send({"type": "ready", "methods": sorted(self._methods)})
        threading.Thread(target=self._read_input, name="mnemosyne-stdin", daemon=True).start()
        return await self._exit

    def _finish(self, code: int) -> None:
        self._closed = True
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)

    # -- input (reader thread) ----------------------------------------------------------------

    def _read_input(self) -> None:
        splitter = wire.LineSplitter(self.limit)
        fd = self.stream.read_fd
        try:
            while fd is not None:
                chunk = os.read(fd, READ_CHUNK_BYTES)
                if not chunk:
                    break
                for item in splitter.feed(chunk):
                    if not self._post(item):
                        return
        except OSError as error:
            print(f"reading the protocol stream failed: {error}", file=sys.stderr)
        self._post(_EndOfInput(splitter.finish()))

    def _post(self, item: object) -> bool:
        self._inbox_slots.acquire()
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._receive, item)
        except RuntimeError:
            return False  # the loop is closed: the worker is exiting
        return True

    # -- input (loop thread) ------------------------------------------------------------------

    def _receive(self, item: object) -> None:
        try:
            if self._closed:
                return  # the worker is exiting; nothing received now can change that
            if isinstance(item, bytes):
                self._receive_line(item)
            elif isinstance(item, _EndOfInput):
                self._receive_eof(item.partial)
            else:
                self.violations += 1
                log.error(
                    "received a line over the %d-byte limit, which the supervisor never sends; "
                    "the stream cannot be trusted, exiting with %d",
                    self.limit,
                    EXIT_OVERSIZE_INPUT,
                )
                self._finish(EXIT_OVERSIZE_INPUT)
        finally:
            self._inbox_slots.release()

    def _receive_eof(self, partial: bytes | None) -> None:
        if partial is not None:
            self.violations += 1
            log.error("stdin ended in the middle of a line: %s", wire.preview(partial))
        if not self._stopping:
            log.info("stdin closed: finishing in-flight work and exiting")
            self._begin_shutdown(EOF_GRACE_S, "stdin closed")

    def _receive_line(self, line: bytes) -> None:
        decoded = wire.decode_line(line, wire.Sender.SUPERVISOR)
        kind = decoded.kind
        if kind is wire.LineKind.MESSAGE:
            assert decoded.message is not None
            self._dispatch(decoded.message)
        elif kind is wire.LineKind.STRAY:
            self.stray_lines += 1
            log.warning("stray line on stdin (%d so far): %s", self.stray_lines, decoded.preview)
        elif kind is wire.LineKind.UNKNOWN:
            self.unknown_messages += 1
            log.warning("ignoring message of unknown type %r", decoded.type)
        elif kind is wire.LineKind.VIOLATION:
            self.violations += 1
            log.error("protocol violation on stdin: %s: %s", decoded.reason, decoded.preview)
            self._answer_malformed_request(decoded)

    def _answer_malformed_request(self, decoded: wire.Decoded) -> None:
        message = decoded.message
        if decoded.type != "request" or message is None:
            return
        request_id = message.get("id")
        if isinstance(request_id, str) and request_id not in self._inflight:
            self._respond(request_id, error=_error("invalid_request", str(decoded.reason)))

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ping":
            self.send({"type": "pong", "nonce": message["nonce"]})
        elif kind == "request":
            self._start_request(message)
        elif kind == "cancel":
            self._cancel_request(message["id"], message.get("reason"))
        elif kind == "shutdown":
            reason = message.get("reason")
            because = f" ({reason})" if reason else ""
            log.info("shutdown requested%s, grace %d ms", because, message["grace_ms"])
            self._begin_shutdown(message["grace_ms"] / 1000, reason or "shutdown requested")
        # A pong answers a ping this worker sent; nothing waits for it yet.

    # -- requests -----------------------------------------------------------------------------

    def _start_request(self, message: dict[str, Any]) -> None:
        request_id: str = message["id"]
        method: str = message["method"]
        if request_id in self._inflight:
            # Answering would look like the answer to the request already running.
            self.violations += 1
            log.error("ignoring request %r: a request with that id is in flight", request_id)
            return
        if self._stopping:
            self._respond(request_id, error=_error("shutting_down", "the worker is shutting down"))
            return
        handler = self._methods.get(method)
        if handler is None:
            served = ", ".join(sorted(self._methods))
            text = f"no method {method!r}; this worker serves {served}"
            self._respond(request_id, error=_error("method_not_found", text))
            return
        assert self._loop is not None
        deadline = self._loop.time() + message["deadline_ms"] / 1000
        context = RequestContext(self, request_id, method, message.get("delivery", 1), deadline)
        params = message.get("params", {})
        task = self._loop.create_task(_call(handler, params, context), name=f"request {request_id}")
        self._inflight[request_id] = _InFlight(task, context)
        task.add_done_callback(partial(self._request_done, request_id))

    def _cancel_request(self, request_id: str, reason: str | None) -> None:
        entry = self._inflight.get(request_id)
        if entry is None:
            log.debug("ignoring cancel of %r: not in flight", request_id)
            return
        # Whatever happens next, the done callback sends the one response: `cancelled`, or the
        # result if the handler finished (or swallowed the cancellation) first.
        entry.cancel_message = f"cancelled by the supervisor: {reason or 'no reason given'}"
        entry.task.cancel()

    def _request_done(self, request_id: str, task: asyncio.Task[Any]) -> None:
        entry = self._inflight.pop(request_id, None)
        if task.cancelled():
            text = entry.cancel_message if entry and entry.cancel_message else "cancelled"
            self._respond(request_id, error=_error("cancelled", text))
            return
        error = task.exception()
        if error is None:
            self._respond(request_id, result=task.result())
        elif isinstance(error, RequestError):
            self._respond(request_id, error=error.to_wire())
        else:
            log.error("request %r failed", request_id, exc_info=error)
            self._respond(request_id, error=_internal_error(error))

    def _respond(self, request_id: str, *, result: Any = None, error: Any = None) -> None:
        message: dict[str, Any] = {"type": "response", "id": request_id}
        if error is None:
            message["result"] = result
        else:
            message["error"] = error
        try:
            line = wire.encode_message(message, self.limit)
        except (ValueError, TypeError, RecursionError) as problem:
            # Only a result can fail to encode; the error replacing it is small and plain.
            log.error("cannot send the result of %r: %s", request_id, problem)
            text = f"result cannot be sent: {problem}"
            fallback = {"type": "response", "id": request_id, "error": _error("internal", text)}
            line = wire.encode_message(fallback, self.limit)
        self._write(line)

    def send_progress(
        self, request_id: str, message: str | None, fraction: float | None, data: Any
    ) -> None:
        if request_id not in self._inflight:
            return
        notification: dict[str, Any] = {"type": "progress", "id": request_id}
        if message is not None:
            notification["message"] = message
        if fraction is not None:
            # The protocol bounds fraction to 0..1; rounding drift must not make a violation.
            notification["fraction"] = min(1.0, max(0.0, float(fraction)))
        if data is not None:
            notification["data"] = data
        try:
            self.send(notification)
        except (ValueError, TypeError) as problem:
            log.warning("dropping progress of %r: %s", request_id, problem)

    # -- shutdown -----------------------------------------------------------------------------

    def _begin_shutdown(self, grace_s: float, why: str) -> None:
        assert self._loop is not None
        deadline = self._loop.time() + max(0.0, grace_s)
        # A later shutdown may shorten the grace period but never extends it.
        if self._drain_deadline is not None and deadline >= self._drain_deadline:
            return
        self._stopping = True
        self._drain_deadline = deadline
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._drain_task = self._loop.create_task(self._drain(deadline, why))

    async def _drain(self, deadline: float, why: str) -> None:
        assert self._loop is not None
        running = [entry.task for entry in self._inflight.values()]
        if running:
            await asyncio.wait(running, timeout=max(0.0, deadline - self._loop.time()))
        leftover = list(self._inflight.values())
        for entry in leftover:
            entry.cancel_message = f"cancelled by shutdown: {why}"
            entry.task.cancel()
        if leftover:
            _, stubborn = await asyncio.wait([e.task for e in leftover], timeout=CANCEL_GRACE_S)
            if stubborn:
                log.warning("exiting with %d request(s) that ignored cancellation", len(stubborn))
        self._finish(EXIT_OK)

    # -- output -------------------------------------------------------------------------------

    def send(self, message: Mapping[str, Any]) -> None:
        """Encodes and writes one message; raises LineTooLong or TypeError if it cannot be sent."""
        self._write(wire.encode_message(message, self.limit))

    def _write(self, line: bytes) -> None:
        if self._closed or self._wire_lost:
            return
        try:
            self.stream.write_line(line)
        except OSError as error:
            # The supervisor closed our stdout, so it is gone or killing us: stop as on EOF,
            # without the grace period, since no answer can reach it any more.
            self._wire_lost = True
            print(f"protocol stream lost: {error}", file=sys.stderr)
            if self._loop is not None:
                self._begin_shutdown(0.0, "stdout closed")


async def _call(handler: Handler, params: Any, context: RequestContext) -> Any:
    result = handler(params, context)
    # Accepting plain functions too costs nothing and saves a confusing TypeError.
    if inspect.isawaitable(result):
        result = await result
    return result


def _internal_error(error: BaseException) -> dict[str, Any]:
    lines = "".join(traceback.format_exception(error)).splitlines()
    details = {"traceback": "\n".join(lines[-TRACEBACK_LINES:])}
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return _error("internal", text, details=details)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancels tasks still running at exit, giving them a bounded time to unwind."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=CANCEL_GRACE_S))
    with contextlib.suppress(RuntimeError):
        loop.run_until_complete(loop.shutdown_asyncgens())
