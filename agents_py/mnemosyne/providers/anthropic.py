"""The Anthropic provider: Claude through the official `anthropic` SDK's Messages API.

One `AsyncAnthropic` client per worker, created with the provider and reused for every call,
so connections are pooled. Every call streams (`messages.stream`): long answers never hit the
SDK's "streaming is required" guard, and a stream cut short is detectable, which a buffered
response would hide.

The SDK retries what it considers transient (429, 5xx, connection errors, timeouts) up to
`MNEMOSYNE_SDK_MAX_RETRIES` times, honouring `retry-after`. What still fails is turned into a
`ProviderError` whose protocol code says whether retrying can help:

- 401, 403: `ProviderAuthError`, code `config`, not retryable;
- 429: `RateLimited` with `retry_after_ms` from the headers, code `rate_limited`;
- 408, 409, 5xx, 529, connection errors, timeouts, a broken or truncated stream:
  `ProviderUnavailable`, code `provider_unavailable`;
- any other 4xx: `ProviderRefused`, code `provider_error`, not retryable.

A mid-stream `event: error` arrives as an `APIStatusError` with status 200 that the SDK does
not retry; it is classified by its error type instead. A circuit breaker (`breaker`) stops
calling an API that failed several times in a row.

The SDK changed between 0.x and 2.x (auth header, exception hierarchy, `retry-after` limits,
`httpx` versus `httpx2`); this module relies only on what both share: status codes, the error
body, `APIConnectionError`/`APITimeoutError`, and the streaming helper's events.
"""

import email.utils
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from mnemosyne.providers.base import (
    Completion,
    ContentBlock,
    Message,
    ProviderAuthError,
    ProviderConfigError,
    ProviderError,
    ProviderRefused,
    ProviderUnavailable,
    RateLimited,
    Usage,
)
from mnemosyne.providers.breaker import CircuitBreaker, CircuitOpen

NAME = "anthropic"
# The supported range. scripts/lock-python pins SDK_OLDEST for the oldest-SDK test run; the
# newest release below the cap is pinned in the constraints file the other tests use.
SDK_OLDEST = "0.75.0"
SDK_REQUIREMENT = "anthropic>=0.75,<3"
MISSING_PACKAGE = (
    f"anthropic package not installed; install it with: pip install '{SDK_REQUIREMENT}'"
)
MISSING_KEY = (
    "the anthropic provider needs an API key: set ANTHROPIC_API_KEY, or store it with "
    "`mnemosyne secrets set anthropic_api_key`, or use --provider offline"
)

API_KEY_ENV = "ANTHROPIC_API_KEY"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
MODEL_ENV = "MNEMOSYNE_MODEL"
MAX_TOKENS_ENV = "MNEMOSYNE_MAX_TOKENS"
REQUEST_TIMEOUT_ENV = "MNEMOSYNE_REQUEST_TIMEOUT_S"
SDK_MAX_RETRIES_ENV = "MNEMOSYNE_SDK_MAX_RETRIES"
CONTEXT_WINDOW_ENV = "MNEMOSYNE_CONTEXT_WINDOW"
BREAKER_OPEN_ENV = "MNEMOSYNE_BREAKER_OPEN_S"

# Only for a worker started by hand: the supervisor always passes its configured model. The
# SDK (2.14) lists claude-sonnet-4-5 as deprecated, retiring on 2026-11-30, and uses this one
# in its own helpers.
DEFAULT_MODEL = "claude-sonnet-5-5"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_REQUEST_TIMEOUT_S = 120.0
DEFAULT_SDK_MAX_RETRIES = 2
DEFAULT_CONTEXT_WINDOW_TOKENS = 200_000
# Connecting should never take long; a dead host is found out within this, whatever the
# request timeout (which must allow for a slow model between two streamed chunks).
CONNECT_TIMEOUT_S = 5.0

