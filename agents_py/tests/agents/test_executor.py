"""Tests of mnemosyne.agents.executor: the prompt of an attempt and the provider's answer."""

import asyncio

from mnemosyne.agents.executor import EXECUTE_MAX_TOKENS, SYSTEM_PROMPT, build_prompt, execute
from mnemosyne.agents.plan import Task, parse_plan
from mnemosyne.providers.base import Completion, Message, Usage
from mnemosyne.providers.offline import OfflineProvider, count_words

PLAN = parse_plan(
    {
        "id": "p1",
        "prompt": "Build an invoice service",
        "tech_stack": ["python", "postgres"],
        "success_criteria": ["all endpoints tested"],
        "constraints": ["no new dependencies"],
        "scope": "backend only",
        "deployment": "staging cluster",
    }
)
MAIN = Task(id="main", prompt="Build an invoice service")


class RecordingProvider:
    name = "recording"
    model = "test-model"
    context_window = 1000

    def __init__(self):
        self.calls = []

    async def complete(self, system, messages, max_tokens):
        self.calls.append((system, list(messages), max_tokens))
        return Completion("done", Usage(11, 1), "end_turn")


def test_the_prompt_carries_the_task_and_the_plans_fields_in_sections():
    assert build_prompt(PLAN, MAIN, attempt=1) == (
        "# Task 'main' (attempt 1)\n"
        "\n## Prompt\nBuild an invoice service\n"
        "\n## Tech stack\n- python\n- postgres\n"
        "\n## Success criteria\n- all endpoints tested\n"
        "\n## Constraints\n- no new dependencies\n"
        "\n## Scope\nbackend only\n"
        "\n## Deployment\nstaging cluster\n"
    )


def test_a_retry_carries_the_reviewers_feedback_on_the_previous_attempt():
    prompt = build_prompt(PLAN, MAIN, attempt=3, feedback=["no tests", "  ", "wrong port"])
    assert prompt.endswith("\n## Reviewer feedback on attempt 2\n- no tests\n- wrong port\n")
    assert prompt.startswith("# Task 'main' (attempt 3)\n")


def test_the_first_attempt_has_no_feedback_section():
    assert "Reviewer feedback" not in build_prompt(PLAN, MAIN, attempt=1, feedback=[])


def test_a_tasks_own_fields_win_over_the_plans():
    task = Task(
        id="db",
        prompt="Design the schema",
        depends_on=("x",),
        tech_stack=("sqlite",),
        success_criteria=("migrations run",),
    )
    prompt = build_prompt(PLAN, task, attempt=1)
    assert "## Tech stack\n- sqlite\n" in prompt
    assert "## Success criteria\n- migrations run\n" in prompt
    assert "## Constraints\n- no new dependencies\n" in prompt  # the task has none of its own
    assert "postgres" not in prompt


def test_a_subtask_sees_the_plans_goal_and_the_main_task_does_not_repeat_it():
    task = Task(id="db", prompt="Design the schema")
    assert "## Work plan goal\nBuild an invoice service\n" in build_prompt(PLAN, task, 1)
    assert "Work plan goal" not in build_prompt(PLAN, MAIN, 1)


def test_skills_chosen_by_the_optimizer_are_listed():
    prompt = build_prompt(PLAN, MAIN, 1, skills=["skills/python.md"])
    assert "\n## Skills\n- skills/python.md\n" in prompt


def test_absent_fields_leave_no_empty_sections():
    bare = parse_plan({"id": "p", "prompt": "x"})
    assert build_prompt(bare, Task(id="t", prompt="do y"), 1) == (
        "# Task 't' (attempt 1)\n\n## Prompt\ndo y\n\n## Work plan goal\nx\n"
    )


def test_execute_sends_one_user_message_with_the_system_prompt_and_reports_the_answer():
    provider = RecordingProvider()
    execution = asyncio.run(execute(provider, PLAN, MAIN, 2, ["fix it"]))
    [(system, messages, max_tokens)] = provider.calls
    assert system == SYSTEM_PROMPT
    assert messages == [Message("user", build_prompt(PLAN, MAIN, 2, ["fix it"]))]
    assert max_tokens == EXECUTE_MAX_TOKENS
    assert execution.to_wire() == {
        "output": "done",
        "artifacts": [],
        "usage": {"input_tokens": 11, "output_tokens": 1},
        "provider": "recording",
        "model": "test-model",
    }


def test_offline_execution_is_deterministic_marked_and_mentions_the_feedback():
    provider = OfflineProvider()
    first = asyncio.run(execute(provider, PLAN, MAIN, 2, ["add the missing tests"]))
    again = asyncio.run(execute(provider, PLAN, MAIN, 2, ["add the missing tests"]))
    assert first == again
    wire = first.to_wire()
    assert wire["provider"] == "offline" and wire["model"] is None
    assert wire["output"].startswith("[offline] Canned answer for: Task 'main' (attempt 2)\n")
    assert "- Reviewer feedback on attempt 1: add the missing tests" in wire["output"]
    assert "- Tech stack: python; postgres" in wire["output"]
    prompt = build_prompt(PLAN, MAIN, 2, ["add the missing tests"])
    assert wire["usage"] == {
        "input_tokens": count_words(SYSTEM_PROMPT) + count_words(prompt),
        "output_tokens": count_words(wire["output"]),
    }


def test_offline_answers_differ_between_attempts():
    provider = OfflineProvider()
    one = asyncio.run(execute(provider, PLAN, MAIN, 1))
    two = asyncio.run(execute(provider, PLAN, MAIN, 2, ["more"]))
    assert one.output != two.output
