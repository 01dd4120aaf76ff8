"""Shared pytest fixtures: worker processes that are always killed when a test ends, and the
fake Anthropic API (`fake_anthropic`, from tests/fake_anthropic at the repository root)."""

from collections.abc import Callable, Iterator, Mapping

import pytest

# Imported by name so that pytest registers the fixture for every test.
from fake_anthropic.pytest_plugin import fake_anthropic  # noqa: F401
from worker_harness import WorkerProcess, agent_argv


@pytest.fixture
def spawn() -> Iterator[Callable[..., WorkerProcess]]:
    """Starts a process with `spawn(argv, env=None)`; its process group is killed afterwards."""
    started: list[WorkerProcess] = []

    def start(argv: list[str], env: Mapping[str, str] | None = None) -> WorkerProcess:
        process = WorkerProcess(argv, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def executor(spawn: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A started executor agent, its hello and ready already read."""
    worker = spawn(agent_argv("executor"))
    worker.start()
    return worker
