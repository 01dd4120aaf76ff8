"""Tests of mnemosyne.agents.reviewer: gates from deterministic checks, the model's JSON
verdict, and how the two combine."""

import asyncio
import json

import pytest

from mnemosyne.agents.plan import Task, parse_plan
from mnemosyne.agents.reviewer import (
    CHECKS,
    GATES,
    NOT_A_VERDICT,
    REVIEW_MAX_TOKENS,
    SYSTEM_PROMPT,
    ExecutionUnderReview,
    Finding,
    ProducedFile,
    Verdict,
    build_prompt,
    combine,
    is_test_command,
    judge,
    load_files,
    parse_verdict,
    review,
)
from mnemosyne.agents.workspace import Workspace
from mnemosyne.providers.base import Completion, Usage
from mnemosyne.providers.offline import OfflineProvider

PLAN = parse_plan({"id": "p", "prompt": "x", "success_criteria": ["green"]})
TASK = Task(id="main", prompt="Write a haiku")


class RecordingProvider:
    name = "recording"
    model = None
    context_window = 1000

    def __init__(self, answer=None):
        self.calls = []
        self.answer = answer if answer is not None else verdict_json(passed=True)

    async def complete(self, system, messages, max_tokens, tools=None):
        self.calls.append((system, list(messages), max_tokens))
        return Completion.of_text(self.answer, Usage(40, 2))


def verdict_json(passed=True, gates=None, issues=(), recommendations=(), confidence=0.9):
    return json.dumps(
        {
            "passed": passed,
            "gates": gates if gates is not None else dict.fromkeys(GATES, True),
            "issues": list(issues),
            "recommendations": list(recommendations),
            "confidence": confidence,
        }
    )


def run_review(output, provider=None, checks=CHECKS, artifacts=(), files=()):
    provider = provider or OfflineProvider()
    execution = ExecutionUnderReview(output, tuple(artifacts), tuple(files))
    return asyncio.run(review(provider, PLAN, TASK, execution, 1, checks))


def command(text, exit_code=0, timed_out=False):
    return {"kind": "command", "command": text, "exit_code": exit_code, "timed_out": timed_out}


def failed_gates(wire):
    return [gate for gate, ok in wire["gates"].items() if not ok]


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
    assert wire["passed"] is True and wire["confidence"] == 0.9


def test_the_system_prompt_asks_for_only_a_json_verdict_naming_every_gate():
    assert "only a JSON object" in SYSTEM_PROMPT
    assert all(gate in SYSTEM_PROMPT for gate in GATES)


def test_a_further_check_fails_its_gate_offline():
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


# -- deterministic checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("# TODO: handle errors", "a TODO/FIXME/XXX marker"),
        ("// FIXME later", "a TODO/FIXME/XXX marker"),
        ("x = 1  # XXX", "a TODO/FIXME/XXX marker"),
        ("    pass  # TODO", "a TODO/FIXME/XXX marker"),
        ("    unimplemented!()", "an unimplemented placeholder"),
        ('    todo!("parse")', "an unimplemented placeholder"),
        ("    raise NotImplementedError", "an unimplemented placeholder"),
        ('KEY = "sk-ant-api03-abcdefghijkl"', "a hard-coded secret"),
        ("aws = 'AKIAABCDEFGHIJKLMNOP'", "a hard-coded secret"),
        ("-----BEGIN RSA PRIVATE KEY-----", "a hard-coded secret"),
    ],
)
def test_anti_patterns_in_produced_files_fail_their_gate(line, kind):
    files = [ProducedFile("src/a.py", f"ok = 1\n{line}\n")]
    wire = run_review("done", files=files).to_wire()
    assert wire["passed"] is False
    assert failed_gates(wire) == ["no_anti_patterns"]
    assert wire["issues"] == [f"src/a.py:2 contains {kind}"]


@pytest.mark.parametrize(
    "line", ["todos = []", "fix_me()", "xxx_large = 3", "class NotImplementedYet: pass"]
)
def test_words_that_merely_contain_a_marker_are_not_anti_patterns(line):
    assert run_review("done", files=[ProducedFile("a.py", line)]).passed is True


def test_a_secret_is_reported_without_quoting_it():
    files = [ProducedFile("cfg.py", 'KEY = "sk-ant-api03-verysecretvalue"')]
    wire = run_review("done", files=files).to_wire()
    assert not any("verysecret" in text for text in wire["issues"] + wire["recommendations"])


