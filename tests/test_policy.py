from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.policy import Policy, PolicyError, load_policy, parse_policy
from gateway.routing import Deployment

REPO = Path(__file__).resolve().parent.parent
SHIPPED_POLICIES = sorted(REPO.glob("policies/*.yaml")) + sorted(REPO.glob("bench/policy.yaml"))

FULL_POLICY = """
version: 1
defaults:
  timeout: 30
  retries: 4
models:
  - alias: gpt-4o
    deployments:
      - name: primary
        provider: openai
        model: gpt-4o-2024-08-06
        api_base: "https://api.example.com/v1/"
        api_key_env: PRIMARY_KEY
        weight: 3
        headers:
          X-Org: research
      - name: backup
        provider: azure
        api_base: "https://example.openai.azure.com"
        api_version: "2024-06-01"
        weight: 1
        timeout: 5
        retries: 0
      - provider: mock
        weight: 0
  - alias: "claude-*"
    deployments:
      - provider: anthropic
teams:
  research:
    models: ["gpt-4o*", "mock/*"]
  everyone: {}
"""


def parse(data: Any, env: dict[str, str] | None = None, source: str = "test.yaml") -> Policy:
    return parse_policy(data, source, env or {})


def minimal(**deployment: Any) -> dict[str, Any]:
    return {"models": [{"alias": "m", "deployments": [{"provider": "mock", **deployment}]}]}


def only_deployment(policy: Policy) -> Deployment:
    (route,) = policy.routes
    (deployment,) = route.deployments
    return deployment


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_policy_parses_into_routes_teams_and_deployments(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, FULL_POLICY), {"PRIMARY_KEY": "sk-primary"})

    assert [r.alias for r in policy.routes] == ["gpt-4o", "claude-*"]
    primary, backup, standby = policy.routes[0].deployments
    assert primary == Deployment(
        name="primary",
        provider="openai",
        model="gpt-4o-2024-08-06",
        api_base="https://api.example.com/v1",  # the trailing slash is stripped
        api_key="sk-primary",
        weight=3.0,
        timeout=30.0,
        retries=4,
        headers={"X-Org": "research"},
    )
    assert (backup.provider, backup.api_version, backup.timeout, backup.retries) == ("azure", "2024-06-01", 5.0, 0)
    assert (standby.name, standby.model, standby.weight) == ("gpt-4o#2", "{alias}", 0.0)
    assert policy.teams["research"].models == ("gpt-4o*", "mock/*")
    assert policy.teams["everyone"].models is None
    assert policy.team("not-listed").models is None
    assert policy.providers == {"openai", "azure", "mock", "anthropic"}


def test_deployments_inherit_the_defaults_section() -> None:
    policy = parse({"defaults": {"timeout": 12.5, "retries": 7}, **minimal()})

    deployment = only_deployment(policy)
    assert (deployment.timeout, deployment.retries) == (12.5, 7)


def test_without_a_defaults_section_deployments_get_built_in_defaults() -> None:
    deployment = only_deployment(parse(minimal()))

    assert (deployment.timeout, deployment.retries, deployment.weight) == (600.0, 2, 1.0)
    assert deployment.name == "m#0"
    assert deployment.api_key is None


def test_an_empty_policy_file_has_no_routes(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "# nothing yet\n"), {})

    assert policy.routes == ()
    assert policy.router().resolve("gpt-4o") is None


@pytest.mark.parametrize(
    ("mutate", "key_path"),
    [
        (lambda p: p.update(bogus=1), "policy.bogus"),
        (lambda p: p["defaults"].update(bogus=1), "defaults.bogus"),
        (lambda p: p["models"][0].update(bogus=1), "models[0].bogus"),
        (lambda p: p["models"][0]["deployments"][0].update(bogus=1), "models[0].deployments[0].bogus"),
        (lambda p: p["models"][1]["deployments"][0].update(bogus=1), "models[1].deployments[0].bogus"),
        (lambda p: p["teams"]["research"].update(bogus=1), "teams.research.bogus"),
    ],
    ids=["top-level", "defaults", "route", "deployment", "second-route-deployment", "team"],
)
def test_unknown_keys_are_errors_naming_the_source_and_key_path(mutate: Any, key_path: str) -> None:
    data: dict[str, Any] = {
        "defaults": {"timeout": 10},
        "models": [
            {"alias": "a", "deployments": [{"provider": "mock"}]},
            {"alias": "b", "deployments": [{"provider": "mock"}]},
        ],
        "teams": {"research": {"models": ["a"]}},
    }
    data = copy.deepcopy(data)
    mutate(data)

    with pytest.raises(PolicyError) as caught:
        parse(data, source="policies/custom.yaml")

    message = str(caught.value)
    assert message.startswith("policies/custom.yaml: ")
    assert f" {key_path}: unknown key" in message


