"""A fake Anthropic Messages API for tests: scriptable, recording, stdlib only.

It speaks enough of the real API for the official SDK (0.x and 2.x) to talk to it unchanged
through `ANTHROPIC_BASE_URL`: `POST /v1/messages` as JSON or as server-sent events in the
real order (`message_start`, `ping`, per block `content_block_start` / deltas /
`content_block_stop`, `message_delta` with cumulative usage, `message_stop`), `tool_use`
blocks streamed as `input_json_delta` pieces, `POST /v1/messages/count_tokens` and
`GET /v1/models`. Every response carries a `request-id` header, and error bodies the same
`request_id`. A request authenticates with `x-api-key: KEY` (SDK 0.x, 1.x) or
`Authorization: Bearer KEY` (SDK 2.x); any `anthropic-version` is accepted.

Tests script what each `/v1/messages` request gets with a queue of entries (see `ENTRY_KINDS`
and `FakeAnthropic.script`), and read back every request received (`FakeAnthropic.requests`).
It binds 127.0.0.1 only. Three ways to drive it:

- Python: `with FakeAnthropic(key="k") as fake: fake.script([...]); ...; fake.requests`.
- HTTP, for other languages: `POST /_fake/script` (a JSON list of entries, appended),
  `GET /_fake/requests`, `POST /_fake/reset`.
- CLI: `python tests/fake_anthropic/server.py --key KEY [--port 0] [--script FILE]` prints
  `{"url": "http://127.0.0.1:PORT"}` as its first stdout line, then serves until its stdin
  closes or it gets SIGTERM.

For soak tests a `chaos` entry (usually `repeat: true`) draws each answer at random: a 429,
500 or 529, a hang, or the scripted answer after a random delay, from a generator seeded with
`--seed` (`FakeAnthropic(seed=...)`), so a failing run can be replayed. `GET /_fake/chaos`
counts what it drew, and `--no-record` keeps a long soak from storing every request body.

Retry-after values are in milliseconds and should stay small: SDK 2.x honours any
`retry-after`, so a large one stalls a test for as long as it says.
"""

import argparse
import copy
import itertools
import json
import math
import random
import select
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

