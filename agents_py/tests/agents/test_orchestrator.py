"""Tests of mnemosyne.agents.orchestrator: a plan's tasks and their execution order."""

import pytest

from mnemosyne.agents.orchestrator import TaskGraphError, execution_order, plan_tasks
from mnemosyne.agents.plan import Task, parse_plan


def tasks(*specs):
    """Tasks from (id, [dependencies]) pairs, prompts made up."""
    return [Task(id=i, prompt=f"do {i}", depends_on=tuple(deps)) for i, deps in specs]


@pytest.mark.parametrize("listed", [None, []])
def test_a_plan_without_tasks_is_one_main_task_carrying_the_plans_fields(listed):
    plan = parse_plan(
        {
            "id": "p",
            "prompt": "Build the thing",
            "tech_stack": ["rust"],
            "success_criteria": ["it runs"],
            "constraints": ["no network"],
            "tasks": listed,
        }
    )
    (main,) = plan_tasks(plan)
    assert main.to_wire() == {
        "id": "main",
        "prompt": "Build the thing",
        "depends_on": [],
        "tech_stack": ["rust"],
        "success_criteria": ["it runs"],
        "constraints": ["no network"],
    }
    assert execution_order([main]) == ["main"]


def test_the_main_task_of_a_plan_without_those_fields_carries_empty_lists():
    (main,) = plan_tasks(parse_plan({"id": "p", "prompt": "Build"}))
    assert main.tech_stack == () and main.success_criteria == () and main.constraints == ()


def test_a_plan_without_tasks_or_prompt_has_nothing_to_run():
    with pytest.raises(TaskGraphError, match="no tasks and no prompt"):
        plan_tasks(parse_plan({"id": "p", "prompt": "  "}))


def test_a_plans_own_tasks_are_kept_as_they_are():
    plan = parse_plan(
        {"id": "p", "prompt": "x", "tasks": [{"id": "a", "prompt": "A", "depends_on": []}]}
    )
    assert plan_tasks(plan) == plan.tasks


def test_independent_tasks_run_in_plan_order():
    assert execution_order(tasks(("c", []), ("a", []), ("b", []))) == ["c", "a", "b"]


def test_dependencies_run_before_their_dependents_whatever_the_listing_order():
    graph = tasks(("deploy", ["test"]), ("test", ["build"]), ("build", []))
    assert execution_order(graph) == ["build", "test", "deploy"]


def test_a_diamond_is_ordered_deterministically_by_plan_order():
    graph = tasks(("top", []), ("right", ["top"]), ("left", ["top"]), ("bottom", ["left", "right"]))
    assert execution_order(graph) == ["top", "right", "left", "bottom"]


def test_a_ready_task_listed_earlier_goes_before_one_listed_later():
    # `late` becomes ready only after `a`, but `b` was listed after it and waits its turn.
    graph = tasks(("a", []), ("late", ["a"]), ("b", []))
    assert execution_order(graph) == ["a", "late", "b"]


def test_a_repeated_dependency_counts_once():
    assert execution_order(tasks(("a", []), ("b", ["a", "a"]))) == ["a", "b"]


def test_a_duplicate_task_id_is_an_error_naming_it():
    with pytest.raises(TaskGraphError) as raised:
        execution_order(tasks(("a", []), ("b", []), ("a", [])))
    assert str(raised.value) == "duplicate task id 'a' (tasks 0 and 2)"


def test_an_unknown_dependency_is_an_error_naming_both_tasks():
    with pytest.raises(TaskGraphError) as raised:
        execution_order(tasks(("a", []), ("b", ["a", "ghost"])))
    assert str(raised.value) == "task 'b' depends on unknown task 'ghost'"


def test_a_two_task_cycle_is_named():
    with pytest.raises(TaskGraphError) as raised:
        execution_order(tasks(("a", ["b"]), ("b", ["a"])))
    assert str(raised.value) == "dependency cycle: a -> b -> a (each task depends on the next)"


def test_a_task_depending_on_itself_is_a_cycle():
    with pytest.raises(TaskGraphError, match=r"dependency cycle: a -> a \("):
        execution_order(tasks(("a", ["a"])))


def test_a_cycle_behind_a_waiting_task_names_only_the_cycle():
    graph = tasks(("ok", []), ("x", ["a"]), ("a", ["b"]), ("b", ["c"]), ("c", ["a", "ok"]))
    with pytest.raises(TaskGraphError, match=r"dependency cycle: a -> b -> c -> a \("):
        execution_order(graph)
