"""Cost and usage reports: `GET /v1/reports/cost`, `GET /v1/reports/usage`, `tollgate report`, budgets' rebuild.

    GET /v1/reports/cost?group_by=team|key|model|user|tag|day&start=&end=&format=json|csv&team=&key=&model=&tag=

`start` and `end` are ISO-8601 dates or date-times (no zone: UTC); a bare date as `end` includes that day. Defaults:
the start of the current UTC month, and now. `tag=NAME` is required with group_by=tag (the groups are that tag's
values; untagged requests form the null group). The admin key sees every team and may filter with `team=`; a team's
virtual key sees its own team only (`team=` naming another team is a 403). Bad values are 400s naming the parameter.

Where the numbers come from. A report covers `[start, end)`, in UTC. Groupings the daily rollups carry (team, key,
model, day) read the rollups for every whole UTC day in the range and raw rows only for the partial days at either
end; user and tag groupings read raw rows for the whole range (rollups do not keep them). Rollups are written in
the transaction that inserts the raw rows and count only the rows really inserted, so both sources agree to the
picodollar and can be mixed. Raw rows older than `ledger_retention_days` are gone, so user and tag reports, and
the partial edge days of the others, reach back only that far; whole-day team/key/model/day reports reach back
forever.

Money is summed in SQL as integer picodollars (see `schema.py`) and turned into `Decimal` once, so totals are exact
and equal the sum of the groups. Unpriced usage (no price for the model) is never counted as $0: each group says
how many of its requests and tokens are unpriced, and its `cost_usd` covers the priced ones (null if none was).

"model" is the upstream model that served (and priced) the request, not the alias the client asked for. "day" is
the UTC day the request arrived.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import parse_qs

from sqlalchemy import ColumnElement, Select, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.schema import from_pico, usage_daily, usage_records, usd_text
from gateway.exceptions import InvalidRequest, PermissionDenied
from gateway.keys.store import VirtualKey
from gateway.middleware.auth import ADMIN, VIRTUAL_KEY
from gateway.responses import send_bytes, send_json
from gateway.types import Scope, Send

Kind = Literal["cost", "usage"]
GROUPS = ("team", "key", "model", "user", "tag", "day")
ROLLUP_GROUPS = frozenset({"team", "key", "model", "day"})
FORMATS = ("json", "csv")
PARAMS = frozenset({"group_by", "start", "end", "format", "team", "key", "model", "tag"})


@dataclass(slots=True)
class Totals:
    requests: int = 0
    error_requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_pico: int = 0
    unpriced_requests: int = 0
    unpriced_input_tokens: int = 0
    unpriced_output_tokens: int = 0

    def add(self, other: Totals) -> None:
        for f in fields(Totals):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def priced_requests(self) -> int:
        return self.requests - self.unpriced_requests

    @property
    def cost_usd(self) -> Decimal | None:
        """None when no request in the group had a price: unknown, not zero."""
        return from_pico(self.cost_pico) if self.priced_requests else None

    def cost_view(self) -> dict[str, Any]:
        cost = self.cost_usd
        return {
            "requests": self.requests,
            "priced_requests": self.priced_requests,
            "cost_usd": usd_text(cost) if cost is not None else None,
            "unpriced_requests": self.unpriced_requests,
            "unpriced_input_tokens": self.unpriced_input_tokens,
            "unpriced_output_tokens": self.unpriced_output_tokens,
        }

    def usage_view(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "error_requests": self.error_requests,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }


TOTAL_COLUMNS = tuple(f.name for f in fields(Totals))


@dataclass(frozen=True, slots=True)
class ReportQuery:
    group_by: str
    start: datetime
    end: datetime
    team: str | None = None
    key_id: str | None = None
    model: str | None = None
    tag: str | None = None  # the tag name whose values are the groups, with group_by="tag"


@dataclass(slots=True)
class Report:
    query: ReportQuery
    groups: list[tuple[str | None, Totals]]
    total: Totals
    rollup_days: tuple[date, date] | None = None  # [first, last] whole days read from rollups
    raw_ranges: list[tuple[datetime, datetime]] = field(default_factory=list)


# -- time ------------------------------------------------------------------------------------------------------


def floor_day(moment: datetime) -> datetime:
    return datetime.combine(moment.date(), time(), UTC)


def ceil_day(moment: datetime) -> datetime:
    floor = floor_day(moment)
    return floor if floor == moment else floor + timedelta(days=1)


def split_range(query: ReportQuery) -> tuple[tuple[date, date] | None, list[tuple[datetime, datetime]]]:
    """Whole days for the rollups ([first, last_exclusive) as dates) and the raw-row ranges around them."""
    if query.group_by not in ROLLUP_GROUPS:
        return None, [(query.start, query.end)] if query.start < query.end else []
    first, last = ceil_day(query.start), floor_day(query.end)
    if first >= last:
        return None, [(query.start, query.end)] if query.start < query.end else []
    raw = [(a, b) for a, b in ((query.start, first), (last, query.end)) if a < b]
    return (first.date(), last.date()), raw


# -- SQL -------------------------------------------------------------------------------------------------------


def _raw_group(query: ReportQuery) -> ColumnElement[Any]:
    c = usage_records.c
    if query.group_by == "tag":
        assert query.tag is not None
        tag: ColumnElement[Any] = c.tags[query.tag].as_string()
        return tag
    return {"team": c.team, "key": c.key_id, "model": c.upstream_model, "user": c.end_user, "day": c.day}[
        query.group_by
    ]


def _raw_select(query: ReportQuery, start: datetime, end: datetime) -> Select[Any]:
    c = usage_records.c
    unpriced = c.cost_pico.is_(None)
    group = _raw_group(query).label("grp")
    stmt = select(
        group,
        func.count().label("requests"),
        func.sum(case((c.status != "ok", 1), else_=0)).label("error_requests"),
        func.sum(c.input_tokens).label("input_tokens"),
        func.sum(c.cached_input_tokens).label("cached_input_tokens"),
        func.sum(c.output_tokens).label("output_tokens"),
        func.sum(c.reasoning_tokens).label("reasoning_tokens"),
        func.sum(c.cost_pico).label("cost_pico"),  # SUM skips NULLs: the priced rows only
        func.sum(case((unpriced, 1), else_=0)).label("unpriced_requests"),
        func.sum(case((unpriced, c.input_tokens), else_=0)).label("unpriced_input_tokens"),
        func.sum(case((unpriced, c.output_tokens), else_=0)).label("unpriced_output_tokens"),
    ).where(c.created_at >= start, c.created_at < end)
    conditions = [(c.team, query.team), (c.key_id, query.key_id), (c.upstream_model, query.model)]
    stmt = stmt.where(and_(True, *(column == value for column, value in conditions if value is not None)))
    return stmt.group_by(group)


def _rollup_select(query: ReportQuery, first: date, last: date) -> Select[Any]:
    c = usage_daily.c
    group = {"team": c.team, "key": c.key_id, "model": c.model, "day": c.day}[query.group_by].label("grp")
    stmt = select(group, *(func.sum(c[name]).label(name) for name in TOTAL_COLUMNS)).where(c.day >= first, c.day < last)
    conditions = [(c.team, query.team), (c.key_id, query.key_id), (c.model, query.model)]
    stmt = stmt.where(and_(True, *(column == value for column, value in conditions if value is not None)))
    return stmt.group_by(group)


def _label(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


async def run_report(engine: AsyncEngine, query: ReportQuery) -> Report:
    rollup_days, raw_ranges = split_range(query)
    statements = [_raw_select(query, start, end) for start, end in raw_ranges]
    if rollup_days is not None:
        statements.append(_rollup_select(query, *rollup_days))
    groups: dict[str | None, Totals] = {}
    async with engine.connect() as conn:
        for stmt in statements:
            for row in (await conn.execute(stmt)).mappings():
                totals = Totals(**{name: int(row[name] or 0) for name in TOTAL_COLUMNS})
                groups.setdefault(_label(row["grp"]), Totals()).add(totals)
    total = Totals()
    for totals in groups.values():
        total.add(totals)
    ordered = sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or ""))
    shown_days = (rollup_days[0], rollup_days[1] - timedelta(days=1)) if rollup_days else None
    return Report(query, ordered, total, shown_days, raw_ranges)


async def spend_since(engine: AsyncEngine, since: datetime, by: Literal["team", "key"]) -> dict[str, Decimal]:
    since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    # Up to the end of tomorrow: whole days, so only the partial first day reads raw rows (and clocks may skew).
    end = floor_day(datetime.now(UTC)) + timedelta(days=2)
    report = await run_report(engine, ReportQuery(group_by=by, start=since, end=max(end, ceil_day(since))))
    return {group: from_pico(t.cost_pico) for group, t in report.groups if group is not None and t.priced_requests}


# -- presentation ----------------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def report_json(report: Report, kind: Kind) -> dict[str, Any]:
    def view(totals: Totals) -> dict[str, Any]:
        return totals.cost_view() if kind == "cost" else totals.usage_view()

    q = report.query
    body: dict[str, Any] = {
        "object": "report",
        "report": kind,
        "group_by": q.group_by,
        "start": _iso(q.start),
        "end": _iso(q.end),
        "filters": {name: value for name, value in (("team", q.team), ("key", q.key_id), ("model", q.model)) if value},
    }
    if q.tag is not None:
        body["tag"] = q.tag
    if kind == "cost":
        body["currency"] = "USD"
    body["data"] = [{"group": group, **view(totals)} for group, totals in report.groups]
    body["total"] = view(report.total)
    body["source"] = {
        "rollup_days": [d.isoformat() for d in report.rollup_days] if report.rollup_days else None,
        "raw_ranges": [[_iso(a), _iso(b)] for a, b in report.raw_ranges],
    }
    return body


def _csv_cell(value: Any) -> Any:
    # Group names come from clients (the `user` field, tags): keep spreadsheets from running them as formulas.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _view(totals: Totals, kind: Kind | Literal["all"]) -> dict[str, Any]:
    if kind == "cost":
        return totals.cost_view()
    if kind == "usage":
        return totals.usage_view()
    return {**totals.usage_view(), **totals.cost_view()}


def report_csv(report: Report, kind: Kind | Literal["all"]) -> str:
    """One row per group under a header; no total row, so that a spreadsheet's own sum is the total."""
    columns = list(_view(Totals(), kind))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([report.query.group_by, *columns])
    for group, totals in report.groups:
        view = _view(totals, kind)
        writer.writerow([_csv_cell(group), *(_csv_cell(view[column]) for column in columns)])
    return out.getvalue()


