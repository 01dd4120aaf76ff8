"""Execution: the prompt for one attempt at a task, and the tool loop that carries it out.

Every attempt sends the whole task afresh (prompt, tech stack, success criteria, constraints,
the optimizer's skills, and on a retry the reviewer's feedback on the attempt before), so a
retried or redelivered request needs no memory of earlier ones. A task's own tech stack,
success criteria and constraints win over the plan's; when the task has none, the plan's apply.

With a workspace, the model gets the tools of `mnemosyne.agents.tools` and the attempt is a
bounded loop: the model answers, its tool calls are carried out, the results go back, until it
answers without a tool call or `max_turns` model turns have been spent. The turn limit ends
the attempt with the last text the model wrote and a `note` artifact saying so; the older
design's loop reported "Work incomplete" and dropped the answer. Usage is summed over turns.
"""

import math
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mnemosyne.agents.plan import Plan, Task
from mnemosyne.agents.tools import TOOL_DEFINITIONS, Toolbox
from mnemosyne.providers.base import NO_USAGE, Message, Provider, Usage

EXECUTE_MAX_TOKENS = 4096
DEFAULT_MAX_TOOL_TURNS = 16
# A skill document is read up to this size; the optimizer's token budget usually cuts sooner.
SKILL_READ_LIMIT_BYTES = 64 * 1024
# The optimizer's estimate, used here to keep the skills inside their share of the window.
CHARS_PER_TOKEN = 4

SYSTEM_PROMPT = (
    "You are the executor agent of Mnemosyne, which runs a work plan through a pipeline of "
    "agents. Carry out the task you are given: produce what it asks for, meeting every "
    "success criterion and respecting every constraint. When reviewer feedback on an earlier "
    "attempt is included, address each point of it. Say plainly what you could not do."
)
TOOLS_PROMPT = SYSTEM_PROMPT + (
    " You work in a workspace directory shared by the tasks of this plan, through tools: "
    "read, create and edit files, list directories and run shell commands, all with paths "
    "relative to the workspace. Write the deliverables as files there and run their tests. "
    "When you are done, answer without a tool call, summarising what you produced and the "
    "result of the last test run."
)

# Called before the tools of a turn run, with the turn number and the tools' names.
TurnHook = Callable[[int, list[str]], Awaitable[None]]


@dataclass(frozen=True)
class SkillText:
    """A skill document the optimizer chose, as it goes into the prompt."""

    name: str
    path: str
    # Empty when the document could not be read or did not fit; then only its name is listed.
    text: str = ""


@dataclass(frozen=True)
class Execution:
    output: str
    usage: Usage
    provider: str
    model: str | None
    artifacts: tuple[Any, ...] = field(default=())

    def to_wire(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "artifacts": list(self.artifacts),
            "usage": self.usage.to_wire(),
            "provider": self.provider,
            "model": self.model,
        }


def build_prompt(
    plan: Plan,
    task: Task,
    attempt: int,
    feedback: Sequence[str] = (),
    skills: Sequence[SkillText] = (),
) -> str:
    """The user message of one attempt: a headline, then one `## ` section per part."""
    sections: list[tuple[str, Sequence[str] | str | None]] = [("Prompt", task.prompt)]
    if plan.prompt and plan.prompt.strip() and plan.prompt.strip() != task.prompt.strip():
        sections.append(("Work plan goal", plan.prompt))
    sections += [
        ("Tech stack", task.tech_stack or plan.tech_stack),
        ("Success criteria", task.success_criteria or plan.success_criteria),
        ("Constraints", task.constraints or plan.constraints),
        ("Scope", plan.scope),
        ("Deployment", plan.deployment),
        ("Skills", _render_skills(skills)),
    ]
    if feedback:
        previous = f"attempt {attempt - 1}" if attempt > 1 else "an earlier attempt"
        sections.append((f"Reviewer feedback on {previous}", feedback))

    lines = [f"# Task '{task.id}' (attempt {attempt})"]
    for title, body in sections:
        rendered = _render(body)
        if rendered:
            lines += ["", f"## {title}", rendered]
    return "\n".join(lines) + "\n"


