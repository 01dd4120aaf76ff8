"""The wire format of protocol v1: line framing, encoding, and classification of received lines.

Everything here is pure (no I/O), so the rules in protocol/README.md can be tested directly:

- `encode_message` turns a message into one strict-JSON line, or refuses it when too long.
- `LineSplitter` cuts a byte stream into lines without ever buffering more than the limit.
- `decode_line` says what a received line is: blank, stray, a violation, an unknown message
  type, or a well-formed message, checked field by field against the README (and the JSON
  Schema in protocol/schema, which the tests keep in step with this module).
"""

import enum
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_LINE_ENV = "MNEMOSYNE_MAX_LINE_BYTES"

# How much of a stray or malformed line goes into a log record.
PREVIEW_BYTES = 200

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_ERROR_CODE = re.compile(r"^[a-z_]+$")
LOG_LEVELS = ("debug", "info", "warning", "error")


def max_line_bytes(environ: Mapping[str, str] = os.environ) -> int:
    """The line limit the supervisor passed, or the protocol default.

    Raises ValueError when the variable is set to something other than a positive integer.
    """
    raw = environ.get(MAX_LINE_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_LINE_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_LINE_ENV} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{MAX_LINE_ENV} must be a positive integer, got {raw!r}")
    return value


class LineTooLong(ValueError):
    """A line longer than the protocol limit, which neither side may send."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"line of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


# ---------------------------------------------------------------------------------------------
# Encoding


def sanitize(value: Any) -> Any:
    """Returns `value` with what strict JSON cannot carry replaced.

    Non-finite floats become None and lone surrogates (which Python strings may hold, e.g. after
    decoding with surrogateescape) become U+FFFD, in dictionary keys as well as values.
    """
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {sanitize(key): sanitize(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(item) for item in value]
    return value


def encode_message(message: Mapping[str, Any], limit: int) -> bytes:
    """Encodes one message as a line of strict JSON, without the trailing newline.

    Raises LineTooLong when the line exceeds `limit` bytes, and TypeError when the message holds
    something JSON cannot represent at all.
    """
    try:
        line = _dumps(message)
    except ValueError:
        # NaN, infinities, and lone surrogates (UnicodeEncodeError is a ValueError) are rare, so
        # the copy that sanitising makes is paid only when one is actually present.
        line = _dumps(sanitize(message))
    if len(line) > limit:
        raise LineTooLong(len(line), limit)
    return line


def _dumps(message: Any) -> bytes:
    text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Framing


class _Oversize:
    """Marker the splitter yields in place of a line over the limit."""

    def __repr__(self) -> str:
        return "OVERSIZE"


OVERSIZE = _Oversize()


class LineSplitter:
    """Cuts a byte stream into lines, holding at most about `limit` bytes at any time.

    asyncio's StreamReader.readline gives up at 64 KiB by default, and raising its limit still
    buffers whole lines; this splitter instead reports an over-long line as soon as the limit is
    passed and discards the rest of it, so memory stays bounded by the limit. `\\r\\n` endings
    are accepted.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        # Bytes at the front of the buffer already searched for a newline, so a long line
        # arriving in many chunks is scanned once rather than quadratically.
        self._scanned = 0
        self._discarding = False

    def feed(self, chunk: bytes) -> list[bytes | _Oversize]:
        """Adds received bytes; returns the complete lines (and OVERSIZE markers) they finish."""
        buffer = self._buffer
        buffer += chunk
        out: list[bytes | _Oversize] = []
        start = 0
        while (newline := buffer.find(b"\n", max(start, self._scanned))) >= 0:
            self._scanned = 0
            if self._discarding:
                self._discarding = False
            else:
                line = bytes(buffer[start:newline])
                if line.endswith(b"\r"):
                    line = line[:-1]
                out.append(OVERSIZE if len(line) > self._limit else line)
            start = newline + 1
        del buffer[:start]
        if self._discarding:
            buffer.clear()
        elif len(buffer) > self._limit + 1:  # + 1 leaves room for the \r of a \r\n ending
            out.append(OVERSIZE)
            self._discarding = True
            buffer.clear()
        self._scanned = len(buffer)
        return out

    def finish(self) -> bytes | None:
        """Called at EOF: returns the unterminated partial line, if any (a protocol violation)."""
        partial = None if self._discarding or not self._buffer else bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        self._discarding = False
        return partial


