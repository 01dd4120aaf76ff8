"""Review: the eight quality gates an execution must pass, and how they are decided.

Two sources decide the gates. Deterministic checks (CHECKS) come first and decide what they
can from the execution itself: an empty output fails completeness and intent; the files the
executor produced (read from the plan's workspace) are scanned for anti-patterns such as
TODO markers, `todo!()` or a hard-coded API key; and the test commands it ran decide
tests_passing. The model then judges the rest and answers with a JSON verdict, which
`parse_verdict` finds even inside prose or a code fence. A gate fails when either a check or
the model fails it; the review passes when every gate passes and the model passed it too. An
answer that is not a JSON verdict fails the review with an issue saying so, instead of being
guessed at.

The model is not asked when a check is conclusive on its own (an empty output: there is
nothing to review), so an obviously failed execution costs no tokens. Otherwise it is asked
even when a check failed, and told what the checks found, so that the executor's next attempt
gets all the feedback at once rather than one round of it per attempt.

The offline provider's canned answers are not verdicts: with it, the checks alone decide and
every gate no check fails passes.

The older design passed a gate when the model's prose happened to contain "<gate>: pass",
scanned code it was never sent, and failed every review for lack of test results it was never
given. Here the findings come out in the order of CHECKS and the result is deterministic for a
given model answer.
"""

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mnemosyne.agents.plan import Plan, Task
from mnemosyne.agents.workspace import Workspace, WorkspaceError
from mnemosyne.providers import offline
from mnemosyne.providers.base import NO_USAGE, Message, Provider, Usage

log = logging.getLogger("mnemosyne.agents.reviewer")

REVIEW_MAX_TOKENS = 2048
OFFLINE_PROVIDER = offline.NAME

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

# Each produced file is scanned up to this size.
SCAN_LIMIT_BYTES = 256 * 1024
# The model sees at most this much of each file, and of all files together.
PROMPT_FILE_BYTES = 8 * 1024
PROMPT_FILES_TOTAL_BYTES = 48 * 1024
# Anti-pattern findings reported per review; more would drown the other feedback.
MAX_PATTERN_FINDINGS = 10

NOT_A_VERDICT = "reviewer answer was not a JSON verdict"

SYSTEM_PROMPT = (
    "You are the reviewer agent of Mnemosyne. Judge whether the execution below does what its "
    "task asks, against eight quality gates: "
    + ", ".join(GATES)
    + ". Automated checks have already run; their findings are listed and stand. Answer with "
    "only a JSON object, no prose around it, of this form: "
    '{"passed": true or false, "gates": {"<gate>": true or false, ... one entry per gate}, '
    '"issues": ["<a concrete problem>", ...], "recommendations": ["<a concrete fix>", ...], '
    '"confidence": <a number from 0 to 1>}. '
    "Fail a gate only for a concrete reason, and give that reason as an issue."
)


@dataclass(frozen=True)
class ProducedFile:
    """A file the executor created or edited, as read from the workspace."""

    path: str
    # None when the file could not be read (gone, outside the workspace, not a file).
    text: str | None


@dataclass(frozen=True)
class CommandRun:
    command: str
    exit_code: int | None
    timed_out: bool


@dataclass(frozen=True)
class ExecutionUnderReview:
    """The parts of an execute result the reviewer reads."""

    output: str
    artifacts: tuple[Any, ...] = ()
    # Filled from the workspace by `load_files`.
    files: tuple[ProducedFile, ...] = ()

    def file_paths(self) -> list[str]:
        paths = [a.get("path") for a in self._artifacts_of_kind("file")]
        return list(dict.fromkeys(p for p in paths if isinstance(p, str) and p))

    def commands(self) -> list[CommandRun]:
        runs = []
        for artifact in self._artifacts_of_kind("command"):
            text, code = artifact.get("command"), artifact.get("exit_code")
            if not isinstance(text, str):
                continue
            if not isinstance(code, int) or isinstance(code, bool):
                code = None
            runs.append(CommandRun(text, code, artifact.get("timed_out") is True))
        return runs

    def notes(self) -> list[Mapping[str, Any]]:
        return self._artifacts_of_kind("note")

    def _artifacts_of_kind(self, kind: str) -> list[Mapping[str, Any]]:
        # Artifacts come from the executor through the supervisor; anything malformed is
        # skipped rather than failing the review of otherwise good work.
        return [a for a in self.artifacts if isinstance(a, dict) and a.get("kind") == kind]


