"""Tests of mnemosyne.providers.anthropic against the fake Messages API, through the real SDK.

Every failure path runs with retry-after values of a millisecond and sub-second timeouts, so
the SDK's own retries are exercised without slowing the suite.
"""

import asyncio
import importlib.metadata
import time
from typing import Any

import pytest

from mnemosyne.providers.anthropic import (
    DEFAULT_MODEL,
    MISSING_KEY,
    AnthropicProvider,
    AnthropicSettings,
    classify_status_error,
    parse_retry_after_ms,
)
from mnemosyne.providers.base import (
    Completion,
    Message,
    ProviderAuthError,
    ProviderConfigError,
    ProviderError,
    ProviderRefused,
    ProviderUnavailable,
    RateLimited,
    Usage,
    text_block,
    tool_result_block,
)
from mnemosyne.providers.breaker import BreakerState, CircuitBreaker
from mnemosyne.runtime.worker import RequestError

from fake_anthropic import FakeAnthropic

SDK_MAJOR = int(importlib.metadata.version("anthropic").split(".")[0])
TOOLS = [
    {
        "name": "read_file",
        "description": "Reads a file of the workspace.",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]


def make_provider(
    fake: FakeAnthropic, breaker: CircuitBreaker | None = None, **env: Any
) -> AnthropicProvider:
    environ = {**fake.env(), "MNEMOSYNE_REQUEST_TIMEOUT_S": "5"}
    environ.update({name: str(value) for name, value in env.items()})
    # A breaker that never opens unless a test brings its own, so each test sees one path.
    return AnthropicProvider(
        AnthropicSettings.from_env(environ), breaker=breaker or CircuitBreaker(1000)
    )


def complete(
    provider: AnthropicProvider,
    prompt: str = "hello",
    *,
    system: str = "be brief",
    max_tokens: int = 100,
    tools: list[dict[str, Any]] | None = None,
) -> Completion:
    return asyncio.run(provider.complete(system, [Message("user", prompt)], max_tokens, tools))


def failure(provider: AnthropicProvider, **kwargs: Any) -> ProviderError:
    with pytest.raises(ProviderError) as raised:
        complete(provider, **kwargs)
    return raised.value


def retry_counts(fake: FakeAnthropic) -> list[int | None]:
    return [request["retry_count"] for request in fake.requests]


# Settings.


def test_settings_have_defaults_for_everything_but_the_key():
    settings = AnthropicSettings.from_env({"ANTHROPIC_API_KEY": "k"})
    assert settings.model == DEFAULT_MODEL
    assert settings.max_tokens == 4096
    assert settings.request_timeout_s == 120
    assert settings.sdk_max_retries == 2
    assert settings.context_window == 200_000
    assert settings.breaker_open_s == 60
    assert settings.base_url is None


def test_settings_come_from_the_environment():
    settings = AnthropicSettings.from_env(
        {
            "ANTHROPIC_API_KEY": " k ",
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
            "MNEMOSYNE_MODEL": "claude-opus-4-1",
            "MNEMOSYNE_MAX_TOKENS": "100",
            "MNEMOSYNE_REQUEST_TIMEOUT_S": "2.5",
            "MNEMOSYNE_SDK_MAX_RETRIES": "0",
            "MNEMOSYNE_CONTEXT_WINDOW": "1000",
            "MNEMOSYNE_BREAKER_OPEN_S": "0.5",
        }
    )
    assert (settings.api_key, settings.base_url, settings.model) == (
        "k",
        "http://127.0.0.1:9",
        "claude-opus-4-1",
    )
    assert (settings.max_tokens, settings.request_timeout_s, settings.sdk_max_retries) == (
        100,
        2.5,
        0,
    )
    assert (settings.context_window, settings.breaker_open_s) == (1000, 0.5)


def test_the_key_stays_out_of_the_settings_repr():
    assert "sk-secret" not in repr(AnthropicSettings.from_env({"ANTHROPIC_API_KEY": "sk-secret"}))


@pytest.mark.parametrize("environ", [{}, {"ANTHROPIC_API_KEY": "  "}])
def test_no_key_is_a_configuration_error_saying_how_to_configure_one(environ):
    with pytest.raises(ProviderConfigError) as raised:
        AnthropicSettings.from_env(environ)
    assert raised.value.message == MISSING_KEY
    assert "set ANTHROPIC_API_KEY" in MISSING_KEY
    assert "mnemosyne secrets set anthropic_api_key" in MISSING_KEY
    assert "--provider offline" in MISSING_KEY


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MNEMOSYNE_MAX_TOKENS", "0"),
        ("MNEMOSYNE_MAX_TOKENS", "many"),
        ("MNEMOSYNE_REQUEST_TIMEOUT_S", "-1"),
        ("MNEMOSYNE_REQUEST_TIMEOUT_S", "inf"),
        ("MNEMOSYNE_SDK_MAX_RETRIES", "-1"),
        ("MNEMOSYNE_SDK_MAX_RETRIES", "1.5"),
        ("MNEMOSYNE_CONTEXT_WINDOW", "0"),
        ("MNEMOSYNE_BREAKER_OPEN_S", "0"),
        ("MNEMOSYNE_BREAKER_OPEN_S", "nan"),
    ],
)
def test_a_bad_setting_is_a_configuration_error_naming_the_variable(name, value):
    with pytest.raises(ProviderConfigError, match=name):
        AnthropicSettings.from_env({"ANTHROPIC_API_KEY": "k", name: value})


