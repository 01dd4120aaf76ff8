"""Tests of the agent entry point, `python -m mnemosyne.orchestration.agents --role ROLE`."""

import ast
import importlib.metadata
import platform
import sys
import time

import pytest

import mnemosyne
from mnemosyne.orchestration.agents.roles import ROLES

from worker_harness import AGENT_MODULE, AGENTS_PY, FIXTURE_WORKERS, PROTOCOL_DIR, agent_argv


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
        "provider": "offline",
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


# -- providers ----------------------------------------------------------------------------------


def test_the_offline_provider_is_the_default_and_warns_on_stderr_at_start(spawn):
    worker = spawn(agent_argv("executor"))
    hello, _ = worker.start()
    assert hello["provider"] == "offline"
    worker.close_stdin()
    assert worker.wait() == 0
    assert (
        "WARNING: offline provider: no model is called; answers are canned and deterministic, "
        "not from Claude\n"
    ) in worker.stderr_text()


def test_the_anthropic_provider_without_a_key_is_a_fatal_configuration_error(spawn):
    worker = spawn(agent_argv("executor"), env={"MNEMOSYNE_PROVIDER": "anthropic"})
    assert worker.expect("hello")["provider"] == "anthropic"
    assert worker.expect("fatal") == {
        "type": "fatal",
        "code": "config",
        "message": (
            "the anthropic provider needs an API key: set ANTHROPIC_API_KEY, or store it with "
            "`mnemosyne secrets set anthropic_api_key`, or use --provider offline"
        ),
    }
    assert worker.wait() == 78
    assert worker.remaining_lines() == []


def test_an_unknown_provider_is_fatal_before_hello(spawn):
    worker = spawn(agent_argv("reviewer"), env={"MNEMOSYNE_PROVIDER": "openai"})
    fatal = worker.expect("fatal")
    assert fatal["code"] == "config"
    assert "'openai'" in fatal["message"] and "MNEMOSYNE_PROVIDER" in fatal["message"]
    assert worker.wait() == 78


def test_a_bad_offline_latency_is_fatal(spawn):
    worker = spawn(agent_argv("executor"), env={"MNEMOSYNE_OFFLINE_LATENCY_MS": "soon"})
    worker.expect("hello")
    assert "MNEMOSYNE_OFFLINE_LATENCY_MS" in worker.expect("fatal")["message"]
    assert worker.wait() == 78


# -- the pipeline through real workers ----------------------------------------------------------

PLAN = {
    "id": "plan-1",
    "prompt": "Build a command line tool using Python because we need to only convert CSV "
    "files to JSON; it must stream large inputs",
    "tech_stack": ["python"],
    "success_criteria": ["converts the sample file", "streams 1 GB in constant memory"],
    "constraints": ["standard library only"],
    "scope": None,
    "deployment": None,
    "priority": 2,
    "tasks": None,
    "options": {"challenge_vague_requirements": True, "max_review_attempts": 3},
}


def test_a_plan_runs_through_every_role_offline(spawn):
    # Every line a worker writes is checked against the protocol schema by the harness.
    workers = {role: spawn(agent_argv(role)) for role in ROLES}
    for worker in workers.values():
        worker.start()

    validated = workers["executor"].call("v", "validate_plan", {"plan": PLAN})["result"]
    assert validated == {
        "valid": True,
        "issues": [],
        "questions": ["Where will this be deployed?"],
    }

    orchestrated = workers["orchestrator"].call("o", "orchestrate", {"plan": PLAN})["result"]
    assert orchestrated["order"] == ["main"]
    [task] = orchestrated["tasks"]
    assert task["constraints"] == ["standard library only"]

    context = workers["optimizer"].call("c", "optimize", {"plan": PLAN, "task": task})["result"]
    assert context["context_window"] == 200_000

    feedback: list[str] = []
    for attempt in (1, 2):
        execution = workers["executor"].call(
            f"x{attempt}",
            "execute",
            {
                "plan": PLAN,
                "task": task,
                "attempt": attempt,
                "feedback": feedback,
                "context": context,
            },
        )["result"]
        assert execution["provider"] == "offline" and execution["model"] is None
        assert execution["output"].startswith(
            f"[offline] Canned answer for: Task 'main' (attempt {attempt})"
        )
        review = workers["reviewer"].call(
            f"r{attempt}",
            "review",
            {"plan": PLAN, "task": task, "execution": execution, "attempt": attempt},
        )["result"]
        assert review["passed"] is True and review["provider"] == "offline"
        feedback = ["pretend the reviewer asked for more tests"]
    assert "pretend the reviewer asked for more tests" in execution["output"]


