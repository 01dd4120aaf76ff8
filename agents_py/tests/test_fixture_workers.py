"""Smoke tests of the fixture workers in tests/fixtures/workers, which the Rust integration
tests run: each starts as its docstring says, and the misbehaving methods misbehave.
"""

import os
import signal
import time

from mnemosyne.runtime import wire

from worker_harness import fixture_argv, pid_gone, wait_until_gone


def test_misbehave_serves_the_extra_methods_besides_the_diagnostics(spawn):
    worker = spawn(fixture_argv("misbehave", "--role", "executor"))
    _, ready = worker.start()
    extra = {
        "crash",
        "spin",
        "spawn_grandchild",
        "garbage",
        "broken_json",
        "oversize",
        "stderr",
        "crash_if_delivery_below",
    }
    assert extra | {"echo", "sleep", "stdout_noise"} <= set(ready["methods"])


def test_misbehave_garbage_writes_a_stray_line_then_answers(spawn):
    worker = spawn(fixture_argv("misbehave", "--role", "executor"))
    worker.start()
    worker.request("g", "garbage")
    assert worker.read_line() == b"this is not json"
    assert worker.response("g")["result"] == {"ok": True}


def test_misbehave_broken_json_writes_a_protocol_violation(spawn):
    worker = spawn(fixture_argv("misbehave", "--role", "executor"))
    worker.start()
    worker.request("b", "broken_json")
    line = worker.read_line()
    assert wire.decode_line(line, wire.Sender.WORKER).kind is wire.LineKind.VIOLATION


def test_misbehave_oversize_writes_a_line_16_bytes_over_the_limit(spawn):
    worker = spawn(fixture_argv("misbehave"), env={"MNEMOSYNE_MAX_LINE_BYTES": "2048"})
    worker.start()
    worker.request("o", "oversize")
    line = worker.read_line()
    assert len(line) == 2048 + 16
    assert wire.decode_line(line, wire.Sender.WORKER, limit=2048).kind is wire.LineKind.VIOLATION
    assert wire.decode_line(line, wire.Sender.WORKER).kind is wire.LineKind.MESSAGE


def test_misbehave_crash_exits_with_the_code_asked_for(spawn):
    worker = spawn(fixture_argv("misbehave"))
    worker.start()
    worker.request("c", "crash", {"exit_code": 9})
    assert worker.wait() == 9
    assert "crashing on purpose" in worker.stderr_text()


def test_misbehave_crash_if_delivery_below_crashes_only_on_early_deliveries(spawn):
    worker = spawn(fixture_argv("misbehave"))
    worker.start()
    assert worker.call("d", "crash_if_delivery_below", {"n": 2}, delivery=2)["result"] == {
        "delivery": 2
    }
    worker.request("d1", "crash_if_delivery_below", {"n": 2}, delivery=1)
    assert worker.wait() == 3


def test_misbehave_stderr_writes_the_text(spawn):
    worker = spawn(fixture_argv("misbehave"))
    worker.start()
    assert worker.call("s", "stderr", {"text": "to the supervisor's logs"})["result"] == {
        "ok": True
    }
    worker.close_stdin()
    assert worker.wait() == 0
    assert "to the supervisor's logs\n" in worker.stderr_text()


def test_misbehave_spin_blocks_the_loop_so_pings_go_unanswered(spawn):
    worker = spawn(fixture_argv("misbehave"))
    worker.start()
    worker.request("s", "spin")
    assert worker.expect("progress") == {"type": "progress", "id": "s", "message": "spinning"}
    worker.send({"type": "ping", "nonce": 1})
    worker.assert_silent(within=0.5)


def test_misbehave_spawn_grandchild_leaves_a_running_sleep(spawn):
    worker = spawn(fixture_argv("misbehave"))
    worker.start()
    grandchild = worker.call("g", "spawn_grandchild")["result"]["pid"]
    try:
        assert not pid_gone(grandchild)
        assert os.getpgid(grandchild) == worker.pid  # in the worker's process group
    finally:
        worker.kill()
    assert wait_until_gone(grandchild, timeout=5)


def test_wrong_protocol_says_hello_with_protocol_999_and_exits_0_at_eof(spawn):
    worker = spawn(fixture_argv("wrong_protocol", "--role", "executor"))
    hello = worker.expect("hello")
    assert hello["protocol"] == 999
    assert hello["pid"] == worker.pid
    worker.send({"type": "ping", "nonce": 1})
    worker.close_stdin()
    assert worker.wait() == 0
    assert worker.remaining_lines() == []


def test_slow_start_says_hello_only_after_its_delay(spawn):
    started = time.monotonic()
    worker = spawn(fixture_argv("slow_start", "--role", "executor", "--delay", "0.4"))
    worker.start()
    assert time.monotonic() - started >= 0.4
    assert worker.call("e", "echo", {"a": 1})["result"] == {"a": 1}


def test_ignore_sigterm_survives_sigterm_shutdown_and_eof(spawn):
    worker = spawn(fixture_argv("ignore_sigterm", "--role", "executor"))
    _, ready = worker.start()
    assert ready["methods"] == []
    os.kill(worker.pid, signal.SIGTERM)
    worker.send({"type": "shutdown", "grace_ms": 0})
    worker.send({"type": "ping", "nonce": 3})
    assert worker.expect("pong") == {"type": "pong", "nonce": 3}
    worker.close_stdin()
    assert worker.proc.poll() is None
    worker.assert_silent(within=0.3)
    assert worker.proc.poll() is None, "ignore_sigterm exited on its own"
    assert "ignoring shutdown" in worker.stderr_text()


def test_exit_at_start_exits_with_its_code_before_hello(spawn):
    worker = spawn(fixture_argv("exit_at_start", "--role", "executor", "--code", "5"))
    assert worker.wait() == 5
    assert worker.remaining_lines() == []
    assert "exiting at start with 5" in worker.stderr_text()


def test_exit_at_start_defaults_to_code_1(spawn):
    worker = spawn(fixture_argv("exit_at_start"))
    assert worker.wait() == 1


def test_fatal_config_sends_fatal_and_exits_78(spawn):
    worker = spawn(fixture_argv("fatal_config", "--role", "executor"))
    assert worker.expect("fatal") == {
        "type": "fatal",
        "code": "config",
        "message": "fixture: required setting missing",
    }
    assert worker.wait() == 78
    assert worker.remaining_lines() == []


def test_noisy_start_prints_a_stray_banner_before_hello(spawn):
    worker = spawn(fixture_argv("noisy_start", "--role", "executor"))
    banner = worker.read_line()
    assert wire.decode_line(banner, wire.Sender.WORKER).kind is wire.LineKind.STRAY
    worker.start()
    assert worker.call("e", "echo", {"x": 1})["result"] == {"x": 1}
