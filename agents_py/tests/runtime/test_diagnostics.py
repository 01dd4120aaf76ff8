"""Tests of mnemosyne.runtime.diagnostics, through a real executor worker process."""

import time


def test_echo_returns_its_params(executor):
    params = {"text": "héllo ✓", "n": [1, 2.5, None], "nested": {"ok": True}}
    assert executor.call("e", "echo", params) == {"type": "response", "id": "e", "result": params}


def test_sleep_reports_progress_about_once_a_second_and_returns_the_seconds(executor):
    started = time.monotonic()
    executor.request("nap", "sleep", {"seconds": 1.3})
    progress = executor.expect("progress")
    assert progress["id"] == "nap"
    assert progress["message"] == "slept 1 of 1.3 s"
    assert 0.7 < progress["fraction"] < 0.8
    assert executor.expect("response")["result"] == {"slept": 1.3}
    assert 1.3 <= time.monotonic() - started < 3


def test_sleep_rejects_bad_params(executor):
    for number, params in enumerate([{}, {"seconds": -1}, {"seconds": "3"}, [3]]):
        error = executor.call(f"bad-{number}", "sleep", params)["error"]
        assert error["code"] == "invalid_params"
        assert error["retryable"] is False


def test_stdout_noise_lands_on_stderr_and_never_on_the_wire(executor):
    assert executor.call("noise", "stdout_noise")["result"] == {"ok": True}
    executor.close_stdin()
    assert executor.wait() == 0
    # read_message would already have failed on a stray line before the response; and after
    # it nothing at all may follow.
    assert executor.remaining_lines() == []
    stderr = executor.stderr_text()
    for noise in ("stdout_noise: print() from the worker", "raw fd1 write", "hi", "from child"):
        assert f"{noise}\n" in stderr
