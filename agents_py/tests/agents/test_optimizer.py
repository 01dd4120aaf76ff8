"""Tests of mnemosyne.agents.optimizer: the context budget split and the choice of skills."""

import os

import pytest

from mnemosyne.agents.optimizer import (
    MAX_SKILLS,
    NO_SKILLS,
    Skill,
    SkillDir,
    SkillLibrary,
    allocate,
    plan_context,
    words,
)
from mnemosyne.agents.plan import Task, parse_plan

PLAN = parse_plan({"id": "p", "prompt": "x"})
TASK = Task(id="main", prompt="x")


def test_the_default_window_splits_40_30_20_10():
    assert allocate(200_000) == {
        "critical": 80_000,
        "skills": 60_000,
        "project": 40_000,
        "general": 20_000,
    }


@pytest.mark.parametrize("window", [0, 1, 7, 99, 123_457, 1_000_003])
def test_the_shares_always_add_up_to_the_window(window):
    allocation = allocate(window)
    assert list(allocation) == ["critical", "skills", "project", "general"]
    assert sum(allocation.values()) == window
    assert allocation["critical"] == window * 40 // 100


def test_a_negative_window_is_refused():
    with pytest.raises(ValueError):
        allocate(-1)


def test_without_a_skill_source_no_skills_are_chosen():
    assert plan_context(PLAN, TASK, 200_000).to_wire() == {
        "skills": [],
        "allocation": {"critical": 80_000, "skills": 60_000, "project": 40_000, "general": 20_000},
        "context_window": 200_000,
    }
    assert NO_SKILLS.find(PLAN, TASK, 1) == ()


def test_a_skill_source_gets_the_skills_budget_and_its_skills_are_reported():
    class Recording:
        def __init__(self):
            self.asked = []

        def find(self, plan, task, budget_tokens):
            self.asked.append((plan.id, task.id, budget_tokens))
            return [Skill("skills/rust.md", "Rust", 0.9, True, 120)]

    source = Recording()
    context = plan_context(PLAN, TASK, 100_000, skills=source)
    assert source.asked == [("p", "main", 30_000)]
    assert context.to_wire()["skills"] == [
        {"path": "skills/rust.md", "name": "Rust", "score": 0.9, "local": True, "tokens": 120}
    ]


# -- skills in directories --------------------------------------------------------------------

RUST_TASK = Task(id="t", prompt="Write an async Rust HTTP server with tests", tech_stack=("rust",))


def skill(directory, name, text):
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.fixture
def local(tmp_path):
    return tmp_path / "local"


@pytest.fixture
def shared(tmp_path):
    return tmp_path / "global"


def library(local, shared, **kwargs):
    return SkillLibrary([SkillDir(local, True), SkillDir(shared, False)], **kwargs)


def find(source, task=RUST_TASK, budget=60_000):
    return source.find(PLAN, task, budget)


def test_words_are_lowercased_stemmed_and_free_of_stopwords():
    assert words("The Tests are testing the C++ and C# code, in Go!") == {
        "test",
        "c++",
        "c#",
        "code",
        "go",
    }


def test_relevant_skills_are_chosen_best_first_and_irrelevant_ones_dropped(local, shared):
    rust = skill(local, "rust-async.md", "# Rust async\n\nUse tokio for async servers.")
    http = skill(local, "web/http-servers.md", "# HTTP servers\n\nRouting and handlers.")
    skill(local, "cooking.md", "# Cooking\n\nBoil pasta in salted water.")
    chosen = find(library(local, shared))
    assert [s.path for s in chosen] == [rust, http]
    assert chosen[0].name == "Rust async" and chosen[0].local is True
    assert chosen[0].score > chosen[1].score >= 0.1
    assert chosen[0].tokens == -(-os.path.getsize(rust) // 4)


def test_the_threshold_drops_weak_matches(local, shared):
    skill(local, "notes.md", "# Notes\n\nSomething about a server.")
    assert find(library(local, shared, threshold=0.1)) == []
    assert len(find(library(local, shared, threshold=0.01))) == 1


def test_at_most_seven_skills_are_chosen(local, shared):
    for n in range(10):
        skill(local, f"rust-{n}.md", "# Rust\n\nasync tests")
    chosen = find(library(local, shared))
    assert len(chosen) == MAX_SKILLS == 7
    assert [os.path.basename(s.path) for s in chosen] == [f"rust-{n}.md" for n in range(7)]


def test_skills_that_do_not_fit_the_budget_are_skipped(local, shared):
    big = skill(local, "rust-big.md", "# Rust async\n\n" + "tokio " * 1000)
    small = skill(local, "rust-small.md", "# Rust\n\nasync")
    assert [s.path for s in find(library(local, shared), budget=100)] == [small]
    assert [s.path for s in find(library(local, shared))] == [big, small]


def test_local_skills_win_ties_and_shadow_global_ones_of_the_same_name(local, shared):
    text = "# Rust async\n\nServers."
    global_only = skill(shared, "rust-tokio.md", text)
    skill(shared, "rust.md", text)
    local_rust = skill(local, "rust.md", text)
    chosen = find(library(local, shared))
    assert [(s.path, s.local) for s in chosen] == [(local_rust, True), (global_only, False)]


def test_the_same_task_and_files_always_give_the_same_selection(local, shared):
    for n, topic in enumerate(["rust", "async", "http", "tests", "server", "tokio", "axum"]):
        skill(local if n % 2 else shared, f"{topic}.md", f"# {topic}\n\nrust async {topic}")
    first = find(library(local, shared))
    assert first and all(find(library(local, shared)) == first for _ in range(5))


def test_front_matter_names_and_keywords_count_as_headline(local, shared):
    skill(
        local,
        "a.md",
        "---\nname: Systems programming\nkeywords: [rust, tokio]\ntags:\n  - async\n"
        "description: Long prose about many things.\n---\nBody text.",
    )
    [chosen] = find(library(local, shared))
    assert chosen.name == "Systems programming"
    # rust and async of the task's 6 words are among the headline's 5 (0.6 * 2/5), and in
    # the body as the headline counts there too (0.4 * 2/6).
    assert chosen.score == round(0.6 * 2 / 5 + 0.4 * 2 / 6, 4)


def test_hidden_underscored_and_non_markdown_files_are_not_skills(local, shared):
    skill(local, "_draft-rust.md", "# Rust async")
    skill(local, ".hidden/rust.md", "# Rust async")
    skill(local, "rust.txt", "# Rust async")
    assert find(library(local, shared)) == []


def test_missing_directories_have_no_skills(tmp_path):
    assert find(library(tmp_path / "nope", tmp_path / "nada")) == []


def test_the_environment_lists_local_dirs_then_the_global_one(tmp_path):
    home = tmp_path / "home"
    environ = {
        "MNEMOSYNE_SKILL_DIRS": os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]),
        "HOME": str(home),
    }
    assert SkillLibrary.from_environ(environ).dirs == (
        SkillDir(tmp_path / "a", True),
        SkillDir(tmp_path / "b", True),
        SkillDir(home / ".mnemosyne" / "skills", False),
    )
    listed_twice = {"MNEMOSYNE_SKILL_DIRS": str(home / ".mnemosyne/skills"), "HOME": str(home)}
    assert SkillLibrary.from_environ(listed_twice).dirs == (
        SkillDir(home / ".mnemosyne" / "skills", True),
    )
