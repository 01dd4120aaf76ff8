"""A pytest fixture serving the fake Anthropic API: `fake_anthropic`, stopped after the test.

Load it from a conftest with `from fake_anthropic.pytest_plugin import fake_anthropic`.
"""

from collections.abc import Iterator

import pytest

from .server import FakeAnthropic


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server
