"""The agent worker's command line, run by `__main__` once the interpreter is known to be new
enough: `python -m mnemosyne.orchestration.agents --role ROLE`.

Owns only argument parsing and the choice of role; `roles.run_role` picks the provider from
`MNEMOSYNE_PROVIDER` and the runtime does the rest. The protocol stream is taken before
anything else is imported, so nothing a later import prints can reach the wire.
"""

from mnemosyne.runtime.stdio import take_protocol_stream

take_protocol_stream()

# Everything below may import freely: fd 1 and sys.stdout already point at stderr.
import argparse  # noqa: E402
import sys  # noqa: E402
from typing import NoReturn  # noqa: E402

from mnemosyne.orchestration.agents.roles import ROLES, run_role  # noqa: E402
from mnemosyne.runtime.worker import fatal  # noqa: E402


class _ArgumentParser(argparse.ArgumentParser):
    # A usage error is a configuration problem that a restart cannot fix, so it is reported to
    # the supervisor as `fatal` (exit 78) rather than argparse's bare exit 2.
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        fatal("config", f"invalid worker arguments: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = _ArgumentParser(
        prog="python -m mnemosyne.orchestration.agents",
        description="Run one Mnemosyne agent worker speaking protocol v1 on stdin/stdout.",
    )
    parser.add_argument("--role", required=True, help="one of: " + ", ".join(ROLES))
    args = parser.parse_args(argv)
    if args.role not in ROLES:
        fatal("config", f"unknown role {args.role!r}; valid roles are: {', '.join(ROLES)}")
    return run_role(args.role)
