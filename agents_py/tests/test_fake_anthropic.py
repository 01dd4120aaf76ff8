"""Tests of the fake Anthropic API (tests/fake_anthropic): the wire format the SDK relies on,
scripting, matching, recording, the HTTP control endpoints and the CLI."""

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from fake_anthropic import DEFAULT_KEY, FakeAnthropic, ScriptError, review_text
from worker_harness import DEFAULT_TIMEOUT_S, REPO_ROOT

SERVER_SCRIPT = REPO_ROOT / "tests" / "fake_anthropic" / "server.py"


def call(
    fake: FakeAnthropic,
    path: str = "/v1/messages",
    body: Any = None,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        fake.url + path,
        data=data,
        method=method or ("POST" if data is not None else "GET"),
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=DEFAULT_TIMEOUT_S) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                (response.read()),
            )
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def api(fake: FakeAnthropic, body: Any = None, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    headers = {
        "x-api-key": fake.key,
        "anthropic-version": "2023-06-01",
        **kwargs.pop("headers", {}),
    }
    return call(fake, body=body, headers=headers, **kwargs)


def message_body(prompt: str = "hello", *, stream: bool = False, system: str = "") -> dict:
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    }
    if system:
        body["system"] = system
    return body


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        events.append((lines["event"], data))
    return events


def answer_text(raw: bytes) -> str:
    return json.loads(raw)["content"][0]["text"]


# The Messages API as the SDK sees it.


def test_a_streamed_answer_follows_the_real_event_order(fake_anthropic):
    fake_anthropic.script([{"kind": "text", "text": "one two three four five six seven eight"}])
    status, headers, raw = api(fake_anthropic, message_body(stream=True))
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_")
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert len(deltas) > 1 and {delta["type"] for delta in deltas} == {"text_delta"}
    assert "".join(delta["text"] for delta in deltas) == "one two three four five six seven eight"
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["model"] == "claude-test"
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    # Cumulative: the whole answer's output tokens, not the ones since message_start.
    assert message_delta["usage"]["output_tokens"] == 8


def test_a_tool_use_streams_its_input_as_json_pieces(fake_anthropic):
    tool_input = {"path": "src/main.rs", "limit": 20}
    fake_anthropic.script([{"kind": "tool_use", "name": "read", "input": tool_input}])
    events = sse_events(api(fake_anthropic, message_body(stream=True))[2])
    start = next(data for name, data in events if name == "content_block_start")
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["name"] == "read" and start["content_block"]["input"] == {}
    pieces = [
        data["delta"]["partial_json"] for name, data in events if name == "content_block_delta"
    ]
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == tool_input
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_an_answer_without_stream_is_one_json_message(fake_anthropic):
    fake_anthropic.script([{"kind": "text", "text": "hi", "usage": {"input_tokens": 9}}])
    status, headers, raw = api(fake_anthropic, message_body())
    message = json.loads(raw)
    assert status == 200 and headers["content-type"] == "application/json"
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": "hi"}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert message["usage"]["input_tokens"] == 9 and message["usage"]["output_tokens"] == 1


def test_with_nothing_scripted_a_default_answer_comes_back(fake_anthropic):
    assert "fake answer" in answer_text(api(fake_anthropic, message_body())[2])


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": DEFAULT_KEY}, {"authorization": f"Bearer {DEFAULT_KEY}"}],
)
def test_either_auth_style_is_accepted_with_any_version(fake_anthropic, headers):
    status, _, _ = call(
        fake_anthropic,
        body=message_body(),
        headers={**headers, "anthropic-version": "2026-10-21"},
    )
    assert status == 200
    [request] = fake_anthropic.requests
    assert request["auth"] == ("x-api-key" if "x-api-key" in headers else "bearer")
    assert DEFAULT_KEY not in json.dumps(request)


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"authorization": "Bearer no"}])
def test_a_missing_or_wrong_key_gets_401_with_the_request_id_in_the_body(fake_anthropic, headers):
    fake_anthropic.script([{"kind": "text", "text": "kept for later"}])
    status, response_headers, raw = call(fake_anthropic, body=message_body(), headers=headers)
    error = json.loads(raw)
    assert status == 401
    assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
    assert error["request_id"] == response_headers["request-id"]
    # A rejected request uses up no script entry.
    assert fake_anthropic.pending == 1


def test_a_scripted_status_sends_the_error_body_and_headers(fake_anthropic):
    fake_anthropic.script(
        [
            {
                "kind": "status",
                "status": 429,
                "retry_after_ms": 5,
                "should_retry": False,
                "error_code": "enforced_spend_limit_reached",
            }
        ]
    )
    status, headers, raw = api(fake_anthropic, message_body())
    assert status == 429
    assert headers["retry-after-ms"] == "5" and headers["x-should-retry"] == "false"
    assert "retry-after" not in headers
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-tokens-reset"].endswith("Z")
    error = json.loads(raw)["error"]
    assert error["type"] == "rate_limit_error"
    assert error["details"] == {"error_code": "enforced_spend_limit_reached"}


