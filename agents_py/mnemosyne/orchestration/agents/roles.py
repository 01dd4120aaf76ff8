"""Which methods each agent role serves, on top of the diagnostic methods every worker has.

Each role maps to a function that returns its method table. The runtime calls it only after
`hello` is on the wire, so a role's module can import heavy dependencies (the model SDK) there:
keep those imports inside the function, not at the top of this file.
"""

from collections.abc import Callable

from mnemosyne.runtime.worker import Methods


def _no_methods_yet() -> Methods:
    # The real agents arrive in later work; until then a role serves only the diagnostics.
    return {}


ROLES: dict[str, Callable[[], Methods]] = {
    "executor": _no_methods_yet,
    "orchestrator": _no_methods_yet,
    "optimizer": _no_methods_yet,
    "reviewer": _no_methods_yet,
}
