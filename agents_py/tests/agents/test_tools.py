"""Tests of mnemosyne.agents.tools: tool definitions, tool results, errors and artifacts."""

import asyncio

import pytest

from mnemosyne.agents.tools import TOOL_DEFINITIONS, TOOL_NAMES, Toolbox
from mnemosyne.agents.workspace import Workspace

from sandbox_support import command_environ


@pytest.fixture
def toolbox(tmp_path):
    return Toolbox(Workspace(tmp_path / "ws"), command_environ())


def call(toolbox, name, tool_input):
    return asyncio.run(toolbox.call(name, tool_input))


def answer(toolbox, block):
    return asyncio.run(toolbox.answer(block))


def test_the_five_tools_are_defined_for_the_messages_api():
    assert TOOL_NAMES == (
        "read_file",
        "create_file",
        "edit_file",
        "list_directory",
        "run_command",
    )
    for tool in TOOL_DEFINITIONS:
        assert set(tool) == {"name", "description", "input_schema"}
        assert tool["input_schema"]["type"] == "object"


def test_a_tool_use_is_answered_with_its_tool_result(toolbox):
    block = {
        "type": "tool_use",
        "id": "tu_1",
        "name": "create_file",
        "input": {"path": "a.txt", "content": "hi"},
    }
    assert answer(toolbox, block) == {
        "type": "tool_result",
        "tool_use_id": "tu_1",
        "content": "created a.txt (2 bytes)",
    }


@pytest.mark.parametrize(
    ("name", "tool_input", "message"),
    [
        ("delete_everything", {}, "unknown tool 'delete_everything'"),
        ("read_file", "a.txt", "tool input must be an object"),
        ("read_file", {}, "path is required"),
        ("read_file", {"path": 3}, "path must be a string"),
        ("read_file", {"path": "/etc/passwd"}, "absolute"),
        ("read_file", {"path": "../x"}, "outside the workspace"),
        ("read_file", {"path": "missing.txt"}, "does not exist"),
        ("edit_file", {"path": "missing.txt", "old": "a", "new": "b"}, "does not exist"),
        ("create_file", {"path": "x"}, "content is required"),
        ("run_command", {"command": ""}, "command must not be empty"),
        ("run_command", {"command": "true", "timeout_s": 121}, "timeout_s must be a number"),
        ("run_command", {"command": "true", "timeout_s": 0}, "timeout_s must be a number"),
        ("run_command", {"command": "true", "timeout_s": True}, "timeout_s must be a number"),
        ("list_directory", {"path": 1}, "path must be a string"),
    ],
)
def test_tool_errors_come_back_as_error_results(toolbox, name, tool_input, message):
    result = answer(toolbox, {"type": "tool_use", "id": "t", "name": name, "input": tool_input})
    assert result["is_error"] is True and result["tool_use_id"] == "t"
    assert message in result["content"]
    assert toolbox.artifacts() == []


def test_an_os_error_names_the_path_the_model_gave(toolbox):
    call(toolbox, "create_file", {"path": "file", "content": ""})
    outcome = call(toolbox, "create_file", {"path": "file/below", "content": ""})
    assert outcome.is_error
    assert outcome.content.startswith("create_file failed for 'file/below': ")
    assert str(toolbox.workspace.path) not in outcome.content


def test_a_bug_in_a_tool_is_an_error_result_not_a_crash(toolbox, monkeypatch):
    def broken(*args):
        raise KeyError("oops")

    monkeypatch.setattr(toolbox.workspace, "list_directory", broken)
    outcome = call(toolbox, "list_directory", {})
    assert outcome.is_error and "KeyError" in outcome.content


def test_files_and_commands_become_artifacts_in_order(toolbox):
    call(toolbox, "create_file", {"path": "src/app.py", "content": "x = 1\n"})
    call(toolbox, "create_file", {"path": "README.md", "content": "# app\n"})
    call(toolbox, "edit_file", {"path": "src/app.py", "old": "x = 1", "new": "x = 2"})
    call(toolbox, "run_command", {"command": "exit 4"})
    call(toolbox, "run_command", {"command": "sleep 5", "timeout_s": 0.2})
    assert toolbox.artifacts() == [
        {"kind": "file", "path": "src/app.py"},
        {"kind": "file", "path": "README.md"},
        {"kind": "command", "command": "exit 4", "exit_code": 4, "timed_out": False},
        {"kind": "command", "command": "sleep 5", "exit_code": -9, "timed_out": True},
    ]


def test_a_failed_command_is_information_and_a_timed_out_one_an_error(toolbox):
    failed = call(toolbox, "run_command", {"command": "echo out; echo err >&2; exit 1"})
    assert not failed.is_error
    assert failed.content == "exit code: 1\n\nstdout:\nout\n\n\nstderr:\nerr\n"
    timed_out = call(toolbox, "run_command", {"command": "sleep 5", "timeout_s": 0.2})
    assert timed_out.is_error and timed_out.content.startswith("timed out after 0.2 s")


def test_commands_run_in_the_workspace_and_see_the_files_the_tools_wrote(toolbox):
    call(toolbox, "create_file", {"path": "data.txt", "content": "42\n"})
    outcome = call(toolbox, "run_command", {"command": "cat data.txt"})
    assert "stdout:\n42\n" in outcome.content


def test_read_edit_and_list_answer_the_model(toolbox):
    call(toolbox, "create_file", {"path": "a/b.txt", "content": "one two"})
    assert call(toolbox, "read_file", {"path": "a/b.txt"}).content == "one two"
    edited = call(toolbox, "edit_file", {"path": "a/b.txt", "old": "two", "new": "2"})
    assert edited.content == "edited a/b.txt: replaced 1 occurrence"
    assert call(toolbox, "list_directory", {}).content == "a/"
    assert call(toolbox, "list_directory", {"path": "a"}).content == "b.txt"
    call(toolbox, "create_file", {"path": "empty/.keep", "content": ""})
    assert call(toolbox, "list_directory", {"path": "empty"}).content == ".keep"