def test_anti_pattern_findings_are_capped():
    files = [ProducedFile("a.py", "# TODO\n" * 30)]
    issues = run_review("done", files=files).issues
    assert len(issues) == 11 and issues[-1] == "and 20 more anti-pattern lines"


def test_unreadable_files_are_skipped_by_the_scan():
    assert run_review("done", files=[ProducedFile("gone.py", None)]).passed is True


def test_the_last_test_command_decides_tests_passing():
    failing = [command("pytest -q", exit_code=1)]
    wire = run_review("done", artifacts=failing).to_wire()
    assert failed_gates(wire) == ["tests_passing"]
    assert wire["issues"] == ["the last test command failed with exit code 1: pytest -q"]

    fixed = [command("pytest -q", exit_code=1), command("pytest -q", exit_code=0)]
    assert run_review("done", artifacts=fixed).passed is True

    regressed = [command("pytest -q"), command("cargo test", exit_code=101)]
    assert failed_gates(run_review("done", artifacts=regressed).to_wire()) == ["tests_passing"]


def test_a_timed_out_test_command_fails_tests_passing():
    wire = run_review("done", artifacts=[command("go test ./...", -9, True)]).to_wire()
    assert wire["issues"] == ["the last test command timed out: go test ./..."]


def test_commands_that_are_not_tests_do_not_decide_tests_passing():
    artifacts = [command("pytest"), command("ls missing", exit_code=2)]
    assert run_review("done", artifacts=artifacts).passed is True


@pytest.mark.parametrize(
    ("text", "is_test"),
    [
        ("pytest -q", True),
        ("python -m pytest tests/", True),
        ("python3 test_app.py", True),
        ("./run_tests.sh", True),
        ("cargo test --all", True),
        ("go test ./...", True),
        ("npm test", True),
        ("npm run test", True),
        ("make check", True),
        ("python3 -m unittest discover", True),
        ("python app.py", False),
        ("ls tests", False),
        ("cat tests/test_a.py", False),
        ("pip install requests", False),
    ],
)
def test_test_commands_are_recognised(text, is_test):
    assert is_test_command(text) is is_test


def test_malformed_artifacts_are_ignored():
    artifacts = [None, "x", {"kind": "command"}, {"kind": "file", "path": 3}, {"kind": "odd"}]
    execution = ExecutionUnderReview("done", tuple(artifacts))
    assert execution.commands() == [] and execution.file_paths() == []
    assert run_review("done", artifacts=artifacts).passed is True


def test_a_turn_limit_note_fails_completeness():
    note = {"kind": "note", "reason": "tool_turn_limit", "text": "stopped"}
    wire = run_review("partial", artifacts=[note]).to_wire()
    assert failed_gates(wire) == ["completeness"]


