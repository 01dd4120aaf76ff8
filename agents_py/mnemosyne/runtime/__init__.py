"""The worker runtime: protocol stream ownership, wire encoding, and the request loop.

Kept empty so that importing `mnemosyne.runtime.stdio` first thing stays cheap.
"""
