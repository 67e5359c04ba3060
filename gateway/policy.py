"""Policy files: routing and team rules, validated once at load.

A policy is YAML. Unknown keys are errors that name the file and the key's path, so a typo never silently turns
a rule off. Strings may use `${VAR}` or `${VAR:-default}`, expanded from the environment the settings captured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.accounting.pricing import Price
from gateway.routing import Deployment, ModelRoute, Router
from gateway.telemetry.content import CaptureRule

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Providers spoken natively; anything else is handed to litellm's translation.
NATIVE_PROVIDERS = frozenset({"openai", "azure", "mock"})


class PolicyError(ValueError):
    """A policy file that cannot be used, with the file and key path in the message."""


@dataclass(frozen=True, slots=True)
class TeamPolicy:
    name: str
    # Alias patterns the team may call; None means any alias the policy routes.
    models: tuple[str, ...] | None


Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")
# In `limits.teams`, the rules every team not listed by name gets (each team still has its own counters).
ANY_TEAM = "*"


@dataclass(frozen=True, slots=True)
class LimitRule:
    """Budget and rate limits for one team, or the defaults for every key. None means no such limit."""

    budget_usd: Decimal | None = None
    # UTC calendar period the budget covers.
    period: Period = "month"
    rpm: int | None = None
    tpm: int | None = None

    @property
    def empty(self) -> bool:
        return self.budget_usd is None and self.rpm is None and self.tpm is None


@dataclass(frozen=True, slots=True)
class Limits:
    teams: Mapping[str, LimitRule] = field(default_factory=dict)
    # Applied to every key; a key's own budget_usd (set at creation) replaces `keys.budget_usd`.
    keys: LimitRule = LimitRule()

    @property
    def empty(self) -> bool:
        return not self.teams and self.keys.empty


@dataclass(frozen=True, slots=True)
class Policy:
    source: str
    routes: tuple[ModelRoute, ...]
    teams: Mapping[str, TeamPolicy]
    limits: Limits = Limits()
    # Price overrides by upstream model (or "provider/model"), winning over litellm's price map.
    prices: Mapping[str, Price] = field(default_factory=dict)
    # Where prompts and responses may go on spans (first matching rule wins; none: never).
    capture_content: tuple[CaptureRule, ...] = ()

    def router(self) -> Router:
        return Router(self.routes)

    def team(self, name: str) -> TeamPolicy:
        return self.teams.get(name) or TeamPolicy(name=name, models=None)

    @property
    def providers(self) -> frozenset[str]:
        return frozenset(d.provider for route in self.routes for d in route.deployments)


class _Reader:
    """Walks the parsed YAML, checking types and rejecting unknown keys, with paths in every message."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env

    def fail(self, path: str, message: str) -> PolicyError:
        return PolicyError(f"{self.source}: {path}: {message}")

    def mapping(self, value: Any, path: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.fail(f"{path}.{key}", f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                raise self.fail(f"{path}.{key}", "is required")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, "expected a non-empty string")
        return self.expand(value, path)

    def expand(self, value: str, path: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.env and self.env[name] != "":
                return self.env[name]
            if default is not None:
                return default
            raise self.fail(path, f"environment variable {name} is not set and has no default")

        return _ENV_REF.sub(substitute, value)

    def number(self, value: Any, path: str, minimum: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.fail(path, f"expected a number >= {minimum:g}")
        return float(value)

    def integer(self, value: Any, path: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(path, f"expected an integer >= {minimum}")
        return value

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, "expected a list of strings")
        return tuple(self.string(item, f"{path}[{i}]") for i, item in enumerate(value))

    def money(self, value: Any, path: str) -> Decimal:
        """A positive USD amount. Floats go through str() so `0.1` means 0.1, not its binary neighbour."""
        parsed: Decimal | None = None
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            try:
                parsed = Decimal(str(value).strip())
            except InvalidOperation:
                parsed = None
        if parsed is None or not parsed.is_finite() or parsed <= 0:
            raise self.fail(path, "expected a positive amount in USD")
        return parsed

    def string_map(self, value: Any, path: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.fail(path, "expected a mapping of strings")
        return {str(k): self.string(v, f"{path}.{k}") for k, v in value.items()}


_DEFAULT_KEYS = ("timeout", "retries")
_LIMIT_KEYS = ("budget_usd", "period", "rpm", "tpm")
_DEPLOYMENT_KEYS = (
    "name",
    "provider",
    "model",
    "api_base",
    "api_key_env",
    "weight",
    "timeout",
    "retries",
    "api_version",
    "headers",
)


def parse_policy(data: Any, source: str, env: Mapping[str, str]) -> Policy:
    reader = _Reader(source, env)
    if data is None:
        data = {}
    top = reader.mapping(data, "policy", ("version", "defaults", "models", "teams", "limits", "prices", "telemetry"))
    if "version" in top and top["version"] != 1:
        raise reader.fail("policy.version", "only version 1 is supported")
    defaults = reader.mapping(top.get("defaults", {}), "defaults", _DEFAULT_KEYS)
    default_timeout = reader.number(defaults.get("timeout", 600.0), "defaults.timeout", 0.001)
    default_retries = reader.integer(defaults.get("retries", 2), "defaults.retries")

    raw_models = top.get("models", [])
    if not isinstance(raw_models, list):
        raise reader.fail("models", "expected a list of model routes")
    routes: list[ModelRoute] = []
    seen_aliases: set[str] = set()
    for i, raw_route in enumerate(raw_models):
        path = f"models[{i}]"
        route = reader.mapping(raw_route, path, ("alias", "deployments"), required=("alias", "deployments"))
        alias = reader.string(route["alias"], f"{path}.alias")
        if alias in seen_aliases:
            raise reader.fail(f"{path}.alias", f"alias {alias!r} is defined twice")
        seen_aliases.add(alias)
        raw_deployments = route["deployments"]
        if not isinstance(raw_deployments, list) or not raw_deployments:
            raise reader.fail(f"{path}.deployments", "expected a non-empty list")
        deployments = []
        for j, raw in enumerate(raw_deployments):
            dpath = f"{path}.deployments[{j}]"
            d = reader.mapping(raw, dpath, _DEPLOYMENT_KEYS, required=("provider",))
            provider = reader.string(d["provider"], f"{dpath}.provider")
            model = reader.string(d.get("model", "{alias}"), f"{dpath}.model")
            api_base = reader.string(d["api_base"], f"{dpath}.api_base").rstrip("/") if "api_base" in d else None
            api_key = None
            if "api_key_env" in d:
                key_var = reader.string(d["api_key_env"], f"{dpath}.api_key_env")
                # A missing key is not a load error: the deployment answers 401 from upstream, which says more.
                api_key = env.get(key_var) or None
            if provider == "azure" and (api_base is None or "api_version" not in d):
                raise reader.fail(dpath, "an azure deployment needs api_base and api_version")
            deployments.append(
                Deployment(
                    name=reader.string(d["name"], f"{dpath}.name") if "name" in d else f"{alias}#{j}",
                    provider=provider,
                    model=model,
                    api_base=api_base,
                    api_key=api_key,
                    weight=reader.number(d.get("weight", 1.0), f"{dpath}.weight"),
                    timeout=reader.number(d.get("timeout", default_timeout), f"{dpath}.timeout", 0.001),
                    retries=reader.integer(d.get("retries", default_retries), f"{dpath}.retries"),
                    api_version=reader.string(d["api_version"], f"{dpath}.api_version") if "api_version" in d else None,
                    headers=reader.string_map(d.get("headers", {}), f"{dpath}.headers"),
                )
            )
        if all(d.weight <= 0 for d in deployments):
            raise reader.fail(f"{path}.deployments", "at least one deployment needs a weight above 0")
        routes.append(ModelRoute(alias=alias, deployments=tuple(deployments)))

    raw_teams = top.get("teams", {})
    if not isinstance(raw_teams, dict):
        raise reader.fail("teams", "expected a mapping of team name to team rules")
    teams = {}
    for name, raw_team in raw_teams.items():
        tpath = f"teams.{name}"
        team = reader.mapping(raw_team or {}, tpath, ("models",))
        models = reader.strings(team["models"], f"{tpath}.models") if "models" in team else None
        teams[str(name)] = TeamPolicy(name=str(name), models=models)
    limits = _parse_limits(reader, top["limits"]) if "limits" in top else Limits()
    prices = _parse_prices(reader, top["prices"]) if "prices" in top else {}
    capture = _parse_telemetry(reader, top["telemetry"]) if "telemetry" in top else ()
    return Policy(
        source=source, routes=tuple(routes), teams=teams, limits=limits, prices=prices, capture_content=capture
    )


def _parse_telemetry(reader: _Reader, value: Any) -> tuple[CaptureRule, ...]:
    """`telemetry.capture_content`: rules naming the teams and aliases whose prompts and responses go on spans."""
    section = reader.mapping(value if value is not None else {}, "telemetry", ("capture_content",))
    raw_rules = section.get("capture_content", [])
    if not isinstance(raw_rules, list):
        raise reader.fail("telemetry.capture_content", "expected a list of rules")
    rules = []
    for i, raw in enumerate(raw_rules):
        path = f"telemetry.capture_content[{i}]"
        rule = reader.mapping(raw or {}, path, ("teams", "models", "redact_pii", "max_bytes"))
        redact_pii = rule.get("redact_pii", True)
        if not isinstance(redact_pii, bool):
            raise reader.fail(f"{path}.redact_pii", "expected true or false")
        rules.append(
            CaptureRule(
                teams=reader.strings(rule["teams"], f"{path}.teams") if "teams" in rule else None,
                models=reader.strings(rule["models"], f"{path}.models") if "models" in rule else None,
                redact_pii=redact_pii,
                max_bytes=reader.integer(rule.get("max_bytes", 16_384), f"{path}.max_bytes", 256),
            )
        )
    return tuple(rules)


_PRICE_KEYS = ("input", "output", "cached_input", "reasoning")


def _parse_prices(reader: _Reader, value: Any) -> dict[str, Price]:
    """`prices: {MODEL: {input, output, cached_input, reasoning}}` in USD per million tokens."""
    if not isinstance(value, dict):
        raise reader.fail("prices", "expected a mapping of model name to prices (USD per million tokens)")
    prices = {}
    for model, raw in value.items():
        path = f"prices.{model}"
        entry = reader.mapping(raw, path, _PRICE_KEYS, required=("input",))
        rates: dict[str, Decimal] = {}
        for name in _PRICE_KEYS:
            if name in entry:
                rate = entry[name]
                try:
                    if isinstance(rate, bool):
                        raise InvalidOperation
                    rates[name] = Decimal(str(rate))
                except InvalidOperation:
                    raise reader.fail(f"{path}.{name}", "expected a number of US dollars per million tokens") from None
                if not rates[name].is_finite() or rates[name] < 0:
                    raise reader.fail(f"{path}.{name}", "must be zero or more")
        prices[str(model)] = Price.per_million(
            rates["input"],
            rates.get("output", Decimal(0)),
            cached_input=rates.get("cached_input"),
            reasoning=rates.get("reasoning"),
        )
    return prices


def _parse_limit_rule(reader: _Reader, value: Any, path: str) -> LimitRule:
    raw = reader.mapping(value if value is not None else {}, path, _LIMIT_KEYS)
    period = raw.get("period", "month")
    if period not in PERIODS:
        raise reader.fail(f"{path}.period", f"expected one of: {', '.join(PERIODS)}")
    return LimitRule(
        budget_usd=reader.money(raw["budget_usd"], f"{path}.budget_usd") if "budget_usd" in raw else None,
        period=period,
        rpm=reader.integer(raw["rpm"], f"{path}.rpm", 1) if "rpm" in raw else None,
        tpm=reader.integer(raw["tpm"], f"{path}.tpm", 1) if "tpm" in raw else None,
    )


def _parse_limits(reader: _Reader, value: Any) -> Limits:
    raw = reader.mapping(value if value is not None else {}, "limits", ("teams", "keys"))
    raw_teams = raw.get("teams") or {}
    if not isinstance(raw_teams, dict):
        raise reader.fail("limits.teams", "expected a mapping of team name to limits")
    return Limits(
        # A team listed with no rules stays listed: it opts that team out of the "*" rules.
        teams={str(name): _parse_limit_rule(reader, rule, f"limits.teams.{name}") for name, rule in raw_teams.items()},
        keys=_parse_limit_rule(reader, raw.get("keys"), "limits.keys"),
    )


def load_policy(path: Path, env: Mapping[str, str]) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    return parse_policy(data, str(path), env)
