"""Tests of mnemosyne.runtime.worker.

Most run a real worker process (the executor agent) over pipes, as the supervisor does. Those
that need handlers of their own run a `Worker` in a thread of the test process, on os.pipe()
pairs standing in for the protocol stream.
"""

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from mnemosyne.runtime.stdio import ProtocolStream
from mnemosyne.runtime.worker import EOF_GRACE_S, RequestError, Worker

from worker_harness import (
    DEFAULT_TIMEOUT_S,
    agent_argv,
    assert_valid_worker_line,
    wait_until_gone,
)

# -- a worker process -------------------------------------------------------------------------


def test_ping_is_answered_while_a_long_request_runs(executor):
    executor.request("nap", "sleep", {"seconds": 3})
    started = time.monotonic()
    executor.send({"type": "ping", "nonce": 41})
    assert executor.expect("pong") == {"type": "pong", "nonce": 41}
    executor.request("quick", "echo", {"n": 1})
    assert executor.expect("response") == {"type": "response", "id": "quick", "result": {"n": 1}}
    assert time.monotonic() - started < 2, "answers waited for the sleep"


def test_cancel_of_a_running_request_is_answered_with_cancelled(executor):
    executor.request("nap", "sleep", {"seconds": 30})
    executor.send({"type": "cancel", "id": "nap", "reason": "deadline"})
    response = executor.response("nap")
    assert response["id"] == "nap"
    assert response["error"] == {
        "code": "cancelled",
        "message": "cancelled by the supervisor: deadline",
        "retryable": True,
    }


def test_cancel_after_the_response_is_ignored(executor):
    assert executor.call("e", "echo", {"x": 1})["result"] == {"x": 1}
    executor.send({"type": "cancel", "id": "e", "reason": "deadline"})
    executor.send({"type": "cancel", "id": "never-sent"})
    executor.send({"type": "ping", "nonce": 2})
    # Messages are handled in order, so anything the cancels caused would come before the pong.
    assert executor.read_message() == {"type": "pong", "nonce": 2}


def test_unknown_method_is_answered_with_method_not_found(executor):
    error = executor.call("m", "no_such_method")["error"]
    assert error["code"] == "method_not_found"
    assert error["retryable"] is False
    assert "echo" in error["message"]


def test_request_params_default_to_an_empty_object(executor):
    assert executor.call("e", "echo")["result"] == {}


def test_a_malformed_request_with_an_id_is_answered_with_invalid_request(executor):
    executor.send({"type": "request", "id": "bad", "method": "echo", "deadline_ms": -1})
    response = executor.expect("response")
    assert response["id"] == "bad"
    assert response["error"]["code"] == "invalid_request"
    assert "deadline_ms" in response["error"]["message"]


def test_malformed_stray_and_unknown_lines_are_logged_and_skipped(executor):
    executor.send({"type": "request", "method": "echo", "deadline_ms": 10})
    executor.send_raw(b'{"type": "ping", nonce\n')
    executor.send_raw(b"not a protocol line\n\n")
    executor.send({"type": "from_the_future", "x": 1})
    executor.send({"type": "ping", "nonce": 7})
    assert executor.read_message() == {"type": "pong", "nonce": 7}
    executor.close_stdin()
    assert executor.wait() == 0
    stderr = executor.stderr_text()
    assert "missing field `id`" in stderr
    assert "stray line on stdin" in stderr
    assert "from_the_future" in stderr


def test_shutdown_lets_in_flight_work_finish_refuses_new_work_and_exits_0(executor):
    executor.request("nap", "sleep", {"seconds": 0.5})
    started = time.monotonic()
    executor.send({"type": "shutdown", "grace_ms": 5000, "reason": "test"})
    executor.request("late", "echo", {})
    late = executor.expect("response")
    assert late["id"] == "late"
    assert late["error"]["code"] == "shutting_down"
    assert late["error"]["retryable"] is True
    assert executor.response("nap") == {"type": "response", "id": "nap", "result": {"slept": 0.5}}
    assert executor.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert executor.remaining_lines() == []


def test_shutdown_cancels_what_outlives_the_grace_period(executor):
    executor.request("nap", "sleep", {"seconds": 30})
    started = time.monotonic()
    executor.send({"type": "shutdown", "grace_ms": 200})
    response = executor.response("nap")
    assert response["error"]["code"] == "cancelled"
    assert response["error"]["message"].startswith("cancelled by shutdown")
    assert executor.wait(timeout=5) == 0
    assert time.monotonic() - started < 3


def test_stdin_eof_exits_0(executor):
    executor.close_stdin()
    assert executor.wait(timeout=5) == 0
    assert executor.remaining_lines() == []


