"""The pipeline methods each role serves: params in, results out, errors as protocol errors.

Each handler parses its params strictly (`mnemosyne.agents.plan`), calls the agent logic in
`mnemosyne.agents`, and returns exactly the result fields the supervisor reads, no more, so a
strict decoder on the other side accepts them. Bad params become `invalid_params` naming the
field; provider failures become the protocol code the provider error carries; a bad setting in
the environment becomes `config`.

Work whose cost grows with the input (validating a prompt of megabytes, ordering thousands of
tasks) and file system work (skill discovery, reading produced files) runs in a thread, so the
event loop keeps answering pings meanwhile: a line may be 16 MiB, and reading every word of
that takes seconds.

The environment is read when a request is handled, not when the worker starts:
`MNEMOSYNE_WORKSPACE_ROOT` (where plans' workspaces live, for the executor and the reviewer),
`MNEMOSYNE_MAX_TOOL_TURNS` (the executor's tool loop bound, default 16) and
`MNEMOSYNE_SKILL_DIRS` (the optimizer's local skill directories).

Methods by role, with their params and result fields:

- executor `validate_plan` {plan} -> {valid, issues, questions}
- executor `execute` {plan, task, attempt, feedback, context}
  -> {output, artifacts, usage, provider, model}
- orchestrator `orchestrate` {plan} -> {tasks, order}
- orchestrator `track_context` {plan_id, used_tokens, window} -> {utilisation, events}
- optimizer `optimize` {plan, task} -> {skills, allocation, context_window}
- reviewer `review` {plan, task, execution, attempt}
  -> {passed, gates, issues, recommendations, confidence, usage, provider}
"""

import asyncio
import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from mnemosyne.agents import executor, optimizer, orchestrator, reviewer, validation
from mnemosyne.agents.context_monitor import ContextMonitors
from mnemosyne.agents.plan import (
    ParamsError,
    optional_object,
    optional_strings,
    params_object,
    parse_attempt,
    parse_plan,
    parse_task,
    required_int,
    required_object,
    required_string,
)
from mnemosyne.agents.tools import Toolbox
from mnemosyne.agents.workspace import Workspace
from mnemosyne.providers.base import Provider, ProviderError
from mnemosyne.runtime.worker import Methods, RequestContext, RequestError

MAX_TOOL_TURNS_ENV = "MNEMOSYNE_MAX_TOOL_TURNS"


@contextlib.contextmanager
def protocol_errors() -> Iterator[None]:
    """Turns the agents' exceptions into the protocol errors that answer the request."""
    try:
        yield
    except (ParamsError, orchestrator.TaskGraphError) as error:
        raise RequestError("invalid_params", str(error)) from error
    except ProviderError as error:
        raise RequestError(error.code, error.message, details=error.details) from error


def executor_methods(provider: Provider) -> Methods:
    async def validate_plan(params: Any, ctx: RequestContext) -> dict[str, Any]:
        with protocol_errors():
            plan = parse_plan(params_object(params).get("plan"))
            report = await asyncio.to_thread(validation.validate_plan, plan)
            return report.to_wire()

    async def execute(params: Any, ctx: RequestContext) -> dict[str, Any]:
        with protocol_errors():
            params = params_object(params)
            plan = parse_plan(params.get("plan"))
            task = parse_task(params.get("task"))
            attempt = parse_attempt(params)
            feedback = optional_strings(params, "feedback")
            context = optional_object(params, "context")
            chosen = _chosen_skills(context)
            max_turns = _max_tool_turns(os.environ)
            skills = await asyncio.to_thread(executor.load_skills, chosen, _skills_budget(context))
            toolbox = Toolbox(Workspace.for_plan(plan.id, os.environ), os.environ)

            async def on_turn(turn: int, tools: list[str]) -> None:
                if ctx is not None:
                    await ctx.progress(f"turn {turn}: {', '.join(tools)}")

            execution = await executor.execute(
                provider,
                plan,
                task,
                attempt,
                feedback,
                skills,
                toolbox=toolbox,
                max_turns=max_turns,
                on_turn=on_turn,
            )
            return execution.to_wire()

    return {"validate_plan": validate_plan, "execute": execute}


