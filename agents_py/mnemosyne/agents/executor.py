"""Execution: the prompt for one attempt at a task, and the provider's answer to it.

Every attempt sends the whole task afresh (prompt, tech stack, success criteria, constraints,
and on a retry the reviewer's feedback on the attempt before), so a retried or redelivered
request needs no memory of earlier ones. A task's own tech stack, success criteria and
constraints win over the plan's; when the task has none, the plan's apply.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mnemosyne.agents.plan import Plan, Task
from mnemosyne.providers.base import Message, Provider, Usage

EXECUTE_MAX_TOKENS = 4096

SYSTEM_PROMPT = (
    "You are the executor agent of Mnemosyne, which runs a work plan through a pipeline of "
    "agents. Carry out the task you are given: produce what it asks for, meeting every "
    "success criterion and respecting every constraint. When reviewer feedback on an earlier "
    "attempt is included, address each point of it. Say plainly what you could not do."
)


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
    skills: Sequence[str] = (),
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
        ("Skills", skills),
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
    skills: Sequence[str] = (),
) -> Execution:
    prompt = build_prompt(plan, task, attempt, feedback, skills)
    completion = await provider.complete(
        SYSTEM_PROMPT, [Message("user", prompt)], max_tokens=EXECUTE_MAX_TOKENS
    )
    return Execution(completion.text, completion.usage, provider.name, provider.model)


def _render(body: Sequence[str] | str | None) -> str:
    if body is None:
        return ""
    if isinstance(body, str):
        return body.strip()
    return "\n".join(f"- {item.strip()}" for item in body if item.strip())