DEFAULT_KEY = "sk-ant-fake-test-key"
DEFAULT_TEXT = "This is a fake answer from the fake Anthropic server."
# The reviewer's quality gates; a `review` entry without `gates` reports on all of them.
REVIEW_GATES = (
    "intent_satisfied",
    "tests_passing",
    "documentation_complete",
    "no_anti_patterns",
    "constraints_maintained",
    "completeness",
    "correctness",
    "principled_implementation",
)
# Characters per text delta; small enough that every answer of a few words streams in pieces.
TEXT_DELTA_CHARS = 16
# Characters per input_json_delta; a tool input always arrives in more than one piece.
JSON_DELTA_CHARS = 8
# How often a thread waiting on a hung or delayed request checks whether to give up.
POLL_S = 0.05

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STATUS_MESSAGES = {
    400: "invalid request",
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}
# The status a non-streamed request gets for a `stream_error` entry, which only a stream can
# deliver as an event.
STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
# What GET /v1/models lists; /v1/messages answers for any model the request names.
MODELS = (
    ("claude-sonnet-5-5", "Claude Sonnet 5.5", "2026-09-01T00:00:00Z"),
    ("claude-haiku-4-5", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    ("claude-sonnet-4-5", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
)

# Entry kinds and the fields each may carry; every entry may also carry `match` (used only
# for a request whose prompt text contains it), `times` (queued that many times) and
# `repeat` (never used up).
ENTRY_KINDS: dict[str, set[str]] = {
    # A text answer. `stop_reason` defaults to end_turn; `usage` overrides the word counts.
    "text": {"text", "usage", "stop_reason", "model"},
    # A tool call, after an optional text preamble; stop_reason tool_use.
    "tool_use": {"name", "input", "text", "id", "usage", "model"},
    # A JSON reviewer verdict as the answer text; `fenced` wraps it in a ```json block.
    "review": {
        "passed",
        "gates",
        "issues",
        "recommendations",
        "confidence",
        "fenced",
        "usage",
        "model",
    },
    # Waits `seconds` before answering with `then` (the default answer if absent).
    "delay": {"seconds", "then"},
    # An error answer: `status`, `error_type` (by status if absent), `message`,
    # `retry_after_ms` (retry-after-ms header), `retry_after_s` (a raw retry-after header),
    # `should_retry` (x-should-retry header), `error_code` (error.details.error_code).
    "status": {
        "status",
        "error_type",
        "message",
        "retry_after_ms",
        "retry_after_s",
        "should_retry",
        "error_code",
    },
    # Reads the request and never answers, until the client hangs up or the server stops.
    "hang": set(),
    # Streams `after_deltas` deltas of `text`, then `event: error` with `error_type`.
    "stream_error": {"error_type", "message", "after_deltas", "text"},
    # Streams `after_deltas` deltas of `text`, then ends the body before message_stop:
    # cleanly (`mode` "eof", the SDK raises nothing) or by breaking the chunked body (`mode`
    # "cut", the HTTP library raises RemoteProtocolError).
    "truncate": {"mode", "after_deltas", "text"},
    # A random answer per request, drawn from the server's seeded generator: a 429, 500 or
    # 529 (`p_429`, `p_500`, `p_529`: their probabilities; `retry_after_ms` for their
    # retry-after-ms header) or a `hang` (`p_hang`); otherwise `then` (the default answer if
    # absent), first waiting up to `max_delay_s` with probability `p_delay`.
    "chaos": {
        "p_429",
        "p_500",
        "p_529",
        "p_hang",
        "p_delay",
        "max_delay_s",
        "retry_after_ms",
        "then",
    },
}
# The faults a `chaos` entry draws from, in the order of the draw, with their probability field.
CHAOS_FAULTS = (("429", "p_429"), ("500", "p_500"), ("529", "p_529"), ("hang", "p_hang"))
# What a chaos 429/500/529 tells the SDK to wait when the entry names nothing: short, so a
# soak spends its time on faults rather than on waiting.
CHAOS_RETRY_AFTER_MS = 5
COMMON_FIELDS = {"kind", "match", "times", "repeat"}


class ScriptError(ValueError):
    """A script entry the fake does not understand."""


def validate_entry(entry: Any) -> dict[str, Any]:
    """The entry, checked; ScriptError says what is wrong with it."""
    if not isinstance(entry, dict):
        raise ScriptError(f"a script entry must be an object, got {entry!r}")
    kind = entry.get("kind")
    if kind not in ENTRY_KINDS:
        raise ScriptError(f"unknown script entry kind {kind!r}; known: {', '.join(ENTRY_KINDS)}")
    unknown = set(entry) - ENTRY_KINDS[kind] - COMMON_FIELDS
    if unknown:
        raise ScriptError(f"unknown fields for a {kind!r} entry: {', '.join(sorted(unknown))}")
    if "match" in entry and not isinstance(entry["match"], str):
        raise ScriptError("`match` must be a string")
    times = entry.get("times", 1)
    if not isinstance(times, int) or times < 1:
        raise ScriptError("`times` must be a positive integer")
    if kind == "tool_use" and not isinstance(entry.get("name"), str):
        raise ScriptError("a tool_use entry needs a `name`")
    if kind == "tool_use" and not isinstance(entry.get("input", {}), dict):
        raise ScriptError("the `input` of a tool_use entry must be an object")
    if kind == "status" and entry.get("status") not in range(400, 600):
        raise ScriptError("a status entry needs a `status` from 400 to 599")
    if kind == "delay":
        seconds = entry.get("seconds")
        if not isinstance(seconds, int | float) or seconds < 0:
            raise ScriptError("a delay entry needs non-negative `seconds`")
        if "then" in entry:
            validate_entry(entry["then"])
    if kind == "truncate" and entry.get("mode", "eof") not in ("eof", "cut"):
        raise ScriptError("the `mode` of a truncate entry is `eof` or `cut`")
    if kind == "chaos":
        _validate_chaos(entry)
    return entry


def _validate_chaos(entry: dict[str, Any]) -> None:
    for name in ("p_429", "p_500", "p_529", "p_hang", "p_delay"):
        p = entry.get(name, 0)
        if not isinstance(p, int | float) or not 0 <= p <= 1:
            raise ScriptError(f"`{name}` of a chaos entry must be a probability from 0 to 1")
    if sum(entry.get(field, 0) for _, field in CHAOS_FAULTS) > 1:
        raise ScriptError("the fault probabilities of a chaos entry add up to more than 1")
    for name in ("max_delay_s", "retry_after_ms"):
        value = entry.get(name, 0)
        if not isinstance(value, int | float) or value < 0:
            raise ScriptError(f"`{name}` of a chaos entry must be a non-negative number")
    if "then" in entry:
        then = validate_entry(entry["then"])
        if then["kind"] == "chaos":
            raise ScriptError("the `then` of a chaos entry cannot be another chaos entry")


def prompt_text(body: Any) -> str:
    """The readable text of a Messages request: its system prompt and every message's text
    and tool results, one part a line. `match` entries search this."""
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    parts.extend(_content_text(body.get("system")))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            parts.extend(_content_text(message.get("content")))
    return "\n".join(parts)


def _content_text(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                yield str(block.get("text", ""))
            elif block.get("type") == "tool_result":
                yield from _content_text(block.get("content"))


def review_text(entry: Mapping[str, Any]) -> str:
    """The verdict a `review` entry answers with, as the reviewer asks for it."""
    passed = bool(entry.get("passed", True))
    gates = entry.get("gates")
    if gates is None:
        gates = {gate: True for gate in REVIEW_GATES}
        if not passed:
            gates["correctness"] = False
    issues = entry.get("issues")
    if issues is None:
        issues = [] if passed else ["the execution does not do what the task asks"]
    verdict = {
        "passed": passed,
        "gates": gates,
        "issues": issues,
        "recommendations": entry.get("recommendations", []),
        "confidence": entry.get("confidence", 0.9),
    }
    text = json.dumps(verdict, indent=2)
    return f"```json\n{text}\n```" if entry.get("fenced") else text


def _words(text: str) -> int:
    return len(text.split())


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class FakeAnthropic:
    """The fake API server; start it, script it, read what it received, stop it."""

    def __init__(
        self,
        key: str = DEFAULT_KEY,
        port: int = 0,
        *,
        verbose: bool = False,
        seed: int | None = None,
        record: bool = True,
    ) -> None:
        self.key = key
        self._port = port
        self.verbose = verbose
        self.seed = seed
        # Off for long soaks: the bodies of tens of thousands of requests would pile up here.
        self.record = record
        self._lock = threading.Condition()
        self._queue: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._rng = random.Random(seed)
        self._chaos_counts: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle.

    def start(self) -> "FakeAnthropic":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._httpd.daemon_threads = True
        # A short poll interval makes stop() quick: shutdown waits for the serving loop to
        # notice, and the default interval (0.5 s) would add that to every test.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": POLL_S},
            name="fake-anthropic",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving; requests still hanging or delayed are dropped."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeAnthropic":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the fake server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """The environment that points a worker (or the SDK) at this server."""
        return {
            "MNEMOSYNE_PROVIDER": "anthropic",
            "ANTHROPIC_API_KEY": self.key,
            "ANTHROPIC_BASE_URL": self.url,
        }

    # Scripting and recording.

    def script(self, entries: Iterable[dict[str, Any]]) -> None:
        """Appends entries to the queue; raises ScriptError (a ValueError) on a bad one."""
        checked = [validate_entry(copy.deepcopy(entry)) for entry in entries]
        with self._lock:
            for entry in checked:
                self._queue.extend(copy.deepcopy(entry) for _ in range(entry.get("times", 1)))

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every API request received so far, oldest first (control requests excluded)."""
        with self._lock:
            return copy.deepcopy(self._requests)

    @property
    def pending(self) -> int:
        """Script entries not used yet (a `repeat` entry counts once)."""
        with self._lock:
            return len(self._queue)

    def wait_for_requests(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Blocks until `count` requests have arrived; TimeoutError after `timeout_s`."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout_s):
                raise TimeoutError(
                    f"{len(self._requests)} of {count} requests arrived within {timeout_s} s"
                )
            return copy.deepcopy(self._requests)

    @property
    def chaos_counts(self) -> dict[str, int]:
        """How often `chaos` entries answered each way: `429`, `500`, `529`, `hang`,
        `delay` (then answered) and `ok` (answered at once)."""
        with self._lock:
            return dict(self._chaos_counts)

    def reset(self) -> None:
        """Forgets the queue, the recorded requests and the chaos counts."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._chaos_counts.clear()

    # Used by the handler.

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_fake_{next(self._ids)}"

    def _record(self, record: dict[str, Any]) -> None:
        if not self.record:
            return
        with self._lock:
            self._requests.append(record)
            self._lock.notify_all()

    def _draw_chaos(self, entry: Mapping[str, Any]) -> tuple[str, float]:
        """One outcome of a chaos entry (a fault from CHAOS_FAULTS, `delay` or `ok`) and the
        seconds to wait before answering. One lock keeps the draws of concurrent requests
        in one sequence, so a seed gives the same mix (if not the same order of requests)."""
        with self._lock:
            roll = self._rng.random()
            outcome = "ok"
            for fault, field in CHAOS_FAULTS:
                roll -= entry.get(field, 0)
                if roll < 0:
                    outcome = fault
                    break
            delay_s = 0.0
            if outcome == "ok" and self._rng.random() < entry.get("p_delay", 0):
                outcome = "delay"
                delay_s = self._rng.uniform(0, entry.get("max_delay_s", 0))
            self._chaos_counts[outcome] = self._chaos_counts.get(outcome, 0) + 1
            return outcome, delay_s

    def _take_entry(self, text: str) -> dict[str, Any] | None:
        """The entry for a request with prompt `text`: the first queued `match` entry whose
        substring it contains, else the first entry without `match`, else None."""
        with self._lock:
            chosen = next(
                (e for e in self._queue if "match" in e and e["match"] in text), None
            ) or next((e for e in self._queue if "match" not in e), None)
            if chosen is not None and not chosen.get("repeat"):
                self._queue.remove(chosen)
            return copy.deepcopy(chosen) if chosen is not None else None


class _ClientGone(Exception):
    """The client closed the connection, or the server is stopping; nothing more to send."""


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAnthropic
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic/1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.fake.verbose:
            sys.stderr.write("fake-anthropic: " + (format % args) + "\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # Routing.

    def _dispatch(self, method: str) -> None:
        # One request per connection keeps the thread of each connection short-lived, so a
        # stopped server leaves nothing waiting for a next request.
        self.close_connection = True
        try:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            path = self.path.split("?", 1)[0]
            if path.startswith("/_fake/"):
                self._control(method, path, raw)
            else:
                self._api(method, path, raw)
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            pass

    def _control(self, method: str, path: str, raw: bytes) -> None:
        fake = self.fake
        if method == "POST" and path == "/_fake/script":
            try:
                entries = json.loads(raw or b"[]")
                fake.script(entries if isinstance(entries, list) else [entries])
            except (ValueError, TypeError) as error:
                self._json(400, {"error": str(error)})
                return
            self._json(200, {"queued": fake.pending})
        elif method == "GET" and path == "/_fake/requests":
            self._json(200, fake.requests)
        elif method == "GET" and path == "/_fake/chaos":
            self._json(200, fake.chaos_counts)
        elif method == "POST" and path == "/_fake/reset":
            fake.reset()
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": f"no control endpoint {method} {path}"})

    def _api(self, method: str, path: str, raw: bytes) -> None:
        fake = self.fake
        request_id = fake._next_id("req")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        auth = None
        if "x-api-key" in headers:
            auth = "x-api-key"
            given = headers["x-api-key"]
            headers["x-api-key"] = "[redacted]"
        elif headers.get("authorization", "").lower().startswith("bearer "):
            auth = "bearer"
            given = headers["authorization"][len("bearer ") :]
            headers["authorization"] = "[redacted]"
        else:
            given = None
        retry_count = headers.get("x-stainless-retry-count")
        fake._record(
            {
                "method": method,
                "path": path,
                "headers": headers,
                "auth": auth,
                "body": body,
                "retry_count": int(retry_count) if retry_count and retry_count.isdigit() else None,
                "request_id": request_id,
            }
        )
        if given != fake.key:
            message = "invalid x-api-key" if given else "x-api-key header is required"
            self._error(401, "authentication_error", message, request_id)
            return
        if raw and body is None:
            self._error(400, "invalid_request_error", "the body is not JSON", request_id)
            return
        if method == "POST" and path == "/v1/messages":
            self._messages(body, request_id)
        elif method == "POST" and path == "/v1/messages/count_tokens":
            tokens = max(1, _words(prompt_text(body)))
            self._json(200, {"input_tokens": tokens}, request_id)
        elif method == "GET" and path == "/v1/models":
            self._json(200, _models_page(), request_id)
        elif method == "GET" and path.startswith("/v1/models/"):
            model = next((m for m in _models_page()["data"] if path.endswith("/" + m["id"])), None)
            if model is None:
                self._error(404, "not_found_error", f"model not found: {path}", request_id)
            else:
                self._json(200, model, request_id)
        else:
            self._error(404, "not_found_error", f"not found: {method} {path}", request_id)

    # The Messages endpoint.

    def _messages(self, body: Any, request_id: str) -> None:
        if not isinstance(body, dict):
            self._error(400, "invalid_request_error", "the body must be an object", request_id)
            return
        for name, kind in (("model", str), ("max_tokens", int), ("messages", list)):
            if not isinstance(body.get(name), kind):
                message = f"{name}: Field required"
                self._error(400, "invalid_request_error", message, request_id)
                return
        text = prompt_text(body)
        entry = self.fake._take_entry(text) or {"kind": "text", "text": DEFAULT_TEXT}
        self._answer(entry, body, text, request_id)

    def _answer(
        self, entry: dict[str, Any], body: dict[str, Any], text: str, request_id: str
    ) -> None:
        kind = entry["kind"]
        stream = body.get("stream") is True
        if kind == "delay":
            self._wait(entry["seconds"])
            then = entry.get("then") or {"kind": "text", "text": DEFAULT_TEXT}
            self._answer(then, body, text, request_id)
        elif kind == "chaos":
            outcome, delay_s = self.fake._draw_chaos(entry)
            if outcome == "hang":
                self._wait(math.inf)
            elif outcome in ("429", "500", "529"):
                retry_after_ms = entry.get("retry_after_ms", CHAOS_RETRY_AFTER_MS)
                fault = {"kind": "status", "status": int(outcome), "retry_after_ms": retry_after_ms}
                self._status(fault, request_id)
            else:
                self._wait(delay_s)
                then = entry.get("then") or {"kind": "text", "text": DEFAULT_TEXT}
                self._answer(then, body, text, request_id)
        elif kind == "hang":
            self._wait(math.inf)
        elif kind == "status":
            self._status(entry, request_id)
        elif kind == "stream_error" and not stream:
            error_type = entry.get("error_type", "overloaded_error")
            status = STATUS_OF_ERROR_TYPE.get(error_type, 500)
            message = entry.get("message", error_type)
            self._error(status, error_type, message, request_id)
        else:
            message = self._message(entry, body, text)
            if stream:
                self._sse(entry, message, request_id)
            elif kind == "truncate":
                self._json(200, message, request_id, cut=True)
            else:
                self._json(200, message, request_id)

    def _message(self, entry: dict[str, Any], body: dict[str, Any], text: str) -> dict[str, Any]:
        kind = entry["kind"]
        content: list[dict[str, Any]] = []
        stop_reason = entry.get("stop_reason", "end_turn")
        if kind == "review":
            content.append({"type": "text", "text": review_text(entry)})
        elif kind == "tool_use":
            if entry.get("text"):
                content.append({"type": "text", "text": entry["text"]})
            content.append(
                {
                    "type": "tool_use",
                    "id": entry.get("id") or self.fake._next_id("toolu"),
                    "name": entry["name"],
                    "input": entry.get("input", {}),
                }
            )
            stop_reason = "tool_use"
        else:
            content.append({"type": "text", "text": entry.get("text", DEFAULT_TEXT)})
        output_words = sum(
            _words(block["text"]) if block["type"] == "text" else _words(json.dumps(block["input"]))
            for block in content
        )
        usage = {
            "input_tokens": max(1, _words(text)),
            "output_tokens": max(1, output_words),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        usage.update(entry.get("usage") or {})
        return {
            "id": self.fake._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": entry.get("model") or body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }

    def _status(self, entry: dict[str, Any], request_id: str) -> None:
        status = entry["status"]
        error_type = entry.get("error_type") or ERROR_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        extra: dict[str, str] = {}
        if "retry_after_ms" in entry:
            extra["retry-after-ms"] = str(entry["retry_after_ms"])
        if "retry_after_s" in entry:
            extra["retry-after"] = str(entry["retry_after_s"])
        if "should_retry" in entry:
            extra["x-should-retry"] = "true" if entry["should_retry"] else "false"
        if status == 429:
            wait_ms = entry.get("retry_after_ms", 0)
            reset = datetime.now(UTC) + timedelta(milliseconds=wait_ms)
            for limit in ("requests", "tokens", "input-tokens", "output-tokens"):
                extra[f"anthropic-ratelimit-{limit}-limit"] = "50"
                extra[f"anthropic-ratelimit-{limit}-remaining"] = "0"
                extra[f"anthropic-ratelimit-{limit}-reset"] = reset.isoformat().replace(
                    "+00:00", "Z"
                )
        message = entry.get("message") or STATUS_MESSAGES.get(status, error_type)
        details = {"error_code": entry["error_code"]} if "error_code" in entry else None
        self._error(status, error_type, message, request_id, extra, details)

    def _sse(self, entry: dict[str, Any], message: dict[str, Any], request_id: str) -> None:
        kind = entry["kind"]
        events = list(_events(message))
        if kind in ("stream_error", "truncate"):
            events = _cut(events, entry.get("after_deltas", 1), before=kind)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", request_id)
        self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        for name, data in events:
            self._chunk(_sse_bytes(name, data))
        if kind == "stream_error":
            error_type = entry.get("error_type", "overloaded_error")
            error = {"type": error_type, "message": entry.get("message", error_type)}
            self._chunk(_sse_bytes("error", {"type": "error", "error": error}))
        if kind == "truncate" and entry.get("mode", "eof") == "cut":
            # The connection closes in the middle of the chunked body, as a dropped one does.
            return
        # The last chunk: the body ends properly (for `truncate`, a clean EOF just before
        # message_stop).
        self._chunk(b"")

    # Writing.

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(
        self, status: int, payload: Any, request_id: str | None = None, *, cut: bool = False
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if request_id is not None:
            self.send_header("request-id", request_id)
        # A cut body promises more bytes than it sends, the way a dropped connection does.
        self.send_header("content-length", str(len(data) * 2 if cut else len(data)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self,
        status: int,
        error_type: str,
        message: str,
        request_id: str,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        error: dict[str, Any] = {"type": error_type, "message": message}
        if details:
            error["details"] = dict(details)
        data = json.dumps({"type": "error", "error": error, "request_id": request_id}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _wait(self, seconds: float) -> None:
        """Waits `seconds`; raises _ClientGone early if the client hangs up or the server
        stops, so a thread never outlives the test that needed it."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.fake._stopping.is_set():
                raise _ClientGone
            readable, _, _ = select.select([self.connection], [], [], min(POLL_S, left))
            if readable:
                # The request was read whole, so anything readable is the client's EOF.
                try:
                    data = self.connection.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    raise _ClientGone
                # Anything else the client sends is ignored; it is still waiting.


def _events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The server-sent events of a message, in the order the real API sends them."""
    start = dict(message, content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = dict(message["usage"], output_tokens=1)
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opened = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": piece}
                for piece in _pieces(block["text"], TEXT_DELTA_CHARS)
            ]
        else:
            opened = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in _pieces(json.dumps(block["input"]), JSON_DELTA_CHARS)
            ]
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opened},
        )
        for delta in deltas:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            # Cumulative, as the real API reports it.
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def _cut(
    events: list[tuple[str, dict[str, Any]]], after_deltas: int, *, before: str
) -> list[tuple[str, dict[str, Any]]]:
    """The events up to `after_deltas` content deltas; never as far as message_stop (for a
    truncation) or message_delta (before a stream error), however few deltas there are."""
    last = "message_stop" if before == "truncate" else "message_delta"
    kept: list[tuple[str, dict[str, Any]]] = []
    deltas = 0
    for name, data in events:
        if name == last or (name == "content_block_delta" and deltas >= after_deltas):
            break
        deltas += name == "content_block_delta"
        kept.append((name, data))
    return kept


def _sse_bytes(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _models_page() -> dict[str, Any]:
    data = [
        {"type": "model", "id": model, "display_name": name, "created_at": created}
        for model, name, created in MODELS
    ]
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve a fake Anthropic Messages API on 127.0.0.1 until stdin closes."
    )
    parser.add_argument("--key", default=DEFAULT_KEY, help="the API key requests must carry")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: any free port)")
    parser.add_argument("--script", help="a JSON file holding a list of entries to queue")
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    parser.add_argument("--seed", type=int, help="seed of the generator `chaos` entries draw from")
    parser.add_argument(
        "--no-record", action="store_true", help="keep no request log (for long soaks)"
    )
    args = parser.parse_args(argv)

    fake = FakeAnthropic(
        key=args.key,
        port=args.port,
        verbose=args.verbose,
        seed=args.seed,
        record=not args.no_record,
    )
    if args.script:
        with open(args.script, encoding="utf-8") as file:
            fake.script(json.load(file))

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    fake.start()
    try:
        print(json.dumps({"url": fake.url}), flush=True)
        # Serving happens on the server's threads; the main thread only waits for its
        # parent to close stdin (or die, which closes it too).
        while sys.stdin.buffer.read(65536):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
