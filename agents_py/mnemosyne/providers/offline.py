"""The offline provider: deterministic canned answers, no model, no network, no key.

It exists so the whole pipeline can run (and be tested) without a model. It must never pass
for one: every answer starts with `[offline]` and says that no model was called, results name
the provider `offline` with no model, and the worker warns on stderr when it starts with it.

An answer summarises the prompt it was given: the first line of the last user message (an
agent's headline, such as `# Task 'main' (attempt 1)`) and one line per `## ` section of it,
so a reader can see what the agent asked. Usage counts are word counts, which are
deterministic, not tokens. It never uses a tool: given tools, it still answers in text.
"""

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from mnemosyne.providers.base import Completion, Message, Usage

NAME = "offline"
WARNING = (
    "WARNING: offline provider: no model is called; answers are canned and deterministic, "
    "not from Claude"
)
DEFAULT_CONTEXT_WINDOW_TOKENS = 200_000
# Words of each prompt section an answer repeats before cutting it short.
SECTION_DIGEST_WORDS = 40
DISCLAIMER = (
    "No model was called: the offline provider derives this text deterministically from the "
    "prompt. It is not an answer from Claude."
)

_BULLET = re.compile(r"^\s*(?:[-*]|\d+[.)])\s+")


class OfflineProvider:
    """A `Provider` whose answers are derived from the prompt alone."""

    name = NAME
    model: str | None = None

    def __init__(
        self, latency_s: float = 0.0, context_window: int = DEFAULT_CONTEXT_WINDOW_TOKENS
    ) -> None:
        if latency_s < 0:
            raise ValueError("latency must not be negative")
        # How long each completion waits, simulating a model's latency; cancellable.
        self.latency_s = latency_s
        self.context_window = context_window

    async def complete(
        self,
        system: str,
        messages: Sequence[Message],
        max_tokens: int,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        # Digesting a prompt of megabytes takes a while; a thread keeps the loop answering.
        return await asyncio.to_thread(_complete, system, list(messages), max_tokens)


def _complete(system: str, messages: list[Message], max_tokens: int) -> Completion:
    last_user = next((m.text for m in reversed(messages) if m.role == "user"), "")
    text = canned_answer(last_user)
    stop_reason = "end_turn"
    words = text.split()
    if len(words) > max_tokens:
        text = " ".join(words[:max_tokens])
        stop_reason = "max_tokens"
    prompt_words = count_words(system) + sum(count_words(m.text) for m in messages)
    return Completion.of_text(text, Usage(prompt_words, count_words(text)), stop_reason)


def count_words(text: str) -> int:
    """The offline stand-in for a token count: whitespace-separated words."""
    return len(text.split())


def canned_answer(prompt: str) -> str:
    """The offline answer to a prompt: a marked headline, a disclaimer and a digest."""
    headline, sections = _split_sections(prompt)
    lines = [f"[offline] Canned answer for: {headline or 'an untitled request'}", DISCLAIMER]
    for title, body in sections:
        digest = _digest(body)
        if digest:
            lines.append(f"- {title}: {digest}")
    return "\n".join(lines)


def _split_sections(prompt: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """The `# ` headline and the `## ` sections of a prompt; text before any section is
    the `Request` section."""
    headline = ""
    sections: list[tuple[str, list[str]]] = []
    current: list[str] = []
    sections.append(("Request", current))
    for line in prompt.splitlines():
        stripped = line.strip()
        if stripped.startswith("## "):
            current = []
            sections.append((stripped[3:].strip(), current))
        elif stripped.startswith("# ") and not headline:
            headline = stripped[2:].strip()
        else:
            current.append(stripped)
    return headline, sections


def _digest(body: list[str]) -> str:
    items = [_BULLET.sub("", line) for line in body if line]
    words = "; ".join(items).split()
    if len(words) > SECTION_DIGEST_WORDS:
        return " ".join(words[:SECTION_DIGEST_WORDS]) + " …"
    return " ".join(words)