# -- parsing ---------------------------------------------------------------------------------------------------


def parse_moment(value: str, param: str, *, end: bool = False) -> datetime:
    """ISO-8601 date or date-time. A bare date as `end` means the end of that day (reports include it); a time
    without a zone is UTC."""
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=1) if end else day, time(), UTC)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            # A '+' of a zone offset arrives as a space when the client did not percent-encode it.
            moment = datetime.fromisoformat(text.replace(" ", "+"))
    except ValueError:
        raise InvalidRequest(
            f"'{param}' must be an ISO-8601 date or date-time (e.g. 2026-11-01 or 2026-11-01T12:00:00Z), got "
            f"{value[:40]!r}.",
            param=param,
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_query(
    params: Mapping[str, Sequence[str]], *, team_scope: str | None, now: datetime | None = None
) -> tuple[ReportQuery, str]:
    """The report a request asks for, and its format. `team_scope` is the caller's team (None for the admin)."""
    for name in params:
        if name not in PARAMS:
            raise InvalidRequest(f"Unknown query parameter '{name}'.", param=name)

    def one(name: str) -> str | None:
        values = params.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise InvalidRequest(f"Give '{name}' at most once.", param=name)
        return values[0]

    group_by = one("group_by") or "team"
    if group_by not in GROUPS:
        raise InvalidRequest(f"'group_by' must be one of {', '.join(GROUPS)}; got {group_by[:40]!r}.", param="group_by")
    fmt = one("format") or "json"
    if fmt not in FORMATS:
        raise InvalidRequest(f"'format' must be json or csv; got {fmt[:40]!r}.", param="format")
    now = now or datetime.now(UTC)
    raw_start, raw_end = one("start"), one("end")
    start = parse_moment(raw_start, "start") if raw_start else datetime.combine(now.date().replace(day=1), time(), UTC)
    end = parse_moment(raw_end, "end", end=True) if raw_end else now
    if end < start:
        raise InvalidRequest("'end' is before 'start'.", param="end")
    tag = one("tag")
    if group_by == "tag" and not tag:
        raise InvalidRequest("group_by=tag needs 'tag': the name of the tag whose values are the groups.", param="tag")
    if tag and group_by != "tag":
        raise InvalidRequest("'tag' is only used with group_by=tag.", param="tag")
    team = one("team")
    if team_scope is not None:
        if team is not None and team != team_scope:
            raise PermissionDenied("A team's key can only read its own team's reports.", param="team")
        team = team_scope
    query = ReportQuery(group_by, start, end, team=team, key_id=one("key"), model=one("model"), tag=tag)
    return query, fmt


# -- HTTP ------------------------------------------------------------------------------------------------------


class ReportsAPI:
    """`GET /v1/reports/{cost,usage}`: the admin key sees every team, a virtual key its own team only."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def handle(self, kind: Kind, scope: Scope, send: Send) -> None:
        params = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        key: VirtualKey | None = scope.get(VIRTUAL_KEY)
        if scope.get(ADMIN):
            team_scope = None
        elif key is not None:
            team_scope = key.team
        else:  # the auth middleware guarantees one or the other; refuse rather than show everything
            raise PermissionDenied("Reports need the admin key or a team's key.")
        query, fmt = parse_query(params, team_scope=team_scope)
        report = await run_report(self.engine, query)
        if fmt == "csv":
            filename = f"tollgate-{kind}-by-{query.group_by}.csv"
            disposition = f'attachment; filename="{filename}"'.encode()
            body = report_csv(report, kind).encode()
            await send_bytes(send, 200, body, b"text/csv; charset=utf-8", [(b"content-disposition", disposition)])
        else:
            await send_json(send, 200, report_json(report, kind))