# ---------------------------------------------------------------------------------------------
# Decoding


class Sender(enum.Enum):
    """Which side sent a line; each side has its own set of message types."""

    WORKER = "worker"
    SUPERVISOR = "supervisor"


class LineKind(enum.Enum):
    BLANK = "blank"
    # Not a JSON object at all, e.g. a native library printing to the wrong fd: logged, skipped.
    STRAY = "stray"
    # Starts with `{` but is malformed, too long, or a known type with bad fields.
    VIOLATION = "violation"
    # A JSON object with a type this version does not know: logged, skipped.
    UNKNOWN = "unknown"
    MESSAGE = "message"


@dataclass(frozen=True)
class Decoded:
    kind: LineKind
    # The parsed object, for MESSAGE and UNKNOWN, and for a VIOLATION that parsed as JSON (so a
    # malformed request's id can still be answered).
    message: dict[str, Any] | None = None
    reason: str | None = None
    preview: str = ""

    @property
    def type(self) -> str | None:
        if self.message is None:
            return None
        kind = self.message.get("type")
        return kind if isinstance(kind, str) else None


def preview(line: bytes) -> str:
    """The first PREVIEW_BYTES of a line, for logs."""
    text = line[:PREVIEW_BYTES].decode("utf-8", "replace")
    return text + "…" if len(line) > PREVIEW_BYTES else text


def decode_line(line: bytes, sender: Sender, limit: int | None = None) -> Decoded:
    """Classifies one received line (without its newline) sent by `sender`."""
    stripped = line.strip()
    if not stripped:
        return Decoded(LineKind.BLANK)
    shown = preview(stripped)
    if not stripped.startswith(b"{"):
        return Decoded(LineKind.STRAY, preview=shown)
    if limit is not None and len(line) > limit:
        reason = f"line of {len(line)} bytes exceeds the limit of {limit} bytes"
        return Decoded(LineKind.VIOLATION, reason=reason, preview=shown)
    try:
        message = parse_strict_json(stripped)
    except ValueError as error:
        return Decoded(LineKind.VIOLATION, reason=f"not valid JSON: {error}", preview=shown)
    if not isinstance(message, dict):
        # Cannot happen for text starting with `{`, but the type checker cannot know that.
        return Decoded(LineKind.VIOLATION, reason="not a JSON object", preview=shown)
    kind = message.get("type")
    if not isinstance(kind, str):
        reason = "message has no string field `type`"
        return Decoded(LineKind.VIOLATION, message, reason, shown)
    spec = MESSAGE_FIELDS[sender].get(kind)
    if spec is None:
        return Decoded(LineKind.UNKNOWN, message, preview=shown)
    problem = _check_fields(message, spec) or _check_message_rules(kind, message)
    if problem is not None:
        return Decoded(LineKind.VIOLATION, message, f"invalid `{kind}` message: {problem}", shown)
    return Decoded(LineKind.MESSAGE, message, preview=shown)