# Answers.


def test_a_text_answer_comes_back_with_usage_and_model(fake_anthropic):
    fake_anthropic.script(
        [
            {
                "kind": "text",
                "text": "a streamed answer longer than one delta",
                "usage": {"input_tokens": 12, "output_tokens": 7},
            }
        ]
    )
    provider = make_provider(fake_anthropic)
    completion = complete(provider, "# Task\nsay hi", system="you are terse")
    assert completion == Completion(
        text="a streamed answer longer than one delta",
        content=[text_block("a streamed answer longer than one delta")],
        usage=Usage(12, 7),
        stop_reason="end_turn",
        model=DEFAULT_MODEL,
    )
    assert provider.name == "anthropic" and provider.model == DEFAULT_MODEL
    assert provider.context_window == 200_000


def test_the_request_carries_the_prompt_the_model_and_the_key(fake_anthropic):
    provider = make_provider(fake_anthropic, MNEMOSYNE_MODEL="claude-haiku-4-5")
    complete(provider, "the prompt", system="the system", max_tokens=321)
    [request] = fake_anthropic.requests
    assert request["method"] == "POST" and request["path"] == "/v1/messages"
    assert request["body"]["model"] == "claude-haiku-4-5"
    assert request["body"]["system"] == "the system"
    assert request["body"]["messages"] == [{"role": "user", "content": "the prompt"}]
    assert request["body"]["max_tokens"] == 321
    assert request["body"]["stream"] is True
    assert "tools" not in request["body"]
    # SDK 2.x sends the key as a bearer token, 0.x and 1.x as x-api-key.
    assert request["auth"] == ("bearer" if SDK_MAJOR >= 2 else "x-api-key")
    assert request["retry_count"] == 0
    assert fake_anthropic.key not in str(request)


def test_max_tokens_is_lowered_to_the_configured_limit(fake_anthropic):
    complete(make_provider(fake_anthropic, MNEMOSYNE_MAX_TOKENS=50), max_tokens=4000)
    assert fake_anthropic.requests[0]["body"]["max_tokens"] == 50


def test_an_empty_system_prompt_is_left_out(fake_anthropic):
    complete(make_provider(fake_anthropic), system="")
    assert "system" not in fake_anthropic.requests[0]["body"]


def test_a_tool_use_turn_returns_the_tool_use_blocks(fake_anthropic):
    fake_anthropic.script(
        [
            {
                "kind": "tool_use",
                "name": "read_file",
                "input": {"path": "src/lib.rs", "lines": [1, 20]},
                "text": "Let me read it.",
                "id": "toolu_1",
            }
        ]
    )
    completion = complete(make_provider(fake_anthropic), tools=TOOLS)
    assert completion.stop_reason == "tool_use"
    assert completion.text == "Let me read it."
    assert completion.content == [
        text_block("Let me read it."),
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "read_file",
            "input": {"path": "src/lib.rs", "lines": [1, 20]},
        },
    ]
    assert completion.tool_uses == completion.content[1:]
    assert fake_anthropic.requests[0]["body"]["tools"] == TOOLS


