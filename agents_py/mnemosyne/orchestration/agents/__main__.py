"""Entry point of an agent worker: `python -m mnemosyne.orchestration.agents --role ROLE`.

Whatever interpreter the supervisor was configured with parses this file, so it is written in
syntax that every Python 3 (and Python 2.7) parses: no f-strings, no annotations. It checks the
version before anything that needs a newer Python is imported or even compiled, and reports an
old one the way the protocol allows: a `fatal` message as the first line on stdout, the reason
on stderr, and exit code 78, so the supervisor marks the agent `failed` (a configuration
problem) instead of restarting it into a crash loop.
"""

# ruff: noqa: UP031 -- %-formatting is what the oldest Pythons this must run on understand.

import sys

MIN_PYTHON = (3, 11)
EXIT_CONFIG = 78


def _refuse_old_python():
    import json
    import os

    found = "%d.%d.%d" % tuple(sys.version_info[:3])
    needed = "%d.%d" % MIN_PYTHON
    message = "Python %s is too old: the Mnemosyne worker needs Python %s or newer (%s)" % (
        found,
        needed,
        sys.executable,
    )
    sys.stderr.write("fatal (config): %s\n" % message)
    sys.stderr.flush()
    line = json.dumps({"type": "fatal", "code": "config", "message": message}) + "\n"
    # Nothing has written to stdout yet, so this is the first line on the wire. (No
    # contextlib.suppress: Python 2.7 lacks it.)
    try:  # noqa: SIM105
        os.write(1, line.encode("utf-8"))
    except OSError:
        pass
    os._exit(EXIT_CONFIG)


if tuple(sys.version_info[:2]) < MIN_PYTHON:
    _refuse_old_python()

from mnemosyne.orchestration.agents.entry import main  # noqa: E402

sys.exit(main())
