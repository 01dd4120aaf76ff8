"""Tests of the agent entry point, `python -m mnemosyne.orchestration.agents --role ROLE`."""

import importlib.metadata
import platform

import pytest

import mnemosyne
from mnemosyne.orchestration.agents.roles import ROLES

from worker_harness import PROTOCOL_DIR, agent_argv


def installed_anthropic():
    try:
        return importlib.metadata.version("anthropic")
    except importlib.metadata.PackageNotFoundError:
        return None


def test_hello_describes_the_worker_and_ready_lists_the_diagnostic_methods(spawn):
    worker = spawn(agent_argv("executor"))
    hello, ready = worker.start()
    assert hello == {
        "type": "hello",
        "protocol": int((PROTOCOL_DIR / "VERSION").read_text()),
        "role": "executor",
        "pid": worker.pid,
        "python": platform.python_version(),
        "package": mnemosyne.__version__,
        "anthropic": installed_anthropic(),
        "provider": None,
    }
    assert {"echo", "sleep", "stdout_noise"} <= set(ready["methods"])


@pytest.mark.parametrize("role", ROLES)
def test_every_role_starts_and_answers(spawn, role):
    worker = spawn(agent_argv(role))
    hello, _ = worker.start()
    assert hello["role"] == role
    assert worker.call("e", "echo", {"role": role})["result"] == {"role": role}


def test_an_unknown_role_is_a_fatal_configuration_error(spawn):
    worker = spawn(agent_argv("janitor"))
    fatal = worker.expect("fatal")
    assert fatal["code"] == "config"
    assert "'janitor'" in fatal["message"]
    for role in ROLES:
        assert role in fatal["message"]
    assert worker.wait() == 78
    assert worker.remaining_lines() == []


def test_a_missing_role_is_a_fatal_configuration_error(spawn):
    worker = spawn(agent_argv()[:-2])
    fatal = worker.expect("fatal")
    assert fatal["code"] == "config"
    assert "--role" in fatal["message"]
    assert worker.wait() == 78
