"""The pipeline methods each role serves: params in, results out, errors as protocol errors.

Each handler parses its params strictly (`mnemosyne.agents.plan`), calls the agent logic in
`mnemosyne.agents`, and returns exactly the result fields the supervisor reads, no more, so a
strict decoder on the other side accepts them. Bad params become `invalid_params` naming the
field; provider failures become the protocol code the provider error carries.

Work whose cost grows with the input (validating a prompt of megabytes, ordering thousands of
tasks) runs in a thread, so the event loop keeps answering pings meanwhile: a line may be
16 MiB, and reading every word of that takes seconds.

Methods by role, with their params and result fields:

- executor `validate_plan` {plan} -> {valid, issues, questions}
- executor `execute` {plan, task, attempt, feedback, context}
  -> {output, artifacts, usage, provider, model}
- orchestrator `orchestrate` {plan} -> {tasks, order}
- optimizer `optimize` {plan, task} -> {skills, allocation, context_window}
- reviewer `review` {plan, task, execution, attempt}
  -> {passed, gates, issues, recommendations, confidence, usage, provider}
"""

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from mnemosyne.agents import executor, optimizer, orchestrator, reviewer, validation
from mnemosyne.agents.plan import (
    ParamsError,
    optional_object,
    optional_strings,
    params_object,
    parse_attempt,
    parse_plan,
    parse_task,
    required_object,
    required_string,
)
from mnemosyne.providers.base import Provider, ProviderError
from mnemosyne.runtime.worker import Methods, RequestContext, RequestError


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
            skills = _skill_paths(optional_object(params, "context"))
            execution = await executor.execute(provider, plan, task, attempt, feedback, skills)
            return execution.to_wire()

    return {"validate_plan": validate_plan, "execute": execute}


def orchestrator_methods(provider: Provider) -> Methods:
    async def orchestrate(params: Any, ctx: RequestContext) -> dict[str, Any]:
        with protocol_errors():
            plan = parse_plan(params_object(params).get("plan"))
            tasks = orchestrator.plan_tasks(plan)
            order = await asyncio.to_thread(orchestrator.execution_order, tasks)
            return {"tasks": [task.to_wire() for task in tasks], "order": order}

    return {"orchestrate": orchestrate}


def optimizer_methods(provider: Provider) -> Methods:
    async def optimize(params: Any, ctx: RequestContext) -> dict[str, Any]:
        with protocol_errors():
            params = params_object(params)
            plan = parse_plan(params.get("plan"))
            task = parse_task(params.get("task"))
            return optimizer.plan_context(plan, task, provider.context_window).to_wire()

    return {"optimize": optimize}


def reviewer_methods(provider: Provider) -> Methods:
    async def review(params: Any, ctx: RequestContext) -> dict[str, Any]:
        with protocol_errors():
            params = params_object(params)
            plan = parse_plan(params.get("plan"))
            task = parse_task(params.get("task"))
            execution = _execution_under_review(required_object(params, "execution"))
            attempt = parse_attempt(params)
            result = await reviewer.review(provider, plan, task, execution, attempt)
            return result.to_wire()

    return {"review": review}


def _skill_paths(context: Mapping[str, Any]) -> list[str]:
    """The paths of the skills the optimizer chose, from an `optimize` result."""
    skills = context.get("skills")
    if skills is None:
        return []
    if not isinstance(skills, list):
        raise ParamsError("context.skills must be a list")
    paths = []
    for n, skill in enumerate(skills):
        if not isinstance(skill, dict):
            raise ParamsError(f"context.skills[{n}] must be an object")
        paths.append(required_string(skill, "path", f"context.skills[{n}]"))
    return paths


def _execution_under_review(execution: Mapping[str, Any]) -> reviewer.ExecutionUnderReview:
    output = required_string(execution, "output", "execution")
    artifacts = execution.get("artifacts")
    if artifacts is None:
        artifacts = []
    elif not isinstance(artifacts, list):
        raise ParamsError("execution.artifacts must be a list")
    return reviewer.ExecutionUnderReview(output, tuple(artifacts))