def parse_strict_json(data: bytes | str) -> Any:
    """Parses JSON as the protocol defines it: no NaN or infinities, no lone surrogates.

    Raises ValueError (json.JSONDecodeError, UnicodeDecodeError, or a plain ValueError).
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    # Decoded UTF-8 cannot hold a surrogate, so one can only come from a \uD8xx-style escape;
    # skipping the walk when no such escape exists keeps the common case cheap.
    if _MAY_ESCAPE_SURROGATE.search(text) and _has_lone_surrogate(value):
        raise ValueError("string holds a lone surrogate")
    return value


_MAY_ESCAPE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    # An explicit stack, because a deeply nested message must not hit the recursion limit here.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# Field checks: each returns whether a present value has the right type.


def _is_int(value: Any) -> bool:
    # bool is a subclass of int in Python, but not an integer in JSON.
    return isinstance(value, int) and not isinstance(value, bool)


def _non_negative_int(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _string_or_null(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _fraction(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and 0 <= value <= 1


def _log_level(value: Any) -> bool:
    return value in LOG_LEVELS


def _any(value: Any) -> bool:
    return True


def _error_body(value: Any) -> bool:
    return error_body_problem(value) is None


def error_body_problem(value: Any) -> str | None:
    """Why `value` is not a valid `error` object of a response, or None when it is."""
    if not isinstance(value, dict):
        return "must be an object"
    code = value.get("code")
    if not isinstance(code, str) or not _ERROR_CODE.match(code):
        return "needs a string `code` of lowercase letters and underscores"
    if not isinstance(value.get("message"), str):
        return "needs a string `message`"
    if not isinstance(value.get("retryable"), bool):
        return "needs a boolean `retryable`"
    if "details" in value and not isinstance(value["details"], dict):
        return "has a `details` that is not an object"
    return None


@dataclass(frozen=True)
class Field:
    name: str
    check: Callable[[Any], bool]
    expected: str
    required: bool = True


def _optional(name: str, check: Callable[[Any], bool], expected: str) -> Field:
    return Field(name, check, expected, required=False)


_HEARTBEAT = (Field("nonce", _non_negative_int, "a non-negative integer"),)

# The fields of every message type, per sender, as protocol/README.md defines them. Unknown
# fields are allowed (receivers ignore them), so only the listed ones are checked.
MESSAGE_FIELDS: dict[Sender, dict[str, tuple[Field, ...]]] = {
    Sender.WORKER: {
        "hello": (
            Field("protocol", _non_negative_int, "a non-negative integer"),
            Field("role", _string, "a string"),
            Field("pid", _non_negative_int, "a non-negative integer"),
            Field("python", _string, "a string"),
            Field("package", _string, "a string"),
            Field("anthropic", _string_or_null, "a string or null"),
            Field("provider", _string_or_null, "a string or null"),
        ),
        "ready": (Field("methods", _string_list, "an array of strings"),),
        "response": (
            Field("id", _string, "a string"),
            _optional("result", _any, "any JSON value"),
            _optional("error", _error_body, "an error object"),
        ),
        "progress": (
            Field("id", _string, "a string"),
            _optional("message", _string, "a string"),
            _optional("fraction", _fraction, "a number from 0 to 1"),
            _optional("data", _any, "any JSON value"),
        ),
        "ping": _HEARTBEAT,
        "pong": _HEARTBEAT,
        "log": (
            Field("level", _log_level, "one of " + ", ".join(LOG_LEVELS)),
            Field("message", _string, "a string"),
            _optional("logger", _string, "a string"),
            _optional("fields", _object, "an object"),
        ),
        "fatal": (
            Field("code", _string, "a string"),
            Field("message", _string, "a string"),
        ),
    },
    Sender.SUPERVISOR: {
        "request": (
            Field("id", _string, "a string"),
            Field("method", _string, "a string"),
            _optional("params", _any, "any JSON value"),
            Field("deadline_ms", _non_negative_int, "a non-negative integer"),
            _optional("delivery", _positive_int, "an integer of at least 1"),
        ),
        "cancel": (
            Field("id", _string, "a string"),
            _optional("reason", _string, "a string"),
        ),
        "ping": _HEARTBEAT,
        "pong": _HEARTBEAT,
        "shutdown": (
            Field("grace_ms", _non_negative_int, "a non-negative integer"),
            _optional("reason", _string, "a string"),
        ),
    },
}


def _check_fields(message: dict[str, Any], fields: tuple[Field, ...]) -> str | None:
    for field in fields:
        if field.name not in message:
            if field.required:
                return f"missing field `{field.name}`"
            continue
        value = message[field.name]
        if not field.check(value):
            if field.name == "error":
                return f"field `error` {error_body_problem(value)}"
            return f"field `{field.name}` must be {field.expected}, got {_describe(value)}"
    return None


def _check_message_rules(kind: str, message: dict[str, Any]) -> str | None:
    if kind == "response" and ("result" in message) == ("error" in message):
        return "needs exactly one of `result` and `error`"
    return None


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:40] + "…"