@dataclass(frozen=True)
class Finding:
    gate: str
    issue: str
    recommendation: str
    # A conclusive finding settles the review: the model is not asked.
    conclusive: bool = False


Check = Callable[[Plan, Task, ExecutionUnderReview], list[Finding]]


def check_output_present(plan: Plan, task: Task, execution: ExecutionUnderReview) -> list[Finding]:
    if execution.output.strip():
        return []
    return [
        Finding(
            "completeness",
            "execution produced no output",
            "produce an answer that covers every part of the task",
            conclusive=True,
        ),
        Finding(
            "intent_satisfied",
            f"empty output cannot satisfy the task {task.id!r}",
            "answer the task prompt directly",
            conclusive=True,
        ),
    ]


@dataclass(frozen=True)
class AntiPattern:
    name: str
    pattern: re.Pattern[str]
    recommendation: str


ANTI_PATTERNS = (
    AntiPattern(
        "a TODO/FIXME/XXX marker",
        re.compile(r"\b(?:TODO|FIXME|XXX)\b"),
        "finish the marked work instead of leaving a TODO, FIXME or XXX marker",
    ),
    AntiPattern(
        "an unimplemented placeholder",
        re.compile(r"\b(?:unimplemented|todo)!\s*\(|\braise\s+NotImplementedError\b"),
        "implement the code instead of leaving unimplemented!, todo!() or NotImplementedError",
    ),
    AntiPattern(
        "a hard-coded secret",
        re.compile(
            r"sk-ant-[A-Za-z0-9_-]{8,}"
            r"|\bAKIA[0-9A-Z]{16}\b"
            r"|-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"
        ),
        "read secrets from the environment or a secret store, never from the source",
    ),
)


def check_anti_patterns(plan: Plan, task: Task, execution: ExecutionUnderReview) -> list[Finding]:
    """Scans the produced files; the issue names the file and line but never quotes it, since
    the match may be a secret."""
    findings = []
    for produced in execution.files:
        if produced.text is None:
            continue
        for number, line in enumerate(produced.text.splitlines(), start=1):
            for anti in ANTI_PATTERNS:
                if anti.pattern.search(line):
                    findings.append(
                        Finding(
                            "no_anti_patterns",
                            f"{produced.path}:{number} contains {anti.name}",
                            anti.recommendation,
                        )
                    )
    if len(findings) > MAX_PATTERN_FINDINGS:
        left_out = len(findings) - MAX_PATTERN_FINDINGS
        findings = findings[:MAX_PATTERN_FINDINGS]
        findings.append(
            Finding(
                "no_anti_patterns",
                f"and {left_out} more anti-pattern lines",
                findings[0].recommendation,
            )
        )
    return findings


_TEST_COMMAND = re.compile(
    # Test runners by name.
    r"\b(?:py\.?test|unittest|nose2|tox|nox|jest|vitest|mocha|rspec|phpunit|ctest|"
    r"cargo\s+(?:test|nextest)|go\s+test|(?:npm|yarn|pnpm|bun|deno)\s+(?:run\s+)?test|"
    r"make\s+(?:test|check)|mvn\s+\S*\s*test|gradlew?\s+\S*\s*test|dotnet\s+test|mix\s+test)\b"
    # A script named like a test, run by an interpreter or by path: `python test_app.py`,
    # `./run_tests.sh`. Merely naming one (`cat tests/x`) is not running it.
    r"|(?:\b(?:python[\d.]*|bash|sh|node|ruby|perl|php)\s+(?:-\S+\s+)*|\./)"
    r"\S*tests?(?=$|[\s/._-])"
)


