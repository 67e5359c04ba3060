"""Model aliases → deployments. Pure: no I/O, no clock; randomness is injected."""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place a model can be served from."""

    name: str
    # Provider kind: "openai" (any OpenAI-compatible server), "azure", "mock", or a litellm provider
    # ("anthropic", "gemini", "bedrock", ...).
    provider: str
    # Upstream model name; "{alias}" stands for the alias the client asked for (useful with patterns).
    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    weight: float = 1.0
    timeout: float = 600.0
    # Extra attempts on this deployment after a retryable failure, before falling back to the next one.
    retries: int = 2
    api_version: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def upstream_model(self, alias: str) -> str:
        return self.model.replace("{alias}", alias)


@dataclass(frozen=True, slots=True)
class ModelRoute:
    alias: str
    deployments: tuple[Deployment, ...]

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.alias for ch in "*?[")


class Router:
    """Finds the route for an alias: an exact alias wins, then the first matching pattern in policy order."""

    def __init__(self, routes: Sequence[ModelRoute]) -> None:
        self.routes = tuple(routes)
        self._exact = {route.alias: route for route in routes if not route.is_pattern}
        self._patterns = tuple(route for route in routes if route.is_pattern)

    def resolve(self, alias: str) -> ModelRoute | None:
        route = self._exact.get(alias)
        if route is not None:
            return route
        for route in self._patterns:
            if fnmatch.fnmatchcase(alias, route.alias):
                return route
        return None


def attempt_order(deployments: Sequence[Deployment], rng: random.Random) -> list[Deployment]:
    """Deployments in the order to try them: a weighted draw without replacement.

    The first is the primary (chosen in proportion to its weight); the rest are fallbacks, likewise weighted.
    A deployment with weight 0 is only ever a fallback, tried last in policy order.
    """
    if len(deployments) == 1:
        return [deployments[0]]
    pool = [d for d in deployments if d.weight > 0]
    standby = [d for d in deployments if d.weight <= 0]
    order: list[Deployment] = []
    while pool:
        total = sum(d.weight for d in pool)
        point = rng.random() * total
        for index, deployment in enumerate(pool):
            point -= deployment.weight
            if point < 0 or index == len(pool) - 1:
                order.append(pool.pop(index))
                break
    return order + standby


def alias_allowed(alias: str, patterns: Sequence[str] | None) -> bool:
    """Whether a team restricted to `patterns` (None: unrestricted) may call `alias`."""
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(alias, pattern) for pattern in patterns)