def test_stdin_eof_cancels_in_flight_work_after_a_short_grace(executor):
    executor.request("nap", "sleep", {"seconds": 30})
    executor.send({"type": "ping", "nonce": 1})
    executor.expect("pong")  # the request has been received
    started = time.monotonic()
    executor.close_stdin()
    assert executor.response("nap")["error"]["code"] == "cancelled"
    assert executor.wait(timeout=5) == 0
    assert EOF_GRACE_S * 0.9 <= time.monotonic() - started < EOF_GRACE_S + 3


def test_a_partial_line_at_eof_is_logged_and_the_worker_exits_0(executor):
    executor.send_raw(b'{"type":"ping"')
    executor.close_stdin()
    assert executor.wait(timeout=5) == 0
    assert "stdin ended in the middle of a line" in executor.stderr_text()


def test_an_oversize_incoming_line_makes_the_worker_exit_65(spawn):
    worker = spawn(agent_argv(), env={"MNEMOSYNE_MAX_LINE_BYTES": "1024"})
    worker.start()
    worker.send_raw(b'{"type":"request","pad":"' + b"x" * 2000 + b'"}\n')
    assert worker.wait() == 65
    assert "over the 1024-byte limit" in worker.stderr_text()
    assert worker.remaining_lines() == []


def test_an_incoming_line_of_exactly_the_limit_is_accepted(spawn):
    worker = spawn(agent_argv(), env={"MNEMOSYNE_MAX_LINE_BYTES": "1024"})
    worker.start()
    head = b'{"type":"request","id":"big","method":"echo","deadline_ms":1000,"params":{"p":"'
    tail = b'"}}'
    worker.send_raw(head + b"x" * (1024 - len(head) - len(tail)) + tail + b"\n")
    assert worker.expect("response")["result"] == {"p": "x" * (1024 - len(head) - len(tail))}


def test_an_invalid_line_limit_is_a_fatal_configuration_error(spawn):
    worker = spawn(agent_argv(), env={"MNEMOSYNE_MAX_LINE_BYTES": "lots"})
    fatal = worker.expect("fatal")
    assert fatal["code"] == "config"
    assert "MNEMOSYNE_MAX_LINE_BYTES" in fatal["message"]
    assert worker.wait() == 78


# A parent that starts the worker with its own stdio, so that the worker's stdin stays open
# (the test holds the write end) and only the watchdog can notice the parent's death.
INTERMEDIATE_PARENT = "import subprocess, sys; subprocess.Popen(sys.argv[1:]).wait()"


def test_the_worker_exits_when_its_parent_dies(spawn):
    parent = spawn([sys.executable, "-c", INTERMEDIATE_PARENT, *agent_argv()])
    hello, _ = parent.start()
    worker_pid = hello["pid"]
    assert worker_pid != parent.pid
    parent.proc.kill()
    parent.proc.wait(timeout=DEFAULT_TIMEOUT_S)
    # The watchdog polls once a second; allow generous slack on a loaded machine.
    assert wait_until_gone(worker_pid, timeout=5), "worker outlived its parent"
    assert "parent process" in parent.stderr_text()


def test_the_worker_exits_when_the_supervisor_pid_it_was_given_dies(spawn):
    # The supervisor is not always the parent (a launcher may sit in between).
    supervisor = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        worker = spawn(agent_argv(), env={"MNEMOSYNE_SUPERVISOR_PID": str(supervisor.pid)})
        worker.start()
        supervisor.kill()
        supervisor.wait(timeout=DEFAULT_TIMEOUT_S)
        assert worker.wait(timeout=5) == 1
        assert f"supervisor process {supervisor.pid} is gone" in worker.stderr_text()
    finally:
        supervisor.kill()
        supervisor.wait(timeout=DEFAULT_TIMEOUT_S)


# -- a worker in this process, with handlers of the test's own ---------------------------------

LIMIT = 4096


class InProcessWorker:
    """A Worker running in a thread, talking over pipes the test holds."""

    def __init__(self, methods):
        in_read, self._in_write = os.pipe()
        out_read, self._out_write = os.pipe()
        self.worker = Worker(ProtocolStream(in_read, self._out_write), LIMIT)
        self.exit_code: int | None = None
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._runner = threading.Thread(target=self._run, args=(methods,), daemon=True)
        self._reader = threading.Thread(target=self._read, args=(out_read,), daemon=True)
        self._runner.start()
        self._reader.start()
        assert self.read() == {"type": "ready", "methods": sorted(methods)}

    def _run(self, methods):
        self.exit_code = self.worker.run(methods)
        os.close(self._out_write)

    def _read(self, fd):
        with os.fdopen(fd, "rb") as out:
            for line in out:
                self._lines.put(line.rstrip(b"\n"))

    def send(self, message):
        os.write(self._in_write, json.dumps(message).encode() + b"\n")

    def request(self, request_id, method, params=None, **extra):
        self.send(
            {
                "type": "request",
                "id": request_id,
                "method": method,
                "params": params,
                "deadline_ms": 10_000,
                **extra,
            }
        )

    def read(self, timeout=DEFAULT_TIMEOUT_S):
        return assert_valid_worker_line(self._lines.get(timeout=timeout))

    def stop(self):
        # EOF lets the worker's reader thread finish on its own; its read end of the pipe is
        # left open rather than closed under a thread that might still be reading it.
        os.close(self._in_write)
        self._runner.join(DEFAULT_TIMEOUT_S)
        assert not self._runner.is_alive(), "worker did not exit after EOF"


