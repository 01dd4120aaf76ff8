"""The provider interface: what an agent sends a model, what comes back, and how it fails.

A provider turns one system prompt and a conversation into one completion. It keeps no
conversation state between calls: each call carries everything the model needs, so a retried
or redelivered request costs no more than the first one (the older design resent a history
that grew with every work item).

Failures are raised as `ProviderError` subclasses whose `code` is the protocol error code the
request is answered with, so the worker runtime never has to know one provider from another.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class Message:
    """One turn of the conversation sent to the model."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class Usage:
    """Tokens a completion consumed, as the provider counts them."""

    input_tokens: int
    output_tokens: int

    def to_wire(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


# The usage of a step that did not call the model at all.
NO_USAGE = Usage(0, 0)


@dataclass(frozen=True)
class Completion:
    """The model's answer to one call."""

    text: str
    usage: Usage
    # Why the model stopped: `end_turn` when it finished, `max_tokens` when it was cut off.
    stop_reason: str


class Provider(Protocol):
    """A language model behind one async call."""

    # Reported in `hello.provider` and in every result: `offline`, `anthropic`.
    name: str
    # The model that answers, or None when no model does (the offline provider).
    model: str | None
    # Tokens the model can hold in its context; the optimizer divides this budget.
    context_window: int

    async def complete(
        self, system: str, messages: Sequence[Message], max_tokens: int
    ) -> Completion:
        """Answers the conversation; raises a `ProviderError` when the model cannot."""
        ...


class ProviderError(Exception):
    """A failure of the model provider, answered with the protocol error code `code`."""

    code = "provider_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ProviderRefused(ProviderError):
    """The provider rejected the request itself (a 4xx other than auth); retrying is futile."""

    code = "provider_error"


class ProviderUnavailable(ProviderError):
    """The provider failed or could not be reached (5xx, overloaded, connection); retryable."""

    code = "provider_unavailable"


class RateLimited(ProviderError):
    """The provider throttled the request; `retry_after_ms` says when to try again if known."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        details = None if retry_after_ms is None else {"retry_after_ms": retry_after_ms}
        super().__init__(message, details=details)
        self.retry_after_ms = retry_after_ms


class ProviderConfigError(ProviderError):
    """The provider is misconfigured (unknown name, missing package or key); not retryable."""

    code = "config"
