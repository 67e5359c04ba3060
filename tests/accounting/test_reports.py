"""Cost and usage reports over HTTP on a running gateway (SQLite and PostgreSQL), and `tollgate report`.

The records go in through the running app's own ledger (`record()`, then `flush()`), exactly as the request path
will write them; every expected figure is recomputed here from the records themselves, in Decimal.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.accounting.ledger_store import write_batch
from gateway.accounting.records import UsageRecord
from gateway.cli import main
from gateway.database import create_engine
from gateway.migrations import upgrade_head
from support.gateway import RunningGateway, run_gateway
from support.pg import BACKENDS, database_url_sync
from support.usage_records import usage, varied

POLICY = """
models:
  - alias: "mock/*"
    deployments:
      - provider: mock
"""

WHOLE = {"start": "2026-11-01", "end": "2026-11-30"}
PARTIAL = {"start": "2026-11-03T10:15:00Z", "end": "2026-11-05T08:00:00+00:00"}
PARTIAL_BOUNDS = (datetime(2026, 11, 3, 10, 15, tzinfo=UTC), datetime(2026, 11, 5, 8, tzinfo=UTC))
WHOLE_BOUNDS = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))

GROUPERS: dict[str, Callable[[UsageRecord], str | None]] = {
    "team": lambda r: r.team,
    "key": lambda r: r.key_id,
    "model": lambda r: r.upstream_model,
    "user": lambda r: r.user,
    "tag": lambda r: r.tags.get("project"),
    "day": lambda r: r.created_at.date().isoformat(),
}


def report_records() -> list[UsageRecord]:
    records = varied(900, days=5)
    # A model without a price: its spend is unknown, never $0.
    records += [
        usage(10_000 + i, team="team-b", key_id="key_b0", upstream_model="no-price", cost_usd=None) for i in range(4)
    ]
    return records


@dataclass
class Setup:
    gateway: RunningGateway
    records: list[UsageRecord]
    team_a_key: str
    backend: str

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        bearer = token or self.gateway.admin_key
        return httpx.get(self.gateway.url + path, params=params, headers={"Authorization": f"Bearer {bearer}"})


def record_through_the_app(gateway: RunningGateway, records: list[UsageRecord]) -> None:
    assert gateway.app is not None
    ledger = gateway.app.ledger

    async def write() -> None:
        for record in records:
            ledger.record(record)
        async with asyncio.timeout(30):
            await ledger.flush()

    asyncio.run_coroutine_threadsafe(write(), ledger.loop).result(60)


@pytest.fixture(scope="module", params=BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(request.param)
    with database_url_sync(request.param, directory) as url:
        env = {"DATABASE_URL": url} if request.param == "postgresql" else {}
        with run_gateway(POLICY, env=env, data_dir=directory) as gateway:
            records = report_records()
            record_through_the_app(gateway, records)
            yield Setup(gateway, records, gateway.create_key("team-a"), request.param)


def expected(
    records: list[UsageRecord], group_by: str, bounds: tuple[datetime, datetime], team: str | None = None
) -> dict[str | None, dict[str, Any]]:
    groups: dict[str | None, dict[str, Any]] = {}
    for r in records:
        if not bounds[0] <= r.created_at < bounds[1] or (team is not None and r.team != team):
            continue
        g = groups.setdefault(
            GROUPERS[group_by](r),
            {
                "requests": 0,
                "priced_requests": 0,
                "cost_usd": Decimal(0),
                "unpriced_requests": 0,
                "unpriced_input_tokens": 0,
                "unpriced_output_tokens": 0,
                "error_requests": 0,
                "input_tokens": 0,
                "cached_input_tokens": 0,
                "output_tokens": 0,
                "reasoning_tokens": 0,
            },
        )
        g["requests"] += 1
        g["error_requests"] += r.status != "ok"
        g["input_tokens"] += r.input_tokens
        g["cached_input_tokens"] += r.cached_input_tokens
        g["output_tokens"] += r.output_tokens
        g["reasoning_tokens"] += r.reasoning_tokens
        if r.cost_usd is None:
            g["unpriced_requests"] += 1
            g["unpriced_input_tokens"] += r.input_tokens
            g["unpriced_output_tokens"] += r.output_tokens
        else:
            g["priced_requests"] += 1
            g["cost_usd"] += r.cost_usd
    for g in groups.values():
        if not g["priced_requests"]:
            g["cost_usd"] = None
        g["total_tokens"] = g["input_tokens"] + g["output_tokens"]
    return groups


COST_FIELDS = (
    "requests",
    "priced_requests",
    "cost_usd",
    "unpriced_requests",
    "unpriced_input_tokens",
    "unpriced_output_tokens",
)
USAGE_FIELDS = (
    "requests",
    "error_requests",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
)


def as_decimal(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "cost_usd": Decimal(row["cost_usd"]) if row.get("cost_usd") is not None else None}


def cost_groups(body: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    return {row["group"]: {f: as_decimal(row)[f] for f in COST_FIELDS} for row in body["data"]}


def want(groups: dict[str | None, dict[str, Any]], fields: tuple[str, ...]) -> dict[str | None, dict[str, Any]]:
    return {name: {f: g[f] for f in fields} for name, g in groups.items()}


@pytest.mark.parametrize("group_by", list(GROUPERS))
@pytest.mark.parametrize(("window", "bounds"), [(WHOLE, WHOLE_BOUNDS), (PARTIAL, PARTIAL_BOUNDS)])
def test_cost_by_every_grouping_equals_the_records(
    setup: Setup, group_by: str, window: dict[str, str], bounds: tuple[datetime, datetime]
) -> None:
    params = {"group_by": group_by, **window, **({"tag": "project"} if group_by == "tag" else {})}
    response = setup.get("/v1/reports/cost", **params)

    assert response.status_code == 200, response.text
    body = response.json()
    assert cost_groups(body) == want(expected(setup.records, group_by, bounds), COST_FIELDS)
    total = as_decimal(body["total"])
    assert total["requests"] == sum(1 for r in setup.records if bounds[0] <= r.created_at < bounds[1])
    assert total["cost_usd"] == sum(
        (r.cost_usd for r in setup.records if r.cost_usd is not None and bounds[0] <= r.created_at < bounds[1]),
        Decimal(0),
    )
    assert total["cost_usd"] == sum((g["cost_usd"] or Decimal(0) for g in cost_groups(body).values()), Decimal(0))
    assert isinstance(body["total"]["cost_usd"], str) and "E" not in body["total"]["cost_usd"]


def test_whole_days_come_from_rollups_and_partial_days_from_raw_rows(setup: Setup) -> None:
    whole = setup.get("/v1/reports/cost", group_by="team", **WHOLE).json()
    assert whole["source"] == {"rollup_days": ["2026-11-01", "2026-11-30"], "raw_ranges": []}
    partial = setup.get("/v1/reports/cost", group_by="team", **PARTIAL).json()
    assert partial["source"] == {
        "rollup_days": ["2026-11-04", "2026-11-04"],
        "raw_ranges": [
            ["2026-11-03T10:15:00Z", "2026-11-04T00:00:00Z"],
            ["2026-11-05T00:00:00Z", "2026-11-05T08:00:00Z"],
        ],
    }
    by_user = setup.get("/v1/reports/cost", group_by="user", **WHOLE).json()
    assert by_user["source"]["rollup_days"] is None


def test_usage_report_counts_tokens_and_requests(setup: Setup) -> None:
    body = setup.get("/v1/reports/usage", group_by="model", **PARTIAL).json()
    assert body["report"] == "usage" and "currency" not in body
    groups = {row.pop("group"): row for row in body["data"]}
    assert groups == want(expected(setup.records, "model", PARTIAL_BOUNDS), USAGE_FIELDS)


def test_unpriced_usage_is_reported_as_such_never_as_zero(setup: Setup) -> None:
    body = setup.get("/v1/reports/cost", group_by="model", **WHOLE).json()
    (no_price,) = [row for row in body["data"] if row["group"] == "no-price"]
    assert no_price == {
        "group": "no-price",
        "requests": 4,
        "priced_requests": 0,
        "cost_usd": None,
        "unpriced_requests": 4,
        "unpriced_input_tokens": 40,
        "unpriced_output_tokens": 20,
    }
    assert body["total"]["unpriced_requests"] == sum(1 for r in setup.records if r.cost_usd is None)


def test_filters_narrow_the_report(setup: Setup) -> None:
    body = setup.get("/v1/reports/cost", group_by="model", team="team-b", key="key_b0", **PARTIAL).json()
    records = [r for r in setup.records if r.team == "team-b" and r.key_id == "key_b0"]
    assert cost_groups(body) == want(expected(records, "model", PARTIAL_BOUNDS), COST_FIELDS)
    assert body["filters"] == {"team": "team-b", "key": "key_b0"}
    only = setup.get("/v1/reports/cost", group_by="team", model="gpt-4o", **WHOLE).json()
    records = [r for r in setup.records if r.upstream_model == "gpt-4o"]
    assert cost_groups(only) == want(expected(records, "team", WHOLE_BOUNDS), COST_FIELDS)


def test_csv_has_a_header_and_one_row_per_group(setup: Setup) -> None:
    response = setup.get("/v1/reports/cost", group_by="user", format="csv", **WHOLE)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == ["user", *COST_FIELDS]
    groups = expected(setup.records, "user", WHOLE_BOUNDS)
    assert {row["user"] for row in rows} == {"alice", "bob", "'=cmd", ""}  # a formula-looking name is defused
    alice = next(row for row in rows if row["user"] == "alice")
    assert Decimal(alice["cost_usd"]) == groups["alice"]["cost_usd"]
    assert int(alice["requests"]) == groups["alice"]["requests"]
    usage_csv = setup.get("/v1/reports/usage", group_by="day", format="csv", **WHOLE).text
    assert usage_csv.splitlines()[0] == "day," + ",".join(USAGE_FIELDS)


def test_a_team_key_sees_only_its_own_team(setup: Setup) -> None:
    body = setup.get("/v1/reports/cost", token=setup.team_a_key, group_by="team", **WHOLE).json()
    assert [row["group"] for row in body["data"]] == ["team-a"]
    assert body["filters"] == {"team": "team-a"}
    by_key = setup.get("/v1/reports/cost", token=setup.team_a_key, group_by="key", **WHOLE).json()
    assert cost_groups(by_key) == want(expected(setup.records, "key", WHOLE_BOUNDS, team="team-a"), COST_FIELDS)
    assert setup.get("/v1/reports/usage", token=setup.team_a_key, team="team-a").status_code == 200

    response = setup.get("/v1/reports/cost", token=setup.team_a_key, team="team-b")
    assert response.status_code == 403
    assert response.json()["error"]["param"] == "team"
    assert response.json()["error"]["type"] == "permission_error"


def test_the_admin_may_pick_any_team(setup: Setup) -> None:
    body = setup.get("/v1/reports/cost", group_by="key", team="team-b", **WHOLE).json()
    assert {row["group"] for row in body["data"]} == {"key_b0", "key_b1"}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-01"}, "end"),
        ({"start": "2026-11-05", "end": "2026-11-01"}, "end"),
        ({"group_by": "colour"}, "group_by"),
        ({"format": "xml"}, "format"),
        ({"group_by": "tag"}, "tag"),
        ({"tag": "project"}, "tag"),
        ({"since": "30d"}, "since"),
        ({"team": ["a", "b"]}, "team"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(setup: Setup, params: dict[str, Any], param: str) -> None:
    response = setup.get("/v1/reports/cost", **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_an_unencoded_plus_in_a_time_zone_still_parses(setup: Setup) -> None:
    query = "group_by=team&start=2026-11-03T10:15:00+00:00&end=2026-11-05T08:00:00+00:00"
    response = httpx.get(
        f"{setup.gateway.url}/v1/reports/cost?{query}", headers={"Authorization": f"Bearer {setup.gateway.admin_key}"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["start"] == "2026-11-03T10:15:00Z"


def test_reports_need_a_key_and_get(setup: Setup) -> None:
    assert httpx.get(setup.gateway.url + "/v1/reports/cost").status_code == 401
    bad = httpx.get(setup.gateway.url + "/v1/reports/cost", headers={"Authorization": "Bearer tg-nope"})
    assert bad.status_code == 401
    post = httpx.post(
        setup.gateway.url + "/v1/reports/cost", headers={"Authorization": f"Bearer {setup.gateway.admin_key}"}
    )
    assert post.status_code == 405


# -- tollgate report ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DATABASE_URL", "TOLLGATE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)

    async def fill() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'tollgate.db'}")
        await upgrade_head(engine)
        await write_batch(engine, report_records())
        await engine.dispose()

    asyncio.run(fill())
    return tmp_path


def test_the_cli_prints_a_table_with_exact_totals(cli_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["report", "--by", "team", "--since", "2026-11-01", "--until", "2026-11-30", "--data-dir", str(cli_data_dir)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    groups = expected(report_records(), "team", WHOLE_BOUNDS)
    lines = out.splitlines()
    assert lines[1].split() == ["TEAM", "REQUESTS", "ERRORS", "INPUT_TOKENS", "OUTPUT_TOKENS", "COST_USD", "UNPRICED"]
    team_a = next(line.split() for line in lines if line.startswith("team-a"))
    assert int(team_a[1]) == groups["team-a"]["requests"]
    assert Decimal(team_a[5]) == groups["team-a"]["cost_usd"]
    total = next(line.split() for line in lines if line.startswith("TOTAL"))
    assert Decimal(total[5]) == sum((r.cost_usd for r in report_records() if r.cost_usd is not None), Decimal(0))
    assert "had no price" in out


def test_the_cli_writes_csv(cli_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--by", "model", "--since", "2026-11-01", "--csv", "--data-dir", str(cli_data_dir)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["model"] for row in rows} == {"gpt-4o-mini", "gpt-4o", "local-llama", "no-price"}
    assert "cost_usd" in rows[0] and "output_tokens" in rows[0]


@pytest.mark.parametrize(
    "args",
    [["--since", "soon"], ["--by", "colour"], ["--by", "tag"], ["--since", "2026-11-05", "--until", "2026-11-01"]],
)
def test_the_cli_rejects_bad_arguments(cli_data_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(["report", *args, "--data-dir", str(cli_data_dir)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
