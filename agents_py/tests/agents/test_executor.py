"""Tests of mnemosyne.agents.executor: the prompt of an attempt, the provider's answer, and
the tool loop."""

import asyncio

import pytest

from mnemosyne.agents.executor import (
    EXECUTE_MAX_TOKENS,
    SYSTEM_PROMPT,
    TOOLS_PROMPT,
    SkillText,
    build_prompt,
    execute,
    load_skills,
)
from mnemosyne.agents.plan import Task, parse_plan
from mnemosyne.agents.tools import TOOL_DEFINITIONS, Toolbox
from mnemosyne.agents.workspace import Workspace
from mnemosyne.providers.base import Completion, Message, Usage, text_block
from mnemosyne.providers.offline import OfflineProvider, count_words

from sandbox_support import command_environ

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

    async def complete(self, system, messages, max_tokens, tools=None):
        self.calls.append((system, list(messages), max_tokens))
        return Completion.of_text("done", Usage(11, 1))


def tool_use(id, name, **tool_input):
    return {"type": "tool_use", "id": id, "name": name, "input": tool_input}


class ScriptedProvider:
    """Answers each call with the next of a list of content-block lists; records the calls."""

    name = "scripted"
    model = "script-1"
    context_window = 10_000

    def __init__(self, *turns):
        self.turns = list(turns)
        self.calls = []

    async def complete(self, system, messages, max_tokens, tools=None):
        self.calls.append({"system": system, "messages": list(messages), "tools": tools})
        content = self.turns.pop(0) if len(self.turns) > 1 else self.turns[0]
        text = "".join(b["text"] for b in content if b["type"] == "text")
        stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        return Completion(text, content, Usage(10, 2), stop, "script-1-20250101")


@pytest.fixture
def toolbox(tmp_path):
    return Toolbox(Workspace(tmp_path / "ws"), command_environ())


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


def test_skills_chosen_by_the_optimizer_are_included_or_listed():
    skills = [SkillText("Python", "/s/python.md", "Use pathlib."), SkillText("Go", "/s/go.md")]
    prompt = build_prompt(PLAN, MAIN, 1, skills=skills)
    assert "\n## Skills\n### Python (/s/python.md)\n\nUse pathlib.\n\n- Go (/s/go.md)\n" in prompt


def test_skills_are_read_in_order_within_the_token_budget(tmp_path):
    (tmp_path / "a.md").write_text("a" * 40)  # 10 tokens
    (tmp_path / "b.md").write_text("b" * 40)
    (tmp_path / "c.txt").write_text("not markdown")
    chosen = [
        (str(tmp_path / "a.md"), "A"),
        (str(tmp_path / "b.md"), None),
        (str(tmp_path / "c.txt"), "C"),
        (str(tmp_path / "gone.md"), "Gone"),
    ]
    skills = load_skills(chosen, budget_tokens=15)
    assert [(s.name, bool(s.text)) for s in skills] == [
        ("A", True),
        ("b", False),  # over the budget that is left
        ("C", False),  # only markdown is read
        ("Gone", False),
    ]
    assert all(s.text for s in load_skills(chosen[:2], budget_tokens=None))


def test_absent_fields_leave_no_empty_sections():
    bare = parse_plan({"id": "p", "prompt": "x"})
    assert build_prompt(bare, Task(id="t", prompt="do y"), 1) == (
        "# Task 't' (attempt 1)\n\n## Prompt\ndo y\n\n## Work plan goal\nx\n"
    )


def test_without_a_toolbox_execute_sends_one_user_message_and_reports_the_answer():
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


# -- the tool loop ---------------------------------------------------------------------------


def test_the_tool_loop_runs_the_tools_and_returns_the_final_answer(toolbox):
    provider = ScriptedProvider(
        [
            text_block("Writing the file."),
            tool_use("t1", "create_file", path="app.py", content="print('hi')\n"),
            tool_use("t2", "run_command", command="python3 app.py"),
        ],
        [text_block("Done: app.py prints hi.")],
    )
    execution = asyncio.run(execute(provider, PLAN, MAIN, 1, toolbox=toolbox))

    first, second = provider.calls
    assert first["system"] == TOOLS_PROMPT and first["tools"] == list(TOOL_DEFINITIONS)
    assert len(first["messages"]) == 1
    user, assistant, results = second["messages"]
    assert user == Message("user", build_prompt(PLAN, MAIN, 1))
    assert assistant.role == "assistant"
    assert [b["type"] for b in assistant.content] == ["text", "tool_use", "tool_use"]
    assert results.role == "user"
    assert [(b["type"], b["tool_use_id"]) for b in results.content] == [
        ("tool_result", "t1"),
        ("tool_result", "t2"),
    ]
    assert results.content[0]["content"] == "created app.py (12 bytes)"
    assert "exit code: 0" in results.content[1]["content"]
    assert "hi" in results.content[1]["content"]

    assert execution.to_wire() == {
        "output": "Done: app.py prints hi.",
        "artifacts": [
            {"kind": "file", "path": "app.py"},
            {"kind": "command", "command": "python3 app.py", "exit_code": 0, "timed_out": False},
        ],
        "usage": {"input_tokens": 20, "output_tokens": 4},
        "provider": "scripted",
        "model": "script-1-20250101",
    }


def test_a_tool_error_goes_back_to_the_model_and_the_loop_goes_on(toolbox):
    provider = ScriptedProvider(
        [tool_use("t1", "read_file", path="/etc/passwd")],
        [text_block("I may not read that.")],
    )
    execution = asyncio.run(execute(provider, PLAN, MAIN, 1, toolbox=toolbox))
    [result] = provider.calls[1]["messages"][2].content
    assert result["is_error"] is True and "absolute" in result["content"]
    assert execution.output == "I may not read that." and execution.artifacts == ()


def test_the_loop_stops_at_the_turn_limit_with_the_last_text_and_a_note(toolbox):
    provider = ScriptedProvider([text_block("Looking."), tool_use("t", "list_directory")])
    turns = []

    async def on_turn(turn, tools):
        turns.append((turn, tools))

    execution = asyncio.run(
        execute(provider, PLAN, MAIN, 1, toolbox=toolbox, max_turns=3, on_turn=on_turn)
    )
    assert len(provider.calls) == 3
    # The third turn's tool call has no turn left to be answered in, so it is not run.
    assert turns == [(1, ["list_directory"]), (2, ["list_directory"])]
    assert execution.output == "Looking."
    assert execution.usage == Usage(30, 6)
    assert execution.artifacts == (
        {
            "kind": "note",
            "reason": "tool_turn_limit",
            "text": "stopped after 3 model turns, the limit, with the model still calling "
            "tools; the work may be incomplete",
        },
    )


def test_a_single_turn_limit_asks_the_model_once(toolbox):
    provider = ScriptedProvider([tool_use("t", "create_file", path="x", content="")])
    execution = asyncio.run(execute(provider, PLAN, MAIN, 1, toolbox=toolbox, max_turns=1))
    assert len(provider.calls) == 1
    assert execution.output == ""
    assert not (toolbox.workspace.path / "x").exists()
    with pytest.raises(ValueError):
        asyncio.run(execute(provider, PLAN, MAIN, 1, toolbox=toolbox, max_turns=0))


def test_offline_the_tool_loop_ends_after_one_turn_with_the_canned_answer(toolbox):
    execution = asyncio.run(execute(OfflineProvider(), PLAN, MAIN, 1, toolbox=toolbox))
    assert execution.output.startswith("[offline] ")
    assert execution.artifacts == ()
    assert not toolbox.workspace.path.exists()
