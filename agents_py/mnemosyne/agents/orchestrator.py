"""Orchestration: which tasks a plan consists of, and an order that respects their dependencies.

A task's `depends_on` lists the tasks that must finish before it starts. The order is
deterministic: among the tasks whose dependencies are done, the one listed first in the plan
goes first. A graph that cannot be ordered (a duplicate id, a dependency on an unknown task, a
cycle) raises `TaskGraphError` naming the problem; the older design's work queue had no cycle
detection and left such tasks waiting forever.
"""

import heapq
from collections.abc import Sequence

from mnemosyne.agents.plan import Plan, Task

MAIN_TASK_ID = "main"


class TaskGraphError(ValueError):
    """The plan's tasks cannot be run: the message says why, naming the tasks involved."""


def plan_tasks(plan: Plan) -> tuple[Task, ...]:
    """The plan's tasks; a plan without tasks is one task, `main`, doing the whole prompt."""
    if plan.tasks:
        return plan.tasks
    if plan.prompt is None or not plan.prompt.strip():
        raise TaskGraphError("plan has no tasks and no prompt, so there is nothing to run")
    return (
        Task(
            id=MAIN_TASK_ID,
            prompt=plan.prompt,
            depends_on=(),
            tech_stack=plan.tech_stack or (),
            success_criteria=plan.success_criteria or (),
            constraints=plan.constraints or (),
        ),
    )


def execution_order(tasks: Sequence[Task]) -> list[str]:
    """Task ids in an order where every task comes after the tasks it depends on."""
    index: dict[str, int] = {}
    for position, task in enumerate(tasks):
        if task.id in index:
            raise TaskGraphError(
                f"duplicate task id {task.id!r} (tasks {index[task.id]} and {position})"
            )
        index[task.id] = position
    for task in tasks:
        for dependency in task.depends_on:
            if dependency not in index:
                raise TaskGraphError(f"task {task.id!r} depends on unknown task {dependency!r}")

    waiting_on = [len(set(task.depends_on)) for task in tasks]
    dependents: list[list[int]] = [[] for _ in tasks]
    for position, task in enumerate(tasks):
        for dependency in set(task.depends_on):
            dependents[index[dependency]].append(position)

    ready = [position for position, count in enumerate(waiting_on) if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        position = heapq.heappop(ready)
        order.append(tasks[position].id)
        for dependent in dependents[position]:
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) < len(tasks):
        cycle = find_cycle(tasks, done=set(order))
        raise TaskGraphError(
            "dependency cycle: " + " -> ".join(cycle) + " (each task depends on the next)"
        )
    return order


def find_cycle(tasks: Sequence[Task], done: set[str]) -> list[str]:
    """A dependency cycle among the tasks not in `done`, as ids, its first id repeated last.

    Every such task waits on another one that is not done (that is why it is not done), so
    following, from the first of them, the first dependency that is not done must come back
    to a task already on the path.
    """
    by_id = {task.id: task for task in tasks}
    start = next(task.id for task in tasks if task.id not in done)
    path: list[str] = []
    seen: dict[str, int] = {}
    current = start
    while current not in seen:
        seen[current] = len(path)
        path.append(current)
        current = next(d for d in by_id[current].depends_on if d not in done)
    return [*path[seen[current] :], current]