def test_a_stream_error_arrives_as_an_error_event_after_the_deltas(fake_anthropic):
    fake_anthropic.script([{"kind": "stream_error", "error_type": "overloaded_error"}])
    events = sse_events(api(fake_anthropic, message_body("x " * 50, stream=True))[2])
    names = [name for name, _ in events]
    assert names.count("content_block_delta") == 1
    assert names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["error"]["type"] == "overloaded_error"


def test_a_truncated_stream_ends_cleanly_before_message_stop(fake_anthropic):
    fake_anthropic.script([{"kind": "truncate", "after_deltas": 2}])
    names = [name for name, _ in sse_events(api(fake_anthropic, message_body(stream=True))[2])]
    assert names.count("content_block_delta") == 2
    assert names[-1] == "content_block_delta" and "message_stop" not in names


def test_a_delay_answers_after_it(fake_anthropic):
    fake_anthropic.script(
        [{"kind": "delay", "seconds": 0.2, "then": {"kind": "text", "text": "late"}}]
    )
    started = time.monotonic()
    assert answer_text(api(fake_anthropic, message_body())[2]) == "late"
    assert time.monotonic() - started >= 0.2


def test_count_tokens_and_models(fake_anthropic):
    status, _, raw = api(
        fake_anthropic, message_body("four words right here"), path="/v1/messages/count_tokens"
    )
    assert status == 200 and json.loads(raw) == {"input_tokens": 4}
    status, _, raw = api(fake_anthropic, path="/v1/models")
    models = json.loads(raw)
    assert status == 200 and models["has_more"] is False and models["data"]
    model_id = models["data"][0]["id"]
    status, _, raw = api(fake_anthropic, path=f"/v1/models/{model_id}")
    assert status == 200 and json.loads(raw)["id"] == model_id
    status, headers, raw = api(fake_anthropic, path="/v1/nothing")
    assert status == 404 and json.loads(raw)["request_id"] == headers["request-id"]


def test_a_request_missing_required_fields_is_invalid(fake_anthropic):
    status, _, raw = api(fake_anthropic, {"model": "m", "messages": []})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


# Scripting and recording.


def test_match_entries_go_to_the_requests_that_contain_their_text(fake_anthropic):
    fake_anthropic.script(
        [
            {"kind": "text", "text": "for anyone"},
            {"kind": "review", "passed": True, "match": "You are the reviewer"},
        ]
    )
    executor = answer_text(api(fake_anthropic, message_body("do the task"))[2])
    reviewer = answer_text(
        api(fake_anthropic, message_body("judge it", system="You are the reviewer agent"))[2]
    )
    assert executor == "for anyone"
    assert json.loads(reviewer)["passed"] is True


def test_a_match_entry_wins_over_an_earlier_plain_one(fake_anthropic):
    fake_anthropic.script(
        [{"kind": "text", "text": "plain"}, {"kind": "text", "text": "matched", "match": "needle"}]
    )
    assert answer_text(api(fake_anthropic, message_body("a needle here"))[2]) == "matched"
    assert answer_text(api(fake_anthropic, message_body("a needle here"))[2]) == "plain"


def test_times_queues_copies_and_repeat_never_runs_out(fake_anthropic):
    fake_anthropic.script(
        [
            {"kind": "text", "text": "twice", "times": 2},
            {"kind": "text", "text": "always", "repeat": True},
        ]
    )
    answers = [answer_text(api(fake_anthropic, message_body())[2]) for _ in range(4)]
    assert answers == ["twice", "twice", "always", "always"]
    assert fake_anthropic.pending == 1


def test_a_review_entry_answers_with_the_verdict_json():
    verdict = json.loads(
        review_text({"passed": False, "issues": ["no tests"], "recommendations": ["add tests"]})
    )
    assert verdict["passed"] is False
    assert verdict["gates"]["correctness"] is False
    assert set(verdict) == {"passed", "gates", "issues", "recommendations", "confidence"}
    assert verdict["issues"] == ["no tests"] and verdict["recommendations"] == ["add tests"]
    fenced = review_text({"passed": True, "fenced": True})
    assert fenced.startswith("```json\n") and fenced.endswith("\n```")
    assert all(json.loads(fenced[8:-4])["gates"].values())


@pytest.mark.parametrize(
    "entry",
    [
        {"kind": "nope"},
        {"kind": "text", "txt": "typo"},
        {"kind": "tool_use"},
        {"kind": "status", "status": 200},
        {"kind": "delay", "seconds": -1},
        {"kind": "delay", "seconds": 1, "then": {"kind": "nope"}},
        {"kind": "truncate", "mode": "sideways"},
        {"kind": "text", "times": 0},
        "text",
    ],
)
def test_a_bad_script_entry_is_refused(fake_anthropic, entry):
    with pytest.raises(ScriptError):
        fake_anthropic.script([entry])
    assert fake_anthropic.pending == 0