@pytest.fixture
def in_process():
    started = []

    def start(methods):
        worker = InProcessWorker(methods)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


async def fail(params, ctx):
    raise ValueError("something broke")


async def echo(params, ctx):
    return params


def test_a_handler_exception_becomes_an_internal_error_and_the_loop_goes_on(in_process, caplog):
    worker = in_process({"fail": fail, "echo": echo})
    worker.request("f", "fail")
    error = worker.read()["error"]
    assert error["code"] == "internal"
    assert error["retryable"] is False
    assert error["message"] == "ValueError: something broke"
    traceback_tail = error["details"]["traceback"]
    assert traceback_tail.splitlines()[-1] == "ValueError: something broke"
    assert len(traceback_tail.splitlines()) <= 20
    assert "request 'f' failed" in caplog.text
    worker.request("e", "echo", {"still": "alive"})
    assert worker.read()["result"] == {"still": "alive"}


def test_a_request_error_is_sent_with_its_code_and_details(in_process):
    async def throttled(params, ctx):
        raise RequestError("rate_limited", "slow down", details={"retry_after_ms": 250})

    worker = in_process({"throttled": throttled})
    worker.request("t", "throttled")
    assert worker.read()["error"] == {
        "code": "rate_limited",
        "message": "slow down",
        "retryable": True,
        "details": {"retry_after_ms": 250},
    }


def test_a_result_too_long_for_a_line_becomes_an_internal_error(in_process):
    async def huge(params, ctx):
        return "x" * LIMIT

    worker = in_process({"huge": huge})
    worker.request("h", "huge")
    error = worker.read()["error"]
    assert error["code"] == "internal"
    assert "exceeds the limit" in error["message"]


def test_a_result_that_is_not_json_becomes_an_internal_error(in_process):
    async def opaque(params, ctx):
        return {"value": object()}

    worker = in_process({"opaque": opaque})
    worker.request("o", "opaque")
    assert worker.read()["error"]["code"] == "internal"


def test_non_finite_results_are_sent_as_null(in_process):
    async def nan(params, ctx):
        return [float("nan"), "\ud800"]

    worker = in_process({"nan": nan})
    worker.request("n", "nan")
    assert worker.read()["result"] == [None, "\ufffd"]


def test_a_handler_that_finishes_despite_cancellation_sends_its_result(in_process):
    entered = threading.Event()

    async def stubborn(params, ctx):
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return {"finished": "anyway"}

    worker = in_process({"stubborn": stubborn})
    worker.request("s", "stubborn")
    assert entered.wait(DEFAULT_TIMEOUT_S)
    worker.send({"type": "cancel", "id": "s"})
    assert worker.read() == {"type": "response", "id": "s", "result": {"finished": "anyway"}}


def test_the_context_carries_delivery_and_deadline_and_sends_progress(in_process):
    async def inspect(params, ctx):
        await ctx.progress("half way", fraction=0.5, data={"k": 1})
        await ctx.progress(fraction=7)  # clamped into 0..1
        return {"id": ctx.id, "delivery": ctx.delivery, "remaining": ctx.remaining()}

    worker = in_process({"inspect": inspect})
    worker.request("i", "inspect", delivery=3)
    assert worker.read() == {
        "type": "progress",
        "id": "i",
        "message": "half way",
        "fraction": 0.5,
        "data": {"k": 1},
    }
    assert worker.read() == {"type": "progress", "id": "i", "fraction": 1.0}
    result = worker.read()["result"]
    assert result["id"] == "i"
    assert result["delivery"] == 3
    assert 0 < result["remaining"] <= 10


def test_delivery_defaults_to_1_and_plain_functions_work_as_handlers(in_process):
    worker = in_process({"plain": lambda params, ctx: ctx.delivery})
    worker.request("p", "plain")
    assert worker.read()["result"] == 1


def test_a_duplicate_id_in_flight_is_not_answered_twice(in_process):
    release = asyncio.Event()

    async def wait(params, ctx):
        await release.wait()
        return "done"

    async def let_go(params, ctx):
        release.set()
        return "released"

    worker = in_process({"wait": wait, "let_go": let_go})
    worker.request("w", "wait")
    worker.request("w", "wait")
    worker.request("l", "let_go")
    responses = [worker.read(), worker.read()]
    assert sorted(r["id"] for r in responses) == ["l", "w"]
    worker.send({"type": "ping", "nonce": 5})
    assert worker.read() == {"type": "pong", "nonce": 5}