# Error types of a mid-stream `event: error` that mean the API, not the request, failed.
_UNAVAILABLE_ERROR_TYPES = {"overloaded_error", "api_error", "timeout_error"}
_AUTH_ERROR_TYPES = {"authentication_error", "permission_error"}
# Codes of a 429 that no wait will lift (the account hit a spend limit); retrying is futile.
_SPEND_LIMIT_SUFFIX = "spend_limit_reached"


@dataclass(frozen=True)
class AnthropicSettings:
    """What the provider needs from its environment; see `from_env`."""

    # Left out of repr so that no log of the settings can show the key.
    api_key: str = field(repr=False)
    base_url: str | None = None
    model: str = DEFAULT_MODEL
    # The most output tokens one call may ask for; larger requests are lowered to it.
    max_tokens: int = DEFAULT_MAX_TOKENS
    # How long the SDK waits for each read (a streamed chunk included) before giving up.
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    sdk_max_retries: int = DEFAULT_SDK_MAX_RETRIES
    context_window: int = DEFAULT_CONTEXT_WINDOW_TOKENS
    breaker_open_s: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "AnthropicSettings":
        """Reads the settings; raises ProviderConfigError naming the variable that is wrong."""
        api_key = environ.get(API_KEY_ENV, "").strip()
        if not api_key:
            raise ProviderConfigError(MISSING_KEY)
        model = environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL
        return cls(
            api_key=api_key,
            base_url=environ.get(BASE_URL_ENV, "").strip() or None,
            model=model,
            max_tokens=_int_env(environ, MAX_TOKENS_ENV, DEFAULT_MAX_TOKENS, minimum=1),
            request_timeout_s=_seconds_env(environ, REQUEST_TIMEOUT_ENV, DEFAULT_REQUEST_TIMEOUT_S),
            sdk_max_retries=_int_env(
                environ, SDK_MAX_RETRIES_ENV, DEFAULT_SDK_MAX_RETRIES, minimum=0
            ),
            context_window=_int_env(
                environ, CONTEXT_WINDOW_ENV, DEFAULT_CONTEXT_WINDOW_TOKENS, minimum=1
            ),
            breaker_open_s=_seconds_env(environ, BREAKER_OPEN_ENV, 60.0),
        )