def test_requests_are_recorded_with_the_retry_count(fake_anthropic):
    api(fake_anthropic, message_body("recorded"), headers={"x-stainless-retry-count": "2"})
    [request] = fake_anthropic.wait_for_requests(1)
    assert request["method"] == "POST" and request["path"] == "/v1/messages"
    assert request["retry_count"] == 2
    assert request["body"]["messages"][0]["content"] == "recorded"
    assert request["headers"]["x-api-key"] == "[redacted]"
    assert request["headers"]["anthropic-version"] == "2023-06-01"


def test_the_http_control_endpoints_script_list_and_reset(fake_anthropic):
    entries = [{"kind": "text", "text": "via http"}]
    status, _, raw = call(fake_anthropic, "/_fake/script", entries)
    assert status == 200 and json.loads(raw) == {"queued": 1}
    assert answer_text(api(fake_anthropic, message_body())[2]) == "via http"
    status, _, raw = call(fake_anthropic, "/_fake/requests")
    assert status == 200 and [r["path"] for r in json.loads(raw)] == ["/v1/messages"]
    status, _, raw = call(fake_anthropic, "/_fake/script", [{"kind": "bogus"}])
    assert status == 400 and "unknown script entry kind" in json.loads(raw)["error"]
    call(fake_anthropic, "/_fake/script", entries)
    status, _, _ = call(fake_anthropic, "/_fake/reset", {})
    assert status == 200
    assert fake_anthropic.requests == [] and fake_anthropic.pending == 0


# The command line, as the Rust tests run it.


def start_cli(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--key", "cli-key", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, json.loads(line)["url"]


def test_the_cli_prints_its_url_serves_a_script_and_exits_when_stdin_closes(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"kind": "text", "text": "from the file"}]), encoding="utf-8")
    process, url = start_cli("--script", str(script))
    try:
        assert url.startswith("http://127.0.0.1:")
        request = urllib.request.Request(
            url + "/v1/messages",
            data=json.dumps(message_body()).encode(),
            headers={"x-api-key": "cli-key", "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=DEFAULT_TIMEOUT_S) as response:
            assert answer_text(response.read()) == "from the file"
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(timeout=DEFAULT_TIMEOUT_S) == 0
    finally:
        process.kill()
        process.wait()


def test_the_cli_exits_on_sigterm():
    process, _ = start_cli()
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEFAULT_TIMEOUT_S) == 0
    finally:
        process.kill()
        process.wait()


# The chaos entry of soak tests.


def draw_outcomes(seed: int, entry: dict[str, Any], requests: int) -> list[tuple[int, str]]:
    """(status, answer text or error type) of `requests` calls to a fake seeded with `seed`."""
    outcomes = []
    with FakeAnthropic(seed=seed) as fake:
        fake.script([entry])
        for _ in range(requests):
            status, _, raw = api(fake, message_body())
            payload = json.loads(raw)
            detail = answer_text(raw) if status == 200 else payload["error"]["type"]
            outcomes.append((status, detail))
        assert sum(fake.chaos_counts.values()) == requests
    return outcomes


def test_a_chaos_entry_mixes_faults_and_answers_and_a_seed_replays_the_mix():
    entry = {
        "kind": "chaos",
        "repeat": True,
        "p_429": 0.2,
        "p_500": 0.2,
        "p_529": 0.2,
        "p_delay": 0.5,
        "max_delay_s": 0.01,
        "then": {"kind": "text", "text": "survived"},
    }
    first = draw_outcomes(7, entry, 40)
    assert draw_outcomes(7, entry, 40) == first
    statuses = {status for status, _ in first}
    assert statuses == {200, 429, 500, 529}, first
    assert all(detail == "survived" for status, detail in first if status == 200)
    assert ("529", "overloaded_error") in {(str(s), d) for s, d in first}


def test_a_chaos_hang_never_answers_and_the_counts_say_so(fake_anthropic):
    fake_anthropic.script([{"kind": "chaos", "p_hang": 1.0}])
    request = urllib.request.Request(
        fake_anthropic.url + "/v1/messages",
        data=json.dumps(message_body()).encode(),
        headers={"x-api-key": fake_anthropic.key, "content-type": "application/json"},
    )
    with pytest.raises(TimeoutError):
        urllib.request.urlopen(request, timeout=0.3)
    status, _, raw = call(fake_anthropic, "/_fake/chaos")
    assert status == 200
    assert json.loads(raw) == {"hang": 1}


@pytest.mark.parametrize(
    "entry",
    [
        {"kind": "chaos", "p_429": 1.5},
        {"kind": "chaos", "p_429": 0.6, "p_529": 0.6},
        {"kind": "chaos", "max_delay_s": -1},
        {"kind": "chaos", "then": {"kind": "chaos"}},
        {"kind": "chaos", "p_crash": 0.1},
    ],
)
def test_a_bad_chaos_entry_is_refused(fake_anthropic, entry):
    with pytest.raises(ScriptError):
        fake_anthropic.script([entry])


def test_without_recording_the_fake_still_answers_but_keeps_no_log():
    with FakeAnthropic(record=False) as fake:
        status, _, _ = api(fake, message_body())
        assert status == 200
        assert fake.requests == []
