"""Tests of the package constants against the protocol directory and pyproject.toml."""

import tomllib

import mnemosyne

from worker_harness import AGENTS_PY, PROTOCOL_DIR


def test_protocol_version_matches_the_protocol_directory():
    assert (PROTOCOL_DIR / "VERSION").read_text() == f"{mnemosyne.PROTOCOL_VERSION}\n"


def test_package_version_matches_pyproject():
    project = tomllib.loads((AGENTS_PY / "pyproject.toml").read_text())["project"]
    assert mnemosyne.__version__ == project["version"]
