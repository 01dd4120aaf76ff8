"""The provider interface: what an agent sends a model, what comes back, and how it fails.

A provider turns one system prompt and a conversation into one completion. It keeps no
conversation state between calls: each call carries everything the model needs, so a retried
or redelivered request costs no more than the first one (the older design resent a history
that grew with every work item).

Content travels as the Messages API's own JSON blocks (`text`, `tool_use`, `tool_result`),
plain dicts rather than SDK types, so agents and the offline provider never import an SDK and
a conversation can be logged or sent over the wire as it is.

Failures are raised as `ProviderError` subclasses whose `code` is the protocol error code the
request is answered with, so the worker runtime never has to know one provider from another.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# A content block as the Messages API writes it: {"type": "text", "text": ...},
# {"type": "tool_use", "id": ..., "name": ..., "input": {...}} or
# {"type": "tool_result", "tool_use_id": ..., "content": str | [blocks], "is_error": bool}.
ContentBlock = dict[str, Any]


def text_block(text: str) -> ContentBlock:
    return {"type": "text", "text": text}


def tool_result_block(
    tool_use_id: str, content: str | list[ContentBlock], *, is_error: bool = False
) -> ContentBlock:
    """The answer to the model's `tool_use` block `tool_use_id`, sent back in a user turn."""
    block: ContentBlock = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}
    if is_error:
        block["is_error"] = True
    return block


def blocks_text(content: str | Sequence[ContentBlock]) -> str:
    """The readable text of content: text blocks, and the text inside tool results.

    Tool-use inputs are left out: they are arguments, not prose. Blocks are joined with a
    newline so that words from two blocks never run together.
    """
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind == "tool_result":
            inner = block.get("content", "")
            parts.append(blocks_text(inner if isinstance(inner, str | list) else str(inner)))
    return "\n".join(part for part in parts if part)


@dataclass(frozen=True)
class Message:
    """One turn of the conversation sent to the model.

    `content` is a string (one text block) or a list of content blocks: an assistant turn
    that used tools carries its `tool_use` blocks, and the user turn after it one
    `tool_result` per `tool_use`.
    """

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    @property
    def text(self) -> str:
        """The readable text of this turn (see `blocks_text`)."""
        return blocks_text(self.content)

    def to_wire(self) -> dict[str, Any]:
        """The turn as the Messages API takes it."""
        content = self.content if isinstance(self.content, str) else list(self.content)
        return {"role": self.role, "content": content}


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

    # The text blocks of `content`, concatenated.
    text: str
    # Every block the model answered with, as JSON dicts: `text` and `tool_use` blocks.
    content: list[ContentBlock]
    usage: Usage
    # Why the model stopped: `end_turn` when it finished, `tool_use` when it waits for tool
    # results, `max_tokens` when it was cut off. None only from a provider that cannot tell.
    stop_reason: str | None
    # The model that answered, as it named itself; None when no model did (offline).
    model: str | None = None

    @property
    def tool_uses(self) -> list[ContentBlock]:
        """The `tool_use` blocks of the answer, in order; empty when the model used no tool."""
        return [block for block in self.content if block.get("type") == "tool_use"]

    @classmethod
    def of_text(
        cls, text: str, usage: Usage, stop_reason: str | None = "end_turn", model: str | None = None
    ) -> "Completion":
        """A completion made of one text block."""
        return cls(text, [text_block(text)], usage, stop_reason, model)


class Provider(Protocol):
    """A language model behind one async call."""

    # Reported in `hello.provider` and in every result: `offline`, `anthropic`.
    name: str
    # The model that answers, or None when no model does (the offline provider).
    model: str | None
    # Tokens the model can hold in its context; the optimizer divides this budget.
    context_window: int

    async def complete(
        self,
        system: str,
        messages: Sequence[Message],
        max_tokens: int,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        """Answers the conversation; raises a `ProviderError` when the model cannot.

        `tools` are Messages API tool definitions (`{"name", "description", "input_schema"}`);
        a model that wants one answers with `tool_use` blocks and `stop_reason="tool_use"`.
        """
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
    """The provider failed or could not be reached (5xx, overloaded, connection); retryable.

    `retry_after_ms` is set when the provider (or the circuit breaker) said when to try again.
    """

    code = "provider_unavailable"

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        details = None if retry_after_ms is None else {"retry_after_ms": retry_after_ms}
        super().__init__(message, details=details)
        self.retry_after_ms = retry_after_ms


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


class ProviderAuthError(ProviderConfigError):
    """The provider rejected the credentials (401, 403): a configuration problem to fix, not a
    request to retry."""