def test_tool_results_go_back_as_content_blocks(fake_anthropic):
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a"}}
    messages = [
        Message("user", "read a"),
        Message("assistant", [text_block("Reading."), tool_use]),
        Message("user", [tool_result_block("toolu_1", "file body", is_error=False)]),
    ]
    provider = make_provider(fake_anthropic)
    completion = asyncio.run(provider.complete("", messages, 100, TOOLS))
    assert completion.stop_reason == "end_turn"
    assert fake_anthropic.requests[0]["body"]["messages"] == [
        {"role": "user", "content": "read a"},
        {"role": "assistant", "content": [{"type": "text", "text": "Reading."}, tool_use]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "file body"}],
        },
    ]


# Errors, and how the SDK retried before giving up.


def test_a_rejected_key_is_a_configuration_error_that_is_not_retried(fake_anthropic):
    provider = AnthropicProvider(
        AnthropicSettings.from_env({**fake_anthropic.env(), "ANTHROPIC_API_KEY": "sk-wrong-key"})
    )
    error = failure(provider)
    assert isinstance(error, ProviderAuthError) and error.code == "config"
    assert error.message.startswith(
        "the Anthropic API rejected the key (401 authentication_error): invalid x-api-key"
    )
    assert "sk-wrong-key" not in error.message
    assert RequestError(error.code, error.message).retryable is False
    assert retry_counts(fake_anthropic) == [0]
    # A rejected key proves the API is up; it is no reason to stop calling it.
    assert provider.breaker.failures == 0


def test_a_permission_error_is_a_configuration_error(fake_anthropic):
    fake_anthropic.script([{"kind": "status", "status": 403}])
    error = failure(make_provider(fake_anthropic))
    assert isinstance(error, ProviderAuthError) and error.code == "config"
    assert "(403 permission_error)" in error.message
    assert retry_counts(fake_anthropic) == [0]


def test_the_key_never_appears_in_an_error_message(fake_anthropic):
    fake_anthropic.script(
        [{"kind": "status", "status": 400, "message": f"bad key {fake_anthropic.key}"}]
    )
    error = failure(make_provider(fake_anthropic))
    assert fake_anthropic.key not in error.message and fake_anthropic.key not in str(error)
    assert "bad key [key]" in error.message


def test_a_rate_limit_is_retried_by_the_sdk_then_reported_with_its_retry_after(fake_anthropic):
    fake_anthropic.script([{"kind": "status", "status": 429, "retry_after_ms": 3, "times": 3}])
    error = failure(make_provider(fake_anthropic))
    assert isinstance(error, RateLimited) and error.code == "rate_limited"
    assert error.retry_after_ms == 3
    assert error.details == {"retry_after_ms": 3}
    assert retry_counts(fake_anthropic) == [0, 1, 2]
    wire = RequestError(error.code, error.message, details=error.details).to_wire()
    assert wire["retryable"] is True and wire["details"] == {"retry_after_ms": 3}


def test_a_rate_limit_the_sdk_outlasts_is_an_answer(fake_anthropic):
    fake_anthropic.script(
        [{"kind": "status", "status": 429, "retry_after_ms": 1}, {"kind": "text", "text": "ok"}]
    )
    assert complete(make_provider(fake_anthropic)).text == "ok"
    assert retry_counts(fake_anthropic) == [0, 1]


@pytest.mark.parametrize(
    ("status", "error_type"), [(500, "api_error"), (529, "overloaded_error"), (503, "api_error")]
)
def test_server_errors_are_retried_then_reported_as_unavailable(fake_anthropic, status, error_type):
    fake_anthropic.script([{"kind": "status", "status": status, "retry_after_ms": 1, "times": 3}])
    error = failure(make_provider(fake_anthropic))
    assert isinstance(error, ProviderUnavailable) and error.code == "provider_unavailable"
    assert f"({status} {error_type})" in error.message
    assert "(request req_fake_" in error.message
    assert error.details == {"retry_after_ms": 1}
    assert retry_counts(fake_anthropic) == [0, 1, 2]
    assert RequestError(error.code, error.message).retryable is True


def test_the_sdk_retry_count_follows_the_setting(fake_anthropic):
    fake_anthropic.script([{"kind": "status", "status": 529, "retry_after_ms": 1, "times": 3}])
    failure(make_provider(fake_anthropic, MNEMOSYNE_SDK_MAX_RETRIES=0))
    assert retry_counts(fake_anthropic) == [0]


