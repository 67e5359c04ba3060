"""`tollgate report`: spend and usage per team, key, model, user, tag or day, read from the ledger database.

Only `add_parser` runs for `tollgate --help`; the rest imports SQLAlchemy, so `cli.py` imports it when needed.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.exceptions import InvalidRequest
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.accounting.reports import Report, ReportQuery, Totals

_RELATIVE = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def add_parser(commands: Any) -> None:
    """Adds `report` to the `tollgate` subcommands (`commands` is argparse's subparsers action)."""
    report = commands.add_parser(
        "report",
        help="spend and usage from the ledger",
        description="Print spend and usage from the ledger database (the embedded store, or DATABASE_URL).",
    )
    report.add_argument("--by", default="team", help="team, key, model, user, tag or day (default: team)")
    report.add_argument("--since", default="30d", help="start: 30d, 12h, 90m, or an ISO date/date-time (default 30d)")
    report.add_argument("--until", help="end: ISO date (inclusive) or date-time (exclusive), or 2d (ago); default now")
    report.add_argument("--team", help="only this team")
    report.add_argument("--key", help="only this key id")
    report.add_argument("--model", help="only this upstream model")
    report.add_argument("--tag", help="with --by tag: the tag name whose values are the groups")
    report.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    report.add_argument(
        "--data-dir",
        type=Path,
        help="where the embedded store lives (default: $TOLLGATE_DATA_DIR or ./data); ignored with DATABASE_URL",
    )


def parse_when(value: str, param: str, now: datetime, *, end: bool = False) -> datetime:
    from gateway.accounting.reports import parse_moment

    match = _RELATIVE.match(value.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    return parse_moment(value, param, end=end)


def build_query(args: argparse.Namespace, now: datetime) -> ReportQuery:
    from gateway.accounting.reports import GROUPS, ReportQuery

    if args.by not in GROUPS:
        raise InvalidRequest(f"--by must be one of {', '.join(GROUPS)}.", param="--by")
    start = parse_when(args.since, "--since", now)
    end = parse_when(args.until, "--until", now, end=True) if args.until else now
    if end < start:
        raise InvalidRequest("--until is before --since.", param="--until")
    if args.by == "tag" and not args.tag:
        raise InvalidRequest("--by tag needs --tag NAME: the tag whose values are the groups.", param="--tag")
    if args.tag and args.by != "tag":
        raise InvalidRequest("--tag is only used with --by tag.", param="--tag")
    return ReportQuery(args.by, start, end, team=args.team, key_id=args.key, model=args.model, tag=args.tag)


async def run(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    from gateway.accounting.reports import report_csv, run_report
    from gateway.database import create_engine
    from gateway.migrations import upgrade_head

    query = build_query(args, datetime.now(UTC))
    engine = create_engine(settings.store_url)
    try:
        await upgrade_head(engine)
        report = await run_report(engine, query)
    finally:
        await engine.dispose()
    (out or sys.stdout).write(report_csv(report, "all") if args.csv else format_table(report))
    return 0


def _cells(totals: Totals) -> list[str]:
    from gateway.accounting.schema import usd_text

    cost = totals.cost_usd
    return [
        str(totals.requests),
        str(totals.error_requests),
        str(totals.input_tokens),
        str(totals.output_tokens),
        usd_text(cost) if cost is not None else "-",
        str(totals.unpriced_requests),
    ]


def format_table(report: Report) -> str:
    q = report.query
    header = [q.group_by.upper(), "REQUESTS", "ERRORS", "INPUT_TOKENS", "OUTPUT_TOKENS", "COST_USD", "UNPRICED"]
    rows = [[group if group is not None else "(none)", *_cells(totals)] for group, totals in report.groups]
    total = ["TOTAL", *_cells(report.total)]
    widths = [max(len(row[i]) for row in (header, *rows, total)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))])

    span = f"{q.start:%Y-%m-%d %H:%M} – {q.end:%Y-%m-%d %H:%M} UTC"
    lines = [f"Spend and usage by {q.group_by}, {span}", line(header), *(line(row) for row in rows)]
    lines += ["-" * len(lines[1]), line(total)]
    if report.total.unpriced_requests:
        lines.append(f"{report.total.unpriced_requests} requests had no price: COST_USD covers the priced ones only.")
    return "\n".join(lines) + "\n"
