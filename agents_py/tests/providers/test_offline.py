"""Tests of mnemosyne.providers.offline: canned, marked, deterministic, cancellable."""

import asyncio
import time

import pytest

from mnemosyne.providers.base import Message
from mnemosyne.providers.offline import (
    DISCLAIMER,
    OfflineProvider,
    canned_answer,
    count_words,
)

PROMPT = "# Task 'a' (attempt 1)\n\n## Prompt\nWrite a parser\n\n## Tech stack\n- rust\n- nom\n"


def complete(provider, prompt=PROMPT, system="be brief", max_tokens=1000):
    return asyncio.run(provider.complete(system, [Message("user", prompt)], max_tokens))


def test_an_answer_is_marked_offline_disclaims_a_model_and_digests_each_section():
    assert canned_answer(PROMPT) == "\n".join(
        [
            "[offline] Canned answer for: Task 'a' (attempt 1)",
            DISCLAIMER,
            "- Prompt: Write a parser",
            "- Tech stack: rust; nom",
        ]
    )
    assert "not an answer from Claude" in DISCLAIMER


def test_a_prompt_without_structure_is_digested_as_the_request():
    answer = canned_answer("please sort these numbers")
    assert answer.splitlines()[0] == "[offline] Canned answer for: an untitled request"
    assert answer.splitlines()[-1] == "- Request: please sort these numbers"


def test_a_long_section_is_cut_to_forty_words():
    digest = canned_answer("## Prompt\n" + "word " * 100).splitlines()[-1]
    assert digest == "- Prompt: " + " ".join(["word"] * 40) + " …"


def test_completions_are_deterministic_and_name_no_model():
    provider = OfflineProvider()
    assert complete(provider) == complete(provider)
    assert provider.name == "offline" and provider.model is None
    assert provider.context_window == 200_000


def test_usage_counts_words_of_the_prompt_and_the_answer():
    completion = complete(OfflineProvider(), system="two words")
    assert completion.usage.input_tokens == 2 + count_words(PROMPT)
    assert completion.usage.output_tokens == count_words(completion.text)
    assert completion.stop_reason == "end_turn"


def test_the_answer_follows_the_last_user_message():
    provider = OfflineProvider()
    messages = [
        Message("user", "## Prompt\nfirst"),
        Message("assistant", "## Prompt\nreply"),
        Message("user", "## Prompt\nsecond"),
    ]
    completion = asyncio.run(provider.complete("", messages, 100))
    assert completion.text.endswith("- Prompt: second")


def test_an_answer_longer_than_max_tokens_is_cut_and_says_so():
    completion = complete(OfflineProvider(), max_tokens=3)
    assert completion.text == "[offline] Canned answer"
    assert completion.stop_reason == "max_tokens"
    assert completion.usage.output_tokens == 3


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        OfflineProvider(latency_s=-1)
    with pytest.raises(ValueError):
        complete(OfflineProvider(), max_tokens=0)


def test_latency_delays_the_answer():
    started = time.monotonic()
    complete(OfflineProvider(latency_s=0.2))
    assert time.monotonic() - started >= 0.2


def test_latency_is_cancellable():
    async def cancel_early():
        task = asyncio.create_task(
            OfflineProvider(latency_s=30).complete("", [Message("user", "x")], 10)
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(cancel_early())
    assert time.monotonic() - started < 5


def test_a_completion_is_one_text_block_from_no_model_even_when_tools_are_offered():
    tools = [{"name": "read", "description": "reads", "input_schema": {"type": "object"}}]
    completion = asyncio.run(
        OfflineProvider().complete("", [Message("user", "## Prompt\nread it")], 100, tools)
    )
    assert completion.content == [{"type": "text", "text": completion.text}]
    assert completion.tool_uses == []
    assert completion.model is None


def test_block_content_is_read_as_its_text():
    messages = [
        Message("user", [{"type": "text", "text": "## Prompt\nfrom a block"}]),
        Message("assistant", [{"type": "tool_use", "id": "t1", "name": "read", "input": {}}]),
        Message(
            "user", [{"type": "tool_result", "tool_use_id": "t1", "content": "## Prompt\nresult"}]
        ),
    ]
    completion = asyncio.run(OfflineProvider().complete("", messages, 100))
    assert completion.text.endswith("- Prompt: result")
    assert completion.usage.input_tokens == 8