def test_a_bad_request_is_refused_without_retries(fake_anthropic):
    fake_anthropic.script([{"kind": "status", "status": 400, "message": "messages: too short"}])
    error = failure(make_provider(fake_anthropic))
    assert isinstance(error, ProviderRefused) and error.code == "provider_error"
    assert "(400 invalid_request_error): messages: too short" in error.message
    assert retry_counts(fake_anthropic) == [0]
    assert RequestError(error.code, error.message).retryable is False


def test_a_hung_api_times_out_as_unavailable_within_the_timeout(fake_anthropic):
    fake_anthropic.script([{"kind": "hang"}])
    provider = make_provider(
        fake_anthropic, MNEMOSYNE_REQUEST_TIMEOUT_S="0.3", MNEMOSYNE_SDK_MAX_RETRIES=0
    )
    started = time.monotonic()
    error = failure(provider)
    elapsed = time.monotonic() - started
    assert isinstance(error, ProviderUnavailable)
    assert error.message == "the Anthropic API did not answer within 0.3 s"
    assert 0.3 <= elapsed < 2.0
    assert retry_counts(fake_anthropic) == [0]


def test_a_hang_is_retried_by_the_sdk_after_the_timeout(fake_anthropic):
    fake_anthropic.script([{"kind": "hang"}, {"kind": "text", "text": "second try"}])
    provider = make_provider(
        fake_anthropic, MNEMOSYNE_REQUEST_TIMEOUT_S="0.2", MNEMOSYNE_SDK_MAX_RETRIES=1
    )
    assert complete(provider).text == "second try"
    assert retry_counts(fake_anthropic) == [0, 1]


def test_an_unreachable_api_is_unavailable():
    with FakeAnthropic() as fake:
        environ = {**fake.env(), "MNEMOSYNE_SDK_MAX_RETRIES": "0"}
    # The server is stopped: its port refuses connections.
    provider = AnthropicProvider(AnthropicSettings.from_env(environ))
    error = failure(provider)
    assert isinstance(error, ProviderUnavailable)
    assert error.message.startswith(
        f"could not reach the Anthropic API at {environ['ANTHROPIC_BASE_URL']}"
    )


@pytest.mark.parametrize(
    ("error_type", "error_class", "code"),
    [
        ("overloaded_error", ProviderUnavailable, "provider_unavailable"),
        ("api_error", ProviderUnavailable, "provider_unavailable"),
        ("rate_limit_error", RateLimited, "rate_limited"),
        ("invalid_request_error", ProviderRefused, "provider_error"),
    ],
)
def test_a_mid_stream_error_is_classified_by_its_type_and_not_retried(
    fake_anthropic, error_type, error_class, code
):
    fake_anthropic.script([{"kind": "stream_error", "error_type": error_type, "after_deltas": 1}])
    error = failure(make_provider(fake_anthropic))
    assert type(error) is error_class and error.code == code
    assert f"(mid-stream {error_type})" in error.message
    assert retry_counts(fake_anthropic) == [0]


@pytest.mark.parametrize("after_deltas", [0, 1, 100])
def test_a_stream_ending_before_message_stop_is_unavailable(fake_anthropic, after_deltas):
    fake_anthropic.script([{"kind": "truncate", "after_deltas": after_deltas, "text": "cut " * 20}])
    error = failure(make_provider(fake_anthropic))
    assert isinstance(error, ProviderUnavailable)
    assert error.message == "stream ended before message_stop"


def test_a_stream_broken_mid_body_is_unavailable(fake_anthropic):
    fake_anthropic.script([{"kind": "truncate", "mode": "cut"}])
    error = failure(make_provider(fake_anthropic))
    assert isinstance(error, ProviderUnavailable)
    assert error.message.startswith("the connection to the Anthropic API broke mid-stream")


def test_max_tokens_must_be_positive(fake_anthropic):
    with pytest.raises(ValueError):
        complete(make_provider(fake_anthropic), max_tokens=0)
    assert fake_anthropic.requests == []


