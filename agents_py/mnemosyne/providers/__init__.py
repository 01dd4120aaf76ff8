"""Model providers: the one interface through which agents ask a language model anything.

Agents call a `Provider` (`base`), never a model SDK. `selection` chooses one from the
environment; `offline` is the deterministic stand-in that calls no model. Kept empty so that
importing a submodule stays cheap.
"""
