"""Tests of mnemosyne.providers.base: messages, content blocks, completions, error codes."""

import pytest

from mnemosyne.providers.base import (
    Completion,
    Message,
    ProviderAuthError,
    ProviderConfigError,
    ProviderRefused,
    ProviderUnavailable,
    RateLimited,
    Usage,
    blocks_text,
    text_block,
    tool_result_block,
)
from mnemosyne.runtime.worker import RequestError

TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a"}}


def test_a_message_goes_to_the_wire_as_the_api_takes_it():
    assert Message("user", "hi").to_wire() == {"role": "user", "content": "hi"}
    blocks = [text_block("reading"), TOOL_USE]
    assert Message("assistant", blocks).to_wire() == {"role": "assistant", "content": blocks}


def test_a_tool_result_block_says_is_error_only_when_it_is_one():
    assert tool_result_block("toolu_1", "ok") == {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": "ok",
    }
    assert tool_result_block("toolu_1", [text_block("no such file")], is_error=True) == {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": "no such file"}],
        "is_error": True,
    }


def test_the_text_of_content_leaves_tool_inputs_out():
    content = [
        text_block("first"),
        TOOL_USE,
        tool_result_block("toolu_1", [text_block("inner")]),
        tool_result_block("toolu_2", "plain"),
    ]
    assert blocks_text(content) == "first\ninner\nplain"
    assert Message("user", content).text == "first\ninner\nplain"
    assert Message("user", "just text").text == "just text"


def test_a_completion_lists_its_tool_uses():
    completion = Completion(
        text="reading",
        content=[text_block("reading"), TOOL_USE],
        usage=Usage(3, 4),
        stop_reason="tool_use",
        model="claude-test",
    )
    assert completion.tool_uses == [TOOL_USE]
    assert Completion.of_text("hi", Usage(1, 1)) == Completion(
        "hi", [text_block("hi")], Usage(1, 1), "end_turn", None
    )


@pytest.mark.parametrize(
    ("error", "code", "retryable", "details"),
    [
        (ProviderConfigError("x"), "config", False, None),
        (ProviderAuthError("x"), "config", False, None),
        (ProviderRefused("x"), "provider_error", False, None),
        (ProviderUnavailable("x"), "provider_unavailable", True, None),
        (
            ProviderUnavailable("x", retry_after_ms=5),
            "provider_unavailable",
            True,
            {"retry_after_ms": 5},
        ),
        (RateLimited("x", retry_after_ms=7), "rate_limited", True, {"retry_after_ms": 7}),
        (RateLimited("x"), "rate_limited", True, None),
    ],
)
def test_each_error_answers_with_its_protocol_code(error, code, retryable, details):
    assert error.code == code and error.details == details
    wire = RequestError(error.code, error.message, details=error.details).to_wire()
    assert wire["code"] == code and wire["retryable"] is retryable
    assert wire.get("details") == details