def orchestrator_methods(provider: Provider) -> Methods:
    async def orchestrate(params: Any, ctx: RequestContext) -> dict[str, Any]:
        with protocol_errors():
            plan = parse_plan(params_object(params).get("plan"))
            tasks = orchestrator.plan_tasks(plan)
            order = await asyncio.to_thread(orchestrator.execution_order, tasks)
            return {"tasks": [task.to_wire() for task in tasks], "order": order}

    # Per worker: each plan's monitor lives as long as this worker does.
    monitors = ContextMonitors()

    async def track_context(params: Any, ctx: RequestContext) -> dict[str, Any]:
        with protocol_errors():
            params = params_object(params)
            plan_id = required_string(params, "plan_id")
            if not plan_id.strip():
                raise ParamsError("plan_id must not be blank")
            used_tokens = required_int(params, "used_tokens", 0)
            window = required_int(params, "window", 1)
            utilisation, events = monitors.observe(plan_id, used_tokens, window)
            return {"utilisation": utilisation, "events": [e.to_wire() for e in events]}

    return {"orchestrate": orchestrate, "track_context": track_context}


def optimizer_methods(provider: Provider) -> Methods:
    async def optimize(params: Any, ctx: RequestContext) -> dict[str, Any]:
        with protocol_errors():
            params = params_object(params)
            plan = parse_plan(params.get("plan"))
            task = parse_task(params.get("task"))
            skills = optimizer.SkillLibrary.from_environ(os.environ)
            context = await asyncio.to_thread(
                optimizer.plan_context, plan, task, provider.context_window, skills
            )
            return context.to_wire()

    return {"optimize": optimize}


def reviewer_methods(provider: Provider) -> Methods:
    async def review(params: Any, ctx: RequestContext) -> dict[str, Any]:
        with protocol_errors():
            params = params_object(params)
            plan = parse_plan(params.get("plan"))
            task = parse_task(params.get("task"))
            execution = _execution_under_review(required_object(params, "execution"))
            attempt = parse_attempt(params)
            if execution.file_paths():
                workspace = Workspace.for_plan(plan.id, os.environ)
                execution = await asyncio.to_thread(reviewer.load_files, execution, workspace)
            result = await reviewer.review(provider, plan, task, execution, attempt)
            return result.to_wire()

    return {"review": review}


def _chosen_skills(context: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """The (path, name) of each skill the optimizer chose, from an `optimize` result."""
    skills = context.get("skills")
    if skills is None:
        return []
    if not isinstance(skills, list):
        raise ParamsError("context.skills must be a list")
    chosen = []
    for n, skill in enumerate(skills):
        if not isinstance(skill, dict):
            raise ParamsError(f"context.skills[{n}] must be an object")
        path = required_string(skill, "path", f"context.skills[{n}]")
        name = skill.get("name")
        chosen.append((path, name if isinstance(name, str) and name.strip() else None))
    return chosen


def _skills_budget(context: Mapping[str, Any]) -> int | None:
    """The optimizer's token budget for skills; None when the context has no allocation."""
    allocation = context.get("allocation")
    if not isinstance(allocation, dict):
        return None
    budget = allocation.get("skills")
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        return budget
    return None


def _max_tool_turns(environ: Mapping[str, str]) -> int:
    raw = environ.get(MAX_TOOL_TURNS_ENV, "").strip()
    if not raw:
        return executor.DEFAULT_MAX_TOOL_TURNS
    try:
        turns = int(raw)
    except ValueError:
        turns = 0
    if turns < 1:
        raise RequestError(
            "config", f"{MAX_TOOL_TURNS_ENV} must be a positive integer, got {raw!r}"
        )
    return turns


def _execution_under_review(execution: Mapping[str, Any]) -> reviewer.ExecutionUnderReview:
    output = required_string(execution, "output", "execution")
    artifacts = execution.get("artifacts")
    if artifacts is None:
        artifacts = []
    elif not isinstance(artifacts, list):
        raise ParamsError("execution.artifacts must be a list")
    return reviewer.ExecutionUnderReview(output, tuple(artifacts))