def is_test_command(command: str) -> bool:
    return bool(_TEST_COMMAND.search(command))


def check_test_commands(plan: Plan, task: Task, execution: ExecutionUnderReview) -> list[Finding]:
    """The last test command the executor ran decides tests_passing.

    The last one rather than any one: running the tests, seeing them fail, fixing the code and
    running them again is how the work is meant to go, and only the final state is reviewed.
    Without a test command this check decides nothing and leaves the gate to the model.
    """
    tests = [run for run in execution.commands() if is_test_command(run.command)]
    if not tests:
        return []
    last = tests[-1]
    if last.timed_out:
        issue = f"the last test command timed out: {last.command}"
    elif last.exit_code != 0:
        issue = f"the last test command failed with exit code {last.exit_code}: {last.command}"
    else:
        return []
    return [Finding("tests_passing", issue, "make the tests pass and run them again")]


def check_turn_limit(plan: Plan, task: Task, execution: ExecutionUnderReview) -> list[Finding]:
    if any(note.get("reason") == "tool_turn_limit" for note in execution.notes()):
        return [
            Finding(
                "completeness",
                "the executor ran out of tool turns before it finished",
                "do the work in fewer steps, writing whole files at once",
            )
        ]
    return []


CHECKS: tuple[Check, ...] = (
    check_output_present,
    check_anti_patterns,
    check_test_commands,
    check_turn_limit,
)


@dataclass(frozen=True)
class Verdict:
    """The model's judgement, as parsed from its JSON answer."""

    passed: bool
    # The gates the model judged; a gate it left out is not failed by it.
    gates: dict[str, bool] = field(default_factory=dict)
    issues: tuple[str, ...] = ()
    recommendations: tuple[str, ...] = ()
    confidence: float | None = None


def parse_verdict(text: str) -> Verdict | None:
    """The first JSON object in `text` that carries a boolean `passed`; None if there is none.

    Models wrap JSON in prose or code fences despite being asked not to, so every `{` is
    tried as the start of an object; an object without `passed` (an example the model quoted)
    is skipped. Inside the verdict, values of the wrong type are ignored one by one.
    """
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("passed"), bool):
            return _verdict(value)
    return None


def _verdict(value: Mapping[str, Any]) -> Verdict:
    raw_gates = value.get("gates")
    gates = {}
    if isinstance(raw_gates, dict):
        gates = {g: v for g, v in raw_gates.items() if g in GATES and isinstance(v, bool)}
    confidence = value.get("confidence")
    if isinstance(confidence, int | float) and not isinstance(confidence, bool):
        confidence = min(1.0, max(0.0, float(confidence)))
    else:
        confidence = None
    return Verdict(
        passed=value["passed"],
        gates=gates,
        issues=_strings(value.get("issues")),
        recommendations=_strings(value.get("recommendations")),
        confidence=confidence,
    )


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item.strip() for item in value if isinstance(item, str) and item.strip())


@dataclass(frozen=True)
class Review:
    gates: dict[str, bool]
    issues: tuple[str, ...]
    recommendations: tuple[str, ...]
    usage: Usage
    provider: str
    passed: bool
    confidence: float

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


def combine(
    findings: Sequence[Finding], verdict: Verdict | None, *, model_asked: bool
) -> tuple[dict[str, bool], list[str], list[str], bool, float]:
    """Gates, issues, recommendations, passed and confidence from the checks and the model.

    `verdict` is None when the model was asked and did not answer with a verdict, or was not
    asked at all (`model_asked` says which). Without a verdict the confidence is the share of
    gates that passed, or 0 when the model's answer was unusable.
    """
    gates, issues, recommendations = judge(findings)
    if verdict is None:
        share = round(sum(gates.values()) / len(gates), 4)
        if not model_asked:
            return gates, issues, recommendations, all(gates.values()), share
        issues.append(NOT_A_VERDICT)
        return gates, issues, recommendations, False, 0.0

    for gate, ok in verdict.gates.items():
        gates[gate] = gates[gate] and ok
    issues += verdict.issues
    recommendations += verdict.recommendations
    rejected_silently = [g for g, ok in verdict.gates.items() if not ok]
    if not verdict.issues:
        # The issues are the executor's feedback on a retry; a failure without any would
        # leave it nothing to act on.
        issues += [f"the reviewer failed the gate {gate}" for gate in rejected_silently]
        if not verdict.passed and not rejected_silently:
            issues.append("the reviewer rejected the execution without naming an issue")
    passed = all(gates.values()) and verdict.passed
    confidence = verdict.confidence
    if confidence is None:
        confidence = round(sum(gates.values()) / len(gates), 4)
    return (
        gates,
        list(dict.fromkeys(issues)),
        list(dict.fromkeys(recommendations)),
        passed,
        confidence,
    )