def test_bad_params_are_answered_with_invalid_params(spawn):
    worker = spawn(agent_argv("orchestrator"))
    worker.start()
    response = worker.call("o", "orchestrate", {"plan": {"id": "p", "tasks": "all of them"}})
    assert response["error"] == {
        "code": "invalid_params",
        "message": "plan.tasks must be a list, got a string",
        "retryable": False,
    }


def test_offline_latency_keeps_pings_answered_while_a_request_waits(spawn):
    worker = spawn(agent_argv("executor"), env={"MNEMOSYNE_OFFLINE_LATENCY_MS": "300"})
    worker.start()
    task = {"id": "main", "prompt": "Write it", "depends_on": []}
    started = time.monotonic()
    worker.request("x", "execute", {"plan": PLAN, "task": task, "attempt": 1, "feedback": []})
    worker.send({"type": "ping", "nonce": 7})
    assert worker.expect("pong") == {"type": "pong", "nonce": 7}
    assert time.monotonic() - started < 0.3, "the pong waited for the completion"
    response = worker.response("x")
    assert time.monotonic() - started >= 0.3
    assert response["result"]["provider"] == "offline"


def test_a_request_waiting_on_offline_latency_can_be_cancelled(spawn):
    worker = spawn(agent_argv("executor"), env={"MNEMOSYNE_OFFLINE_LATENCY_MS": "60000"})
    worker.start()
    task = {"id": "main", "prompt": "Write it", "depends_on": []}
    worker.request("x", "execute", {"plan": PLAN, "task": task, "attempt": 1, "feedback": []})
    worker.send({"type": "cancel", "id": "x", "reason": "deadline"})
    assert worker.response("x", timeout=5)["error"]["code"] == "cancelled"


def test_an_interpreter_older_than_3_11_is_a_fatal_configuration_error_naming_both_versions(
    spawn,
):
    # The fixture runs this interpreter with sys.version_info set to 3.9.18 (see its comment).
    fake_old_python = str(FIXTURE_WORKERS / "python_3_9.sh")
    worker = spawn(
        [fake_old_python, "-m", AGENT_MODULE, "--role", "executor"],
        env={"FIXTURE_REAL_PYTHON": sys.executable},
    )
    fatal = worker.expect("fatal")
    assert fatal["code"] == "config"
    assert "Python 3.9.18 is too old" in fatal["message"]
    assert "needs Python 3.11 or newer" in fatal["message"]
    assert worker.wait() == 78
    assert worker.remaining_lines() == [], "fatal is the only line on the wire"
    assert "fatal (config): Python 3.9.18 is too old" in worker.stderr_text()


def test_the_entry_point_uses_no_syntax_an_old_python_cannot_parse():
    # An old interpreter compiles the whole file before running its version check, so one
    # f-string or annotation there would be a SyntaxError instead of a clear report.
    path = AGENTS_PY / "mnemosyne" / "orchestration" / "agents" / "__main__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    newer = (ast.JoinedStr, ast.NamedExpr, ast.AnnAssign, ast.Match, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        assert not isinstance(node, newer), f"line {node.lineno}: {type(node).__name__}"
        if isinstance(node, ast.FunctionDef):
            assert node.returns is None, f"line {node.lineno}: return annotation"
            arguments = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
            assert all(arg.annotation is None for arg in arguments), f"line {node.lineno}"
