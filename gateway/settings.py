"""Settings, built once from the environment and the command line, then passed in.

This is the only module that reads `os.environ`. Everything else receives a `Settings`.
"""

from __future__ import annotations

import os
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
    ledger_batch_size: int = 500
    ledger_flush_seconds: float = 0.5
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


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    admin_key = env.get("TOLLGATE_ADMIN_KEY") or None
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
        ledger_batch_size=_int(env, "TOLLGATE_LEDGER_BATCH_SIZE", 500),
        ledger_flush_seconds=_non_negative(
            _float(env, "TOLLGATE_LEDGER_FLUSH_SECONDS", 0.5), "TOLLGATE_LEDGER_FLUSH_SECONDS"
        ),
        environ=env,
    )
