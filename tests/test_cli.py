from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from gateway import __version__
from gateway.database import create_engine
from gateway.keys.store import KeyStore, VirtualKey

# Settings read the environment: give the CLI a clean one so nothing from the developer's shell leaks in.
CLEAN_ENV = {
    name: value
    for name, value in os.environ.items()
    if not name.startswith("TOLLGATE_") and name not in ("DATABASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
}


HELP_COMMANDS = [("--help",), ("serve", "--help"), ("keys", "create", "--help")]


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=CLEAN_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def tollgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return finish(start(*args, cwd=cwd))


@pytest.fixture(scope="module")
def read_only_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """`--version` and the help screens touch no state, so they run once, side by side (each start is slow)."""
    cwd = tmp_path_factory.mktemp("cli")
    processes = {args: start(*args, cwd=cwd) for args in [("--version",), *HELP_COMMANDS]}
    return {args: finish(process) for args, process in processes.items()}


async def seed_keys(data_dir: Path, *teams: str, budget: Decimal | None = None) -> list[tuple[str, VirtualKey]]:
    """Creates keys in the CLI's store in-process (one subprocess per test is slow enough)."""
    engine = create_engine(f"sqlite+aiosqlite:///{data_dir / 'tollgate.db'}")
    store = KeyStore(engine)
    try:
        await store.create_schema()
        return [await store.create(team, budget_usd=budget) for team in teams]
    finally:
        await engine.dispose()


async def find_key(data_dir: Path, key: str) -> VirtualKey | None:
    engine = create_engine(f"sqlite+aiosqlite:///{data_dir / 'tollgate.db'}")
    try:
        return await KeyStore(engine).find(key)
    finally:
        await engine.dispose()


def key_ids(listing: str) -> list[str]:
    return re.findall(r"^(key_\w+)", listing, flags=re.MULTILINE)


def test_version_prints_the_version(
    read_only_runs: dict[tuple[str, ...], subprocess.CompletedProcess[str]],
) -> None:
    result = read_only_runs[("--version",)]

    assert result.returncode == 0
    assert result.stdout.strip() == f"tollgate {__version__}"


@pytest.mark.parametrize("args", HELP_COMMANDS, ids=" ".join)
def test_help_exits_zero_and_describes_the_command(
    read_only_runs: dict[tuple[str, ...], subprocess.CompletedProcess[str]], args: tuple[str, ...]
) -> None:
    result = read_only_runs[args]

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tollgate")
    assert "--data-dir" in result.stdout or args == ("--help",)


async def test_keys_create_prints_exactly_one_line_the_key(tmp_path: Path) -> None:
    result = tollgate("keys", "create", "--team", "a", "--budget", "5", "--data-dir", str(tmp_path), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"tg-[A-Za-z0-9_-]{40,}", lines[0])
    # The explanation goes to stderr, so `KEY=$(tollgate keys create ...)` captures just the key.
    assert "only once" in result.stderr
    record = await find_key(tmp_path, lines[0])
    assert record is not None
    assert (record.team, record.budget_usd) == ("a", Decimal("5"))
    assert record.id in result.stderr


async def test_keys_list_shows_id_team_and_budget_but_never_the_key(tmp_path: Path) -> None:
    ((key, record),) = await seed_keys(tmp_path, "research", budget=Decimal("5"))

    result = tollgate("keys", "list", "--data-dir", str(tmp_path), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    (key_id,) = key_ids(result.stdout)
    assert key_id == record.id
    row = next(line for line in result.stdout.splitlines() if line.startswith(key_id))
    assert "research" in row
    assert "5" in row
    assert "active" in row
    assert key not in result.stdout
    assert key[3:] not in result.stdout
    assert key not in result.stderr


async def test_keys_list_filters_by_team(tmp_path: Path) -> None:
    _, (_, beta) = await seed_keys(tmp_path, "alpha", "beta")

    result = tollgate("keys", "list", "--team", "beta", "--data-dir", str(tmp_path), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert key_ids(result.stdout) == [beta.id]
    assert "beta" in result.stdout
    assert "alpha" not in result.stdout


async def test_a_revoked_key_leaves_the_list_but_shows_with_all(tmp_path: Path) -> None:
    ((_, record),) = await seed_keys(tmp_path, "a")
    key_id = record.id

    revoked = tollgate("keys", "revoke", key_id, "--data-dir", str(tmp_path), cwd=tmp_path)
    listing = start("keys", "list", "--data-dir", str(tmp_path), cwd=tmp_path)
    listing_all = start("keys", "list", "--all", "--data-dir", str(tmp_path), cwd=tmp_path)
    after, everything = finish(listing), finish(listing_all)

    assert revoked.returncode == 0, revoked.stderr
    assert key_id in revoked.stderr
    assert key_ids(after.stdout) == []
    assert key_ids(everything.stdout) == [key_id]
    assert "revoked" in everything.stdout


def test_revoking_an_unknown_id_fails_with_a_message_on_stderr(tmp_path: Path) -> None:
    result = tollgate("keys", "revoke", "key_nope", "--data-dir", str(tmp_path), cwd=tmp_path)

    assert result.returncode != 0
    assert "key_nope" in result.stderr
    assert result.stdout == ""


def test_a_budget_that_is_not_a_number_exits_2_with_a_clear_error(tmp_path: Path) -> None:
    result = tollgate("keys", "create", "--team", "a", "--budget", "abc", "--data-dir", str(tmp_path), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "--budget" in result.stderr
    assert "number" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_policy_file_stops_serve_with_the_file_and_key_path(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("models:\n  - alias: a\n    deployments:\n      - provider: mock\n        bogus: 1\n")

    result = tollgate("serve", "--policy", str(policy), "--port", "1", "--data-dir", str(tmp_path), cwd=tmp_path)

    assert result.returncode == 2
    assert str(policy) in result.stderr
    assert "models[0].deployments[0].bogus" in result.stderr
    assert "Traceback" not in result.stderr
