"""Work plans and tasks as the agents see them, parsed strictly from request params.

The supervisor sends a plan as JSON; `parse_plan` and `parse_task` turn it into frozen
dataclasses or raise `ParamsError` with a message naming the offending field
(`plan.tasks[1].depends_on[0] must be a string`). Fields the agents do not use (`priority`)
and fields they do not know are ignored, so a newer supervisor can add some. Optional list
fields may be absent or null; what "missing" means for validation is decided there, not here.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_REVIEW_ATTEMPTS = 3


class ParamsError(ValueError):
    """Request params that do not fit the method; the message names the field."""


@dataclass(frozen=True)
class PlanOptions:
    # Whether validation challenges vague, brief or undetailed prompts.
    challenge_vague_requirements: bool = True
    # The supervisor enforces this cap; workers only carry it.
    max_review_attempts: int = DEFAULT_MAX_REVIEW_ATTEMPTS


@dataclass(frozen=True)
class Task:
    id: str
    prompt: str
    depends_on: tuple[str, ...] = ()
    # None when the task does not say: the plan's value applies.
    tech_stack: tuple[str, ...] | None = None
    success_criteria: tuple[str, ...] | None = None
    constraints: tuple[str, ...] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt,
            "depends_on": list(self.depends_on),
        }
        for key in ("tech_stack", "success_criteria", "constraints"):
            value = getattr(self, key)
            if value is not None:
                wire[key] = list(value)
        return wire


@dataclass(frozen=True)
class Plan:
    id: str
    prompt: str | None = None
    tech_stack: tuple[str, ...] | None = None
    success_criteria: tuple[str, ...] | None = None
    constraints: tuple[str, ...] | None = None
    scope: str | None = None
    deployment: str | None = None
    tasks: tuple[Task, ...] | None = None
    options: PlanOptions = PlanOptions()


def params_object(params: Any) -> Mapping[str, Any]:
    """The params of a request, which must be a JSON object."""
    if not isinstance(params, dict):
        raise ParamsError(f"params must be an object, got {_json_type(params)}")
    return params


def parse_plan(value: Any, where: str = "plan") -> Plan:
    if value is None:
        raise ParamsError(f"{where} is required")
    plan = _object(value, where)
    tasks = _optional_list(plan, "tasks", where)
    return Plan(
        id=_required_string(plan, "id", where),
        prompt=_optional_string(plan, "prompt", where),
        tech_stack=_optional_strings(plan, "tech_stack", where),
        success_criteria=_optional_strings(plan, "success_criteria", where),
        constraints=_optional_strings(plan, "constraints", where),
        scope=_optional_string(plan, "scope", where),
        deployment=_optional_string(plan, "deployment", where),
        tasks=None
        if tasks is None
        else tuple(parse_task(item, f"{where}.tasks[{n}]") for n, item in enumerate(tasks)),
        options=_parse_options(plan.get("options"), f"{where}.options"),
    )


def parse_task(value: Any, where: str = "task") -> Task:
    if value is None:
        raise ParamsError(f"{where} is required")
    task = _object(value, where)
    return Task(
        id=_required_string(task, "id", where),
        prompt=_required_string(task, "prompt", where),
        depends_on=_optional_strings(task, "depends_on", where) or (),
        tech_stack=_optional_strings(task, "tech_stack", where),
        success_criteria=_optional_strings(task, "success_criteria", where),
        constraints=_optional_strings(task, "constraints", where),
    )


def parse_attempt(params: Mapping[str, Any], where: str = "attempt") -> int:
    """The 1-based attempt number of an execution or review."""
    value = params.get("attempt")
    if value is None:
        raise ParamsError(f"{where} is required")
    if not _is_int(value) or value < 1:
        raise ParamsError(f"{where} must be an integer of at least 1, got {_render(value)}")
    return value


def optional_strings(params: Mapping[str, Any], key: str, where: str = "") -> tuple[str, ...]:
    """A list of strings that may be absent or null (then empty)."""
    return _optional_strings(params, key, where) or ()


def optional_object(params: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    """An object that may be absent or null (then empty)."""
    value = params.get(key)
    if value is None:
        return {}
    return _object(value, _join(where, key))


def required_object(params: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    value = params.get(key)
    if value is None:
        raise ParamsError(f"{_join(where, key)} is required")
    return _object(value, _join(where, key))


def required_int(params: Mapping[str, Any], key: str, minimum: int, where: str = "") -> int:
    """An integer that must be present and at least `minimum`."""
    value = params.get(key)
    field = _join(where, key)
    if value is None:
        raise ParamsError(f"{field} is required")
    if not _is_int(value) or value < minimum:
        raise ParamsError(f"{field} must be an integer of at least {minimum}, got {_render(value)}")
    return value


def required_string(params: Mapping[str, Any], key: str, where: str = "") -> str:
    """A string that must be present; unlike ids and prompts, it may be empty."""
    value = params.get(key)
    if value is None:
        raise ParamsError(f"{_join(where, key)} is required")
    if not isinstance(value, str):
        raise ParamsError(f"{_join(where, key)} must be a string, got {_json_type(value)}")
    return value


def _parse_options(value: Any, where: str) -> PlanOptions:
    if value is None:
        return PlanOptions()
    options = _object(value, where)
    challenge = options.get("challenge_vague_requirements")
    if challenge is None:
        challenge = True
    elif not isinstance(challenge, bool):
        raise ParamsError(
            f"{where}.challenge_vague_requirements must be a boolean, got {_json_type(challenge)}"
        )
    attempts = options.get("max_review_attempts")
    if attempts is None:
        attempts = DEFAULT_MAX_REVIEW_ATTEMPTS
    elif not _is_int(attempts) or attempts < 1:
        raise ParamsError(
            f"{where}.max_review_attempts must be an integer of at least 1, got {_render(attempts)}"
        )
    return PlanOptions(challenge_vague_requirements=challenge, max_review_attempts=attempts)


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ParamsError(f"{where} must be an object, got {_json_type(value)}")
    return value


def _required_string(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        raise ParamsError(f"{_join(where, key)} is required")
    if not isinstance(value, str):
        raise ParamsError(f"{_join(where, key)} must be a string, got {_json_type(value)}")
    if not value.strip():
        raise ParamsError(f"{_join(where, key)} must not be blank")
    return value


def _optional_string(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ParamsError(f"{_join(where, key)} must be a string, got {_json_type(value)}")


def _optional_list(obj: Mapping[str, Any], key: str, where: str) -> list[Any] | None:
    value = obj.get(key)
    if value is None or isinstance(value, list):
        return value
    raise ParamsError(f"{_join(where, key)} must be a list, got {_json_type(value)}")


def _optional_strings(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = obj.get(key)
    if value is None:
        return None
    field = _join(where, key)
    if not isinstance(value, list):
        raise ParamsError(f"{field} must be a list of strings, got {_json_type(value)}")
    for n, item in enumerate(value):
        if not isinstance(item, str):
            raise ParamsError(f"{field}[{n}] must be a string, got {_json_type(item)}")
    return tuple(value)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _render(value: Any) -> str:
    return repr(value) if _is_int(value) else _json_type(value)