def test_produced_files_are_read_from_the_workspace(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    workspace.write_text("src/a.py", "# TODO\n")
    (tmp_path / "secret").write_text("x")
    (workspace.ensure() / "link").symlink_to(tmp_path / "secret")
    artifacts = (
        {"kind": "file", "path": "src/a.py"},
        {"kind": "file", "path": "src/a.py"},
        {"kind": "file", "path": "deleted.py"},
        {"kind": "file", "path": "link"},
        {"kind": "file", "path": "/etc/passwd"},
    )
    loaded = load_files(ExecutionUnderReview("done", artifacts), workspace)
    assert loaded.files == (
        ProducedFile("src/a.py", "# TODO\n"),
        ProducedFile("deleted.py", None),
        ProducedFile("link", None),
        ProducedFile("/etc/passwd", None),
    )


def test_the_prompt_shows_findings_commands_and_files_before_the_output():
    execution = ExecutionUnderReview(
        "done",
        (command("pytest", exit_code=1), command("sleep 9", -9, True)),
        (ProducedFile("a.py", "print('```')\n"), ProducedFile("b.py", None)),
    )
    findings = [Finding("tests_passing", "tests fail", "fix")]
    prompt = build_prompt(PLAN, TASK, execution, 2, findings)
    assert "## Automated check findings\n- tests_passing: tests fail\n" in prompt
    assert "## Commands run\n- `pytest`: exit code 1\n- `sleep 9`: timed out\n" in prompt
    assert "### a.py\n````\nprint('```')\n\n````\n" in prompt
    assert "### b.py\n(could not be read)\n" in prompt
    assert prompt.endswith("## Execution output\ndone\n")


# -- the model's verdict ----------------------------------------------------------------------


def test_a_valid_verdict_is_parsed():
    text = verdict_json(
        passed=False,
        gates={"correctness": False, "completeness": True},
        issues=["off by one"],
        recommendations=["use <="],
        confidence=0.7,
    )
    assert parse_verdict(text) == Verdict(
        passed=False,
        gates={"correctness": False, "completeness": True},
        issues=("off by one",),
        recommendations=("use <=",),
        confidence=0.7,
    )


def test_a_verdict_embedded_in_prose_or_a_fence_is_found():
    text = (
        'Here is an example shape {"a": 1}, and my verdict:\n```json\n'
        + verdict_json(passed=True, confidence=0.8)
        + "\n```\nThanks."
    )
    verdict = parse_verdict(text)
    assert verdict is not None and verdict.passed is True and verdict.confidence == 0.8


@pytest.mark.parametrize(
    "text",
    [
        "correctness: pass",
        "",
        '{"passed": "yes"}',
        '{"passed": true',
        "[true]",
        '{"gates": {}}',
    ],
)
def test_text_without_a_verdict_is_none(text):
    assert parse_verdict(text) is None


def test_wrongly_typed_verdict_fields_are_dropped_one_by_one():
    text = json.dumps(
        {
            "passed": True,
            "gates": {"correctness": "fail", "vibes": False, "completeness": False},
            "issues": ["real", 3, "  "],
            "recommendations": "not a list",
            "confidence": 7,
        }
    )
    assert parse_verdict(text) == Verdict(
        passed=True, gates={"completeness": False}, issues=("real",), confidence=1.0
    )


def test_an_answer_that_is_not_a_verdict_fails_the_review():
    wire = run_review("done", RecordingProvider("Looks good to me!")).to_wire()
    assert wire["passed"] is False
    assert wire["gates"] == dict.fromkeys(GATES, True)
    assert wire["issues"] == [NOT_A_VERDICT]
    assert wire["confidence"] == 0.0


def test_a_gate_fails_when_the_model_fails_it():
    answer = verdict_json(
        passed=False, gates={**dict.fromkeys(GATES, True), "correctness": False}, issues=["bug"]
    )
    wire = run_review("done", RecordingProvider(answer)).to_wire()
    assert wire["passed"] is False
    assert failed_gates(wire) == ["correctness"]
    assert wire["issues"] == ["bug"]


def test_a_gate_fails_when_a_check_fails_it_even_if_the_model_passes_it():
    provider = RecordingProvider(verdict_json(passed=True))
    wire = run_review("done", provider, files=[ProducedFile("a.py", "# TODO\n")]).to_wire()
    assert len(provider.calls) == 1  # the check was not conclusive, so the model was asked
    assert "## Automated check findings" in provider.calls[0][1][0].content
    assert wire["passed"] is False and failed_gates(wire) == ["no_anti_patterns"]


def test_the_review_fails_when_the_model_does_not_pass_it_even_with_every_gate_passing():
    wire = run_review("done", RecordingProvider(verdict_json(passed=False))).to_wire()
    assert wire["passed"] is False and failed_gates(wire) == []
    assert wire["issues"] == ["the reviewer rejected the execution without naming an issue"]


def test_a_gate_the_model_fails_without_an_issue_still_gives_feedback():
    gates = {**dict.fromkeys(GATES, True), "documentation_complete": False}
    wire = run_review("done", RecordingProvider(verdict_json(True, gates))).to_wire()
    assert wire["passed"] is False
    assert wire["issues"] == ["the reviewer failed the gate documentation_complete"]


def test_combine_without_a_model_confidence_uses_the_share_of_gates():
    findings = [Finding("correctness", "wrong", "fix")]
    *_, passed, confidence = combine(findings, Verdict(passed=True), model_asked=True)
    assert passed is False and confidence == 0.875


def test_offline_reviews_ignore_the_canned_answer():
    # The canned answer is not JSON, yet offline reviews pass on the checks alone.
    wire = run_review("done").to_wire()
    assert wire["passed"] is True and NOT_A_VERDICT not in wire["issues"]
    files = [ProducedFile("a.rs", "fn f() { todo!() }")]
    assert failed_gates(run_review("done", files=files).to_wire()) == ["no_anti_patterns"]
