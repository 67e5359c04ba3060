"""The ledger's tables as SQLAlchemy Core objects, and how money is stored in them.

The tables themselves are created by the Alembic migrations in `gateway/migrations/`; these objects only describe
them for queries (a migration is a frozen snapshot and never imports this module).

Money is stored as an integer count of picodollars (10⁻¹² USD) so that SQL `SUM` is exact on both backends:
SQLite has no decimal type, and a float would lose cents over millions of rows. Every price with up to six
decimals per million tokens yields a whole number of picodollars per token, so the conversion is exact for real
price lists; a finer cost is rounded half-even to the picodollar (and logged by the ledger). A BIGINT holds up to
≈ $9.2M per row; PostgreSQL sums BIGINTs as NUMERIC (no overflow), SQLite raises an overflow error past ≈ $9.2M in
one group, far beyond an embedded deployment.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
)
from sqlalchemy.dialects.postgresql import JSONB

from gateway.database import UTCDateTime

PICO_EXPONENT = 12
_PICO = Decimal(1).scaleb(-PICO_EXPONENT)

metadata = MetaData()

usage_records = Table(
    "usage_records",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # The UTC day of created_at, stored so that rollups and day groupings need no dialect-specific date function.
    Column("day", Date(), nullable=False),
    Column("team", String(200), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("alias", String(200), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("upstream_model", String(200), nullable=False),
    Column("deployment", String(200), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("http_status", Integer(), nullable=False),
    Column("input_tokens", Integer(), nullable=False),
    Column("cached_input_tokens", Integer(), nullable=False),
    Column("output_tokens", Integer(), nullable=False),
    Column("reasoning_tokens", Integer(), nullable=False),
    # NULL: the model has no price (reported as unpriced, never as $0).
    Column("cost_pico", BigInteger(), nullable=True),
    Column("usage_source", String(16), nullable=False),
    Column("latency_ms", Float(), nullable=False),
    Column("ttft_ms", Float(), nullable=True),
    Column("trace_id", String(64), nullable=True),
    # The OpenAI `user` field; `user` itself is a reserved word in PostgreSQL.
    Column("end_user", String(256), nullable=True),
    Column("tags", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Index("ix_usage_records_created_at", "created_at"),
    Index("ix_usage_records_team_created_at", "team", "created_at"),
)

# One row per (UTC day, team, key, upstream model), maintained in the transaction that inserts the raw rows.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Date(), nullable=False),
    Column("team", String(200), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("requests", BigInteger(), nullable=False),
    Column("error_requests", BigInteger(), nullable=False),
    Column("input_tokens", BigInteger(), nullable=False),
    Column("cached_input_tokens", BigInteger(), nullable=False),
    Column("output_tokens", BigInteger(), nullable=False),
    Column("reasoning_tokens", BigInteger(), nullable=False),
    # Sum over priced requests only; the unpriced ones are counted apart.
    Column("cost_pico", BigInteger(), nullable=False),
    Column("unpriced_requests", BigInteger(), nullable=False),
    Column("unpriced_input_tokens", BigInteger(), nullable=False),
    Column("unpriced_output_tokens", BigInteger(), nullable=False),
    PrimaryKeyConstraint("day", "team", "key_id", "model", name="pk_usage_daily"),
    Index("ix_usage_daily_team_day", "team", "day"),
)

ROLLUP_SUMS = (
    "requests",
    "error_requests",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_pico",
    "unpriced_requests",
    "unpriced_input_tokens",
    "unpriced_output_tokens",
)


def to_pico(cost: Decimal) -> int:
    return int(cost.scaleb(PICO_EXPONENT).to_integral_value(ROUND_HALF_EVEN))


def is_exact_in_pico(cost: Decimal) -> bool:
    return cost == cost.quantize(_PICO, rounding=ROUND_HALF_EVEN) if cost.is_finite() else False


def from_pico(pico: int) -> Decimal:
    return Decimal(pico).scaleb(-PICO_EXPONENT)


def usd_text(value: Decimal) -> str:
    """Plain notation with no trailing zeros: `0.0000015`, never `1.5E-6` or `0.000001500000`."""
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