async def execute(
    provider: Provider,
    plan: Plan,
    task: Task,
    attempt: int,
    feedback: Sequence[str] = (),
    skills: Sequence[SkillText] = (),
    toolbox: Toolbox | None = None,
    max_turns: int = DEFAULT_MAX_TOOL_TURNS,
    on_turn: TurnHook | None = None,
) -> Execution:
    """One attempt at the task: a single completion without a toolbox, the tool loop with."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, got {max_turns}")
    messages = [Message("user", build_prompt(plan, task, attempt, feedback, skills))]
    if toolbox is None:
        completion = await provider.complete(SYSTEM_PROMPT, messages, max_tokens=EXECUTE_MAX_TOKENS)
        model = completion.model or provider.model
        return Execution(completion.text, completion.usage, provider.name, model)

    usage, output, model = NO_USAGE, "", provider.model
    for turn in range(1, max_turns + 1):
        completion = await provider.complete(
            TOOLS_PROMPT, messages, max_tokens=EXECUTE_MAX_TOKENS, tools=list(TOOL_DEFINITIONS)
        )
        usage = Usage(
            usage.input_tokens + completion.usage.input_tokens,
            usage.output_tokens + completion.usage.output_tokens,
        )
        model = completion.model or model
        # A turn of only tool calls has no text; the answer is the last text written.
        if completion.text.strip():
            output = completion.text
        tool_uses = completion.tool_uses
        if not tool_uses:
            return Execution(output, usage, provider.name, model, tuple(toolbox.artifacts()))
        if turn == max_turns:
            # No turn is left to show the model the results, so its last calls are not run.
            break
        if on_turn is not None:
            await on_turn(turn, [str(block.get("name")) for block in tool_uses])
        messages.append(Message("assistant", list(completion.content)))
        # One after another, in the model's order: a later call may read what an earlier
        # one wrote.
        results = [await toolbox.answer(block) for block in tool_uses]
        messages.append(Message("user", results))

    note = {
        "kind": "note",
        "reason": "tool_turn_limit",
        "text": (
            f"stopped after {max_turns} model turns, the limit, with the model still calling "
            "tools; the work may be incomplete"
        ),
    }
    return Execution(output, usage, provider.name, model, (*toolbox.artifacts(), note))


def load_skills(
    chosen: Sequence[tuple[str, str | None]], budget_tokens: int | None
) -> list[SkillText]:
    """The chosen skills' documents, in the optimizer's order, within `budget_tokens`.

    `chosen` holds (path, name) pairs from the optimizer's result. Only regular markdown files
    are read: the paths arrive in the request, and the executor has no business reading
    anything else through them. A document that cannot be read, or that no longer fits in
    the budget, is listed by name only.
    """
    remaining = budget_tokens
    skills = []
    for path, name in chosen:
        label = name or os.path.splitext(os.path.basename(path))[0] or path
        text = _read_skill(path)
        cost = math.ceil(len(text) / CHARS_PER_TOKEN)
        if remaining is not None:
            if cost > remaining:
                text = ""
            else:
                remaining -= cost
        skills.append(SkillText(label, path, text))
    return skills


def _read_skill(path: str) -> str:
    if not path.endswith(".md"):
        return ""
    try:
        with open(path, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return ""
            data = file.read(SKILL_READ_LIMIT_BYTES)
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace").strip()


def _render_skills(skills: Sequence[SkillText]) -> str:
    parts = []
    for skill in skills:
        if skill.text:
            parts.append(f"### {skill.name} ({skill.path})\n\n{skill.text}")
        else:
            parts.append(f"- {skill.name} ({skill.path})")
    return "\n\n".join(parts)


def _render(body: Sequence[str] | str | None) -> str:
    if body is None:
        return ""
    if isinstance(body, str):
        return body.strip()
    return "\n".join(f"- {item.strip()}" for item in body if item.strip())
