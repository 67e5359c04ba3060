"""Provider instances by provider kind, created on first use.

Native kinds share one pooled aiohttp session. Any other kind goes to litellm's translation, whose module is
imported by its import string only when a deployment of that kind is first called, so the plain OpenAI path never
pays for litellm (~3 s and ~160 MB to import).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util

import aiohttp

from gateway.exceptions import TollgateError
from gateway.policy import NATIVE_PROVIDERS
from gateway.upstream.base import Provider
from gateway.upstream.mock import MockProvider
from gateway.upstream.openai_compatible import OpenAICompatibleProvider, new_session

TRANSLATED_PROVIDER = "gateway.upstream.translated:TranslatedProvider"


class MissingExtra(TollgateError):
    """An optional dependency a policy needs is not installed; the message names the extra."""

    code = "missing_extra"


def _import_from_string(path: str) -> type:
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    cls: type = getattr(module, attribute)
    return cls


class ProviderRegistry:
    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._providers: dict[str, Provider] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session()
        return self._session

    async def get(self, kind: str) -> Provider:
        provider = self._providers.get(kind)
        if provider is None:
            if kind in NATIVE_PROVIDERS:
                provider = self._native(kind)
            else:
                # Importing litellm takes seconds: do it off the event loop so other requests keep flowing.
                provider = await asyncio.to_thread(self._translated, kind)
            provider = self._providers.setdefault(kind, provider)
        return provider

    def _native(self, kind: str) -> Provider:
        if kind == "openai":
            return OpenAICompatibleProvider(self.session, "openai")
        if kind == "azure":
            return OpenAICompatibleProvider(self.session, "azure.ai.openai", azure=True)
        return MockProvider()

    @staticmethod
    def _translated(kind: str) -> Provider:
        if importlib.util.find_spec("litellm") is None:
            raise MissingExtra(f"Provider {kind!r} needs litellm's translation: pip install litellm")
        translated = _import_from_string(TRANSLATED_PROVIDER)
        provider: Provider = translated(kind)
        return provider

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        if self._session is not None:
            await self._session.close()