# The circuit breaker, around the real client.


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_fails_fast_and_closes_after_a_good_trial(fake_anthropic):
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, open_s=30, clock=clock)
    provider = make_provider(fake_anthropic, breaker=breaker, MNEMOSYNE_SDK_MAX_RETRIES=0)
    fake_anthropic.script([{"kind": "status", "status": 529, "times": 3}])

    async def scenario() -> None:
        for _ in range(3):
            with pytest.raises(ProviderUnavailable):
                await provider.complete("", [Message("user", "x")], 10)
        assert breaker.state is BreakerState.OPEN
        clock.now += 10
        with pytest.raises(ProviderUnavailable) as fast:
            await provider.complete("", [Message("user", "x")], 10)
        assert fast.value.message.startswith("not calling the Anthropic API: circuit open")
        assert fast.value.retry_after_ms == 20_000
        assert len(fake_anthropic.requests) == 3
        clock.now += 20
        completion = await provider.complete("", [Message("user", "x")], 10)
        assert completion.stop_reason == "end_turn"
        assert breaker.state is BreakerState.CLOSED

    asyncio.run(scenario())
    assert len(fake_anthropic.requests) == 4


def test_a_failed_trial_reopens_the_breaker(fake_anthropic):
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=5, clock=clock)
    provider = make_provider(fake_anthropic, breaker=breaker, MNEMOSYNE_SDK_MAX_RETRIES=0)
    fake_anthropic.script([{"kind": "truncate"}, {"kind": "stream_error"}])

    async def scenario() -> None:
        with pytest.raises(ProviderUnavailable):
            await provider.complete("", [Message("user", "x")], 10)
        clock.now += 5
        assert breaker.state is BreakerState.HALF_OPEN
        with pytest.raises(ProviderUnavailable) as trial:
            await provider.complete("", [Message("user", "x")], 10)
        assert "mid-stream overloaded_error" in trial.value.message
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(ProviderUnavailable, match="circuit open"):
            await provider.complete("", [Message("user", "x")], 10)

    asyncio.run(scenario())
    assert len(fake_anthropic.requests) == 2


def test_refusals_do_not_open_the_breaker(fake_anthropic):
    provider = make_provider(fake_anthropic, breaker=CircuitBreaker(failure_threshold=1))
    fake_anthropic.script([{"kind": "status", "status": 400, "times": 3}])
    for _ in range(3):
        assert isinstance(failure(provider), ProviderRefused)
    assert provider.breaker.state is BreakerState.CLOSED


def test_a_cancelled_call_gives_no_verdict(fake_anthropic):
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=5, clock=clock)
    provider = make_provider(fake_anthropic, breaker=breaker)
    fake_anthropic.script([{"kind": "status", "status": 500, "should_retry": False}])
    fake_anthropic.script([{"kind": "hang"}, {"kind": "text", "text": "after the cancel"}])

    async def scenario() -> None:
        with pytest.raises(ProviderUnavailable):
            await provider.complete("", [Message("user", "x")], 10)
        clock.now += 5
        trial = asyncio.create_task(provider.complete("", [Message("user", "x")], 10))
        await asyncio.to_thread(fake_anthropic.wait_for_requests, 2)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        assert breaker.state is BreakerState.HALF_OPEN
        completion = await provider.complete("", [Message("user", "x")], 10)
        assert completion.text == "after the cancel"

    asyncio.run(scenario())


# The classification itself, for what the fake does not send.


def test_a_spend_limit_is_refused_not_throttled():
    error = classify_status_error(
        status=429,
        body={
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "spend limit",
                "details": {"error_code": "enforced_spend_limit_reached"},
            },
        },
        headers={},
    )
    assert isinstance(error, ProviderRefused)
    assert "spend limit reached" in error.message


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (402, ProviderRefused),
        (404, ProviderRefused),
        (408, ProviderUnavailable),
        (409, ProviderUnavailable),
        (413, ProviderRefused),
        (504, ProviderUnavailable),
    ],
)
def test_other_statuses_are_classified(status, error_class):
    assert type(classify_status_error(status=status, body=None, headers={})) is error_class


def test_a_mid_stream_authentication_error_is_a_configuration_error():
    body = {"type": "error", "error": {"type": "authentication_error", "message": "revoked"}}
    error = classify_status_error(status=200, body=body, headers={})
    assert isinstance(error, ProviderAuthError)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after-ms": "250"}, 250),
        ({"retry-after-ms": "0.5"}, 1),
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2000),
        ({"retry-after": "1.5"}, 1500),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0),
        ({"retry-after": "never"}, None),
    ],
)
def test_retry_after_headers_are_read_in_the_sdk_order(headers, expected):
    assert parse_retry_after_ms(headers) == expected
