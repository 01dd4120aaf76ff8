"""Agent worker processes, started as `python -m mnemosyne.orchestration.agents --role ROLE`.

Kept empty: `python -m` imports this package before `__main__`, which must take the protocol
stream before anything else runs.
"""
