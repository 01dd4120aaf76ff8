"""Tests of mnemosyne.agents.sandbox: what a command the model asked for can and cannot reach.

The tests that run bubblewrap skip, saying why, where it cannot make namespaces. The end-to-end
test drives a real executor worker with the fake Anthropic API: the model's scripted tool
calls go after the key every way a command could, and neither the tool results the model saw
nor the worker's answer may hold the canary key.
"""

import asyncio
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from mnemosyne.agents.command import run_command
from mnemosyne.agents.sandbox import (
    BWRAP_ENV,
    HIDE_ENV,
    REFUSED_NO_SANDBOX,
    SANDBOX_ENV,
    Sandbox,
    command_policy,
)
from mnemosyne.agents.tools import Toolbox
from mnemosyne.agents.workspace import Workspace

from fake_anthropic import FakeAnthropic
from sandbox_support import bwrap_problem
from worker_harness import agent_argv

needs_bwrap = pytest.mark.skipif(
    bwrap_problem() is not None, reason=f"no sandbox here: {bwrap_problem()}"
)

CANARY = "sk-ant-CANARY-" + uuid.uuid4().hex
DEADLINE_S = 10.0


def sandbox(hidden=(), home=None):
    return Sandbox(bwrap=shutil.which("bwrap") or "bwrap", hidden=hidden, home=home)


def run(command, cwd, box):
    return asyncio.run(run_command(command, cwd, 10.0, dict(os.environ), box))


def test_the_policy_follows_what_the_supervisor_found():
    assert command_policy({SANDBOX_ENV: "off"}).sandbox is None
    assert command_policy({SANDBOX_ENV: "off"}).refusal is None
    assert command_policy({SANDBOX_ENV: "refuse"}).refusal == REFUSED_NO_SANDBOX
    policy = command_policy(
        {SANDBOX_ENV: "bwrap", BWRAP_ENV: "/x/bwrap", HIDE_ENV: '["/c", "/s"]', "HOME": "/h"}
    )
    assert policy.sandbox == Sandbox("/x/bwrap", (Path("/c"), Path("/s")), Path("/h"))


def test_without_a_word_from_the_supervisor_commands_need_bwrap_on_the_path(tmp_path):
    assert command_policy({"PATH": str(tmp_path)}).refusal == REFUSED_NO_SANDBOX
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert command_policy({"PATH": str(tmp_path)}).sandbox == Sandbox(str(fake))


def test_a_hide_list_that_is_not_json_refuses_commands_rather_than_guess():
    assert command_policy({SANDBOX_ENV: "bwrap", BWRAP_ENV: "/b", HIDE_ENV: "/c:/s"}).refusal


def test_hidden_directories_are_covered_around_the_workspace_mount(tmp_path):
    state, config = tmp_path / "state", tmp_path / "ws" / "plan" / "config"
    workspace = tmp_path / "ws" / "plan"
    for directory in (state, config):
        directory.mkdir(parents=True)
    args = Sandbox("bwrap", (state, config, tmp_path / "missing")).wrap(["sh"], workspace)
    real = Path(os.path.realpath(tmp_path))
    bind = args.index("--bind")
    assert args[bind : bind + 3] == ["--bind", str(real / "ws/plan"), str(real / "ws/plan")]
    # The state directory before the workspace, the config directory inside it after.
    assert args.index(str(real / "state")) < bind < args.index(str(real / "ws/plan/config"))
    assert str(tmp_path / "missing") not in args
    assert args[-2:] == ["--", "sh"]
    assert args[args.index("--chdir") + 1] == str(real / "ws/plan")


def test_refused_commands_are_a_tool_error_and_run_nothing(tmp_path):
    toolbox = Toolbox(Workspace(tmp_path / "ws"), {SANDBOX_ENV: "refuse"})
    outcome = asyncio.run(toolbox.call("run_command", {"command": "touch ran"}))
    assert outcome.is_error and "disabled" in outcome.content
    assert not (tmp_path / "ws" / "ran").exists()
    assert toolbox.artifacts() == []


