"""Runs the real gateway (uvicorn + httptools on 127.0.0.1) for tests, in a thread or as a separate process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.app import Tollgate, create_app
from gateway.policy import parse_policy
from gateway.settings import settings_from_env
from support.threads import LoopThread, free_port

ADMIN_KEY = "tg-admin-test-key-0123456789"


@dataclass
class RunningGateway:
    url: str
    admin_key: str
    app: Tollgate | None = None

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def create_key(self, team: str, **fields: Any) -> str:
        response = httpx.post(
            f"{self.url}/admin/keys",
            json={"team": team, **fields},
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )
        response.raise_for_status()
        key: str = response.json()["key"]
        return key

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.admin_key}"}, **kwargs)


def _wait_until_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"gateway at {url} not ready after {timeout}s")


@contextmanager
def run_gateway(
    policy_yaml: str, env: Mapping[str, str] | None = None, data_dir: Path | None = None, **settings: Any
) -> Iterator[RunningGateway]:
    """The gateway in a background thread: fast to start, and `gateway.app` is reachable for inspection."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        environ = {"TOLLGATE_ADMIN_KEY": ADMIN_KEY, **(env or {})}
        port = free_port()
        config_settings = settings_from_env(environ).with_overrides(
            data_dir=data_dir or Path(tmp), port=port, **settings
        )
        policy = parse_policy(yaml.safe_load(policy_yaml), "<test policy>", environ)
        app = create_app(config_settings, policy)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, loop="asyncio", http="httptools", lifespan="on", log_level="warning"
        )
        server = uvicorn.Server(config)
        loop = LoopThread()
        task = asyncio.run_coroutine_threadsafe(server.serve(), loop.loop)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_ready(url)
            yield RunningGateway(url=url, admin_key=ADMIN_KEY, app=app)
        finally:
            server.should_exit = True
            task.result(15)
            loop.stop()


@dataclass
class GatewayProcess:
    gateway: RunningGateway
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def gateway_process(
    policy_path: Path, data_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """The gateway as its own process, started by the `tollgate` command as a user would."""
    port = free_port()
    log_path = data_dir / f"gateway-{port}.log"
    environ = {**os.environ, "TOLLGATE_ADMIN_KEY": ADMIN_KEY, **(env or {})}
    command = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--policy",
        str(policy_path),
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url)
        yield GatewayProcess(RunningGateway(url=url, admin_key=ADMIN_KEY), process, log_path)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
