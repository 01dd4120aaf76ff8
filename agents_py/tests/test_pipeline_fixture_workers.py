"""Smoke tests of the fixture workers that serve the real pipeline methods with a twist:
crash_on_marker (execute crashes on a marker) and review_until (review rejects early attempts).
The Rust integration tests run them.
"""

from worker_harness import fixture_argv

PLAN = {"id": "p", "prompt": "Write a limerick", "tech_stack": ["english"], "tasks": None}
TASK = {"id": "main", "prompt": "Write a limerick", "depends_on": []}
CRASHING_TASK = {"id": "main", "prompt": "Please CRASH-THE-WORKER now", "depends_on": []}
EXECUTION = {
    "output": "There once was a worker",
    "artifacts": [],
    "usage": {"input_tokens": 1, "output_tokens": 5},
    "provider": "offline",
    "model": None,
}


def execute_params(task):
    return {"plan": PLAN, "task": task, "attempt": 1, "feedback": [], "context": {}}


def review_params(attempt, output=EXECUTION["output"]):
    execution = {**EXECUTION, "output": output}
    return {"plan": PLAN, "task": TASK, "execution": execution, "attempt": attempt}


# -- crash_on_marker ------------------------------------------------------------------------------


def test_crash_on_marker_executes_like_the_real_executor_without_the_marker(spawn):
    worker = spawn(fixture_argv("crash_on_marker", "--role", "executor"))
    hello, ready = worker.start()
    assert hello["provider"] == "offline"
    assert {"execute", "validate_plan", "echo"} <= set(ready["methods"])
    result = worker.call("x", "execute", execute_params(TASK))["result"]
    assert result["output"].startswith("[offline] ")
    assert worker.call("v", "validate_plan", {"plan": PLAN})["result"]["valid"] is False


def test_crash_on_marker_exits_3_when_the_task_prompt_holds_the_marker(spawn):
    worker = spawn(fixture_argv("crash_on_marker", "--role", "executor"))
    worker.start()
    worker.request("x", "execute", execute_params(CRASHING_TASK))
    assert worker.wait() == 3
    assert worker.remaining_lines() == []
    assert "crashing on marker\n" in worker.stderr_text()


def test_crash_on_marker_serves_other_roles_unchanged(spawn):
    worker = spawn(fixture_argv("crash_on_marker", "--role", "reviewer"))
    _, ready = worker.start()
    assert "review" in ready["methods"] and "execute" not in ready["methods"]
    assert worker.call("r", "review", review_params(1))["result"]["passed"] is True


# -- review_until ---------------------------------------------------------------------------------


def test_review_until_rejects_attempts_before_the_third_by_default(spawn):
    worker = spawn(fixture_argv("review_until", "--role", "reviewer"))
    hello, _ = worker.start()
    assert hello["role"] == "reviewer" and hello["provider"] == "offline"
    for attempt in (1, 2):
        result = worker.call(f"r{attempt}", "review", review_params(attempt))["result"]
        assert result["passed"] is False
        assert result["gates"]["correctness"] is False
        assert [gate for gate, ok in result["gates"].items() if not ok] == ["correctness"]
        assert result["issues"] == [f"fixture: attempt {attempt} rejected"]
        assert result["confidence"] == 0.875
    for attempt in (3, 4):
        result = worker.call(f"r{attempt}", "review", review_params(attempt))["result"]
        assert result["passed"] is True and result["issues"] == []


def test_review_until_passes_from_the_attempt_the_environment_names(spawn):
    worker = spawn(
        fixture_argv("review_until", "--role", "reviewer"), env={"FIXTURE_REVIEW_PASS_AT": "1"}
    )
    worker.start()
    assert worker.call("r", "review", review_params(1))["result"]["passed"] is True


def test_review_until_never_passes_when_told_never(spawn):
    worker = spawn(
        fixture_argv("review_until", "--role", "reviewer"), env={"FIXTURE_REVIEW_PASS_AT": "never"}
    )
    worker.start()
    for attempt in (1, 5, 50):
        result = worker.call(f"r{attempt}", "review", review_params(attempt))["result"]
        assert result["passed"] is False
        assert result["issues"] == [f"fixture: attempt {attempt} rejected"]


def test_review_until_keeps_the_real_reviews_findings(spawn):
    worker = spawn(fixture_argv("review_until", "--role", "reviewer"))
    worker.start()
    result = worker.call("r", "review", review_params(1, output=""))["result"]
    assert result["issues"] == [
        "execution produced no output",
        "empty output cannot satisfy the task 'main'",
        "fixture: attempt 1 rejected",
    ]
    assert result["confidence"] == 0.625


def test_review_until_answers_bad_params_like_the_real_reviewer(spawn):
    worker = spawn(fixture_argv("review_until", "--role", "reviewer"))
    worker.start()
    error = worker.call("r", "review", {**review_params(1), "attempt": "two"})["error"]
    assert error["code"] == "invalid_params" and error["message"].startswith("attempt must be")


def test_review_until_refuses_a_bad_setting_as_fatal(spawn):
    worker = spawn(
        fixture_argv("review_until", "--role", "reviewer"), env={"FIXTURE_REVIEW_PASS_AT": "soon"}
    )
    fatal = worker.expect("fatal")
    assert fatal["code"] == "config" and "FIXTURE_REVIEW_PASS_AT" in fatal["message"]
    assert worker.wait() == 78