def test_an_unknown_key_in_a_file_names_the_file_path(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  - alias: a\n    deployments:\n      - provider: mock\n        wieght: 2\n")

    with pytest.raises(PolicyError, match=re.escape(f"{path}: models[0].deployments[0].wieght: unknown key")):
        load_policy(path, {})


def test_env_references_expand_from_the_given_mapping() -> None:
    policy = parse(minimal(api_base="${BASE}/v1", model="${MODEL:-fallback-model}"), {"BASE": "http://h:1"})

    deployment = only_deployment(policy)
    assert deployment.api_base == "http://h:1/v1"
    assert deployment.model == "fallback-model"


def test_a_set_variable_wins_over_its_default() -> None:
    policy = parse(minimal(model="${MODEL:-fallback-model}"), {"MODEL": "chosen"})

    assert only_deployment(policy).model == "chosen"


def test_an_empty_default_expands_to_nothing() -> None:
    policy = parse(minimal(model="prefix-${SUFFIX:-}"), {})

    assert only_deployment(policy).model == "prefix-"


def test_env_references_expand_in_team_patterns() -> None:
    policy = parse({**minimal(), "teams": {"t": {"models": ["${FAMILY:-gpt}-*"]}}}, {"FAMILY": "claude"})

    assert policy.teams["t"].models == ("claude-*",)


def test_expansion_reads_only_the_given_mapping_not_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_TEST_ONLY_IN_PROCESS_ENV", "leaked")

    with pytest.raises(PolicyError, match="TOLLGATE_TEST_ONLY_IN_PROCESS_ENV"):
        parse(minimal(model="${TOLLGATE_TEST_ONLY_IN_PROCESS_ENV}"), {})


def test_a_missing_variable_without_default_is_an_error_naming_it_and_the_key() -> None:
    with pytest.raises(PolicyError) as caught:
        parse(minimal(api_base="${NOT_SET}/v1"), source="p.yaml")

    message = str(caught.value)
    assert "p.yaml: models[0].deployments[0].api_base:" in message
    assert "NOT_SET" in message


def test_api_key_env_reads_the_key_from_the_env_mapping() -> None:
    policy = parse(minimal(api_key_env="UPSTREAM_KEY"), {"UPSTREAM_KEY": "sk-secret-123"})

    assert only_deployment(policy).api_key == "sk-secret-123"


def test_api_key_env_naming_an_unset_variable_leaves_the_key_empty() -> None:
    policy = parse(minimal(api_key_env="UPSTREAM_KEY"), {})

    assert only_deployment(policy).api_key is None


def test_the_api_key_does_not_appear_in_the_deployment_or_policy_repr() -> None:
    secret = "sk-very-secret-value-0123456789"
    policy = parse(minimal(api_key_env="UPSTREAM_KEY", headers={"X-Token": "header-secret"}), {"UPSTREAM_KEY": secret})

    deployment = only_deployment(policy)
    assert deployment.api_key == secret
    assert secret not in repr(deployment)
    assert secret not in repr(policy)
    assert "header-secret" not in repr(policy)


def test_a_duplicate_alias_is_an_error() -> None:
    data = {"models": [{"alias": "a", "deployments": [{"provider": "mock"}]}] * 2}

    with pytest.raises(PolicyError, match=re.escape("models[1].alias: alias 'a' is defined twice")):
        parse(data)


def test_a_route_whose_weights_are_all_zero_is_an_error() -> None:
    data = {"models": [{"alias": "a", "deployments": [{"provider": "mock", "weight": 0}] * 2}]}

    with pytest.raises(PolicyError, match=re.escape("models[0].deployments: at least one deployment needs a weight")):
        parse(data)


def test_a_negative_weight_is_an_error() -> None:
    with pytest.raises(PolicyError, match=re.escape("models[0].deployments[0].weight")):
        parse(minimal(weight=-1))


def test_an_azure_deployment_without_api_version_is_an_error() -> None:
    data = minimal(api_base="https://x.openai.azure.com")
    data["models"][0]["deployments"][0]["provider"] = "azure"

    with pytest.raises(PolicyError, match=re.escape("models[0].deployments[0]: an azure deployment needs")):
        parse(data)


@pytest.mark.parametrize(
    ("data", "key_path"),
    [
        ({"version": 2}, "policy.version"),
        ({"models": {"alias": "a"}}, "models"),
        ({"models": [{"deployments": [{"provider": "mock"}]}]}, "models[0].alias"),
        ({"models": [{"alias": "a", "deployments": []}]}, "models[0].deployments"),
        ({"models": [{"alias": "a", "deployments": [{"model": "x"}]}]}, "models[0].deployments[0].provider"),
        ({"models": [{"alias": "a", "deployments": [{"provider": ""}]}]}, "models[0].deployments[0].provider"),
        (minimal(timeout=0), "models[0].deployments[0].timeout"),
        (minimal(retries=1.5), "models[0].deployments[0].retries"),
        (minimal(weight=True), "models[0].deployments[0].weight"),
        ({"teams": ["research"]}, "teams"),
        ({"teams": {"t": {"models": "gpt-*"}}}, "teams.t.models"),
        (["not", "a", "mapping"], "policy"),
    ],
)
def test_malformed_values_are_errors_naming_the_key_path(data: Any, key_path: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(f"test.yaml: {key_path}: ")):
        parse(data)


def test_invalid_yaml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "models: [\n  - alias: a\n    deployments: {{{\n")

    with pytest.raises(PolicyError, match=re.escape(f"{path}: not valid YAML")):
        load_policy(path, {})


