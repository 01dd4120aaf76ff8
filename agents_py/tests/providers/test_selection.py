"""Tests of mnemosyne.providers.selection: MNEMOSYNE_PROVIDER and the offline knobs."""

import io

import pytest

from mnemosyne.providers.anthropic import AnthropicProvider
from mnemosyne.providers.base import ProviderConfigError
from mnemosyne.providers.offline import WARNING, OfflineProvider
from mnemosyne.providers.selection import choose_provider, create_provider


@pytest.mark.parametrize("environ", [{}, {"MNEMOSYNE_PROVIDER": ""}, {"MNEMOSYNE_PROVIDER": " "}])
def test_offline_is_the_default(environ):
    assert choose_provider(environ) == "offline"


@pytest.mark.parametrize(
    ("value", "name"),
    [("offline", "offline"), ("Anthropic", "anthropic"), (" offline ", "offline")],
)
def test_a_known_provider_is_chosen_by_name(value, name):
    assert choose_provider({"MNEMOSYNE_PROVIDER": value}) == name


def test_an_unknown_provider_is_a_configuration_error_listing_the_valid_ones():
    with pytest.raises(ProviderConfigError) as raised:
        choose_provider({"MNEMOSYNE_PROVIDER": "openai"})
    assert raised.value.code == "config"
    assert str(raised.value) == (
        "unknown provider 'openai' in MNEMOSYNE_PROVIDER; valid providers are: offline, anthropic"
    )


def test_creating_the_offline_provider_warns_loudly():
    warnings = io.StringIO()
    provider = create_provider("offline", {}, warnings)
    assert isinstance(provider, OfflineProvider)
    assert provider.latency_s == 0
    assert warnings.getvalue() == WARNING + "\n"
    assert WARNING.startswith("WARNING: offline provider: no model is called")
    assert "not from Claude" in WARNING


def test_the_offline_latency_comes_from_the_environment_in_milliseconds():
    provider = create_provider("offline", {"MNEMOSYNE_OFFLINE_LATENCY_MS": "300"}, io.StringIO())
    assert provider.latency_s == pytest.approx(0.3)


@pytest.mark.parametrize("value", ["-1", "soon", "1.5"])
def test_a_bad_latency_is_a_configuration_error(value):
    with pytest.raises(ProviderConfigError, match="MNEMOSYNE_OFFLINE_LATENCY_MS"):
        create_provider("offline", {"MNEMOSYNE_OFFLINE_LATENCY_MS": value}, io.StringIO())


def test_the_anthropic_provider_needs_a_key_and_says_how_to_configure_one():
    with pytest.raises(ProviderConfigError) as raised:
        create_provider("anthropic", {}, io.StringIO())
    assert raised.value.code == "config"
    assert str(raised.value) == (
        "the anthropic provider needs an API key: set ANTHROPIC_API_KEY, or store it with "
        "`mnemosyne secrets set anthropic_api_key`, or use --provider offline"
    )


def test_the_anthropic_provider_is_built_from_the_environment_without_warnings():
    warnings = io.StringIO()
    provider = create_provider(
        "anthropic",
        {"ANTHROPIC_API_KEY": "k", "MNEMOSYNE_MODEL": "claude-haiku-4-5"},
        warnings,
    )
    assert isinstance(provider, AnthropicProvider)
    assert (provider.name, provider.model) == ("anthropic", "claude-haiku-4-5")
    assert warnings.getvalue() == ""


def test_a_bad_anthropic_setting_is_a_configuration_error():
    with pytest.raises(ProviderConfigError, match="MNEMOSYNE_REQUEST_TIMEOUT_S"):
        create_provider(
            "anthropic",
            {"ANTHROPIC_API_KEY": "k", "MNEMOSYNE_REQUEST_TIMEOUT_S": "never"},
            io.StringIO(),
        )
