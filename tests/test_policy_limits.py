from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy import LimitRule, Limits, Policy, PolicyError, load_policy, parse_policy

REPO = Path(__file__).resolve().parent.parent


def parse(data: Any, source: str = "test.yaml") -> Policy:
    return parse_policy(data, source, {})


def test_a_limits_section_parses_team_rules_and_key_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        """
limits:
  teams:
    research: {budget_usd: 100, period: month, rpm: 600, tpm: 200000}
    interns: {budget_usd: 0.1, period: day}
    "*": {rpm: 60}
    unlimited: {}
  keys:
    rpm: 120
    budget_usd: "2.50"
    period: day
""",
        encoding="utf-8",
    )

    limits = load_policy(path, {}).limits

    assert limits.teams["research"] == LimitRule(budget_usd=Decimal(100), period="month", rpm=600, tpm=200000)
    # Through str(): the decimal written in the file, not the float's binary expansion.
    assert limits.teams["interns"].budget_usd == Decimal("0.1")
    assert limits.teams["*"] == LimitRule(rpm=60)
    assert limits.teams["unlimited"].empty
    assert limits.keys == LimitRule(budget_usd=Decimal("2.50"), period="day", rpm=120)
    assert not limits.empty


def test_without_a_limits_section_nothing_is_limited() -> None:
    policy = parse({})

    assert policy.limits == Limits()
    assert policy.limits.empty
    assert policy.limits.keys == LimitRule()


def test_an_empty_limits_section_is_allowed() -> None:
    assert parse({"limits": None}).limits.empty
    assert parse({"limits": {"teams": None, "keys": None}}).limits.empty


def test_the_period_defaults_to_month() -> None:
    assert parse({"limits": {"keys": {"budget_usd": 5}}}).limits.keys.period == "month"


@pytest.mark.parametrize(
    ("limits", "key_path", "complaint"),
    [
        ({"bogus": 1}, "limits.bogus", "unknown key"),
        ({"teams": {"research": {"rpn": 5}}}, "limits.teams.research.rpn", "unknown key"),
        ({"keys": {"budget": 5}}, "limits.keys.budget", "unknown key"),
        ({"teams": ["research"]}, "limits.teams", "expected a mapping"),
        ({"teams": {"research": 5}}, "limits.teams.research", "expected a mapping"),
        ({"keys": {"period": "week"}}, "limits.keys.period", "expected one of: day, month"),
        ({"teams": {"t": {"budget_usd": 0}}}, "limits.teams.t.budget_usd", "positive amount"),
        ({"teams": {"t": {"budget_usd": -5}}}, "limits.teams.t.budget_usd", "positive amount"),
        ({"teams": {"t": {"budget_usd": "ten"}}}, "limits.teams.t.budget_usd", "positive amount"),
        ({"teams": {"t": {"budget_usd": ".inf"}}}, "limits.teams.t.budget_usd", "positive amount"),
        ({"teams": {"t": {"budget_usd": True}}}, "limits.teams.t.budget_usd", "positive amount"),
        ({"teams": {"t": {"rpm": 0}}}, "limits.teams.t.rpm", "integer >= 1"),
        ({"teams": {"t": {"rpm": 1.5}}}, "limits.teams.t.rpm", "integer >= 1"),
        ({"keys": {"tpm": -1}}, "limits.keys.tpm", "integer >= 1"),
        ("everything", "limits", "expected a mapping"),
    ],
)
def test_bad_limits_are_errors_naming_the_file_and_key_path(limits: Any, key_path: str, complaint: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(f"policies/custom.yaml: {key_path}: ")) as caught:
        parse({"limits": limits}, source="policies/custom.yaml")

    assert complaint in str(caught.value)


def test_an_unknown_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("limits:\n  teams:\n    research:\n      budget_usd: 10\n      perod: day\n", encoding="utf-8")

    with pytest.raises(PolicyError, match=re.escape(f"{path}: limits.teams.research.perod: unknown key")):
        load_policy(path, {})


def test_the_default_policy_has_no_active_limits() -> None:
    assert load_policy(REPO / "policies" / "default.yaml", {}).limits.empty


def test_the_commented_limits_example_in_the_default_policy_is_valid() -> None:
    lines = (REPO / "policies" / "default.yaml").read_text(encoding="utf-8").splitlines()
    start = lines.index("# limits:")
    example = "\n".join(line.removeprefix("# ") for line in lines[start:] if line.startswith("# "))

    limits = parse(yaml.safe_load(example)).limits

    assert limits.teams["research"].budget_usd == Decimal(100)
    assert limits.keys.rpm == 120
