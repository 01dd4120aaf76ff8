"""Which provider a worker uses: `MNEMOSYNE_PROVIDER`, read in two steps.

`choose_provider` only reads the name, so it is cheap enough to run before `hello` (which
reports it). `create_provider` builds the provider after `hello` is on the wire, where a
provider may import its SDK and any noise that makes lands on stderr.

The supervisor resolves `auto` itself and passes a concrete name (`anthropic` or `offline`);
a worker started by hand without one runs offline.
"""

import sys
from collections.abc import Mapping
from typing import TextIO

from mnemosyne.providers import offline
from mnemosyne.providers.base import Provider, ProviderConfigError

PROVIDER_ENV = "MNEMOSYNE_PROVIDER"
LATENCY_ENV = "MNEMOSYNE_OFFLINE_LATENCY_MS"
ANTHROPIC = "anthropic"
DEFAULT_PROVIDER = offline.NAME
PROVIDERS = (offline.NAME, ANTHROPIC)


def choose_provider(environ: Mapping[str, str]) -> str:
    """The provider name the environment asks for; `offline` when it asks for none."""
    name = environ.get(PROVIDER_ENV, "").strip().lower()
    if not name:
        return DEFAULT_PROVIDER
    if name not in PROVIDERS:
        raise ProviderConfigError(
            f"unknown provider {name!r} in {PROVIDER_ENV}; valid providers are: "
            + ", ".join(PROVIDERS)
        )
    return name


def create_provider(
    name: str, environ: Mapping[str, str], warnings: TextIO | None = None
) -> Provider:
    """Builds the provider `name`; raises ProviderConfigError if it cannot work here.

    Creating the offline provider writes its warning to `warnings` (stderr by default), so no
    worker runs on canned answers without saying so.
    """
    if name == offline.NAME:
        provider = offline.OfflineProvider(latency_s=_latency_ms(environ) / 1000)
        print(offline.WARNING, file=warnings or sys.stderr, flush=True)
        return provider
    if name == ANTHROPIC:
        # Imported here so that an offline worker never loads the module, let alone the SDK.
        from mnemosyne.providers.anthropic import AnthropicProvider, AnthropicSettings

        return AnthropicProvider(AnthropicSettings.from_env(environ))
    raise ProviderConfigError(
        f"unknown provider {name!r}; valid providers are: " + ", ".join(PROVIDERS)
    )


def _latency_ms(environ: Mapping[str, str]) -> int:
    raw = environ.get(LATENCY_ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ProviderConfigError(
            f"{LATENCY_ENV} must be a non-negative integer of milliseconds, got {raw!r}"
        )
    return value
