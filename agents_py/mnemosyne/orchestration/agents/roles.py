"""Which methods each agent role serves, and how a worker of a role is run.

`ROLES` maps a role to a function that builds its method table around a provider. `run_role`
runs a worker of a role: it reads the provider's name before `hello` (which reports it) and
builds the provider and the table only after `hello` is on the wire, so a provider's SDK import
and any noise it makes land on stderr and cannot delay the handshake. A provider that cannot
work here is a `fatal` configuration error, which the supervisor does not restart.
"""

import os
from collections.abc import Callable

from mnemosyne.orchestration.agents import methods
from mnemosyne.providers.base import Provider, ProviderConfigError
from mnemosyne.providers.selection import choose_provider, create_provider
from mnemosyne.runtime.worker import Handler, Methods, fatal, run_worker

ROLES: dict[str, Callable[[Provider], Methods]] = {
    "executor": methods.executor_methods,
    "orchestrator": methods.orchestrator_methods,
    "optimizer": methods.optimizer_methods,
    "reviewer": methods.reviewer_methods,
}

# Lets a fixture worker replace or wrap some of a role's methods; it gets the role's table
# and returns the one to serve.
Customize = Callable[[dict[str, Handler]], dict[str, Handler]]


def run_role(role: str, customize: Customize | None = None) -> int:
    """Runs a worker of `role` with the provider MNEMOSYNE_PROVIDER names; the exit code."""
    factory = ROLES.get(role)
    if factory is None:
        fatal("config", f"unknown role {role!r}; valid roles are: {', '.join(ROLES)}")
    try:
        provider_name = choose_provider(os.environ)
    except ProviderConfigError as error:
        fatal("config", error.message)

    def build_methods() -> Methods:
        try:
            provider = create_provider(provider_name, os.environ)
        except ProviderConfigError as error:
            fatal("config", error.message)
        table = dict(factory(provider))
        return customize(table) if customize is not None else table

    return run_worker(role, build_methods, provider=provider_name)
