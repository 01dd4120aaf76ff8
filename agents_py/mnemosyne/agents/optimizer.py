"""Context budget: how a task's context window is divided, and which skills fill it.

The split is the older design's, the same in its Python, Rust and docs: 40 % for critical
context (the task, its plan, reviewer feedback), 30 % for skills, 20 % for project knowledge
and 10 % for general knowledge. Unlike the older optimizer, which asked a model for an
allocation and then ignored the answer, this is plain arithmetic, and deterministic.

Skills are markdown documents in skill directories: those `MNEMOSYNE_SKILL_DIRS` lists
(`os.pathsep`-separated, project-local, preferred in the order given; the supervisor sets it
from `[executor] skill_dirs`, as one exported in a shell never reaches a worker), then the
global `~/.mnemosyne/skills`. A document's relevance to a task is the overlap of words between the
task (its prompt and tech stack) and the skill: its headline vocabulary (name, title, file
name, front-matter keywords, tags and description) weighs most, its body less. Documents below
`RELEVANCE_THRESHOLD` are dropped; of the rest at most `MAX_SKILLS` are chosen, best first,
that fit in the skills budget. Ties go to local skills, then to the directory listed first,
then to the path, so the same task and the same files always give the same selection. A local
document shadows a global one of the same file name.

The older optimizer took a random subset of the task's keywords (`list(set(...))[:20]`), so
it chose different skills for the same task from one run to the next, and spent a model call
on keywords whose answer it mostly discarded.
"""

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mnemosyne.agents.plan import Plan, Task

# Percentages of the context window, in the order they are reported.
BUDGET_SHARES_PERCENT = (("critical", 40), ("skills", 30), ("project", 20), ("general", 10))

SKILL_DIRS_ENV = "MNEMOSYNE_SKILL_DIRS"
GLOBAL_SKILL_DIR = Path("~/.mnemosyne/skills")
RELEVANCE_THRESHOLD = 0.1
MAX_SKILLS = 7
# How a skill's score weighs a match in its headline against a match in its body.
HEADLINE_WEIGHT = 0.6
BODY_WEIGHT = 0.4
# Bounds on discovery, so a huge or mistaken skill directory cannot stall the optimizer.
MAX_SKILL_FILES_PER_DIR = 2000
SKILL_READ_LIMIT_BYTES = 64 * 1024
# A rough token estimate for text: about four characters per token.
CHARS_PER_TOKEN = 4

_WORD = re.compile(r"[a-z0-9][a-z0-9+#]*")
# Common English words, and words every skill document uses, which say nothing about a topic.
_STOPWORDS_TEXT = """
    a about above after all also an and any are as at be been but by can could do does for
    from has have how i if in into is it its may me more most must my no not of on or our out
    over should so some such than that the their them then there these they this those to too
    up us use used using very was we were what when where which while who will with within
    without would you your md skill skills guide
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_FRONT_MATTER_KEYS = ("name", "title", "description", "keywords", "tags")


def estimate_tokens(size_bytes: int) -> int:
    return math.ceil(size_bytes / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Skill:
    """A skill document chosen for a task."""

    path: str
    name: str
    score: float
    local: bool
    tokens: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "score": self.score,
            "local": self.local,
            "tokens": self.tokens,
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
class SkillDir:
    path: Path
    local: bool


@dataclass(frozen=True)
class SkillDocument:
    """A skill file as discovered, before it is scored against a task."""

    path: str
    name: str
    local: bool
    # The position of its directory in the search order.
    rank: int
    headline: frozenset[str]
    body: frozenset[str]
    tokens: int


class SkillLibrary:
    """The skills in a list of directories, local ones first; a `SkillSource`.

    Directories are read on every `find`, so skills added while a worker runs are seen. Its
    methods read files: callers on the event loop run them in a thread.
    """

    def __init__(
        self,
        dirs: Sequence[SkillDir],
        threshold: float = RELEVANCE_THRESHOLD,
        max_skills: int = MAX_SKILLS,
    ) -> None:
        self.dirs = tuple(dirs)
        self.threshold = threshold
        self.max_skills = max_skills

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "SkillLibrary":
        """The directories `MNEMOSYNE_SKILL_DIRS` lists (local), then the global one."""
        local = [entry for entry in environ.get(SKILL_DIRS_ENV, "").split(os.pathsep) if entry]
        candidates = [SkillDir(Path(entry), True) for entry in local]
        home = environ.get("HOME")
        if home:
            global_dir = Path(home) / GLOBAL_SKILL_DIR.relative_to("~")
            candidates.append(SkillDir(global_dir, False))
        dirs: list[SkillDir] = []
        seen: set[str] = set()
        for candidate in candidates:
            path = Path(os.path.abspath(os.path.expanduser(candidate.path)))
            # The same directory listed twice (or the global one listed as local) is read
            # once, as whichever it was listed as first.
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                dirs.append(SkillDir(path, candidate.local))
        return cls(dirs)

    def documents(self) -> list[SkillDocument]:
        """Every skill document, one per file name, the first directory's winning."""
        documents = []
        names: set[str] = set()
        for rank, skill_dir in enumerate(self.dirs):
            for path in _markdown_files(skill_dir.path):
                if path.name in names:
                    continue
                document = _read_document(path, skill_dir.local, rank)
                if document is not None:
                    names.add(path.name)
                    documents.append(document)
        return documents

    def find(self, plan: Plan, task: Task, budget_tokens: int) -> Sequence[Skill]:
        query = task_words(plan, task)
        scored = [(score(query, document), document) for document in self.documents()]
        relevant = [(s, d) for s, d in scored if s >= self.threshold]
        relevant.sort(key=lambda pair: (-pair[0], not pair[1].local, pair[1].rank, pair[1].path))
        chosen: list[Skill] = []
        remaining = budget_tokens
        for relevance, document in relevant:
            if len(chosen) == self.max_skills:
                break
            if document.tokens > remaining:
                continue
            remaining -= document.tokens
            chosen.append(
                Skill(document.path, document.name, relevance, document.local, document.tokens)
            )
        return chosen


