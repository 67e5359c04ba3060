"""Initial schema: virtual keys, raw usage records, daily rollups.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Stores created before migrations existed already have this table (KeyStore used create_all): adopt it.
    if not sa.inspect(op.get_bind()).has_table("virtual_keys"):
        op.create_table(
            "virtual_keys",
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
            sa.Column("display", sa.String(16), nullable=False),
            sa.Column("team", sa.String(200), nullable=False),
            sa.Column("name", sa.String(200), nullable=True),
            sa.Column("budget_usd", sa.String(40), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        )
        op.create_index("ix_virtual_keys_team", "virtual_keys", ["team"])

    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("alias", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("upstream_model", sa.String(200), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_pico", sa.BigInteger(), nullable=True),
        sa.Column("usage_source", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.Column("end_user", sa.String(256), nullable=True),
        sa.Column("tags", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    )
    # Raw-row reports (partial days, user, tag) scan a time range, for everyone or for one team.
    op.create_index("ix_usage_records_created_at", "usage_records", ["created_at"])
    op.create_index("ix_usage_records_team_created_at", "usage_records", ["team", "created_at"])

    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
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
        ),
        sa.PrimaryKeyConstraint("day", "team", "key_id", "model", name="pk_usage_daily"),
    )
    # The primary key serves day-range reports for everyone; this one a team's own reports.
    op.create_index("ix_usage_daily_team_day", "usage_daily", ["team", "day"])


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_table("usage_records")
    # virtual_keys stays: it may predate the migrations, and dropping keys is never what a downgrade should do.
