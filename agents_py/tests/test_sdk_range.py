"""The SDK the tests run against is the one they claim to run against, inside the range the
provider supports."""

import os
import re
from pathlib import Path

import anthropic

from mnemosyne.providers.anthropic import SDK_OLDEST, SDK_REQUIREMENT

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints"


def version_tuple(text: str) -> tuple[int, ...]:
    parts = [int(part) for part in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def pinned(name: str) -> str:
    lines = (CONSTRAINTS / name).read_text().splitlines()
    versions = [line.split("==", 1)[1] for line in lines if line.startswith("anthropic==")]
    assert len(versions) == 1, f"{name} pins anthropic {len(versions)} times"
    return versions[0]


def test_the_installed_sdk_is_the_pinned_one():
    expected = os.environ.get("MNEMOSYNE_EXPECT_SDK") or pinned("newest.txt")
    assert anthropic.__version__ == expected


def test_the_oldest_pin_is_the_oldest_supported_sdk():
    assert pinned("oldest.txt") == SDK_OLDEST
    lower = re.search(r">=([\d.]+)", SDK_REQUIREMENT).group(1)
    assert version_tuple(SDK_OLDEST) == version_tuple(lower)


def test_the_newest_pin_is_inside_the_supported_range():
    newest = version_tuple(pinned("newest.txt"))
    cap = version_tuple(re.search(r"<([\d.]+)", SDK_REQUIREMENT).group(1))
    assert version_tuple(SDK_OLDEST) <= newest < cap
