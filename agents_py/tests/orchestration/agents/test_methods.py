"""Tests of mnemosyne.orchestration.agents.methods, calling the handlers in this process.

The end-to-end checks through real worker processes are in test_main.py.
"""

import asyncio

import pytest

from mnemosyne.agents.workspace import workspace_dir_name
from mnemosyne.orchestration.agents.roles import ROLES
from mnemosyne.providers.base import (
    Completion,
    ProviderRefused,
    ProviderUnavailable,
    RateLimited,
    Usage,
    text_block,
)
from mnemosyne.providers.offline import OfflineProvider
from mnemosyne.runtime.worker import RequestError


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    """Workspaces and skills of this test only: none from the user's home or elsewhere."""
    monkeypatch.setenv("MNEMOSYNE_WORKSPACE_ROOT", str(tmp_path / "workspaces"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MNEMOSYNE_SKILL_DIRS", raising=False)
    monkeypatch.delenv("MNEMOSYNE_MAX_TOOL_TURNS", raising=False)
    return tmp_path


PLAN = {
    "id": "p1",
    "prompt": "Build a URL shortener using Go because links must only stay short",
    "tech_stack": ["go"],
    "success_criteria": ["redirects work"],
    "constraints": None,
    "scope": None,
    "deployment": "fly.io",
    "priority": 1,
    "tasks": [],
    "options": {"challenge_vague_requirements": True, "max_review_attempts": 3},
}
TASK = {"id": "main", "prompt": PLAN["prompt"], "depends_on": []}
EXECUTION = {
    "output": "done",
    "artifacts": [],
    "usage": {"input_tokens": 1, "output_tokens": 1},
    "provider": "offline",
    "model": None,
}


def call(role, method, params, provider=None):
    handler = ROLES[role](provider or OfflineProvider())[method]
    return asyncio.run(handler(params, None))


def error_of(role, method, params, provider=None):
    with pytest.raises(RequestError) as raised:
        call(role, method, params, provider)
    return raised.value


def test_each_role_serves_its_pipeline_methods():
    served = {role: set(factory(OfflineProvider())) for role, factory in ROLES.items()}
    assert served == {
        "executor": {"validate_plan", "execute"},
        "orchestrator": {"orchestrate", "track_context"},
        "optimizer": {"optimize"},
        "reviewer": {"review"},
    }


def test_validate_plan_answers_valid_issues_and_questions():
    assert call("executor", "validate_plan", {"plan": PLAN}) == {
        "valid": True,
        "issues": [],
        "questions": [],
    }
    result = call("executor", "validate_plan", {"plan": {**PLAN, "tech_stack": None}})
    assert result["valid"] is False and result["issues"] == ["Tech stack not specified"]


def test_orchestrate_answers_tasks_and_order():
    tasks = [
        {"id": "b", "prompt": "B", "depends_on": ["a"], "constraints": ["fast"]},
        {"id": "a", "prompt": "A", "depends_on": []},
    ]
    assert call("orchestrator", "orchestrate", {"plan": {**PLAN, "tasks": tasks}}) == {
        "tasks": tasks,
        "order": ["a", "b"],
    }


def test_orchestrate_turns_a_graph_problem_into_invalid_params():
    tasks = [{"id": "a", "prompt": "A", "depends_on": ["b"]}, {"id": "b", "prompt": "B"}]
    tasks[1]["depends_on"] = ["a"]
    error = error_of("orchestrator", "orchestrate", {"plan": {**PLAN, "tasks": tasks}})
    assert error.code == "invalid_params" and not error.retryable
    assert error.message == "dependency cycle: a -> b -> a (each task depends on the next)"


def test_optimize_answers_the_budget_of_the_providers_window():
    assert call("optimizer", "optimize", {"plan": PLAN, "task": TASK}) == {
        "skills": [],
        "allocation": {"critical": 80_000, "skills": 60_000, "project": 40_000, "general": 20_000},
        "context_window": 200_000,
    }


def test_execute_answers_exactly_the_result_fields():
    params = {"plan": PLAN, "task": TASK, "attempt": 1, "feedback": [], "context": {}}
    result = call("executor", "execute", params)
    assert set(result) == {"output", "artifacts", "usage", "provider", "model"}
    assert result["provider"] == "offline" and result["model"] is None
    assert result["artifacts"] == []
    assert result["output"].startswith("[offline] ")


def test_execute_accepts_an_optimize_result_as_its_context():
    context = call("optimizer", "optimize", {"plan": PLAN, "task": TASK})
    params = {"plan": PLAN, "task": TASK, "attempt": 1, "feedback": [], "context": context}
    assert call("executor", "execute", params)["output"]


def test_execute_puts_the_feedback_in_the_prompt():
    params = {"plan": PLAN, "task": TASK, "attempt": 2, "feedback": ["handle 404s"]}
    assert (
        "- Reviewer feedback on attempt 1: handle 404s"
        in call("executor", "execute", params)["output"].splitlines()
    )


def test_review_answers_exactly_the_result_fields():
    params = {"plan": PLAN, "task": TASK, "execution": EXECUTION, "attempt": 1}
    result = call("reviewer", "review", params)
    assert set(result) == {
        "passed",
        "gates",
        "issues",
        "recommendations",
        "confidence",
        "usage",
        "provider",
    }
    assert result["passed"] is True and result["confidence"] == 1.0


def test_review_of_an_empty_output_fails():
    params = {"plan": PLAN, "task": TASK, "execution": {**EXECUTION, "output": ""}, "attempt": 2}
    result = call("reviewer", "review", params)
    assert result["passed"] is False
    assert result["gates"]["completeness"] is False and result["gates"]["intent_satisfied"] is False


GOOD_EXECUTE = {"plan": PLAN, "task": TASK, "attempt": 1, "feedback": [], "context": {}}
GOOD_REVIEW = {"plan": PLAN, "task": TASK, "execution": EXECUTION, "attempt": 1}
GOOD_TRACK = {"plan_id": "p1", "used_tokens": 10, "window": 100}


@pytest.mark.parametrize(
    ("role", "method", "params", "message"),
    [
        ("executor", "validate_plan", None, "params must be an object, got null"),
        ("executor", "validate_plan", {}, "plan is required"),
        (
            "executor",
            "validate_plan",
            {"plan": {**PLAN, "tech_stack": "go"}},
            "plan.tech_stack must be a list of strings, got a string",
        ),
        ("orchestrator", "orchestrate", [], "params must be an object, got a list"),
        (
            "orchestrator",
            "orchestrate",
            {"plan": {**PLAN, "tasks": [{"id": "a", "prompt": "A", "depends_on": "b"}]}},
            "plan.tasks[0].depends_on must be a list of strings, got a string",
        ),
        (
            "orchestrator",
            "orchestrate",
            {"plan": {**PLAN, "tasks": [{"id": "a", "prompt": "A", "depends_on": ["z"]}]}},
            "task 'a' depends on unknown task 'z'",
        ),
        ("optimizer", "optimize", {"plan": PLAN}, "task is required"),
        ("optimizer", "optimize", {"plan": PLAN, "task": {"id": 1}}, "task.id must be a string"),
        ("executor", "execute", {**GOOD_EXECUTE, "attempt": 0}, "attempt must be an integer"),
        ("executor", "execute", {**GOOD_EXECUTE, "attempt": None}, "attempt is required"),
        (
            "executor",
            "execute",
            {**GOOD_EXECUTE, "feedback": "fix it"},
            "feedback must be a list of strings",
        ),
        ("executor", "execute", {**GOOD_EXECUTE, "feedback": [3]}, "feedback[0] must be a string"),
        ("executor", "execute", {**GOOD_EXECUTE, "context": []}, "context must be an object"),
        (
            "executor",
            "execute",
            {**GOOD_EXECUTE, "context": {"skills": [{"relevance": 1}]}},
            "context.skills[0].path is required",
        ),
        ("reviewer", "review", {**GOOD_REVIEW, "execution": None}, "execution is required"),
        (
            "reviewer",
            "review",
            {**GOOD_REVIEW, "execution": {"output": None}},
            "execution.output is required",
        ),
        (
            "reviewer",
            "review",
            {**GOOD_REVIEW, "execution": {"output": ["x"]}},
            "execution.output must be a string, got a list",
        ),
        (
            "reviewer",
            "review",
            {**GOOD_REVIEW, "execution": {"output": "x", "artifacts": {}}},
            "execution.artifacts must be a list",
        ),
        ("reviewer", "review", {**GOOD_REVIEW, "attempt": -1}, "attempt must be an integer"),
        ("orchestrator", "track_context", {**GOOD_TRACK, "plan_id": None}, "plan_id is required"),
        ("orchestrator", "track_context", {**GOOD_TRACK, "plan_id": " "}, "plan_id must not be"),
        (
            "orchestrator",
            "track_context",
            {**GOOD_TRACK, "used_tokens": -1},
            "used_tokens must be an integer of at least 0, got -1",
        ),
        (
            "orchestrator",
            "track_context",
            {**GOOD_TRACK, "used_tokens": 1.5},
            "used_tokens must be an integer of at least 0, got a number",
        ),
        (
            "orchestrator",
            "track_context",
            {**GOOD_TRACK, "window": 0},
            "window must be an integer of at least 1, got 0",
        ),
    ],
)
def test_bad_params_are_invalid_params_naming_the_field(role, method, params, message):
    error = error_of(role, method, params)
    assert error.code == "invalid_params"
    assert error.retryable is False
    assert error.message.startswith(message)


class FailingProvider:
    name = "failing"
    model = None
    context_window = 100

    def __init__(self, error):
        self.error = error

    async def complete(self, system, messages, max_tokens, tools=None):
        raise self.error


@pytest.mark.parametrize(
    ("error", "code", "retryable", "details"),
    [
        (
            RateLimited("slow down", retry_after_ms=1500),
            "rate_limited",
            True,
            {"retry_after_ms": 1500},
        ),
        (ProviderUnavailable("overloaded"), "provider_unavailable", True, None),
        (ProviderRefused("prompt too long"), "provider_error", False, None),
    ],
)
def test_provider_failures_become_their_protocol_errors(error, code, retryable, details):
    for role, method, params in [
        ("executor", "execute", GOOD_EXECUTE),
        ("reviewer", "review", GOOD_REVIEW),
    ]:
        raised = error_of(role, method, params, FailingProvider(error))
        assert (raised.code, raised.retryable, raised.details) == (code, retryable, details)
        assert raised.message == error.message


async def _loop_turns_during(awaitable):
    """How many times another task got the event loop while `awaitable` ran."""
    turns = 0
    done = False

    async def ticker():
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = turns
    try:
        await awaitable
    finally:
        done = True
        await ticking
    return turns - before


@pytest.mark.parametrize(
    ("role", "method", "params"),
    [
        ("executor", "validate_plan", {"plan": {**PLAN, "prompt": "Build it simply " * 100_000}}),
        (
            "executor",
            "execute",
            {**GOOD_EXECUTE, "task": {**TASK, "prompt": "Build it simply " * 100_000}},
        ),
        (
            "orchestrator",
            "orchestrate",
            {
                "plan": {
                    **PLAN,
                    "tasks": [
                        {"id": str(n), "prompt": "p", "depends_on": [str(n - 1)] if n else []}
                        for n in range(20_000)
                    ],
                }
            },
        ),
    ],
)
def test_work_that_grows_with_the_input_leaves_the_event_loop_free(role, method, params):
    handler = ROLES[role](OfflineProvider())[method]
    turns = asyncio.run(_loop_turns_during(handler(params, None)))
    assert turns > 1


# -- tools, workspaces, skills and context tracking --------------------------------------------


class ScriptedProvider:
    """Answers with the next of a list of content-block lists; the last one repeats."""

    name = "scripted"
    model = "script-1"
    context_window = 10_000

    def __init__(self, *turns):
        self.turns = list(turns)
        self.calls = []

    async def complete(self, system, messages, max_tokens, tools=None):
        self.calls.append(list(messages))
        content = self.turns.pop(0) if len(self.turns) > 1 else self.turns[0]
        text = "".join(b["text"] for b in content if b["type"] == "text")
        return Completion(text, content, Usage(5, 1), "end_turn", None)


def tool_use(id, name, **tool_input):
    return {"type": "tool_use", "id": id, "name": name, "input": tool_input}


def test_execute_works_in_the_plans_workspace_and_the_review_reads_what_it_wrote(environment):
    provider = ScriptedProvider(
        [tool_use("1", "create_file", path="app.py", content="def f():\n    pass  # TODO\n")],
        [tool_use("2", "run_command", command="python3 test_app.py")],
        [text_block("Wrote app.py.")],
    )
    execution = call("executor", "execute", GOOD_EXECUTE, provider)
    workspace = environment / "workspaces" / workspace_dir_name(PLAN["id"])
    assert (workspace / "app.py").is_file()
    assert execution["output"] == "Wrote app.py."
    assert execution["artifacts"][0] == {"kind": "file", "path": "app.py"}
    assert execution["artifacts"][1] == {
        "kind": "command",
        "command": "python3 test_app.py",
        "exit_code": 2,  # no such file
        "timed_out": False,
    }
    assert execution["usage"] == {"input_tokens": 15, "output_tokens": 3}

    review = call("reviewer", "review", {**GOOD_REVIEW, "execution": execution})
    assert review["passed"] is False
    assert review["gates"]["no_anti_patterns"] is False
    assert "app.py:2 contains a TODO/FIXME/XXX marker" in review["issues"]
    assert review["gates"]["tests_passing"] is False


def test_execute_refuses_a_bad_tool_turn_limit_as_a_config_error(monkeypatch):
    monkeypatch.setenv("MNEMOSYNE_MAX_TOOL_TURNS", "lots")
    error = error_of("executor", "execute", GOOD_EXECUTE)
    assert error.code == "config" and "MNEMOSYNE_MAX_TOOL_TURNS" in error.message


def test_execute_stops_at_the_configured_tool_turn_limit(monkeypatch):
    monkeypatch.setenv("MNEMOSYNE_MAX_TOOL_TURNS", "2")
    provider = ScriptedProvider([tool_use("1", "list_directory")])
    execution = call("executor", "execute", GOOD_EXECUTE, provider)
    assert len(provider.calls) == 2
    assert execution["artifacts"][-1]["reason"] == "tool_turn_limit"


def test_optimize_chooses_skills_from_the_configured_dirs_and_execute_reads_them(
    environment, monkeypatch
):
    skills = environment / "skills"
    skills.mkdir()
    (skills / "go-http.md").write_text("# Go HTTP\n\nUse net/http for URL redirects.\n")
    (skills / "baking.md").write_text("# Baking\n\nPreheat the oven.\n")
    monkeypatch.setenv("MNEMOSYNE_SKILL_DIRS", str(skills))
    context = call("optimizer", "optimize", {"plan": PLAN, "task": TASK})
    [chosen] = context["skills"]
    assert chosen["path"] == str(skills / "go-http.md")
    assert chosen["name"] == "Go HTTP" and chosen["local"] is True
    assert set(chosen) == {"path", "name", "score", "local", "tokens"}

    provider = ScriptedProvider([text_block("ok")])
    call("executor", "execute", {**GOOD_EXECUTE, "context": context}, provider)
    [[prompt]] = provider.calls
    assert "### Go HTTP (" in prompt.content and "Use net/http" in prompt.content


def test_track_context_fires_each_level_once_per_upward_crossing():
    handler = ROLES["orchestrator"](OfflineProvider())["track_context"]

    def track(plan_id, used):
        params = {"plan_id": plan_id, "used_tokens": used, "window": 1000}
        return asyncio.run(handler(params, None))

    assert track("p", 500) == {"utilisation": 0.5, "events": []}
    assert track("p", 800) == {
        "utilisation": 0.8,
        "events": [{"level": "preserve", "utilisation": 0.8}],
    }
    assert track("p", 800)["events"] == []
    assert track("p", 950)["events"] == [{"level": "critical", "utilisation": 0.95}]
    assert track("other", 950)["events"] == [
        {"level": "preserve", "utilisation": 0.95},
        {"level": "critical", "utilisation": 0.95},
    ]
    assert track("p", 600)["events"] == []
    assert track("p", 800)["events"] == [{"level": "preserve", "utilisation": 0.8}]
