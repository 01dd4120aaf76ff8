"""Tests of mnemosyne.orchestration.agents.roles."""

from mnemosyne.orchestration.agents.roles import ROLES
from mnemosyne.providers.offline import OfflineProvider


def test_the_four_roles_exist_and_each_gives_a_method_table():
    assert set(ROLES) == {"executor", "orchestrator", "optimizer", "reviewer"}
    for factory in ROLES.values():
        methods = factory(OfflineProvider())
        assert all(callable(handler) for handler in methods.values())
