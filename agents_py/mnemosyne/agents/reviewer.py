"""Review: the eight quality gates an execution must pass, and how they are decided.

A gate fails when a check finds something wrong with it. Checks are deterministic functions of
the plan, the task and the execution, listed in CHECKS; each finding names its gate, an issue
and a recommendation. The model is asked for a review only when the deterministic checks
found nothing, so an obviously failed execution costs no tokens. The model's verdict is not
read yet (that comes with the real gate logic): today the gates are decided by the checks
alone, and every gate no check fails passes. With the offline provider that means every gate
passes when the execution produced output.

Unlike the older design, where the order of suggestions was random and the review result
depended on phrasing the model happened to use, the result here is deterministic: findings
come out in the order of CHECKS.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mnemosyne.agents.plan import Plan, Task
from mnemosyne.providers.base import NO_USAGE, Message, Provider, Usage

REVIEW_MAX_TOKENS = 2048

GATES = (
    "intent_satisfied",
    "tests_passing",
    "documentation_complete",
    "no_anti_patterns",
    "constraints_maintained",
    "completeness",
    "correctness",
    "principled_implementation",
)

SYSTEM_PROMPT = (
    "You are the reviewer agent of Mnemosyne. Judge whether the execution below does what its "
    "task asks, against eight quality gates: " + ", ".join(GATES) + ". For each gate answer "
    "`<gate>: pass` or `<gate>: fail - <reason>` on a line of its own, then list concrete "
    "recommendations."
)


@dataclass(frozen=True)
class ExecutionUnderReview:
    """The parts of an execute result the reviewer reads."""

    output: str
    artifacts: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Finding:
    gate: str
    issue: str
    recommendation: str


Check = Callable[[Plan, Task, ExecutionUnderReview], list[Finding]]


def check_output_present(plan: Plan, task: Task, execution: ExecutionUnderReview) -> list[Finding]:
    if execution.output.strip():
        return []
    return [
        Finding(
            "completeness",
            "execution produced no output",
            "produce an answer that covers every part of the task",
        ),
        Finding(
            "intent_satisfied",
            f"empty output cannot satisfy the task {task.id!r}",
            "answer the task prompt directly",
        ),
    ]


CHECKS: tuple[Check, ...] = (check_output_present,)


@dataclass(frozen=True)
class Review:
    gates: dict[str, bool]
    issues: tuple[str, ...]
    recommendations: tuple[str, ...]
    usage: Usage
    provider: str

    @property
    def passed(self) -> bool:
        return all(self.gates.values())

    @property
    def confidence(self) -> float:
        """The share of gates that passed."""
        return round(sum(self.gates.values()) / len(self.gates), 4)

    def to_wire(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "gates": dict(self.gates),
            "issues": list(self.issues),
            "recommendations": list(self.recommendations),
            "confidence": self.confidence,
            "usage": self.usage.to_wire(),
            "provider": self.provider,
        }


def judge(findings: Sequence[Finding]) -> tuple[dict[str, bool], list[str], list[str]]:
    """Gates, issues and recommendations from findings; duplicates are reported once."""
    failed = {finding.gate for finding in findings}
    unknown = failed - set(GATES)
    if unknown:
        raise ValueError(f"findings name unknown gates: {sorted(unknown)}")
    gates = {gate: gate not in failed for gate in GATES}
    issues = list(dict.fromkeys(f.issue for f in findings))
    recommendations = list(dict.fromkeys(f.recommendation for f in findings))
    return gates, issues, recommendations


def build_prompt(plan: Plan, task: Task, execution: ExecutionUnderReview, attempt: int) -> str:
    lines = [f"# Review of task '{task.id}' (attempt {attempt})", "", "## Task", task.prompt]
    for title, items in (
        ("Success criteria", task.success_criteria or plan.success_criteria),
        ("Constraints", task.constraints or plan.constraints),
    ):
        rendered = [f"- {item.strip()}" for item in items or () if item.strip()]
        if rendered:
            lines += ["", f"## {title}", *rendered]
    lines += ["", "## Execution output", execution.output]
    return "\n".join(lines) + "\n"


async def review(
    provider: Provider,
    plan: Plan,
    task: Task,
    execution: ExecutionUnderReview,
    attempt: int,
    checks: Sequence[Check] = CHECKS,
) -> Review:
    findings = [finding for check in checks for finding in check(plan, task, execution)]
    usage = NO_USAGE
    if not findings:
        completion = await provider.complete(
            SYSTEM_PROMPT,
            [Message("user", build_prompt(plan, task, execution, attempt))],
            max_tokens=REVIEW_MAX_TOKENS,
        )
        usage = completion.usage
    gates, issues, recommendations = judge(findings)
    return Review(gates, tuple(issues), tuple(recommendations), usage, provider.name)
