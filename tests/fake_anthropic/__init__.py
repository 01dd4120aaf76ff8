"""A fake Anthropic Messages API for tests; see `server` for what it speaks and how to script it."""

from .server import DEFAULT_KEY, FakeAnthropic, ScriptError, prompt_text, review_text

__all__ = ["DEFAULT_KEY", "FakeAnthropic", "ScriptError", "prompt_text", "review_text"]
