"""Tests of mnemosyne.agents.reviewer: gates from deterministic checks, and the model call."""

import asyncio

import pytest

from mnemosyne.agents.plan import Task, parse_plan
from mnemosyne.agents.reviewer import (
    CHECKS,
    GATES,
    REVIEW_MAX_TOKENS,
    SYSTEM_PROMPT,
    ExecutionUnderReview,
    Finding,
    build_prompt,
    judge,
    review,
)
from mnemosyne.providers.base import Completion, Usage
from mnemosyne.providers.offline import OfflineProvider

PLAN = parse_plan({"id": "p", "prompt": "x", "success_criteria": ["green"]})
TASK = Task(id="main", prompt="Write a haiku")


class RecordingProvider:
    name = "recording"
    model = None
    context_window = 1000

    def __init__(self):
        self.calls = []

    async def complete(self, system, messages, max_tokens):
        self.calls.append((system, list(messages), max_tokens))
        return Completion("correctness: pass", Usage(40, 2), "end_turn")


def run_review(output, provider=None, checks=CHECKS):
    provider = provider or OfflineProvider()
    return asyncio.run(review(provider, PLAN, TASK, ExecutionUnderReview(output), 1, checks))


def test_the_eight_gates_are_the_older_designs():
    assert GATES == (
        "intent_satisfied",
        "tests_passing",
        "documentation_complete",
        "no_anti_patterns",
        "constraints_maintained",
        "completeness",
        "correctness",
        "principled_implementation",
    )


def test_an_execution_with_output_passes_every_gate_offline():
    wire = run_review("an old silent pond").to_wire()
    assert wire["passed"] is True
    assert wire["gates"] == dict.fromkeys(GATES, True)
    assert wire["issues"] == [] and wire["recommendations"] == []
    assert wire["confidence"] == 1.0
    assert wire["provider"] == "offline"
    assert wire["usage"]["input_tokens"] > 0 and wire["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("output", ["", "  \n "])
def test_an_empty_output_fails_completeness_and_intent_without_calling_the_model(output):
    provider = RecordingProvider()
    wire = run_review(output, provider).to_wire()
    assert provider.calls == []
    assert wire["passed"] is False
    assert [gate for gate, ok in wire["gates"].items() if not ok] == [
        "intent_satisfied",
        "completeness",
    ]
    assert wire["issues"] == [
        "execution produced no output",
        "empty output cannot satisfy the task 'main'",
    ]
    assert len(wire["recommendations"]) == 2
    assert wire["confidence"] == 0.75
    assert wire["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert wire["provider"] == "recording"


def test_the_model_gets_the_task_criteria_and_output_when_the_checks_pass():
    provider = RecordingProvider()
    wire = run_review("a haiku", provider).to_wire()
    [(system, messages, max_tokens)] = provider.calls
    assert system == SYSTEM_PROMPT and max_tokens == REVIEW_MAX_TOKENS
    assert messages[0].content == build_prompt(PLAN, TASK, ExecutionUnderReview("a haiku"), 1)
    assert "## Success criteria\n- green\n" in messages[0].content
    assert messages[0].content.endswith("## Execution output\na haiku\n")
    assert wire["usage"] == {"input_tokens": 40, "output_tokens": 2}


def test_a_further_check_fails_its_gate():
    def no_todo(plan, task, execution):
        if "TODO" in execution.output:
            return [Finding("no_anti_patterns", "output contains TODO", "finish the work")]
        return []

    wire = run_review("TODO later", checks=(*CHECKS, no_todo)).to_wire()
    assert wire["passed"] is False
    assert wire["gates"]["no_anti_patterns"] is False
    assert wire["issues"] == ["output contains TODO"]
    assert wire["confidence"] == 0.875


def test_judge_reports_each_issue_once_and_refuses_unknown_gates():
    finding = Finding("correctness", "wrong", "fix")
    gates, issues, recommendations = judge([finding, finding])
    assert issues == ["wrong"] and recommendations == ["fix"]
    assert gates["correctness"] is False
    with pytest.raises(ValueError, match="unknown gates"):
        judge([Finding("vibes", "bad", "better")])


def test_reviews_are_deterministic():
    assert run_review("same") == run_review("same")
