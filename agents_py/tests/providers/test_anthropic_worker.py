"""Real workers with the anthropic provider: what a supervisor sees when it cannot work, and
when it can."""

import textwrap
from pathlib import Path

import pytest

from worker_harness import AGENTS_PY, agent_argv

# Put first on a worker's PYTHONPATH, this sitecustomize makes `import anthropic` fail as if
# the package were not installed, while the interpreter (and its site-packages) stays the same.
HIDE_ANTHROPIC = textwrap.dedent(
    """
    import sys

    class HideAnthropic:
        def find_spec(self, name, path=None, target=None):
            if name == "anthropic" or name.startswith("anthropic."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, HideAnthropic())
    """
)


@pytest.fixture
def hidden_anthropic(tmp_path: Path) -> str:
    """A PYTHONPATH on which `anthropic` cannot be imported."""
    (tmp_path / "sitecustomize.py").write_text(HIDE_ANTHROPIC, encoding="utf-8")
    return f"{tmp_path}:{AGENTS_PY}"


def test_a_missing_package_is_fatal_with_the_install_command(spawn, hidden_anthropic):
    worker = spawn(
        agent_argv("executor"),
        {
            "MNEMOSYNE_PROVIDER": "anthropic",
            "ANTHROPIC_API_KEY": "k",
            "PYTHONPATH": hidden_anthropic,
        },
    )
    hello = worker.expect("hello")
    assert hello["provider"] == "anthropic"
    assert worker.expect("fatal") == {
        "type": "fatal",
        "code": "config",
        "message": (
            "anthropic package not installed; install it with: pip install 'anthropic>=0.75,<3'"
        ),
    }
    assert worker.wait() == 78


def test_a_missing_key_is_fatal_and_says_how_to_configure_one(spawn):
    worker = spawn(agent_argv("reviewer"), {"MNEMOSYNE_PROVIDER": "anthropic"})
    worker.expect("hello")
    fatal = worker.expect("fatal")
    assert fatal["code"] == "config"
    assert fatal["message"] == (
        "the anthropic provider needs an API key: set ANTHROPIC_API_KEY, or store it with "
        "`mnemosyne secrets set anthropic_api_key`, or use --provider offline"
    )
    assert worker.wait() == 78


def test_a_bad_setting_is_fatal_and_names_the_variable(spawn):
    worker = spawn(
        agent_argv("executor"),
        {"MNEMOSYNE_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "k", "MNEMOSYNE_MAX_TOKENS": "0"},
    )
    worker.expect("hello")
    fatal = worker.expect("fatal")
    assert fatal["code"] == "config" and "MNEMOSYNE_MAX_TOKENS" in fatal["message"]
    assert worker.wait() == 78


def test_a_configured_worker_reports_the_provider_and_becomes_ready(spawn, fake_anthropic):
    worker = spawn(agent_argv("executor"), fake_anthropic.env())
    hello, ready = worker.start()
    assert hello["provider"] == "anthropic"
    assert isinstance(hello["anthropic"], str)
    assert "execute" in ready["methods"]
    # Building the provider calls nothing; only requests do.
    assert fake_anthropic.requests == []
    assert fake_anthropic.key not in worker.stderr_text()
    worker.close_stdin()
    assert worker.wait() == 0
