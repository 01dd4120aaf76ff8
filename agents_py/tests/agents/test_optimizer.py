"""Tests of mnemosyne.agents.optimizer: the context budget split and the skills slot."""

import pytest

from mnemosyne.agents.optimizer import NO_SKILLS, Skill, allocate, plan_context
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
            return [Skill("skills/rust.md", 0.9, ("rust",))]

    source = Recording()
    context = plan_context(PLAN, TASK, 100_000, skills=source)
    assert source.asked == [("p", "main", 30_000)]
    assert context.to_wire()["skills"] == [
        {"path": "skills/rust.md", "relevance": 0.9, "categories": ["rust"]}
    ]
