"""The executor's tools: their definitions for the model, and carrying out its tool calls.

Five tools, all confined to the plan's workspace (`mnemosyne.agents.workspace`): read_file,
create_file, edit_file, list_directory and run_command. A `Toolbox` answers each `tool_use`
block with a `tool_result` block. Whatever goes wrong in a tool (a path outside the workspace,
an edit that does not match, a missing file, bad input, even a bug) goes back to the model as
a result with `is_error: true`, which it can read and act on; it never fails the request.

Commands run in a sandbox that sees the workspace and the system's directories only, or not at
all (`mnemosyne.agents.sandbox` says which, from the environment the supervisor set).

The toolbox also keeps the artifacts of the execution: every file created or edited (once, in
the order first touched) and every command run, with its exit code. The reviewer reads those
files and judges those commands, so a file changed only through a shell command is not listed.
"""

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mnemosyne.agents import command, sandbox, workspace
from mnemosyne.agents.workspace import Workspace, WorkspaceError
from mnemosyne.providers.base import ContentBlock, tool_result_block

log = logging.getLogger("mnemosyne.agents.tools")

_PATH = {"type": "string", "description": "A path relative to the workspace directory."}

TOOL_DEFINITIONS: tuple[dict[str, Any], ...] = (
    {
        "name": "read_file",
        "description": "Read a text file in the workspace. Long files are cut short.",
        "input_schema": {
            "type": "object",
            "properties": {"path": _PATH},
            "required": ["path"],
        },
    },
    {
        "name": "create_file",
        "description": (
            "Write a file in the workspace, creating parent directories as needed. An existing "
            "file is replaced."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"path": _PATH, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
    {
        "name": "edit_file",
        "description": (
            "Replace text in a workspace file. `old` must occur exactly once in the file; "
            "include enough surrounding text to make it unique."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "path": _PATH,
                "old": {"type": "string", "description": "The exact text to replace."},
                "new": {"type": "string", "description": "The replacement text."},
            },
            "required": ["path", "old", "new"],
        },
    },
    {
        "name": "list_directory",
        "description": (
            "List a workspace directory: directories end in '/', symbolic links in '@'."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"path": {**_PATH, "default": "."}},
        },
    },
    {
        "name": "run_command",
        "description": (
            "Run a shell command (/bin/sh -c) in the workspace directory, without input. "
            "Returns the exit code and the output (long output is cut in the middle). The "
            "command and everything it started are killed when the timeout expires."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string"},
                "timeout_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": command.MAX_TIMEOUT_S,
                    "default": command.DEFAULT_TIMEOUT_S,
                },
            },
            "required": ["command"],
        },
    },
)
TOOL_NAMES = tuple(tool["name"] for tool in TOOL_DEFINITIONS)


class ToolInputError(Exception):
    """Tool input that does not match the tool's schema."""


@dataclass(frozen=True)
class ToolOutcome:
    content: str
    is_error: bool = False