def _int_env(environ: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ProviderConfigError(f"{name} must be an integer of at least {minimum}, got {raw!r}")
    return value


def _seconds_env(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ProviderConfigError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def import_sdk() -> ModuleType:
    """The `anthropic` SDK module; ProviderConfigError when it is not installed."""
    try:
        import anthropic
    except ImportError as error:
        raise ProviderConfigError(MISSING_PACKAGE) from error
    return anthropic


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's own errors, which escape the SDK while a stream is being read.

    A body cut short raises `RemoteProtocolError` from `httpx` (SDK 0.x, 1.x) or `httpx2`
    (later 2.x) rather than an `anthropic.APIConnectionError`, and the SDK does not retry it.
    """
    errors: list[type[BaseException]] = []
    for module_name in ("httpx", "httpx2"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        errors.append(module.HTTPError)
        # Reading a stream that the library already closed raises StreamError, which is a
        # RuntimeError rather than an HTTPError.
        errors.append(module.StreamError)
    return tuple(errors)


class AnthropicProvider:
    """A `Provider` that asks Claude through the Messages API."""

    name = NAME

    def __init__(
        self,
        settings: AnthropicSettings,
        *,
        sdk: ModuleType | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._settings = settings
        self._sdk = sdk if sdk is not None else import_sdk()
        self._transport_errors = _transport_errors()
        self.model: str | None = settings.model
        self.context_window = settings.context_window
        self.breaker = (
            breaker if breaker is not None else CircuitBreaker(open_s=settings.breaker_open_s)
        )
        timeout = self._sdk.Timeout(
            settings.request_timeout_s,
            connect=min(CONNECT_TIMEOUT_S, settings.request_timeout_s),
        )
        # The key and the base URL are passed explicitly: the environment handed to
        # `from_env` is the one that counts (tests pass their own), and an explicit key stops
        # SDK 2.x from looking for other credentials (profiles, identity federation).
        self._client = self._sdk.AsyncAnthropic(
            api_key=settings.api_key,
            base_url=settings.base_url,
            timeout=timeout,
            max_retries=settings.sdk_max_retries,
        )

    async def aclose(self) -> None:
        """Closes the client's connections; the provider is unusable afterwards."""
        await self._client.close()

    async def complete(
        self,
        system: str,
        messages: Sequence[Message],
        max_tokens: int,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        try:
            self.breaker.before_call()
        except CircuitOpen as error:
            raise ProviderUnavailable(
                f"not calling the Anthropic API: {error}; next try in {error.retry_after_s:.1f} s",
                retry_after_ms=math.ceil(error.retry_after_s * 1000),
            ) from error
        try:
            completion = await self._stream(system, messages, max_tokens, tools)
        except ProviderError as error:
            if isinstance(error, ProviderUnavailable | RateLimited):
                self.breaker.record_failure()
            else:
                # A refusal or a rejected key still came from a working API.
                self.breaker.record_success()
            raise
        except BaseException:
            # Cancelled, or a bug: no verdict on the API either way.
            self.breaker.release()
            raise
        self.breaker.record_success()
        return completion

    async def _stream(
        self,
        system: str,
        messages: Sequence[Message],
        max_tokens: int,
        tools: list[dict[str, Any]] | None,
    ) -> Completion:
        sdk = self._sdk
        request: dict[str, Any] = {
            "model": self._settings.model,
            "max_tokens": min(max_tokens, self._settings.max_tokens),
            "messages": [message.to_wire() for message in messages],
        }
        if system:
            request["system"] = system
        if tools:
            request["tools"] = tools
        started = False
        stopped = False
        # Whether any event of the answer arrived decides how a broken connection reads: the
        # SDK's exception class for a body cut short changed between releases (a transport
        # error escaping the SDK, then APIConnectionError), but what happened did not.
        events_received = 0
        try:
            async with self._client.messages.stream(**request) as stream:
                async for event in stream:
                    events_received += 1
                    if event.type == "message_start":
                        started = True
                    elif event.type == "message_stop":
                        stopped = True
                # The snapshot exists only once message_start arrived; asking for it earlier
                # trips an assertion inside the SDK.
                message = await stream.get_final_message() if started else None
        except sdk.APIStatusError as error:
            raise self._status_error(error) from error
        except sdk.APITimeoutError as error:
            raise ProviderUnavailable(
                f"the Anthropic API did not answer within {self._settings.request_timeout_s:g} s"
            ) from error
        except (sdk.APIConnectionError, *self._transport_errors) as error:
            cause = (
                _cause_name(error)
                if isinstance(error, sdk.APIConnectionError)
                else type(error).__name__
            )
            if events_received:
                raise ProviderUnavailable(
                    "the connection to the Anthropic API broke mid-stream after "
                    f"{events_received} events: {cause}"
                ) from error
            raise ProviderUnavailable(
                f"could not reach the Anthropic API at {self._api_url()}: {cause}"
            ) from error
        except sdk.APIError as error:
            # An answer the SDK could not read (APIResponseValidationError): a broken server
            # or proxy, worth another try later.
            raise ProviderUnavailable(
                f"the Anthropic API sent an answer that could not be read: {type(error).__name__}"
            ) from error
        if message is None or not stopped or message.stop_reason is None:
            # A clean EOF before message_stop raises nothing in the SDK; the partial message
            # must not pass for a whole answer.
            raise ProviderUnavailable("stream ended before message_stop")
        return _completion(message)

    def _api_url(self) -> str:
        return self._settings.base_url or "https://api.anthropic.com"

    def _status_error(self, error: Any) -> ProviderError:
        return classify_status_error(
            status=error.status_code,
            body=error.body,
            headers=error.response.headers if error.response is not None else {},
            request_id=getattr(error, "request_id", None),
            secret=self._settings.api_key,
        )


def classify_status_error(
    *,
    status: int,
    body: object,
    headers: Mapping[str, str],
    request_id: str | None = None,
    secret: str | None = None,
) -> ProviderError:
    """The provider error for an API error answer; status 200 is a mid-stream `event: error`.

    Pure, and independent of the SDK version: it reads the status, the JSON error body
    (`{"type": "error", "error": {"type", "message", "details"}}`) and the headers. `secret`
    (the key) is blanked out of the API's message: the API is not known to echo it, but
    nothing that reaches a log may carry it.
    """
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    error_type = str(error.get("type") or "unknown_error")
    details = error.get("details")
    error_code = details.get("error_code") if isinstance(details, dict) else None
    api_message = error.get("message")
    if isinstance(api_message, str) and secret:
        api_message = api_message.replace(secret, "[key]")
    what = f"{status} {error_type}" if status != 200 else f"mid-stream {error_type}"
    suffix = f": {api_message}" if isinstance(api_message, str) and api_message else ""
    if request_id:
        suffix += f" (request {request_id})"
    retry_after_ms = parse_retry_after_ms(headers)

    if status in (401, 403) or (status == 200 and error_type in _AUTH_ERROR_TYPES):
        return ProviderAuthError(f"the Anthropic API rejected the key ({what}){suffix}")
    if status == 429 or (status == 200 and error_type == "rate_limit_error"):
        if isinstance(error_code, str) and error_code.endswith(_SPEND_LIMIT_SUFFIX):
            return ProviderRefused(
                f"the Anthropic API refused the request: spend limit reached ({what}, "
                f"{error_code}){suffix}"
            )
        return RateLimited(
            f"the Anthropic API throttled the request ({what}){suffix}",
            retry_after_ms=retry_after_ms,
        )
    if status == 200:
        if error_type in _UNAVAILABLE_ERROR_TYPES:
            return ProviderUnavailable(f"the Anthropic API failed ({what}){suffix}")
        return ProviderRefused(f"the Anthropic API refused the request ({what}){suffix}")
    if status >= 500 or status in (408, 409):
        return ProviderUnavailable(
            f"the Anthropic API failed ({what}){suffix}", retry_after_ms=retry_after_ms
        )
    return ProviderRefused(f"the Anthropic API refused the request ({what}){suffix}")


def parse_retry_after_ms(headers: Mapping[str, str]) -> int | None:
    """When the server asked to be retried, in milliseconds from now; None if it did not say.

    Tries `retry-after-ms`, then `retry-after` as seconds, then as an HTTP date, like the SDK.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return math.ceil(value)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0, math.ceil(seconds * 1000))


def _completion(message: Any) -> Completion:
    content = [_block(block) for block in message.content]
    text = "".join(block["text"] for block in content if block.get("type") == "text")
    usage = message.usage
    # Cached prompt tokens are counted apart from `input_tokens` but fill the context all
    # the same, and the optimizer budgets context with this number.
    input_tokens = (
        usage.input_tokens
        + (getattr(usage, "cache_creation_input_tokens", None) or 0)
        + (getattr(usage, "cache_read_input_tokens", None) or 0)
    )
    return Completion(
        text=text,
        content=content,
        usage=Usage(input_tokens, usage.output_tokens),
        stop_reason=message.stop_reason,
        model=message.model,
    )


def _block(block: Any) -> ContentBlock:
    """A content block of the SDK as the plain JSON dict the Messages API would send."""
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    # Thinking and server-tool blocks are kept whole for whoever wants them.
    return block.model_dump(mode="json", exclude_none=True)


def _cause_name(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    return type(cause).__name__ if cause is not None else type(error).__name__
