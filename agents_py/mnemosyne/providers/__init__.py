"""Model providers: the one interface through which agents ask a language model anything.

Agents call a `Provider` (`base`), never a model SDK. `selection` chooses one from the
environment; `anthropic` asks Claude through the official SDK, guarded by a circuit breaker
(`breaker`); `offline` is the deterministic stand-in that calls no model. Kept empty so that
importing a submodule stays cheap (an offline worker never loads the SDK).
"""