def words(text: str) -> set[str]:
    """The distinct content words of `text`, lowercased and crudely stemmed."""
    stems = (_stem(word) for word in _WORD.findall(text.lower()) if _keep(word))
    return {stem for stem in stems if stem not in _STOPWORDS}


def task_words(plan: Plan, task: Task) -> frozenset[str]:
    tech_stack = task.tech_stack or plan.tech_stack or ()
    return frozenset(words(" ".join([task.prompt, *tech_stack])))


def score(query: frozenset[str], document: SkillDocument) -> float:
    """How relevant a document is to a task, from 0 to 1.

    The headline part is the share of the smaller of the two word sets that they have in
    common, so a skill named "rust async" scores fully for a task that mentions both, however
    long the task. The body part is the share of the task's words the body contains.
    """
    if not query:
        return 0.0
    headline = 0.0
    if document.headline:
        common = len(query & document.headline)
        headline = common / min(len(query), len(document.headline))
    body = len(query & (document.body | document.headline)) / len(query)
    return round(HEADLINE_WEIGHT * headline + BODY_WEIGHT * body, 4)


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


def _keep(word: str) -> bool:
    return (len(word) > 1 or word in {"c", "r"}) and word not in _STOPWORDS


def _stem(word: str) -> str:
    # Just enough to meet "tests" and "testing" at "test"; both sides are stemmed alike, so
    # an odd stem ("postgr") still matches itself.
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _markdown_files(root: Path) -> list[Path]:
    """The `.md` files under `root`, sorted, skipping hidden and `_`-prefixed names."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith((".", "_")))
        for name in sorted(files):
            if name.endswith(".md") and not name.startswith((".", "_")):
                found.append(Path(directory) / name)
                if len(found) == MAX_SKILL_FILES_PER_DIR:
                    return found
    return found


def _read_document(path: Path, local: bool, rank: int) -> SkillDocument | None:
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            text = file.read(SKILL_READ_LIMIT_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    front, body = _split_front_matter(text)
    title = next((line[2:].strip() for line in body.splitlines() if line.startswith("# ")), "")
    name = front.get("name") or front.get("title") or title or path.stem
    # A description is prose, so it counts as body: in the headline it would dilute the
    # headline's share of matches.
    headline_parts = [path.stem.replace("-", " ").replace("_", " "), title]
    headline_parts += [value for key, value in front.items() if key != "description"]
    body = " ".join([front.get("description", ""), body])
    return SkillDocument(
        path=str(path),
        name=name,
        local=local,
        rank=rank,
        headline=frozenset(words(" ".join(headline_parts))),
        body=frozenset(words(body)),
        tokens=estimate_tokens(size),
    )


def _split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """The `---`-fenced front matter's known keys (lists flattened to text), and the body.

    A small reader of the `key: value`, `key: [a, b]` and `- item` forms skill files use, so
    the optimizer needs no YAML library.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}, text
    try:
        end = next(n for n in range(1, len(lines)) if lines[n].strip() == "---")
    except StopIteration:
        return {}, text
    front: dict[str, list[str]] = {}
    key = None
    for line in lines[1:end]:
        stripped = line.strip()
        if stripped.startswith("- ") and key is not None:
            front[key].append(stripped[2:].strip().strip("'\""))
            continue
        name, colon, value = stripped.partition(":")
        if not colon:
            continue
        key = name.strip().lower()
        if key not in _FRONT_MATTER_KEYS:
            key = None
            continue
        value = value.strip().strip("[]")
        front[key] = [v.strip().strip("'\"") for v in value.split(",") if v.strip()]
    flat = {k: ", ".join(v) for k, v in front.items() if v}
    return flat, "\n".join(lines[end + 1 :])
