"""Context budget: how a task's context window is divided, and which skills fill it.

The split is the older design's, the same in its Python, Rust and docs: 40 % for critical
context (the task, its plan, reviewer feedback), 30 % for skills, 20 % for project knowledge
and 10 % for general knowledge. Unlike the older optimizer, which asked a model for an
allocation and then ignored the answer, this is plain arithmetic, and deterministic.

Skills come from a `SkillSource`. Discovering them in skill directories is later work; until
then `NO_SKILLS` finds none, and a real source slots in without changing the callers.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mnemosyne.agents.plan import Plan, Task

# Percentages of the context window, in the order they are reported.
BUDGET_SHARES_PERCENT = (("critical", 40), ("skills", 30), ("project", 20), ("general", 10))


@dataclass(frozen=True)
class Skill:
    """A skill document chosen for a task."""

    path: str
    relevance: float
    categories: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "relevance": self.relevance,
            "categories": list(self.categories),
        }


class SkillSource(Protocol):
    def find(self, plan: Plan, task: Task, budget_tokens: int) -> Sequence[Skill]:
        """The skills most relevant to the task, best first, fitting in `budget_tokens`."""
        ...


class _NoSkills:
    def find(self, plan: Plan, task: Task, budget_tokens: int) -> Sequence[Skill]:
        return ()


NO_SKILLS: SkillSource = _NoSkills()


@dataclass(frozen=True)
class ContextPlan:
    skills: tuple[Skill, ...]
    allocation: dict[str, int]
    context_window: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "skills": [skill.to_wire() for skill in self.skills],
            "allocation": dict(self.allocation),
            "context_window": self.context_window,
        }


def allocate(context_window: int) -> dict[str, int]:
    """The context window in tokens, divided by BUDGET_SHARES_PERCENT.

    Integer shares round down; the last share takes the remainder, so the parts always add
    up to the whole window.
    """
    if context_window < 0:
        raise ValueError(f"context window must not be negative, got {context_window}")
    allocation = {name: context_window * percent // 100 for name, percent in BUDGET_SHARES_PERCENT}
    last = BUDGET_SHARES_PERCENT[-1][0]
    allocation[last] = context_window - sum(v for k, v in allocation.items() if k != last)
    return allocation


def plan_context(
    plan: Plan, task: Task, context_window: int, skills: SkillSource = NO_SKILLS
) -> ContextPlan:
    """The context a task's execution gets: its budget and the skills chosen for it."""
    allocation = allocate(context_window)
    chosen = tuple(skills.find(plan, task, allocation["skills"]))
    return ContextPlan(chosen, allocation, context_window)
