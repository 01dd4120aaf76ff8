"""Tests of mnemosyne.agents.plan: strict parsing whose errors name the field."""

import pytest

from mnemosyne.agents.plan import (
    ParamsError,
    PlanOptions,
    Task,
    params_object,
    parse_attempt,
    parse_plan,
    parse_task,
)


def test_a_full_plan_parses_into_frozen_values():
    plan = parse_plan(
        {
            "id": "p1",
            "prompt": "do it",
            "tech_stack": ["rust"],
            "success_criteria": ["green"],
            "constraints": ["no unsafe"],
            "scope": "cli",
            "deployment": "laptop",
            "priority": 5,
            "tasks": [{"id": "a", "prompt": "first", "depends_on": [], "tech_stack": ["go"]}],
            "options": {"challenge_vague_requirements": False, "max_review_attempts": 5},
            "unknown_future_field": {"ignored": True},
        }
    )
    assert plan.tech_stack == ("rust",)
    assert plan.tasks == (Task(id="a", prompt="first", tech_stack=("go",)),)
    assert plan.options == PlanOptions(challenge_vague_requirements=False, max_review_attempts=5)


def test_absent_and_null_optional_fields_are_none_and_options_default():
    plan = parse_plan({"id": "p1", "tech_stack": None, "options": None})
    assert plan.prompt is None and plan.tech_stack is None and plan.tasks is None
    assert plan.options == PlanOptions(challenge_vague_requirements=True, max_review_attempts=3)


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (None, "plan is required"),
        ([], "plan must be an object, got a list"),
        ({}, "plan.id is required"),
        ({"id": 7}, "plan.id must be a string, got a number"),
        ({"id": " "}, "plan.id must not be blank"),
        ({"id": "p", "prompt": 3}, "plan.prompt must be a string, got a number"),
        ({"id": "p", "tech_stack": "python"}, "plan.tech_stack must be a list of strings"),
        ({"id": "p", "constraints": ["a", 1]}, "plan.constraints[1] must be a string"),
        ({"id": "p", "tasks": {}}, "plan.tasks must be a list, got an object"),
        ({"id": "p", "tasks": ["a"]}, "plan.tasks[0] must be an object, got a string"),
        ({"id": "p", "tasks": [{"id": "a"}]}, "plan.tasks[0].prompt is required"),
        (
            {"id": "p", "tasks": [{"id": "a", "prompt": "x", "depends_on": [1]}]},
            "plan.tasks[0].depends_on[0] must be a string, got a number",
        ),
        (
            {"id": "p", "options": {"challenge_vague_requirements": "no"}},
            "plan.options.challenge_vague_requirements must be a boolean, got a string",
        ),
        (
            {"id": "p", "options": {"max_review_attempts": 0}},
            "plan.options.max_review_attempts must be an integer of at least 1, got 0",
        ),
        (
            {"id": "p", "options": {"max_review_attempts": True}},
            "plan.options.max_review_attempts must be an integer of at least 1, got a boolean",
        ),
    ],
)
def test_a_bad_plan_is_rejected_naming_the_field(plan, message):
    with pytest.raises(ParamsError) as raised:
        parse_plan(plan)
    assert str(raised.value).startswith(message)


def test_a_task_needs_an_id_and_a_non_blank_prompt():
    assert parse_task({"id": "a", "prompt": "x"}) == Task(id="a", prompt="x")
    with pytest.raises(ParamsError, match="^task.prompt must not be blank$"):
        parse_task({"id": "a", "prompt": ""})
    with pytest.raises(ParamsError, match="^task is required$"):
        parse_task(None)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "attempt is required"),
        ({"attempt": 0}, "attempt must be an integer of at least 1, got 0"),
        ({"attempt": "1"}, "attempt must be an integer of at least 1, got a string"),
        ({"attempt": 1.0}, "attempt must be an integer of at least 1, got a number"),
        ({"attempt": True}, "attempt must be an integer of at least 1, got a boolean"),
    ],
)
def test_a_bad_attempt_is_rejected(params, message):
    with pytest.raises(ParamsError) as raised:
        parse_attempt(params)
    assert str(raised.value) == message


def test_params_must_be_an_object():
    with pytest.raises(ParamsError, match="^params must be an object, got null$"):
        params_object(None)


def test_a_task_writes_back_only_the_fields_it_has():
    assert Task(id="a", prompt="x").to_wire() == {"id": "a", "prompt": "x", "depends_on": []}
    assert Task(id="a", prompt="x", depends_on=("b",), constraints=()).to_wire() == {
        "id": "a",
        "prompt": "x",
        "depends_on": ["b"],
        "constraints": [],
    }