def load_files(execution: ExecutionUnderReview, workspace: Workspace) -> ExecutionUnderReview:
    """The execution with the files its artifacts list read from the workspace.

    Synchronous file reads; run it in a thread. A file that cannot be read (deleted by a later
    command, or a path that leads outside the workspace) is kept with no text.
    """
    files = []
    for path in execution.file_paths():
        try:
            text = workspace.read_text(path, limit=SCAN_LIMIT_BYTES).text
        except (WorkspaceError, OSError) as error:
            log.info("cannot read produced file %s: %s", path, error)
            text = None
        files.append(ProducedFile(path, text))
    return replace(execution, files=tuple(files))


def build_prompt(
    plan: Plan,
    task: Task,
    execution: ExecutionUnderReview,
    attempt: int,
    findings: Sequence[Finding] = (),
) -> str:
    lines = [f"# Review of task '{task.id}' (attempt {attempt})", "", "## Task", task.prompt]
    for title, items in (
        ("Success criteria", task.success_criteria or plan.success_criteria),
        ("Constraints", task.constraints or plan.constraints),
    ):
        rendered = [f"- {item.strip()}" for item in items or () if item.strip()]
        if rendered:
            lines += ["", f"## {title}", *rendered]
    if findings:
        lines += ["", "## Automated check findings"]
        lines += [f"- {f.gate}: {f.issue}" for f in findings]
    commands = execution.commands()
    if commands:
        lines += ["", "## Commands run"]
        for run in commands:
            status = "timed out" if run.timed_out else f"exit code {run.exit_code}"
            lines.append(f"- `{run.command}`: {status}")
    if execution.files:
        lines += ["", "## Files produced"]
        budget = PROMPT_FILES_TOTAL_BYTES
        for produced in execution.files:
            lines += ["", f"### {produced.path}"]
            if produced.text is None:
                lines.append("(could not be read)")
                continue
            shown = produced.text.encode("utf-8")[: min(PROMPT_FILE_BYTES, max(budget, 0))]
            budget -= len(shown)
            text = shown.decode("utf-8", errors="ignore")
            cut = len(shown) < len(produced.text.encode("utf-8"))
            fence = _fence(text)
            lines += [fence, text, fence]
            if cut:
                lines.append("(cut short)")
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
    """Reviews an execution whose files, if any, `load_files` has already read."""
    findings = [finding for check in checks for finding in check(plan, task, execution)]
    usage = NO_USAGE
    verdict = None
    model_asked = False
    if not any(finding.conclusive for finding in findings):
        completion = await provider.complete(
            SYSTEM_PROMPT,
            [Message("user", build_prompt(plan, task, execution, attempt, findings))],
            max_tokens=REVIEW_MAX_TOKENS,
        )
        usage = completion.usage
        # Offline answers are canned prose, never a verdict; reading them as one would fail
        # every offline review.
        if provider.name != OFFLINE_PROVIDER:
            model_asked = True
            verdict = parse_verdict(completion.text)
    gates, issues, recommendations, passed, confidence = combine(
        findings, verdict, model_asked=model_asked
    )
    return Review(
        gates, tuple(issues), tuple(recommendations), usage, provider.name, passed, confidence
    )


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)
