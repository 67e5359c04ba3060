"""The `tollgate` command: serve, keys, --version."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__, report_cli
from gateway.exceptions import InvalidRequest
from gateway.policy import PolicyError, load_policy
from gateway.settings import Settings, SettingsError, settings_from_env


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where the embedded store lives (default: $TOLLGATE_DATA_DIR or ./data); ignored with DATABASE_URL",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description="Tollgate, an OpenAI-compatible LLM gateway.")
    parser.add_argument("--version", action="version", version=f"tollgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway", description="Run the gateway.")
    serve.add_argument("--policy", type=Path, help="policy file (default: $TOLLGATE_POLICY or policies/default.yaml)")
    serve.add_argument("--host", help="address to bind (default: $TOLLGATE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: $TOLLGATE_PORT or 4000)")
    serve.add_argument("--access-log", action="store_true", help="log one line per request")
    _common(serve)

    keys = commands.add_parser("keys", help="manage virtual keys", description="Manage virtual keys.")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = key_commands.add_parser(
        "create", help="create a key for a team", description="Create a key; it is printed once, on stdout."
    )
    create.add_argument("--team", required=True, help="the team the key belongs to (and is billed to)")
    create.add_argument("--name", help="a label to tell keys apart")
    create.add_argument("--budget", help="budget in US dollars")
    _common(create)
    listing = key_commands.add_parser("list", help="list keys", description="List keys (never their secrets).")
    listing.add_argument("--team", help="only this team's keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    _common(listing)
    revoke = key_commands.add_parser("revoke", help="revoke a key", description="Revoke a key by its id.")
    revoke.add_argument("key_id", help="the key's id (key_...), as `tollgate keys list` shows it")
    _common(revoke)
    report_cli.add_parser(commands)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return settings_from_env().with_overrides(
        data_dir=getattr(args, "data_dir", None),
        policy_path=getattr(args, "policy", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
    )


def serve(settings: Settings, access_log: bool) -> int:
    import uvicorn

    from gateway.app import create_app

    policy = load_policy(settings.policy_path, settings.environ)
    app = create_app(settings, policy)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(
        f"Tollgate {__version__} on http://{settings.host}:{settings.port}/v1 "
        f"(policy {settings.policy_path}, data {settings.data_dir})\n"
        f"Create a key:  tollgate keys create --team NAME --data-dir {settings.data_dir}\n"
        f"Then:          curl http://{settings.host}:{settings.port}/v1/chat/completions "
        "-H 'Authorization: Bearer tg-...' -H 'Content-Type: application/json' "
        '-d \'{"model": "mock/echo", "messages": [{"role": "user", "content": "hello"}]}\'',
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=access_log,
        log_level=settings.log_level,
        server_header=False,
        # Clients (and the OpenAI SDK) keep connections open between calls; don't make them reconnect.
        timeout_keep_alive=75,
    )
    # Requests allocate many short-lived objects and almost no cycles: collecting the young generation every 700
    # allocations (the default) cost ~15% of a request's CPU in the benchmark; every 3,000 costs a fraction of it.
    gc.collect()
    gc.set_threshold(3_000, 10, 10)
    uvicorn.Server(config).run()
    return 0


async def _keys(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here so `tollgate --version` and `--help` don't pay for SQLAlchemy.
    from gateway.admin import parse_budget, valid_team
    from gateway.database import create_engine
    from gateway.keys.store import KeyStore

    engine = create_engine(settings.store_url)
    store = KeyStore(engine)
    try:
        await store.create_schema()
        if args.keys_command == "create":
            key, record = await store.create(
                valid_team(args.team), name=args.name, budget_usd=parse_budget(args.budget, "--budget")
            )
            print(key)
            print(
                f"Created {record.id} for team {record.team!r}. The key is shown only once: store it now.",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            records = await store.list(team=args.team, include_revoked=args.all)
            print(f"{'ID':<22} {'TEAM':<20} {'KEY':<14} {'BUDGET':>10} {'CREATED':<20} STATUS")
            for r in records:
                budget = str(r.budget_usd) if r.budget_usd is not None else "-"
                status = "revoked" if r.revoked_at else "active"
                created = r.created_at.strftime("%Y-%m-%d %H:%M:%S")
                print(f"{r.id:<22} {r.team:<20} {r.display:<14} {budget:>10} {created:<20} {status}")
        elif args.keys_command == "revoke":
            if not await store.revoke(args.key_id):
                print(f"error: no active key with id {args.key_id!r}", file=sys.stderr)
                return 1
            print(f"Revoked {args.key_id}.", file=sys.stderr)
        return 0
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "serve":
            return serve(settings, args.access_log)
        if args.command == "keys":
            return asyncio.run(_keys(args, settings))
        if args.command == "report":
            return asyncio.run(report_cli.run(args, settings))
    except (SettingsError, PolicyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InvalidRequest as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2
