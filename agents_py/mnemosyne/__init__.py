"""Mnemosyne's Python workers: the package the supervisor embeds and runs as agent processes.

Importing this package must stay cheap: worker entry points import it before they have taken
the protocol stream, so nothing here may print or pull in heavy dependencies.
"""

__version__ = "0.1.0"

# Must equal protocol/VERSION; the tests check it.
PROTOCOL_VERSION = 1
