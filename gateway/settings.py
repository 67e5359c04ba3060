"""Settings, built once from the environment and the command line, then passed in.

This is the only module that reads `os.environ`. Everything else receives a `Settings`.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_POLICY = Path("policies/default.yaml")
DEFAULT_DATA_DIR = Path("data")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 4000
    policy_path: Path = DEFAULT_POLICY
    data_dir: Path = DEFAULT_DATA_DIR
    # Key for /admin endpoints; None disables them.
    admin_key: str | None = field(default=None, repr=False)
    # SQLAlchemy URL of the store; None means SQLite under data_dir.
    database_url: str | None = field(default=None, repr=False)
    max_body_bytes: int = 20 * 1024 * 1024
    # Seconds a key lookup is trusted before revocations made elsewhere (CLI, another replica) are re-read.
    key_cache_seconds: float = 10.0
    log_level: str = "info"
    # Redis for counters shared by several replicas (budgets, rate limits); None: in-process counters.
    redis_url: str | None = field(default=None, repr=False)
    # Raw usage records older than this are deleted (daily rollups are kept); 0 keeps them forever.
    ledger_retention_days: int = 0
    ledger_batch_size: int = 100
    ledger_flush_seconds: float = 0.5
    # OpenTelemetry, from the standard OTEL_* variables. No endpoint: spans are not created at all (trace ids are
    # still minted and returned), so an unconfigured gateway pays nothing for tracing.
    otlp_traces_endpoint: str | None = None
    otlp_protocol: str = "http/protobuf"
    otlp_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    otlp_timeout_seconds: float = 10.0
    otel_service_name: str = "tollgate"
    otel_traces_sampler: str = "parentbased_always_on"
    otel_traces_sampler_arg: float = 1.0
    # /metrics needs the admin key when one is configured, unless this is set (for scrapers that can't send it).
    metrics_public: bool = False
    # The environment as captured at start: policy files expand ${VAR} from it and read provider keys from it.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def journal_dir(self) -> Path:
        """Where usage records are appended before they reach the database (DESIGN.md §3)."""
        return self.data_dir / "journal"

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tollgate.db').resolve()}"

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _non_negative(value: float, name: str) -> float:
    if value < 0:
        raise SettingsError(f"{name} must be zero or more, got {value}")
    return value


def _otlp_headers(raw: str) -> dict[str, str]:
    headers = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(f"OTEL_EXPORTER_OTLP_HEADERS: expected name=value pairs, got {item.strip()!r}")
        headers[name.strip().lower()] = urllib.parse.unquote(value.strip())
    return headers


_SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)


def _otlp_endpoint(env: Mapping[str, str], protocol: str) -> str | None:
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if specific:
        return specific
    generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not generic:
        return None
    # The spec: with HTTP, the generic endpoint is a base to which the signal path is appended.
    return generic.rstrip("/") + "/v1/traces" if protocol.startswith("http") else generic


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    admin_key = env.get("TOLLGATE_ADMIN_KEY") or None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).strip()
    if protocol not in ("http/protobuf", "grpc"):
        raise SettingsError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc, got {protocol!r}")
    sampler = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if sampler not in _SAMPLERS:
        raise SettingsError(f"OTEL_TRACES_SAMPLER must be one of {', '.join(sorted(_SAMPLERS))}, got {sampler!r}")
    if admin_key is not None and len(admin_key) < 16:
        raise SettingsError("TOLLGATE_ADMIN_KEY must be at least 16 characters")
    return Settings(
        host=env.get("TOLLGATE_HOST", "127.0.0.1"),
        port=_int(env, "TOLLGATE_PORT", 4000),
        policy_path=Path(env.get("TOLLGATE_POLICY", str(DEFAULT_POLICY))),
        data_dir=Path(env.get("TOLLGATE_DATA_DIR", str(DEFAULT_DATA_DIR))),
        admin_key=admin_key,
        database_url=env.get("DATABASE_URL") or None,
        max_body_bytes=_int(env, "TOLLGATE_MAX_BODY_BYTES", 20 * 1024 * 1024),
        key_cache_seconds=_non_negative(_float(env, "TOLLGATE_KEY_CACHE_SECONDS", 10.0), "TOLLGATE_KEY_CACHE_SECONDS"),
        log_level=env.get("TOLLGATE_LOG_LEVEL", "info").lower(),
        redis_url=env.get("REDIS_URL") or None,
        ledger_retention_days=_int(env, "TOLLGATE_LEDGER_RETENTION_DAYS", 0, minimum=0),
        ledger_batch_size=_int(env, "TOLLGATE_LEDGER_BATCH_SIZE", 100),
        ledger_flush_seconds=_non_negative(
            _float(env, "TOLLGATE_LEDGER_FLUSH_SECONDS", 0.5), "TOLLGATE_LEDGER_FLUSH_SECONDS"
        ),
        otlp_traces_endpoint=_otlp_endpoint(env, protocol),
        otlp_protocol=protocol,
        otlp_headers=_otlp_headers(
            env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
        ),
        # The spec gives milliseconds.
        otlp_timeout_seconds=_int(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000) / 1000,
        otel_service_name=env.get("OTEL_SERVICE_NAME") or "tollgate",
        otel_traces_sampler=sampler,
        otel_traces_sampler_arg=_float(env, "OTEL_TRACES_SAMPLER_ARG", 1.0),
        metrics_public=_bool(env, "TOLLGATE_METRICS_PUBLIC"),
        environ=env,
    )
