"""Work-plan validation: whether a plan says enough to be worked on, and what to ask if not.

These are the older design's vague-requirement rules (`ExecutorAgent._validate_work_plan`),
which were dead code there, with its bugs fixed:

- Words are matched whole and case-insensitively: "justify" does not contain the vague term
  "just", and "tomato" is not the detail indicator "to". Because whole words no longer catch
  inflections the way substrings did, each indicator lists its common forms ("builds",
  "requirements").
- "somehow" joins the vague terms, as the older design's documentation said it should.
- A missing prompt is reported once; the checks of its wording then have nothing to read.
- `challenge_vague_requirements = false` skips the wording checks, as the flag was documented
  to, but never the required fields.
- Blank strings and lists of blank strings count as missing.

Everything here is pure and deterministic: issues and questions come out in rule order, then
in the order of the tables below.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mnemosyne.agents.plan import Plan

VAGUE_TERMS = ("quickly", "just", "simple", "easy", "whatever", "somehow")
MIN_PROMPT_WORDS = 10
# A prompt missing more than this many of the five detail categories lacks detail: three or
# more missing, as in the older design.
MAX_MISSING_DETAIL_CATEGORIES = 2


def _indicators(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Words that show a prompt says what, why, how, under which constraints and how much.
DETAIL_INDICATORS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "what",
        _indicators(
            "add adds adding create creates creating build builds building implement "
            "implements implementing develop develops developing"
        ),
    ),
    (
        "why",
        _indicators(
            "because to for need needs needed require requires required goal goals purpose purposes"
        ),
    ),
    ("how", _indicators("using use uses with via through by")),
    (
        "constraints",
        _indicators("must should cannot within limit limits limited requirement requirements"),
    ),
    ("scope", _indicators("only all some specific following include includes including")),
)
LACKS_DETAIL_QUESTIONS = (
    "What specifically needs to be built? (what)",
    "Why is this needed? (purpose)",
    "How should it be implemented? (approach)",
    "Are there any constraints or requirements? (constraints)",
)

# A word: letters, digits and underscores (so `just_in_time` is one identifier), with inner
# apostrophes ("don't"). Hyphens, spaces and other punctuation separate words.
_WORD = re.compile(r"\w+(?:'\w+)*")


@dataclass(frozen=True)
class ValidationReport:
    issues: tuple[str, ...]
    questions: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.issues

    def to_wire(self) -> dict[str, object]:
        return {"valid": self.valid, "issues": list(self.issues), "questions": list(self.questions)}


def validate_plan(plan: Plan) -> ValidationReport:
    issues: list[str] = []
    questions: list[str] = []

    def flag(issue: str | None, *asks: str) -> None:
        if issue is not None:
            issues.append(issue)
        questions.extend(ask for ask in asks if ask not in questions)

    prompt = plan.prompt if plan.prompt is not None and plan.prompt.strip() else None
    if prompt is None:
        flag("Missing prompt/requirements", "What is the goal of this work?")
    if not _present(plan.tech_stack):
        flag("Tech stack not specified", "What tech stack / technologies should be used?")
    if plan.deployment is None or not plan.deployment.strip():
        flag(None, "Where will this be deployed?")
    if not _present(plan.success_criteria):
        flag("Success criteria not defined", "How will we know when this is complete?")

    if prompt is not None and plan.options.challenge_vague_requirements:
        words = words_of(prompt)
        for term in vague_terms(words):
            flag(
                f"Vague requirement: '{term}'",
                f"Please clarify what '{term}' means in this context",
            )
        count = len(prompt.split())
        if count < MIN_PROMPT_WORDS:
            flag(
                f"Requirement too brief ({count} words)",
                "Please provide more details about what needs to be built",
            )
        missing = missing_detail(words)
        if len(missing) > MAX_MISSING_DETAIL_CATEGORIES:
            flag(f"Prompt lacks detail in: {', '.join(missing)}", *LACKS_DETAIL_QUESTIONS)

    return ValidationReport(tuple(issues), tuple(questions))


def words_of(text: str) -> frozenset[str]:
    """The distinct lowercased whole words of a text."""
    return frozenset(_WORD.findall(text.lower()))


def vague_terms(words: Iterable[str]) -> list[str]:
    """The vague terms among `words`, in the order of VAGUE_TERMS."""
    present = set(words)
    return [term for term in VAGUE_TERMS if term in present]


def missing_detail(words: Iterable[str]) -> list[str]:
    """The detail categories none of whose indicators is among `words`, in table order."""
    present = set(words)
    return [name for name, indicators in DETAIL_INDICATORS if not indicators & present]


def _present(items: tuple[str, ...] | None) -> bool:
    return items is not None and any(item.strip() for item in items)