class Toolbox:
    """Carries out tool calls in one workspace and records what they produced."""

    def __init__(self, workspace: Workspace, environ: Mapping[str, str]) -> None:
        self.workspace = workspace
        # The environment commands inherit from, filtered by `command.command_env`.
        self._environ = dict(environ)
        self._policy = sandbox.command_policy(environ)
        self._files: dict[str, None] = {}
        self._commands: list[dict[str, Any]] = []

    def artifacts(self) -> list[dict[str, Any]]:
        files = [{"kind": "file", "path": path} for path in self._files]
        return [*files, *self._commands]

    async def answer(self, tool_use: Mapping[str, Any]) -> ContentBlock:
        """The `tool_result` block answering one `tool_use` block."""
        outcome = await self.call(tool_use.get("name"), tool_use.get("input"))
        return tool_result_block(
            str(tool_use.get("id", "")), outcome.content, is_error=outcome.is_error
        )

    async def call(self, name: Any, tool_input: Any) -> ToolOutcome:
        try:
            if name not in TOOL_NAMES:
                raise ToolInputError(
                    f"unknown tool {name!r}; the tools are: {', '.join(TOOL_NAMES)}"
                )
            if not isinstance(tool_input, dict):
                raise ToolInputError("tool input must be an object")
            return await getattr(self, f"_{name}")(tool_input)
        except (ToolInputError, WorkspaceError) as error:
            return ToolOutcome(str(error), is_error=True)
        except OSError as error:
            # Named by the path the model gave: the absolute path means nothing to it.
            path = tool_input.get("path") if isinstance(tool_input, dict) else None
            where = f" for {path!r}" if isinstance(path, str) else ""
            return ToolOutcome(f"{name} failed{where}: {error.strerror or error}", is_error=True)
        except Exception as error:
            # A bug in a tool must cost one tool call, not the whole execution.
            log.exception("tool %s failed", name)
            return ToolOutcome(f"{name} failed: {type(error).__name__}: {error}", is_error=True)

    async def _read_file(self, tool_input: Mapping[str, Any]) -> ToolOutcome:
        path = _string(tool_input, "path")
        read = await asyncio.to_thread(self.workspace.read_text, path)
        if read.truncated:
            return ToolOutcome(
                f"{read.text}\n[... cut: the file has {read.size} bytes; this is the first "
                f"{workspace.READ_LIMIT_BYTES} ...]"
            )
        return ToolOutcome(read.text)

    async def _create_file(self, tool_input: Mapping[str, Any]) -> ToolOutcome:
        path, content = _string(tool_input, "path"), _string(tool_input, "content", empty=True)
        written, existed = await asyncio.to_thread(self.workspace.write_text, path, content)
        self._files.setdefault(written)
        verb = "replaced" if existed else "created"
        return ToolOutcome(f"{verb} {written} ({len(content.encode('utf-8'))} bytes)")

    async def _edit_file(self, tool_input: Mapping[str, Any]) -> ToolOutcome:
        path = _string(tool_input, "path")
        old, new = _string(tool_input, "old"), _string(tool_input, "new", empty=True)
        edited = await asyncio.to_thread(self.workspace.edit_text, path, old, new)
        self._files.setdefault(edited)
        return ToolOutcome(f"edited {edited}: replaced 1 occurrence")

    async def _list_directory(self, tool_input: Mapping[str, Any]) -> ToolOutcome:
        path = tool_input.get("path", ".")
        if not isinstance(path, str):
            raise ToolInputError("path must be a string")
        entries = await asyncio.to_thread(self.workspace.list_directory, path or ".")
        return ToolOutcome("\n".join(entries) if entries else "(empty directory)")

    async def _run_command(self, tool_input: Mapping[str, Any]) -> ToolOutcome:
        text = _string(tool_input, "command")
        timeout_s = tool_input.get("timeout_s", command.DEFAULT_TIMEOUT_S)
        if (
            not isinstance(timeout_s, int | float)
            or isinstance(timeout_s, bool)
            or not 0 < timeout_s <= command.MAX_TIMEOUT_S
        ):
            raise ToolInputError(
                f"timeout_s must be a number above 0 and at most {command.MAX_TIMEOUT_S:g}"
            )
        if self._policy.refusal is not None:
            return ToolOutcome(self._policy.refusal, is_error=True)
        cwd = await asyncio.to_thread(self.workspace.ensure)
        result = await command.run_command(
            text, cwd, float(timeout_s), self._environ, self._policy.sandbox
        )
        self._commands.append(
            {
                "kind": "command",
                "command": text,
                "exit_code": result.exit_code,
                "timed_out": result.timed_out,
            }
        )
        if result.timed_out:
            head = (
                f"timed out after {timeout_s:g} s; the command and every process it started "
                "were killed"
            )
        else:
            head = f"exit code: {result.exit_code}"
        body = f"{head}\n\nstdout:\n{result.stdout}\n\nstderr:\n{result.stderr}"
        # A command that ran and failed is information for the model, not a tool error; one
        # that had to be killed did not finish what it was asked to do.
        return ToolOutcome(body, is_error=result.timed_out)


def _string(tool_input: Mapping[str, Any], key: str, *, empty: bool = False) -> str:
    value = tool_input.get(key)
    if value is None:
        raise ToolInputError(f"{key} is required")
    if not isinstance(value, str):
        raise ToolInputError(f"{key} must be a string")
    if not empty and not value:
        raise ToolInputError(f"{key} must not be empty")
    return value