def test_a_missing_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(PolicyError, match=re.escape(f"{path}: cannot read policy")):
        load_policy(path, {})


def test_there_are_shipped_policies_to_check() -> None:
    assert REPO / "policies" / "default.yaml" in SHIPPED_POLICIES


@pytest.mark.parametrize("path", SHIPPED_POLICIES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_policy_loads_with_an_empty_environment(path: Path) -> None:
    policy = load_policy(path, {})

    assert policy.routes
    for route in policy.routes:
        for deployment in route.deployments:
            assert deployment.api_key is None


@pytest.mark.parametrize(
    ("alias", "provider"),
    [
        ("gpt-4o-mini", "openai"),
        ("o3-mini", "openai"),
        ("text-embedding-3-small", "openai"),
        ("claude-3-5-sonnet-latest", "anthropic"),
        ("mock/echo", "mock"),
    ],
)
def test_the_default_policy_routes_well_known_models_to_their_provider(alias: str, provider: str) -> None:
    router = load_policy(REPO / "policies" / "default.yaml", {}).router()

    route = router.resolve(alias)

    assert route is not None
    assert [d.provider for d in route.deployments] == [provider]


def test_the_default_policy_reads_provider_keys_and_base_urls_from_the_environment() -> None:
    env = {"OPENAI_API_KEY": "sk-openai", "OPENAI_BASE_URL": "http://127.0.0.1:9999/v1/"}
    router = load_policy(REPO / "policies" / "default.yaml", env).router()

    route = router.resolve("gpt-4o-mini")

    assert route is not None
    (deployment,) = route.deployments
    assert deployment.api_key == "sk-openai"
    assert deployment.api_base == "http://127.0.0.1:9999/v1"
    assert deployment.upstream_model("gpt-4o-mini") == "gpt-4o-mini"


def test_the_default_policy_does_not_route_unknown_models() -> None:
    router = load_policy(REPO / "policies" / "default.yaml", {}).router()

    assert router.resolve("llama-3-70b") is None