@needs_bwrap
def test_a_sandboxed_command_sees_only_its_own_processes(tmp_path):
    result = run(
        "ls /proc | grep -c '^[0-9]'; cat /proc/1/environ | tr '\\0' '\\n'", tmp_path, sandbox()
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    # bwrap's init, the shell, `ls` and `grep`: nothing of the worker or the test.
    assert int(lines[0]) <= 4
    assert str(os.getpid()) not in result.stdout.split()


@needs_bwrap
def test_a_sandboxed_command_writes_the_workspace_and_nothing_else(tmp_path):
    workspace, hidden, outside = tmp_path / "ws", tmp_path / "ws" / "cfg", tmp_path / "other"
    hidden.mkdir(parents=True)
    outside.mkdir()
    (hidden / "identity").write_text(CANARY)
    (outside / "secret").write_text(CANARY)
    script = (
        "echo made > made.txt; ls -A cfg; cat cfg/identity; "
        f"cat {outside}/secret; touch /usr/escape; touch {outside}/escape; ls -A $HOME; true"
    )
    result = run(script, workspace, sandbox(hidden=(hidden,), home=Path(os.environ["HOME"])))
    assert (workspace / "made.txt").read_text() == "made\n"
    assert CANARY not in result.stdout + result.stderr
    assert "Read-only file system" in result.stderr
    assert not (outside / "escape").exists()
    assert (hidden / "identity").read_text() == CANARY, "the hidden directory is untouched"


@needs_bwrap
def test_a_background_process_in_the_sandbox_dies_with_the_command(tmp_path):
    marker = f"mnemosyne-test-{uuid.uuid4().hex}"
    result = run(
        f"sh -c 'sleep 1000; : {marker}' >/dev/null 2>&1 & echo started", tmp_path, sandbox()
    )
    assert result.stdout == "started\n"
    deadline = time.monotonic() + DEADLINE_S
    while _processes_with(marker):
        assert time.monotonic() < deadline, "the sandboxed background process is alive"
        time.sleep(0.01)


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if marker.encode() in cmdline.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


LEAKS = (
    "cat /proc/$PPID/environ",
    "cat /proc/*/environ",
    "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline; done; ps -ef 2>&1",
    "ls -la {config}; cat {config}/*",
    "env; cat {state}/* 2>&1; ls -la {home} 2>&1",
)


@needs_bwrap
def test_the_models_commands_never_yield_the_key(spawn, tmp_path):
    state, config = tmp_path / "state", tmp_path / "config"
    for directory in (state, config):
        directory.mkdir()
        (directory / "secrets").write_text(f"ANTHROPIC_API_KEY={CANARY}\n")
    commands = [leak.format(config=config, state=state, home=os.environ["HOME"]) for leak in LEAKS]
    with FakeAnthropic(key=CANARY) as fake:
        fake.script(
            [{"kind": "tool_use", "name": "run_command", "input": {"command": c}} for c in commands]
            + [{"kind": "text", "text": "done"}]
        )
        worker = spawn(
            agent_argv("executor"),
            {
                **fake.env(),
                "MNEMOSYNE_WORKSPACE_ROOT": str(state / "workspaces"),
                HIDE_ENV: json.dumps([str(state), str(config)]),
            },
        )
        worker.start()
        # The key is in the worker's environment, where an unsandboxed `cat` would find it.
        assert CANARY.encode() in Path(f"/proc/{worker.pid}/environ").read_bytes()
        plan = {"id": "leak", "prompt": "Find the key", "tasks": []}
        task = {"id": "main", "prompt": "Find the key", "depends_on": []}
        response = worker.call("x", "execute", {"plan": plan, "task": task, "attempt": 1})
        requests = fake.requests
    assert response["result"]["output"] == "done", response
    last = requests[-1]["body"]["messages"]
    results = [
        block["content"]
        for message in last
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    assert len(results) == len(commands)
    # The commands ran: each result reports an exit code, not a refusal.
    assert all("exit code:" in str(result) for result in results), results
    assert CANARY not in json.dumps(requests)
    assert CANARY not in json.dumps(response)
